#include "vault/message_store.h"

#include <algorithm>
#include <chrono>
#include <future>
#include <map>
#include <memory>
#include <utility>

#include "vault/vault_internal.h"

namespace ccal::vault {
namespace {

constexpr uint8_t stream_tag = 'n';
constexpr uint8_t queue_tag = 'q';
constexpr uint8_t inbox_tag = 'a';
constexpr uint8_t state_tag = 'w';
constexpr uint8_t id_log_tag = 'l';

// The longest key: a tag, the name and its terminator, two be64 numbers.
constexpr size_t lmdb_key_bytes_max = 511;  // LMDB's default, checked by WriteTxn::put
static_assert(1 + peer_name_bytes_max + 2 + 16 <= lmdb_key_bytes_max);

using keys::appendBe64;
using keys::readBe64;

bool startsWith(ByteView key, ByteView prefix) {
  return key.size() >= prefix.size() && std::equal(prefix.begin(), prefix.end(), key.begin());
}

// tag || peer (as keys::appendText)
Bytes peerPrefix(uint8_t tag, std::string_view peer) {
  Bytes key{tag};
  keys::appendText(key, peer);
  return key;
}

Bytes queueKey(std::string_view peer, uint64_t seq) {
  Bytes key = peerPrefix(queue_tag, peer);
  appendBe64(key, seq);
  return key;
}

// prefix || be64 a [|| be64 b]: keys under a peer prefix made once per request
// (escaping the name for every key shows in profiles).
Bytes withNumbers(const Bytes& prefix, uint64_t a) {
  Bytes key;
  key.reserve(prefix.size() + 16);
  key.assign(prefix.begin(), prefix.end());
  appendBe64(key, a);
  return key;
}
Bytes withNumbers(const Bytes& prefix, uint64_t a, uint64_t b) {
  Bytes key = withNumbers(prefix, a);
  appendBe64(key, b);
  return key;
}

// Keys under one peer prefix, built in one buffer (no allocation per key):
// prefix || be64 a [|| be64 b]. A view it returns is valid until the next.
class SeqKey {
 public:
  explicit SeqKey(Bytes prefix) : key_(std::move(prefix)), prefix_bytes_(key_.size()) {
    key_.reserve(prefix_bytes_ + 16);
  }
  ByteView at(uint64_t a) {
    key_.resize(prefix_bytes_);
    appendBe64(key_, a);
    return key_;
  }
  ByteView at(uint64_t a, uint64_t b) {
    key_.resize(prefix_bytes_);
    appendBe64(key_, a);
    appendBe64(key_, b);
    return key_;
  }
  ByteView prefix() const { return ByteView(key_).first(prefix_bytes_); }

 private:
  Bytes key_;
  size_t prefix_bytes_;
};

// tag || peer || be64 incarnation || be64 seq: the inbox and the id log.
Bytes streamSeqKey(uint8_t tag, std::string_view peer, uint64_t incarnation, uint64_t seq) {
  return withNumbers(peerPrefix(tag, peer), incarnation, seq);
}

Bytes twoNumbers(uint64_t a, uint64_t b) {
  Bytes out;
  out.reserve(16);
  appendBe64(out, a);
  appendBe64(out, b);
  return out;
}

// Reads a keys::appendText encoding at the start of `bytes`; `used` gets its length.
std::optional<std::string> readText(ByteView bytes, size_t& used) {
  std::string out;
  for (size_t i = 0; i < bytes.size(); ++i) {
    if (bytes[i] != 0) {
      out.push_back(static_cast<char>(bytes[i]));
      continue;
    }
    if (i + 1 >= bytes.size()) return std::nullopt;
    if (bytes[i + 1] == 0x01) {
      used = i + 2;
      return out;
    }
    if (bytes[i + 1] != 0xff) return std::nullopt;
    out.push_back('\0');
    ++i;
  }
  return std::nullopt;
}

Error damaged(std::string_view what) {
  return makeError(Errc::storage_error, "damaged message store: " + std::string(what));
}

std::string messageLabel(std::string_view peer, const MessageId& id) {
  return "message " + id.hex() + " of peer '" + std::string(peer) + "'";
}

std::string seqLabel(std::string_view peer, uint64_t incarnation, uint64_t seq) {
  return "seq " + std::to_string(seq) + " of peer '" + std::string(peer) + "' (stream " +
         std::to_string(incarnation) + ")";
}

Result<OutboxStream> readStream(const ReadTxn& txn, const Db& outbox, std::string_view peer) {
  auto value = txn.get(outbox, peerPrefix(stream_tag, peer));
  if (!value) return OutboxStream{};
  if (value->size() != 16) return damaged("outbox stream record of peer '" + std::string(peer) + "'");
  return OutboxStream{readBe64(value->first(8)), readBe64(value->subspan(8, 8))};
}

Result<std::optional<ReceiveState>> readState(const ReadTxn& txn, const Db& dedup,
                                              std::string_view peer) {
  auto value = txn.get(dedup, peerPrefix(state_tag, peer));
  if (!value) return std::optional<ReceiveState>{};
  if (value->size() != 16) {
    return damaged("receive state of peer '" + std::string(peer) + "' is not 16 bytes");
  }
  return std::optional<ReceiveState>(
      ReceiveState{std::string(peer), readBe64(value->first(8)), readBe64(value->subspan(8, 8))});
}

// id || payload, the value of outbox and inbox entries, built in `buffer`.
ByteView idAndPayload(Bytes& buffer, const MessageId& id, ByteView payload) {
  buffer.clear();
  buffer.reserve(SecureHash::size_bytes + payload.size());
  append(buffer, id.view());
  append(buffer, payload);
  return buffer;
}

Status checkPeer(std::string_view peer) {
  if (peer.empty()) return makeError(Errc::malformed, "peer name is empty");
  if (peer.size() > peer_name_bytes_max) {
    return makeError(Errc::too_large, "peer name of " + std::to_string(peer.size()) +
                                          " bytes is over peer_name_bytes_max (" +
                                          std::to_string(peer_name_bytes_max) + " bytes)");
  }
  if (peer.find('\0') != std::string_view::npos) {
    return makeError(Errc::malformed, "peer name contains a NUL byte");
  }
  return {};
}

Status checkPayload(std::string_view peer, const MessageId& id, ByteView payload) {
  if (payload.size() > message_payload_bytes_max) {
    return makeError(Errc::too_large, messageLabel(peer, id) + ": payload of " +
                                          std::to_string(payload.size()) +
                                          " bytes is over message_payload_bytes_max (" +
                                          std::to_string(message_payload_bytes_max) + " bytes)");
  }
  return {};
}

Status checkLimit(uint32_t limit, uint32_t max, std::string_view limit_name) {
  if (limit == 0 || limit > max) {
    return makeError(Errc::bad_query, "limit " + std::to_string(limit) + " is outside 1.." +
                                          std::to_string(max) + " (" + std::string(limit_name) +
                                          ")");
  }
  return {};
}

Status checkBatch(size_t n, std::string_view what) {
  if (n > message_batch_max) {
    return makeError(Errc::too_large, std::string(what) + " of " + std::to_string(n) +
                                          " messages is over message_batch_max (" +
                                          std::to_string(message_batch_max) + ")");
  }
  return {};
}

template <class T>
Result<T> waitFor(const std::function<void(std::function<void(const Result<T>&)>)>& start) {
  auto promise = std::make_shared<std::promise<Result<T>>>();
  std::future<Result<T>> result = promise->get_future();
  start([promise](const Result<T>& r) { promise->set_value(r); });
  return result.get();
}

}  // namespace

std::string_view arrivalName(Arrival a) {
  switch (a) {
    case Arrival::stored: return "stored";
    case Arrival::duplicate: return "duplicate";
    case Arrival::conflict: return "conflict";
    case Arrival::stale_stream: return "stale_stream";
    case Arrival::too_far_ahead: return "too_far_ahead";
  }
  return "?";
}

MessageStore::~MessageStore() {
  std::unique_lock lock(in_flight_->mutex);
  in_flight_->drained.wait(lock, [&] { return in_flight_->writes == 0; });
}

void MessageStore::submit(WriteFn fn, DoneFn done) {
  {
    std::lock_guard lock(in_flight_->mutex);
    ++in_flight_->writes;
  }
  store_.submit(std::move(fn), [in_flight = in_flight_, done = std::move(done)](const Status& s) {
    done(s);
    std::lock_guard lock(in_flight->mutex);
    --in_flight->writes;
    in_flight->drained.notify_all();
  });
}

MessageStore::MessageStore(Store& store, std::function<int64_t()> now_micros)
    : store_(store),
      outbox_(store.db(db_msg_outbox)),
      inbox_(store.db(db_msg_inbox)),
      dedup_(store.db(db_msg_dedup)),
      now_micros_(std::move(now_micros)) {
  // The pending ids, from the committed outbox. An entry that does not
  // parse is left out (it is reported when pending() reads it).
  std::lock_guard lock(pending_mutex_);
  ReadTxn txn = store_.read();
  Cursor cursor = txn.cursor(outbox_);
  for (bool more = cursor.seek(Bytes{queue_tag});
       more && !cursor.key().empty() && cursor.key()[0] == queue_tag; more = cursor.next()) {
    size_t used = 0;
    auto peer = readText(cursor.key().subspan(1), used);
    if (!peer || cursor.key().size() != 1 + used + 8 ||
        cursor.value().size() < SecureHash::size_bytes) {
      continue;
    }
    pending_ids_[*peer][SecureHash::fromBytes(cursor.value().first(SecureHash::size_bytes))
                            .value()] = readBe64(cursor.key().subspan(1 + used));
  }
}

int64_t MessageStore::now() const {
  if (now_micros_) return now_micros_();
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// --- outbox -------------------------------------------------------------------

void MessageStore::setOutboxMessagesPerPeerMax(uint64_t messages) {
  CCAL_ASSERT(messages >= 1);
  std::lock_guard lock(pending_mutex_);
  outbox_per_peer_max_ = messages;
}

void MessageStore::enqueueBatchAsync(std::vector<OutgoingMessage> messages, EnqueueFn done) {
  Status valid = checkBatch(messages.size(), "an enqueue batch");
  for (size_t i = 0; valid && i < messages.size(); ++i) {
    valid = checkPeer(messages[i].peer);
    if (valid) valid = checkPayload(messages[i].peer, messages[i].id, messages[i].payload);
  }
  if (!valid) return done(valid.error());
  const int64_t at = now();
  auto results = std::make_shared<std::vector<Result<Enqueued>>>();
  auto items = std::make_shared<std::vector<OutgoingMessage>>(std::move(messages));
  submit(
      [this, items, results, at](WriteTxn& w) -> Status {
        // A request may run again after a rollback: outputs are set anew.
        results->clear();
        results->reserve(items->size());
        // Per peer: its stream (read once it queues a message), its queue
        // keys and its pending ids. A batch is mostly of one peer: the last
        // one is at hand without a lookup.
        struct PeerWork {
          std::optional<OutboxStream> stream;
          SeqKey queue_key;
          PendingIds* ids = nullptr;
        };
        std::map<std::string, PeerWork, std::less<>> peers;
        const std::string* last_peer = nullptr;
        PeerWork* work = nullptr;
        Bytes value;
        // The pending ids are this writer's (and the constructor's): one lock
        // for the request.
        std::lock_guard lock(pending_mutex_);
        for (const OutgoingMessage& m : *items) {
          if (last_peer == nullptr || *last_peer != m.peer) {
            auto it = peers.find(m.peer);
            if (it == peers.end()) {
              it = peers.emplace(m.peer, PeerWork{std::nullopt, SeqKey(peerPrefix(queue_tag, m.peer)),
                                                  &pending_ids_[m.peer]}).first;
            }
            last_peer = &it->first;
            work = &it->second;
          }
          if (auto hint = work->ids->find(m.id); hint != work->ids->end()) {
            const uint64_t hinted = hint->second;
            auto queued = w.get(outbox_, work->queue_key.at(hinted));  // rare: a repeated id
            if (queued && queued->size() >= SecureHash::size_bytes &&
                std::equal(m.id.view().begin(), m.id.view().end(), queued->begin())) {
              ByteView queued_payload = queued->subspan(SecureHash::size_bytes);
              if (std::equal(queued_payload.begin(), queued_payload.end(), m.payload.begin(),
                             m.payload.end())) {
                // Already pending: a no-op (rare: read the stream for its
                // incarnation, unless this request writes it).
                uint64_t incarnation = 0;
                if (work->stream) {
                  incarnation = work->stream->incarnation;
                } else {
                  auto stream = readStream(w, outbox_, m.peer);
                  if (!stream) return stream.error();
                  incarnation = stream->incarnation;
                }
                results->push_back(Enqueued{false, incarnation, hinted});
              } else {
                results->push_back(makeError(
                    Errc::conflict, messageLabel(m.peer, m.id) + " is already pending (seq " +
                                        std::to_string(hinted) + ") with a different payload (" +
                                        std::to_string(queued_payload.size()) + " bytes, now " +
                                        std::to_string(m.payload.size()) + ")"));
              }
              continue;
            }
            // A stale hint (its enqueue was rolled back): forget it.
            work->ids->erase(hint);
          }
          if (work->ids->size() >= outbox_per_peer_max_) {
            results->push_back(makeError(
                Errc::too_large, messageLabel(m.peer, m.id) +
                                     " refused: " + std::to_string(work->ids->size()) +
                                     " messages for '" + m.peer +
                                     "' are pending, the limit (outbox messages per peer)"));
            continue;
          }
          if (!work->stream) {
            auto stream = readStream(w, outbox_, m.peer);
            if (!stream) return stream.error();
            if (stream->incarnation == 0) {
              stream->incarnation = static_cast<uint64_t>(std::max<int64_t>(at, 1));
            }
            work->stream = *stream;
          }
          const uint64_t seq = work->stream->next_seq++;
          CCAL_TRY(w.put(outbox_, work->queue_key.at(seq), idAndPayload(value, m.id, m.payload)));
          (*work->ids)[m.id] = seq;
          results->push_back(Enqueued{true, work->stream->incarnation, seq});
        }
        for (const auto& [peer, pw] : peers) {
          if (!pw.stream) continue;
          CCAL_TRY(w.put(outbox_, peerPrefix(stream_tag, peer),
                         twoNumbers(pw.stream->incarnation, pw.stream->next_seq)));
        }
        return {};
      },
      [results, done = std::move(done)](const Status& status) {
        if (!status) return done(status.error());
        done(*results);
      });
}

void MessageStore::enqueueAsync(std::string_view peer, const MessageId& id, ByteView payload,
                                ChangedFn done) {
  std::vector<OutgoingMessage> one;
  one.push_back(OutgoingMessage{std::string(peer), id, Bytes(payload.begin(), payload.end())});
  enqueueBatchAsync(std::move(one),
                    [done = std::move(done)](const Result<std::vector<Result<Enqueued>>>& r) {
                      if (!r) return done(r.error());
                      const Result<Enqueued>& e = r->front();
                      if (!e) return done(e.error());
                      done(e->queued);
                    });
}

Result<bool> MessageStore::enqueue(std::string_view peer, const MessageId& id, ByteView payload) {
  return waitFor<bool>([&](ChangedFn done) { enqueueAsync(peer, id, payload, std::move(done)); });
}

Result<OutboxStream> MessageStore::outboxStream(std::string_view peer) const {
  CCAL_TRY(checkPeer(peer));
  ReadTxn txn = store_.read();
  return readStream(txn, outbox_, peer);
}

void MessageStore::acknowledgeAsync(std::string_view peer, std::vector<uint64_t> seqs,
                                    CountFn done) {
  Status valid = checkPeer(peer);
  if (valid) valid = checkBatch(seqs.size(), "an acknowledgement");
  if (!valid) return done(valid.error());
  auto removed = std::make_shared<std::vector<std::pair<MessageId, uint64_t>>>();
  submit(
      [this, removed, peer = std::string(peer), seqs = std::move(seqs)](WriteTxn& w) -> Status {
        removed->clear();
        removed->reserve(seqs.size());
        SeqKey key(peerPrefix(queue_tag, peer));
        for (uint64_t seq : seqs) {
          auto queued = w.get(outbox_, key.at(seq));
          if (!queued) continue;  // not pending: acknowledged before, or never queued
          if (queued->size() < SecureHash::size_bytes) {
            return damaged("outbox entry " + std::to_string(seq) + " of peer '" + peer + "'");
          }
          removed->emplace_back(
              SecureHash::fromBytes(queued->first(SecureHash::size_bytes)).value(), seq);
          CCAL_TRY(w.del(outbox_, key.at(seq)));
        }
        return {};
      },
      [this, removed, peer = std::string(peer), done = std::move(done)](const Status& status) {
        if (!status) return done(status.error());
        {
          // Only now, after the commit, are the ids no longer pending.
          std::lock_guard lock(pending_mutex_);
          auto peer_it = pending_ids_.find(peer);
          if (peer_it != pending_ids_.end()) {
            for (const auto& [id, seq] : *removed) {
              auto it = peer_it->second.find(id);
              if (it != peer_it->second.end() && it->second == seq) peer_it->second.erase(it);
            }
            if (peer_it->second.empty()) pending_ids_.erase(peer_it);
          }
        }
        done(uint64_t{removed->size()});
      });
}

Result<uint64_t> MessageStore::acknowledge(std::string_view peer, std::vector<uint64_t> seqs) {
  return waitFor<uint64_t>(
      [&](CountFn done) { acknowledgeAsync(peer, std::move(seqs), std::move(done)); });
}

Result<std::vector<OutboxMessage>> MessageStore::pending(std::string_view peer, uint32_t limit,
                                                         uint64_t from_seq) const {
  CCAL_TRY(checkPeer(peer));
  CCAL_TRY(checkLimit(limit, message_listing_max, "message_listing_max"));
  const Bytes prefix = peerPrefix(queue_tag, peer);
  std::vector<OutboxMessage> out;
  ReadTxn txn = store_.read();
  Cursor cursor = txn.cursor(outbox_);
  for (bool more = cursor.seek(queueKey(peer, from_seq));
       more && out.size() < limit && startsWith(cursor.key(), prefix); more = cursor.next()) {
    if (cursor.key().size() != prefix.size() + 8 ||
        cursor.value().size() < SecureHash::size_bytes) {
      return damaged("outbox entry of peer '" + std::string(peer) + "'");
    }
    OutboxMessage m;
    m.peer = std::string(peer);
    m.id = SecureHash::fromBytes(cursor.value().first(SecureHash::size_bytes)).value();
    m.seq = readBe64(cursor.key().subspan(prefix.size()));
    m.payload.assign(cursor.value().begin() + SecureHash::size_bytes, cursor.value().end());
    out.push_back(std::move(m));
  }
  return out;
}

Result<std::vector<std::string>> MessageStore::outboxPeers(uint32_t limit,
                                                           std::string_view after_peer) const {
  CCAL_TRY(checkLimit(limit, message_listing_max, "message_listing_max"));
  Bytes start{queue_tag};
  if (!after_peer.empty()) {
    CCAL_TRY(checkPeer(after_peer));
    start = keys::prefixEnd(peerPrefix(queue_tag, after_peer)).value();
  }
  std::vector<std::string> out;
  ReadTxn txn = store_.read();
  Cursor cursor = txn.cursor(outbox_);
  for (bool more = cursor.seek(start);
       more && out.size() < limit && !cursor.key().empty() && cursor.key()[0] == queue_tag;) {
    size_t used = 0;
    auto peer = readText(cursor.key().subspan(1), used);
    if (!peer) return damaged("outbox key without a peer name");
    out.push_back(*peer);
    // Skip the rest of this peer's messages.
    more = cursor.seek(keys::prefixEnd(peerPrefix(queue_tag, *peer)).value());
  }
  return out;
}

// --- inbox --------------------------------------------------------------------

void MessageStore::receiveAsync(std::string_view peer, uint64_t incarnation, uint64_t floor,
                                std::vector<ArrivingMessage> messages, ReceiveFn done) {
  Status valid = checkPeer(peer);
  if (valid) valid = checkBatch(messages.size(), "a receive batch");
  if (valid && (incarnation == 0 || floor == 0)) {
    valid = makeError(Errc::malformed, "messages of peer '" + std::string(peer) +
                                           "': the stream incarnation and floor must be >= 1");
  }
  for (size_t i = 0; valid && i < messages.size(); ++i) {
    valid = checkPayload(peer, messages[i].id, messages[i].payload);
    if (valid && messages[i].seq == 0) {
      valid = makeError(Errc::malformed, messageLabel(peer, messages[i].id) + " has seq 0");
    }
  }
  if (!valid) return done(valid.error());
  auto result = std::make_shared<ReceiveResult>();
  auto items = std::make_shared<std::vector<ArrivingMessage>>(std::move(messages));
  submit(
      [this, result, items, peer = std::string(peer), incarnation, floor](WriteTxn& w) -> Status {
        *result = ReceiveResult{};
        result->arrivals.reserve(items->size());
        auto stored_state = readState(w, dedup_, peer);
        if (!stored_state) return stored_state.error();
        ReceiveState state{peer, incarnation, floor - 1};
        bool state_changed = true;
        if (!stored_state->has_value()) {
          result->stream_started = true;
        } else if ((*stored_state)->incarnation > incarnation) {
          // An older stream's frames: nothing of them is taken.
          result->state = **stored_state;
          result->arrivals.assign(items->size(), ArrivalResult{Arrival::stale_stream, {}});
          return {};
        } else if ((*stored_state)->incarnation < incarnation) {
          result->stream_restarted = true;
          result->previous_incarnation = (*stored_state)->incarnation;
          result->previous_watermark = (*stored_state)->watermark;
        } else {
          state = **stored_state;
          state_changed = false;
          if (floor - 1 > state.watermark) {
            // Acknowledged here once, yet not here now: lost with this store.
            result->skipped_from = state.watermark + 1;
            result->skipped_to = floor - 1;
            state.watermark = floor - 1;
            state_changed = true;
          }
        }
        SeqKey inbox_key(peerPrefix(inbox_tag, peer));
        SeqKey log_key(peerPrefix(id_log_tag, peer));
        Bytes value;
        // Moves the watermark over seqs stored contiguously above it.
        const auto advance = [&]() {
          while (w.get(inbox_, inbox_key.at(incarnation, state.watermark + 1))) {
            ++state.watermark;
            state_changed = true;
          }
        };
        if (result->skipped_to != 0) advance();
        for (const ArrivingMessage& m : *items) {
          ArrivalResult arrival;
          std::optional<ByteView> seen_id;
          std::optional<ByteView> in_inbox;
          if (m.seq <= state.watermark) {
            seen_id = w.get(dedup_, log_key.at(incarnation, m.seq));
          } else {
            in_inbox = w.get(inbox_, inbox_key.at(incarnation, m.seq));
            if (in_inbox) {
              if (in_inbox->size() < SecureHash::size_bytes) {
                return damaged("inbox entry of " + seqLabel(peer, incarnation, m.seq));
              }
              seen_id = in_inbox->first(SecureHash::size_bytes);
            }
          }
          if (m.seq <= state.watermark || in_inbox) {
            arrival.kind = Arrival::duplicate;
            if (seen_id) {
              if (seen_id->size() != SecureHash::size_bytes) {
                return damaged("id log entry of " + seqLabel(peer, incarnation, m.seq));
              }
              if (!std::equal(seen_id->begin(), seen_id->end(), m.id.view().begin())) {
                arrival.kind = Arrival::conflict;
                arrival.other_id = SecureHash::fromBytes(*seen_id).value();
              }
            }
          } else if (m.seq > state.watermark + receive_ahead_seqs_max) {
            arrival.kind = Arrival::too_far_ahead;
          } else {
            CCAL_TRY(w.put(inbox_, inbox_key.at(incarnation, m.seq),
                           idAndPayload(value, m.id, m.payload)));
            CCAL_TRY(w.put(dedup_, log_key.at(incarnation, m.seq), m.id.view()));
            arrival.kind = Arrival::stored;
            if (m.seq == state.watermark + 1) {
              // Just stored: over it without reading it back, then over
              // any stored out of order above it.
              state.watermark = m.seq;
              state_changed = true;
              advance();
            }
          }
          result->arrivals.push_back(arrival);
        }
        if (state_changed) {
          CCAL_TRY(w.put(dedup_, peerPrefix(state_tag, peer),
                         twoNumbers(state.incarnation, state.watermark)));
        }
        result->state = state;
        // Prune the id log: older incarnations, and seqs over
        // received_ids_kept_max below the watermark; a bounded number per
        // request, oldest first.
        const Bytes prefix(log_key.prefix().begin(), log_key.prefix().end());
        std::vector<std::pair<uint64_t, uint64_t>> old;  // (incarnation, seq)
        {
          Cursor cursor = w.cursor(dedup_);  // must end before the request does
          for (bool more = cursor.seek(prefix);
               more && old.size() < id_log_prune_entries_max && startsWith(cursor.key(), prefix);
               more = cursor.next()) {
            if (cursor.key().size() != prefix.size() + 16) {
              return damaged("id log key of peer '" + peer + "'");
            }
            const uint64_t inc = readBe64(cursor.key().subspan(prefix.size(), 8));
            const uint64_t seq = readBe64(cursor.key().subspan(prefix.size() + 8, 8));
            if (inc == state.incarnation && seq + received_ids_kept_max > state.watermark) break;
            old.emplace_back(inc, seq);
          }
        }
        for (const auto& [inc, seq] : old) CCAL_TRY(w.del(dedup_, log_key.at(inc, seq)));
        return {};
      },
      [result, done = std::move(done)](const Status& status) {
        if (!status) return done(status.error());
        done(*result);
      });
}

Result<ReceiveResult> MessageStore::receive(std::string_view peer, uint64_t incarnation,
                                            uint64_t floor, std::vector<ArrivingMessage> messages) {
  return waitFor<ReceiveResult>([&](ReceiveFn done) {
    receiveAsync(peer, incarnation, floor, std::move(messages), std::move(done));
  });
}

void MessageStore::consumeBatchAsync(std::vector<InboxKey> keys, BatchFn done) {
  Status valid = checkBatch(keys.size(), "a consume batch");
  for (size_t i = 0; valid && i < keys.size(); ++i) valid = checkPeer(keys[i].peer);
  if (!valid) return done(valid.error());
  auto results = std::make_shared<std::vector<Result<bool>>>();
  submit(
      [this, results, keys = std::move(keys)](WriteTxn& w) -> Status {
        results->clear();
        results->reserve(keys.size());
        // Per peer: its receive state and inbox keys; the last peer at hand.
        struct PeerWork {
          std::optional<ReceiveState> state;
          SeqKey inbox_key;
        };
        std::map<std::string, PeerWork, std::less<>> peers;
        const std::string* last_peer = nullptr;
        PeerWork* work = nullptr;
        for (const InboxKey& k : keys) {
          if (last_peer == nullptr || *last_peer != k.peer) {
            auto it = peers.find(k.peer);
            if (it == peers.end()) {
              auto state = readState(w, dedup_, k.peer);
              if (!state) return state.error();
              it = peers.emplace(k.peer, PeerWork{*state, SeqKey(peerPrefix(inbox_tag, k.peer))}).first;
            }
            last_peer = &it->first;
            work = &it->second;
          }
          const std::optional<ReceiveState>& state = work->state;
          const ByteView key = work->inbox_key.at(k.incarnation, k.seq);
          const bool handed_over =
              state && (k.incarnation < state->incarnation ||
                        (k.incarnation == state->incarnation && k.seq <= state->watermark));
          auto value = w.get(inbox_, key);
          if (!value) {
            if (handed_over) {
              results->push_back(false);  // consumed before
            } else {
              results->push_back(makeError(
                  Errc::not_found, messageLabel(k.peer, k.id) + " (" +
                                       seqLabel(k.peer, k.incarnation, k.seq) +
                                       ") was never received"));
            }
            continue;
          }
          if (value->size() < SecureHash::size_bytes) {
            return damaged("inbox entry of " + seqLabel(k.peer, k.incarnation, k.seq));
          }
          if (!std::equal(k.id.view().begin(), k.id.view().end(), value->begin())) {
            results->push_back(makeError(
                Errc::conflict,
                seqLabel(k.peer, k.incarnation, k.seq) + " holds message " +
                    SecureHash::fromBytes(value->first(SecureHash::size_bytes)).value().hex() +
                    ", not " + k.id.hex()));
            continue;
          }
          if (!handed_over) {
            results->push_back(makeError(
                Errc::bad_query, messageLabel(k.peer, k.id) + " (" +
                                     seqLabel(k.peer, k.incarnation, k.seq) +
                                     ") is above the watermark: an earlier message is missing, "
                                     "so it cannot have been handed over"));
            continue;
          }
          CCAL_TRY(w.del(inbox_, key));
          results->push_back(true);
        }
        return {};
      },
      [results, done = std::move(done)](const Status& status) {
        if (!status) return done(status.error());
        done(*results);
      });
}

Result<bool> MessageStore::consume(const InboxKey& key) {
  auto results = waitFor<std::vector<Result<bool>>>([&](BatchFn done) {
    consumeBatchAsync(std::vector<InboxKey>{key}, std::move(done));
  });
  if (!results) return results.error();
  return results->front();
}

Result<std::optional<ReceiveState>> MessageStore::receiveState(std::string_view peer) const {
  CCAL_TRY(checkPeer(peer));
  ReadTxn txn = store_.read();
  return readState(txn, dedup_, peer);
}

Result<std::vector<ReceiveState>> MessageStore::receiveStates(uint32_t limit,
                                                              std::string_view after_peer) const {
  CCAL_TRY(checkLimit(limit, message_listing_max, "message_listing_max"));
  Bytes start{state_tag};
  if (!after_peer.empty()) {
    CCAL_TRY(checkPeer(after_peer));
    start = keys::prefixEnd(peerPrefix(state_tag, after_peer)).value();
  }
  std::vector<ReceiveState> out;
  ReadTxn txn = store_.read();
  Cursor cursor = txn.cursor(dedup_);
  for (bool more = cursor.seek(start);
       more && out.size() < limit && !cursor.key().empty() && cursor.key()[0] == state_tag;
       more = cursor.next()) {
    size_t used = 0;
    auto peer = readText(cursor.key().subspan(1), used);
    if (!peer || used + 1 != cursor.key().size() || cursor.value().size() != 16) {
      return damaged("receive state record");
    }
    out.push_back(ReceiveState{*peer, readBe64(cursor.value().first(8)),
                               readBe64(cursor.value().subspan(8, 8))});
  }
  return out;
}

Result<std::vector<InboxMessage>> MessageStore::unconsumed(std::string_view peer, uint32_t limit,
                                                           uint64_t from_incarnation,
                                                           uint64_t from_seq) const {
  CCAL_TRY(checkPeer(peer));
  CCAL_TRY(checkLimit(limit, message_listing_max, "message_listing_max"));
  const Bytes prefix = peerPrefix(inbox_tag, peer);
  std::vector<InboxMessage> out;
  ReadTxn txn = store_.read();
  Cursor cursor = txn.cursor(inbox_);
  for (bool more = cursor.seek(streamSeqKey(inbox_tag, peer, from_incarnation, from_seq));
       more && out.size() < limit && startsWith(cursor.key(), prefix); more = cursor.next()) {
    if (cursor.key().size() != prefix.size() + 16 ||
        cursor.value().size() < SecureHash::size_bytes) {
      return damaged("inbox entry of peer '" + std::string(peer) + "'");
    }
    InboxMessage m;
    m.peer = std::string(peer);
    m.incarnation = readBe64(cursor.key().subspan(prefix.size(), 8));
    m.seq = readBe64(cursor.key().subspan(prefix.size() + 8, 8));
    m.id = SecureHash::fromBytes(cursor.value().first(SecureHash::size_bytes)).value();
    m.payload.assign(cursor.value().begin() + SecureHash::size_bytes, cursor.value().end());
    out.push_back(std::move(m));
  }
  return out;
}

Result<std::vector<ReceivedId>> MessageStore::receivedIds(std::string_view peer, uint32_t limit,
                                                          uint64_t from_incarnation,
                                                          uint64_t from_seq) const {
  CCAL_TRY(checkPeer(peer));
  CCAL_TRY(checkLimit(limit, message_listing_max, "message_listing_max"));
  const Bytes prefix = peerPrefix(id_log_tag, peer);
  std::vector<ReceivedId> out;
  ReadTxn txn = store_.read();
  Cursor cursor = txn.cursor(dedup_);
  for (bool more = cursor.seek(streamSeqKey(id_log_tag, peer, from_incarnation, from_seq));
       more && out.size() < limit && startsWith(cursor.key(), prefix); more = cursor.next()) {
    if (cursor.key().size() != prefix.size() + 16 ||
        cursor.value().size() != SecureHash::size_bytes) {
      return damaged("id log entry of peer '" + std::string(peer) + "'");
    }
    out.push_back(ReceivedId{readBe64(cursor.key().subspan(prefix.size(), 8)),
                             readBe64(cursor.key().subspan(prefix.size() + 8, 8)),
                             SecureHash::fromBytes(cursor.value()).value()});
  }
  return out;
}

}  // namespace ccal::vault
