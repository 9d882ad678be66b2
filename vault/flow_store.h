#pragma once
// Deterministic-replay checkpoints for the flow runtime.
//
// The runtime records a flow's start (its name and the initiator's
// arguments), then journals every event the flow consumes (a received
// message, a vault answer, a timer) before acknowledging it. After a crash it
// re-runs each unfinished flow from its start record against its journal: a
// deterministic flow makes the same decisions again, and picks up live
// events after the last journaled one.
//
// Layout in the vault's Store (sub-databases of vault_internal.h):
//   flow_checkpoint  flow id                   -> FlowCheckpoint record (schemas/flows_store.capnp)
//   flow_journal     flow id                   -> head: be64 next seq, be64 journal bytes
//                    flow id || be64 seq       -> the event's bytes
// The head exists while the flow is unfinished; appending reads only the
// head, so an append costs one get and two puts. Finishing a flow deletes its
// journal and head and keeps a small finished record.
//
// Every write goes through the Store's writer thread (group commit); the
// checks that make an append valid (the flow is unfinished, the seq is the
// next one) run there, so concurrent writers cannot interleave between check
// and write. The async variants call done() after the durable commit, on the
// writer thread; a request refused before queueing (a limit, an empty name)
// calls done() at once on the caller's thread. Reads run on any thread.
// One object may serve many threads at once (its clock must allow that too).

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ledger/bytes.h"
#include "ledger/result.h"
#include "ledger/secure_hash.h"
#include "vault/store.h"

namespace ccal::vault {

// A flow's id: 32 bytes, chosen by the runtime (unique per flow).
using FlowId = SecureHash;

// Limits of the flow store, in one place.
inline constexpr size_t flow_name_bytes_max = 256;
inline constexpr size_t flow_args_bytes_max = 1u << 20;  // initiator arguments
// An event usually wraps a received message (at most
// message_payload_bytes_max, 1 MiB), so it may be somewhat larger.
inline constexpr size_t flow_event_bytes_max = 2u << 20;
inline constexpr uint64_t flow_journal_events_max = 100'000;      // events per flow
inline constexpr uint64_t flow_journal_bytes_max = 256ull << 20;  // event bytes per flow
inline constexpr size_t flow_result_bytes_max = 1u << 20;  // result or error of a finished flow
inline constexpr size_t flow_park_reason_bytes_max = 4096;
inline constexpr size_t flow_events_per_append_max = 1024;  // events in one appendEvents

enum class FlowStatus : uint8_t { running = 0, parked = 1, finished = 2 };
enum class FlowOutcome : uint8_t { ok = 0, failed = 1, killed = 2 };

const char* flowStatusName(FlowStatus status);
const char* flowOutcomeName(FlowOutcome outcome);

// A flow's stored record.
struct FlowCheckpoint {
  FlowId id;
  std::string flowName;
  Bytes args;  // empty once finished
  int64_t startedMicros = 0;
  FlowStatus status = FlowStatus::running;
  // Events journaled: the next seq to append (running or parked), or the
  // number journaled before the flow finished.
  uint64_t journalLength = 0;
  uint64_t journalBytes = 0;  // total event bytes; 0 once finished
  // When parked (in the hospital):
  std::string parkReason;
  int64_t parkedMicros = 0;
  // When finished:
  FlowOutcome outcome = FlowOutcome::ok;
  Bytes result;  // the result, or the error for failed/killed
  int64_t finishedMicros = 0;
};

struct JournalEvent {
  uint64_t seq = 0;
  Bytes bytes;
};

class FlowStore {
 public:
  // `store` is the vault's (Vault::store()) and must outlive this object
  // and every request it queued. `now_micros` stamps park and finish times;
  // the system clock when empty.
  explicit FlowStore(Store& store, std::function<int64_t()> now_micros = {});

  // --- writes, waiting for durability -------------------------------------
  // Records a running flow with an empty journal. Beginning a flow again with
  // the same name, arguments and start time is a no-op (a retry after a
  // crash); anything else under a known id is a conflict.
  Status beginFlow(const FlowId& id, std::string_view flow_name, ByteView args,
                   int64_t started_micros);
  // Appends event `seq` to the journal of a running or parked flow. Seqs
  // start at 0 and go up by one: a gap or a repeat is a conflict naming the
  // flow and both seqs; an unknown flow is not_found, a finished one a
  // conflict; past flow_event_bytes_max, flow_journal_events_max or
  // flow_journal_bytes_max, too_large.
  Status appendEvent(const FlowId& id, uint64_t seq, ByteView event);
  // Appends events first_seq, first_seq + 1, ... in one write (all or
  // none), with the same checks as appendEvent on each; at most
  // flow_events_per_append_max (too_large), at least one (bad_query).
  Status appendEvents(const FlowId& id, uint64_t first_seq, std::vector<Bytes> events);
  // Marks the flow finished: deletes its journal, keeps its name, start time,
  // outcome, result and journal length. Finishing twice is a conflict.
  Status finishFlow(const FlowId& id, FlowOutcome outcome, ByteView result);
  // Moves a running flow to the hospital (parking a parked flow replaces its
  // reason). Parked flows are not in unfinishedFlows(); their journal stays
  // and may still grow.
  Status park(const FlowId& id, std::string_view reason);
  // Takes a flow out of the hospital (a running flow: no-op).
  Status unpark(const FlowId& id);
  // Deletes everything of the flow, in any status; an unknown flow is not_found.
  Status removeFlow(const FlowId& id);

  // --- the same, done() after the durable commit --------------------------
  void beginFlowAsync(const FlowId& id, std::string_view flow_name, ByteView args,
                      int64_t started_micros, DoneFn done);
  void appendEventAsync(const FlowId& id, uint64_t seq, ByteView event, DoneFn done);
  void appendEventsAsync(const FlowId& id, uint64_t first_seq, std::vector<Bytes> events, DoneFn done);
  void finishFlowAsync(const FlowId& id, FlowOutcome outcome, ByteView result, DoneFn done);
  // The same for a flow that consumed `events_not_journaled` events after
  // its journaled ones (deferred, dropped at its end: flows/flow_runtime.h):
  // its journalLength counts them.
  void finishFlowAsync(const FlowId& id, FlowOutcome outcome, ByteView result,
                       uint64_t events_not_journaled, DoneFn done);
  void parkAsync(const FlowId& id, std::string_view reason, DoneFn done);
  void unparkAsync(const FlowId& id, DoneFn done);
  void removeFlowAsync(const FlowId& id, DoneFn done);

  // --- reads ----------------------------------------------------------------
  Result<std::optional<FlowCheckpoint>> flow(const FlowId& id) const;
  // Running flows, to resume after a restart, oldest start first.
  // TODO(perf): scans every record, finished ones included; add a status
  // index if finished records are kept in the millions.
  Result<std::vector<FlowCheckpoint>> unfinishedFlows() const;
  // Parked flows, oldest park first.
  Result<std::vector<FlowCheckpoint>> hospital() const;
  // The flow's journal from `from_seq` on, in seq order (empty once
  // finished); not_found for an unknown flow. A journal with a gap or a
  // missing tail is storage_error (a damaged store).
  Result<std::vector<JournalEvent>> journal(const FlowId& id, uint64_t from_seq = 0) const;
  // The same, streamed without copying: `fn` sees each event (its bytes
  // valid during the call) and returns false to stop.
  Status forEachEvent(const FlowId& id, uint64_t from_seq,
                      const std::function<bool(uint64_t seq, ByteView event)>& fn) const;

 private:
  enum class Select { running, parked };
  Result<std::vector<FlowCheckpoint>> list(Select which) const;
  int64_t now() const;

  Store& store_;
  const Db& checkpoints_;
  const Db& journal_;
  std::function<int64_t()> now_micros_;
};

}  // namespace ccal::vault
