#include "node/config.h"

#include <toml++/toml.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>

#include "ledger/pki.h"
#include "node/file_io.h"
#include "notary/pbft_messages.h"
#include "notary/vote_log.h"

namespace ccal::node {

const char* roleName(Role role) {
  switch (role) {
    case Role::node:
      return "node";
    case Role::notary_replica:
      return "notary-replica";
    case Role::regulator:
      return "regulator";
  }
  CCAL_ASSERT_MSG(false, "unknown role");
  return "";
}

Result<Role> parseRole(std::string_view text) {
  for (Role r : {Role::node, Role::notary_replica, Role::regulator}) {
    if (text == roleName(r)) return r;
  }
  return makeError(Errc::malformed, "role '" + std::string(text) +
                                        "' is not one of node, notary-replica, regulator");
}

const char* logLevelName(LogLevel level) {
  static constexpr const char* names[] = {"trace", "debug", "info", "warn", "error", "off"};
  return names[static_cast<size_t>(level)];
}

std::string HostPort::toString() const {
  const bool v6 = host.find(':') != std::string::npos;
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

Result<HostPort> HostPort::parse(std::string_view text) {
  auto bad = [&](const std::string& why) -> Result<HostPort> {
    return makeError(Errc::malformed, "address '" + std::string(text) + "' " + why);
  };
  const auto colon = text.rfind(':');
  if (colon == std::string_view::npos) return bad("has no port (write host:port)");
  std::string_view host = text.substr(0, colon);
  const std::string_view port_text = text.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  } else if (host.find(':') != std::string_view::npos) {
    return bad("has an IPv6 host outside brackets (write [::1]:port)");
  }
  if (host.empty()) return bad("has no host");
  if (host.find_first_of(" \t/[]") != std::string_view::npos) return bad("has an invalid host");
  unsigned port = 0;
  const auto [end, ec] =
      std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (ec != std::errc() || end != port_text.data() + port_text.size() || port == 0 ||
      port > 65535) {
    return bad("has a port that is not a number from 1 to 65535");
  }
  return HostPort{std::string(host), static_cast<uint16_t>(port)};
}

namespace {

namespace fs = std::filesystem;

// A TOML basic string literal.
std::string tomlString(std::string_view s) {
  std::string out = "\"";
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += ch;
    } else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      out += buf;
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

std::string typeOf(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::table:
      return "a table";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a float";
    case toml::node_type::boolean:
      return "a boolean";
    default:
      return "a date or time";
  }
}

// One key of node.toml: how to read it, how to print its value, what it means.
struct KeySpec {
  std::string key;  // dotted
  std::string type;
  bool required;
  std::string meaning;
  // Reads the value into the config; an error message without the file and key, or "".
  std::function<std::string(NodeConfig&, const toml::node&)> read;
  // The value as a TOML literal.
  std::function<std::string(const NodeConfig&)> show;
  std::string default_override;  // documentation of a default that is not a plain value
};

template <class T>
using Field = std::function<T&(NodeConfig&)>;

template <class T>
const T& constField(const Field<T>& f, const NodeConfig& c) {
  return f(const_cast<NodeConfig&>(c));
}

KeySpec text(std::string key, bool required, std::string meaning, Field<std::string> f,
             std::function<std::string(std::string&)> check = {}) {
  return {std::move(key),
          "string",
          required,
          std::move(meaning),
          [f, check](NodeConfig& c, const toml::node& n) -> std::string {
            if (!n.is_string()) return "expected a string, got " + typeOf(n);
            f(c) = *n.value<std::string>();
            return check ? check(f(c)) : "";
          },
          [f](const NodeConfig& c) { return tomlString(constField(f, c)); },
          {}};
}

template <class T>
KeySpec integer(std::string key, std::string meaning, Field<T> f, int64_t min, int64_t max) {
  return {std::move(key),
          "integer",
          false,
          std::move(meaning),
          [f, min, max](NodeConfig& c, const toml::node& n) -> std::string {
            if (!n.is_integer()) return "expected an integer, got " + typeOf(n);
            const int64_t v = *n.value<int64_t>();
            if (v < min || v > max) {
              return std::to_string(v) + " is outside the range " + std::to_string(min) + " to " +
                     std::to_string(max);
            }
            f(c) = static_cast<T>(v);
            return "";
          },
          [f](const NodeConfig& c) { return std::to_string(constField(f, c)); },
          {}};
}

KeySpec address(std::string key, bool required, std::string meaning, Field<HostPort> f) {
  return {std::move(key),
          "host:port",
          required,
          std::move(meaning),
          [f](NodeConfig& c, const toml::node& n) -> std::string {
            if (!n.is_string()) return "expected a string \"host:port\", got " + typeOf(n);
            auto hp = HostPort::parse(*n.value<std::string>());
            if (!hp) return hp.error().message;
            f(c) = *hp;
            return "";
          },
          [f](const NodeConfig& c) { return tomlString(constField(f, c).toString()); },
          {}};
}

KeySpec path(std::string key, std::string meaning, Field<fs::path> f) {
  return {std::move(key),
          "path",
          false,
          std::move(meaning),
          [f](NodeConfig& c, const toml::node& n) -> std::string {
            if (!n.is_string()) return "expected a string (a path), got " + typeOf(n);
            f(c) = fs::path(*n.value<std::string>());
            return "";
          },
          [f](const NodeConfig& c) { return tomlString(constField(f, c).string()); },
          {}};
}

template <class E, size_t N>
KeySpec choice(std::string key, std::string meaning, Field<E> f, const E (&values)[N],
               const char* (*name)(E)) {
  std::vector<E> all(values, values + N);
  std::string listed;
  for (E v : all) listed += std::string(listed.empty() ? "" : " | ") + name(v);
  return {std::move(key),
          listed,
          false,
          std::move(meaning),
          [f, all, name, listed](NodeConfig& c, const toml::node& n) -> std::string {
            if (!n.is_string()) return "expected a string (" + listed + "), got " + typeOf(n);
            const auto s = *n.value<std::string>();
            for (E v : all) {
              if (s == name(v)) {
                f(c) = v;
                return "";
              }
            }
            return "'" + s + "' is not one of " + listed;
          },
          [f, name](const NodeConfig& c) { return tomlString(name(constField(f, c))); },
          {}};
}

constexpr int64_t u32_max = 0xffffffffLL;
constexpr int64_t micros_per_day = 86'400'000'000LL;

std::string checkShortName(std::string& s) {
  if (s.empty() || s.size() > 64) return "'" + s + "' must be 1 to 64 characters";
  for (char ch : s) {
    if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-')) {
      return "'" + s + "' may contain only a-z, 0-9 and '-'";
    }
  }
  if (s.front() == '-') return "'" + s + "' must not start with '-'";
  return "";
}

std::string checkX500(std::string& s) {
  auto name = X500Name::parse(s);
  if (!name) return name.error().message;
  s = name->toString();
  return "";
}

// The one table of every key. Order is the order of the documentation and of a rendered file.
const std::vector<KeySpec>& keySpecs() {
  static const std::vector<KeySpec> specs = [] {
    std::vector<KeySpec> k;
    k.push_back(text(
        "node.name", true,
        "Short name of this member (a-z, 0-9, '-'); its folder name in a bootstrapped "
        "network",
        [](NodeConfig& c) -> std::string& { return c.name; }, checkShortName));
    k.push_back(text(
        "node.x500", true,
        "X.500 name, e.g. \"O=Haikou Fishing Cooperative, L=Haikou, C=CN\"; must be the "
        "subject of the identity and TLS certificates",
        [](NodeConfig& c) -> std::string& { return c.x500; }, checkX500));
    static constexpr Role roles[] = {Role::node, Role::notary_replica, Role::regulator};
    k.push_back(choice("node.role", "What this member is; a notary replica needs [notary]",
                       Field<Role>([](NodeConfig& c) -> Role& { return c.role; }), roles,
                       roleName));
    k.push_back(integer<uint32_t>(
        "node.platform_version", "Platform version advertised in the node info",
        [](NodeConfig& c) -> uint32_t& { return c.platform_version; }, 1, u32_max));
    k.push_back(address("p2p.listen", true, "Address the TLS peer listener binds",
                        [](NodeConfig& c) -> HostPort& { return c.p2p_listen; }));
    auto adv =
        address("p2p.advertised", false, "Address peers connect to, published in the node info",
                [](NodeConfig& c) -> HostPort& { return c.p2p_advertised; });
    adv.default_override = "p2p.listen";
    k.push_back(adv);
    k.push_back(address("api.listen", true, "Address of the HTTP control API (keep it local)",
                        [](NodeConfig& c) -> HostPort& { return c.api_listen; }));
    k.push_back(path("api.users_file",
                     "API users and bearer tokens ([[users]] name, role, token), mode 0600",
                     [](NodeConfig& c) -> fs::path& { return c.api_users_file; }));
    k.push_back(path("paths.base_dir",
                     "Folder other relative paths resolve against; itself relative to the config "
                     "file's folder",
                     [](NodeConfig& c) -> fs::path& { return c.base_dir; }));
    k.push_back(path("paths.vault_dir", "LMDB vault folder",
                     [](NodeConfig& c) -> fs::path& { return c.vault_dir; }));
    k.push_back(path("paths.identity_key", "Legal identity private key (PKCS#8 PEM, 0600)",
                     [](NodeConfig& c) -> fs::path& { return c.identity_key_file; }));
    k.push_back(path("paths.tls_key", "TLS private key (PKCS#8 PEM, 0600)",
                     [](NodeConfig& c) -> fs::path& { return c.tls_key_file; }));
    k.push_back(path("paths.node_ca_key", "Node CA private key (PKCS#8 PEM, 0600)",
                     [](NodeConfig& c) -> fs::path& { return c.node_ca_key_file; }));
    k.push_back(path("paths.identity_chain",
                     "Identity certificate chain PEM: identity, node CA, doorman",
                     [](NodeConfig& c) -> fs::path& { return c.identity_chain_file; }));
    k.push_back(path("paths.tls_chain", "TLS certificate chain PEM: TLS, node CA, doorman",
                     [](NodeConfig& c) -> fs::path& { return c.tls_chain_file; }));
    k.push_back(path("paths.network_root",
                     "The network root CA certificate (PEM): the trust anchor",
                     [](NodeConfig& c) -> fs::path& { return c.network_root_file; }));
    k.push_back(
        path("paths.crls",
             "Revocation lists (PEM); \"\" for none; read again every 5 s while the node runs",
             [](NodeConfig& c) -> fs::path& { return c.crls_file; }));
    k.push_back(path("paths.network_parameters", "Signed network parameters file",
                     [](NodeConfig& c) -> fs::path& { return c.network_parameters_file; }));
    k.push_back(path("paths.node_infos_dir", "Folder of signed node infos, one file per member; looked at again every 5 s while the node runs",
                     [](NodeConfig& c) -> fs::path& { return c.node_infos_dir; }));
    k.push_back(integer<uint64_t>(
        "vault.map_size_mb", "LMDB map size (largest vault), MiB",
        [](NodeConfig& c) -> uint64_t& { return c.vault_map_size_mb; }, 1, 16LL << 20));
    static constexpr LogLevel levels[] = {LogLevel::trace, LogLevel::debug, LogLevel::info,
                                          LogLevel::warn,  LogLevel::error, LogLevel::off};
    k.push_back(choice("logging.level", "Least severe level logged",
                       Field<LogLevel>([](NodeConfig& c) -> LogLevel& { return c.log_level; }),
                       levels, logLevelName));
    k.push_back(path("logging.file", "Log file; \"\" for standard error",
                     [](NodeConfig& c) -> fs::path& { return c.log_file; }));
    k.push_back(integer<uint32_t>(
        "messaging.frame_bytes_max",
        "Largest peer frame accepted; the network parameters' limit applies when lower",
        [](NodeConfig& c) -> uint32_t& { return c.frame_bytes_max; }, 1024, 1LL << 30));
    k.push_back(integer<uint32_t>(
        "messaging.inbound_messages_per_second_max",
        "Sustained messages per second accepted from one peer before it is disconnected",
        [](NodeConfig& c) -> uint32_t& { return c.inbound_messages_per_second_max; }, 1, u32_max));
    k.push_back(integer<uint32_t>(
        "messaging.inbound_burst_messages_max", "Burst above the sustained rate allowed per peer",
        [](NodeConfig& c) -> uint32_t& { return c.inbound_burst_messages_max; }, 1, u32_max));
    k.push_back(integer<uint32_t>(
        "messaging.outbox_messages_per_peer_max",
        "Messages waiting for one peer before sends to it are refused",
        [](NodeConfig& c) -> uint32_t& { return c.outbox_messages_per_peer_max; }, 1, u32_max));
    k.push_back(integer<uint64_t>(
        "messaging.reconnect_delay_micros_min", "First reconnect delay; doubles per failure",
        [](NodeConfig& c) -> uint64_t& { return c.reconnect_delay_micros_min; }, 1000,
        micros_per_day));
    k.push_back(integer<uint64_t>(
        "messaging.reconnect_delay_micros_max", "Longest reconnect delay",
        [](NodeConfig& c) -> uint64_t& { return c.reconnect_delay_micros_max; }, 1000,
        micros_per_day));
    k.push_back(integer<uint64_t>(
        "messaging.handshake_timeout_micros", "TLS handshake must finish within this",
        [](NodeConfig& c) -> uint64_t& { return c.handshake_timeout_micros; }, 1000, 600'000'000));
    k.push_back(text(
        "notary.cluster", false,
        "Short name of the notary cluster this replica belongs to (required for a "
        "notary replica)",
        [](NodeConfig& c) -> std::string& { return c.notary_cluster; }, checkShortName));
    k.push_back(integer<uint32_t>(
        "notary.replica_index", "This replica's index in the cluster, 0 to 3f",
        [](NodeConfig& c) -> uint32_t& { return c.notary_replica_index; }, 0, 1023));
    k.push_back(integer<uint32_t>(
        "notary.batch_size_max",
        "Notarisation requests ordered in one consensus batch (at most the protocol's "
        "limit of a batch, PbftLimits::batch_requests_max)",
        [](NodeConfig& c) -> uint32_t& { return c.notary_batch_size_max; }, 1,
        notary::pbft::PbftLimits{}.batch_requests_max));
    k.push_back(integer<uint64_t>(
        "notary.batch_delay_micros", "Longest wait to fill a batch",
        [](NodeConfig& c) -> uint64_t& { return c.notary_batch_delay_micros; }, 0, 10'000'000));
    k.push_back(integer<uint32_t>(
        "notary.batches_in_flight_max",
        "Batches the primary has proposed and not yet executed; while this many are in flight, "
        "requests gather into the next batch",
        [](NodeConfig& c) -> uint32_t& { return c.notary_batches_in_flight_max; }, 1, 64));
    k.push_back(integer<uint32_t>(
        "notary.batches_in_flight_at_once_max",
        "While at most this many batches are in flight, a new request is proposed at once "
        "rather than gathering for notary.batch_delay_micros",
        [](NodeConfig& c) -> uint32_t& { return c.notary_batches_in_flight_at_once_max; }, 0, 64));
    k.push_back(integer<uint32_t>(
        "notary.vote_log_mb",
        "The vote log's size (pbft_votes.log beside the store): a prepared certificate is made "
        "durable there with one write before the replica's commit; 0 writes it to the store",
        [](NodeConfig& c) -> uint32_t& { return c.notary_vote_log_mb; }, 0, 1024));
    k.push_back(integer<uint32_t>(
        "notary.vote_log_record_bytes_max",
        "Only a prepared certificate whose batch is at most this large goes to the vote log "
        "(larger ones come with loads where writes queue anyway); 0 logs none",
        [](NodeConfig& c) -> uint32_t& { return c.notary_vote_log_record_bytes_max; }, 0,
        static_cast<uint32_t>(notary::pbft::VoteLog::payload_bytes_max)));
    k.push_back(integer<uint64_t>(
        "notary.view_change_timeout_micros",
        "Replicas start a view change when the primary makes no progress for this long",
        [](NodeConfig& c) -> uint64_t& { return c.notary_view_change_timeout_micros; }, 1000,
        600'000'000));
    k.push_back(integer<uint32_t>(
        "flows.running_max",
        "Flows in memory at once (starting to finishing); a start or a responder over it is "
        "refused",
        [](NodeConfig& c) -> uint32_t& { return c.flows_running_max; }, 1, 1'000'000));
    k.push_back(integer<uint32_t>(
        "flows.sessions_per_flow_max", "Sessions one flow may open or answer",
        [](NodeConfig& c) -> uint32_t& { return c.flows_sessions_per_flow_max; }, 1, 65'536));
    k.push_back(integer<uint32_t>(
        "flows.messages_waiting_per_flow_max",
        "Messages received for one flow and not yet taken by it; more are refused until it "
        "takes some",
        [](NodeConfig& c) -> uint32_t& { return c.flows_messages_waiting_per_flow_max; }, 1,
        65'536));
    k.push_back(integer<uint32_t>(
        "flows.subflow_depth_max", "Nesting of subflows",
        [](NodeConfig& c) -> uint32_t& { return c.flows_subflow_depth_max; }, 1, 1024));
    k.push_back(integer<uint64_t>(
        "flows.timeout_micros",
        "A flow's timeout unless its start names one; 0 for none (a timed-out flow fails)",
        [](NodeConfig& c) -> uint64_t& { return c.flows_timeout_micros; }, 0,
        30 * micros_per_day));
    k.push_back(integer<uint32_t>(
        "flows.finished_listed_max", "Recently finished flows kept in memory for the flow list",
        [](NodeConfig& c) -> uint32_t& { return c.flows_finished_listed_max; }, 0, 1'000'000));
    return k;
  }();
  return specs;
}

const KeySpec* findSpec(std::string_view key) {
  for (const auto& s : keySpecs()) {
    if (s.key == key) return &s;
  }
  return nullptr;
}

bool isSection(std::string_view name) {
  for (const auto& s : keySpecs()) {
    if (s.key.substr(0, s.key.find('.')) == name) return true;
  }
  return false;
}

fs::path resolve(const fs::path& p, const fs::path& against) {
  if (p.empty() || p.is_absolute()) return p;
  return (against / p).lexically_normal();
}

}  // namespace

Result<NodeConfig> parseNodeConfig(std::string_view toml_text, const fs::path& file) {
  const std::string where = file.string();
  auto fail = [&](const std::string& msg) -> Result<NodeConfig> {
    return makeError(Errc::malformed, where + ": " + msg);
  };
  toml::table root;
  try {
    root = toml::parse(toml_text, where);
  } catch (const toml::parse_error& e) {
    const auto& at = e.source().begin;
    return fail("line " + std::to_string(at.line) + ", column " + std::to_string(at.column) + ": " +
                std::string(e.description()));
  }

  NodeConfig config;
  std::set<std::string> seen;
  for (const auto& [section_key, section] : root) {
    const std::string section_name(section_key.str());
    if (!isSection(section_name)) return fail("unknown key '" + section_name + "'");
    const auto* table = section.as_table();
    if (table == nullptr) {
      return fail("key '" + section_name + "' must be a table ([" + section_name + "]), not " +
                  typeOf(section));
    }
    for (const auto& [key, value] : *table) {
      const std::string dotted = section_name + "." + std::string(key.str());
      const KeySpec* spec = findSpec(dotted);
      if (spec == nullptr) return fail("unknown key '" + dotted + "'");
      const std::string error = spec->read(config, value);
      if (!error.empty()) return fail("key '" + dotted + "': " + error);
      seen.insert(dotted);
    }
  }
  for (const auto& s : keySpecs()) {
    if (s.required && !seen.count(s.key)) return fail("missing required key '" + s.key + "'");
  }
  if (!seen.count("p2p.advertised")) config.p2p_advertised = config.p2p_listen;

  // Rules across keys.
  const bool has_notary_table = root.contains("notary");
  if (config.role == Role::notary_replica && !seen.count("notary.cluster")) {
    return fail("missing required key 'notary.cluster' (node.role is notary-replica)");
  }
  if (config.role != Role::notary_replica && has_notary_table) {
    return fail("key 'notary' is only for node.role = \"notary-replica\", not \"" +
                std::string(roleName(config.role)) + "\"");
  }
  if (config.role == Role::notary_replica && root.contains("flows")) {
    return fail("key 'flows' is not for node.role = \"notary-replica\": a notary replica runs "
                "no flows");
  }
  if (config.reconnect_delay_micros_min > config.reconnect_delay_micros_max) {
    return fail("key 'messaging.reconnect_delay_micros_min' (" +
                std::to_string(config.reconnect_delay_micros_min) +
                ") is above 'messaging.reconnect_delay_micros_max' (" +
                std::to_string(config.reconnect_delay_micros_max) + ")");
  }

  // Paths: base_dir against the config file's folder, the rest against base_dir.
  std::error_code ec;
  fs::path folder = fs::absolute(file, ec).parent_path();
  if (ec) folder = file.parent_path();
  config.source_file = (folder / file.filename()).lexically_normal();
  config.base_dir = resolve(config.base_dir, folder);
  for (fs::path* p : {&config.api_users_file, &config.vault_dir, &config.identity_key_file,
                      &config.tls_key_file, &config.node_ca_key_file, &config.identity_chain_file,
                      &config.tls_chain_file, &config.network_root_file, &config.crls_file,
                      &config.network_parameters_file, &config.node_infos_dir, &config.log_file}) {
    *p = resolve(*p, config.base_dir);
  }
  return config;
}

Result<NodeConfig> loadNodeConfig(const fs::path& file) {
  auto text = readFileBounded(file, node_config_bytes_max);
  if (!text) {
    std::string why = text.error().message;  // "<file>: <reason>"
    if (const std::string prefix = file.string() + ": "; why.rfind(prefix, 0) == 0)
      why.erase(0, prefix.size());
    return makeError(text.error().code, file.string() + ": cannot read the config file: " + why);
  }
  return parseNodeConfig(*text, file);
}

std::vector<ConfigKeyDoc> configKeyDocs() {
  const NodeConfig defaults;
  std::vector<ConfigKeyDoc> out;
  for (const auto& s : keySpecs()) {
    std::string def = s.required                    ? "(required)"
                      : !s.default_override.empty() ? "same as " + s.default_override
                                                    : s.show(defaults);
    if (s.key == "notary.cluster") def = "(required for a notary replica)";
    out.push_back({s.key, s.type, def, s.meaning});
  }
  return out;
}

std::string configKeysMarkdown() {
  std::string out = "| key | type | default | meaning |\n|---|---|---|---|\n";
  for (const auto& d : configKeyDocs()) {
    std::string def = d.default_value;
    std::string type = d.type;
    // A '|' inside a Markdown table cell must be escaped.
    for (std::string* s : {&def, &type}) {
      for (size_t i = 0; (i = s->find('|', i)) != std::string::npos; i += 2) s->insert(i, "\\");
    }
    out += "| `" + d.key + "` | " + type + " | `" + def + "` | " + d.meaning + " |\n";
  }
  return out;
}

std::string renderNodeConfig(const NodeConfig& config) {
  std::string out;
  std::string section;
  for (const auto& s : keySpecs()) {
    const std::string sec = s.key.substr(0, s.key.find('.'));
    if (sec == "notary" && config.role != Role::notary_replica) continue;
    if (sec == "flows" && config.role == Role::notary_replica) continue;
    if (sec != section) {
      out += (out.empty() ? "" : "\n") + std::string("[") + sec + "]\n";
      section = sec;
    }
    out += s.key.substr(sec.size() + 1) + " = " + s.show(config) + "\n";
  }
  return out;
}

}  // namespace ccal::node
