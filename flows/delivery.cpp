#include "flows/delivery.h"

#include <algorithm>
#include <cstdio>
#include <optional>
#include <utility>
#include <variant>

#include "ledger/capnp_io.h"
#include "schemas/messaging.capnp.h"

namespace ccal::flows {
namespace {

// Bytes an acknowledged id takes in an ack frame (32 bytes and its list
// pointer), and the frame's fixed part.
constexpr size_t ack_id_bytes = 40;
constexpr size_t ack_frame_fixed_bytes = 64;

size_t ackIdsMax(const DeliveryConfig& config, size_t frame_bytes_max) {
  return std::min<size_t>(config.ack_batch_ids_max,
                          (frame_bytes_max - ack_frame_fixed_bytes) / ack_id_bytes);
}

struct DecodedMessage {
  uint64_t seq = 0;
  uint64_t prev_seq = 0;
  MessageId prev_id;
  MessageId id;
  Bytes payload;
};
struct DecodedAck {
  std::vector<MessageId> ids;
};
using DecodedFrame = std::variant<DecodedMessage, DecodedAck>;

Result<MessageId> idFrom(capnp::Data::Reader data, std::string_view field) {
  if (data.size() != SecureHash::size_bytes) {
    return makeError(Errc::bad_length, std::string(field) + " is " + std::to_string(data.size()) +
                                           " bytes, not " +
                                           std::to_string(SecureHash::size_bytes));
  }
  return SecureHash::fromBytes(asByteView(data));
}

Result<DecodedMessage> readMessage(schema::messaging::Message::Reader m, size_t payload_bytes_max) {
  DecodedMessage out;
  out.seq = m.getSeq();
  out.prev_seq = m.getPrevSeq();
  if (out.seq == 0) return makeError(Errc::malformed, "message seq is 0");
  if (out.prev_seq >= out.seq) {
    return makeError(Errc::malformed, "message prevSeq " + std::to_string(out.prev_seq) +
                                          " is not below its seq " + std::to_string(out.seq));
  }
  auto id = idFrom(m.getId(), "message id");
  if (!id) return id.error();
  out.id = *id;
  if (out.prev_seq == 0) {
    if (m.getPrevId().size() != 0) {
      return makeError(Errc::malformed, "message prevId is set while prevSeq is 0");
    }
  } else {
    auto prev = idFrom(m.getPrevId(), "message prevId");
    if (!prev) return prev.error();
    out.prev_id = *prev;
  }
  // Each get counts against the traversal limit: read the payload once.
  const capnp::Data::Reader payload = m.getPayload();
  if (payload.size() > payload_bytes_max) {
    return makeError(Errc::too_large, "message payload of " + std::to_string(payload.size()) +
                                          " bytes is over the limit of " +
                                          std::to_string(payload_bytes_max));
  }
  out.payload.assign(payload.begin(), payload.end());
  return out;
}

Result<DecodedFrame> decodeFrame(ByteView bytes, size_t frame_bytes_max, size_t payload_bytes_max,
                                 size_t ack_ids_max) {
  ReadLimits limits;
  limits.message_bytes_max = frame_bytes_max;
  // The canonical check reads the frame once and the parse once more.
  limits.traversal_words_max = frame_bytes_max / 8 * 3 + 64;
  limits.nesting_depth_max = 8;
  return decodeMessage<schema::messaging::Frame>(
      bytes, "messaging frame", Canonical::required,
      [&](schema::messaging::Frame::Reader f) -> Result<DecodedFrame> {
        switch (f.which()) {
          case schema::messaging::Frame::MESSAGE: {
            auto m = readMessage(f.getMessage(), payload_bytes_max);
            if (!m) return m.error();
            return DecodedFrame(std::move(m).value());
          }
          case schema::messaging::Frame::ACK: {
            auto ids = f.getAck().getIds();
            if (ids.size() > ack_ids_max) {
              return makeError(Errc::too_large, "ack of " + std::to_string(ids.size()) +
                                                    " ids is over the limit of " +
                                                    std::to_string(ack_ids_max));
            }
            DecodedAck ack;
            ack.ids.reserve(ids.size());
            for (auto data : ids) {
              auto id = idFrom(data, "acknowledged id");
              if (!id) return id.error();
              ack.ids.push_back(*id);
            }
            return DecodedFrame(std::move(ack));
          }
        }
        return makeError(Errc::malformed, "unknown frame kind " +
                                              std::to_string(static_cast<int>(f.which())));
      },
      limits);
}

}  // namespace

Bytes encodeMessageFrame(uint64_t seq, uint64_t prev_seq, const MessageId& prev_id,
                         const MessageId& id, ByteView payload) {
  return buildCanonical<schema::messaging::Frame>([&](auto f) {
    auto m = f.initMessage();
    m.setSeq(seq);
    m.setPrevSeq(prev_seq);
    if (prev_seq != 0) m.setPrevId(asData(prev_id.view()));
    m.setId(asData(id.view()));
    m.setPayload(asData(payload));
  });
}

Bytes encodeAckFrame(const std::vector<MessageId>& ids) {
  return buildCanonical<schema::messaging::Frame>([&](auto f) {
    auto list = f.initAck().initIds(static_cast<unsigned>(ids.size()));
    for (unsigned i = 0; i < ids.size(); ++i) list.set(i, asData(ids[i].view()));
  });
}

Delivery::Delivery(Link& link, vault::MessageStore& store, Executor& executor, const Clock& clock,
                   DeliveryConfig config)
    : link_(link), store_(store), executor_(executor), clock_(clock), config_(std::move(config)) {
  CCAL_ASSERT(config_.window_messages_max >= 1);
  CCAL_ASSERT(config_.retransmit_batch_messages_max >= 1);
  CCAL_ASSERT(config_.ack_batch_ids_max >= 1);
  CCAL_ASSERT(config_.inbox_waiting_messages_max >= 1);
  CCAL_ASSERT(config_.retransmit_delay_micros_min > 0 &&
              config_.retransmit_delay_micros_min <= config_.retransmit_delay_micros_max);
  CCAL_ASSERT_MSG(link_.frameBytesMax() > message_frame_overhead_bytes + ack_frame_fixed_bytes,
                  "the link's frames are too small for messaging");
  link_.setHandler(this);
}

Delivery::~Delivery() {
  alive_.reset();
  for (auto& [peer, out] : out_) {
    if (out.retransmit_timer != 0) executor_.cancel(out.retransmit_timer);
  }
}

void Delivery::log(const std::string& line) const {
  if (config_.log) {
    config_.log(line);
  } else {
    std::fprintf(stderr, "delivery [%lld]: %s\n", static_cast<long long>(clock_.nowMicros()),
                 line.c_str());
  }
}

void Delivery::postBack(std::function<void()> fn) {
  executor_.post([alive = std::weak_ptr<int>(alive_), fn = std::move(fn)] {
    if (alive.expired()) return;  // destroyed (a restart): the new object reloads the store
    fn();
  });
}

size_t Delivery::payloadBytesMax() const {
  return std::min(link_.frameBytesMax(), vault::message_payload_bytes_max) -
         message_frame_overhead_bytes;
}

size_t Delivery::inFlight(std::string_view peer) const {
  auto it = out_.find(peer);
  return it == out_.end() ? 0 : it->second.window.size();
}

Delivery::OutPeer& Delivery::outPeer(std::string_view peer) {
  auto it = out_.find(peer);
  if (it == out_.end()) {
    it = out_.emplace(std::string(peer), OutPeer{}).first;
    it->second.retransmit_delay_micros = config_.retransmit_delay_micros_min;
  }
  return it->second;
}

Delivery::InPeer& Delivery::inPeer(std::string_view peer) {
  auto it = in_.find(peer);
  if (it == in_.end()) it = in_.emplace(std::string(peer), InPeer{}).first;
  return it->second;
}

void Delivery::setHandler(MessageHandler* handler) {
  CCAL_ASSERT_MSG(!started_, "setHandler() after start()");
  handler_ = handler;
}

Status Delivery::start() {
  CCAL_ASSERT_MSG(handler_ != nullptr, "start() before setHandler()");
  CCAL_ASSERT_MSG(!started_, "start() twice");
  started_ = true;
  // The inbox: stored messages not yet consumed, each with the frame it came in.
  std::vector<std::string> inbox_peers;
  for (uint64_t from = 0;;) {
    auto page = store_.unconsumed(vault::message_listing_max, from);
    if (!page) return page.error();
    for (vault::InboxMessage& m : *page) {
      from = m.seq + 1;
      auto frame = decodeFrame(m.payload, m.payload.size() + 1, vault::message_payload_bytes_max,
                               0);
      const DecodedMessage* decoded =
          frame ? std::get_if<DecodedMessage>(&frame.value()) : nullptr;
      if (decoded == nullptr || decoded->id != m.id) {
        // Not written by Delivery (or damaged): leave it for an operator.
        log("inbox message " + m.id.hex() + " from '" + m.peer + "' is not a stored frame (" +
            (frame ? std::string("another id or kind") : frame.error().toString()) +
            "); left in the inbox");
        continue;
      }
      InPeer& in = inPeer(m.peer);
      if (in.held.empty()) inbox_peers.push_back(m.peer);
      in.held[decoded->seq] = Held{decoded->id, decoded->prev_seq, decoded->prev_id,
                                   decoded->payload, HeldState::stored};
    }
    if (page->size() < vault::message_listing_max) break;
  }
  for (const std::string& peer : inbox_peers) deliverReady(peer);
  // The outbox: every peer with pending messages.
  std::string after;
  for (;;) {
    auto peers = store_.outboxPeers(vault::message_listing_max, after);
    if (!peers) return peers.error();
    for (const std::string& peer : *peers) scheduleRefill(peer);
    if (peers->size() < vault::message_listing_max) break;
    after = peers->back();
  }
  return {};
}

// --- sending ----------------------------------------------------------------------

void Delivery::send(std::string_view peer, const MessageId& id, Bytes payload,
                    std::function<void(const Status&)> done) {
  CCAL_ASSERT(done != nullptr);
  if (config_.knows_peer && !config_.knows_peer(peer)) {
    return done(makeError(Errc::not_found, "message " + id.hex() + ": peer '" +
                                               std::string(peer) + "' is not in the network map"));
  }
  if (payload.size() > payloadBytesMax()) {
    return done(makeError(Errc::too_large, "message " + id.hex() + " to '" + std::string(peer) +
                                               "': payload of " + std::to_string(payload.size()) +
                                               " bytes is over the limit of " +
                                               std::to_string(payloadBytesMax())));
  }
  store_.enqueueAsync(peer, id, payload,
                      completion([this, peer = std::string(peer),
                                  done = std::move(done)](const Result<bool>& queued) {
                        if (!queued) return done(queued.error());
                        if (*queued) scheduleRefill(peer);
                        done(Status());
                      }));
}

void Delivery::scheduleRefill(const std::string& peer) {
  OutPeer& out = outPeer(peer);
  out.outbox_may_have_more = true;
  if (out.refill_posted) return;
  out.refill_posted = true;
  postBack([this, peer] {
    outPeer(peer).refill_posted = false;
    refill(peer);
  });
}

void Delivery::refill(const std::string& peer) {
  OutPeer& out = outPeer(peer);
  if (!out.outbox_may_have_more || out.window.size() >= config_.window_messages_max) return;
  const auto room = static_cast<uint32_t>(std::min<size_t>(
      config_.window_messages_max - out.window.size(), vault::message_listing_max));
  auto pending = store_.pending(peer, room, out.next_outbox_seq);
  if (!pending) {
    ++stats_.store_failures;
    log("reading the outbox of '" + peer + "' failed: " + pending.error().toString());
    armRetransmit(peer, /*even_if_idle=*/true);  // the timer tries again
    return;
  }
  if (pending->size() < room) out.outbox_may_have_more = false;
  const size_t first_new = out.window.size();
  for (vault::OutboxMessage& m : *pending) {
    out.window.push_back(Outgoing{m.seq + 1, m.id, std::move(m.payload), false});
    out.next_outbox_seq = m.seq + 1;
  }
  for (size_t i = first_new; i < out.window.size(); ++i) transmit(peer, i, false);
  armRetransmit(peer);
}

void Delivery::transmit(const std::string& peer, size_t index, bool retransmission) {
  OutPeer& out = outPeer(peer);
  CCAL_ASSERT(index < out.window.size());
  Outgoing& m = out.window[index];
  // The message before it that is not known to be stored at the peer; the
  // window is a prefix of the outbox, so there is none before the first.
  const Outgoing* prev = index == 0 ? nullptr : &out.window[index - 1];
  Bytes frame = encodeMessageFrame(m.seq, prev ? prev->seq : 0, prev ? prev->id : MessageId(),
                                   m.id, m.payload);
  if (retransmission) {
    ++stats_.messages_retransmitted;
  } else if (!m.sent) {
    ++stats_.messages_sent;
  }
  m.sent = true;
  Status sent = link_.send(peer, std::move(frame));
  if (!sent) log("sending message " + m.id.hex() + " to '" + peer + "': " + sent.error().toString());
}

void Delivery::armRetransmit(const std::string& peer, bool even_if_idle) {
  OutPeer& out = outPeer(peer);
  if ((out.window.empty() && !even_if_idle) || out.retransmit_timer != 0) return;
  out.retransmit_timer = executor_.runAfter(out.retransmit_delay_micros, [this, peer] {
    outPeer(peer).retransmit_timer = 0;
    onRetransmitTimer(peer);
  });
}

void Delivery::onRetransmitTimer(const std::string& peer) {
  OutPeer& out = outPeer(peer);
  // A refill that failed to read the outbox is retried here too.
  if (out.window.size() < config_.window_messages_max && out.outbox_may_have_more) refill(peer);
  const size_t n = std::min<size_t>(out.window.size(), config_.retransmit_batch_messages_max);
  for (size_t i = 0; i < n; ++i) transmit(peer, i, true);
  out.retransmit_delay_micros =
      std::min(out.retransmit_delay_micros * 2, config_.retransmit_delay_micros_max);
  armRetransmit(peer);
}

void Delivery::onAck(const std::string& peer, std::vector<MessageId> ids) {
  OutPeer& out = outPeer(peer);
  bool progress = false;
  for (const MessageId& id : ids) {
    auto it = std::find_if(out.window.begin(), out.window.end(),
                           [&](const Outgoing& m) { return m.id == id; });
    if (it == out.window.end()) continue;  // acknowledged before (acks may come twice)
    out.window.erase(it);
    progress = true;
    ++stats_.messages_acknowledged;
    store_.acknowledgeAsync(peer, id, completion([this, peer, id](const Result<bool>& removed) {
      if (removed) return;
      // Still in the outbox: sent again after a restart, and the peer's
      // dedup drops the copy.
      ++stats_.store_failures;
      log("removing acknowledged message " + id.hex() + " to '" + peer +
          "' from the outbox failed: " + removed.error().toString());
    }));
  }
  if (!progress) return;
  out.retransmit_delay_micros = config_.retransmit_delay_micros_min;
  if (out.retransmit_timer != 0) {
    executor_.cancel(out.retransmit_timer);
    out.retransmit_timer = 0;
  }
  refill(peer);
  armRetransmit(peer);
}

void Delivery::onPeerUp(std::string_view peer_view) {
  const std::string peer(peer_view);
  auto it = out_.find(peer);
  if (it != out_.end()) {
    OutPeer& out = it->second;
    // Frames sent while it was unreachable are lost: send the oldest again now.
    out.retransmit_delay_micros = config_.retransmit_delay_micros_min;
    if (out.retransmit_timer != 0) {
      executor_.cancel(out.retransmit_timer);
      out.retransmit_timer = 0;
    }
    const size_t n = std::min<size_t>(out.window.size(), config_.retransmit_batch_messages_max);
    for (size_t i = 0; i < n; ++i) transmit(peer, i, true);
    armRetransmit(peer);
    if (!out.acks_to_send.empty()) flushAcks(peer);
  }
}

void Delivery::onPeerDown(std::string_view) {
  // Nothing to do: unacknowledged messages stay in the window and the
  // retransmission timer (backing off) resends them once frames flow again.
}

// --- receiving --------------------------------------------------------------------

void Delivery::onFrame(std::string_view peer_view, ByteView bytes) {
  const std::string peer(peer_view);
  auto frame = decodeFrame(bytes, link_.frameBytesMax(), payloadBytesMax(),
                           ackIdsMax(config_, link_.frameBytesMax()));
  if (!frame) {
    ++stats_.frames_malformed;
    log("dropped a frame of " + std::to_string(bytes.size()) + " bytes from '" + peer +
        "': " + frame.error().toString());
    return;
  }
  if (auto* ack = std::get_if<DecodedAck>(&frame.value())) {
    onAck(peer, std::move(ack->ids));
    return;
  }
  auto& m = std::get<DecodedMessage>(frame.value());
  onMessageFrame(peer, m.seq, m.prev_seq, m.prev_id, m.id, std::move(m.payload));
}

void Delivery::onMessageFrame(const std::string& peer, uint64_t seq, uint64_t prev_seq,
                              const MessageId& prev_id, const MessageId& id, Bytes payload) {
  if (!started_) return;  // the inbox is not loaded yet; the sender sends it again
  InPeer& in = inPeer(peer);
  if (auto it = in.held.find(seq); it != in.held.end()) {
    if (it->second.id != id) {
      ++stats_.frames_malformed;
      log("dropped message " + id.hex() + " from '" + peer + "': seq " + std::to_string(seq) +
          " already names message " + it->second.id.hex());
      return;
    }
    ++stats_.messages_duplicate;
    // Stored: acknowledge again (the first ack may be lost); storing: the ack
    // follows the commit.
    if (it->second.state == HeldState::stored) queueAck(peer, id);
    return;
  }
  auto seen = store_.dedup(peer, id);
  if (!seen) {
    ++stats_.store_failures;
    log("reading the dedup record of message " + id.hex() + " from '" + peer +
        "' failed: " + seen.error().toString());
    return;  // not acknowledged: it comes again
  }
  if (seen->has_value()) {
    ++stats_.messages_duplicate;
    queueAck(peer, id);
    return;
  }
  // Bounded waiting: beyond the bound, only a message that fills the gap (its
  // chain of earlier messages reaches one handed over) is taken, up to twice
  // the bound; the sender sends the others again once earlier ones are
  // through. Without the exception a retransmitted run of the missing
  // messages would get in one message per retransmission round.
  if (in.held.size() >= config_.inbox_waiting_messages_max &&
      (in.held.size() >= 2 * size_t{config_.inbox_waiting_messages_max} ||
       !anchored(peer, in, prev_seq, prev_id))) {
    ++stats_.messages_over_waiting_max;
    return;
  }
  Bytes stored_frame = encodeMessageFrame(seq, prev_seq, prev_id, id, payload);
  in.held[seq] = Held{id, prev_seq, prev_id, std::move(payload), HeldState::storing};
  store_.receiveAsync(peer, id, stored_frame,
                      completion([this, peer, seq](const Result<bool>& stored) {
                        onStored(peer, seq, stored);
                      }));
}

void Delivery::onStored(const std::string& peer, uint64_t seq, const Result<bool>& stored) {
  InPeer& in = inPeer(peer);
  auto it = in.held.find(seq);
  CCAL_ASSERT_MSG(it != in.held.end() && it->second.state == HeldState::storing,
                  "a stored message that was not being stored");
  const MessageId id = it->second.id;
  if (!stored) {
    ++stats_.store_failures;
    log("storing message " + id.hex() + " from '" + peer + "' failed: " +
        stored.error().toString() + " (not acknowledged; the sender sends it again)");
    in.held.erase(it);
  } else if (!*stored) {
    // Another copy (same id under another seq) was stored first.
    ++stats_.messages_duplicate;
    in.held.erase(it);
    queueAck(peer, id);
  } else {
    ++stats_.messages_stored;
    it->second.state = HeldState::stored;
    queueAck(peer, id);
  }
  deliverReady(peer);
}

void Delivery::queueAck(const std::string& peer, const MessageId& id) {
  OutPeer& out = outPeer(peer);
  out.acks_to_send.push_back(id);
  if (out.acks_to_send.size() >= ackIdsMax(config_, link_.frameBytesMax())) {
    flushAcks(peer);
    return;
  }
  // Completions of one group commit arrive together: one frame acknowledges them all.
  if (out.ack_flush_posted) return;
  out.ack_flush_posted = true;
  postBack([this, peer] {
    outPeer(peer).ack_flush_posted = false;
    flushAcks(peer);
  });
}

void Delivery::flushAcks(const std::string& peer) {
  OutPeer& out = outPeer(peer);
  const size_t max = ackIdsMax(config_, link_.frameBytesMax());
  for (size_t at = 0; at < out.acks_to_send.size(); at += max) {
    const size_t end = std::min(out.acks_to_send.size(), at + max);
    std::vector<MessageId> ids(out.acks_to_send.begin() + static_cast<ptrdiff_t>(at),
                               out.acks_to_send.begin() + static_cast<ptrdiff_t>(end));
    ++stats_.ack_frames_sent;
    Status sent = link_.send(peer, encodeAckFrame(ids));
    if (!sent) log("sending an ack to '" + peer + "': " + sent.error().toString());
  }
  out.acks_to_send.clear();
}

bool Delivery::anchored(const std::string& peer, InPeer& in, uint64_t prev_seq,
                        MessageId prev_id) const {
  for (size_t steps = 0; steps <= in.held.size(); ++steps) {
    auto it = in.held.find(prev_seq);
    if (it == in.held.end()) return prevDelivered(peer, in, prev_seq, prev_id);
    prev_seq = it->second.prev_seq;
    prev_id = it->second.prev_id;
  }
  return false;  // a cycle of prev links: a malformed sender
}

bool Delivery::prevDelivered(const std::string& peer, InPeer& in, uint64_t prev_seq,
                             const MessageId& prev_id) const {
  if (prev_seq == 0) return true;
  if (prev_seq == in.last_delivered_seq) return true;
  if (in.held.count(prev_seq) != 0) return false;
  // Not held here: handed over already (consumed, or delivered and not yet
  // consumed) exactly when it has a dedup record.
  auto seen = store_.dedup(peer, prev_id);
  if (!seen) {
    log("reading the dedup record of message " + prev_id.hex() + " from '" + peer +
        "' failed: " + seen.error().toString());
    return false;
  }
  return seen->has_value();
}

void Delivery::deliverReady(const std::string& peer) {
  InPeer& in = inPeer(peer);
  while (!in.held.empty()) {
    auto it = in.held.begin();
    Held& first = it->second;
    if (first.state != HeldState::stored) return;
    if (!prevDelivered(peer, in, first.prev_seq, first.prev_id)) return;
    const uint64_t seq = it->first;
    const MessageId id = first.id;
    Bytes payload = std::move(first.payload);
    in.held.erase(it);
    in.last_delivered_seq = seq;
    ++stats_.messages_delivered;
    handler_->onMessage(peer, id, payload);
  }
}

void Delivery::consume(std::string_view peer, const MessageId& id,
                       std::function<void(const Status&)> done) {
  CCAL_ASSERT(done != nullptr);
  store_.consumeAsync(peer, id,
                      completion([done = std::move(done)](const Result<bool>& consumed) {
                        done(consumed ? Status() : Status(consumed.error()));
                      }));
}

vault::MessageStore::ChangedFn Delivery::completion(
    std::function<void(const Result<bool>&)> on_executor) {
  {
    std::lock_guard lock(requests_->mutex);
    ++requests_->in_flight;
  }
  // Runs on the store's writer thread (or at once when the store refuses the
  // request before queueing it): `this` may be gone by the time the posted
  // function runs, so it checks first.
  return [ex = &executor_, alive = std::weak_ptr<int>(alive_), requests = requests_,
          on_executor = std::move(on_executor)](const Result<bool>& result) mutable {
    ex->post([alive, result, on_executor = std::move(on_executor)] {
      if (alive.expired()) return;  // destroyed (a restart): the new object reloads the store
      on_executor(result);
    });
    {
      std::lock_guard lock(requests->mutex);
      --requests->in_flight;
    }
    requests->drained.notify_all();
  };
}

void Delivery::waitForStore() const {
  std::unique_lock lock(requests_->mutex);
  requests_->drained.wait(lock, [&] { return requests_->in_flight == 0; });
}

}  // namespace ccal::flows
