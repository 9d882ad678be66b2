#include "node/config.h"

#include <doctest/doctest.h>

#include <fstream>
#include <sstream>

#include "flows/flow_runtime.h"
#include "notary/vote_log.h"
#include "test/support/temp_dir.h"

using namespace ccal;
using namespace ccal::node;
namespace fs = std::filesystem;

namespace {

const std::string minimal = R"(
[node]
name = "coop-a"
x500 = "o=Haikou Fishing Cooperative, l=Haikou, c=cn"

[p2p]
listen = "127.0.0.1:10001"

[api]
listen = "127.0.0.1:10101"
)";

NodeConfig parsed(const std::string& text, const fs::path& file = "/etc/ccal/node.toml") {
  auto c = parseNodeConfig(text, file);
  REQUIRE_MESSAGE(c.ok(), c.error().message);
  return *c;
}

// The error message of a config that must fail.
std::string failure(const std::string& text, const fs::path& file = "/etc/ccal/node.toml") {
  auto c = parseNodeConfig(text, file);
  REQUIRE_MESSAGE(!c.ok(), "expected the config to be refused:\n" << text);
  CHECK(c.error().code == Errc::malformed);
  return c.error().message;
}

bool has(const std::string& message, const std::string& part) {
  return message.find(part) != std::string::npos;
}

}  // namespace

// Checks that a message contains a part, printing the message when not.
#define CHECK_HAS(message, part)      \
  do {                                \
    const std::string m_ = (message); \
    CHECK_MESSAGE(has(m_, part), m_); \
  } while (false)

TEST_CASE("a minimal config gets every documented default") {
  const auto c = parsed(minimal);
  const NodeConfig d;
  CHECK(c.name == "coop-a");
  CHECK(c.x500 == "O=Haikou Fishing Cooperative, L=Haikou, C=CN");  // canonical form
  CHECK(c.role == Role::node);
  CHECK(c.p2p_listen == HostPort{"127.0.0.1", 10001});
  CHECK(c.p2p_advertised == c.p2p_listen);  // defaults to the listen address
  CHECK(c.api_listen == HostPort{"127.0.0.1", 10101});
  CHECK(c.vault_map_size_mb == d.vault_map_size_mb);
  CHECK(c.log_level == LogLevel::info);
  CHECK(c.log_file.empty());
  CHECK(c.frame_bytes_max == d.frame_bytes_max);
  CHECK(c.reconnect_delay_micros_min == 100'000);
  CHECK(c.reconnect_delay_micros_max == 30'000'000);
  CHECK(c.vault_dir == fs::path("/etc/ccal/vault"));
  CHECK(c.api_users_file == fs::path("/etc/ccal/api-users.toml"));
  CHECK(c.network_parameters_file == fs::path("/etc/ccal/network-parameters"));
  CHECK(c.source_file == fs::path("/etc/ccal/node.toml"));

  // Every default in the documentation is the value a default NodeConfig holds.
  const auto docs = configKeyDocs();
  auto doc = [&](const std::string& key) {
    for (const auto& k : docs)
      if (k.key == key) return k;
    FAIL("no documentation for " << key);
    return ConfigKeyDoc{};
  };
  CHECK(doc("vault.map_size_mb").default_value == "1024");
  CHECK(doc("node.name").default_value == "(required)");
  CHECK(doc("logging.level").default_value == "\"info\"");
  CHECK(doc("p2p.advertised").default_value == "same as p2p.listen");
  CHECK(doc("paths.vault_dir").default_value == "\"vault\"");
}

TEST_CASE("the documentation table lists every key once") {
  const auto docs = configKeyDocs();
  CHECK(docs.size() >= 30);
  const auto md = configKeysMarkdown();
  for (const auto& d : docs) {
    CHECK_HAS(md, "| `" + d.key + "` |");
    CHECK(!d.meaning.empty());
  }
  CHECK_HAS(md, "node \\| notary-replica \\| regulator");  // '|' escaped in cells

  // config/README.md shows this very table.
  std::ifstream in(fs::path(CCAL_SOURCE_DIR) / "config/README.md");
  std::stringstream readme;
  readme << in.rdbuf();
  CHECK_MESSAGE(has(readme.str(), md),
                "config/README.md's node.toml table differs from configKeysMarkdown():\n"
                    << md);
}

TEST_CASE("relative paths resolve against base_dir, itself against the config's folder") {
  auto c = parsed(minimal + R"(
[paths]
base_dir = "../data"
vault_dir = "v"
identity_key = "/abs/identity.key"
crls = ""
[logging]
file = "logs/node.log"
)",
                  "/srv/ccal/conf/node.toml");
  CHECK(c.base_dir == fs::path("/srv/ccal/data"));
  CHECK(c.vault_dir == fs::path("/srv/ccal/data/v"));
  CHECK(c.identity_key_file == fs::path("/abs/identity.key"));
  CHECK(c.tls_key_file == fs::path("/srv/ccal/data/keys/tls.key"));
  CHECK(c.crls_file.empty());  // explicitly none
  CHECK(c.log_file == fs::path("/srv/ccal/data/logs/node.log"));

  // A relative config path is made absolute against the working directory.
  auto rel = parsed(minimal, "conf/node.toml");
  CHECK(rel.vault_dir == (fs::current_path() / "conf/vault").lexically_normal());
}

TEST_CASE("unknown keys and tables are named with the file") {
  CHECK(failure(minimal + "[p2p2]\nx = 1\n") == "/etc/ccal/node.toml: unknown key 'p2p2'");
  auto m = failure(R"(
[node]
name = "coop-a"
x500 = "O=A, L=B, C=GB"
nmae = "typo"
[p2p]
listen = "127.0.0.1:1"
[api]
listen = "127.0.0.1:2"
)");
  CHECK(m == "/etc/ccal/node.toml: unknown key 'node.nmae'");
  CHECK_HAS(failure(minimal + "[vault]\n[vault.deeper]\nx = 1\n"), "unknown key 'vault.deeper'");
  CHECK_HAS(failure("vault = 3\n" + minimal), "key 'vault' must be a table");
}

TEST_CASE("wrong types and out-of-range values name the key") {
  CHECK_HAS(failure(minimal + "[vault]\nmap_size_mb = \"big\"\n"),
            "key 'vault.map_size_mb': expected an integer, got a string");
  CHECK_HAS(failure(minimal + "[vault]\nmap_size_mb = 0\n"),
            "key 'vault.map_size_mb': 0 is outside the range 1 to");
  CHECK_HAS(failure(minimal + "[vault]\nmap_size_mb = -5\n"), "vault.map_size_mb");
  CHECK_HAS(failure(minimal + "[logging]\nlevel = \"loud\"\n"),
            "key 'logging.level': 'loud' is not one of trace | debug");
  CHECK_HAS(failure(minimal + "[logging]\nlevel = 3\n"), "key 'logging.level': expected a string");
  CHECK_HAS(failure(minimal + "[paths]\nvault_dir = 7\n"),
            "key 'paths.vault_dir': expected a string");
  auto bad_addr = std::string(minimal);
  bad_addr.replace(bad_addr.find("127.0.0.1:10001"), 15, "127.0.0.1:99999");
  CHECK_HAS(failure(bad_addr), "key 'p2p.listen': address '127.0.0.1:99999' has a port");
  bad_addr = minimal;
  bad_addr.replace(bad_addr.find("127.0.0.1:10001"), 15, "localhost");
  CHECK_HAS(failure(bad_addr), "key 'p2p.listen': address 'localhost' has no port");
  bad_addr = minimal;
  bad_addr.replace(bad_addr.find("c=cn"), 4, "c=China");
  CHECK_HAS(failure(bad_addr),
            "key 'node.x500': X.500 name 'o=Haikou Fishing Cooperative, l=Haikou, c=China': X.500 "
            "attribute C (country)");
  bad_addr = minimal;
  bad_addr.replace(bad_addr.find("coop-a"), 6, "Coop A");
  CHECK_HAS(failure(bad_addr), "key 'node.name': 'Coop A' may contain only");
  CHECK_HAS(failure(minimal + "[messaging]\nreconnect_delay_micros_min = 5000000\n"
                              "reconnect_delay_micros_max = 1000000\n"),
            "'messaging.reconnect_delay_micros_min' (5000000) is above");
}

TEST_CASE("missing required keys are named") {
  CHECK(failure("[node]\nname = \"a\"\nx500 = \"O=A, L=B, C=GB\"\n[p2p]\nlisten = \"h:1\"\n") ==
        "/etc/ccal/node.toml: missing required key 'api.listen'");
  CHECK_HAS(failure(""), "missing required key 'node.name'");
  CHECK_HAS(failure(minimal + "[p2p]\n"),
            "line 11, column 1: ");  // TOML error: table defined twice
}

TEST_CASE("notary settings belong to notary replicas only") {
  auto replica = std::string(minimal);
  replica.insert(replica.find("[p2p]"), "role = \"notary-replica\"\n");
  CHECK_HAS(failure(replica), "missing required key 'notary.cluster'");
  auto c = parsed(replica + "[notary]\ncluster = \"notary\"\nreplica_index = 2\n");
  CHECK(c.role == Role::notary_replica);
  CHECK(c.notary_cluster == "notary");
  CHECK(c.notary_replica_index == 2);
  CHECK(c.notary_batch_size_max == NodeConfig{}.notary_batch_size_max);
  // Limits the replica would assert on are refused here, by key.
  CHECK_HAS(failure(replica + "[notary]\ncluster = \"notary\"\nbatch_size_max = 5000\n"),
            "key 'notary.batch_size_max': 5000 is outside the range 1 to 4096");
  CHECK_HAS(
      failure(replica + "[notary]\ncluster = \"notary\"\nvote_log_record_bytes_max = 2000000\n"),
      "key 'notary.vote_log_record_bytes_max': 2000000 is outside the range 0 to " +
          std::to_string(notary::pbft::VoteLog::payload_bytes_max));
  CHECK_HAS(failure(minimal + "[notary]\ncluster = \"notary\"\n"),
            "key 'notary' is only for node.role = \"notary-replica\"");
}

TEST_CASE("flow runtime bounds: defaults are the runtime's, values are checked, replicas have none") {
  const auto c = parsed(minimal);
  const flows::FlowRuntimeConfig runtime;
  CHECK(c.flows_running_max == runtime.flows_running_max);
  CHECK(c.flows_sessions_per_flow_max == runtime.sessions_per_flow_max);
  CHECK(c.flows_messages_waiting_per_flow_max == runtime.messages_waiting_per_flow_max);
  CHECK(c.flows_subflow_depth_max == runtime.subflow_depth_max);
  CHECK(static_cast<int64_t>(c.flows_timeout_micros) == runtime.flow_timeout_micros);
  CHECK(c.flows_finished_listed_max == runtime.finished_flows_listed_max);

  auto set = parsed(minimal + "[flows]\nrunning_max = 50\ntimeout_micros = 0\n");
  CHECK(set.flows_running_max == 50);
  CHECK(set.flows_timeout_micros == 0);
  CHECK_HAS(failure(minimal + "[flows]\nrunning_max = 0\n"),
            "key 'flows.running_max': 0 is outside the range 1 to 1000000");
  CHECK_HAS(failure(minimal + "[flows]\ntimeout_micros = -5\n"), "key 'flows.timeout_micros'");
  CHECK_HAS(failure(minimal + "[flows]\nrunning_max = \"many\"\n"),
            "key 'flows.running_max': expected an integer, got a string");
  CHECK_HAS(failure(minimal + "[flows]\nrunnin_max = 5\n"), "unknown key 'flows.runnin_max'");

  auto replica = std::string(minimal);
  replica.insert(replica.find("[p2p]"), "role = \"notary-replica\"\n");
  replica += "[notary]\ncluster = \"notary\"\n";
  CHECK_HAS(failure(replica + "[flows]\nrunning_max = 5\n"),
            "key 'flows' is not for node.role = \"notary-replica\"");
  auto replica_config = parsed(replica);
  CHECK(renderNodeConfig(replica_config).find("[flows]") == std::string::npos);
  CHECK(renderNodeConfig(c).find("[flows]\nrunning_max = 10000\n") != std::string::npos);
}

TEST_CASE("a rendered config reads back equal, from a real file") {
  ccal::testing::TempDir dir("ccal-config");
  fs::create_directories(dir.path);
  NodeConfig c;
  c.name = "replica-3";
  c.x500 = "O=Notary Three, L=Haikou, C=CN";
  c.log_file = "logs/\"odd\" \\name.log";  // quotes and a backslash survive
  c.p2p_listen = HostPort{"127.0.0.1", 10003};
  c.api_listen = HostPort{"127.0.0.1", 10103};
  c.role = Role::notary_replica;
  c.notary_cluster = "notary";
  c.notary_replica_index = 3;
  c.p2p_advertised = HostPort{"::1", 10009};
  c.vault_dir = "my vault";
  c.log_level = LogLevel::debug;
  const fs::path file = fs::path(dir.path) / "node.toml";
  std::ofstream(file) << renderNodeConfig(c);
  auto back = loadNodeConfig(file);
  REQUIRE_MESSAGE(back.ok(), back.error().message);
  CHECK(back->role == Role::notary_replica);
  CHECK(back->notary_replica_index == 3);
  CHECK(back->p2p_advertised == HostPort{"::1", 10009});
  CHECK(back->vault_dir == fs::path(dir.path) / "my vault");
  CHECK(back->log_level == LogLevel::debug);
  CHECK(back->x500 == c.x500);
  CHECK(back->log_file == fs::path(dir.path) / "logs/\"odd\" \\name.log");

  auto missing = loadNodeConfig(fs::path(dir.path) / "absent.toml");
  REQUIRE(!missing.ok());
  CHECK(missing.error().code == Errc::not_found);
  CHECK_HAS(missing.error().message, "absent.toml: cannot read the config file");
  // Not a regular file, or too large: refused by name, nothing read.
  auto folder = loadNodeConfig(fs::path(dir.path));
  REQUIRE(!folder.ok());
  CHECK_HAS(folder.error().message,
            "cannot read the config file: not a regular file (a directory)");
  auto device = loadNodeConfig("/dev/zero");
  REQUIRE(!device.ok());
  CHECK_HAS(device.error().message, "/dev/zero: cannot read the config file: not a regular file");
  const fs::path big = fs::path(dir.path) / "big.toml";
  {
    std::ofstream out(big);
    out << "# " << std::string(node_config_bytes_max, 'x') << "\n";
  }
  auto too_big = loadNodeConfig(big);
  REQUIRE(!too_big.ok());
  CHECK(too_big.error().code == Errc::too_large);
  CHECK_HAS(too_big.error().message, "over the limit of 1048576");
}
