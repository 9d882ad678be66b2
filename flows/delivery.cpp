#include "flows/delivery.h"

#include <algorithm>
#include <cstdio>
#include <optional>
#include <set>
#include <utility>
#include <variant>

#include "ledger/capnp_io.h"
#include "schemas/messaging.capnp.h"

namespace ccal::flows {
namespace {

// Bytes an acknowledged seq takes in an ack frame, and the frame's fixed part.
constexpr size_t ack_seq_bytes = 8;
constexpr size_t ack_frame_fixed_bytes = 64;

size_t ackSeqsMax(const DeliveryConfig& config, size_t frame_bytes_max) {
  return std::min<size_t>(config.ack_batch_seqs_max,
                          (frame_bytes_max - ack_frame_fixed_bytes) / ack_seq_bytes);
}

using DecodedMessage = DeliveryMessageFrame;
using DecodedAck = DeliveryAckFrame;
using DecodedFrame = DeliveryFrame;

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
  out.incarnation = m.getIncarnation();
  out.seq = m.getSeq();
  out.floor = m.getFloor();
  if (out.incarnation == 0) return makeError(Errc::malformed, "message incarnation is 0");
  if (out.seq == 0) return makeError(Errc::malformed, "message seq is 0");
  if (out.floor == 0 || out.floor > out.seq) {
    return makeError(Errc::malformed, "message floor " + std::to_string(out.floor) +
                                          " is not within 1..seq (" + std::to_string(out.seq) +
                                          ")");
  }
  auto id = idFrom(m.getId(), "message id");
  if (!id) return id.error();
  out.id = *id;
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

std::string streamLabel(const std::string& peer, uint64_t incarnation) {
  return "'" + peer + "' (stream " + std::to_string(incarnation) + ")";
}

}  // namespace

Result<DeliveryFrame> decodeDeliveryFrame(ByteView bytes, size_t frame_bytes_max,
                                          size_t payload_bytes_max, size_t ack_seqs_max) {
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
            auto a = f.getAck();
            DecodedAck ack;
            ack.incarnation = a.getIncarnation();
            ack.up_to = a.getUpTo();
            if (ack.incarnation == 0) return makeError(Errc::malformed, "ack incarnation is 0");
            auto seqs = a.getSeqs();
            if (seqs.size() > ack_seqs_max) {
              return makeError(Errc::too_large, "ack of " + std::to_string(seqs.size()) +
                                                    " seqs is over the limit of " +
                                                    std::to_string(ack_seqs_max));
            }
            ack.seqs.reserve(seqs.size());
            for (uint64_t seq : seqs) {
              if (seq <= ack.up_to) {
                return makeError(Errc::malformed, "acknowledged seq " + std::to_string(seq) +
                                                      " is not above upTo " +
                                                      std::to_string(ack.up_to));
              }
              ack.seqs.push_back(seq);
            }
            return DecodedFrame(std::move(ack));
          }
        }
        return makeError(Errc::malformed, "unknown frame kind " +
                                              std::to_string(static_cast<int>(f.which())));
      },
      limits);
}

Bytes encodeMessageFrame(uint64_t incarnation, uint64_t seq, uint64_t floor, const MessageId& id,
                         ByteView payload) {
  return buildCanonical<schema::messaging::Frame>([&](auto f) {
    auto m = f.initMessage();
    m.setIncarnation(incarnation);
    m.setSeq(seq);
    m.setFloor(floor);
    m.setId(asData(id.view()));
    m.setPayload(asData(payload));
  });
}

Bytes encodeAckFrame(uint64_t incarnation, uint64_t up_to, const std::vector<uint64_t>& seqs) {
  return buildCanonical<schema::messaging::Frame>([&](auto f) {
    auto a = f.initAck();
    a.setIncarnation(incarnation);
    a.setUpTo(up_to);
    auto list = a.initSeqs(static_cast<unsigned>(seqs.size()));
    for (unsigned i = 0; i < seqs.size(); ++i) list.set(i, seqs[i]);
  });
}

Delivery::Delivery(Link& link, vault::MessageStore& store, Executor& executor, const Clock& clock,
                   DeliveryConfig config)
    : link_(link), store_(store), executor_(executor), clock_(clock), config_(std::move(config)) {
  CCAL_ASSERT(config_.window_messages_max >= 1 &&
              config_.window_messages_max <= vault::receive_ahead_seqs_max);
  CCAL_ASSERT(config_.retransmit_batch_messages_max >= 1);
  CCAL_ASSERT(config_.ack_batch_seqs_max >= 1);
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
  // The inbox, per peer stream: what is at or below the watermark was handed
  // over before (and not consumed): again now, in order; what is above it
  // waits for the seqs before it. Messages of an older incarnation are what
  // was stored of a stream its sender has since restarted: handed over first.
  std::vector<vault::ReceiveState> states;
  for (std::string after;;) {
    auto page = store_.receiveStates(vault::message_listing_max, after);
    if (!page) return page.error();
    for (auto& s : *page) states.push_back(std::move(s));
    if (page->size() < vault::message_listing_max) break;
    after = page->back().peer;
  }
  for (const vault::ReceiveState& state : states) {
    InPeer& in = inPeer(state.peer);
    in.incarnation = state.incarnation;
    in.watermark = state.watermark;
    in.delivered = state.watermark;
    for (uint64_t from_inc = 0, from_seq = 0;;) {
      auto page = store_.unconsumed(state.peer, vault::message_listing_max, from_inc, from_seq);
      if (!page) return page.error();
      for (vault::InboxMessage& m : *page) {
        from_inc = m.incarnation;
        from_seq = m.seq + 1;
        if (m.incarnation < state.incarnation) {
          log("handing over message " + m.id.hex() + " (seq " + std::to_string(m.seq) +
              ") of an earlier stream of " + streamLabel(state.peer, m.incarnation) +
              ", stored before that peer restarted its numbering");
          handOver(state.peer, in, m.incarnation, m.seq, m.id, m.payload);
        } else if (m.incarnation == state.incarnation && m.seq <= state.watermark) {
          handOver(state.peer, in, m.incarnation, m.seq, m.id, m.payload);
        } else if (m.incarnation == state.incarnation) {
          in.held[m.seq] = Held{m.id, std::move(m.payload), true};
        } else {
          log("inbox message " + m.id.hex() + " of " + streamLabel(state.peer, m.incarnation) +
              " is newer than the peer's stream " + std::to_string(state.incarnation) +
              "; left in the inbox");
        }
      }
      if (page->size() < vault::message_listing_max) break;
    }
    deliverReady(state.peer);
  }
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

template <class T>
std::function<void(const Result<T>&)> Delivery::completion(
    std::function<void(const Result<T>&)> on_executor) {
  ++stats_.store_requests;
  {
    std::lock_guard lock(requests_->mutex);
    ++requests_->in_flight;
  }
  // Runs on the store's writer thread (or at once when the store refuses the
  // request before queueing it): `this` may be gone by the time the posted
  // function runs, so it checks first.
  return [ex = &executor_, alive = std::weak_ptr<int>(alive_), requests = requests_,
          on_executor = std::move(on_executor)](const Result<T>& result) mutable {
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
  // Sends made before the executor next runs go to the store in one request.
  OutPeer& out = outPeer(peer);
  std::optional<Bytes> kept;
  if (out.window.size() + out.kept_payloads < config_.window_messages_max) {
    kept = payload;
    ++out.kept_payloads;
  }
  sends_.push_back(PendingSend{vault::OutgoingMessage{std::string(peer), id, std::move(payload)},
                               std::move(done), std::move(kept)});
  if (sends_.size() >= vault::message_batch_max) return flushSends();
  if (sends_posted_) return;
  sends_posted_ = true;
  postBack([this] {
    sends_posted_ = false;
    flushSends();
  });
}

void Delivery::flushSends() {
  if (sends_.empty()) return;
  auto batch = std::make_shared<std::vector<PendingSend>>(std::move(sends_));
  sends_.clear();
  std::vector<vault::OutgoingMessage> messages;
  messages.reserve(batch->size());
  for (PendingSend& s : *batch) {
    messages.push_back(vault::OutgoingMessage{s.message.peer, s.message.id, std::move(s.message.payload)});
  }
  ++stats_.store_enqueues;
  store_.enqueueBatchAsync(
      std::move(messages),
      completion<std::vector<Result<vault::Enqueued>>>(
          [this, batch](const Result<std::vector<Result<vault::Enqueued>>>& r) {
            for (size_t i = 0; i < batch->size(); ++i) {
              PendingSend& s = (*batch)[i];
              if (s.kept_payload) {
                OutPeer& out = outPeer(s.message.peer);
                CCAL_ASSERT(out.kept_payloads > 0);
                --out.kept_payloads;
              }
              if (!r) {
                s.done(r.error());
                continue;
              }
              const Result<vault::Enqueued>& queued = (*r)[i];
              if (!queued) {
                s.done(queued.error());
                continue;
              }
              if (queued->queued) {
                onEnqueued(s.message.peer, *queued, s.message.id, std::move(s.kept_payload));
              }
              s.done(Status());
            }
          }));
}

void Delivery::onEnqueued(const std::string& peer, const vault::Enqueued& e, const MessageId& id,
                          std::optional<Bytes> kept_payload) {
  OutPeer& out = outPeer(peer);
  if (!kept_payload || out.outbox_may_have_more || out.incarnation == 0 ||
      out.incarnation != e.incarnation || out.next_outbox_seq != e.seq ||
      out.window.size() >= config_.window_messages_max) {
    return scheduleRefill(peer);
  }
  out.window.push_back(Outgoing{e.seq, id, std::move(*kept_payload), false});
  out.next_outbox_seq = e.seq + 1;
  transmit(peer, out.window.size() - 1, false);
  armRetransmit(peer);
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
  if (out.incarnation == 0) {
    auto stream = store_.outboxStream(peer);
    if (!stream || stream->incarnation == 0) {
      ++stats_.store_failures;
      log("reading the outbox stream of '" + peer + "' failed: " +
          (stream ? std::string("no stream record") : stream.error().toString()));
      armRetransmit(peer, /*even_if_idle=*/true);  // the timer tries again
      return;
    }
    out.incarnation = stream->incarnation;
  }
  const auto room = static_cast<uint32_t>(std::min<size_t>(
      config_.window_messages_max - out.window.size(), vault::message_listing_max));
  ++stats_.outbox_reads;
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
    out.window.push_back(Outgoing{m.seq, m.id, std::move(m.payload), false});
    out.next_outbox_seq = m.seq + 1;
  }
  for (size_t i = first_new; i < out.window.size(); ++i) transmit(peer, i, false);
  armRetransmit(peer);
}

void Delivery::transmit(const std::string& peer, size_t index, bool retransmission) {
  OutPeer& out = outPeer(peer);
  CCAL_ASSERT(index < out.window.size());
  Outgoing& m = out.window[index];
  // The window is a prefix of the outbox: its first seq is the lowest
  // unacknowledged one.
  Bytes frame = encodeMessageFrame(out.incarnation, m.seq, out.window.front().seq, m.id, m.payload);
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

void Delivery::onAck(const std::string& peer, uint64_t incarnation, uint64_t up_to,
                     const std::vector<uint64_t>& seqs) {
  OutPeer& out = outPeer(peer);
  if (incarnation != out.incarnation) {
    // Of a stream this store no longer has (wiped), or before the first refill.
    log("ignored an acknowledgement from '" + peer + "' for stream " +
        std::to_string(incarnation) + " (ours is " + std::to_string(out.incarnation) + ")");
    return;
  }
  std::vector<uint64_t> removed;
  while (!out.window.empty() && out.window.front().seq <= up_to) {
    removed.push_back(out.window.front().seq);
    out.window.pop_front();
  }
  if (!seqs.empty() && !out.window.empty()) {
    const std::set<uint64_t> single(seqs.begin(), seqs.end());
    for (auto it = out.window.begin(); it != out.window.end();) {
      if (single.count(it->seq) != 0) {
        removed.push_back(it->seq);
        it = out.window.erase(it);
      } else {
        ++it;
      }
    }
  }
  if (removed.empty()) return;  // acknowledged before (acks may come twice)
  stats_.messages_acknowledged += removed.size();
  for (size_t at = 0; at < removed.size(); at += vault::message_batch_max) {
    const size_t end = std::min(removed.size(), at + vault::message_batch_max);
    std::vector<uint64_t> chunk(removed.begin() + static_cast<ptrdiff_t>(at),
                                removed.begin() + static_cast<ptrdiff_t>(end));
    ++stats_.store_acks;
    store_.acknowledgeAsync(
        peer, std::move(chunk), completion<uint64_t>([this, peer](const Result<uint64_t>& r) {
          if (r) return;
          // Still in the outbox: sent again after a restart, and the peer
          // recognises the copies by their seqs.
          ++stats_.store_failures;
          log("removing acknowledged messages to '" + peer +
              "' from the outbox failed: " + r.error().toString());
        }));
  }
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
  }
  auto in = in_.find(peer);
  if (in != in_.end() && in->second.incarnation != 0) {
    in->second.ack_due = true;
    flushAcks(peer);
  }
}

void Delivery::onPeerDown(std::string_view) {
  // Nothing to do: unacknowledged messages stay in the window and the
  // retransmission timer (backing off) resends them once frames flow again.
}

// --- receiving --------------------------------------------------------------------

void Delivery::onFrame(std::string_view peer_view, ByteView bytes) {
  const std::string peer(peer_view);
  auto frame = decodeDeliveryFrame(bytes, link_.frameBytesMax(), payloadBytesMax(),
                                   ackSeqsMax(config_, link_.frameBytesMax()));
  if (!frame) {
    ++stats_.frames_malformed;
    log("dropped a frame of " + std::to_string(bytes.size()) + " bytes from '" + peer +
        "': " + frame.error().toString());
    return;
  }
  if (auto* ack = std::get_if<DecodedAck>(&frame.value())) {
    onAck(peer, ack->incarnation, ack->up_to, ack->seqs);
    return;
  }
  auto& m = std::get<DecodedMessage>(frame.value());
  onMessageFrame(peer, m.incarnation, m.floor, m.seq, m.id, std::move(m.payload));
}

void Delivery::onMessageFrame(const std::string& peer, uint64_t incarnation, uint64_t floor,
                              uint64_t seq, const MessageId& id, Bytes payload) {
  if (!started_) return;  // the inbox is not loaded yet; the sender sends it again
  InPeer& in = inPeer(peer);
  if (in.incarnation == 0) {
    // The peer's first message: its stream starts at its floor (what is
    // below was acknowledged to it, by an earlier store of ours if any).
    in.incarnation = incarnation;
    in.watermark = in.delivered = floor - 1;
  } else if (incarnation < in.incarnation) {
    ++stats_.messages_stale_stream;
    log("dropped message " + id.hex() + " (seq " + std::to_string(seq) + ") of " +
        streamLabel(peer, incarnation) + ": that peer has since started stream " +
        std::to_string(in.incarnation));
    return;
  } else if (incarnation > in.incarnation) {
    if (!restartStream(peer, in, incarnation, floor)) return;
  }
  if (auto it = in.held.find(seq); it != in.held.end()) {
    if (it->second.id != id) {
      ++stats_.messages_conflicting;
      log("dropped message " + id.hex() + " from " + streamLabel(peer, incarnation) + ": seq " +
          std::to_string(seq) + " already names message " + it->second.id.hex());
      return;
    }
    ++stats_.messages_duplicate;
    // Stored: acknowledge again (the first ack may be lost); storing: the ack
    // follows the commit.
    if (it->second.stored) queueAck(peer, seq);
    return;
  }
  if (seq > in.watermark) {
    // Bounded waiting: beyond the bound, only a message that fills a gap
    // (below the highest one waiting) is taken, up to twice the bound; the
    // sender sends the others again once earlier ones are through.
    const bool fills_gap = !in.held.empty() && seq < in.held.rbegin()->first;
    if (seq > in.watermark + vault::receive_ahead_seqs_max ||
        (in.held.size() >= config_.inbox_waiting_messages_max &&
         (in.held.size() >= 2 * size_t{config_.inbox_waiting_messages_max} || !fills_gap))) {
      ++stats_.messages_over_waiting_max;
      return;
    }
    in.held[seq] = Held{id, payload, false};
  }
  // Below the watermark: a copy of a message stored before. The store checks
  // its id against the id log, and the ack goes out after that.
  if (!in.arriving.empty() && in.arriving_incarnation != incarnation) flushArriving(peer);
  in.arriving_incarnation = incarnation;
  in.arriving_floor = std::max(in.arriving_floor, floor);
  in.arriving.push_back(vault::ArrivingMessage{seq, id, std::move(payload)});
  if (in.arriving.size() >= vault::message_batch_max) return flushArriving(peer);
  if (in.store_posted) return;
  in.store_posted = true;
  postBack([this, peer] {
    inPeer(peer).store_posted = false;
    flushArriving(peer);
  });
}

bool Delivery::restartStream(const std::string& peer, InPeer& in, uint64_t incarnation,
                             uint64_t floor) {
  if (in.storing != 0 || !in.arriving.empty()) return false;  // comes again
  ++stats_.stream_restarts;
  size_t stranded = 0;
  for (const auto& [seq, held] : in.held) stranded += held.stored ? 1 : 0;
  log("error: '" + peer + "' restarted its message numbering (stream " +
      std::to_string(in.incarnation) + " -> " + std::to_string(incarnation) +
      "): its message store was wiped or replaced. Of the old stream, seqs up to " +
      std::to_string(in.watermark) + " were received; " + std::to_string(stranded) +
      " received after a gap are handed over now, out of order; whatever it had not sent is "
      "lost with its store");
  const uint64_t old = in.incarnation;
  auto held = std::move(in.held);
  in.held.clear();
  for (auto& [seq, h] : held) {
    if (h.stored) handOver(peer, in, old, seq, h.id, h.payload);
  }
  in.incarnation = incarnation;
  in.watermark = in.delivered = floor - 1;
  in.skip_to = 0;
  in.ack_seqs.clear();
  return true;
}

void Delivery::flushArriving(const std::string& peer) {
  InPeer& in = inPeer(peer);
  if (in.arriving.empty()) return;
  std::vector<vault::ArrivingMessage> batch = std::move(in.arriving);
  in.arriving.clear();
  std::vector<uint64_t> seqs;
  std::vector<MessageId> ids;
  seqs.reserve(batch.size());
  ids.reserve(batch.size());
  for (const auto& m : batch) {
    seqs.push_back(m.seq);
    ids.push_back(m.id);
  }
  const uint64_t incarnation = in.arriving_incarnation;
  const uint64_t floor = in.arriving_floor;
  in.arriving_floor = 0;
  in.storing += batch.size();
  ++stats_.store_receives;
  store_.receiveAsync(
      peer, incarnation, floor, std::move(batch),
      completion<vault::ReceiveResult>(
          [this, peer, incarnation, floor, seqs = std::move(seqs),
           ids = std::move(ids)](const Result<vault::ReceiveResult>& result) {
            onStored(peer, incarnation, floor, seqs, ids, result);
          }));
}

void Delivery::onStored(const std::string& peer, uint64_t incarnation, uint64_t floor,
                        const std::vector<uint64_t>& seqs, const std::vector<MessageId>& ids,
                        const Result<vault::ReceiveResult>& result) {
  InPeer& in = inPeer(peer);
  CCAL_ASSERT(in.storing >= seqs.size());
  in.storing -= seqs.size();
  const bool current = incarnation == in.incarnation;
  // Forgets a held message that is being stored (not one stored since).
  const auto drop = [&](uint64_t seq, const MessageId& id) {
    if (!current) return;
    auto it = in.held.find(seq);
    if (it != in.held.end() && !it->second.stored && it->second.id == id) in.held.erase(it);
  };
  if (!result) {
    ++stats_.store_failures;
    log("storing " + std::to_string(seqs.size()) + " messages from " +
        streamLabel(peer, incarnation) + " failed: " + result.error().toString() +
        " (not acknowledged; the sender sends them again)");
    for (size_t i = 0; i < seqs.size(); ++i) drop(seqs[i], ids[i]);
    deliverReady(peer);
    return;
  }
  const vault::ReceiveResult& r = *result;
  CCAL_ASSERT(r.arrivals.size() == seqs.size());
  if (r.stream_restarted) {
    log("the stored stream of '" + peer + "' moved from " +
        std::to_string(r.previous_incarnation) + " (received up to seq " +
        std::to_string(r.previous_watermark) + ") to " + std::to_string(r.state.incarnation));
  }
  if (r.skipped_to != 0) {
    log("error: " + streamLabel(peer, incarnation) + " says seqs " +
        std::to_string(r.skipped_from) + ".." + std::to_string(r.skipped_to) +
        " were acknowledged by this node, but this store does not have them (restored from an "
        "older copy?): they are lost, and the stream goes on after them");
    if (current) in.skip_to = std::max(in.skip_to, r.skipped_to);
  }
  if (current && (r.stream_started || r.stream_restarted)) {
    // The store took the stream up at this request's floor (the highest of
    // its frames): what is below it will not come.
    in.skip_to = std::max(in.skip_to, floor - 1);
  }
  if (current && r.state.incarnation == in.incarnation) {
    in.watermark = std::max(in.watermark, r.state.watermark);
  }
  bool ack = false;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const uint64_t seq = seqs[i];
    const MessageId& id = ids[i];
    switch (r.arrivals[i].kind) {
      case vault::Arrival::stored: {
        ++stats_.messages_stored;
        if (current) {
          auto it = in.held.find(seq);
          CCAL_ASSERT_MSG(it != in.held.end() && !it->second.stored && it->second.id == id,
                          "a stored message that was not being stored");
          it->second.stored = true;
          if (seq > in.watermark) in.ack_seqs.push_back(seq);
        }
        ack = true;
        break;
      }
      case vault::Arrival::duplicate:
        ++stats_.messages_duplicate;
        drop(seq, id);
        ack = true;
        break;
      case vault::Arrival::conflict:
        ++stats_.messages_conflicting;
        drop(seq, id);
        log("dropped message " + id.hex() + " from " + streamLabel(peer, incarnation) +
            ": seq " + std::to_string(seq) + " was received before as message " +
            r.arrivals[i].other_id.hex());
        break;
      case vault::Arrival::stale_stream:
        ++stats_.messages_stale_stream;
        drop(seq, id);
        log("dropped message " + id.hex() + " (seq " + std::to_string(seq) + ") of " +
            streamLabel(peer, incarnation) + ": the store follows a newer stream " +
            std::to_string(r.state.incarnation));
        break;
      case vault::Arrival::too_far_ahead:
        ++stats_.messages_over_waiting_max;
        drop(seq, id);
        break;
    }
  }
  if (ack && current) {
    in.ack_due = true;
    if (!in.ack_flush_posted) {
      in.ack_flush_posted = true;
      // Completions of one group commit arrive together: one frame acknowledges them all.
      postBack([this, peer] {
        inPeer(peer).ack_flush_posted = false;
        flushAcks(peer);
      });
    }
  }
  deliverReady(peer);
}

void Delivery::queueAck(const std::string& peer, uint64_t seq) {
  InPeer& in = inPeer(peer);
  if (seq > in.watermark) in.ack_seqs.push_back(seq);
  in.ack_due = true;
  if (in.ack_flush_posted) return;
  in.ack_flush_posted = true;
  postBack([this, peer] {
    inPeer(peer).ack_flush_posted = false;
    flushAcks(peer);
  });
}

void Delivery::flushAcks(const std::string& peer) {
  InPeer& in = inPeer(peer);
  if (!in.ack_due || in.incarnation == 0) return;
  in.ack_due = false;
  std::vector<uint64_t> seqs;
  std::sort(in.ack_seqs.begin(), in.ack_seqs.end());
  for (uint64_t seq : in.ack_seqs) {
    if (seq > in.watermark && (seqs.empty() || seqs.back() != seq)) seqs.push_back(seq);
  }
  in.ack_seqs.clear();
  const size_t max = ackSeqsMax(config_, link_.frameBytesMax());
  size_t at = 0;
  do {
    const size_t end = std::min(seqs.size(), at + max);
    std::vector<uint64_t> part(seqs.begin() + static_cast<ptrdiff_t>(at),
                               seqs.begin() + static_cast<ptrdiff_t>(end));
    ++stats_.ack_frames_sent;
    Status sent = link_.send(peer, encodeAckFrame(in.incarnation, in.watermark, part));
    if (!sent) log("sending an ack to '" + peer + "': " + sent.error().toString());
    at = end;
  } while (at < seqs.size());
}

void Delivery::handOver(const std::string& peer, InPeer& in, uint64_t incarnation, uint64_t seq,
                        const MessageId& id, const Bytes& payload) {
  in.unconsumed[id] = InboxPlace{incarnation, seq};
  ++stats_.messages_delivered;
  handler_->onMessage(peer, id, payload);
}

void Delivery::deliverReady(const std::string& peer) {
  InPeer& in = inPeer(peer);
  while (!in.held.empty()) {
    auto it = in.held.begin();
    const uint64_t seq = it->first;
    if (!it->second.stored) break;
    if (seq != in.delivered + 1 && seq > in.skip_to) break;
    if (seq > in.watermark) break;  // not durable in order yet (cannot happen: stored => counted)
    Held held = std::move(it->second);
    in.held.erase(it);
    in.delivered = seq;
    handOver(peer, in, in.incarnation, seq, held.id, held.payload);
  }
  if (in.skip_to > in.delivered && (in.held.empty() || in.held.begin()->first > in.skip_to)) {
    in.delivered = in.skip_to;
    deliverReady(peer);
  }
}

void Delivery::consume(std::string_view peer, const MessageId& id,
                       std::function<void(const Status&)> done) {
  CCAL_ASSERT(done != nullptr);
  auto in = in_.find(peer);
  const InboxPlace* place = nullptr;
  if (in != in_.end()) {
    auto it = in->second.unconsumed.find(id);
    if (it != in->second.unconsumed.end()) place = &it->second;
  }
  if (place == nullptr) {
    return done(makeError(Errc::not_found, "message " + id.hex() + " from '" +
                                               std::string(peer) +
                                               "' was not handed over, or is consumed already"));
  }
  consumes_.push_back(PendingConsume{
      vault::InboxKey{std::string(peer), place->incarnation, place->seq, id}, std::move(done)});
  if (consumes_.size() >= vault::message_batch_max) return flushConsumes();
  if (consumes_posted_) return;
  consumes_posted_ = true;
  postBack([this] {
    consumes_posted_ = false;
    flushConsumes();
  });
}

void Delivery::flushConsumes() {
  if (consumes_.empty()) return;
  auto batch = std::make_shared<std::vector<PendingConsume>>(std::move(consumes_));
  consumes_.clear();
  std::vector<vault::InboxKey> keys;
  keys.reserve(batch->size());
  for (const PendingConsume& c : *batch) keys.push_back(c.key);
  ++stats_.store_consumes;
  store_.consumeBatchAsync(
      std::move(keys),
      completion<std::vector<Result<bool>>>(
          [this, batch](const Result<std::vector<Result<bool>>>& r) {
            for (size_t i = 0; i < batch->size(); ++i) {
              PendingConsume& c = (*batch)[i];
              Status status = !r ? Status(r.error())
                                 : ((*r)[i] ? Status() : Status((*r)[i].error()));
              if (status) {
                auto in = in_.find(c.key.peer);
                if (in != in_.end()) {
                  auto it = in->second.unconsumed.find(c.key.id);
                  if (it != in->second.unconsumed.end() &&
                      it->second.incarnation == c.key.incarnation &&
                      it->second.seq == c.key.seq) {
                    in->second.unconsumed.erase(it);
                  }
                }
              }
              c.done(status);
            }
          }));
}

}  // namespace ccal::flows
