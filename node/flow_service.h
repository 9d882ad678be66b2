#pragma once
// The flow runtime inside a member node (issue 6): a flows::FlowRuntime over
// the node's exactly-once messaging, its executor and clock, and a
// vault::FlowStore in the node's LMDB environment; the flows it knows; and
// the control API's flow routes.
//
// Messages. Flow sessions share the node's one Delivery (one durable
// stream per peer) with the node's other traffic: a flow's message travels
// as P2pMessage.flowSession (schemas/p2p.capnp). The node hands the inner
// bytes of such a message to onSessionMessage(), and the runtime consumes it
// (through Delivery) once it has journaled it -- the node does not.
//
// Start-up order (the runtime's rule): create, register flows, start() --
// which replays every unfinished flow from the store -- and only then
// Delivery::start(), which hands over stored messages.
//
// Control API (JSON; operator may start and kill, read-only may look):
//   POST /api/v1/flows            {"name", "args": JSON | "args_base64": base64,
//                                  "timeout_micros"?, "wait_micros"?} -> {"id"} once the start
//                                 is durable; with wait_micros (<= flow_wait_micros_max), the
//                                 flow (flowJson) once it has ended or that time has passed
//   POST /api/v1/flows/diagnostic/load
//                                 {"name", "args" | "args_base64", "count", "concurrency",
//                                  "rate_per_second"?} runs `count` flows of one kind,
//                                 `concurrency` at most at once (closed loop), or started at a
//                                 rate (open loop); -> {completed, failed, killed, duration_micros,
//                                 per_second, latency_p50/p90/p99/max_micros, first_error?}.
//                                 Latency: from the start call to the flow's durable end.
//   GET  /api/v1/flows            ?state=running|finished|ok|failed|killed &name=N &limit=L
//                                 -> {"flows": [...], "stats": {...}, "writes": {...}}:
//                                 writes: the Store's requests and commits, the flows'
//                                 and the messaging's store requests by kind
//   GET  /api/v1/flows/{id}       -> one flow (flowJson)
//   POST /api/v1/flows/{id}/kill  {"reason"?} -> {"id", "killing": true}
//   POST /api/v1/flows/{id}/retry -> {"id", "retrying": true}: a flow parked in the
//                                 hospital runs its failed call again (409 if not parked)
//   GET  /api/v1/flows?state=parked  the hospital (also flows parked before a restart)
// Bad input gets 400 (malformed body, args or id), 404 (unknown flow name
// or id), 409 (a flow ending already), 503 (flows.running_max reached).
//
// Threading: everything on the node's executor thread, which also runs the
// API's connections (one thread), so routes call the runtime directly.

#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "flows/delivery.h"
#include "flows/flow_runtime.h"
#include "flows/services.h"
#include "ledger/result.h"
#include "node/network_map.h"
#include "vault/flow_store.h"

namespace ccal::node {

class ApiServer;

inline constexpr size_t flows_listed_max = 10'000;     // one GET /api/v1/flows
inline constexpr size_t flows_listed_default = 1'000;
inline constexpr size_t flow_kill_reason_bytes_max = 1024;
inline constexpr int64_t flow_wait_micros_max = 110'000'000;  // below the API's handler timeout
inline constexpr uint64_t flow_load_count_max = 1'000'000;
inline constexpr uint64_t flow_load_concurrency_max = 4'096;

// The JSON of a flow's status (the API's and the CLI's).
nlohmann::json flowJson(const flows::FlowInfo& info);

// What the built-in flows (flows/builtin_flows.h) need of this member: its
// legal identity and key, its vault and contracts, the party directory and
// the observer rules of the network map, and the notary gateway. A party is
// a member (its legal identity key) or a notary cluster (its service key).
// `map` must outlive the services.
flows::FlowServices flowServicesOf(const NetworkMap& map, const std::string& self_x500,
                                   const KeyPair& identity, vault::Vault& vault,
                                   const ContractRegistry& contracts, flows::NotaryGateway& notary);

class FlowService {
 public:
  // Checks a flow's arguments before it starts (an API start of malformed
  // arguments gets 400 instead of a flow that fails at once).
  using ArgsCheck = std::function<Status(ByteView args)>;

  struct Options {
    flows::Delivery* delivery = nullptr;
    flows::Executor* executor = nullptr;
    const flows::Clock* clock = nullptr;
    vault::Store* store = nullptr;  // the vault's Store (one LMDB environment)
    flows::FlowRuntimeConfig runtime;  // runtime.self: this member's X.500 name
  };

  explicit FlowService(Options options);
  ~FlowService();
  FlowService(const FlowService&) = delete;
  FlowService& operator=(const FlowService&) = delete;

  // Registry, before start(): as FlowRuntime's, plus an optional check of
  // the arguments an API start passes. Flows registered on runtime()
  // directly (flows::registerBuiltinFlows) are startable too, unchecked.
  Status registerFlow(std::string name, flows::FlowRuntime::Factory factory, ArgsCheck check = {});
  Status registerInitiating(std::string initiating, std::string responder);

  // Replays unfinished flows. Executor thread, before Delivery::start().
  Status start();

  // The inner bytes of a P2pMessage.flowSession: to the runtime, which
  // consumes the message once journaled. Executor thread.
  void onSessionMessage(std::string_view peer, const flows::MessageId& id, ByteView payload);

  void addRoutes(ApiServer& api);

  flows::FlowRuntime& runtime() { return *runtime_; }
  // Calls fn once the flow's end is durable (or at once if it has ended;
  // not at all for an unknown id). Executor thread.
  void whenFinished(const flows::FlowId& id, std::function<void(const flows::FlowInfo&)> fn);
  // Blocks until the FlowStore requests queued so far have completed.
  void waitForStore() const;

 private:
  class SessionMessaging;
  std::unique_ptr<SessionMessaging> messaging_;
  std::unique_ptr<vault::FlowStore> store_;
  std::unique_ptr<flows::FlowRuntime> runtime_;
  // Arguments checks by flow name (flows registered through registerFlow).
  std::map<std::string, ArgsCheck, std::less<>> checks_;
  flows::Executor* executor_ = nullptr;
  const flows::Clock* clock_ = nullptr;
  vault::Store* vault_store_ = nullptr;
  std::map<flows::FlowId, std::vector<std::function<void(const flows::FlowInfo&)>>> waiters_;

  struct Load;
  void startLoad(std::shared_ptr<Load> load);
  Result<Bytes> argsOf(const nlohmann::json& body) const;
  nlohmann::json writesJson() const;
};

}  // namespace ccal::node
