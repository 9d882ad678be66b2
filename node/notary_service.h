#pragma once
// The notary inside the node process.
//
// A member of role notary-replica runs one PBFT replica (notary/replica.h)
// of the cluster that lists it in the network parameters, executing the
// uniqueness state machine (notary/uniqueness.h). Its protocol state and
// consumed states live in a second LMDB environment, `<paths.base_dir>/notary`
// (schema "ccal.notary"; sub-databases ReplicaStore::dbNames() and
// UniquenessStateMachine::dbNames()), beside the vault: the vault's Store is
// opened by Vault::open with its own fixed set of sub-databases.
// Its configuration: node.toml's [notary] keys (replica_index,
// batch_size_max, batch_delay_micros, view_change_timeout_micros) and the
// network map (the cluster's replicas in the parameters' order; any member
// of role node or regulator is a client, with its legal identity key).
//
// A member of role node or regulator runs a ProtocolClient and a
// NotaryClient per notary cluster in the network map, and can notarise.
//
// Both talk over the node's link on the notary channel (flows/link_mux.h).
//
// Control API (versioned under /api/v1, JSON errors as node/api_server.h):
//   GET  /api/v1/notary/status              read_only  replica: view, last
//        executed seq, state digest, stable checkpoint, stats; member: per
//        cluster counters.
//   POST /api/v1/notary/notarise            operator   {"notary": X.500,
//        "transaction": base64 of a SignedTransaction's canonical encoding,
//        "dependencies": [base64, ...] (validating clusters)} ->
//        {"result":"notarised","tx_id","signatures":[{"by","signature"}]} or
//        {"result":"conflict","tx_id","conflicts":[{"state_ref",
//        "consuming_tx_hash","reference"}],"proof":[base64 signed replies]}
//   POST /api/v1/notary/diagnostic/load     operator   {"notary", "count" <=
//        notary_load_transactions_max, "concurrency" <=
//        notary_load_concurrency_max, "rate_per_second" <= notary_load_rate_per_second_max
//        (0, the default: closed loop), "tick_micros" <= notary_load_tick_micros_max
//        (open loop: the generator wakes this often for what is due,
//        default notary_load_tick_micros_default; 0: at each due time)}:
//        builds and notarises `count` single-input transactions spending
//        fresh StateRefs (a load generator for tests and benchmarks) ->
//        counts and latencies (open loop: from each transaction's due time).
//
// Threading: everything runs on the node's executor (the API's handlers run
// there too); open() and the shutdown steps are called from the node's
// main thread as their comments say.

#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "flows/io.h"
#include "ledger/contract.h"
#include "ledger/crypto.h"
#include "ledger/result.h"
#include "node/config.h"
#include "node/network_map.h"
#include "notary/notary_client.h"

namespace ccal::node {

class ApiServer;

inline constexpr uint32_t notary_load_transactions_max = 100'000;  // per load request
inline constexpr uint32_t notary_load_concurrency_max = 1'024;    // notarisations in flight
inline constexpr uint32_t notary_load_rate_per_second_max = 1'000'000;  // offered load, open loop
// Open loop: the generator wakes every tick for what is due (latency counts from the due time).
inline constexpr uint32_t notary_load_tick_micros_default = 500;
inline constexpr uint32_t notary_load_tick_micros_max = 100'000;
inline constexpr size_t notary_request_dependencies_max = 256;    // per notarise request
inline constexpr size_t notary_client_keys_cached_max = 4096;     // client names a replica remembers
inline constexpr uint64_t notary_load_prepare_chunk_max = 256;    // transactions built per executor turn
inline constexpr int64_t notary_load_start_delay_micros_max = 60'000'000;  // 'start_at_unix_micros' bound
// A notarisation not answered within this is an error (timeout): long enough
// for a view change with backoff when replicas fail, below the API's 120 s.
inline constexpr int64_t notary_client_timeout_micros = 60'000'000;

// node::NotaryInfo (network map) -> notary::NotaryClusterInfo (client side): the one conversion.
notary::NotaryClusterInfo clusterInfoOf(const NotaryInfo& info);

// Strict base64 (RFC 4648, with padding), for transaction bytes in JSON.
std::string base64Encode(ByteView bytes);
Result<Bytes> base64Decode(std::string_view text);

struct NotaryServiceOptions {
  const NodeConfig* config = nullptr;
  const NetworkMap* map = nullptr;
  const ContractRegistry* contracts = nullptr;  // validating replicas run these
  std::optional<KeyPair> identity;              // the member's legal identity key (required)
  flows::Link* link = nullptr;                  // the notary channel
  flows::Executor* executor = nullptr;
  const flows::Clock* clock = nullptr;
  std::function<void(std::string_view)> log;  // reasons for refusals, dropped frames
};

class NotaryService {
 public:
  // Builds what the member's role needs; a replica opens its LMDB
  // environment here. An error names what is wrong (no cluster lists this
  // replica, index mismatch, a store that cannot open). Main thread.
  static Result<std::unique_ptr<NotaryService>> open(NotaryServiceOptions options);
  ~NotaryService();  // after stopStore(); the executor no longer runs
  NotaryService(const NotaryService&) = delete;
  NotaryService& operator=(const NotaryService&) = delete;

  // Starts the replica (loads its protocol state) or the clients. Executor thread.
  Status start();
  // Registers the routes above. Executor thread, before the server starts.
  void addRoutes(ApiServer& api);

  // Shutdown, in this order: quiesce() while the executor still runs (waits
  // for the replica's queued protocol-state writes), then, once the
  // executor has stopped, stopStore() (the Store drains its queue, whose
  // writes use the state machine and the replica, before either is
  // destroyed), then destroy. Main thread.
  void quiesce();
  // After the executor has stopped, before stopStore(): the replica records
  // a clean stop (Replica::recordCleanStop), so its next start need not
  // abstain from voting in the view it stopped in.
  void recordCleanStop();
  void stopStore();

  bool isReplica() const;

  // Member role: the notary client of the cluster named `notary_x500` (any
  // spelling the map accepts); nullptr when there is none (or a replica).
  // Executor thread; valid while this service lives.
  notary::NotaryClient* clientOf(std::string_view notary_x500);

  struct Impl;

 private:
  explicit NotaryService(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ccal::node
