#pragma once
// The flow runtime: runs flows (flows/flow.h) with checkpoints by
// deterministic replay, over the small interfaces only (Messaging, Executor,
// Clock from flows/io.h, and the vault's FlowStore), so the same code runs
// over TLS in a node and in the simulator (test/sim).
//
// Registry. registerFlow(name, factory) names a flow; registerInitiating(
// initiating, responder) says that sessions opened by the (sub)flow
// `initiating` run the flow `responder` on the peer. The responder must be
// registered first (both sides run the same code), so a missing responder is
// an error at start-up, not in the middle of a deal. A peer asked for a flow
// it does not have ends the session with an error naming it; it keeps a
// failed flow record of its own, so both sides show the error.
//
// Sessions (schemas/flows.capnp). A session is named by the flow that
// opened it and its index there; the initiator's first send carries the
// init (the responder's name and the first payload); either side's flow
// ending sends a session-end (ok, or the error code and message), which
// fails the other side's pending or later receive(). Message ids are
// SHA-256 of (session, direction, seq), so a replay's sends carry the ids of
// the originals.
//
// Checkpoints by deterministic replay. A flow's start (name, arguments) is
// recorded in the FlowStore before it runs. Every event it consumes -- a
// message received, a timer fired, the clock's or the random source's
// value, a subflow's outcome -- is appended to its journal, and only once
// that append is durable is the flow resumed and the message consumed from
// the messaging layer (so a crash in between hands the message over again,
// and the runtime recognises it by its seq). start() after a crash runs each
// unfinished flow again from its start: requests are answered from the
// journal, in order, and sends are suppressed until the journal is used up
// (a send made before the last journaled event was durably queued before
// that event was journaled); from then on the flow runs live, and sends
// that may have happened before the crash are made again with the same ids
// (the messaging layer drops them while still pending; a receiver drops a
// seq it has handled). A replay whose flow asks for something other than
// the journal's next event (another kind, session or subflow) is stopped
// with an error naming the step. Nothing of the coroutine's stack is
// stored: a fixed flow that makes the same calls replays fine.
//
// Deferred events. A received message and a fired timer are journaled
// before the flow sees them, as above. The other events -- the time, a
// random number, a subflow's end, a call's outcome -- are things a rerun
// after a crash obtains again (calls are idempotent), so the flow goes on
// with them at once and they are journaled with the flow's next durable
// write, in order, as one FlowStore append: before its next send, before
// its next call that is not a read (FlowContext::read), together with its
// next received message or timer, as soon as it waits for a message or a
// timer, and with an abort. So nothing outside the flow (a message, a
// notarisation, a vault write) ever depends on an event that a crash could
// change. A crash loses only deferred events nothing depended on; the
// replay then runs those steps live again. A flow that ends drops the
// deferred events its session ends do not depend on (its end record
// replaces the journal, and its journalLength counts them). Seqs are taken when an event happens, and the
// store refuses an append that leaves a gap, so a failed append fails every
// later one: the journal is always a prefix of what the flow saw.
//
// Replay runs to the end of each journal synchronously inside start(), so
// call start() before the messaging layer hands over stored messages
// (before Delivery::start()).
//
// Cancellation. kill(id) and a flow's timeout journal an `aborted` event
// (a replay stops there too), destroy the coroutine where it waits, end its
// sessions with the error and record the flow as killed (timeout: failed).
//
// Transient failures and the hospital. A service call (FlowContext::call)
// that fails with a transient code (unavailable, timeout: a notary that is
// busy or unreachable, a store that refused for now) is run again after a
// delay that doubles from call_retry_delay_micros_initial up to
// call_retry_delay_micros_max, call_attempts_max times in all (its
// operation is idempotent, as call() requires). If it still fails, the flow
// is parked in the hospital: FlowStore::park records the reason durably,
// the flow waits (phase `parked`, its timeout suspended), and
// retry(id) runs the call again (attempts counted afresh, the timeout
// started again) or kill(id) ends
// it. A parked flow is not resumed by start() after a restart; retry(id)
// then takes it out of the store's hospital and replays it, and kill(id)
// records it killed. Other failures end the flow as before. Sends never
// fail (the messaging layer retries them until delivered) and receives wait
// under the flow's timeout.
//
// Not done here: sleeps that survive a restart with their remaining time (a
// replayed live sleep starts its full delay again).
//
// Threading: everything runs on `executor`; FlowStore completions arrive on
// the store's writer thread and are posted back.

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "flows/flow.h"
#include "flows/io.h"
#include "vault/flow_store.h"

namespace ccal::flows {

using vault::FlowId;

// Limits and timings of the runtime, each with its unit in its name.
struct FlowRuntimeConfig {
  std::string self;  // this node's name (peers address it by this)
  uint32_t flows_running_max = 10'000;       // flows in memory at once (starting to finishing)
  uint32_t sessions_per_flow_max = 64;       // sessions a flow opens or answers
  uint32_t messages_waiting_per_flow_max = 64;  // received, not yet taken by receive()
  uint32_t subflow_depth_max = 32;
  int64_t flow_timeout_micros = 600'000'000;  // default per flow; 0: none
  uint32_t finished_flows_listed_max = 1024;  // recent finished flows list() shows
  uint32_t call_attempts_max = 5;                      // a call's tries before the hospital
  int64_t call_retry_delay_micros_initial = 100'000;   // doubling per retry ...
  int64_t call_retry_delay_micros_max = 5'000'000;     // ... up to this
  // Deferred events (see above); false: every event is journaled before
  // the flow sees it, one append each (the comparison the benchmark makes).
  bool defer_events = true;
  // Where random() values come from; empty: std::random_device.
  std::function<uint64_t()> random_u64;
  // Protocol errors of peers and failed consumptions; empty: stderr.
  std::function<void(std::string_view)> log;
  // Called once a flow's end is durable, however it ended (returned,
  // failed, killed, timed out): what it holds outside the runtime — the
  // vault's soft locks, held under the flow's id — is let go here, since a
  // killed or timed-out flow's own code never runs again to release it.
  std::function<void(const FlowId&)> ended;
};

enum class FlowPhase : uint8_t { starting, replaying, running, parked, finishing, finished };
const char* flowPhaseName(FlowPhase phase);

// What status shows of a flow (the control API's flow list/show).
struct FlowInfo {
  FlowId id;
  std::string name;
  FlowPhase phase = FlowPhase::starting;
  bool responder = false;
  std::string counterparty;  // a responder's initiator node
  std::string step;          // the flow's own progress text
  std::string waiting;       // what the runtime waits for on its behalf
  int64_t startedMicros = 0;
  uint64_t eventsJournaled = 0;
  uint32_t sessions = 0;
  // Finished:
  vault::FlowOutcome outcome = vault::FlowOutcome::ok;
  Bytes result;                // ok
  std::optional<Error> error;  // failed or killed
};

class FlowRuntime final : public MessageHandler {
 public:
  using Factory = std::function<Flow<Bytes>(FlowContext&, Bytes args)>;

  struct Hooks {  // observers, for tests and metrics; each may be empty
    // A flow's end is durable.
    std::function<void(const FlowInfo&)> finished;
    // A live message was journaled for a flow (handled), identified by the
    // flow, the session's opener and index, the direction and the seq.
    std::function<void(const FlowId& flow, const SecureHash& opener, uint32_t session_index,
                       bool to_responder, uint64_t seq)>
        handled;
    // An event of the flow is durably journaled (a received message or a
    // timer: just before the flow sees it; a deferred event: afterwards).
    std::function<void(const FlowId& flow, uint64_t seq)> journaled;
  };

  struct Stats {
    uint64_t flows_started = 0;     // initiated here (startFlow)
    uint64_t responders_started = 0;
    uint64_t flows_resumed = 0;     // by start(), from the store
    uint64_t flows_finished = 0;
    uint64_t events_journaled = 0;
    uint64_t events_deferred = 0;   // journaled with a later write (see "Deferred events")
    uint64_t events_replayed = 0;
    uint64_t sends = 0;             // live sends
    uint64_t sends_suppressed = 0;  // replayed sends
    uint64_t messages_duplicate = 0;  // handled before (a replayed sender), consumed again
    uint64_t messages_dropped = 0;    // malformed, for no flow, or for a finished flow
    uint64_t divergences = 0;
    uint64_t call_retries = 0;   // transient call failures run again
    uint64_t flows_parked = 0;   // sent to the hospital
    uint64_t flows_retried = 0;  // taken out of it by retry()
    // FlowStore requests queued, by kind (each is one Store request).
    uint64_t store_begins = 0;    // start records
    uint64_t store_appends = 0;   // journal appends
    uint64_t store_finishes = 0;  // end records
    uint64_t store_parks = 0;     // park and unpark
  };

  // Sets itself as the messaging's handler.
  FlowRuntime(Messaging& messaging, Executor& executor, const Clock& clock,
              vault::FlowStore& store, FlowRuntimeConfig config);
  ~FlowRuntime() override;
  FlowRuntime(const FlowRuntime&) = delete;
  FlowRuntime& operator=(const FlowRuntime&) = delete;

  // --- registry (before start()) --------------------------------------------------
  Status registerFlow(std::string name, Factory factory);
  Status registerInitiating(std::string initiating, std::string responder);
  void setHooks(Hooks hooks) { hooks_ = std::move(hooks); }

  // Resumes every unfinished flow of the store by replay (see the file
  // comment). Once, on the executor, before messages are handed over.
  Status start();

  // Starts a registered flow; its id at once. `started` (optional) runs once
  // the start record is durable (or with the error that refused it).
  // timeout_micros < 0: the configured default.
  Result<FlowId> startFlow(std::string_view name, Bytes args, int64_t timeout_micros = -1,
                           std::function<void(const Status&)> started = {});
  // Ends a running flow as killed, with `reason`; not_found when it is not
  // running here.
  Status kill(const FlowId& id, std::string reason = "killed by the operator");
  // Takes a parked flow out of the hospital and runs its failed call again;
  // conflict if the flow is not parked, not_found if unknown.
  Status retry(const FlowId& id);

  // Status: flows in memory and the recently finished ones, oldest first.
  std::vector<FlowInfo> list() const;
  // Parked flows: in memory, and those parked before a restart (from the store).
  std::vector<FlowInfo> hospital() const;
  // One flow: in memory, recently finished, or from the store.
  Result<FlowInfo> show(const FlowId& id) const;
  const Stats& stats() const { return stats_; }
  size_t running() const { return flows_.size(); }

  // --- MessageHandler --------------------------------------------------------------
  void onMessage(std::string_view peer, const MessageId& id, ByteView payload) override;

  // Blocks until every FlowStore request queued so far has posted its
  // completion to the executor (the simulator calls it after each event).
  void waitForStore() const;

  struct Decoded;  // a decoded session message (internal)
  struct EndInfo;  // how a session ends (internal)

 private:
  struct FlowState;
  friend struct FlowState;

  const Factory* factory(std::string_view name) const;
  std::optional<std::string> responderOf(std::string_view initiating) const;
  void log(const std::string& line) const;
  uint64_t random();
  // Runs fn on the executor unless this object is gone by then. Any thread.
  void postBack(std::function<void()> fn);
  // A FlowStore completion: posted back, counted for waitForStore().
  vault::DoneFn storeDone(std::function<void(const Status&)> on_executor);

  FlowState* find(const FlowId& id) const;
  // The start record is durable: launches the flow (or aborts a flow killed meanwhile).
  void begun(FlowState& flow);
  // Creates the flow's coroutine and runs it until it first waits.
  void launch(FlowState& flow);
  void resume(FlowState& flow, std::coroutine_handle<> waiter);
  void afterRun(FlowState& flow);
  void startResponder(std::string_view peer, const MessageId& id, const Decoded& message);
  void refuseResponder(std::string_view peer, const MessageId& init_id, const Decoded& message,
                       const Error& error);
  void consume(std::string_view peer, const MessageId& id);
  void finish(FlowState& flow, Result<Bytes> result, vault::FlowOutcome outcome);
  // finish(), once what the session ends may depend on is durable: sends
  // them and records the end.
  void endSessions(FlowState& flow, EndInfo end);
  void abort(FlowState& flow, Error error);
  // Times the flow out timeout_micros after from_micros (default: its start).
  void armTimeout(FlowState& flow, int64_t timeout_micros, std::optional<int64_t> from_micros = std::nullopt);
  // Loads a stored unfinished flow and replays it (start(), retry()).
  void resumeStored(vault::FlowCheckpoint cp, bool fresh_timeout = false);
  FlowInfo infoOf(const FlowState& flow) const;
  void remember(FlowInfo info);

  Messaging& messaging_;
  Executor& executor_;
  const Clock& clock_;
  vault::FlowStore& store_;
  FlowRuntimeConfig config_;
  Hooks hooks_;
  std::map<std::string, Factory, std::less<>> factories_;
  std::map<std::string, std::string, std::less<>> responders_;  // initiating -> responder
  bool started_ = false;
  uint64_t flows_counter_ = 0;
  std::unordered_map<FlowId, std::unique_ptr<FlowState>, SecureHashHasher> flows_;
  std::deque<FlowInfo> recent_;  // finished, newest last
  Stats stats_;
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);
  struct StoreRequests {
    std::mutex mutex;  // guards in_flight
    std::condition_variable drained;
    size_t in_flight = 0;
  };
  std::shared_ptr<StoreRequests> requests_ = std::make_shared<StoreRequests>();
};

// The messaging id of a session message (exposed for tests).
MessageId sessionMessageId(const SecureHash& opener, uint32_t session_index, bool to_responder,
                           uint64_t seq);
// The id of the responder flow a session starts on the peer.
FlowId responderFlowId(const SecureHash& opener, uint32_t session_index);

}  // namespace ccal::flows
