#include "vault/flow_store.h"

#include <algorithm>
#include <chrono>
#include <future>
#include <memory>
#include <utility>

#include "schemas/flows_store.capnp.h"
#include "vault/vault_internal.h"

namespace ccal::vault {
namespace {

constexpr size_t event_key_bytes = SecureHash::size_bytes + 8;
constexpr size_t head_bytes = 16;

using keys::appendBe64;
using keys::readBe64;

Bytes eventKey(const FlowId& id, uint64_t seq) {
  Bytes key;
  key.reserve(event_key_bytes);
  append(key, id.view());
  appendBe64(key, seq);
  return key;
}

bool isEventKeyOf(ByteView key, const FlowId& id) {
  return key.size() == event_key_bytes &&
         std::equal(id.view().begin(), id.view().end(), key.begin());
}

// The journal head: the next seq to append and the bytes journaled so far.
struct Head {
  uint64_t next_seq = 0;
  uint64_t bytes = 0;
};

Bytes encodeHead(const Head& head) {
  Bytes out;
  out.reserve(head_bytes);
  appendBe64(out, head.next_seq);
  appendBe64(out, head.bytes);
  return out;
}

Result<Head> decodeHead(const FlowId& id, ByteView value) {
  if (value.size() != head_bytes) {
    return makeError(Errc::storage_error, "flow " + id.hex() + ": damaged journal head of " +
                                              std::to_string(value.size()) + " bytes (want " +
                                              std::to_string(head_bytes) + ")");
  }
  Head head{readBe64(value.first(8)), readBe64(value.subspan(8, 8))};
  if (head.next_seq > flow_journal_events_max || head.bytes > flow_journal_bytes_max) {
    return makeError(Errc::storage_error, "flow " + id.hex() + ": damaged journal head (seq " +
                                              std::to_string(head.next_seq) + ", " +
                                              std::to_string(head.bytes) + " bytes)");
  }
  return head;
}

Bytes encodeCheckpoint(const FlowCheckpoint& cp) {
  return buildCanonical<schema::flows::FlowCheckpoint>([&](auto b) {
    b.setFlowName(cp.flowName);
    b.setArgs(asData(cp.args));
    b.setStartedMicros(cp.startedMicros);
    b.setStatus(static_cast<uint8_t>(cp.status));
    if (cp.status == FlowStatus::parked) {
      b.setParkReason(cp.parkReason);
      b.setParkedMicros(cp.parkedMicros);
    }
    if (cp.status == FlowStatus::finished) {
      b.setOutcome(static_cast<uint8_t>(cp.outcome));
      b.setResult(asData(cp.result));
      b.setFinishedMicros(cp.finishedMicros);
      b.setJournalLength(cp.journalLength);
    }
  });
}

Result<FlowCheckpoint> decodeCheckpoint(const FlowId& id, ByteView value) {
  auto decoded = decodeMessage<schema::flows::FlowCheckpoint>(
      value, "flow checkpoint of " + id.hex(), Canonical::required,
      [&](auto r) -> Result<FlowCheckpoint> {
        FlowCheckpoint cp;
        cp.id = id;
        CCAL_TRY_ASSIGN(cp.flowName, readText(r.getFlowName(), "flow name", flow_name_bytes_max));
        cp.args.assign(r.getArgs().begin(), r.getArgs().end());
        cp.startedMicros = r.getStartedMicros();
        if (r.getStatus() > static_cast<uint8_t>(FlowStatus::finished) ||
            r.getOutcome() > static_cast<uint8_t>(FlowOutcome::killed)) {
          return makeError(Errc::malformed, "unknown status " + std::to_string(r.getStatus()) +
                                                " or outcome " + std::to_string(r.getOutcome()));
        }
        cp.status = static_cast<FlowStatus>(r.getStatus());
        CCAL_TRY_ASSIGN(cp.parkReason,
                        readText(r.getParkReason(), "park reason", flow_park_reason_bytes_max));
        cp.parkedMicros = r.getParkedMicros();
        cp.outcome = static_cast<FlowOutcome>(r.getOutcome());
        cp.result.assign(r.getResult().begin(), r.getResult().end());
        cp.finishedMicros = r.getFinishedMicros();
        cp.journalLength = r.getJournalLength();
        return cp;
      });
  // Bytes we wrote ourselves that no longer decode: the store is damaged.
  if (!decoded) return makeError(Errc::storage_error, "damaged " + decoded.error().message);
  return decoded;
}

// "flow <id> (<name>)", for errors.
std::string label(const FlowCheckpoint& cp) {
  return "flow " + cp.id.hex() + " (" + cp.flowName + ")";
}

Error unknownFlow(const FlowId& id) {
  return makeError(Errc::not_found, "flow " + id.hex() + ": no such flow");
}

Error finishedFlow(const FlowCheckpoint& cp, std::string_view refused) {
  return makeError(Errc::conflict, label(cp) + " has finished (" + flowOutcomeName(cp.outcome) +
                                       "): " + std::string(refused));
}

Result<FlowCheckpoint> loadCheckpoint(const ReadTxn& txn, const Db& db, const FlowId& id) {
  auto value = txn.get(db, id.view());
  if (!value) return unknownFlow(id);
  return decodeCheckpoint(id, *value);
}

Result<Head> loadHead(const ReadTxn& txn, const Db& db, const FlowCheckpoint& cp) {
  auto value = txn.get(db, cp.id.view());
  if (!value) {
    return makeError(Errc::storage_error, label(cp) + " is " + flowStatusName(cp.status) +
                                              " but has no journal head (a damaged store)");
  }
  return decodeHead(cp.id, *value);
}

// Deletes the journal's events and head.
Status deleteJournal(WriteTxn& w, const Db& journal, const FlowId& id, const Head& head) {
  for (uint64_t seq = 0; seq < head.next_seq; ++seq) CCAL_TRY(w.del(journal, eventKey(id, seq)));
  return w.del(journal, id.view());
}

Status checkText(std::string_view what, std::string_view text, size_t max_bytes, bool may_be_empty,
                 std::string_view limit_name) {
  if (text.empty() && !may_be_empty)
    return makeError(Errc::malformed, std::string(what) + " is empty");
  if (text.size() > max_bytes) {
    return makeError(Errc::too_large, std::string(what) + " of " + std::to_string(text.size()) +
                                          " bytes is over " + std::string(limit_name) + " (" +
                                          std::to_string(max_bytes) + " bytes)");
  }
  if (text.find('\0') != std::string_view::npos) {
    return makeError(Errc::malformed, std::string(what) + " contains a NUL byte");
  }
  return {};
}

Status checkSize(std::string_view what, size_t size, size_t max_bytes,
                 std::string_view limit_name) {
  if (size > max_bytes) {
    return makeError(Errc::too_large, std::string(what) + " of " + std::to_string(size) +
                                          " bytes is over " + std::string(limit_name) + " (" +
                                          std::to_string(max_bytes) + " bytes)");
  }
  return {};
}

// Refused before queueing: done() on the caller's thread.
bool refuse(const Status& status, DoneFn& done) {
  if (status.ok()) return false;
  done(status);
  return true;
}

}  // namespace

const char* flowStatusName(FlowStatus status) {
  switch (status) {
    case FlowStatus::running:
      return "running";
    case FlowStatus::parked:
      return "parked";
    case FlowStatus::finished:
      return "finished";
  }
  return "unknown";
}

const char* flowOutcomeName(FlowOutcome outcome) {
  switch (outcome) {
    case FlowOutcome::ok:
      return "ok";
    case FlowOutcome::failed:
      return "failed";
    case FlowOutcome::killed:
      return "killed";
  }
  return "unknown";
}

FlowStore::FlowStore(Store& store, std::function<int64_t()> now_micros)
    : store_(store),
      checkpoints_(store.db(db_flow_checkpoint)),
      journal_(store.db(db_flow_journal)),
      now_micros_(std::move(now_micros)) {}

int64_t FlowStore::now() const {
  if (now_micros_) return now_micros_();
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// --- writes -------------------------------------------------------------------

namespace {
Status waitFor(const std::function<void(DoneFn)>& start) {
  auto promise = std::make_shared<std::promise<Status>>();
  std::future<Status> result = promise->get_future();
  start([promise](const Status& status) { promise->set_value(status); });
  return result.get();
}
}  // namespace

void FlowStore::beginFlowAsync(const FlowId& id, std::string_view flow_name, ByteView args,
                               int64_t started_micros, DoneFn done) {
  if (refuse(checkText("flow name", flow_name, flow_name_bytes_max, false, "flow_name_bytes_max"),
             done) ||
      refuse(checkSize("flow " + id.hex() + ": arguments", args.size(), flow_args_bytes_max,
                       "flow_args_bytes_max"),
             done)) {
    return;
  }
  FlowCheckpoint cp;
  cp.id = id;
  cp.flowName = std::string(flow_name);
  cp.args.assign(args.begin(), args.end());
  cp.startedMicros = started_micros;
  const Db* checkpoints = &checkpoints_;
  const Db* journal = &journal_;
  store_.submit(
      [checkpoints, journal, cp = std::move(cp)](WriteTxn& w) -> Status {
        if (auto existing = w.get(*checkpoints, cp.id.view())) {
          auto old = decodeCheckpoint(cp.id, *existing);
          if (!old) return old.error();
          if (old->status != FlowStatus::finished && old->flowName == cp.flowName &&
              old->args == cp.args && old->startedMicros == cp.startedMicros) {
            return {};  // a retry of the same start
          }
          return makeError(Errc::conflict, label(*old) + " already exists (" +
                                               flowStatusName(old->status) + ", started at " +
                                               std::to_string(old->startedMicros) +
                                               "); cannot begin it again as " + cp.flowName +
                                               " started at " + std::to_string(cp.startedMicros));
        }
        CCAL_TRY(w.put(*checkpoints, cp.id.view(), encodeCheckpoint(cp)));
        return w.put(*journal, cp.id.view(), encodeHead(Head{}));
      },
      std::move(done));
}

void FlowStore::appendEventAsync(const FlowId& id, uint64_t seq, ByteView event, DoneFn done) {
  std::vector<Bytes> one;
  one.emplace_back(event.begin(), event.end());
  appendEventsAsync(id, seq, std::move(one), std::move(done));
}

void FlowStore::appendEventsAsync(const FlowId& id, uint64_t first_seq, std::vector<Bytes> events,
                                  DoneFn done) {
  if (events.size() > flow_events_per_append_max) {
    done(makeError(Errc::too_large, "flow " + id.hex() + ": an append of " +
                                        std::to_string(events.size()) +
                                        " events is over flow_events_per_append_max (" +
                                        std::to_string(flow_events_per_append_max) + ")"));
    return;
  }
  if (events.empty()) {
    done(makeError(Errc::bad_query, "flow " + id.hex() + ": an append of no events"));
    return;
  }
  uint64_t batch_bytes = 0;
  for (size_t i = 0; i < events.size(); ++i) {
    if (refuse(checkSize("flow " + id.hex() + ": event " + std::to_string(first_seq + i),
                         events[i].size(), flow_event_bytes_max, "flow_event_bytes_max"),
               done)) {
      return;
    }
    batch_bytes += events[i].size();
  }
  const Db* checkpoints = &checkpoints_;
  const Db* journal = &journal_;
  store_.submit(
      [checkpoints, journal, id, first_seq, batch_bytes,
       events = std::move(events)](WriteTxn& w) -> Status {
        const uint64_t seq = first_seq;
        auto head_value = w.get(*journal, id.view());
        if (!head_value) {
          // No head: unknown, or finished (its journal deleted).
          auto cp = loadCheckpoint(w, *checkpoints, id);
          if (!cp) return cp.error();
          if (cp->status == FlowStatus::finished) {
            return finishedFlow(*cp, "cannot journal event " + std::to_string(seq));
          }
          return loadHead(w, *journal, *cp).error();
        }
        auto head = decodeHead(id, *head_value);
        if (!head) return head.error();
        if (seq != head->next_seq) {
          auto cp = loadCheckpoint(w, *checkpoints, id);
          std::string who = cp ? label(*cp) : "flow " + id.hex();
          const bool repeat = seq < head->next_seq;
          return makeError(
              Errc::conflict,
              who + ": journal append of seq " + std::to_string(seq) + " but the next seq is " +
                  std::to_string(head->next_seq) +
                  (repeat ? " (a repeat: seq " + std::to_string(seq) + " is already journaled)"
                          : " (a gap: seqs " + std::to_string(head->next_seq) + " to " +
                                std::to_string(seq - 1) + " are missing)"));
        }
        if (head->next_seq + events.size() > flow_journal_events_max) {
          return makeError(Errc::too_large, "flow " + id.hex() + ": journal already holds " +
                                                std::to_string(head->next_seq) + " events; " +
                                                std::to_string(events.size()) +
                                                " more would be over flow_journal_events_max (" +
                                                std::to_string(flow_journal_events_max) + ")");
        }
        if (head->bytes + batch_bytes > flow_journal_bytes_max) {
          return makeError(Errc::too_large,
                           "flow " + id.hex() + ": event" + (events.size() > 1 ? "s " : " ") +
                               std::to_string(seq) +
                               (events.size() > 1 ? " to " + std::to_string(seq + events.size() - 1) : "") +
                               " of " + std::to_string(batch_bytes) +
                               " bytes would take the journal to " +
                               std::to_string(head->bytes + batch_bytes) +
                               " bytes, over flow_journal_bytes_max (" +
                               std::to_string(flow_journal_bytes_max) + " bytes)");
        }
        for (size_t i = 0; i < events.size(); ++i) {
          CCAL_TRY(w.put(*journal, eventKey(id, seq + i), events[i]));
        }
        return w.put(*journal, id.view(),
                     encodeHead(Head{head->next_seq + events.size(), head->bytes + batch_bytes}));
      },
      std::move(done));
}

void FlowStore::finishFlowAsync(const FlowId& id, FlowOutcome outcome, ByteView result,
                                DoneFn done) {
  finishFlowAsync(id, outcome, result, 0, std::move(done));
}

void FlowStore::finishFlowAsync(const FlowId& id, FlowOutcome outcome, ByteView result,
                                uint64_t events_not_journaled, DoneFn done) {
  if (refuse(checkSize("flow " + id.hex() + ": result", result.size(), flow_result_bytes_max,
                       "flow_result_bytes_max"),
             done)) {
    return;
  }
  const Db* checkpoints = &checkpoints_;
  const Db* journal = &journal_;
  store_.submit(
      [checkpoints, journal, id, outcome, result = Bytes(result.begin(), result.end()),
       events_not_journaled, at = now()](WriteTxn& w) -> Status {
        auto cp = loadCheckpoint(w, *checkpoints, id);
        if (!cp) return cp.error();
        if (cp->status == FlowStatus::finished) {
          return finishedFlow(*cp,
                              std::string("cannot finish it again as ") + flowOutcomeName(outcome));
        }
        auto head = loadHead(w, *journal, *cp);
        if (!head) return head.error();
        CCAL_TRY(deleteJournal(w, *journal, id, *head));
        FlowCheckpoint finished;
        finished.id = id;
        finished.flowName = cp->flowName;
        finished.startedMicros = cp->startedMicros;
        finished.status = FlowStatus::finished;
        finished.journalLength = head->next_seq + events_not_journaled;
        finished.outcome = outcome;
        finished.result = result;
        finished.finishedMicros = at;
        return w.put(*checkpoints, id.view(), encodeCheckpoint(finished));
      },
      std::move(done));
}

void FlowStore::parkAsync(const FlowId& id, std::string_view reason, DoneFn done) {
  if (refuse(checkText("flow " + id.hex() + ": park reason", reason, flow_park_reason_bytes_max,
                       false, "flow_park_reason_bytes_max"),
             done)) {
    return;
  }
  const Db* checkpoints = &checkpoints_;
  store_.submit(
      [checkpoints, id, reason = std::string(reason), at = now()](WriteTxn& w) -> Status {
        auto cp = loadCheckpoint(w, *checkpoints, id);
        if (!cp) return cp.error();
        if (cp->status == FlowStatus::finished) return finishedFlow(*cp, "cannot park it");
        cp->status = FlowStatus::parked;
        cp->parkReason = reason;
        cp->parkedMicros = at;
        return w.put(*checkpoints, id.view(), encodeCheckpoint(*cp));
      },
      std::move(done));
}

void FlowStore::unparkAsync(const FlowId& id, DoneFn done) {
  const Db* checkpoints = &checkpoints_;
  store_.submit(
      [checkpoints, id](WriteTxn& w) -> Status {
        auto cp = loadCheckpoint(w, *checkpoints, id);
        if (!cp) return cp.error();
        if (cp->status == FlowStatus::finished) return finishedFlow(*cp, "cannot unpark it");
        if (cp->status == FlowStatus::running) return {};
        cp->status = FlowStatus::running;
        cp->parkReason.clear();
        cp->parkedMicros = 0;
        return w.put(*checkpoints, id.view(), encodeCheckpoint(*cp));
      },
      std::move(done));
}

void FlowStore::removeFlowAsync(const FlowId& id, DoneFn done) {
  const Db* checkpoints = &checkpoints_;
  const Db* journal = &journal_;
  store_.submit(
      [checkpoints, journal, id](WriteTxn& w) -> Status {
        auto cp = loadCheckpoint(w, *checkpoints, id);
        if (!cp) return cp.error();
        if (cp->status != FlowStatus::finished) {
          auto head = loadHead(w, *journal, *cp);
          if (!head) return head.error();
          CCAL_TRY(deleteJournal(w, *journal, id, *head));
        }
        return w.del(*checkpoints, id.view());
      },
      std::move(done));
}

Status FlowStore::beginFlow(const FlowId& id, std::string_view flow_name, ByteView args,
                            int64_t started_micros) {
  return waitFor(
      [&](DoneFn done) { beginFlowAsync(id, flow_name, args, started_micros, std::move(done)); });
}

Status FlowStore::appendEvent(const FlowId& id, uint64_t seq, ByteView event) {
  return waitFor([&](DoneFn done) { appendEventAsync(id, seq, event, std::move(done)); });
}

Status FlowStore::appendEvents(const FlowId& id, uint64_t first_seq, std::vector<Bytes> events) {
  return waitFor(
      [&](DoneFn done) { appendEventsAsync(id, first_seq, std::move(events), std::move(done)); });
}

Status FlowStore::finishFlow(const FlowId& id, FlowOutcome outcome, ByteView result) {
  return waitFor([&](DoneFn done) { finishFlowAsync(id, outcome, result, std::move(done)); });
}

Status FlowStore::park(const FlowId& id, std::string_view reason) {
  return waitFor([&](DoneFn done) { parkAsync(id, reason, std::move(done)); });
}

Status FlowStore::unpark(const FlowId& id) {
  return waitFor([&](DoneFn done) { unparkAsync(id, std::move(done)); });
}

Status FlowStore::removeFlow(const FlowId& id) {
  return waitFor([&](DoneFn done) { removeFlowAsync(id, std::move(done)); });
}

// --- reads --------------------------------------------------------------------

Result<std::optional<FlowCheckpoint>> FlowStore::flow(const FlowId& id) const {
  ReadTxn txn = store_.read();
  auto cp = loadCheckpoint(txn, checkpoints_, id);
  if (!cp) {
    if (cp.error().code == Errc::not_found) return std::optional<FlowCheckpoint>{};
    return cp.error();
  }
  if (cp->status != FlowStatus::finished) {
    auto head = loadHead(txn, journal_, *cp);
    if (!head) return head.error();
    cp->journalLength = head->next_seq;
    cp->journalBytes = head->bytes;
  }
  return std::optional<FlowCheckpoint>(std::move(cp).value());
}

Result<std::vector<FlowCheckpoint>> FlowStore::list(Select which) const {
  const FlowStatus wanted = which == Select::running ? FlowStatus::running : FlowStatus::parked;
  std::vector<FlowCheckpoint> out;
  ReadTxn txn = store_.read();
  Cursor cursor = txn.cursor(checkpoints_);
  for (bool more = cursor.first(); more; more = cursor.next()) {
    auto id = SecureHash::fromBytes(cursor.key());
    if (!id) {
      return makeError(Errc::storage_error, "damaged flow checkpoint key of " +
                                                std::to_string(cursor.key().size()) + " bytes");
    }
    auto cp = decodeCheckpoint(*id, cursor.value());
    if (!cp) return cp.error();
    if (cp->status != wanted) continue;
    auto head = loadHead(txn, journal_, *cp);
    if (!head) return head.error();
    cp->journalLength = head->next_seq;
    cp->journalBytes = head->bytes;
    out.push_back(std::move(cp).value());
  }
  auto time = [&](const FlowCheckpoint& cp) {
    return which == Select::running ? cp.startedMicros : cp.parkedMicros;
  };
  std::stable_sort(out.begin(), out.end(), [&](const FlowCheckpoint& a, const FlowCheckpoint& b) {
    return time(a) < time(b);
  });
  return out;
}

Result<std::vector<FlowCheckpoint>> FlowStore::unfinishedFlows() const {
  return list(Select::running);
}

Result<std::vector<FlowCheckpoint>> FlowStore::hospital() const {
  return list(Select::parked);
}

Status FlowStore::forEachEvent(const FlowId& id, uint64_t from_seq,
                               const std::function<bool(uint64_t, ByteView)>& fn) const {
  ReadTxn txn = store_.read();
  auto cp = loadCheckpoint(txn, checkpoints_, id);
  if (!cp) return cp.error();
  if (cp->status == FlowStatus::finished) return {};
  auto head = loadHead(txn, journal_, *cp);
  if (!head) return head.error();
  // Data read back is checked like data written: seqs from_seq, from_seq+1,
  // ... up to the head, no gap, nothing past it.
  uint64_t expected = from_seq;
  Cursor cursor = txn.cursor(journal_);
  for (bool more = cursor.seek(eventKey(id, from_seq)); more && isEventKeyOf(cursor.key(), id);
       more = cursor.next()) {
    const uint64_t seq = readBe64(cursor.key().subspan(SecureHash::size_bytes));
    if (seq != expected || seq >= head->next_seq) {
      return makeError(Errc::storage_error, label(*cp) + ": damaged journal: found seq " +
                                                std::to_string(seq) + " where seq " +
                                                std::to_string(expected) + " belongs (next seq " +
                                                std::to_string(head->next_seq) + ")");
    }
    if (!fn(seq, cursor.value())) return {};
    ++expected;
  }
  if (expected < head->next_seq) {
    return makeError(Errc::storage_error, label(*cp) + ": damaged journal: seqs " +
                                              std::to_string(expected) + " to " +
                                              std::to_string(head->next_seq - 1) + " are missing");
  }
  return {};
}

Result<std::vector<JournalEvent>> FlowStore::journal(const FlowId& id, uint64_t from_seq) const {
  std::vector<JournalEvent> out;
  Status status = forEachEvent(id, from_seq, [&](uint64_t seq, ByteView event) {
    out.push_back(JournalEvent{seq, Bytes(event.begin(), event.end())});
    return true;
  });
  if (!status) return status.error();
  return out;
}

}  // namespace ccal::vault
