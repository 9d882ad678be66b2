#include "node/bootstrap.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <toml++/toml.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "contracts/contracts.h"
#include "ledger/composite_key.h"
#include "ledger/crypto.h"
#include "node/file_io.h"
#include "node/network_map.h"

namespace ccal::node {

namespace {

namespace fs = std::filesystem;

constexpr std::string_view operator_dir = "_operator";

// --- reading the spec -----------------------------------------------------------------------

// Reads one TOML table against a list of allowed keys, naming each key by its path.
class SpecReader {
 public:
  SpecReader(const toml::table& table, std::string path, std::string file)
      : table_(table), path_(std::move(path)), file_(std::move(file)) {}
  // Errors name command-line options ("--x500: ...") instead of a file's keys.
  static SpecReader forOptions(const toml::table& table) {
    SpecReader r(table, "", "");
    r.options_ = true;
    return r;
  }

  std::string key(std::string_view k) const {
    return path_.empty() ? std::string(k) : path_ + "." + std::string(k);
  }
  Error error(std::string_view k, const std::string& why) const {
    if (options_) return makeError(Errc::malformed, "--" + key(k) + ": " + why);
    return makeError(Errc::malformed, file_ + ": key '" + key(k) + "': " + why);
  }

  Status allowOnly(std::initializer_list<std::string_view> allowed) const {
    for (const auto& [k, v] : table_) {
      bool known = false;
      for (auto a : allowed) known = known || k.str() == a;
      if (!known) {
        return makeError(Errc::malformed, file_ + ": unknown key '" + key(k.str()) + "'");
      }
    }
    return {};
  }

  // A string; `required` or else `out` keeps its default.
  Status text(std::string_view k, std::string& out, bool required) const {
    const toml::node* n = table_.get(k);
    if (n == nullptr) return required ? Status(error(k, "missing required key")) : Status();
    if (!n->is_string()) return error(k, "expected a string");
    out = *n->value<std::string>();
    return {};
  }
  Status x500(std::string_view k, std::string& out, bool required) const {
    CCAL_TRY(text(k, out, required));
    if (out.empty() && !required) return {};
    auto name = X500Name::parse(out);
    if (!name) return error(k, name.error().message);
    out = name->toString();
    return {};
  }
  Status shortName(std::string_view k, std::string& out) const {
    CCAL_TRY(text(k, out, true));
    if (out.empty() || out.size() > 64 || out.front() == '-' ||
        out.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789-") != std::string::npos) {
      return error(k, "'" + out + "' must be 1 to 64 of a-z, 0-9 and '-', not starting with '-'");
    }
    return {};
  }
  Status address(std::string_view k, HostPort& out) const {
    std::string s;
    CCAL_TRY(text(k, s, true));
    auto hp = HostPort::parse(s);
    if (!hp) return error(k, hp.error().message);
    out = *hp;
    return {};
  }
  Status integer(std::string_view k, uint32_t& out, uint32_t min, uint32_t max) const {
    const toml::node* n = table_.get(k);
    if (n == nullptr) return {};
    if (!n->is_integer()) return error(k, "expected an integer");
    const int64_t v = *n->value<int64_t>();
    if (v < min || v > max) {
      return error(k, std::to_string(v) + " is outside the range " + std::to_string(min) + " to " +
                          std::to_string(max));
    }
    out = static_cast<uint32_t>(v);
    return {};
  }
  // A whole number, when present, of at least `min`.
  Status integer64(std::string_view k, std::optional<int64_t>& out, int64_t min) const {
    const toml::node* n = table_.get(k);
    if (n == nullptr) return {};
    if (!n->is_integer()) return error(k, "expected an integer");
    const int64_t v = *n->value<int64_t>();
    if (v < min) return error(k, std::to_string(v) + " is below " + std::to_string(min));
    out = v;
    return {};
  }
  bool has(std::string_view k) const { return table_.get(k) != nullptr; }
  Status boolean(std::string_view k, bool& out) const {
    const toml::node* n = table_.get(k);
    if (n == nullptr) return {};
    if (!n->is_boolean()) return error(k, "expected true or false");
    out = *n->value<bool>();
    return {};
  }
  Status texts(std::string_view k, std::vector<std::string>& out, bool required) const {
    const toml::node* n = table_.get(k);
    if (n == nullptr) return required ? Status(error(k, "missing required key")) : Status();
    const toml::array* a = n->as_array();
    if (a == nullptr) return error(k, "expected an array of strings");
    for (size_t i = 0; i < a->size(); ++i) {
      if (!(*a)[i].is_string()) {
        return error(std::string(k) + "[" + std::to_string(i) + "]", "expected a string");
      }
      out.push_back(*(*a)[i].value<std::string>());
    }
    return {};
  }

 private:
  const toml::table& table_;
  std::string path_;
  std::string file_;
  bool options_ = false;
};

// The tables of an array of tables `k` ([[k]]), or an error naming the key.
Result<std::vector<const toml::table*>> tablesOf(const toml::table& root, std::string_view k,
                                                 const std::string& file) {
  std::vector<const toml::table*> out;
  const toml::node* n = root.get(k);
  if (n == nullptr) return out;
  const toml::array* a = n->as_array();
  if (a == nullptr || !a->is_array_of_tables()) {
    return makeError(Errc::malformed, file + ": key '" + std::string(k) +
                                          "' must be an array of tables ([[" + std::string(k) +
                                          "]])");
  }
  for (const auto& t : *a) out.push_back(t.as_table());
  return out;
}

std::string indexed(std::string_view k, size_t i) {
  return std::string(k) + "[" + std::to_string(i) + "]";
}

std::string joined(const std::vector<std::string>& items) {
  std::string out;
  for (const std::string& i : items) out += (out.empty() ? "" : ", ") + i;
  return out;
}

// Reads and checks an observer rule's contracts and filters against the contracts the
// network runs: each contract registered, each command declared by one of them, the amount
// field a declared int64 field of a state type of each of them.
Status checkObserverFilters(const SpecReader& r, SpecObserver& o, const ContractRegistry& registry) {
  std::vector<const Contract*> found;
  for (size_t j = 0; j < o.contracts.size(); ++j) {
    const Contract* c = registry.find(o.contracts[j]);
    if (c == nullptr) {
      return r.error(indexed("contracts", j), "no contract is named '" + o.contracts[j] +
                                                  "' (known: " + joined(registry.names()) + ")");
    }
    found.push_back(c);
  }
  CCAL_TRY(r.texts("commands", o.commands, false));
  if (!o.commands.empty() && o.contracts.empty()) {
    return r.error("commands", "a command filter needs contracts to filter");
  }
  for (size_t j = 0; j < o.commands.size(); ++j) {
    bool declared = false;
    std::vector<std::string> known;
    for (const Contract* c : found) {
      for (std::string_view t : c->commandTypes()) {
        known.emplace_back(t);
        declared = declared || t == o.commands[j];
      }
    }
    if (!declared) {
      return r.error(indexed("commands", j), "no contract of the rule declares a command '" +
                                                 o.commands[j] + "' (declared: " + joined(known) +
                                                 ")");
    }
  }
  CCAL_TRY(r.integer64("amount_at_least", o.amount_at_least, 0));
  if (o.amount_at_least && o.contracts.empty()) {
    return r.error("amount_at_least", "a threshold needs contracts whose amount it bounds");
  }
  if (r.has("amount_field") && !r.has("amount_at_least")) {
    return r.error("amount_field", "an amount field without amount_at_least");
  }
  CCAL_TRY(r.text("amount_field", o.amount_field, false));
  if (!o.amount_at_least) return {};
  for (const Contract* c : found) {
    bool declared = false;
    for (const auto& schema : c->stateSchemas()) {
      for (const FieldDecl& d : schema->fields()) {
        declared = declared || (d.name == o.amount_field && d.type == FieldType::int64);
      }
    }
    if (!declared) {
      return r.error("amount_field", "no state type of contract '" + std::string(c->name()) +
                                         "' declares an int64 field '" + o.amount_field + "'");
    }
  }
  return {};
}

}  // namespace

Result<NetworkSpec> parseNetworkSpec(std::string_view toml_text, const fs::path& file_path) {
  const std::string file = file_path.string();
  toml::table root;
  try {
    root = toml::parse(toml_text, file);
  } catch (const toml::parse_error& e) {
    const auto& at = e.source().begin;
    return makeError(Errc::malformed, file + ": line " + std::to_string(at.line) + ", column " +
                                          std::to_string(at.column) + ": " +
                                          std::string(e.description()));
  }
  NetworkSpec spec;
  SpecReader top(root, "", file);
  ContractRegistry registry;
  contracts::registerDealContracts(registry);
  CCAL_TRY(top.allowOnly({"network", "nodes", "notaries", "observers"}));

  if (const toml::node* n = root.get("network")) {
    if (!n->is_table()) return top.error("network", "must be a table ([network])");
    SpecReader r(*n->as_table(), "network", file);
    CCAL_TRY(r.allowOnly({"root", "doorman", "network_map", "validity_days", "epoch",
                          "min_platform_version", "max_message_bytes", "max_transaction_bytes"}));
    CCAL_TRY(r.x500("root", spec.root_name, false));
    CCAL_TRY(r.x500("doorman", spec.doorman_name, false));
    CCAL_TRY(r.x500("network_map", spec.network_map_name, false));
    CCAL_TRY(r.integer("validity_days", spec.validity_days, 1, SpecLimits::validity_days_max));
    CCAL_TRY(r.integer("epoch", spec.epoch, 1, UINT32_MAX));
    CCAL_TRY(r.integer("min_platform_version", spec.min_platform_version, 1, UINT32_MAX));
    CCAL_TRY(r.integer("max_message_bytes", spec.max_message_bytes, 1024, 1u << 30));
    CCAL_TRY(r.integer("max_transaction_bytes", spec.max_transaction_bytes, 1024, 1u << 30));
  }

  // Names, X.500 names and addresses, each unique across the whole network.
  std::map<std::string, std::string> x500_owner;     // x500 -> key that claimed it
  std::map<std::string, std::string> address_owner;  // host:port -> key
  for (const auto* special : {&spec.root_name, &spec.doorman_name, &spec.network_map_name}) {
    if (!x500_owner.emplace(*special, "network").second) {
      return top.error("network", "the root, doorman and network map need distinct names");
    }
  }
  auto claim = [&](std::map<std::string, std::string>& owners, const std::string& value,
                   const std::string& key, const char* what) -> Status {
    const auto [it, fresh] = owners.emplace(value, key);
    if (!fresh) {
      return makeError(Errc::malformed, file + ": key '" + key + "': " + what + " '" + value +
                                            "' is already used by '" + it->second + "'");
    }
    return {};
  };

  auto node_tables = tablesOf(root, "nodes", file);
  CCAL_TRY(node_tables);
  if (node_tables->empty()) return top.error("nodes", "a network needs at least one [[nodes]]");
  if (node_tables->size() > SpecLimits::nodes_max) {
    return top.error("nodes", "over the limit of " + std::to_string(SpecLimits::nodes_max));
  }
  std::map<std::string, size_t> node_index;
  for (size_t i = 0; i < node_tables->size(); ++i) {
    SpecReader r(*(*node_tables)[i], indexed("nodes", i), file);
    CCAL_TRY(r.allowOnly({"name", "x500", "role", "p2p", "api"}));
    SpecNode node;
    CCAL_TRY(r.shortName("name", node.name));
    CCAL_TRY(r.x500("x500", node.x500, true));
    std::string role = "node";
    CCAL_TRY(r.text("role", role, false));
    auto parsed_role = parseRole(role);
    if (!parsed_role) return r.error("role", parsed_role.error().message);
    node.role = *parsed_role;
    CCAL_TRY(r.address("p2p", node.p2p));
    CCAL_TRY(r.address("api", node.api));
    if (node_index.count(node.name)) {
      return r.error("name", "'" + node.name + "' is already the name of " +
                                 indexed("nodes", node_index[node.name]));
    }
    node_index[node.name] = i;
    CCAL_TRY(claim(x500_owner, node.x500, r.key("x500"), "X.500 name"));
    CCAL_TRY(claim(address_owner, node.p2p.toString(), r.key("p2p"), "address"));
    CCAL_TRY(claim(address_owner, node.api.toString(), r.key("api"), "address"));
    spec.nodes.push_back(std::move(node));
  }

  auto notary_tables = tablesOf(root, "notaries", file);
  CCAL_TRY(notary_tables);
  std::map<std::string, std::string> replica_of;  // node name -> notaries[i] key
  std::set<std::string> notary_names;
  for (size_t i = 0; i < notary_tables->size(); ++i) {
    SpecReader r(*(*notary_tables)[i], indexed("notaries", i), file);
    CCAL_TRY(r.allowOnly({"name", "x500", "f", "validating", "replicas"}));
    SpecNotary notary;
    CCAL_TRY(r.shortName("name", notary.name));
    if (!notary_names.insert(notary.name).second) {
      return r.error("name", "'" + notary.name + "' is already the name of another notary");
    }
    CCAL_TRY(r.x500("x500", notary.x500, true));
    CCAL_TRY(claim(x500_owner, notary.x500, r.key("x500"), "X.500 name"));
    if (!(*notary_tables)[i]->contains("f")) return r.error("f", "missing required key");
    CCAL_TRY(r.integer("f", notary.f, 0, SpecLimits::notary_f_max));
    CCAL_TRY(r.boolean("validating", notary.validating));
    CCAL_TRY(r.texts("replicas", notary.replicas, true));
    if (notary.replicas.size() != 3 * notary.f + 1) {
      return r.error("replicas", std::to_string(notary.replicas.size()) +
                                     " replicas, but f = " + std::to_string(notary.f) +
                                     " needs 3f+1 = " + std::to_string(3 * notary.f + 1));
    }
    for (size_t j = 0; j < notary.replicas.size(); ++j) {
      const auto& replica = notary.replicas[j];
      const std::string k = indexed("replicas", j);
      const auto it = node_index.find(replica);
      if (it == node_index.end()) return r.error(k, "no node is named '" + replica + "'");
      if (spec.nodes[it->second].role != Role::notary_replica) {
        return r.error(k, "node '" + replica + "' has role " +
                              roleName(spec.nodes[it->second].role) + ", not notary-replica");
      }
      const auto [owner, fresh] = replica_of.emplace(replica, r.key(k));
      if (!fresh) {
        return r.error(k, "node '" + replica + "' is already a replica at '" + owner->second + "'");
      }
    }
    spec.notaries.push_back(std::move(notary));
  }
  for (size_t i = 0; i < spec.nodes.size(); ++i) {
    if (spec.nodes[i].role == Role::notary_replica && !replica_of.count(spec.nodes[i].name)) {
      return makeError(Errc::malformed,
                       file + ": key '" + indexed("nodes", i) + ".role': node '" +
                           spec.nodes[i].name +
                           "' is a notary-replica but no [[notaries]] lists it as a replica");
    }
  }

  auto observer_tables = tablesOf(root, "observers", file);
  CCAL_TRY(observer_tables);
  for (size_t i = 0; i < observer_tables->size(); ++i) {
    SpecReader r(*(*observer_tables)[i], indexed("observers", i), file);
    CCAL_TRY(r.allowOnly({"observer", "contracts", "parties", "all_transactions", "commands",
                          "amount_at_least", "amount_field"}));
    SpecObserver o;
    CCAL_TRY(r.text("observer", o.observer, true));
    const auto it = node_index.find(o.observer);
    if (it == node_index.end()) return r.error("observer", "no node is named '" + o.observer + "'");
    if (spec.nodes[it->second].role != Role::regulator) {
      return r.error("observer", "node '" + o.observer + "' has role " +
                                     roleName(spec.nodes[it->second].role) + ", not regulator");
    }
    CCAL_TRY(r.texts("contracts", o.contracts, false));
    CCAL_TRY(r.texts("parties", o.parties, false));
    for (size_t j = 0; j < o.parties.size(); ++j) {
      if (!node_index.count(o.parties[j])) {
        return r.error(indexed("parties", j), "no node is named '" + o.parties[j] + "'");
      }
    }
    CCAL_TRY(r.boolean("all_transactions", o.all_transactions));
    CCAL_TRY(checkObserverFilters(r, o, registry));
    if (o.contracts.empty() && o.parties.empty() && !o.all_transactions) {
      return r.error("observer",
                     "the rule observes nothing: give contracts, parties or "
                     "all_transactions = true");
    }
    spec.observers.push_back(std::move(o));
  }
  return spec;
}

Result<NetworkSpec> loadNetworkSpec(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    return makeError(Errc::not_found, file.string() + ": cannot read the network spec: " +
                                          std::string(std::strerror(errno)));
  }
  std::stringstream text;
  text << in.rdbuf();
  return parseNetworkSpec(text.str(), file);
}

// --- writing ----------------------------------------------------------------------------------

namespace {

Status makeDir(const fs::path& dir, mode_t mode) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return makeError(Errc::io_error, dir.string() + ": cannot create: " + ec.message());
  if (::chmod(dir.c_str(), mode) != 0) {
    return makeError(Errc::io_error,
                     dir.string() + ": cannot set the mode: " + std::string(std::strerror(errno)));
  }
  return {};
}

template <class T>
T must(Result<T> r, const char* what) {
  // Everything issued here was checked when the spec was read; a failure is a bug.
  CCAL_ASSERT_MSG(r.ok(), what);
  return std::move(r).value();
}

struct Issued {
  const SpecNode* spec = nullptr;
  KeyPair node_ca_key = KeyPair::generate();
  KeyPair identity_key = KeyPair::generate();
  KeyPair tls_key = KeyPair::generate();
  std::vector<Certificate> identity_chain;
  std::vector<Certificate> tls_chain;
  Bytes signed_node_info;
};

std::string apiUsersToml() {
  std::string out =
      "# CCAL control API users. Each request carries \"Authorization: Bearer <token>\".\n"
      "# Roles: admin (everything), operator (run flows, read), read-only (read).\n";
  const std::pair<const char*, const char*> users[] = {
      {"admin", "admin"}, {"operator", "operator"}, {"reader", "read-only"}};
  for (const auto& [name, role] : users) {
    out += "\n[[users]]\nname = \"" + std::string(name) + "\"\nrole = \"" + role +
           "\"\ntoken = \"" + toHex(randomBytes(32)) + "\"\n";
  }
  return out;
}

// Removes what an earlier bootstrap wrote into `out`.
Status clearPrevious(const fs::path& out) {
  std::error_code ec;
  std::vector<fs::path> remove;
  for (fs::directory_iterator it(out, ec), end; !ec && it != end; it.increment(ec)) {
    const auto& p = it->path();
    if (p.filename() == operator_dir || p.filename() == "network.json" ||
        (it->is_directory() && fs::exists(p / "node.toml"))) {
      remove.push_back(p);
    }
  }
  if (ec) return makeError(Errc::io_error, out.string() + ": " + ec.message());
  for (const auto& p : remove) {
    fs::remove_all(p, ec);
    if (ec) return makeError(Errc::io_error, p.string() + ": cannot remove: " + ec.message());
  }
  return {};
}

// A member's node CA (under the doorman), identity and TLS certificates, and its node CA's
// empty revocation list (appended to `crls_pem`).
Result<Issued> issueMember(const CertificateAuthority& doorman, const Certificate& doorman_cert,
                           const SpecNode& spec, const Validity& validity, TimePoint now,
                           std::string& crls_pem) {
  Issued m;
  m.spec = &spec;
  auto n = X500Name::parse(spec.x500);
  CCAL_TRY(n);
  auto ca_cert = doorman.issueNodeCa(*n, m.node_ca_key.publicKey(), validity);
  CCAL_TRY(ca_cert);
  auto node_ca = CertificateAuthority::fromCertificate(*ca_cert, m.node_ca_key);
  CCAL_TRY(node_ca);
  auto identity = node_ca->issueLegalIdentity(*n, m.identity_key.publicKey(), validity);
  CCAL_TRY(identity);
  auto tls = node_ca->issueTls(*n, m.tls_key.publicKey(), validity);
  CCAL_TRY(tls);
  auto node_crl = node_ca->issueCrl({}, now, validity.not_after);
  CCAL_TRY(node_crl);
  crls_pem += node_crl->pem();
  m.identity_chain = {*identity, *ca_cert, doorman_cert};
  m.tls_chain = {*tls, *ca_cert, doorman_cert};
  return m;
}

// The member's first node info (serial 1), signed with its identity key.
Bytes signFirstNodeInfo(const Issued& m, uint32_t platform_version) {
  NodeInfo info;
  info.name = m.spec->x500;
  info.addresses = {m.spec->p2p};
  info.identity_chain = m.identity_chain;
  info.tls_chain = m.tls_chain;
  info.legal_identity_key = m.identity_key.publicKey();
  info.role = m.spec->role;
  info.platform_version = platform_version;
  info.serial = 1;
  return SignedNodeInfo::sign(info, m.identity_key).encode();
}

NodeConfig memberConfig(const SpecNode& spec, uint32_t platform_version,
                        uint32_t max_message_bytes) {
  NodeConfig config;
  config.name = spec.name;
  config.x500 = spec.x500;
  config.role = spec.role;
  config.platform_version = platform_version;
  config.p2p_listen = spec.p2p;
  config.p2p_advertised = spec.p2p;
  config.api_listen = spec.api;
  config.frame_bytes_max = std::min(config.frame_bytes_max, max_message_bytes);
  return config;
}

nlohmann::json memberSummary(const Issued& m, const fs::path& dir) {
  return {{"name", m.spec->name},
          {"x500", m.spec->x500},
          {"role", roleName(m.spec->role)},
          {"p2p", m.spec->p2p.toString()},
          {"api", m.spec->api.toString()},
          {"config", (dir / "node.toml").string()},
          {"identity_key", m.identity_key.publicKey().hex()}};
}

// A member's folder: keys, certificates, revocation lists, parameters, the node infos
// (`node_infos`: file name -> signed node info), API users and node.toml.
Status writeMemberFolder(const fs::path& dir, const Issued& m, const Certificate& root,
                         const std::string& crls_pem, const Bytes& signed_parameters,
                         const std::map<std::string, Bytes>& node_infos, const NodeConfig& config,
                         const std::string& written_by) {
  CCAL_TRY(makeDir(dir, 0755));
  CCAL_TRY(makeDir(dir / "keys", 0700));
  CCAL_TRY(makeDir(dir / "certs", 0755));
  CCAL_TRY(makeDir(dir / "node-infos", 0755));
  CCAL_TRY(writeFileAtomically(dir / "keys/identity.key", privateKeyPem(m.identity_key), 0600));
  CCAL_TRY(writeFileAtomically(dir / "keys/tls.key", privateKeyPem(m.tls_key), 0600));
  CCAL_TRY(writeFileAtomically(dir / "keys/node-ca.key", privateKeyPem(m.node_ca_key), 0600));
  CCAL_TRY(writeFileAtomically(dir / "certs/network-root.pem", root.pem(), 0644));
  CCAL_TRY(writeFileAtomically(dir / "certs/identity-chain.pem", toPem(m.identity_chain), 0644));
  CCAL_TRY(writeFileAtomically(dir / "certs/tls-chain.pem", toPem(m.tls_chain), 0644));
  CCAL_TRY(writeFileAtomically(dir / "certs/crls.pem", crls_pem, 0644));
  CCAL_TRY(writeFileAtomically(dir / "network-parameters", signed_parameters, 0644));
  for (const auto& [file, info] : node_infos) {
    CCAL_TRY(writeFileAtomically(dir / "node-infos" / file, info, 0644));
  }
  CCAL_TRY(writeFileAtomically(dir / "api-users.toml", apiUsersToml(), 0600));
  const std::string header = "# CCAL node configuration for " + m.spec->x500 + ", written by `" +
                             written_by +
                             "`.\n"
                             "# Relative paths resolve against this file's folder.\n\n";
  return writeFileAtomically(dir / "node.toml", header + renderNodeConfig(config), 0644);
}

}  // namespace

Result<BootstrapResult> bootstrapNetwork(const NetworkSpec& spec, const fs::path& out_dir,
                                         bool force, TimePoint now) {
  std::error_code ec;
  const fs::path out = fs::absolute(out_dir, ec).lexically_normal();
  if (ec) return makeError(Errc::io_error, out_dir.string() + ": " + ec.message());
  if (fs::exists(out) && !fs::is_directory(out)) {
    return makeError(Errc::conflict, out.string() + " exists and is not a folder");
  }
  if (fs::exists(out) && !fs::is_empty(out, ec)) {
    if (!force) {
      return makeError(Errc::conflict, out.string() +
                                           " is not empty: refusing to overwrite a network "
                                           "(use --force to replace it, vaults included)");
    }
    CCAL_TRY(clearPrevious(out));
  }

  // --- the PKI -------------------------------------------------------------------------------
  now = std::chrono::time_point_cast<std::chrono::seconds>(now);
  const Validity validity{now - std::chrono::minutes(1),
                          now + std::chrono::hours(24) * spec.validity_days};
  const auto name = [](const std::string& x500) { return must(X500Name::parse(x500), "X.500"); };
  const KeyPair root_key = KeyPair::generate();
  const KeyPair doorman_key = KeyPair::generate();
  const KeyPair map_key = KeyPair::generate();
  auto root = CertificateAuthority::createRoot(name(spec.root_name), root_key, validity);
  CCAL_TRY(root);
  auto doorman_cert =
      root->issueIntermediate(name(spec.doorman_name), doorman_key.publicKey(), validity);
  CCAL_TRY(doorman_cert);
  auto doorman = CertificateAuthority::fromCertificate(*doorman_cert, doorman_key);
  CCAL_TRY(doorman);
  auto map_cert =
      root->issueLegalIdentity(name(spec.network_map_name), map_key.publicKey(), validity);
  CCAL_TRY(map_cert);
  // Empty revocation lists of every CA (root, doorman, each node CA), valid as long as the
  // certificates, so that a full check (`openssl verify -crl_check_all`) passes: the operator
  // issues newer ones (keys in _operator/) to revoke a member.
  auto root_crl = root->issueCrl({}, now, validity.not_after);
  CCAL_TRY(root_crl);
  auto doorman_crl = doorman->issueCrl({}, now, validity.not_after);
  CCAL_TRY(doorman_crl);
  std::string crls_pem = root_crl->pem() + doorman_crl->pem();

  std::vector<Issued> issued;
  issued.reserve(spec.nodes.size());
  for (const auto& node : spec.nodes) {
    auto m = issueMember(*doorman, *doorman_cert, node, validity, now, crls_pem);
    CCAL_TRY(m);
    issued.push_back(std::move(m).value());
  }
  std::map<std::string, const Issued*> by_name;
  for (const Issued& m : issued) by_name[m.spec->name] = &m;

  NetworkParameters parameters;
  parameters.epoch = spec.epoch;
  parameters.min_platform_version = spec.min_platform_version;
  parameters.max_message_bytes = spec.max_message_bytes;
  parameters.max_transaction_bytes = spec.max_transaction_bytes;
  parameters.modified_micros =
      std::chrono::duration_cast<std::chrono::microseconds>(now.time_since_epoch()).count();
  for (const auto& n : spec.notaries) {
    NotaryInfo info;
    info.name = n.x500;
    info.validating = n.validating;
    info.f = n.f;
    std::vector<PublicKey> keys;
    for (const auto& r : n.replicas) {
      const Issued& m = *by_name.at(r);
      keys.push_back(m.identity_key.publicKey());
      info.replicas.push_back({m.spec->x500, m.identity_key.publicKey(), {m.spec->p2p}});
    }
    auto key = Key::anyOf(2 * n.f + 1, keys);
    CCAL_TRY(key);
    info.service_key = *key;
    parameters.notaries.push_back(std::move(info));
  }
  for (const auto& o : spec.observers) {
    ObserverRule rule;
    rule.observer = by_name.at(o.observer)->spec->x500;
    rule.contracts = o.contracts;
    for (const auto& p : o.parties) rule.parties.push_back(by_name.at(p)->spec->x500);
    rule.all_transactions = o.all_transactions;
    rule.commands = o.commands;
    if (o.amount_at_least) {
      rule.amount_at_least = o.amount_at_least;
      rule.amount_field = o.amount_field;
    }
    parameters.observers.push_back(std::move(rule));
  }
  const Bytes signed_parameters =
      SignedNetworkParameters::sign(parameters, map_key, *map_cert).encode();

  std::map<std::string, Bytes> node_infos;  // file name (the member's name) -> signed
  for (Issued& m : issued) {
    m.signed_node_info = signFirstNodeInfo(m, spec.min_platform_version);
    node_infos[m.spec->name] = m.signed_node_info;
  }

  // --- the files ------------------------------------------------------------------------------
  BootstrapResult result;
  result.out_dir = out;
  result.spec = spec;
  CCAL_TRY(makeDir(out, 0755));

  const fs::path op = out / operator_dir;
  CCAL_TRY(makeDir(op, 0700));
  CCAL_TRY(writeFileAtomically(op / "root.key", privateKeyPem(root_key), 0600));
  CCAL_TRY(writeFileAtomically(op / "doorman.key", privateKeyPem(doorman_key), 0600));
  CCAL_TRY(writeFileAtomically(op / "network-map.key", privateKeyPem(map_key), 0600));
  CCAL_TRY(writeFileAtomically(op / "root.pem", root->certificate().pem(), 0644));
  CCAL_TRY(writeFileAtomically(op / "doorman.pem", doorman_cert->pem(), 0644));
  CCAL_TRY(writeFileAtomically(op / "network-map.pem", map_cert->pem(), 0644));
  CCAL_TRY(writeFileAtomically(op / "crls.pem", crls_pem, 0644));
  CCAL_TRY(writeFileAtomically(op / "network-parameters", signed_parameters, 0644));

  nlohmann::json members = nlohmann::json::array();
  for (size_t i = 0; i < issued.size(); ++i) {
    const Issued& m = issued[i];
    const fs::path dir = out / m.spec->name;
    NodeConfig config = memberConfig(*m.spec, spec.min_platform_version, spec.max_message_bytes);
    nlohmann::json member = memberSummary(m, dir);
    for (const auto& n : spec.notaries) {
      for (size_t r = 0; r < n.replicas.size(); ++r) {
        if (n.replicas[r] != m.spec->name) continue;
        config.notary_cluster = n.name;
        config.notary_replica_index = static_cast<uint32_t>(r);
        member["notary"] = n.name;
        member["replica_index"] = r;
      }
    }
    CCAL_TRY(writeMemberFolder(dir, m, root->certificate(), crls_pem, signed_parameters, node_infos,
                               config, "ccal network bootstrap"));
    result.config_files.push_back(dir / "node.toml");
    members.push_back(std::move(member));
  }

  nlohmann::json notaries = nlohmann::json::array();
  for (size_t i = 0; i < spec.notaries.size(); ++i) {
    const auto& n = spec.notaries[i];
    notaries.push_back({{"name", n.name},
                        {"x500", n.x500},
                        {"f", n.f},
                        {"validating", n.validating},
                        {"threshold", 2 * n.f + 1},
                        {"replicas", n.replicas},
                        {"service_key", toHex(parameters.notaries[i].service_key.encode())}});
  }
  result.summary = {
      {"out", out.string()}, {"operator", op.string()},
      {"epoch", spec.epoch}, {"network_root", root->certificate().subject().toString()},
      {"members", members},  {"notaries", notaries}};
  CCAL_TRY(writeFileAtomically(out / "network.json", result.summary.dump(2) + "\n", 0644));
  return result;
}

namespace {

// A file of the network folder, the operator's or a member's (a chain, a certificate, a key,
// the CRLs, the parameters, network.json): all far below this bound.
Result<std::string> readNetworkFile(const fs::path& file) {
  return readFileBounded(file, NetworkMap::crls_file_bytes_max);
}

struct Doorman {
  Certificate certificate;
  CertificateAuthority ca;
};

// The doorman CA from the operator's folder (_operator/doorman.pem and doorman.key).
Result<Doorman> loadDoorman(const fs::path& op) {
  auto doorman_pem = readNetworkFile(op / "doorman.pem");
  CCAL_TRY(doorman_pem);
  auto doorman_cert = Certificate::fromPem(*doorman_pem);
  if (!doorman_cert)
    return makeError(doorman_cert.error().code,
                     (op / "doorman.pem").string() + ": " + doorman_cert.error().message);
  auto doorman_key_pem = readNetworkFile(op / "doorman.key");
  CCAL_TRY(doorman_key_pem);
  auto doorman_key = keyPairFromPem(*doorman_key_pem);
  if (!doorman_key)
    return makeError(doorman_key.error().code,
                     (op / "doorman.key").string() + ": " + doorman_key.error().message);
  auto doorman = CertificateAuthority::fromCertificate(*doorman_cert, *doorman_key);
  if (!doorman)
    return makeError(doorman.error().code, "the doorman CA: " + doorman.error().message);
  return Doorman{*doorman_cert, std::move(doorman).value()};
}

// The member folders of a network folder: sub-folders holding a node.toml.
std::vector<fs::path> memberFolders(const fs::path& network_dir) {
  std::vector<fs::path> out;
  std::error_code ec;
  for (fs::directory_iterator it(network_dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->path().filename() != operator_dir && fs::exists(it->path() / "node.toml")) {
      out.push_back(it->path());
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

// The folder of `member` (a folder name) under `network_dir`, or not_found.
Result<fs::path> memberFolder(const fs::path& network_dir, const std::string& member) {
  const fs::path dir = network_dir / member;
  if (member.empty() || member == operator_dir || member.find('/') != std::string::npos ||
      !fs::exists(dir / "node.toml")) {
    return makeError(Errc::not_found, "'" + member + "' is not a member folder of " +
                                          network_dir.string() + " (no " +
                                          (dir / "node.toml").string() + ")");
  }
  return dir;
}

// Revocation lists `crls` into every member's certs/crls.pem, then the operator's copy (last: a
// failure leaves the operator's old lists, so the command can run again).
Status writeCrlsEverywhere(const fs::path& network_dir, const std::string& crls) {
  for (const auto& dir : memberFolders(network_dir)) {
    const fs::path file = dir / "certs/crls.pem";
    if (fs::exists(file)) CCAL_TRY(writeFileAtomically(file, crls, 0644));
  }
  return writeFileAtomically(network_dir / operator_dir / "crls.pem", crls, 0644);
}

}  // namespace

Result<std::string> revokeMember(const fs::path& network_dir, const std::string& member,
                                 TimePoint now) {
  const fs::path op = network_dir / operator_dir;
  auto member_folder = memberFolder(network_dir, member);
  CCAL_TRY(member_folder);
  const fs::path member_dir = *member_folder;
  // The member's node CA: the second certificate of its identity chain.
  const fs::path chain_file = member_dir / "certs/identity-chain.pem";
  auto chain_pem = readNetworkFile(chain_file);
  CCAL_TRY(chain_pem);
  auto chain = certificatesFromPem(*chain_pem);
  if (!chain)
    return makeError(chain.error().code, chain_file.string() + ": " + chain.error().message);
  if (chain->size() < 2) {
    return makeError(Errc::malformed,
                     chain_file.string() + ": no node CA certificate after the identity");
  }
  const Certificate& node_ca = (*chain)[1];
  auto loaded = loadDoorman(op);
  CCAL_TRY(loaded);
  const Certificate& doorman_cert = loaded->certificate;
  const CertificateAuthority& doorman = loaded->ca;
  if (!(node_ca.issuer() == doorman_cert.subject())) {
    return makeError(
        Errc::certificate_invalid,
        chain_file.string() + ": its node CA was not issued by this network's doorman");
  }
  auto lists = NetworkMap::readCrlsFile(op / "crls.pem");
  CCAL_TRY(lists);
  const Crl* previous = nullptr;
  for (const auto& l : *lists) {
    if (l.issuer() == doorman_cert.subject()) previous = &l;
  }
  if (previous == nullptr) {
    return makeError(Errc::not_found,
                     (op / "crls.pem").string() + ": no revocation list of the doorman");
  }
  const std::string name = node_ca.subject().toString();
  if (previous->lists(node_ca)) {
    return makeError(Errc::conflict, "member '" + name + "' is already revoked");
  }
  const Certificate revoke[] = {node_ca};
  const TimePoint this_update = std::chrono::time_point_cast<std::chrono::seconds>(now);
  auto next = doorman.issueCrl(
      revoke, this_update, std::max(previous->nextUpdate(), this_update + std::chrono::hours(24)),
      previous);
  CCAL_TRY(next);
  std::string pem;
  for (const auto& l : *lists) pem += &l == previous ? next->pem() : l.pem();
  CCAL_TRY(writeCrlsEverywhere(network_dir, pem));
  return name;
}

Result<nlohmann::json> rotateTls(const fs::path& network_dir, const std::string& member,
                                 TimePoint now) {
  const fs::path op = network_dir / operator_dir;
  auto member_folder = memberFolder(network_dir, member);
  CCAL_TRY(member_folder);
  const fs::path dir = *member_folder;
  auto config = loadNodeConfig(dir / "node.toml");
  CCAL_TRY(config);
  // The member's node CA (its key in the member's folder), the old TLS chain, its node info.
  auto tls_pem = readNetworkFile(config->tls_chain_file);
  CCAL_TRY(tls_pem);
  auto old_chain = certificatesFromPem(*tls_pem);
  if (!old_chain || old_chain->size() != 3) {
    return makeError(Errc::malformed, config->tls_chain_file.string() +
                                          ": not a chain of TLS certificate, node CA and doorman");
  }
  auto node_ca_key_pem = readNetworkFile(dir / "keys/node-ca.key");
  CCAL_TRY(node_ca_key_pem);
  auto node_ca_key = keyPairFromPem(*node_ca_key_pem);
  if (!node_ca_key) {
    return makeError(node_ca_key.error().code,
                     (dir / "keys/node-ca.key").string() + ": " + node_ca_key.error().message);
  }
  const Certificate& node_ca_cert = (*old_chain)[1];
  auto node_ca = CertificateAuthority::fromCertificate(node_ca_cert, *node_ca_key);
  if (!node_ca) {
    return makeError(node_ca.error().code,
                     (dir / "keys/node-ca.key").string() + " is not the key of the node CA in " +
                         config->tls_chain_file.string() + ": " + node_ca.error().message);
  }
  auto info_bytes = readFileBounded(config->node_infos_dir / member,
                                    NetworkMapLimits::node_info_bytes_max + 1024);
  CCAL_TRY(info_bytes);
  auto signed_info = SignedNodeInfo::decode(asBytes(*info_bytes));
  CCAL_TRY(signed_info);
  auto info = NodeInfo::decode(signed_info->raw);
  CCAL_TRY(info);
  if (info->name != config->x500) {
    return makeError(Errc::malformed, (config->node_infos_dir / member).string() +
                                          " is the node info of " + info->name + ", not of " +
                                          config->x500);
  }
  auto identity_pem = readNetworkFile(config->identity_key_file);
  CCAL_TRY(identity_pem);
  auto identity_key = keyPairFromPem(*identity_pem);
  CCAL_TRY(identity_key);
  if (identity_key->publicKey() != info->legal_identity_key) {
    return makeError(Errc::malformed, config->identity_key_file.string() +
                                          " is not the legal identity key of its node info");
  }
  // The node CA's list now: the one in the operator's lists with the node CA as issuer.
  auto lists = NetworkMap::readCrlsFile(op / "crls.pem");
  CCAL_TRY(lists);
  const Crl* previous = nullptr;
  for (const auto& l : *lists) {
    if (l.issuer() == node_ca_cert.subject() && l.number() >= (previous ? previous->number() : 0)) {
      // (Each node CA of the network has the member's name as subject; the newest list wins.)
      previous = &l;
    }
  }

  // The new key and certificate, until the node CA's own end; the old one revoked.
  now = std::chrono::time_point_cast<std::chrono::seconds>(now);
  const KeyPair tls_key = KeyPair::generate();
  auto name = X500Name::parse(config->x500);
  CCAL_TRY(name);
  const Validity validity{now - std::chrono::minutes(1), node_ca_cert.validity().not_after};
  if (validity.not_after <= now) {
    return makeError(Errc::certificate_invalid, member + "'s node CA certificate has expired");
  }
  auto tls = node_ca->issueTls(*name, tls_key.publicKey(), validity);
  CCAL_TRY(tls);
  const Certificate revoke[] = {old_chain->front()};
  auto next =
      node_ca->issueCrl(revoke, now,
                        previous ? std::max(previous->nextUpdate(), now + std::chrono::hours(24))
                                 : validity.not_after,
                        previous);
  CCAL_TRY(next);
  std::string crls;
  for (const auto& l : *lists) crls += &l == previous ? next->pem() : l.pem();
  if (previous == nullptr) crls += next->pem();
  const std::vector<Certificate> new_chain = {*tls, node_ca_cert, (*old_chain)[2]};
  NodeInfo updated = *info;
  updated.tls_chain = new_chain;
  updated.serial = info->serial + 1;
  const Bytes new_info = SignedNodeInfo::sign(updated, *identity_key).encode();

  // The member's own files first (its next start uses the new key), then its node info in
  // every member's folder, then the lists (running members take the node info before the
  // list that revokes the old certificate: the member is not dropped, only its old
  // connections close).
  CCAL_TRY(writeFileAtomically(config->tls_key_file, privateKeyPem(tls_key), 0600));
  CCAL_TRY(writeFileAtomically(config->tls_chain_file, toPem(new_chain), 0644));
  for (const auto& other : memberFolders(network_dir)) {
    CCAL_TRY(writeFileAtomically(other / "node-infos" / member, new_info, 0644));
  }
  CCAL_TRY(writeCrlsEverywhere(network_dir, crls));
  return nlohmann::json{{"member", config->x500},
                        {"revoked_serial", old_chain->front().serialHex()},
                        {"new_serial", tls->serialHex()},
                        {"node_info_serial", updated.serial}};
}

Result<nlohmann::json> addMember(const fs::path& network_dir, const NewMember& request,
                                 TimePoint now) {
  const fs::path op = network_dir / operator_dir;
  if (!fs::exists(op / "doorman.key")) {
    return makeError(Errc::not_found, network_dir.string() +
                                          " is not a network folder with its operator's keys (no " +
                                          (op / "doorman.key").string() + ")");
  }
  // The new member's fields, checked as a spec's [[nodes]] entry is.
  toml::table table{{"name", request.name},
                    {"x500", request.x500},
                    {"role", request.role},
                    {"p2p", request.p2p},
                    {"api", request.api}};
  const SpecReader r = SpecReader::forOptions(table);
  SpecNode spec;
  CCAL_TRY(r.shortName("name", spec.name));
  CCAL_TRY(r.x500("x500", spec.x500, true));
  auto role = parseRole(request.role);
  if (!role) return r.error("role", role.error().message);
  if (*role == Role::notary_replica) {
    return r.error("role",
                   "a notary replica cannot join a running network: the cluster and its "
                   "service key are in the network parameters");
  }
  spec.role = *role;
  CCAL_TRY(r.address("p2p", spec.p2p));
  CCAL_TRY(r.address("api", spec.api));
  if (spec.p2p == spec.api) return r.error("api", "is the same address as p2p");

  // Unique across the network: the folder, the X.500 name, the addresses.
  auto summary_text = readNetworkFile(network_dir / "network.json");
  CCAL_TRY(summary_text);
  nlohmann::json summary = nlohmann::json::parse(*summary_text, nullptr, false);
  if (!summary.is_object() || !summary.contains("members") || !summary["members"].is_array()) {
    return makeError(Errc::malformed, (network_dir / "network.json").string() +
                                          ": not a network summary (no \"members\" array)");
  }
  if (fs::exists(network_dir / spec.name)) {
    return r.error("name", (network_dir / spec.name).string() + " exists already");
  }
  for (const auto& m : summary["members"]) {
    const std::string who = "member '" + m.value("name", std::string()) + "'";
    if (m.value("name", std::string()) == spec.name)
      return r.error("name", "is the name of " + who);
    if (m.value("x500", std::string()) == spec.x500)
      return r.error("x500", "is the X.500 name of " + who);
    for (const char* key : {"p2p", "api"}) {
      const std::string used = m.value(key, std::string());
      if (used == spec.p2p.toString())
        return r.error("p2p", "is the " + std::string(key) + " address of " + who);
      if (used == spec.api.toString())
        return r.error("api", "is the " + std::string(key) + " address of " + who);
    }
  }
  if (summary["members"].size() >= NetworkMapLimits::members_max) {
    return makeError(Errc::too_large, "the network has " +
                                          std::to_string(summary["members"].size()) +
                                          " members, the limit of the network map");
  }

  // The operator's files: the doorman, the root, the revocation lists, the parameters.
  auto doorman = loadDoorman(op);
  CCAL_TRY(doorman);
  auto root_pem = readNetworkFile(op / "root.pem");
  CCAL_TRY(root_pem);
  auto root = Certificate::fromPem(*root_pem);
  if (!root)
    return makeError(root.error().code, (op / "root.pem").string() + ": " + root.error().message);
  auto crls_pem = readNetworkFile(op / "crls.pem");
  CCAL_TRY(crls_pem);
  CCAL_TRY(NetworkMap::parseCrls(*crls_pem, (op / "crls.pem").string()));
  auto signed_parameters = readNetworkFile(op / "network-parameters");
  CCAL_TRY(signed_parameters);
  const Bytes parameters_bytes(signed_parameters->begin(), signed_parameters->end());
  auto parameters = SignedNetworkParameters::decode(parameters_bytes);
  if (!parameters) {
    return makeError(parameters.error().code,
                     (op / "network-parameters").string() + ": " + parameters.error().message);
  }
  auto parameter_values = NetworkParameters::decode(parameters->raw);
  if (!parameter_values) {
    return makeError(parameter_values.error().code, (op / "network-parameters").string() + ": " +
                                                        parameter_values.error().message);
  }

  // Every member's own node info as it last wrote it (a node that moved re-signs its own
  // file), for the new member's node-infos folder.
  std::map<std::string, Bytes> node_infos;
  const std::vector<fs::path> members = memberFolders(network_dir);
  for (const auto& dir : members) {
    const std::string name = dir.filename().string();
    auto info =
        readFileBounded(dir / "node-infos" / name, NetworkMapLimits::node_info_bytes_max + 1024);
    if (!info) return info.error();
    node_infos[name] = Bytes(info->begin(), info->end());
  }

  // Certificates valid from now until the doorman's own end.
  now = std::chrono::time_point_cast<std::chrono::seconds>(now);
  const Validity validity{now - std::chrono::minutes(1), doorman->certificate.validity().not_after};
  if (validity.not_after <= now) {
    return makeError(Errc::certificate_invalid, "the doorman's certificate has expired");
  }
  std::string crls = *crls_pem;
  auto issued = issueMember(doorman->ca, doorman->certificate, spec, validity, now, crls);
  CCAL_TRY(issued);
  issued->signed_node_info = signFirstNodeInfo(*issued, parameter_values->min_platform_version);
  node_infos[spec.name] = issued->signed_node_info;

  // The new folder first (removed again if it cannot be written whole), then the new node
  // info into every member's folder, then the revocation lists (with the new node CA's), the
  // operator's copy last. Running members read both within seconds.
  const fs::path dir = network_dir / spec.name;
  const NodeConfig config = memberConfig(spec, parameter_values->min_platform_version,
                                         parameter_values->max_message_bytes);
  Status written = writeMemberFolder(dir, *issued, *root, crls, parameters_bytes, node_infos,
                                     config, "ccal network add-member");
  if (!written) {
    std::error_code ec;
    fs::remove_all(dir, ec);
    return written.error();
  }
  for (const auto& member_dir : members) {
    CCAL_TRY(
        writeFileAtomically(member_dir / "node-infos" / spec.name, issued->signed_node_info, 0644));
  }
  CCAL_TRY(writeCrlsEverywhere(network_dir, crls));
  nlohmann::json member = memberSummary(*issued, dir);
  summary["members"].push_back(member);
  CCAL_TRY(writeFileAtomically(network_dir / "network.json", summary.dump(2) + "\n", 0644));
  return member;
}

}  // namespace ccal::node
