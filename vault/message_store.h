#pragma once
// The messaging layer's exactly-once tables: an outbox of messages durable
// before they are sent and kept until the peer acknowledges them, and an
// inbox with a dedup record per received message, so that a message a peer
// sends again (it never saw our acknowledgement) is recognised and dropped.
//
// Message ids are 32 bytes chosen deterministically by the sender (a flow
// that replays after a crash sends the same ids again), and are scoped by
// peer: (peer, id) names a message.
//
// Layout in the vault's Store (sub-databases of vault_internal.h; peers are
// keys::appendText encodings, so one peer's keys are one contiguous range):
//   msg_outbox  'c'                      -> be64 next outbox seq (persisted, never reused)
//               'q' peer be64 seq        -> message id, payload     (send order)
//               'i' peer message id      -> be64 seq                (lookup by id)
//   msg_inbox   'c'                      -> be64 next arrival seq
//               'a' be64 seq             -> be16 peer length, peer, message id,
//                                           be64 received micros, payload
//   msg_dedup   'd' peer message id      -> be64 arrival seq, u8 consumed,
//                                           be64 received micros, be64 consumed micros
//               't' int64 consumed micros, then the 'd' key -> empty   (prunable, by age)
// A dedup record becomes prunable only once its message is consumed, aged
// from its consumption: a message still in the inbox is never forgotten.
//
// Writes go through the Store's writer thread (group commit); the async
// variants call done() after the durable commit, on the writer thread, or at
// once on the caller's thread when refused before queueing (a limit, a bad
// peer name). Reads run on any thread.
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

using MessageId = SecureHash;

// Limits of the message store, in one place.
// Peer names are in keys, and LMDB keys hold at most 511 bytes; the longest
// key (a prunable dedup entry) is a name plus 44 bytes. X.500 names fit.
inline constexpr size_t peer_name_bytes_max = 448;
inline constexpr size_t message_payload_bytes_max = 1u << 20;
inline constexpr uint32_t message_listing_max = 10'000;    // messages or peers per listing
inline constexpr uint32_t dedup_prune_batch_max = 10'000;  // dedup records per pruneDedup call

struct OutboxMessage {
  std::string peer;
  MessageId id;
  uint64_t seq = 0;  // enqueue order, over all peers
  Bytes payload;
};

struct InboxMessage {
  std::string peer;
  MessageId id;
  uint64_t seq = 0;  // arrival order
  int64_t receivedMicros = 0;
  Bytes payload;
};

// What the store remembers of a received message.
struct DedupRecord {
  uint64_t seq = 0;  // arrival seq
  bool consumed = false;
  int64_t receivedMicros = 0;
  int64_t consumedMicros = 0;  // when consumed
};

struct PruneResult {
  uint64_t removed = 0;
  bool more = false;  // prunable records remain: call again
};

class MessageStore {
 public:
  // done() of a write that reports whether it changed anything.
  using ChangedFn = std::function<void(const Result<bool>&)>;

  // `store` is the vault's (Vault::store()) and must outlive this object
  // and every request it queued. `now_micros` stamps receive and consume
  // times; the system clock when empty.
  explicit MessageStore(Store& store, std::function<int64_t()> now_micros = {});

  // --- outbox -----------------------------------------------------------------
  // Queues a message for `peer`, durable before it is sent. True when
  // queued; false when a message with this id is already pending for the
  // peer (with the same payload: a different one is a conflict). An id
  // acknowledged earlier is queued again: the peer's dedup drops the copy.
  Result<bool> enqueue(std::string_view peer, const MessageId& id, ByteView payload);
  void enqueueAsync(std::string_view peer, const MessageId& id, ByteView payload, ChangedFn done);
  // The peer's pending messages in enqueue order, from seq `from_seq` on, at
  // most `limit` (<= message_listing_max).
  Result<std::vector<OutboxMessage>> pending(std::string_view peer, uint32_t limit,
                                             uint64_t from_seq = 0) const;
  // Peers with pending messages, in name order, at most `limit`, starting
  // after `after_peer` (empty: from the first).
  Result<std::vector<std::string>> outboxPeers(uint32_t limit,
                                               std::string_view after_peer = {}) const;
  // Removes a pending message: true when it was pending, false when not (an
  // acknowledgement may arrive twice).
  Result<bool> acknowledge(std::string_view peer, const MessageId& id);
  void acknowledgeAsync(std::string_view peer, const MessageId& id, ChangedFn done);

  // --- inbox ------------------------------------------------------------------
  // Stores a received message: true when it is new, false for a duplicate
  // (seen before, consumed or not), which is not stored again.
  Result<bool> receive(std::string_view peer, const MessageId& id, ByteView payload);
  void receiveAsync(std::string_view peer, const MessageId& id, ByteView payload, ChangedFn done);
  // Removes the inbox message, keeping its dedup record: true when consumed
  // now, false when it was consumed before; never received is not_found.
  Result<bool> consume(std::string_view peer, const MessageId& id);
  void consumeAsync(std::string_view peer, const MessageId& id, ChangedFn done);
  // Inbox messages not yet consumed, in arrival order, from arrival seq
  // `from_seq` on, at most `limit` (<= message_listing_max).
  Result<std::vector<InboxMessage>> unconsumed(uint32_t limit, uint64_t from_seq = 0) const;
  Result<std::optional<DedupRecord>> dedup(std::string_view peer, const MessageId& id) const;
  // Forgets the dedup records of messages consumed before `older_than_micros`,
  // oldest first, at most `limit` (<= dedup_prune_batch_max) per call.
  Result<PruneResult> pruneDedup(int64_t older_than_micros, uint32_t limit = dedup_prune_batch_max);

 private:
  int64_t now() const;

  Store& store_;
  const Db& outbox_;
  const Db& inbox_;
  const Db& dedup_;
  std::function<int64_t()> now_micros_;
};

}  // namespace ccal::vault
