#include "vault/message_store.h"

#include <algorithm>
#include <chrono>
#include <future>
#include <memory>
#include <utility>

#include "vault/vault_internal.h"

namespace ccal::vault {
namespace {

constexpr uint8_t counter_tag = 'c';
constexpr uint8_t queue_tag = 'q';
constexpr uint8_t id_tag = 'i';
constexpr uint8_t arrival_tag = 'a';
constexpr uint8_t dedup_tag = 'd';
constexpr uint8_t prunable_tag = 't';
constexpr size_t dedup_value_bytes = 8 + 1 + 8 + 8;

const Bytes counter_key = {counter_tag};

// The longest key: 't', the time, then 'd', the name and its terminator, the id.
constexpr size_t lmdb_key_bytes_max = 511;  // LMDB's default, checked by WriteTxn::put
static_assert(1 + 8 + 1 + peer_name_bytes_max + 2 + SecureHash::size_bytes <= lmdb_key_bytes_max);

using keys::appendBe64;
using keys::readBe64;

Bytes be64(uint64_t v) {
  Bytes out;
  appendBe64(out, v);
  return out;
}

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

Bytes idKey(std::string_view peer, const MessageId& id) {
  Bytes key = peerPrefix(id_tag, peer);
  append(key, id.view());
  return key;
}

Bytes arrivalKey(uint64_t seq) {
  Bytes key{arrival_tag};
  appendBe64(key, seq);
  return key;
}

Bytes dedupKey(std::string_view peer, const MessageId& id) {
  Bytes key = peerPrefix(dedup_tag, peer);
  append(key, id.view());
  return key;
}

Bytes prunableKey(int64_t consumed_micros, ByteView dedup_key) {
  Bytes key{prunable_tag};
  keys::appendInt(key, consumed_micros);
  append(key, dedup_key);
  return key;
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

// The counter under 'c': the next seq to allocate.
Result<uint64_t> readCounter(const ReadTxn& txn, const Db& db, std::string_view what) {
  auto value = txn.get(db, counter_key);
  if (!value) return uint64_t{0};
  if (value->size() != 8) return damaged(std::string(what) + " counter is not 8 bytes");
  return readBe64(*value);
}

std::string messageLabel(std::string_view peer, const MessageId& id) {
  return "message " + id.hex() + " of peer '" + std::string(peer) + "'";
}

Bytes encodeInbox(std::string_view peer, const MessageId& id, int64_t received_micros,
                  ByteView payload) {
  Bytes out;
  out.reserve(2 + peer.size() + SecureHash::size_bytes + 8 + payload.size());
  out.push_back(static_cast<uint8_t>(peer.size() >> 8));
  out.push_back(static_cast<uint8_t>(peer.size()));
  append(out, asBytes(peer));
  append(out, id.view());
  appendBe64(out, static_cast<uint64_t>(received_micros));
  append(out, payload);
  return out;
}

Result<InboxMessage> decodeInbox(uint64_t seq, ByteView value) {
  const auto fail = [&] { return damaged("inbox record " + std::to_string(seq)); };
  if (value.size() < 2) return fail();
  const size_t peer_size = size_t{value[0]} << 8 | value[1];
  if (peer_size > peer_name_bytes_max ||
      value.size() < 2 + peer_size + SecureHash::size_bytes + 8) {
    return fail();
  }
  InboxMessage m;
  m.seq = seq;
  m.peer.assign(reinterpret_cast<const char*>(value.data() + 2), peer_size);
  size_t at = 2 + peer_size;
  m.id = SecureHash::fromBytes(value.subspan(at, SecureHash::size_bytes)).value();
  at += SecureHash::size_bytes;
  m.receivedMicros = static_cast<int64_t>(readBe64(value.subspan(at, 8)));
  at += 8;
  m.payload.assign(value.begin() + static_cast<ptrdiff_t>(at), value.end());
  return m;
}

Bytes encodeDedup(const DedupRecord& d) {
  Bytes out;
  out.reserve(dedup_value_bytes);
  appendBe64(out, d.seq);
  out.push_back(d.consumed ? 1 : 0);
  appendBe64(out, static_cast<uint64_t>(d.receivedMicros));
  appendBe64(out, static_cast<uint64_t>(d.consumedMicros));
  return out;
}

Result<DedupRecord> decodeDedup(std::string_view peer, const MessageId& id, ByteView value) {
  if (value.size() != dedup_value_bytes || value[8] > 1) {
    return damaged("dedup record of " + messageLabel(peer, id));
  }
  DedupRecord d;
  d.seq = readBe64(value.first(8));
  d.consumed = value[8] == 1;
  d.receivedMicros = static_cast<int64_t>(readBe64(value.subspan(9, 8)));
  d.consumedMicros = static_cast<int64_t>(readBe64(value.subspan(17, 8)));
  return d;
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

// Queues `fn`, which sets *changed, and reports it (or the failure) to done.
void submitChanged(Store& store, std::function<Status(WriteTxn&, bool& changed)> fn,
                   MessageStore::ChangedFn done) {
  auto changed = std::make_shared<bool>(false);
  store.submit(
      // A request may run again (in a fresh batch) after its first run was
      // rolled back, so `changed` is set anew on every run.
      [changed, fn = std::move(fn)](WriteTxn& w) -> Status {
        *changed = false;
        return fn(w, *changed);
      },
      [changed, done = std::move(done)](const Status& status) {
        if (!status) {
          done(status.error());
        } else {
          done(*changed);
        }
      });
}

Result<bool> waitFor(const std::function<void(MessageStore::ChangedFn)>& start) {
  auto promise = std::make_shared<std::promise<Result<bool>>>();
  std::future<Result<bool>> result = promise->get_future();
  start([promise](const Result<bool>& r) { promise->set_value(r); });
  return result.get();
}

}  // namespace

MessageStore::MessageStore(Store& store, std::function<int64_t()> now_micros)
    : store_(store),
      outbox_(store.db(db_msg_outbox)),
      inbox_(store.db(db_msg_inbox)),
      dedup_(store.db(db_msg_dedup)),
      now_micros_(std::move(now_micros)) {}

int64_t MessageStore::now() const {
  if (now_micros_) return now_micros_();
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// --- outbox -------------------------------------------------------------------

void MessageStore::enqueueAsync(std::string_view peer, const MessageId& id, ByteView payload,
                                ChangedFn done) {
  Status valid = checkPeer(peer);
  if (valid) valid = checkPayload(peer, id, payload);
  if (!valid) return done(valid.error());
  const Db* outbox = &outbox_;
  submitChanged(
      store_,
      [outbox, peer = std::string(peer), id, payload = Bytes(payload.begin(), payload.end())](
          WriteTxn& w, bool& changed) -> Status {
        const Bytes by_id = idKey(peer, id);
        if (auto existing = w.get(*outbox, by_id)) {
          if (existing->size() != 8) return damaged("outbox id entry of " + messageLabel(peer, id));
          const uint64_t seq = readBe64(*existing);
          auto queued = w.get(*outbox, queueKey(peer, seq));
          if (!queued || queued->size() < SecureHash::size_bytes) {
            return damaged("outbox entry " + std::to_string(seq) + " of " + messageLabel(peer, id));
          }
          ByteView queued_payload = queued->subspan(SecureHash::size_bytes);
          if (!std::equal(queued_payload.begin(), queued_payload.end(), payload.begin(),
                          payload.end())) {
            return makeError(Errc::conflict,
                             messageLabel(peer, id) + " is already pending (outbox seq " +
                                 std::to_string(seq) + ") with a different payload (" +
                                 std::to_string(queued_payload.size()) + " bytes, now " +
                                 std::to_string(payload.size()) + ")");
          }
          return {};  // already pending: a no-op
        }
        auto seq = readCounter(w, *outbox, "outbox");
        if (!seq) return seq.error();
        Bytes record(id.view().begin(), id.view().end());
        append(record, payload);
        CCAL_TRY(w.put(*outbox, queueKey(peer, *seq), record));
        CCAL_TRY(w.put(*outbox, by_id, be64(*seq)));
        CCAL_TRY(w.put(*outbox, counter_key, be64(*seq + 1)));
        changed = true;
        return {};
      },
      std::move(done));
}

Result<bool> MessageStore::enqueue(std::string_view peer, const MessageId& id, ByteView payload) {
  return waitFor([&](ChangedFn done) { enqueueAsync(peer, id, payload, std::move(done)); });
}

void MessageStore::acknowledgeAsync(std::string_view peer, const MessageId& id, ChangedFn done) {
  Status valid = checkPeer(peer);
  if (!valid) return done(valid.error());
  const Db* outbox = &outbox_;
  submitChanged(
      store_,
      [outbox, peer = std::string(peer), id](WriteTxn& w, bool& changed) -> Status {
        const Bytes by_id = idKey(peer, id);
        auto existing = w.get(*outbox, by_id);
        if (!existing) return {};  // not pending: acknowledged before, or never queued
        if (existing->size() != 8) return damaged("outbox id entry of " + messageLabel(peer, id));
        CCAL_TRY(w.del(*outbox, queueKey(peer, readBe64(*existing))));
        CCAL_TRY(w.del(*outbox, by_id));
        changed = true;
        return {};
      },
      std::move(done));
}

Result<bool> MessageStore::acknowledge(std::string_view peer, const MessageId& id) {
  return waitFor([&](ChangedFn done) { acknowledgeAsync(peer, id, std::move(done)); });
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
    const uint64_t seq = readBe64(cursor.key().subspan(prefix.size()));
    OutboxMessage m;
    m.peer = std::string(peer);
    m.id = SecureHash::fromBytes(cursor.value().first(SecureHash::size_bytes)).value();
    m.seq = seq;
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

void MessageStore::receiveAsync(std::string_view peer, const MessageId& id, ByteView payload,
                                ChangedFn done) {
  Status valid = checkPeer(peer);
  if (valid) valid = checkPayload(peer, id, payload);
  if (!valid) return done(valid.error());
  const Db* inbox = &inbox_;
  const Db* dedup = &dedup_;
  const int64_t at = now();
  submitChanged(
      store_,
      [inbox, dedup, peer = std::string(peer), id, at, record = encodeInbox(peer, id, at, payload)](
          WriteTxn& w, bool& changed) -> Status {
        const Bytes key = dedupKey(peer, id);
        if (w.get(*dedup, key)) return {};  // a duplicate
        auto seq = readCounter(w, *inbox, "inbox");
        if (!seq) return seq.error();
        CCAL_TRY(w.put(*inbox, arrivalKey(*seq), record));
        CCAL_TRY(w.put(*dedup, key, encodeDedup(DedupRecord{*seq, false, at, 0})));
        CCAL_TRY(w.put(*inbox, counter_key, be64(*seq + 1)));
        changed = true;
        return {};
      },
      std::move(done));
}

Result<bool> MessageStore::receive(std::string_view peer, const MessageId& id, ByteView payload) {
  return waitFor([&](ChangedFn done) { receiveAsync(peer, id, payload, std::move(done)); });
}

void MessageStore::consumeAsync(std::string_view peer, const MessageId& id, ChangedFn done) {
  Status valid = checkPeer(peer);
  if (!valid) return done(valid.error());
  const Db* inbox = &inbox_;
  const Db* dedup = &dedup_;
  submitChanged(
      store_,
      [inbox, dedup, peer = std::string(peer), id, at = now()](WriteTxn& w,
                                                               bool& changed) -> Status {
        const Bytes key = dedupKey(peer, id);
        auto value = w.get(*dedup, key);
        if (!value) {
          return makeError(Errc::not_found, messageLabel(peer, id) + " was never received");
        }
        auto record = decodeDedup(peer, id, *value);
        if (!record) return record.error();
        if (record->consumed) return {};
        CCAL_TRY(w.del(*inbox, arrivalKey(record->seq)));
        record->consumed = true;
        record->consumedMicros = at;
        CCAL_TRY(w.put(*dedup, key, encodeDedup(*record)));
        CCAL_TRY(w.put(*dedup, prunableKey(at, key), {}));
        changed = true;
        return {};
      },
      std::move(done));
}

Result<bool> MessageStore::consume(std::string_view peer, const MessageId& id) {
  return waitFor([&](ChangedFn done) { consumeAsync(peer, id, std::move(done)); });
}

Result<std::vector<InboxMessage>> MessageStore::unconsumed(uint32_t limit,
                                                           uint64_t from_seq) const {
  CCAL_TRY(checkLimit(limit, message_listing_max, "message_listing_max"));
  std::vector<InboxMessage> out;
  ReadTxn txn = store_.read();
  Cursor cursor = txn.cursor(inbox_);
  for (bool more = cursor.seek(arrivalKey(from_seq));
       more && out.size() < limit && !cursor.key().empty() && cursor.key()[0] == arrival_tag;
       more = cursor.next()) {
    if (cursor.key().size() != 9)
      return damaged("inbox key of " + std::to_string(cursor.key().size()) + " bytes");
    auto m = decodeInbox(readBe64(cursor.key().subspan(1)), cursor.value());
    if (!m) return m.error();
    out.push_back(std::move(m).value());
  }
  return out;
}

Result<std::optional<DedupRecord>> MessageStore::dedup(std::string_view peer,
                                                       const MessageId& id) const {
  CCAL_TRY(checkPeer(peer));
  ReadTxn txn = store_.read();
  auto value = txn.get(dedup_, dedupKey(peer, id));
  if (!value) return std::optional<DedupRecord>{};
  auto record = decodeDedup(peer, id, *value);
  if (!record) return record.error();
  return std::optional<DedupRecord>(*record);
}

Result<PruneResult> MessageStore::pruneDedup(int64_t older_than_micros, uint32_t limit) {
  CCAL_TRY(checkLimit(limit, dedup_prune_batch_max, "dedup_prune_batch_max"));
  auto result = std::make_shared<PruneResult>();
  const Db* dedup = &dedup_;
  Status status = store_.write([dedup, older_than_micros, limit, result](WriteTxn& w) -> Status {
    *result = PruneResult{};
    Bytes end{prunable_tag};
    keys::appendInt(end, older_than_micros);
    std::vector<Bytes> prunable;
    {
      // The cursor must end before the request does.
      Cursor cursor = w.cursor(*dedup);
      for (bool more = cursor.seek(Bytes{prunable_tag});
           more && !cursor.key().empty() && cursor.key()[0] == prunable_tag &&
           std::lexicographical_compare(cursor.key().begin(), cursor.key().end(), end.begin(),
                                        end.end());
           more = cursor.next()) {
        if (prunable.size() == limit) {
          result->more = true;
          break;
        }
        prunable.emplace_back(cursor.key().begin(), cursor.key().end());
      }
    }
    for (const Bytes& key : prunable) {
      if (key.size() <= 9)
        return damaged("prunable dedup key of " + std::to_string(key.size()) + " bytes");
      CCAL_TRY(w.del(*dedup, ByteView(key).subspan(9)));
      CCAL_TRY(w.del(*dedup, key));
    }
    result->removed = prunable.size();
    return {};
  });
  if (!status) return status.error();
  return *result;
}

}  // namespace ccal::vault
