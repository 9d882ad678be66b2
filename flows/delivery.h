#pragma once
// Exactly-once, ordered, durable messaging (flows/io.h Messaging) over a
// best-effort Link and the vault's MessageStore.
//
// Sender: send() puts the message in the durable outbox; done() runs after
// the group commit. Messages then go out in outbox order, at most
// window_messages_max per peer unacknowledged, and are retransmitted (a
// timer with bounded exponential backoff, at once when the peer comes up,
// and after a restart from the outbox) until the receiver acknowledges
// them; an acknowledged message is removed from the outbox.
//
// Receiver: a message is stored durably (inbox + dedup record) before it is
// acknowledged, so an acknowledged message survives any crash; a message
// seen before (dedup) is acknowledged again and not stored twice. Messages
// are handed to the handler in the order the sender sent them: each frame
// names the message sent before it that was still unacknowledged
// (schemas/messaging.capnp explains the sequence numbers), and a message
// waits, stored, until that one has been handed over. Out-of-order arrivals
// wait in the inbox, at most inbox_waiting_messages_max per peer; beyond
// that they are dropped unacknowledged and come again. After a restart,
// every stored message not yet consumed is handed over again, in order.
//
// Any loss, duplication or reordering of frames by the link, and a crash of
// either side at any moment (a new Delivery over the same store), lose and
// duplicate nothing: the test in test/sim checks this over many seeds.
//
// The dedup record of a consumed message is what recognises a late copy of
// it; whoever prunes dedup records (MessageStore::pruneDedup) must keep them
// longer than a sender may keep retransmitting.
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
#include <string>
#include <string_view>
#include <vector>

#include "flows/io.h"
#include "vault/message_store.h"

namespace ccal::flows {

// Limits and timings of Delivery, each with its unit in its name.
struct DeliveryConfig {
  // Messages sent to one peer and not yet acknowledged (in flight).
  uint32_t window_messages_max = 256;
  // Messages resent to one peer per retransmission.
  uint32_t retransmit_batch_messages_max = 64;
  // Message ids in one acknowledgement frame (also bounded by the frame size).
  uint32_t ack_batch_ids_max = 1024;
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
// struct, pointers, the ids and the word padding), and the largest payload.
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
    uint64_t messages_over_waiting_max = 0;  // dropped: too many waiting
    uint64_t frames_malformed = 0;       // dropped: did not decode or broke a rule
    uint64_t ack_frames_sent = 0;
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
    uint64_t seq = 0;  // outbox seq + 1 (the wire seq)
    MessageId id;
    Bytes payload;
    bool sent = false;
  };
  struct OutPeer {
    std::deque<Outgoing> window;  // a prefix of the peer's outbox, in order
    uint64_t next_outbox_seq = 0;  // where the next refill reads from
    bool outbox_may_have_more = true;
    bool refill_posted = false;
    Executor::TimerId retransmit_timer = 0;
    int64_t retransmit_delay_micros = 0;
    std::vector<MessageId> acks_to_send;  // ids stored here, to acknowledge
    bool ack_flush_posted = false;
  };
  enum class HeldState { storing, stored };
  struct Held {
    MessageId id;
    uint64_t prev_seq = 0;
    MessageId prev_id;
    Bytes payload;
    HeldState state = HeldState::storing;
  };
  struct InPeer {
    std::map<uint64_t, Held> held;  // by wire seq: stored or storing, not yet handed over
    uint64_t last_delivered_seq = 0;  // in this process; 0 none
  };

  OutPeer& outPeer(std::string_view peer);
  InPeer& inPeer(std::string_view peer);
  void log(const std::string& line) const;
  // Runs fn on the executor unless this object is gone by then. Any thread.
  void postBack(std::function<void()> fn);
  // The done() of a MessageStore request: posts on_executor(result) back to
  // the executor (dropped if this object is gone) and counts the request in
  // flight until then.
  vault::MessageStore::ChangedFn completion(std::function<void(const Result<bool>&)> on_executor);

  void scheduleRefill(const std::string& peer);
  void refill(const std::string& peer);
  void transmit(const std::string& peer, size_t index, bool retransmission);
  // Starts the retransmission timer unless it runs or nothing is in flight
  // (and not even_if_idle: a failed outbox read is retried by the timer too).
  void armRetransmit(const std::string& peer, bool even_if_idle = false);
  void onRetransmitTimer(const std::string& peer);
  void onAck(const std::string& peer, std::vector<MessageId> ids);

  void onMessageFrame(const std::string& peer, uint64_t seq, uint64_t prev_seq,
                      const MessageId& prev_id, const MessageId& id, Bytes payload);
  void onStored(const std::string& peer, uint64_t seq, const Result<bool>& stored);
  void queueAck(const std::string& peer, const MessageId& id);
  void flushAcks(const std::string& peer);
  // Whether the message named by (prev_seq, prev_id) has been handed over.
  // Whether the chain of held messages back from prev_seq reaches one handed
  // over: a message so anchored is delivered as soon as it is stored.
  bool anchored(const std::string& peer, InPeer& in, uint64_t prev_seq,
                MessageId prev_id) const;
  bool prevDelivered(const std::string& peer, InPeer& in, uint64_t prev_seq,
                     const MessageId& prev_id) const;
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

// Frame encodings, exposed for tests and fuzzing.
Bytes encodeMessageFrame(uint64_t seq, uint64_t prev_seq, const MessageId& prev_id,
                         const MessageId& id, ByteView payload);
Bytes encodeAckFrame(const std::vector<MessageId>& ids);

}  // namespace ccal::flows
