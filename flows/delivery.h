#pragma once
// Exactly-once, ordered, durable messaging (flows/io.h Messaging) over a
// best-effort Link and the vault's MessageStore.
//
// Sender: send() puts the message in the durable outbox as the next seq of
// the stream to that peer (schemas/messaging.capnp); done() runs after the
// group commit. Messages then go out in seq order, at most
// window_messages_max per peer unacknowledged: a message whose window has
// room goes out as soon as its enqueue is durable, from a copy send() kept
// (the store says where it is in the stream); otherwise the outbox is read
// back as the window frees up. They are retransmitted (a
// timer with bounded exponential backoff, at once when the peer comes up,
// and after a restart from the outbox) until the receiver acknowledges
// them; an acknowledged message is removed from the outbox.
//
// Receiver: a message is stored durably (inbox, watermark, id log) before it
// is acknowledged, so an acknowledged message survives any crash; a message
// seen before (its seq is at or below the stream's watermark, or in the
// inbox) is acknowledged again and not stored twice. Messages are handed to
// the handler in seq order: one that arrives early waits, stored, until the
// seqs before it are through; at most inbox_waiting_messages_max wait per
// peer (beyond that only messages that fill a gap are taken; the others are
// dropped unacknowledged and come again) and none more than
// vault::receive_ahead_seqs_max above the watermark. After a restart, every
// stored message not yet consumed is handed over again, in order.
//
// A peer that reuses a seq with another id (a bug, or a store rolled back
// on its side) is refused with a log line naming both ids. A peer whose
// store was wiped starts a newer stream incarnation: the receiver logs an
// error naming the old stream and its watermark, hands over what it had
// stored of the old stream, and follows the new one; frames of an older
// incarnation are dropped with a log line. Nothing is dropped or delivered
// twice silently.
//
// Any loss, duplication or reordering of frames by the link, and a crash of
// either side at any moment (a new Delivery over the same store), lose and
// duplicate nothing: the test in test/sim checks this over many seeds.
//
// Store requests are batched: the messages of the frames that arrive before
// the executor next runs its posted tasks go to the store in one request,
// and so do sends, acknowledgements and consumptions.
//
// Threading: everything runs on `executor`; MessageStore completions arrive
// on the store's writer thread and are posted back to it. The executor must
// outlive the store's queued requests (close the store before it).

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
#include <variant>
#include <vector>

#include "flows/io.h"
#include "vault/message_store.h"

namespace ccal::flows {

// Limits and timings of Delivery, each with its unit in its name.
struct DeliveryConfig {
  // Messages sent to one peer and not yet acknowledged (in flight); at most
  // vault::receive_ahead_seqs_max, which a receiver takes above its watermark.
  uint32_t window_messages_max = 256;
  // Messages resent to one peer per retransmission.
  uint32_t retransmit_batch_messages_max = 64;
  // Single seqs in one acknowledgement frame (also bounded by the frame size).
  uint32_t ack_batch_seqs_max = 1024;
  // Stored messages of one peer waiting for an earlier one.
  uint32_t inbox_waiting_messages_max = 512;
  // Retransmission delay: starts at the minimum, doubles while nothing is
  // acknowledged, capped at the maximum; back to the minimum on progress.
  int64_t retransmit_delay_micros_min = 200'000;
  int64_t retransmit_delay_micros_max = 10'000'000;
  // Which peers exist (the network map); empty: every name is a peer. A send
  // to an unknown peer is refused before it is stored.
  std::function<bool(std::string_view)> knows_peer;
  // Where reasons for dropped frames and failed writes go; empty: stderr.
  std::function<void(std::string_view)> log;
};

// Wire overhead of a message frame around its payload, in bytes (the frame's
// struct, pointers, the id and the word padding), and the largest payload.
inline constexpr size_t message_frame_overhead_bytes = 256;

class Delivery final : public Messaging, public LinkHandler {
 public:
  struct Stats {
    uint64_t messages_sent = 0;          // first transmissions
    uint64_t messages_retransmitted = 0;
    uint64_t messages_acknowledged = 0;  // removed from the outbox after an ack
    uint64_t messages_stored = 0;        // new messages stored in the inbox
    uint64_t messages_duplicate = 0;     // arrivals already stored (acked again)
    uint64_t messages_delivered = 0;     // handed to the handler
    uint64_t messages_over_waiting_max = 0;  // dropped: too many waiting, or too far ahead
    uint64_t messages_conflicting = 0;   // dropped: a seq received before under another id
    uint64_t messages_stale_stream = 0;  // dropped: of an older stream incarnation
    uint64_t stream_restarts = 0;        // a peer started a newer incarnation
    uint64_t frames_malformed = 0;       // dropped: did not decode or broke a rule
    uint64_t ack_frames_sent = 0;
    uint64_t store_requests = 0;         // MessageStore requests queued, of which:
    uint64_t store_enqueues = 0;         //   outbox appends (batched sends)
    uint64_t store_receives = 0;         //   inbox stores (batched arrivals)
    uint64_t store_acks = 0;             //   outbox removals (acknowledged)
    uint64_t store_consumes = 0;         //   inbox removals (consumed)
    uint64_t outbox_reads = 0;           // refills that read the outbox (not sent from send()'s copy)
    uint64_t store_failures = 0;
  };

  // Sets itself as the link's handler. Call setHandler() and then start().
  Delivery(Link& link, vault::MessageStore& store, Executor& executor, const Clock& clock,
           DeliveryConfig config = {});
  ~Delivery() override;
  Delivery(const Delivery&) = delete;
  Delivery& operator=(const Delivery&) = delete;

  // Hands over every stored, unconsumed message again (in order) and starts
  // sending the outbox. Executor thread, once, after setHandler().
  Status start();

  // --- Messaging ----------------------------------------------------------------
  void setHandler(MessageHandler* handler) override;
  void send(std::string_view peer, const MessageId& id, Bytes payload,
            std::function<void(const Status&)> done) override;
  // not_found when the message was not handed over, or is consumed already.
  void consume(std::string_view peer, const MessageId& id,
               std::function<void(const Status&)> done) override;

  // --- LinkHandler --------------------------------------------------------------
  void onFrame(std::string_view peer, ByteView frame) override;
  void onPeerUp(std::string_view peer) override;
  void onPeerDown(std::string_view peer) override;

  // The largest payload send() accepts.
  size_t payloadBytesMax() const;
  const Stats& stats() const { return stats_; }
  // Messages to `peer` sent and not yet acknowledged (in this process's view).
  size_t inFlight(std::string_view peer) const;
  // Blocks until every store request queued so far has posted its completion
  // to the executor (they have not necessarily run). The simulator calls it
  // after each event so that runs are reproducible. Not on the writer thread.
  void waitForStore() const;

 private:
  struct Outgoing {
    uint64_t seq = 0;  // the stream seq
    MessageId id;
    Bytes payload;
    bool sent = false;
  };
  struct OutPeer {
    uint64_t incarnation = 0;     // of our stream to the peer; 0 until read
    std::deque<Outgoing> window;  // a prefix of the peer's outbox, in order
    uint64_t next_outbox_seq = 0;  // where the next refill reads from
    // False when every outbox message below next_outbox_seq is in the window
    // (or acknowledged) and none above it was seen: a message enqueued now at
    // next_outbox_seq joins the window straight from send()'s copy.
    bool outbox_may_have_more = true;
    // Sends whose payload is kept for that (each will take a window slot).
    size_t kept_payloads = 0;
    bool refill_posted = false;
    Executor::TimerId retransmit_timer = 0;
    int64_t retransmit_delay_micros = 0;
  };
  struct Held {
    MessageId id;
    Bytes payload;
    bool stored = false;  // else being stored
  };
  struct InboxPlace {
    uint64_t incarnation = 0;
    uint64_t seq = 0;
  };
  struct InPeer {
    uint64_t incarnation = 0;  // of the peer's stream to us; 0: none yet
    uint64_t watermark = 0;    // durable: every seq <= it is stored (or consumed)
    uint64_t delivered = 0;    // the last seq handed over (<= watermark)
    uint64_t skip_to = 0;      // seqs up to it that are missing are lost (logged)
    std::map<uint64_t, Held> held;  // seq > delivered: stored or being stored
    // Arrivals collected for the next store request (one incarnation).
    std::vector<vault::ArrivingMessage> arriving;
    uint64_t arriving_incarnation = 0;
    uint64_t arriving_floor = 0;
    bool store_posted = false;
    size_t storing = 0;  // messages in store requests not yet completed
    // Handed over and not yet consumed.
    std::unordered_map<MessageId, InboxPlace, SecureHashHasher> unconsumed;
    // Acknowledgements to send: the watermark, and these seqs above it.
    bool ack_due = false;
    bool ack_flush_posted = false;
    std::vector<uint64_t> ack_seqs;
  };
  struct PendingSend {
    vault::OutgoingMessage message;
    std::function<void(const Status&)> done;
    // A copy of the payload, kept when the window has room for it, so that
    // the message is sent once durable without reading the outbox.
    std::optional<Bytes> kept_payload;
  };
  struct PendingConsume {
    vault::InboxKey key;
    std::function<void(const Status&)> done;
  };

  OutPeer& outPeer(std::string_view peer);
  InPeer& inPeer(std::string_view peer);
  void log(const std::string& line) const;
  // Runs fn on the executor unless this object is gone by then. Any thread.
  void postBack(std::function<void()> fn);
  // Wraps the done() of a MessageStore request: posts on_executor(result)
  // back to the executor (dropped if this object is gone) and counts the
  // request in flight until then.
  template <class T>
  std::function<void(const Result<T>&)> completion(
      std::function<void(const Result<T>&)> on_executor);

  void flushSends();
  // A send's enqueue is durable: the message joins the window (and goes
  // out) at once when it is the next in the stream, else a refill reads it.
  void onEnqueued(const std::string& peer, const vault::Enqueued& e, const MessageId& id,
                  std::optional<Bytes> kept_payload);
  void flushConsumes();
  void scheduleRefill(const std::string& peer);
  void refill(const std::string& peer);
  void transmit(const std::string& peer, size_t index, bool retransmission);
  // Starts the retransmission timer unless it runs or nothing is in flight
  // (and not even_if_idle: a failed outbox read is retried by the timer too).
  void armRetransmit(const std::string& peer, bool even_if_idle = false);
  void onRetransmitTimer(const std::string& peer);
  void onAck(const std::string& peer, uint64_t incarnation, uint64_t up_to,
             const std::vector<uint64_t>& seqs);

  void onMessageFrame(const std::string& peer, uint64_t incarnation, uint64_t floor, uint64_t seq,
                      const MessageId& id, Bytes payload);
  // A newer incarnation of the peer's stream: hands over what is stored of
  // the old one and follows the new one. False when requests of the old one
  // are still being stored (the frame comes again).
  bool restartStream(const std::string& peer, InPeer& in, uint64_t incarnation, uint64_t floor);
  void flushArriving(const std::string& peer);
  void onStored(const std::string& peer, uint64_t incarnation, uint64_t floor,
                const std::vector<uint64_t>& seqs,
                const std::vector<MessageId>& ids, const Result<vault::ReceiveResult>& result);
  void queueAck(const std::string& peer, uint64_t seq);
  void flushAcks(const std::string& peer);
  void handOver(const std::string& peer, InPeer& in, uint64_t incarnation, uint64_t seq,
                const MessageId& id, const Bytes& payload);
  void deliverReady(const std::string& peer);

  Link& link_;
  vault::MessageStore& store_;
  Executor& executor_;
  const Clock& clock_;
  DeliveryConfig config_;
  MessageHandler* handler_ = nullptr;
  bool started_ = false;
  std::map<std::string, OutPeer, std::less<>> out_;
  std::map<std::string, InPeer, std::less<>> in_;
  std::vector<PendingSend> sends_;
  bool sends_posted_ = false;
  std::vector<PendingConsume> consumes_;
  bool consumes_posted_ = false;
  Stats stats_;
  // Expires when this object is destroyed; posted completions check it.
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);
  // Store requests whose completion has not been posted yet; shared with the
  // completions, which may outlive this object.
  struct StoreRequests {
    std::mutex mutex;  // guards in_flight
    std::condition_variable drained;
    size_t in_flight = 0;
  };
  std::shared_ptr<StoreRequests> requests_ = std::make_shared<StoreRequests>();
};

// Frames as a peer's bytes decode (schema messaging.Frame), and their
// encodings, exposed for tests and fuzzing. Decoding refuses, naming what is
// wrong: a non-canonical or over-long frame, incarnation 0, seq 0, a floor
// outside 1..seq, an id not 32 bytes, a payload over payload_bytes_max, an
// ack of more than ack_seqs_max seqs or of a seq not above upTo.
struct DeliveryMessageFrame {
  uint64_t incarnation = 0;
  uint64_t seq = 0;
  uint64_t floor = 0;
  MessageId id;
  Bytes payload;
};
struct DeliveryAckFrame {
  uint64_t incarnation = 0;
  uint64_t up_to = 0;
  std::vector<uint64_t> seqs;
};
using DeliveryFrame = std::variant<DeliveryMessageFrame, DeliveryAckFrame>;
Result<DeliveryFrame> decodeDeliveryFrame(ByteView bytes, size_t frame_bytes_max,
                                          size_t payload_bytes_max, size_t ack_seqs_max);
Bytes encodeMessageFrame(uint64_t incarnation, uint64_t seq, uint64_t floor, const MessageId& id,
                         ByteView payload);
Bytes encodeAckFrame(uint64_t incarnation, uint64_t up_to, const std::vector<uint64_t>& seqs);

}  // namespace ccal::flows
