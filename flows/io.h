#pragma once
// The small interfaces through which flows and the notary see the world: a
// clock, an executor (event loop with timers), a best-effort link to peers,
// and the exactly-once messaging built on it. node/ implements them over
// Asio and TLS sockets; test/sim implements them in one process under a
// seeded scheduler, so the same flow and notary code runs in both.
//
// Threading: each component runs on one Executor; every callback it receives
// (frames, peer up/down, timers, completions) runs on that executor, one at
// a time. Only Executor::post may be called from other threads.
//
// Peers are named by their X.500 name in canonical string form (the same
// string the network map, certificates and vault message store use).

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "ledger/bytes.h"
#include "ledger/result.h"
#include "ledger/secure_hash.h"

namespace ccal::flows {

// Wall-clock time, microseconds since the Unix epoch. Simulated clocks may
// be skewed per member and jump; nothing may assume it is monotonic.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual int64_t nowMicros() const = 0;
};

// A single-threaded event loop.
class Executor {
 public:
  using TimerId = uint64_t;  // never 0
  virtual ~Executor() = default;
  // Runs fn on the executor soon, after every fn posted before it from the
  // same thread (first in, first out). Thread-safe.
  virtual void post(std::function<void()> fn) = 0;
  // Runs fn on the executor after delay_micros (>= 0) unless cancelled.
  // Executor thread only.
  virtual TimerId runAfter(int64_t delay_micros, std::function<void()> fn) = 0;
  // Cancels a timer that has not fired; a no-op otherwise. Executor thread only.
  virtual void cancel(TimerId id) = 0;
};

// Receives what a Link delivers, on the link's executor.
class LinkHandler {
 public:
  virtual ~LinkHandler() = default;
  // One whole frame from an authenticated peer (the link has checked who it
  // is; the frame's content is not checked).
  virtual void onFrame(std::string_view peer, ByteView frame) = 0;
  // A connection to the peer is up (frames may flow) or went down.
  virtual void onPeerUp(std::string_view peer) = 0;
  virtual void onPeerDown(std::string_view peer) = 0;
};

// Best-effort frames between this member and named peers. A frame may be
// lost (peer down, connection broken, member restarted); frames sent on one
// connection arrive in order and at most once, but nothing is promised
// across connections: after a reconnect the layer above resends what it
// needs. A link connects on demand and reconnects with bounded backoff.
// (Delivery, the layer above, is correct under any loss, duplication and
// reordering of frames; the simulator's link does all three.)
class Link {
 public:
  virtual ~Link() = default;
  // Set once, before the link starts.
  virtual void setHandler(LinkHandler* handler) = 0;
  // Queues a frame for the peer. Refused at once (an error naming the
  // reason) when the peer is unknown or the frame exceeds frameBytesMax();
  // accepted frames may still be lost. Executor thread only.
  virtual Status send(std::string_view peer, Bytes frame) = 0;
  virtual size_t frameBytesMax() const = 0;
};

// Messages between flows are named by a 32-byte id the sender chooses
// deterministically (a flow that replays after a crash sends the same ids).
using MessageId = SecureHash;

// Receives what exactly-once messaging delivers, on its executor.
class MessageHandler {
 public:
  virtual ~MessageHandler() = default;
  // A message, delivered once per send (see Messaging) and in the order the peer sent
  // them to us, until the handler consumes it. After a restart, messages
  // received but not consumed are delivered again (same id), in order.
  virtual void onMessage(std::string_view peer, const MessageId& id, ByteView payload) = 0;
};

// Exactly-once, ordered, durable messaging: what flows see. A sent message is
// in the durable outbox before done() runs, and is retransmitted across
// reconnects and restarts of either side until the peer has stored it.
// "Once" is per send: the sender forgets a message's id once the peer has
// acknowledged it, so sending the same id again after that is a new message.
// A flow replaying after a crash must therefore suppress the sends its
// journal records as done (the flow runtime records a send in the same Store
// write as its checkpoint); an id still pending is recognised (same payload:
// a no-op; another payload: a conflict).
// flows/delivery.h implements it over a Link and the vault's MessageStore.
class Messaging {
 public:
  virtual ~Messaging() = default;
  virtual void setHandler(MessageHandler* handler) = 0;
  // done(ok) once the message is durably queued; an error when refused (too
  // big, unknown peer, a different payload under an id already pending).
  virtual void send(std::string_view peer, const MessageId& id, Bytes payload,
                    std::function<void(const Status&)> done) = 0;
  // The handler has durably processed the message: it is not delivered again.
  virtual void consume(std::string_view peer, const MessageId& id,
                       std::function<void(const Status&)> done) = 0;
};

}  // namespace ccal::flows
