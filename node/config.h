#pragma once
// A node's configuration: `node.toml`, read with toml++ into NodeConfig.
//
// Every key is declared once, in config.cpp's table (dotted name, type, default, meaning):
// the parser, the defaults and the documentation (configKeysMarkdown) all come from it.
// Unknown keys, wrong types, out-of-range values and missing required keys are errors naming
// the dotted key and the file. Relative paths resolve against `paths.base_dir`, which itself
// resolves against the config file's folder (so by default every path is relative to the
// folder that holds node.toml).

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "ledger/result.h"

namespace ccal::node {

enum class Role : uint8_t { node, notary_replica, regulator };

// "node", "notary-replica", "regulator".
const char* roleName(Role role);
Result<Role> parseRole(std::string_view text);

// "host:port" with a port from 1 to 65535; an IPv6 host is written in brackets ("[::1]:10001").
struct HostPort {
  std::string host;
  uint16_t port = 0;

  std::string toString() const;
  static Result<HostPort> parse(std::string_view text);
  bool operator==(const HostPort&) const = default;
};

enum class LogLevel : uint8_t { trace, debug, info, warn, error, off };
const char* logLevelName(LogLevel level);

struct NodeConfig {
  // [node]
  std::string name;  // short name, the member's folder name (required)
  std::string x500;  // X.500 name in canonical form (required)
  Role role = Role::node;
  uint32_t platform_version = 1;

  // [p2p]
  HostPort p2p_listen;      // required
  HostPort p2p_advertised;  // defaults to p2p_listen

  // [api]
  HostPort api_listen;  // required
  std::filesystem::path api_users_file = "api-users.toml";

  // [paths] (absolute after loading)
  std::filesystem::path base_dir = ".";
  std::filesystem::path vault_dir = "vault";
  std::filesystem::path identity_key_file = "keys/identity.key";
  std::filesystem::path tls_key_file = "keys/tls.key";
  std::filesystem::path node_ca_key_file = "keys/node-ca.key";
  std::filesystem::path identity_chain_file = "certs/identity-chain.pem";
  std::filesystem::path tls_chain_file = "certs/tls-chain.pem";
  std::filesystem::path network_root_file = "certs/network-root.pem";
  std::filesystem::path crls_file = "certs/crls.pem";  // empty: no revocation lists
  std::filesystem::path network_parameters_file = "network-parameters";
  std::filesystem::path node_infos_dir = "node-infos";

  // [vault]
  uint64_t vault_map_size_mb = 1024;

  // [logging]
  LogLevel log_level = LogLevel::info;
  std::filesystem::path log_file;  // empty: standard error

  // [messaging]
  uint32_t frame_bytes_max = 10u << 20;
  uint32_t inbound_messages_per_second_max = 100'000;
  uint32_t inbound_burst_messages_max = 20'000;
  uint32_t outbox_messages_per_peer_max = 1'000'000;
  uint64_t reconnect_delay_micros_min = 100'000;
  uint64_t reconnect_delay_micros_max = 30'000'000;
  uint64_t handshake_timeout_micros = 10'000'000;

  // [notary] (only for role notary-replica; required there)
  std::string notary_cluster;
  uint32_t notary_replica_index = 0;
  uint32_t notary_batch_size_max = 1024;
  uint64_t notary_batch_delay_micros = 2'000;
  uint32_t notary_batches_in_flight_max = 4;
  uint32_t notary_batches_in_flight_at_once_max = 1;
  uint32_t notary_vote_log_mb = 16;
  uint32_t notary_vote_log_record_bytes_max = 16384;
  uint64_t notary_view_change_timeout_micros = 2'000'000;

  // [flows] (members only: a notary replica runs no flows and must not have the table).
  // Defaults are flows::FlowRuntimeConfig's (config_test checks they agree).
  uint32_t flows_running_max = 10'000;             // flows in memory at once
  uint32_t flows_sessions_per_flow_max = 64;       // sessions one flow opens or answers
  uint32_t flows_messages_waiting_per_flow_max = 64;  // received, not yet taken by receive()
  uint32_t flows_subflow_depth_max = 32;
  uint64_t flows_timeout_micros = 600'000'000;     // default per-flow timeout; 0: none
  uint32_t flows_finished_listed_max = 1024;       // recent finished flows the API lists

  // The file it was read from (absolute), for messages.
  std::filesystem::path source_file;
};

// A node.toml is a regular file of at most this many bytes.
inline constexpr size_t node_config_bytes_max = 1u << 20;

// Reads and checks a node.toml. Errors (Errc::malformed unless said): the file cannot be read
// (not_found), TOML syntax (with line and column), an unknown key or table, a value of the
// wrong type or out of range, a missing required key, cross-key rules (a notary replica needs
// [notary] cluster; other roles must not have a [notary] table; a notary replica must not have
// a [flows] table; reconnect min <= max). Each
// message starts with the file and names the dotted key.
Result<NodeConfig> loadNodeConfig(const std::filesystem::path& file);
// The same, from text; `file` names it in messages and anchors relative paths.
Result<NodeConfig> parseNodeConfig(std::string_view toml_text, const std::filesystem::path& file);

// One documented key.
struct ConfigKeyDoc {
  std::string key;            // dotted, e.g. "p2p.listen"
  std::string type;           // "string", "integer", "host:port", "path", ...
  std::string default_value;  // as written in TOML, or "(required)"
  std::string meaning;
};
std::vector<ConfigKeyDoc> configKeyDocs();
// A Markdown table of every key (key, type, default, meaning): the README's and `ccal`'s.
std::string configKeysMarkdown();

// Renders a config as TOML that loadNodeConfig reads back to an equal config. Paths are
// written as given (bootstrap writes relative ones); defaults are written too, so a
// generated node.toml shows every key.
std::string renderNodeConfig(const NodeConfig& config);

}  // namespace ccal::node
