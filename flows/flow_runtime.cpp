#include "flows/flow_runtime.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <random>
#include <utility>

#include "ledger/capnp_io.h"
#include "schemas/flows.capnp.h"

namespace ccal::flows {

struct FlowRuntime::EndInfo {
  bool ok = true;
  Errc code = Errc::ok;
  std::string message;
};

namespace {

using EndInfo = FlowRuntime::EndInfo;

// The first byte of a flow's stored arguments: who started it.
constexpr uint8_t args_local = 0;      // startFlow: be64 timeout micros, then the caller's args
constexpr uint8_t args_responder = 1;  // a session's init: ResponderStart
constexpr size_t local_args_header_bytes = 9;

struct SessionKey {
  SecureHash opener;  // the flow that opened the session
  uint32_t index = 0;
  auto operator<=>(const SessionKey&) const = default;
  bool operator==(const SessionKey&) const = default;
};


Errc errcOf(uint16_t code) {
  // Codes from peers and the store: anything this build does not know is `unavailable`.
  if (code == 0 || code > static_cast<uint16_t>(Errc::forbidden)) return Errc::unavailable;
  return static_cast<Errc>(code);
}

std::string quoted(std::string_view s) { return "'" + std::string(s) + "'"; }

Bytes bytesOf(capnp::Data::Reader d) { return Bytes(d.begin(), d.end()); }

void setEnd(schema::flows::SessionEnd::Builder b, const EndInfo& end) {
  b.setOk(end.ok);
  b.setCode(static_cast<uint16_t>(end.code));
  b.setMessage(end.message);
}

Result<EndInfo> endOf(schema::flows::SessionEnd::Reader r) {
  EndInfo end;
  end.ok = r.getOk();
  end.code = end.ok ? Errc::ok : errcOf(r.getCode());
  CCAL_TRY_ASSIGN(end.message, readText(r.getMessage(), "end message", text_bounded_by_message));
  return end;
}

// --- journal events -------------------------------------------------------------------

enum class EventKind : uint8_t { received, timer, now, random, subflow, aborted, called };

struct Event {
  EventKind kind = EventKind::now;
  uint32_t session = 0;
  uint64_t seq = 0;
  bool is_end = false;
  Bytes data;
  EndInfo end;  // received end, aborted; subflow outcome
  int64_t number = 0;
  std::string name;
};

const char* eventKindName(EventKind kind) {
  switch (kind) {
    case EventKind::received: return "a received message";
    case EventKind::timer: return "a timer";
    case EventKind::now: return "a clock reading";
    case EventKind::random: return "a random number";
    case EventKind::subflow: return "a subflow's end";
    case EventKind::aborted: return "an abort";
    case EventKind::called: return "a call's outcome";
  }
  return "an unknown event";
}

Bytes encodeEvent(const Event& e) {
  return buildCanonical<schema::flows::FlowEvent>([&](auto b) {
    switch (e.kind) {
      case EventKind::received: {
        auto r = b.initReceived();
        r.setSessionIndex(e.session);
        r.setSeq(e.seq);
        if (e.is_end) {
          setEnd(r.initEnd(), e.end);
        } else {
          r.setData(asData(e.data));
        }
        break;
      }
      case EventKind::timer: b.setTimerFired(e.number); break;
      case EventKind::now: b.setNow(e.number); break;
      case EventKind::random: b.setRandom(static_cast<uint64_t>(e.number)); break;
      case EventKind::subflow: {
        auto s = b.initSubFlowEnded();
        s.setName(e.name);
        s.setOk(e.end.ok);
        s.setCode(static_cast<uint16_t>(e.end.code));
        s.setMessage(e.end.message);
        break;
      }
      case EventKind::aborted: setEnd(b.initAborted(), e.end); break;
      case EventKind::called: {
        auto c = b.initCalled();
        c.setName(e.name);
        c.setOk(e.end.ok);
        if (e.end.ok) {
          c.setData(asData(e.data));
        } else {
          c.setCode(static_cast<uint16_t>(e.end.code));
          c.setMessage(e.end.message);
        }
        break;
      }
    }
  });
}

Result<Event> decodeEvent(ByteView bytes, const std::string& what) {
  return decodeMessage<schema::flows::FlowEvent>(
      bytes, what, Canonical::required, [](auto r) -> Result<Event> {
        Event e;
        switch (r.which()) {
          case schema::flows::FlowEvent::RECEIVED: {
            auto m = r.getReceived();
            e.kind = EventKind::received;
            e.session = m.getSessionIndex();
            e.seq = m.getSeq();
            if (m.isEnd()) {
              e.is_end = true;
              CCAL_TRY_ASSIGN(e.end, endOf(m.getEnd()));
            } else {
              e.data = bytesOf(m.getData());
            }
            return e;
          }
          case schema::flows::FlowEvent::TIMER_FIRED:
            e.kind = EventKind::timer;
            e.number = r.getTimerFired();
            return e;
          case schema::flows::FlowEvent::NOW:
            e.kind = EventKind::now;
            e.number = r.getNow();
            return e;
          case schema::flows::FlowEvent::RANDOM:
            e.kind = EventKind::random;
            e.number = static_cast<int64_t>(r.getRandom());
            return e;
          case schema::flows::FlowEvent::SUB_FLOW_ENDED: {
            auto s = r.getSubFlowEnded();
            e.kind = EventKind::subflow;
            CCAL_TRY_ASSIGN(e.name,
                            readText(s.getName(), "sub-flow name", text_bounded_by_message));
            e.end.ok = s.getOk();
            e.end.code = e.end.ok ? Errc::ok : errcOf(s.getCode());
            CCAL_TRY_ASSIGN(e.end.message,
                            readText(s.getMessage(), "sub-flow message", text_bounded_by_message));
            return e;
          }
          case schema::flows::FlowEvent::ABORTED:
            e.kind = EventKind::aborted;
            CCAL_TRY_ASSIGN(e.end, endOf(r.getAborted()));
            if (e.end.ok) return makeError(Errc::malformed, "an abort that is not an error");
            return e;
          case schema::flows::FlowEvent::CALLED: {
            auto c = r.getCalled();
            e.kind = EventKind::called;
            CCAL_TRY_ASSIGN(e.name, readText(c.getName(), "called name", text_bounded_by_message));
            e.end.ok = c.getOk();
            if (e.end.ok) {
              e.data = bytesOf(c.getData());
            } else {
              e.end.code = errcOf(c.getCode());
              CCAL_TRY_ASSIGN(e.end.message,
                              readText(c.getMessage(), "call message", text_bounded_by_message));
            }
            return e;
          }
        }
        return makeError(Errc::malformed, "an event of an unknown kind");
      });
}

Bytes encodeFlowError(const Error& error) {
  return buildCanonical<schema::flows::FlowError>([&](auto b) {
    b.setCode(static_cast<uint16_t>(error.code));
    b.setMessage(error.message);
  });
}

Error decodeFlowError(ByteView bytes) {
  struct Stored {
    Error error;
  };
  auto decoded = decodeMessage<schema::flows::FlowError>(
      bytes, "stored flow error", Canonical::required, [](auto r) -> Result<Stored> {
        auto message = readText(r.getMessage(), "message", text_bounded_by_message);
        if (!message) return message.error();
        return Stored{makeError(errcOf(r.getCode()), std::move(message).value())};
      });
  if (!decoded) return makeError(Errc::storage_error, decoded.error().message);
  return decoded.value().error;
}

void appendBe64(Bytes& out, uint64_t v) {
  for (int i = 7; i >= 0; --i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
uint64_t readBe64(ByteView in) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | in[i];
  return v;
}

}  // namespace

// A session message, decoded and checked.
struct FlowRuntime::Decoded {
  enum class Kind : uint8_t { init, data, end };
  SessionKey key;
  bool to_responder = false;
  uint64_t seq = 0;
  Kind kind = Kind::data;
  std::string flow_name, initiator_name;  // init
  Bytes payload;                          // init, data
  EndInfo end;                            // end
};

namespace {

Result<FlowRuntime::Decoded> decodeSessionMessage(ByteView bytes) {
  return decodeMessage<schema::flows::SessionMessage>(
      bytes, "session message", Canonical::required, [](auto r) -> Result<FlowRuntime::Decoded> {
        FlowRuntime::Decoded d;
        auto opener = SecureHash::fromBytes(asByteView(r.getInitiatorFlow()));
        if (!opener) return makeError(Errc::malformed, "initiatorFlow: " + opener.error().message);
        d.key = SessionKey{opener.value(), r.getSessionIndex()};
        d.to_responder = r.getToResponder();
        d.seq = r.getSeq();
        switch (r.which()) {
          case schema::flows::SessionMessage::INIT: {
            auto init = r.getInit();
            d.kind = FlowRuntime::Decoded::Kind::init;
            CCAL_TRY_ASSIGN(d.flow_name, readText(init.getFlowName(), "an init's flow name",
                                                  text_bounded_by_message));
            CCAL_TRY_ASSIGN(d.initiator_name,
                            readText(init.getInitiatorFlowName(), "an init's initiator flow name",
                                     text_bounded_by_message));
            d.payload = bytesOf(init.getPayload());
            if (!d.to_responder || d.seq != 0) {
              return makeError(Errc::malformed, "an init that is not the initiator's seq 0");
            }
            if (d.flow_name.empty() || d.flow_name.size() > vault::flow_name_bytes_max ||
                d.initiator_name.size() > vault::flow_name_bytes_max) {
              return makeError(Errc::malformed, "an init whose flow name is empty or over " +
                                                    std::to_string(vault::flow_name_bytes_max) +
                                                    " bytes");
            }
            return d;
          }
          case schema::flows::SessionMessage::DATA:
            d.kind = FlowRuntime::Decoded::Kind::data;
            d.payload = bytesOf(r.getData());
            if (d.to_responder && d.seq == 0) {
              return makeError(Errc::malformed, "the initiator's seq 0 is not an init");
            }
            return d;
          case schema::flows::SessionMessage::END:
            d.kind = FlowRuntime::Decoded::Kind::end;
            CCAL_TRY_ASSIGN(d.end, endOf(r.getEnd()));
            return d;
        }
        return makeError(Errc::malformed, "a session message of an unknown kind");
      });
}

Bytes encodeSessionMessage(const SessionKey& key, bool to_responder, uint64_t seq,
                           const std::function<void(schema::flows::SessionMessage::Builder)>& body) {
  return buildCanonical<schema::flows::SessionMessage>([&](auto b) {
    b.setInitiatorFlow(asData(key.opener.view()));
    b.setSessionIndex(key.index);
    b.setToResponder(to_responder);
    b.setSeq(seq);
    body(b);
  });
}

}  // namespace

MessageId sessionMessageId(const SecureHash& opener, uint32_t session_index, bool to_responder,
                           uint64_t seq) {
  Sha256 h;
  h.update(asBytes("ccal-flow-message"));
  h.update(opener.view());
  h.updateU32(session_index);
  h.update(static_cast<uint8_t>(to_responder ? 1 : 0));
  Bytes s;
  appendU64(s, seq);
  h.update(s);
  return h.finish();
}

FlowId responderFlowId(const SecureHash& opener, uint32_t session_index) {
  Sha256 h;
  h.update(asBytes("ccal-flow-responder"));
  h.update(opener.view());
  h.updateU32(session_index);
  return h.finish();
}

const char* flowPhaseName(FlowPhase phase) {
  switch (phase) {
    case FlowPhase::starting: return "starting";
    case FlowPhase::replaying: return "replaying";
    case FlowPhase::running: return "running";
    case FlowPhase::parked: return "parked";
    case FlowPhase::finishing: return "finishing";
    case FlowPhase::finished: return "finished";
  }
  return "unknown";
}

// --- one flow ---------------------------------------------------------------------------

struct FlowRuntime::FlowState final : detail::FlowCore {
  struct SessionState {
    SessionKey key;
    std::string peer;
    bool we_opened = false;
    std::string opener_name;     // the initiating (sub)flow
    std::string responder_name;  // what the init asks the peer to run
    uint64_t sent = 0;           // our next seq
    uint64_t received = 0;       // the peer's next seq (journaled before it)
    bool peer_ended = false;     // its end is journaled
  };
  struct Waiting {
    std::string peer;
    std::optional<MessageId> id;  // to consume once journaled; none: taken from the init
    Decoded message;
  };

  FlowState(FlowRuntime& runtime, FlowId flow_id) : rt(runtime), id(flow_id) {}

  FlowRuntime& rt;
  FlowId id;
  std::string name;
  Bytes user_args;
  int64_t started_micros = 0;
  int64_t timeout_micros = 0;
  bool responder = false;
  std::string counterparty_peer;
  std::string initiator_name;  // a responder's: the flow that asked for it
  FlowPhase phase = FlowPhase::starting;
  FlowContext ctx{*this};
  std::optional<Flow<Bytes>> root;
  std::function<void(const Status&)> started;

  std::vector<Bytes> journal;  // being replayed; cleared once used up
  size_t cursor = 0;
  uint64_t journal_next = 0;  // the next seq to append
  // Deferred events (see the header): seqs held_from .. journal_next - 1,
  // encoded, not yet handed to the store.
  std::vector<Bytes> held;
  uint64_t held_from = 0;
  uint64_t dropped_at_end = 0;  // deferred events the end record counts

  std::vector<SessionState> sessions;
  std::map<SessionKey, uint32_t> session_of;
  // By session, then seq; a session not opened yet may hold one message per
  // seq from each peer (who the session is with is known once it opens: a
  // peer sending first must not push the right one's message out).
  std::map<SessionKey, std::multimap<uint64_t, Waiting>> inbox;
  size_t inbox_messages = 0;

  std::vector<std::string> names;  // running subflows, innermost last
  std::string step_text, waiting_text;
  std::coroutine_handle<> waiter;
  std::optional<uint32_t> receiving;  // waiting for the session's next message
  detail::Answer answer;
  uint64_t op = 0;  // bumped per operation; a completion of an older one is dropped
  // The service call in flight (run again on a transient failure or a retry from the hospital).
  std::string call_name;
  detail::CallOp call_op;
  uint32_t call_attempts = 0;
  Executor::TimerId retry_timer = 0;
  std::string park_reason;
  Executor::TimerId sleep_timer = 0, timeout_timer = 0;
  bool aborting = false;
  std::optional<Error> abort_when_begun;  // killed before its start record was durable
  // Once finishing:
  vault::FlowOutcome outcome = vault::FlowOutcome::ok;
  Bytes result;
  std::optional<Error> error;

  bool replaying() const { return cursor < journal.size(); }
  std::string label() const { return "flow " + quoted(name) + " (" + id.shortHex() + ")"; }
  const std::string& currentName() const { return names.empty() ? name : names.back(); }

  // --- FlowCore -----------------------------------------------------------------------
  bool serve(detail::Request request, std::coroutine_handle<> h) override {
    CCAL_ASSERT_MSG(!waiter, "a flow asked for two things at once");
    answer = {};
    switch (request.kind) {
      case detail::RequestKind::initiate: return initiate(request.text);
      case detail::RequestKind::send: return send(request.session, std::move(request.payload), h);
      default: break;
    }
    if (request.kind == detail::RequestKind::receive && request.session >= sessions.size()) {
      answer.error = makeError(Errc::bad_query, "no session " + std::to_string(request.session));
      return true;
    }
    if (replaying()) return replay(request, h);
    return live(std::move(request), h);
  }
  detail::Answer takeAnswer() override { return std::exchange(answer, {}); }
  void pushSubFlow(std::string sub) override {
    if (names.size() >= rt.config_.subflow_depth_max) {
      failFlow(Errc::too_deep, "subflow " + quoted(sub) + " is nested deeper than " +
                                   std::to_string(rt.config_.subflow_depth_max));
    }
    names.push_back(std::move(sub));
  }
  void popSubFlow() override {
    CCAL_ASSERT(!names.empty());
    names.pop_back();
  }
  void setStep(std::string text) override { step_text = std::move(text); }
  const SecureHash& flowId() const override { return id; }
  uint64_t drawRandom() override { return rt.random(); }
  const std::string& flowName() const override { return name; }
  const std::string& self() const override { return rt.config_.self; }
  std::optional<Session> counterparty() override {
    if (!responder) return std::nullopt;
    return Session(this, 0, counterparty_peer);
  }

  // --- requests -------------------------------------------------------------------------
  bool initiate(const std::string& party) {
    const std::string& opener = currentName();
    auto responder_name = rt.responderOf(opener);
    if (!responder_name) {
      answer.error = makeError(Errc::not_found, "flow " + quoted(opener) +
                                                    " is not registered as initiating, so it "
                                                    "cannot open a session");
      return true;
    }
    if (party.empty() || party == rt.config_.self) {
      answer.error = makeError(Errc::bad_query, "flow " + quoted(opener) +
                                                    " cannot open a session with " +
                                                    (party.empty() ? "no one" : "its own node"));
      return true;
    }
    if (sessions.size() >= rt.config_.sessions_per_flow_max) {
      answer.error = makeError(Errc::too_large, label() + " has sessions_per_flow_max (" +
                                                    std::to_string(rt.config_.sessions_per_flow_max) +
                                                    ") sessions");
      return true;
    }
    const uint32_t index = static_cast<uint32_t>(sessions.size());
    SessionState s;
    s.key = SessionKey{id, index};
    s.peer = party;
    s.we_opened = true;
    s.opener_name = opener;
    s.responder_name = *responder_name;
    session_of[s.key] = index;
    sessions.push_back(std::move(s));
    answer.session = index;
    answer.peer = party;
    return true;
  }

  bool send(uint32_t index, Bytes payload, std::coroutine_handle<> h) {
    if (index >= sessions.size()) {
      answer.error = makeError(Errc::bad_query, "no session " + std::to_string(index));
      return true;
    }
    SessionState& s = sessions[index];
    if (s.peer_ended) {
      answer.error = makeError(Errc::unavailable, "session " + std::to_string(index) + " with " +
                                                      quoted(s.peer) + " has ended");
      return true;
    }
    const uint64_t seq = s.sent++;
    if (replaying()) {
      ++rt.stats_.sends_suppressed;
      return true;
    }
    Bytes message;
    if (s.we_opened && seq == 0) {
      message = encodeSessionMessage(s.key, true, 0, [&](auto b) {
        auto init = b.initInit();
        init.setFlowName(s.responder_name);
        init.setInitiatorFlowName(s.opener_name);
        init.setPayload(asData(payload));
      });
    } else {
      message = encodeSessionMessage(s.key, s.we_opened, seq,
                                     [&](auto b) { b.setData(asData(payload)); });
    }
    ++rt.stats_.sends;
    waiter = h;
    ++op;
    const MessageId mid = sessionMessageId(s.key.opener, s.key.index, s.we_opened, seq);
    if (held.empty()) {
      transmit(index, mid, std::move(message));
    } else {
      // What the message may depend on is durable before it goes out.
      waiting_text = "journaling before sending to " + quoted(s.peer);
      auto kept = std::make_shared<Bytes>(std::move(message));
      appendHeld(std::nullopt, [index, mid, kept](FlowState& f) { f.transmit(index, mid, std::move(*kept)); });
    }
    return false;
  }

  // A live send's message to the messaging layer; resumes the flow once it is durably queued.
  void transmit(uint32_t index, const MessageId& mid, Bytes message) {
    const SessionState& s = sessions[index];
    waiting_text = "sending to " + quoted(s.peer);
    const uint64_t my = op;
    FlowRuntime* runtime = &rt;
    std::weak_ptr<int> alive = rt.alive_;
    rt.messaging_.send(
        s.peer, mid, std::move(message),
        [runtime, alive, fid = id, my, peer = s.peer](const Status& status) {
          if (!alive.lock()) return;
          runtime->postBack([runtime, fid, my, peer, status] {
            FlowState* f = runtime->find(fid);
            if (f == nullptr || f->op != my) return;
            if (!status) {
              f->answer.error = makeError(status.error().code, "sending to " + quoted(peer) +
                                                                   " failed: " +
                                                                   status.error().message);
            }
            runtime->resume(*f, std::exchange(f->waiter, {}));
          });
        });
  }

  std::string describe(const detail::Request& r) const {
    switch (r.kind) {
      case detail::RequestKind::receive:
        return "to receive on session " + std::to_string(r.session) + " from " +
               quoted(sessions[r.session].peer);
      case detail::RequestKind::sleep: return "to sleep";
      case detail::RequestKind::now: return "for the time";
      case detail::RequestKind::random: return "for a random number";
      case detail::RequestKind::subflow_ended: return "to end subflow " + quoted(r.text);
      case detail::RequestKind::call: return "for call " + quoted(r.text);
      default: return "something else";
    }
  }

  std::string describe(const Event& e) const {
    switch (e.kind) {
      case EventKind::received:
        return std::string(e.is_end ? "the end" : "a message") + " of session " +
               std::to_string(e.session) + " (seq " + std::to_string(e.seq) + ")";
      case EventKind::subflow: return "the end of subflow " + quoted(e.name);
      case EventKind::called: return "the outcome of call " + quoted(e.name);
      default: return eventKindName(e.kind);
    }
  }

  // Stops the replay: the flow stays suspended and is finished from the executor.
  bool stopReplay(std::coroutine_handle<> h, Error stop, vault::FlowOutcome how) {
    waiter = h;
    const uint64_t my = ++op;
    FlowRuntime* runtime = &rt;
    rt.postBack([runtime, fid = id, my, stop, how] {
      FlowState* f = runtime->find(fid);
      if (f == nullptr || f->op != my) return;
      runtime->finish(*f, stop, how);
    });
    return false;
  }

  bool replay(const detail::Request& r, std::coroutine_handle<> h) {
    const uint64_t step = journal_next - journal.size() + cursor;
    auto event = decodeEvent(journal[cursor], label() + " journal event " + std::to_string(step));
    if (!event) {
      return stopReplay(h, makeError(Errc::storage_error, event.error().message),
                        vault::FlowOutcome::failed);
    }
    const Event& e = event.value();
    if (e.kind == EventKind::aborted) {
      return stopReplay(h, makeError(e.end.code, e.end.message),
                        e.end.code == Errc::timeout ? vault::FlowOutcome::failed
                                                    : vault::FlowOutcome::killed);
    }
    EventKind want = EventKind::now;
    switch (r.kind) {
      case detail::RequestKind::receive: want = EventKind::received; break;
      case detail::RequestKind::sleep: want = EventKind::timer; break;
      case detail::RequestKind::now: want = EventKind::now; break;
      case detail::RequestKind::random: want = EventKind::random; break;
      case detail::RequestKind::call: want = EventKind::called; break;
      default: want = EventKind::subflow; break;
    }
    bool same = e.kind == want;
    if (same && want == EventKind::received) {
      same = e.session == r.session && e.seq == sessions[r.session].received;
    }
    if (same && want == EventKind::subflow) same = e.name == r.text && e.end.ok == !r.error;
    if (same && want == EventKind::called) same = e.name == r.text;
    if (!same) {
      ++rt.stats_.divergences;
      return stopReplay(h,
                        makeError(Errc::conflict, "replay of " + label() + " diverged at step " +
                                                      std::to_string(step) + ": the flow asked " +
                                                      describe(r) + " but its journal has " +
                                                      describe(e)),
                        vault::FlowOutcome::failed);
    }
    ++cursor;
    ++rt.stats_.events_replayed;
    switch (e.kind) {
      case EventKind::received: {
        SessionState& s = sessions[e.session];
        ++s.received;
        // Copies of handled messages handed over again: consumed now.
        auto q = inbox.find(s.key);
        if (q != inbox.end()) {
          while (!q->second.empty() && q->second.begin()->first < s.received) {
            Waiting& w = q->second.begin()->second;
            if (w.id) rt.consume(w.peer, *w.id);
            q->second.erase(q->second.begin());
            --inbox_messages;
          }
        }
        if (e.is_end) {
          s.peer_ended = true;
          answer.error = endError(s, e.end);
        } else {
          answer.bytes = e.data;
        }
        break;
      }
      case EventKind::now:
      case EventKind::random: answer.number = e.number; break;
      case EventKind::called: setCallAnswer(e); break;
      default: break;
    }
    if (!replaying()) {
      journal.clear();
      journal.shrink_to_fit();
      cursor = 0;
      phase = FlowPhase::running;
    }
    return true;
  }

  Error endError(const SessionState& s, const EndInfo& end) const {
    const std::string where = "session " + std::to_string(&s - sessions.data()) + " with " +
                              quoted(s.peer);
    if (end.ok) {
      return makeError(Errc::unavailable, where + " ended: the peer's flow finished");
    }
    return makeError(end.code, where + " ended: " + end.message);
  }

  bool live(detail::Request r, std::coroutine_handle<> h) {
    Event e;
    // The time, a random number, a subflow's end: deferred, the flow goes on at once.
    switch (rt.config_.defer_events ? r.kind : detail::RequestKind::call) {
      case detail::RequestKind::now:
        e.kind = EventKind::now;
        e.number = rt.clock_.nowMicros();
        answer.number = e.number;
        defer(e);
        return true;
      case detail::RequestKind::random:
        e.kind = EventKind::random;
        e.number = static_cast<int64_t>(rt.random());
        answer.number = e.number;
        defer(e);
        return true;
      case detail::RequestKind::subflow_ended:
        e.kind = EventKind::subflow;
        e.name = r.text;
        if (r.error) e.end = EndInfo{false, r.error->code, r.error->message};
        defer(e);
        return true;
      default: break;
    }
    waiter = h;
    ++op;
    switch (r.kind) {
      case detail::RequestKind::receive:
        receiving = r.session;
        waiting_text = "waiting for a message from " + quoted(sessions[r.session].peer) +
                       " on session " + std::to_string(r.session);
        tryReceive();
        // Waiting: what it deferred is journaled meanwhile.
        if (receiving && !held.empty()) appendHeld(std::nullopt, {});
        return false;
      case detail::RequestKind::sleep: {
        const int64_t delay = std::max<int64_t>(0, r.number);
        waiting_text = "sleeping for " + std::to_string(delay) + " microseconds";
        const uint64_t my = op;
        FlowRuntime* runtime = &rt;
        std::weak_ptr<int> alive = rt.alive_;
        sleep_timer = rt.executor_.runAfter(delay, [runtime, alive, fid = id, my, delay] {
          if (!alive.lock()) return;
          FlowState* f = runtime->find(fid);
          if (f == nullptr || f->op != my) return;
          f->sleep_timer = 0;
          Event fired;
          fired.kind = EventKind::timer;
          fired.number = delay;
          f->journalEvent(fired, {});
        });
        if (!held.empty()) appendHeld(std::nullopt, {});
        return false;
      }
      case detail::RequestKind::call:
        startCall(std::move(r.text), std::move(r.call), r.reads_only);
        return false;
      default: break;
    }
    // Not deferring: journaled before the flow sees it.
    switch (r.kind) {
      case detail::RequestKind::now:
        e.kind = EventKind::now;
        e.number = rt.clock_.nowMicros();
        answer.number = e.number;
        break;
      case detail::RequestKind::random:
        e.kind = EventKind::random;
        e.number = static_cast<int64_t>(rt.random());
        answer.number = e.number;
        break;
      case detail::RequestKind::subflow_ended:
        e.kind = EventKind::subflow;
        e.name = r.text;
        if (r.error) e.end = EndInfo{false, r.error->code, r.error->message};
        break;
      default: CCAL_ASSERT_MSG(false, "not an event request");
    }
    journalEvent(e, {});
    return false;
  }

  void setCallAnswer(const Event& e) {
    if (e.end.ok) {
      answer.bytes = e.data;
    } else {
      answer.error = makeError(e.end.code, e.end.message);
    }
  }

  // Runs a service call once the events before it are durable (a read:
  // at once); its outcome resumes the flow and is deferred.
  void startCall(std::string name_of_call, detail::CallOp call_op_to_run, bool reads_only) {
    CCAL_ASSERT_MSG(call_op_to_run, "a call without an operation");
    call_name = std::move(name_of_call);
    call_op = std::move(call_op_to_run);
    call_attempts = 0;
    if (reads_only || held.empty()) return runCall();
    waiting_text = "journaling before call " + quoted(call_name);
    appendHeld(std::nullopt, [](FlowState& f) { f.runCall(); });
  }

  static bool transient(Errc code) { return code == Errc::unavailable || code == Errc::timeout; }

  void runCall() {
    ++call_attempts;
    waiting_text = "waiting for call " + quoted(call_name);
    if (call_attempts > 1) {
      waiting_text += " (attempt " + std::to_string(call_attempts) + " of " +
                      std::to_string(rt.config_.call_attempts_max) + ")";
    }
    const uint64_t my = op;
    FlowRuntime* runtime = &rt;
    std::weak_ptr<int> alive = rt.alive_;
    auto once = std::make_shared<std::atomic<bool>>(false);
    detail::CallOp run = call_op;  // a copy: the operation may be run again
    run([runtime, alive, fid = id, my, once](Result<Bytes> done) {
      CCAL_ASSERT_MSG(!once->exchange(true), "a call's operation completed twice");
      if (!alive.lock()) return;
      runtime->postBack([runtime, fid, my, outcome = std::move(done)]() mutable {
        FlowState* f = runtime->find(fid);
        if (f == nullptr || f->op != my) return;
        if (!outcome && transient(outcome.error().code)) return f->callFailed(outcome.error());
        f->call_op = nullptr;
        Event e;
        e.kind = EventKind::called;
        e.name = f->call_name;
        if (outcome) {
          e.data = std::move(outcome).value();
        } else {
          const Error& err = outcome.error();
          e.end = EndInfo{false, err.code == Errc::ok ? Errc::unavailable : err.code,
                          "call " + quoted(f->call_name) + " failed: " + err.message};
        }
        if (!runtime->config_.defer_events) {
          return f->journalEvent(e, [e](FlowState& g) { g.setCallAnswer(e); });
        }
        f->defer(e);
        f->setCallAnswer(e);
        runtime->resume(*f, std::exchange(f->waiter, {}));
      });
    });
  }

  // A transient failure: run the call again after a delay, or park the flow.
  void callFailed(const Error& failure) {
    const std::string what = "call " + quoted(call_name) + " failed " + std::to_string(call_attempts) +
                             (call_attempts == 1 ? " time" : " times") + ": " + failure.toString();
    if (call_attempts < rt.config_.call_attempts_max) {
      int64_t delay = rt.config_.call_retry_delay_micros_initial;
      for (uint32_t i = 1; i < call_attempts && delay < rt.config_.call_retry_delay_micros_max; ++i) delay *= 2;
      delay = std::min(delay, rt.config_.call_retry_delay_micros_max);
      ++rt.stats_.call_retries;
      waiting_text = what + "; again in " + std::to_string(delay / 1000) + " ms";
      const uint64_t my = op;
      FlowRuntime* runtime = &rt;
      std::weak_ptr<int> alive = rt.alive_;
      retry_timer = rt.executor_.runAfter(delay, [runtime, alive, fid = id, my] {
        if (!alive.lock()) return;
        FlowState* f = runtime->find(fid);
        if (f == nullptr || f->op != my || f->phase == FlowPhase::parked) return;
        f->retry_timer = 0;
        f->runCall();
      });
      return;
    }
    // The hospital: parked durably with the reason; retry() or kill() from
    // the API. Its timeout is suspended meanwhile (a retry starts it afresh).
    phase = FlowPhase::parked;
    if (timeout_timer != 0) rt.executor_.cancel(std::exchange(timeout_timer, 0));
    park_reason = what;
    if (park_reason.size() > vault::flow_park_reason_bytes_max) park_reason.resize(vault::flow_park_reason_bytes_max);
    waiting_text = "parked in the hospital: " + park_reason + " (retry or kill it)";
    ++rt.stats_.flows_parked;
    rt.log(label() + " parked in the hospital: " + park_reason);
    FlowRuntime* runtime = &rt;
    ++rt.stats_.store_parks;
    rt.store_.parkAsync(id, park_reason, rt.storeDone([runtime, fid = id](const Status& status) {
      if (!status) runtime->log("parking flow " + fid.hex() + " failed: " + status.error().toString());
    }));
  }

  // Defers an event: it takes the next seq and is journaled with the next
  // durable one (or before the flow's next send or effecting call).
  void defer(const Event& e) {
    if (held.empty()) held_from = journal_next;
    ++journal_next;
    held.push_back(encodeEvent(e));
    ++rt.stats_.events_deferred;
    if (held.size() >= vault::flow_events_per_append_max) appendHeld(std::nullopt, {});
  }

  // The deferred events and then `last` (if any), in one append. Once they
  // are durable, `durable` runs (if the flow is still at this operation); a
  // failure ends the flow. Nothing to append: `durable` runs at once.
  void appendHeld(std::optional<Event> last, std::function<void(FlowState&)> durable) {
    std::vector<Bytes> events = std::move(held);
    held.clear();
    const uint64_t first = events.empty() ? journal_next : held_from;
    if (last) {
      events.push_back(encodeEvent(*last));
      ++journal_next;
    }
    if (events.empty()) {
      if (durable) durable(*this);
      return;
    }
    const uint64_t end = first + events.size();
    const uint64_t my = op;
    FlowRuntime* runtime = &rt;
    ++rt.stats_.store_appends;
    rt.store_.appendEventsAsync(
        id, first, std::move(events),
        rt.storeDone([runtime, fid = id, my, first, end, durable = std::move(durable)](const Status& status) {
          FlowState* f = runtime->find(fid);
          if (f == nullptr) return;
          if (!status) {
            if (f->op != my) return;  // a later append fails too (a gap) or the flow is ending
            const std::string which = end - first == 1
                                          ? "event " + std::to_string(first)
                                          : "events " + std::to_string(first) + " to " + std::to_string(end - 1);
            runtime->finish(*f,
                            makeError(status.error().code,
                                      "journaling " + which + " failed: " + status.error().message),
                            vault::FlowOutcome::failed);
            return;
          }
          for (uint64_t seq = first; seq < end; ++seq) {
            ++runtime->stats_.events_journaled;
            if (runtime->hooks_.journaled) runtime->hooks_.journaled(fid, seq);
          }
          if (f->op != my || !durable) return;
          durable(*f);
        }));
  }

  // Appends the event (after the deferred ones); once durable, runs after()
  // and resumes the flow.
  void journalEvent(const Event& e, std::function<void(FlowState&)> after) {
    if (waiting_text.empty() || e.kind != EventKind::received) {
      waiting_text = std::string("journaling ") + eventKindName(e.kind);
    }
    appendHeld(e, [after = std::move(after)](FlowState& f) {
      if (after) after(f);
      f.rt.resume(f, std::exchange(f.waiter, {}));
    });
  }

  // Journals the awaited session's next message once it has arrived.
  void tryReceive() {
    if (!receiving || !waiter) return;
    const uint32_t index = *receiving;
    SessionState& s = sessions[index];
    auto q = inbox.find(s.key);
    if (q == inbox.end()) return;
    // Messages for this seq that arrived before the session was opened, from
    // someone else than its peer, are dropped.
    auto [first, last] = q->second.equal_range(s.received);
    auto m = q->second.end();
    for (auto it = first; it != last;) {
      if (it->second.peer == s.peer) {
        m = it++;
        continue;
      }
      rt.log("dropped a message from " + quoted(it->second.peer) + " on a session of " + label() +
             " with " + quoted(s.peer));
      ++rt.stats_.messages_dropped;
      if (it->second.id) rt.consume(it->second.peer, *it->second.id);
      it = q->second.erase(it);
      --inbox_messages;
    }
    if (m == q->second.end()) return;
    const Waiting& w = m->second;
    receiving.reset();
    Event e;
    e.kind = EventKind::received;
    e.session = index;
    e.seq = m->first;
    if (w.message.kind == Decoded::Kind::end) {
      e.is_end = true;
      e.end = w.message.end;
    } else {
      e.data = w.message.payload;
    }
    waiting_text = "journaling a message from " + quoted(s.peer);
    const SessionKey key = s.key;
    const uint64_t seq = m->first;
    journalEvent(e, [key, seq, index](FlowState& f) { f.took(key, seq, index); });
  }

  // The message is journaled: the flow gets it and it is consumed.
  void took(const SessionKey& key, uint64_t seq, uint32_t index) {
    SessionState& s = sessions[index];
    auto q = inbox.find(key);
    CCAL_ASSERT(q != inbox.end());
    auto m = q->second.find(seq);
    while (m != q->second.end() && m->first == seq && m->second.peer != s.peer) ++m;
    CCAL_ASSERT(m != q->second.end() && m->first == seq && seq == s.received);
    Waiting w = std::move(m->second);
    q->second.erase(m);
    --inbox_messages;
    ++s.received;
    if (w.id) rt.consume(w.peer, *w.id);
    if (rt.hooks_.handled) rt.hooks_.handled(id, key.opener, key.index, !s.we_opened, seq);
    if (w.message.kind == Decoded::Kind::end) {
      s.peer_ended = true;
      answer.error = endError(s, w.message.end);
    } else {
      answer.bytes = std::move(w.message.payload);
    }
  }

  // A session message for this flow from the messaging layer.
  void arrive(std::string_view peer, const MessageId& mid, Decoded d) {
    auto known = session_of.find(d.key);
    if (known != session_of.end()) {
      SessionState& s = sessions[known->second];
      if (peer != s.peer) {
        rt.log("dropped a message from " + quoted(peer) + " on a session of " + label() +
               " with " + quoted(s.peer));
        ++rt.stats_.messages_dropped;
        rt.consume(peer, mid);
        return;
      }
      if (d.seq < s.received) {  // handled before (its sender replayed)
        ++rt.stats_.messages_duplicate;
        rt.consume(peer, mid);
        return;
      }
    }
    // A session not opened yet (a replayed flow that has not reached its
    // initiate() again) can only be one this flow opens.
    if (known == session_of.end() &&
        (d.key.opener != id || d.key.index >= rt.config_.sessions_per_flow_max)) {
      rt.log("dropped a message from " + quoted(peer) + " for a session " + label() +
             " does not have");
      ++rt.stats_.messages_dropped;
      rt.consume(peer, mid);
      return;
    }
    auto& q = inbox[d.key];
    auto [same_first, same_last] = q.equal_range(d.seq);
    for (auto it = same_first; it != same_last; ++it) {
      if (it->second.peer == peer) {  // the same message again while it waits
        ++rt.stats_.messages_duplicate;
        return;
      }
    }
    if (inbox_messages >= rt.config_.messages_waiting_per_flow_max) {
      // Left unconsumed: dropped (and consumed) once the flow has finished.
      FlowRuntime* runtime = &rt;
      const uint64_t my = op;
      rt.postBack([runtime, fid = id, my, peer = std::string(peer)] {
        FlowState* f = runtime->find(fid);
        if (f == nullptr || f->op != my) return;
        runtime->finish(*f,
                        makeError(Errc::too_large,
                                  f->label() + ": " + quoted(peer) + " sent more than " +
                                      std::to_string(runtime->config_.messages_waiting_per_flow_max) +
                                      " messages it did not wait for (messages_waiting_per_flow_max)"),
                        vault::FlowOutcome::failed);
      });
      return;
    }
    q.emplace(d.seq, Waiting{std::string(peer), mid, std::move(d)});
    ++inbox_messages;
    tryReceive();
  }

  // A responder's session with its initiator: local index 0, its first
  // message the init's payload (consumed with the init).
  void openInbound(const SessionKey& key, std::string peer, Bytes first_payload) {
    SessionState s;
    s.key = key;
    s.peer = peer;
    s.we_opened = false;
    s.opener_name = initiator_name;
    session_of[key] = 0;
    sessions.push_back(std::move(s));
    Decoded first;
    first.key = key;
    first.to_responder = true;
    first.seq = 0;
    first.kind = Decoded::Kind::data;
    first.payload = std::move(first_payload);
    inbox[key].emplace(0, Waiting{std::move(peer), std::nullopt, std::move(first)});
    ++inbox_messages;
  }
};

// --- the runtime ---------------------------------------------------------------------------

FlowRuntime::FlowRuntime(Messaging& messaging, Executor& executor, const Clock& clock,
                         vault::FlowStore& store, FlowRuntimeConfig config)
    : messaging_(messaging),
      executor_(executor),
      clock_(clock),
      store_(store),
      config_(std::move(config)) {
  CCAL_ASSERT_MSG(!config_.self.empty(), "the runtime needs its node's name");
  if (!config_.random_u64) {
    auto device = std::make_shared<std::random_device>();
    config_.random_u64 = [device] {
      return (static_cast<uint64_t>((*device)()) << 32) ^ (*device)();
    };
  }
  messaging_.setHandler(this);
}

FlowRuntime::~FlowRuntime() {
  // Coroutine frames go before the states their contexts point into.
  for (auto& [id, flow] : flows_) flow->root.reset();
  flows_.clear();
}

uint64_t FlowRuntime::random() { return config_.random_u64(); }

void FlowRuntime::log(const std::string& line) const {
  if (config_.log) {
    config_.log(line);
  } else {
    std::fprintf(stderr, "flows: %s\n", line.c_str());
  }
}

void FlowRuntime::postBack(std::function<void()> fn) {
  std::weak_ptr<int> alive = alive_;
  executor_.post([alive, fn = std::move(fn)] {
    if (alive.lock()) fn();
  });
}

vault::DoneFn FlowRuntime::storeDone(std::function<void(const Status&)> on_executor) {
  {
    std::lock_guard lock(requests_->mutex);
    ++requests_->in_flight;
  }
  std::weak_ptr<int> alive = alive_;
  // Captures the executor, not `this`: the write may complete after the
  // runtime is gone (a node shut down or crashed with a write in flight),
  // and the executor outlives the runtime.
  return [exec = &executor_, alive, requests = requests_, fn = std::move(on_executor)](const Status& status) {
    // Posted before the count drops, so waitForStore() sees it queued.
    exec->post([alive, fn, status] {
      if (alive.lock()) fn(status);
    });
    std::lock_guard lock(requests->mutex);
    if (--requests->in_flight == 0) requests->drained.notify_all();
  };
}

void FlowRuntime::waitForStore() const {
  std::unique_lock lock(requests_->mutex);
  requests_->drained.wait(lock, [&] { return requests_->in_flight == 0; });
}

Status FlowRuntime::registerFlow(std::string name, Factory factory) {
  CCAL_ASSERT_MSG(!started_, "registerFlow() after start()");
  if (name.empty() || name.size() > vault::flow_name_bytes_max) {
    return makeError(Errc::malformed, "flow name " + quoted(name) + " is empty or over " +
                                          std::to_string(vault::flow_name_bytes_max) + " bytes");
  }
  if (!factory) return makeError(Errc::malformed, "flow " + quoted(name) + " has no factory");
  if (factories_.count(name)) {
    return makeError(Errc::conflict, "flow " + quoted(name) + " is registered already");
  }
  factories_.emplace(std::move(name), std::move(factory));
  return {};
}

Status FlowRuntime::registerInitiating(std::string initiating, std::string responder) {
  CCAL_ASSERT_MSG(!started_, "registerInitiating() after start()");
  if (initiating.empty() || initiating.size() > vault::flow_name_bytes_max) {
    return makeError(Errc::malformed, "initiating flow name " + quoted(initiating) +
                                          " is empty or too long");
  }
  if (!factories_.count(responder)) {
    return makeError(Errc::not_found, "initiating flow " + quoted(initiating) +
                                          " names responder " + quoted(responder) +
                                          ", which is not registered (register it first)");
  }
  if (auto it = responders_.find(initiating); it != responders_.end()) {
    return makeError(Errc::conflict, "initiating flow " + quoted(initiating) +
                                         " already has responder " + quoted(it->second));
  }
  responders_.emplace(std::move(initiating), std::move(responder));
  return {};
}

const FlowRuntime::Factory* FlowRuntime::factory(std::string_view name) const {
  auto it = factories_.find(name);
  return it == factories_.end() ? nullptr : &it->second;
}

std::optional<std::string> FlowRuntime::responderOf(std::string_view initiating) const {
  auto it = responders_.find(initiating);
  if (it == responders_.end()) return std::nullopt;
  return it->second;
}

FlowRuntime::FlowState* FlowRuntime::find(const FlowId& id) const {
  auto it = flows_.find(id);
  return it == flows_.end() ? nullptr : it->second.get();
}

void FlowRuntime::consume(std::string_view peer, const MessageId& id) {
  FlowRuntime* self = this;
  std::weak_ptr<int> alive = alive_;
  messaging_.consume(peer, id, [self, alive, peer = std::string(peer), id](const Status& status) {
    // not_found: consumed already (a copy handed over twice).
    if (!status && status.error().code != Errc::not_found && alive.lock()) {
      self->log("consuming message " + id.shortHex() + " from " + quoted(peer) +
                " failed: " + status.error().toString());
    }
  });
}

Status FlowRuntime::start() {
  CCAL_ASSERT_MSG(!started_, "start() twice");
  started_ = true;
  auto unfinished = store_.unfinishedFlows();
  if (!unfinished) return unfinished.error();
  for (vault::FlowCheckpoint& cp : unfinished.value()) resumeStored(std::move(cp));
  return {};
}

void FlowRuntime::resumeStored(vault::FlowCheckpoint cp, bool fresh_timeout) {
  {
    auto owned = std::make_unique<FlowState>(*this, cp.id);
    FlowState& f = *owned;
    f.name = cp.flowName;
    f.started_micros = cp.startedMicros;
    f.journal_next = cp.journalLength;
    flows_.emplace(cp.id, std::move(owned));
    ++stats_.flows_resumed;
    std::optional<Error> damaged;
    if (!cp.args.empty() && cp.args[0] == args_local && cp.args.size() >= local_args_header_bytes) {
      f.timeout_micros = static_cast<int64_t>(readBe64(ByteView(cp.args).subspan(1, 8)));
      f.user_args.assign(cp.args.begin() + local_args_header_bytes, cp.args.end());
    } else if (!cp.args.empty() && cp.args[0] == args_responder) {
      auto start = decodeMessage<schema::flows::ResponderStart>(
          ByteView(cp.args).subspan(1), "responder start of " + f.label(), Canonical::required,
          [&](auto r) -> Status {
            auto opener = SecureHash::fromBytes(asByteView(r.getInitiatorFlow()));
            if (!opener) return opener.error();
            f.responder = true;
            CCAL_TRY_ASSIGN(f.counterparty_peer,
                            readText(r.getPeer(), "peer", text_bounded_by_message));
            CCAL_TRY_ASSIGN(
                f.initiator_name,
                readText(r.getInitiatorFlowName(), "initiator flow name", text_bounded_by_message));
            f.openInbound(SessionKey{opener.value(), r.getSessionIndex()}, f.counterparty_peer,
                          bytesOf(r.getFirstPayload()));
            return {};
          });
      if (!start) damaged = makeError(Errc::storage_error, start.error().message);
      f.timeout_micros = config_.flow_timeout_micros;
    } else {
      damaged = makeError(Errc::storage_error, f.label() + ": stored arguments of unknown form");
    }
    if (!damaged) {
      // TODO(perf): the whole journal is read before the replay; stream it
      // (FlowStore::forEachEvent) if journals grow long.
      auto events = store_.journal(cp.id);
      if (!events) {
        damaged = events.error();
      } else {
        f.journal.reserve(events.value().size());
        for (auto& e : events.value()) f.journal.push_back(std::move(e.bytes));
      }
    }
    if (damaged) {
      finish(f, *damaged, vault::FlowOutcome::failed);
      return;
    }
    armTimeout(f, f.timeout_micros, fresh_timeout ? std::optional<int64_t>(clock_.nowMicros()) : std::nullopt);
    launch(f);
  }
}

Result<FlowId> FlowRuntime::startFlow(std::string_view name, Bytes args, int64_t timeout_micros,
                                      std::function<void(const Status&)> started) {
  CCAL_ASSERT_MSG(started_, "startFlow() before start()");
  if (!factory(name)) {
    return makeError(Errc::not_found, "no flow " + quoted(name) + " is registered on " +
                                          quoted(config_.self));
  }
  if (flows_.size() >= config_.flows_running_max) {
    return makeError(Errc::unavailable, quoted(config_.self) + " runs flows_running_max (" +
                                            std::to_string(config_.flows_running_max) +
                                            ") flows");
  }
  if (args.size() + local_args_header_bytes > vault::flow_args_bytes_max) {
    return makeError(Errc::too_large, "arguments of " + std::to_string(args.size()) +
                                          " bytes are over flow_args_bytes_max");
  }
  if (timeout_micros < 0) timeout_micros = config_.flow_timeout_micros;
  const int64_t now = clock_.nowMicros();
  // Unique: the time, a counter and a random number, checked against the
  // store (a weak random source after a restart could repeat them).
  FlowId id;
  for (int attempt = 0;; ++attempt) {
    Sha256 h;
    h.update(asBytes("ccal-flow"));
    h.update(asBytes(config_.self));
    Bytes salt;
    appendU64(salt, static_cast<uint64_t>(now));
    appendU64(salt, ++flows_counter_);
    appendU64(salt, random());
    h.update(salt);
    id = h.finish();
    auto existing = store_.flow(id);
    if (!existing) return existing.error();
    if (!existing.value() && !find(id)) break;
    if (attempt == 16) {
      return makeError(Errc::conflict, "no unused flow id after 16 attempts (a broken random source?)");
    }
  }

  auto owned = std::make_unique<FlowState>(*this, id);
  FlowState& f = *owned;
  f.name = std::string(name);
  f.started_micros = now;
  f.timeout_micros = timeout_micros;
  f.user_args = args;
  f.started = std::move(started);
  flows_.emplace(id, std::move(owned));
  ++stats_.flows_started;

  Bytes stored;
  stored.reserve(local_args_header_bytes + args.size());
  stored.push_back(args_local);
  appendBe64(stored, static_cast<uint64_t>(timeout_micros));
  append(stored, args);
  ++stats_.store_begins;
  store_.beginFlowAsync(id, name, stored, now, storeDone([this, id](const Status& status) {
                          FlowState* flow = find(id);
                          if (flow == nullptr) return;
                          auto notify = std::move(flow->started);
                          if (!status) {
                            log("starting " + flow->label() + " failed: " +
                                status.error().toString());
                            flows_.erase(id);
                            if (notify) notify(status);
                            return;
                          }
                          if (notify) notify(status);
                          begun(*flow);
                        }));
  return id;
}

void FlowRuntime::begun(FlowState& f) {
  if (f.abort_when_begun) {
    f.phase = FlowPhase::running;
    abort(f, *std::exchange(f.abort_when_begun, std::nullopt));
    return;
  }
  armTimeout(f, f.timeout_micros);
  launch(f);
}

void FlowRuntime::launch(FlowState& f) {
  const Factory* make = factory(f.name);
  if (make == nullptr) {
    std::string why = "no flow " + quoted(f.name) + " is registered on " + quoted(config_.self);
    if (f.responder) {
      why += " (asked for by flow " + quoted(f.initiator_name) + " of " +
             quoted(f.counterparty_peer) + ")";
    }
    finish(f, makeError(Errc::not_found, why), vault::FlowOutcome::failed);
    return;
  }
  f.phase = f.replaying() ? FlowPhase::replaying : FlowPhase::running;
  try {
    f.root.emplace((*make)(f.ctx, f.user_args));
  } catch (...) {
    finish(f, detail::errorOfException(std::current_exception()), vault::FlowOutcome::failed);
    return;
  }
  resume(f, f.root->handle());
}

void FlowRuntime::resume(FlowState& f, std::coroutine_handle<> h) {
  CCAL_ASSERT(h && f.phase != FlowPhase::finishing);
  f.waiting_text.clear();
  h.resume();
  afterRun(f);
}

void FlowRuntime::afterRun(FlowState& f) {
  if (f.phase == FlowPhase::finishing || !f.root || !f.root->done()) return;
  Result<Bytes> result = f.root->takeResult();
  if (f.replaying()) {
    ++stats_.divergences;
    const uint64_t step = f.journal_next - f.journal.size() + f.cursor;
    finish(f,
           makeError(Errc::conflict, "replay of " + f.label() + " diverged at step " +
                                         std::to_string(step) + ": the flow ended but its journal has " +
                                         std::to_string(f.journal.size() - f.cursor) +
                                         " more events"),
           vault::FlowOutcome::failed);
    return;
  }
  const vault::FlowOutcome how = result ? vault::FlowOutcome::ok : vault::FlowOutcome::failed;
  finish(f, std::move(result), how);
}

void FlowRuntime::armTimeout(FlowState& f, int64_t timeout_micros, std::optional<int64_t> from_micros) {
  if (timeout_micros <= 0) return;
  const int64_t from = from_micros.value_or(f.started_micros);
  const int64_t left = std::max<int64_t>(0, from + timeout_micros - clock_.nowMicros());
  std::weak_ptr<int> alive = alive_;
  f.timeout_timer = executor_.runAfter(left, [this, alive, id = f.id, timeout_micros] {
    if (!alive.lock()) return;
    FlowState* flow = find(id);
    if (flow == nullptr) return;
    flow->timeout_timer = 0;
    abort(*flow, makeError(Errc::timeout, flow->label() + " timed out after " +
                                              std::to_string(timeout_micros / 1000) + " ms"));
  });
}

Status FlowRuntime::kill(const FlowId& id, std::string reason) {
  FlowState* f = find(id);
  if (f == nullptr) {
    // A flow parked before a restart is only in the store's hospital.
    auto stored = store_.flow(id);
    if (stored && stored.value() && stored.value()->status == vault::FlowStatus::parked) {
      const Error error = makeError(Errc::unavailable, "flow " + quoted(stored.value()->flowName) + " " +
                                                           id.hex().substr(0, 12) + " was killed: " + reason);
      ++stats_.store_finishes;
      store_.finishFlowAsync(id, vault::FlowOutcome::killed, encodeFlowError(error),
                             storeDone([this, id](const Status& status) {
                               if (!status) log("killing parked flow " + id.hex() + ": " + status.error().toString());
                             }));
      return {};
    }
    return makeError(Errc::not_found, "flow " + id.hex() + " is not running on " +
                                          quoted(config_.self));
  }
  if (f->phase == FlowPhase::finishing || f->aborting || f->abort_when_begun) {
    return makeError(Errc::conflict, f->label() + " is ending already");
  }
  abort(*f, makeError(Errc::unavailable, f->label() + " was killed: " + reason));
  return {};
}

Status FlowRuntime::retry(const FlowId& id) {
  if (FlowState* f = find(id)) {
    if (f->phase != FlowPhase::parked) {
      return makeError(Errc::conflict, f->label() + " is not in the hospital (" + flowPhaseName(f->phase) + ")");
    }
    ++stats_.flows_retried;
    f->phase = FlowPhase::running;
    f->park_reason.clear();
    ++stats_.store_parks;
    store_.unparkAsync(id, storeDone([this, id](const Status& status) {
      if (!status) log("unparking flow " + id.hex() + " failed: " + status.error().toString());
    }));
    armTimeout(*f, f->timeout_micros, clock_.nowMicros());
    f->call_attempts = 0;
    f->runCall();
    return {};
  }
  auto stored = store_.flow(id);
  if (!stored) return stored.error();
  if (!stored.value()) return makeError(Errc::not_found, "no flow " + id.hex() + " on " + quoted(config_.self));
  if (stored.value()->status != vault::FlowStatus::parked) {
    return makeError(Errc::conflict, "flow " + id.hex() + " is not in the hospital");
  }
  if (flows_.size() >= config_.flows_running_max) {
    return makeError(Errc::unavailable, "flows.running_max (" + std::to_string(config_.flows_running_max) +
                                            ") flows are running on " + quoted(config_.self));
  }
  // Out of the store's hospital, then replayed to its call, which runs again.
  Status unparked = store_.unpark(id);
  if (!unparked) return unparked;
  auto cp = store_.flow(id);
  if (!cp) return cp.error();
  ++stats_.flows_retried;
  resumeStored(std::move(*cp.value()), /*fresh_timeout=*/true);
  return {};
}

void FlowRuntime::abort(FlowState& f, Error error) {
  if (f.phase == FlowPhase::finishing || f.aborting) return;
  if (f.phase == FlowPhase::starting) {
    // Its start record is being written: aborted (and journaled) once it is.
    if (!f.abort_when_begun) f.abort_when_begun = std::move(error);
    return;
  }
  f.aborting = true;
  ++f.op;
  f.waiter = {};
  f.receiving.reset();
  if (f.sleep_timer != 0) executor_.cancel(std::exchange(f.sleep_timer, 0));
  if (f.retry_timer != 0) executor_.cancel(std::exchange(f.retry_timer, 0));
  f.root.reset();  // the coroutine waits somewhere; it never runs again
  const vault::FlowOutcome how =
      error.code == Errc::timeout ? vault::FlowOutcome::failed : vault::FlowOutcome::killed;
  // Journaled first, so that a replay after a crash stops here too.
  Event e;
  e.kind = EventKind::aborted;
  e.end = EndInfo{false, error.code, error.message};
  // After the deferred events, in the same append.
  std::vector<Bytes> events = std::move(f.held);
  f.held.clear();
  const uint64_t first = events.empty() ? f.journal_next : f.held_from;
  events.push_back(encodeEvent(e));
  ++f.journal_next;
  const uint64_t my = f.op;
  ++stats_.store_appends;
  store_.appendEventsAsync(f.id, first, std::move(events),
                          storeDone([this, id = f.id, my, error, how](const Status& status) {
                            FlowState* flow = find(id);
                            if (flow == nullptr || flow->op != my) return;
                            if (!status) {
                              log("journaling the abort of " + flow->label() +
                                  " failed: " + status.error().toString());
                            }
                            finish(*flow, error, how);
                          }));
}

void FlowRuntime::finish(FlowState& f, Result<Bytes> result, vault::FlowOutcome how) {
  if (f.phase == FlowPhase::finishing) return;
  f.phase = FlowPhase::finishing;
  ++f.op;
  f.waiter = {};
  f.receiving.reset();
  if (f.sleep_timer != 0) executor_.cancel(std::exchange(f.sleep_timer, 0));
  if (f.retry_timer != 0) executor_.cancel(std::exchange(f.retry_timer, 0));
  if (f.timeout_timer != 0) executor_.cancel(std::exchange(f.timeout_timer, 0));
  f.root.reset();
  f.outcome = how;
  EndInfo end;
  if (result) {
    f.result = std::move(result).value();
    if (f.result.size() > vault::flow_result_bytes_max) {
      f.outcome = vault::FlowOutcome::failed;
      result = makeError(Errc::too_large, "the result of " + std::to_string(f.result.size()) +
                                              " bytes is over flow_result_bytes_max");
      f.result.clear();
    }
  }
  if (!result) {
    Error error = result.error();
    if (error.message.size() > vault::flow_result_bytes_max / 2) {
      error.message.resize(vault::flow_result_bytes_max / 2);
    }
    f.error = error;
    f.result = encodeFlowError(error);
    end = EndInfo{false, error.code,
                  "flow " + quoted(f.name) + " of " + quoted(config_.self) + " failed: " +
                      error.message};
    if (end.message.size() > 4096) end.message.resize(4096);
  }
  f.waiting_text = "ending its sessions";
  bool sends = false;
  for (const FlowState::SessionState& s : f.sessions) {
    if (!((s.we_opened && s.sent == 0) || s.peer_ended)) sends = true;
  }
  if (f.held.empty() || !sends) {
    // Deferred events nothing outside depends on: not journaled (the end
    // record replaces the journal, and counts them).
    f.dropped_at_end = f.held.size();
    f.held.clear();
    return endSessions(f, std::move(end));
  }
  // The session ends may depend on them: journaled first.
  std::vector<Bytes> events = std::move(f.held);
  f.held.clear();
  const uint64_t first = f.held_from;
  ++stats_.store_appends;
  store_.appendEventsAsync(f.id, first, std::move(events),
                           storeDone([this, id = f.id, end = std::move(end)](const Status& status) mutable {
                             FlowState* flow = find(id);
                             if (flow == nullptr) return;
                             if (!status) {
                               log("journaling the last events of " + flow->label() +
                                   " failed: " + status.error().toString());
                             }
                             endSessions(*flow, std::move(end));
                           }));
}

void FlowRuntime::endSessions(FlowState& f, EndInfo end) {
  // Every session the peer knows of and has not ended ends with the outcome.
  auto pending = std::make_shared<size_t>(1);
  auto record = [this, id = f.id, pending] {
    if (--*pending != 0) return;
    FlowState* flow = find(id);
    if (flow == nullptr) return;
    flow->waiting_text = "recording its end";
    ++stats_.store_finishes;
    store_.finishFlowAsync(id, flow->outcome, flow->result, flow->dropped_at_end,
                           storeDone([this, id](const Status& status) {
      FlowState* done = find(id);
      if (done == nullptr) return;
      if (!status) {
        // It stays unfinished in the store and runs again after a restart.
        log("recording the end of " + done->label() + " failed: " + status.error().toString());
      }
      for (auto& [key, queue] : done->inbox) {
        for (auto& [seq, waiting] : queue) {
          if (waiting.id) consume(waiting.peer, *waiting.id);
        }
      }
      ++stats_.flows_finished;
      FlowInfo info = infoOf(*done);
      info.phase = FlowPhase::finished;
      flows_.erase(id);
      if (status && config_.ended) config_.ended(info.id);
      if (status && hooks_.finished) hooks_.finished(info);
      remember(std::move(info));
    }));
  };
  for (FlowState::SessionState& s : f.sessions) {
    if ((s.we_opened && s.sent == 0) || s.peer_ended) continue;
    const uint64_t seq = s.sent++;
    Bytes message = encodeSessionMessage(s.key, s.we_opened, seq,
                                         [&](auto b) { setEnd(b.initEnd(), end); });
    ++*pending;
    messaging_.send(s.peer, sessionMessageId(s.key.opener, s.key.index, s.we_opened, seq),
                    std::move(message),
                    [this, alive = std::weak_ptr<int>(alive_), record, peer = s.peer](
                        const Status& status) {
                      if (!alive.lock()) return;
                      if (!status) {
                        log("ending a session with " + quoted(peer) + " failed: " +
                            status.error().toString());
                      }
                      postBack(record);
                    });
  }
  record();
}

void FlowRuntime::onMessage(std::string_view peer, const MessageId& id, ByteView payload) {
  auto decoded = decodeSessionMessage(payload);
  if (!decoded) {
    ++stats_.messages_dropped;
    log("dropped a malformed message from " + quoted(peer) + ": " + decoded.error().toString());
    consume(peer, id);
    return;
  }
  Decoded& d = decoded.value();
  if (sessionMessageId(d.key.opener, d.key.index, d.to_responder, d.seq) != id) {
    ++stats_.messages_dropped;
    log("dropped a session message from " + quoted(peer) + " whose id does not match its session and seq");
    consume(peer, id);
    return;
  }
  const FlowId local = d.to_responder ? responderFlowId(d.key.opener, d.key.index) : d.key.opener;
  if (FlowState* f = find(local)) {
    if (d.kind == Decoded::Kind::init || f->phase == FlowPhase::finishing || f->aborting) {
      ++stats_.messages_duplicate;
      consume(peer, id);
      return;
    }
    f->arrive(peer, id, std::move(d));
    return;
  }
  if (d.to_responder && d.kind == Decoded::Kind::init) {
    startResponder(peer, id, d);
    return;
  }
  auto stored = store_.flow(local);
  if (!stored) {
    log("reading flow " + local.hex() + " failed: " + stored.error().toString());
    return;  // left unconsumed: handed over again after a restart
  }
  if (stored.value() && stored.value()->status == vault::FlowStatus::parked) return;
  ++stats_.messages_dropped;
  if (!stored.value()) {
    log("dropped a message from " + quoted(peer) + " for flow " + local.shortHex() +
        ", which " + quoted(config_.self) + " does not know");
  }
  consume(peer, id);
}

void FlowRuntime::refuseResponder(std::string_view peer, const MessageId& init_id,
                                  const Decoded& d, const Error& error) {
  log("refused flow " + quoted(d.flow_name) + " for " + quoted(peer) + ": " + error.toString());
  Bytes message = encodeSessionMessage(d.key, false, 0, [&](auto b) {
    setEnd(b.initEnd(), EndInfo{false, error.code, error.message});
  });
  messaging_.send(peer, sessionMessageId(d.key.opener, d.key.index, false, 0), std::move(message),
                  [this, alive = std::weak_ptr<int>(alive_), peer = std::string(peer),
                   init_id](const Status& status) {
                    if (alive.lock() && status) consume(peer, init_id);
                  });
}

void FlowRuntime::startResponder(std::string_view peer, const MessageId& init_id,
                                 const Decoded& d) {
  const FlowId id = responderFlowId(d.key.opener, d.key.index);
  auto stored = store_.flow(id);
  if (!stored) {
    log("reading flow " + id.hex() + " failed: " + stored.error().toString());
    return;
  }
  if (stored.value()) {  // an init handled before
    ++stats_.messages_duplicate;
    consume(peer, init_id);
    return;
  }
  if (flows_.size() >= config_.flows_running_max) {
    return refuseResponder(peer, init_id, d,
                           makeError(Errc::unavailable,
                                     quoted(config_.self) + " runs flows_running_max (" +
                                         std::to_string(config_.flows_running_max) + ") flows"));
  }
  auto owned = std::make_unique<FlowState>(*this, id);
  FlowState& f = *owned;
  f.name = d.flow_name;
  f.responder = true;
  f.counterparty_peer = std::string(peer);
  f.initiator_name = d.initiator_name;
  f.started_micros = clock_.nowMicros();
  f.timeout_micros = config_.flow_timeout_micros;
  f.openInbound(d.key, std::string(peer), d.payload);
  flows_.emplace(id, std::move(owned));
  ++stats_.responders_started;

  Bytes args{args_responder};
  append(args, buildCanonical<schema::flows::ResponderStart>([&](auto b) {
           b.setPeer(std::string(peer));
           b.setInitiatorFlow(asData(d.key.opener.view()));
           b.setSessionIndex(d.key.index);
           b.setInitiatorFlowName(d.initiator_name);
           b.setFirstPayload(asData(d.payload));
         }));
  ++stats_.store_begins;
  store_.beginFlowAsync(id, d.flow_name, args, f.started_micros,
                        storeDone([this, id, peer = std::string(peer), init_id](const Status& status) {
                          FlowState* flow = find(id);
                          if (flow == nullptr) return;
                          if (!status) {
                            // Left unconsumed: handed over again after a restart.
                            log("starting responder " + flow->label() + " failed: " +
                                status.error().toString());
                            flow->root.reset();
                            flows_.erase(id);
                            return;
                          }
                          consume(peer, init_id);
                          begun(*flow);
                        }));
}

FlowInfo FlowRuntime::infoOf(const FlowState& f) const {
  FlowInfo info;
  info.id = f.id;
  info.name = f.name;
  info.phase = f.phase;
  info.responder = f.responder;
  info.counterparty = f.counterparty_peer;
  info.step = f.step_text;
  info.waiting = f.waiting_text;
  if (!f.names.empty()) info.waiting += " (in subflow " + quoted(f.names.back()) + ")";
  info.startedMicros = f.started_micros;
  info.eventsJournaled = f.journal_next;
  info.sessions = static_cast<uint32_t>(f.sessions.size());
  if (f.phase == FlowPhase::finishing) {
    info.outcome = f.outcome;
    if (f.error) {
      info.error = f.error;
    } else {
      info.result = f.result;
    }
  }
  return info;
}

void FlowRuntime::remember(FlowInfo info) {
  if (config_.finished_flows_listed_max == 0) return;
  while (recent_.size() >= config_.finished_flows_listed_max) recent_.pop_front();
  recent_.push_back(std::move(info));
}

std::vector<FlowInfo> FlowRuntime::list() const {
  std::vector<FlowInfo> out(recent_.begin(), recent_.end());
  std::vector<FlowInfo> live;
  live.reserve(flows_.size());
  for (const auto& [id, flow] : flows_) live.push_back(infoOf(*flow));
  std::sort(live.begin(), live.end(), [](const FlowInfo& a, const FlowInfo& b) {
    return a.startedMicros != b.startedMicros ? a.startedMicros < b.startedMicros : a.id < b.id;
  });
  out.insert(out.end(), live.begin(), live.end());
  return out;
}

std::vector<FlowInfo> FlowRuntime::hospital() const {
  std::vector<FlowInfo> out;
  for (const auto& [id, flow] : flows_) {
    if (flow->phase == FlowPhase::parked) out.push_back(infoOf(*flow));
  }
  auto stored = store_.hospital();
  if (!stored) {
    log("reading the hospital: " + stored.error().toString());
    return out;
  }
  for (const auto& cp : stored.value()) {
    if (find(cp.id) != nullptr) continue;
    if (auto info = show(cp.id)) out.push_back(std::move(info).value());
  }
  return out;
}

Result<FlowInfo> FlowRuntime::show(const FlowId& id) const {
  if (const FlowState* f = find(id)) return infoOf(*f);
  for (auto it = recent_.rbegin(); it != recent_.rend(); ++it) {
    if (it->id == id) return *it;
  }
  auto stored = store_.flow(id);
  if (!stored) return stored.error();
  if (!stored.value()) {
    return makeError(Errc::not_found, "no flow " + id.hex() + " on " + quoted(config_.self));
  }
  const vault::FlowCheckpoint& cp = *stored.value();
  FlowInfo info;
  info.id = id;
  info.name = cp.flowName;
  info.startedMicros = cp.startedMicros;
  info.eventsJournaled = cp.journalLength;
  if (cp.status == vault::FlowStatus::finished) {
    info.phase = FlowPhase::finished;
    info.outcome = cp.outcome;
    if (cp.outcome == vault::FlowOutcome::ok) {
      info.result = cp.result;
    } else {
      info.error = decodeFlowError(cp.result);
    }
  } else {
    // In the store, not running here: parked before a restart.
    info.phase = cp.status == vault::FlowStatus::parked ? FlowPhase::parked : FlowPhase::starting;
    info.waiting = cp.status == vault::FlowStatus::parked
                       ? "parked in the hospital: " + cp.parkReason + " (retry or kill it)"
                       : "";
  }
  return info;
}

}  // namespace ccal::flows
