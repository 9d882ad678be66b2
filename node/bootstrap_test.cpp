#include "node/bootstrap.h"

#include "node/api_users.h"

#include <doctest/doctest.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <fstream>
#include <set>
#include <sstream>

#include "node/network_map.h"
#include "test/support/temp_dir.h"

using namespace ccal;
using namespace ccal::node;
namespace fs = std::filesystem;

namespace {

const fs::path demo_spec = fs::path(CCAL_SOURCE_DIR) / "config/demo-network.toml";

template <class T>
T must(Result<T> r) {
  REQUIRE_MESSAGE(r.ok(), r.error().message);
  return std::move(r).value();
}

bool has(const std::string& message, const std::string& part) {
  return message.find(part) != std::string::npos;
}

unsigned modeOf(const fs::path& p) {
  struct stat st {};
  REQUIRE(::stat(p.c_str(), &st) == 0);
  return st.st_mode & 0777;
}

std::string readText(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

struct CommandResult {
  int exit_code;
  std::string output;
};

CommandResult run(const std::string& command) {
  CommandResult r{-1, {}};
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  REQUIRE(pipe != nullptr);
  char buf[4096];
  size_t n = 0;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) r.output.append(buf, n);
  const int status = pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// Splits a chain PEM into the leaf file and the file of the certificates above it.
std::pair<fs::path, fs::path> splitChain(const fs::path& chain_pem, const fs::path& scratch) {
  const auto certs = must(certificatesFromPem(readText(chain_pem)));
  REQUIRE(certs.size() == 3);
  const fs::path leaf = scratch / "leaf.pem", rest = scratch / "untrusted.pem";
  std::ofstream(leaf) << certs[0].pem();
  std::ofstream(rest) << toPem(std::span(certs).subspan(1));
  return {leaf, rest};
}

struct Bootstrapped {
  ccal::testing::TempDir tmp{"ccal-bootstrap"};
  fs::path out = fs::path(tmp.path).parent_path() / "network";
  BootstrapResult result;
  Bootstrapped() {
    result = must(bootstrapNetwork(must(loadNetworkSpec(demo_spec)), out, false,
                                   std::chrono::system_clock::now()));
  }
};

std::string specError(const std::string& text) {
  auto spec = parseNetworkSpec(text, "spec.toml");
  REQUIRE_MESSAGE(!spec.ok(), "the spec was expected to be refused:\n" << text);
  CHECK(spec.error().code == Errc::malformed);
  return spec.error().message;
}

const std::string two_nodes = R"(
[[nodes]]
name = "a"
x500 = "O=A, L=London, C=GB"
p2p = "127.0.0.1:1001"
api = "127.0.0.1:1101"

[[nodes]]
name = "b"
x500 = "O=B, L=London, C=GB"
p2p = "127.0.0.1:1002"
api = "127.0.0.1:1102"
)";

std::string replica(int i) {
  return "\n[[nodes]]\nname = \"r" + std::to_string(i) + "\"\nx500 = \"O=Replica " +
         std::to_string(i) + ", L=London, C=GB\"\nrole = \"notary-replica\"\np2p = \"127.0.0.1:" +
         std::to_string(2000 + i) + "\"\napi = \"127.0.0.1:" + std::to_string(2100 + i) + "\"\n";
}

const std::string four_replicas = replica(1) + replica(2) + replica(3) + replica(4);
const std::string notary = R"(
[[notaries]]
name = "notary"
x500 = "O=Notary, L=London, C=GB"
f = 1
replicas = ["r1", "r2", "r3", "r4"]
)";

}  // namespace

#define CHECK_HAS(message, part)      \
  do {                                \
    const std::string m_ = (message); \
    CHECK_MESSAGE(has(m_, part), m_); \
  } while (false)

TEST_CASE("bootstrap the demo network: every member's config and map load and verify") {
  Bootstrapped net;
  const auto& spec = net.result.spec;
  REQUIRE(spec.nodes.size() == 9);
  REQUIRE(net.result.config_files.size() == 9);
  CHECK(net.result.summary["members"].size() == 9);
  CHECK(fs::exists(net.out / "network.json"));

  std::set<std::string> tokens;
  for (size_t i = 0; i < spec.nodes.size(); ++i) {
    const auto& node = spec.nodes[i];
    CAPTURE(node.name);
    const fs::path dir = net.out / node.name;
    const auto config = must(loadNodeConfig(dir / "node.toml"));
    CHECK(config.name == node.name);
    CHECK(config.x500 == node.x500);
    CHECK(config.role == node.role);
    CHECK(config.p2p_listen == node.p2p);
    CHECK(config.api_listen == node.api);
    CHECK(config.identity_key_file == dir / "keys/identity.key");  // relative, resolved
    CHECK(config.vault_dir == dir / "vault");
    if (node.role == Role::notary_replica) {
      CHECK(config.notary_cluster == "notary");
      CHECK(config.notary_replica_index == node.name.back() - '1');
    }

    // Private keys 0600 in a 0700 folder; API users 0600.
    CHECK(modeOf(dir / "keys") == 0700);
    for (const char* key : {"identity.key", "tls.key", "node-ca.key"}) {
      CHECK(modeOf(dir / "keys" / key) == 0600);
    }
    CHECK(modeOf(dir / "api-users.toml") == 0600);

    // The map from this member's own files: every member verified.
    auto map = must(NetworkMap::loadFiles(config));
    CHECK(map->members().size() == 9);
    const auto self = map->memberByName(node.x500);
    REQUIRE(self != nullptr);
    CHECK(self->role == node.role);
    CHECK(must(map->endpointOf(node.x500)).port == node.p2p.port);
    // Its keys are the keys of its certificates and node info.
    const auto identity = must(keyPairFromPem(readText(config.identity_key_file)));
    CHECK(identity.publicKey() == self->legal_identity_key);
    const auto tls = must(keyPairFromPem(readText(config.tls_key_file)));
    const auto tls_chain = must(certificatesFromPem(readText(config.tls_chain_file)));
    CHECK(must(tls_chain[0].publicKey()) == tls.publicKey());
    // The TLS layer's question, with the chain as this member will present it.
    std::vector<Bytes> der;
    for (const auto& c : tls_chain) der.push_back(c.der());
    CHECK(must(map->identifyPeer(der)) == node.x500);

    if (i == 0) {
      const auto* n = map->notary("O=CCAL Notary, L=Haikou, C=CN");
      REQUIRE(n != nullptr);
      CHECK(n->f == 1);
      CHECK_FALSE(n->validating);
      REQUIRE(n->service_key.node().threshold == 3);  // 2f+1 of 3f+1
      CHECK(n->service_key.node().children.size() == 4);
      REQUIRE(map->parameters().observers.size() == 2);
      CHECK(map->parameters().observers[0].observer ==
            "O=Cooperative Finance Regulator, L=Beijing, C=CN");
      CHECK(map->parameters().observers[0].contracts ==
            std::vector<std::string>{"ccal.lc", "ccal.loan"});
      CHECK(map->parameters().observers[0].parties.empty());
      CHECK(map->parameters().observers[1].commands ==
            std::vector<std::string>{"ccal.receivable.Finance"});
      CHECK(map->parameters().observers[1].amount_at_least == std::optional<int64_t>(1'000'000));
      CHECK(map->parameters().observers[1].amount_field == "amount");
    }

    const auto loaded = must(ApiUsers::load(config.api_users_file));
    const auto& users = loaded.users();
    REQUIRE(users.size() == 3);
    std::set<std::string> roles;
    for (const auto& u : users) {
      roles.insert(apiRoleName(u.role));
      CHECK(tokens.insert(u.token).second);  // every token is fresh
    }
    CHECK(roles == std::set<std::string>{"admin", "operator", "read-only"});
  }

  // The operator's keys are kept apart, 0600.
  for (const char* key : {"root.key", "doorman.key", "network-map.key"}) {
    CHECK(modeOf(net.out / "_operator" / key) == 0600);
  }
  CHECK(modeOf(net.out / "_operator") == 0700);
}

TEST_CASE("openssl verify accepts every member's identity and TLS chain, with every CRL") {
  Bootstrapped net;
  REQUIRE(run("openssl version").exit_code == 0);
  const fs::path scratch = fs::path(net.tmp.path).parent_path();
  for (const auto& node : net.result.spec.nodes) {
    CAPTURE(node.name);
    const fs::path dir = net.out / node.name;
    const std::string common = "openssl verify -x509_strict -crl_check_all -CRLfile " +
                               (dir / "certs/crls.pem").string() + " -CAfile " +
                               (dir / "certs/network-root.pem").string() + " -untrusted ";
    auto [leaf, rest] = splitChain(dir / "certs/identity-chain.pem", scratch);
    auto r = run(common + rest.string() + " " + leaf.string());
    CHECK_MESSAGE(r.exit_code == 0, r.output);
    std::tie(leaf, rest) = splitChain(dir / "certs/tls-chain.pem", scratch);
    for (const char* purpose : {"sslserver", "sslclient"}) {
      r = run(common + rest.string() + " -purpose " + purpose + " " + leaf.string());
      CHECK_MESSAGE(r.exit_code == 0, r.output);
    }
  }
  // And refuses a chain against another network's root.
  Bootstrapped other;
  const fs::path dir = net.out / "harbour-bank";
  auto [leaf, rest] = splitChain(dir / "certs/tls-chain.pem", scratch);
  auto r =
      run("openssl verify -CAfile " + (other.out / "harbour-bank/certs/network-root.pem").string() +
          " -untrusted " + rest.string() + " " + leaf.string());
  CHECK(r.exit_code != 0);
}

TEST_CASE("re-running onto a network is refused unless forced; a foreign node info is refused") {
  Bootstrapped net;
  const auto spec = must(loadNetworkSpec(demo_spec));
  const auto now = std::chrono::system_clock::now();
  const std::string old_root = readText(net.out / "_operator/root.pem");

  auto again = bootstrapNetwork(spec, net.out, false, now);
  REQUIRE(!again.ok());
  CHECK(again.error().code == Errc::conflict);
  CHECK_HAS(again.error().message, "is not empty: refusing to overwrite");
  CHECK(readText(net.out / "_operator/root.pem") == old_root);  // nothing touched

  std::ofstream(net.out / "notes.txt") << "the operator's own file";
  fs::create_directories(net.out / "haikou-fishing/vault");
  std::ofstream(net.out / "haikou-fishing/vault/data.mdb") << "old vault";
  const auto forced = must(bootstrapNetwork(spec, net.out, true, now));
  CHECK(readText(net.out / "_operator/root.pem") != old_root);
  CHECK(!fs::exists(net.out / "haikou-fishing/vault"));  // the old network's vault is gone
  CHECK(readText(net.out / "notes.txt") == "the operator's own file");
  CHECK(must(loadNodeConfig(forced.config_files[0])).name == "haikou-fishing");

  // A node info from another network (same names, other root) dropped into node-infos.
  Bootstrapped other;
  const auto config = must(loadNodeConfig(net.out / "harbour-bank/node.toml"));
  fs::copy_file(other.out / "sanya-farmers/node-infos/sanya-farmers",
                config.node_infos_dir / "sanya-farmers", fs::copy_options::overwrite_existing);
  auto map = NetworkMap::loadFiles(config);
  REQUIRE(!map.ok());
  CHECK(map.error().code == Errc::certificate_invalid);
  CHECK_HAS(map.error().message, "member 'O=Sanya Farmers Cooperative, L=Sanya, C=CN'");
  CHECK_HAS(map.error().message, "harbour-bank/node.toml");

  // Tampered network parameters.
  fs::remove(config.node_infos_dir / "sanya-farmers");
  fs::copy_file(net.out / "sanya-farmers/node-infos/sanya-farmers",
                config.node_infos_dir / "sanya-farmers", fs::copy_options::overwrite_existing);
  REQUIRE(NetworkMap::loadFiles(config).ok());
  auto params = readText(config.network_parameters_file);
  params[40] = static_cast<char>(params[40] ^ 1);
  std::ofstream(config.network_parameters_file, std::ios::binary) << params;
  fs::remove(config.node_infos_dir / "sanya-farmers");
  CHECK(!NetworkMap::loadFiles(config).ok());
}

TEST_CASE("a member that moves publishes a newer node info its peers accept") {
  Bootstrapped net;
  const auto bank_config = must(loadNodeConfig(net.out / "harbour-bank/node.toml"));
  auto map = must(NetworkMap::loadFiles(bank_config));
  auto coop_config = must(loadNodeConfig(net.out / "haikou-fishing/node.toml"));
  coop_config.p2p_advertised = HostPort{"192.0.2.7", 20001};
  const auto moved = must(signOwnNodeInfo(coop_config, 2));
  REQUIRE(map->update(moved.encode()).ok());
  const auto ep = must(map->endpointOf(coop_config.x500));
  CHECK(ep.host == "192.0.2.7");
  CHECK(ep.port == 20001);
  // Replayed, or signed with the same serial: refused.
  CHECK(map->update(moved.encode()).error().code == Errc::conflict);
  // Another member cannot publish it: the bank's key signs the coop's files.
  auto forged_config = coop_config;
  forged_config.identity_key_file = bank_config.identity_key_file;
  const auto forged = must(signOwnNodeInfo(forged_config, 3));
  CHECK(map->update(forged.encode()).error().code == Errc::certificate_invalid);
}

TEST_CASE("bad specs are refused with the key named") {
  // A good spec parses, with defaults.
  const auto good = must(parseNetworkSpec(two_nodes + four_replicas + notary, "spec.toml"));
  CHECK(good.nodes.size() == 6);
  CHECK(good.notaries[0].f == 1);
  CHECK(good.validity_days == 3650);
  CHECK(good.nodes[0].role == Role::node);

  CHECK_HAS(specError(""), "key 'nodes': a network needs at least one [[nodes]]");
  CHECK_HAS(specError("[[nodes]]\nname = \"a\"\n"), "key 'nodes[0].x500': missing required key");
  CHECK_HAS(specError(two_nodes + "[[nodes]]\nprot = 1\n"), "unknown key 'nodes[2].prot'");
  CHECK_HAS(specError("[netwrk]\n" + two_nodes), "unknown key 'netwrk'");
  CHECK_HAS(specError("[network]\nvalidity_days = \"long\"\n" + two_nodes),
            "key 'network.validity_days': expected an integer");
  CHECK_HAS(specError("[network]\nvalidity_days = 0\n" + two_nodes),
            "key 'network.validity_days': 0 is outside the range");
  CHECK_HAS(specError("nodes = 3\n"), "key 'nodes' must be an array of tables");
  CHECK_HAS(specError("[[nodes]]\nname = \"a\"\nx500 = \"O=A, L=London, C=GB\"\np2p = \"h:1\"\napi "
                      "= \"h:2\"\nrole = \"king\"\n"),
            "key 'nodes[0].role': role 'king' is not one of");
  CHECK_HAS(specError("[[nodes\n"), "spec.toml: line 1");

  auto dup = two_nodes;
  dup.replace(dup.find("name = \"b\""), 10, "name = \"a\"");
  CHECK_HAS(specError(dup), "key 'nodes[1].name': 'a' is already the name of nodes[0]");
  dup = two_nodes;
  dup.replace(dup.find("O=B"), 3, "O=A");
  CHECK_HAS(
      specError(dup),
      "key 'nodes[1].x500': X.500 name 'O=A, L=London, C=GB' is already used by 'nodes[0].x500'");
  dup = two_nodes;
  dup.replace(dup.find("127.0.0.1:1002"), 14, "127.0.0.1:1101");
  CHECK_HAS(specError(dup),
            "key 'nodes[1].p2p': address '127.0.0.1:1101' is already used by 'nodes[0].api'");
  dup = two_nodes;
  dup.replace(dup.find("127.0.0.1:1002"), 14, "127.0.0.1:70000");
  CHECK_HAS(specError(dup), "key 'nodes[1].p2p': address '127.0.0.1:70000' has a port");

  auto three = notary;
  three.replace(three.find(", \"r4\""), 6, "");
  CHECK_HAS(specError(two_nodes + four_replicas + three),
            "key 'notaries[0].replicas': 3 replicas, but f = 1 needs 3f+1 = 4");
  CHECK_HAS(specError(two_nodes + four_replicas +
                      "[[notaries]]\nname = \"n\"\nx500 = \"O=N, L=London, C=GB\"\nf = 0\nreplicas "
                      "= [\"r1\"]\n"),
            "key 'nodes[3].role': node 'r2' is a notary-replica but no [[notaries]] lists it");
  auto unknown = notary;
  unknown.replace(unknown.find("\"r4\""), 4, "\"r9\"");
  CHECK_HAS(specError(two_nodes + four_replicas + unknown),
            "key 'notaries[0].replicas[3]': no node is named 'r9'");
  auto plain = notary;
  plain.replace(plain.find("\"r4\""), 4, "\"a\"");
  CHECK_HAS(specError(two_nodes + four_replicas + plain),
            "key 'notaries[0].replicas[3]': node 'a' has role node, not notary-replica");
  CHECK_HAS(
      specError(two_nodes + four_replicas + notary +
                "[[notaries]]\nname = \"n2\"\nx500 = \"O=N2, L=London, C=GB\"\nf = 0\nreplicas = "
                "[\"r1\"]\n"),
      "key 'notaries[1].replicas[0]': node 'r1' is already a replica at 'notaries[0].replicas[0]'");
  auto no_f = notary;
  no_f.replace(no_f.find("f = 1\n"), 6, "");
  CHECK_HAS(specError(two_nodes + four_replicas + no_f),
            "key 'notaries[0].f': missing required key");
  CHECK_HAS(specError(two_nodes + "[[observers]]\nobserver = \"a\"\nall_transactions = true\n"),
            "key 'observers[0].observer': node 'a' has role node, not regulator");
}

TEST_CASE("observer rules with command and amount filters: parsed into the parameters, bad ones refused") {
  const std::string regulator =
      "\n[[nodes]]\nname = \"reg\"\nx500 = \"O=Reg, L=London, C=GB\"\nrole = \"regulator\"\n"
      "p2p = \"127.0.0.1:1003\"\napi = \"127.0.0.1:1103\"\n";
  const std::string base = two_nodes + regulator + "\n[[observers]]\nobserver = \"reg\"\n";
  const auto spec = must(parseNetworkSpec(
      base + "contracts = [\"ccal.receivable\"]\ncommands = [\"ccal.receivable.Finance\"]\n"
             "amount_at_least = 1000000\n"
             "\n[[observers]]\nobserver = \"reg\"\ncontracts = [\"ccal.lc\", \"ccal.loan\"]\n",
      "spec.toml"));
  REQUIRE(spec.observers.size() == 2);
  CHECK(spec.observers[0].commands == std::vector<std::string>{"ccal.receivable.Finance"});
  CHECK(spec.observers[0].amount_at_least == std::optional<int64_t>(1'000'000));
  CHECK(spec.observers[0].amount_field == "amount");
  CHECK(spec.observers[1].commands.empty());
  CHECK_FALSE(spec.observers[1].amount_at_least.has_value());

  const std::string rec = base + "contracts = [\"ccal.receivable\"]\n";
  CHECK_HAS(specError(base + "contracts = [\"ccal.lc\", \"ccal.mortgage\"]\n"),
            "key 'observers[0].contracts[1]': no contract is named 'ccal.mortgage' (known: ");
  CHECK_HAS(specError(rec + "commands = [\"ccal.receivable.Finance\", \"ccal.receivable.finance\"]\n"),
            "key 'observers[0].commands[1]': no contract of the rule declares a command "
            "'ccal.receivable.finance' (declared: ccal.receivable.Register, ");
  CHECK_HAS(specError(rec + "commands = [\"ccal.lc.Pay\"]\n"),
            "key 'observers[0].commands[0]': no contract of the rule declares a command 'ccal.lc.Pay'");
  CHECK_HAS(specError(base + "parties = [\"a\"]\ncommands = [\"ccal.lc.Pay\"]\n"),
            "key 'observers[0].commands': a command filter needs contracts to filter");
  CHECK_HAS(specError(base + "parties = [\"a\"]\namount_at_least = 5\n"),
            "key 'observers[0].amount_at_least': a threshold needs contracts whose amount it bounds");
  CHECK_HAS(specError(rec + "amount_at_least = -1\n"),
            "key 'observers[0].amount_at_least': -1 is below 0");
  CHECK_HAS(specError(rec + "amount_at_least = 10.5\n"),
            "key 'observers[0].amount_at_least': expected an integer");
  CHECK_HAS(specError(rec + "amount_at_least = \"100\"\n"),
            "key 'observers[0].amount_at_least': expected an integer");
  CHECK_HAS(specError(rec + "amount_at_least = 5\namount_field = \"currency\"\n"),
            "key 'observers[0].amount_field': no state type of contract 'ccal.receivable' declares an "
            "int64 field 'currency'");
  CHECK_HAS(specError(rec + "amount_field = \"amount\"\n"),
            "key 'observers[0].amount_field': an amount field without amount_at_least");
  CHECK_HAS(specError(rec + "amount_below = 5\n"), "unknown key 'observers[0].amount_below'");
}

TEST_CASE(
    "a member added to a bootstrapped network: every member's map holds it, its chains verify") {
  Bootstrapped net;
  const size_t members_before = net.result.spec.nodes.size();
  NewMember delta{"delta-coop", "O=Delta Coop,L=Qionghai,C=CN", "node", "127.0.0.1:1006",
                  "127.0.0.1:1106"};
  const auto added = must(addMember(net.out, delta, std::chrono::system_clock::now()));
  CHECK(added["x500"] == "O=Delta Coop, L=Qionghai, C=CN");
  CHECK(added["role"] == "node");

  // Every member's files (the new one's too) load into a map that holds all of them.
  size_t folders = 0;
  for (const auto& entry : fs::directory_iterator(net.out)) {
    if (!fs::exists(entry.path() / "node.toml")) continue;
    ++folders;
    CAPTURE(entry.path().string());
    const auto config = must(loadNodeConfig(entry.path() / "node.toml"));
    const auto map = must(NetworkMap::loadFiles(config));
    CHECK(map->members().size() == members_before + 1);
    REQUIRE(map->memberByName("O=Delta Coop, L=Qionghai, C=CN") != nullptr);
    CHECK(map->memberByName("O=Delta Coop, L=Qionghai, C=CN")->role == Role::node);
  }
  CHECK(folders == members_before + 1);

  // Its chains verify with openssl against the root and every list (its node CA's included).
  const fs::path dir = net.out / "delta-coop";
  const fs::path scratch = fs::path(net.tmp.path).parent_path();
  auto [leaf, rest] = splitChain(dir / "certs/tls-chain.pem", scratch);
  auto r = run("openssl verify -x509_strict -crl_check_all -CRLfile " +
               (dir / "certs/crls.pem").string() + " -CAfile " +
               (dir / "certs/network-root.pem").string() + " -untrusted " + rest.string() +
               " -purpose sslclient " + leaf.string());
  CHECK_MESSAGE(r.exit_code == 0, r.output);

  // The same member again, and a regulator at a taken address: refused, nothing written.
  const std::string summary = readText(net.out / "network.json");
  auto again = addMember(net.out, delta, std::chrono::system_clock::now());
  REQUIRE_FALSE(again.ok());
  CHECK_HAS(again.error().message, "--name: ");
  NewMember regulator{"auditor", "O=Auditor,L=Haikou,C=CN", "regulator", "127.0.0.1:1006",
                      "127.0.0.1:1107"};
  auto taken = addMember(net.out, regulator, std::chrono::system_clock::now());
  REQUIRE_FALSE(taken.ok());
  CHECK_HAS(taken.error().message, "--p2p: is the p2p address of member 'delta-coop'");
  CHECK_FALSE(fs::exists(net.out / "auditor"));
  CHECK(readText(net.out / "network.json") == summary);
  // A regulator at free addresses joins as a regulator.
  regulator.p2p = "127.0.0.1:1007";
  CHECK(must(addMember(net.out, regulator, std::chrono::system_clock::now()))["role"] ==
        "regulator");
}

TEST_CASE("rotate-tls: a member's new TLS certificate identifies it, the old one is revoked") {
  Bootstrapped net;
  const fs::path bank = net.out / "harbour-bank";
  const auto old_chain = must(certificatesFromPem(readText(bank / "certs/tls-chain.pem")));
  const std::string crls_before = readText(net.out / "haikou-fishing/certs/crls.pem");

  // Bad input: not a member; nothing written.
  auto unknown = rotateTls(net.out, "nobody", std::chrono::system_clock::now());
  REQUIRE_FALSE(unknown.ok());
  CHECK_HAS(unknown.error().message, "'nobody' is not a member folder");
  CHECK(readText(net.out / "haikou-fishing/certs/crls.pem") == crls_before);

  const auto rotated = must(rotateTls(net.out, "harbour-bank", std::chrono::system_clock::now()));
  CHECK(rotated["member"] == "O=Harbour Bank, L=Haikou, C=CN");
  CHECK(rotated["revoked_serial"] == old_chain[0].serialHex());
  CHECK(rotated["node_info_serial"] == 2);
  const auto new_chain = must(certificatesFromPem(readText(bank / "certs/tls-chain.pem")));
  REQUIRE(new_chain.size() == 3);
  CHECK_FALSE(new_chain[0] == old_chain[0]);
  CHECK(new_chain[1] == old_chain[1]);  // the same node CA
  // The new key is the one in its folder.
  CHECK(must(new_chain[0].publicKey()) ==
        must(keyPairFromPem(readText(bank / "keys/tls.key"))).publicKey());

  auto ders = [](const std::vector<Certificate>& chain) {
    std::vector<Bytes> out;
    for (const auto& c : chain) out.push_back(c.der());
    return out;
  };
  // Another member's map (from its files: node info serial 2 and the new lists).
  const auto coop = must(loadNodeConfig(net.out / "haikou-fishing/node.toml"));
  auto map = must(NetworkMap::loadFiles(coop));
  CHECK(map->memberByName("O=Harbour Bank, L=Haikou, C=CN")->serial == 2);
  CHECK(must(map->identifyPeer(ders(new_chain))) == "O=Harbour Bank, L=Haikou, C=CN");
  auto refused = map->identifyPeer(ders(old_chain));
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().code == Errc::certificate_revoked);
  // The member's own files load too (its node info matches its new chain).
  CHECK(NetworkMap::loadFiles(must(loadNodeConfig(bank / "node.toml"))).ok());

  // Again: the node CA's next list keeps the first entry.
  must(rotateTls(net.out, "harbour-bank", std::chrono::system_clock::now()));
  map = must(NetworkMap::loadFiles(coop));
  CHECK(map->memberByName("O=Harbour Bank, L=Haikou, C=CN")->serial == 3);
  CHECK(map->identifyPeer(ders(old_chain)).error().code == Errc::certificate_revoked);
  CHECK(map->identifyPeer(ders(new_chain)).error().code == Errc::certificate_revoked);
}
