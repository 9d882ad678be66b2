#pragma once
// `ccal network bootstrap`: from a network spec (TOML) to a folder per member holding its
// node.toml, keys, certificates, API users, the signed network parameters and every member's
// signed node info.
//
// The PKI it makes (all Ed25519, see ledger/pki.h):
//   network root CA -> doorman CA -> node CA per member (name-constrained) -> identity, TLS
//   network root CA -> network-map certificate (signs the network parameters)
// A notary cluster's service key is a composite key "any 2f+1 of the 3f+1 replicas' legal
// identity keys": 2f+1 honest-or-not signatures include f+1 honest ones, so any two quorums
// share an honest replica, and f crashed replicas cannot block it.
//
// Output (DIR = --out):
//   DIR/network.json              the members and notaries, for scripts (= --json output)
//   DIR/_operator/                root, doorman and network-map keys (0600) and certificates,
//                                 crls.pem: keep offline; needed to add members or revoke
//   DIR/<name>/node.toml          the member's config (relative paths)
//   DIR/<name>/api-users.toml     API users: admin, operator, read-only with random tokens (0600)
//   DIR/<name>/keys/              identity.key, tls.key, node-ca.key (PKCS#8 PEM, 0600; folder
//   0700) DIR/<name>/certs/             network-root.pem, identity-chain.pem, tls-chain.pem,
//   crls.pem DIR/<name>/network-parameters the signed network parameters (canonical Cap'n Proto)
//   DIR/<name>/node-infos/<m>     every member m's signed node info

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "ledger/pki.h"
#include "ledger/result.h"
#include "node/config.h"

namespace ccal::node {

struct SpecNode {
  std::string name;  // short name, folder name
  std::string x500;  // canonical
  Role role = Role::node;
  HostPort p2p;
  HostPort api;
};

struct SpecNotary {
  std::string name;  // short name
  std::string x500;  // canonical, the notary service's name
  uint32_t f = 1;
  bool validating = false;
  std::vector<std::string> replicas;  // node names, in replica index order
};

// An [[observers]] entry: keys observer, contracts, parties, all_transactions, and the
// filters of its contracts (flows::ObserverRule): commands (command types the contracts
// declare, Contract::commandTypes), amount_at_least (an integer >= 0) and amount_field
// (a declared int64 field of a state type of each of its contracts; "amount" by default).
struct SpecObserver {
  std::string observer;                // node name (a regulator)
  std::vector<std::string> contracts;  // contract names
  std::vector<std::string> parties;    // node names
  bool all_transactions = false;
  std::vector<std::string> commands;       // command types; empty: any
  std::optional<int64_t> amount_at_least;  // none: any amount
  std::string amount_field = "amount";
};

struct NetworkSpec {
  std::string root_name = "O=CCAL Network Root, L=Haikou, C=CN";
  std::string doorman_name = "O=CCAL Doorman, L=Haikou, C=CN";
  std::string network_map_name = "O=CCAL Network Map, L=Haikou, C=CN";
  uint32_t validity_days = 3650;
  uint32_t epoch = 1;
  uint32_t min_platform_version = 1;
  uint32_t max_message_bytes = 10u << 20;
  uint32_t max_transaction_bytes = 5u << 20;
  std::vector<SpecNode> nodes;
  std::vector<SpecNotary> notaries;
  std::vector<SpecObserver> observers;
};

// Bounds on a spec.
struct SpecLimits {
  static constexpr size_t nodes_max = 1000;
  static constexpr uint32_t notary_f_max = 21;  // 64 replicas
  static constexpr uint32_t validity_days_max = 36'500;
};

// Parses and checks a spec: unknown keys, wrong types, missing keys, duplicate names, X.500
// names or addresses, a cluster whose replica count is not 3f+1, a replica that is not a
// notary-replica node or sits in two clusters, a notary-replica node in no cluster, an
// observer that is not a regulator, an unknown party, an observer rule naming a contract
// the network does not run (contracts::registerDealContracts), a command its contracts do
// not declare, a field that no state type of a contract declares as int64, a negative or
// non-integer amount_at_least, filters without contracts. Errors (Errc::malformed) start with the
// file and name the key, e.g. "spec.toml: key 'nodes[2].p2p': ...".
Result<NetworkSpec> parseNetworkSpec(std::string_view toml_text, const std::filesystem::path& file);
Result<NetworkSpec> loadNetworkSpec(const std::filesystem::path& file);

struct BootstrapResult {
  std::filesystem::path out_dir;
  NetworkSpec spec;
  std::vector<std::filesystem::path> config_files;  // one per node, in spec order
  nlohmann::json summary;                           // what network.json holds
};

// Makes the PKI and writes the folders. A non-empty `out_dir` is refused (Errc::conflict)
// unless `force`, which first removes what an earlier bootstrap wrote there (network.json,
// _operator/ and every sub-folder holding a node.toml, with its vault). Certificates are
// valid from `now` minus a minute for `validity_days`.
Result<BootstrapResult> bootstrapNetwork(const NetworkSpec& spec,
                                         const std::filesystem::path& out_dir, bool force,
                                         TimePoint now);

// `ccal network revoke`: the doorman issues its next revocation list (number one higher,
// earlier entries kept), naming the node CA certificate of `member` (its folder name under
// `network_dir`), so none of that member's certificates validates any more. The list goes
// into _operator/crls.pem and every member's certs/crls.pem (each written atomically);
// running nodes read their crls file every few seconds, drop the member from their network
// map and close its connections. Needs the operator's doorman key (_operator/doorman.key).
// Returns the revoked member's X.500 name; errors name the file or member at fault.
Result<std::string> revokeMember(const std::filesystem::path& network_dir,
                                 const std::string& member, TimePoint now);

// `ccal network rotate-tls`: a member's TLS key is replaced (say, it leaked). Its node CA
// (its key in the member's keys/) issues a TLS certificate for a new key and its next
// revocation list, naming the old certificate; the member signs a node info (serial + 1)
// with the new chain. Written: the member's keys/tls.key and certs/tls-chain.pem, the node
// info into every member's node-infos/, then the lists into every certs/crls.pem and
// _operator/. Running members take the node info and then the lists within seconds: the
// member stays in their maps, its connections made with the old certificate close, and it
// is refused until it restarts (`ccal network stop`/`start`, or its own process) with the
// new key. Returns the member's X.500 name, both certificates' serials and the node info's
// serial; errors name the file or member at fault.
Result<nlohmann::json> rotateTls(const std::filesystem::path& network_dir,
                                 const std::string& member, TimePoint now);

// `ccal network add-member`: a cooperative, bank or regulator joins a running network. The
// doorman issues its node CA, identity and TLS certificates (valid until the doorman's own
// end); its folder is written as bootstrap writes one (node.toml, keys, certificates, the
// revocation lists with its node CA's, the parameters, every member's node info as that
// member last wrote it); its node info goes into every member's node-infos folder and the
// lists into every member's certs/crls.pem, which running members read every few seconds
// (the new member appears in their map, they connect), and network.json lists it. Refused,
// nothing written, naming the field (the keys of a spec's [[nodes]] entry): a name, X.500
// name or address already used, a malformed one, the role notary-replica (a cluster is in
// the network parameters), a folder that exists, a network folder without the operator's
// keys. Returns the member's entry of network.json.
struct NewMember {
  std::string name;  // folder name
  std::string x500;
  std::string role = "node";  // node or regulator
  std::string p2p;            // host:port
  std::string api;            // host:port
};
Result<nlohmann::json> addMember(const std::filesystem::path& network_dir, const NewMember& member,
                                 TimePoint now);

}  // namespace ccal::node
