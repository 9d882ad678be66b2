#pragma once
// The messaging layer's exactly-once tables, keyed by sequence numbers so
// that every write lands at the end (or the front) of a contiguous key range:
// a message costs a few appends, not a random B-tree page per table.
//
// Streams. The messages from one member to one peer form a stream: the
// sender numbers them 1, 2, 3, ... (its outbox seq, persisted, never reused)
// under a stream incarnation, a number chosen when the sender's store first
// writes to that peer (its clock in microseconds). A sender whose store is
// wiped starts a new stream at seq 1 under a newer incarnation; the receiver
// sees the change and says so (see receive()).
//
// Sender: the outbox holds each message from enqueue until the peer
// acknowledges its seq. Receiver: per peer a durable watermark W ("every seq
// <= W of the current incarnation was received"), the inbox keyed by
// (peer, incarnation, seq), and a bounded log of the ids of recent seqs.
// Messages received above W (out of order) are the inbox entries above W:
// that is the sparse set, bounded by receive_ahead_seqs_max. A message is a
// duplicate exactly when its seq is <= W or is in the inbox; there is no
// record per message id.
//
// Layout in the vault's Store (sub-databases of vault_internal.h; peers are
// keys::appendText encodings, so one peer's keys are one contiguous range):
//   msg_outbox  'n' peer                 -> be64 incarnation, be64 next seq (never reused)
//               'q' peer be64 seq        -> message id, payload       (send order)
//   msg_inbox   'a' peer be64 inc be64 seq -> message id, payload
//   msg_dedup   'w' peer                 -> be64 incarnation, be64 watermark
//               'l' peer be64 inc be64 seq -> message id  (the last received_ids_kept_max
//                                                          seqs per peer; older pruned)
//
// Ids. The id of every message still in the outbox is kept in memory too
// (rebuilt at construction from the outbox), which answers enqueue's "is
// this id pending?" without an index by id. Once acknowledged, an id is
// forgotten: enqueueing it again sends a new message. A flow that may replay
// a send after a crash must therefore record "sent" in the same Store (the
// flow checkpoint and the outbox share one LMDB environment) or reuse ids
// only while they are pending.
// On the receiver, the id log and the inbox catch a peer that reuses a seq
// with another id (an error naming both ids).
//
// Writes go through the Store's writer thread (group commit); the batch
// variants take many messages in one request. done() runs after the durable
// commit, on the writer thread, or at once on the caller's thread when the
// request is refused before queueing (a limit, a bad peer name). Reads run
// on any thread. One object may serve many threads at once.

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "ledger/bytes.h"
#include "ledger/result.h"
#include "ledger/secure_hash.h"
#include "vault/store.h"

namespace ccal::vault {

using MessageId = SecureHash;

// Limits of the message store, in one place.
// Peer names are in keys, and LMDB keys hold at most 511 bytes; the longest
// key (an inbox or id-log entry) is a name plus 19 bytes. X.500 names fit.
inline constexpr size_t peer_name_bytes_max = 448;
inline constexpr size_t message_payload_bytes_max = 1u << 20;
inline constexpr uint32_t message_listing_max = 10'000;  // messages or peers per listing
inline constexpr uint32_t message_batch_max = 4096;      // messages per batch request
inline constexpr uint64_t outbox_messages_per_peer_default = 1'000'000;  // pending for one peer
// Seqs above a peer's watermark that may be stored (received out of order):
// a message further ahead is refused until earlier ones arrive. Bounds the
// sparse set of received seqs above the watermark.
inline constexpr uint64_t receive_ahead_seqs_max = 4096;
// Ids of the most recent seqs kept per peer, to check the id of a repeated
// seq (retransmissions come from within the sender's window, at most
// receive_ahead_seqs_max) and for diagnostics.
inline constexpr uint64_t received_ids_kept_max = 16'384;
// Old id-log entries deleted per receive request (pruning keeps pace with
// arrivals: each request may delete more than it adds).
inline constexpr uint32_t id_log_prune_entries_max = 2 * message_batch_max;

struct OutboxStream {
  uint64_t incarnation = 0;  // 0: nothing was ever queued for the peer
  uint64_t next_seq = 1;
};

struct OutboxMessage {
  std::string peer;
  MessageId id;
  uint64_t seq = 0;  // the peer's stream seq, from 1
  Bytes payload;
};

struct OutgoingMessage {
  std::string peer;
  MessageId id;
  Bytes payload;
};

// Where an enqueued message is in its peer's stream.
struct Enqueued {
  bool queued = false;       // false: the id was pending already (same payload), at `seq`
  uint64_t incarnation = 0;  // of the peer's stream
  uint64_t seq = 0;
};

// A message of a peer's stream, as it arrives.
struct ArrivingMessage {
  uint64_t seq = 0;
  MessageId id;
  Bytes payload;
};

// What happened to one arriving message.
enum class Arrival : uint8_t {
  stored,          // new: stored in the inbox
  duplicate,       // received before (seq <= watermark, or in the inbox): not stored again
  conflict,        // the seq was received before under another id (other_id): not stored
  stale_stream,    // of an older incarnation than the peer's current one: dropped
  too_far_ahead,   // over receive_ahead_seqs_max above the watermark: refused, comes again
};
std::string_view arrivalName(Arrival a);

struct ArrivalResult {
  Arrival kind = Arrival::stored;
  MessageId other_id;  // conflict: the id stored under the seq
};

struct ReceiveState {
  std::string peer;
  uint64_t incarnation = 0;
  uint64_t watermark = 0;  // every seq <= this of the incarnation was received
};

struct ReceiveResult {
  std::vector<ArrivalResult> arrivals;  // one per message, in order
  ReceiveState state;                   // the peer's stream after the request
  // The first message of the peer: its stream was adopted at `floor`.
  bool stream_started = false;
  // The peer started a newer incarnation (its store was wiped or replaced):
  // what was received of the old one.
  bool stream_restarted = false;
  uint64_t previous_incarnation = 0;
  uint64_t previous_watermark = 0;
  // The sender's floor says seqs skipped_from..skipped_to were acknowledged
  // here, but they are not: this store lost them (restored from an old copy).
  uint64_t skipped_from = 0, skipped_to = 0;  // 0, 0: none
};

struct InboxMessage {
  std::string peer;
  uint64_t incarnation = 0;
  uint64_t seq = 0;
  MessageId id;
  Bytes payload;
};

// Names a received message for consume().
struct InboxKey {
  std::string peer;
  uint64_t incarnation = 0;
  uint64_t seq = 0;
  MessageId id;
};

struct ReceivedId {
  uint64_t incarnation = 0;
  uint64_t seq = 0;
  MessageId id;
};

// Its *Async writes run on the Store's writer thread against this object;
// the destructor waits until every write it queued has run and reported.
class MessageStore {
 public:
  // done() of a write that reports whether it changed anything.
  using ChangedFn = std::function<void(const Result<bool>&)>;
  // done() of a batch: one result per item, in order, or the request's error.
  using BatchFn = std::function<void(const Result<std::vector<Result<bool>>>&)>;
  using EnqueueFn = std::function<void(const Result<std::vector<Result<Enqueued>>>&)>;
  using ReceiveFn = std::function<void(const Result<ReceiveResult>&)>;
  using CountFn = std::function<void(const Result<uint64_t>&)>;

  // `store` is the vault's (Vault::store()) and must outlive this object
  // and every request it queued. `now_micros` gives new stream
  // incarnations; the system clock when empty. Reads the outbox's pending
  // ids (see above).
  explicit MessageStore(Store& store, std::function<int64_t()> now_micros = {});
  // Waits for the writes it queued (their done() included): they use this object.
  ~MessageStore();
  MessageStore(const MessageStore&) = delete;
  MessageStore& operator=(const MessageStore&) = delete;

  // --- outbox -----------------------------------------------------------------
  // Messages pending for one peer (queued, not yet acknowledged): a new one
  // over it is refused (too_large, naming the peer and the limit), so a peer
  // that stays away cannot fill the store. The node sets it from
  // messaging.outbox_messages_per_peer_max.
  void setOutboxMessagesPerPeerMax(uint64_t messages);
  // Queues a message for `peer`, durable before it is sent, as the next seq
  // of the peer's stream. True when queued; false when a message with this
  // id is already pending for the peer with the same payload (a different
  // payload is a conflict naming both sizes; over the peer's limit, too_large).
  Result<bool> enqueue(std::string_view peer, const MessageId& id, ByteView payload);
  void enqueueAsync(std::string_view peer, const MessageId& id, ByteView payload, ChangedFn done);
  // Many messages (any peers) in one request, at most message_batch_max;
  // each result says where the message is in its peer's stream (so that a
  // sender can transmit it without reading it back from the outbox).
  void enqueueBatchAsync(std::vector<OutgoingMessage> messages, EnqueueFn done);
  // The peer's stream: its incarnation and next seq.
  Result<OutboxStream> outboxStream(std::string_view peer) const;
  // The peer's pending messages in seq order, from seq `from_seq` on, at
  // most `limit` (<= message_listing_max).
  Result<std::vector<OutboxMessage>> pending(std::string_view peer, uint32_t limit,
                                             uint64_t from_seq = 0) const;
  // Peers with pending messages, in name order, at most `limit`, starting
  // after `after_peer` (empty: from the first).
  Result<std::vector<std::string>> outboxPeers(uint32_t limit,
                                               std::string_view after_peer = {}) const;
  // Removes the pending messages with these seqs (at most
  // message_batch_max): how many were pending (an acknowledgement may
  // arrive twice).
  Result<uint64_t> acknowledge(std::string_view peer, std::vector<uint64_t> seqs);
  void acknowledgeAsync(std::string_view peer, std::vector<uint64_t> seqs, CountFn done);

  // --- inbox ------------------------------------------------------------------
  // Stores arriving messages of the peer's stream `incarnation` (at most
  // message_batch_max). `floor` is the sender's lowest unacknowledged seq
  // (every seq below it was acknowledged by this store). The first message
  // of a peer starts its stream at the floor; a newer incarnation replaces
  // the stream (the old one's unconsumed messages stay in the inbox); an
  // older one is stale. Then the watermark moves over every seq stored
  // contiguously above it.
  Result<ReceiveResult> receive(std::string_view peer, uint64_t incarnation, uint64_t floor,
                                std::vector<ArrivingMessage> messages);
  void receiveAsync(std::string_view peer, uint64_t incarnation, uint64_t floor,
                    std::vector<ArrivingMessage> messages, ReceiveFn done);
  // Removes an inbox message: true when consumed now, false when it was
  // consumed before; not_found when never received; conflict when the seq
  // holds another id; bad_query when it is above the watermark (not yet
  // handed over in order).
  Result<bool> consume(const InboxKey& key);
  void consumeBatchAsync(std::vector<InboxKey> keys, BatchFn done);
  Result<std::optional<ReceiveState>> receiveState(std::string_view peer) const;
  // Peers with a receive stream, in name order, paged like outboxPeers.
  Result<std::vector<ReceiveState>> receiveStates(uint32_t limit,
                                                  std::string_view after_peer = {}) const;
  // The peer's inbox messages not yet consumed, in (incarnation, seq) order,
  // from (from_incarnation, from_seq) on, at most `limit`.
  Result<std::vector<InboxMessage>> unconsumed(std::string_view peer, uint32_t limit,
                                               uint64_t from_incarnation = 0,
                                               uint64_t from_seq = 0) const;
  // The ids of the peer's recent seqs (the id log), in (incarnation, seq)
  // order, paged like unconsumed().
  Result<std::vector<ReceivedId>> receivedIds(std::string_view peer, uint32_t limit,
                                              uint64_t from_incarnation = 0,
                                              uint64_t from_seq = 0) const;

 private:
  using PendingIds = std::unordered_map<MessageId, uint64_t, SecureHashHasher>;

  int64_t now() const;
  // Store::submit, counted, so that the destructor can wait for the writes
  // still queued (a restart in a test or the simulator drops a MessageStore
  // while its Delivery's writes are in the queue).
  void submit(WriteFn fn, DoneFn done);

  struct InFlight {
    std::mutex mutex;
    std::condition_variable drained;
    uint64_t writes = 0;
  };

  Store& store_;
  std::shared_ptr<InFlight> in_flight_ = std::make_shared<InFlight>();
  const Db& outbox_;
  const Db& inbox_;
  const Db& dedup_;
  std::function<int64_t()> now_micros_;
  // Ids pending per peer -> seq. Hints: an entry is checked against the
  // outbox before it is believed (a rolled-back enqueue leaves a stale one);
  // entries are added by enqueue requests and removed after an
  // acknowledgement's commit, so no pending id is ever missing.
  mutable std::mutex pending_mutex_;  // guards pending_ids_ and outbox_per_peer_max_
  std::unordered_map<std::string, PendingIds> pending_ids_;
  uint64_t outbox_per_peer_max_ = outbox_messages_per_peer_default;
};

}  // namespace ccal::vault
