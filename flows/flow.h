#pragma once
// Flows as straight-line C++20 coroutines.
//
// A flow is a coroutine returning Flow<T>. It talks to other nodes through
// sessions and to the world through its FlowContext, and every value it
// consumes from outside (a message, a timer, the time, a random number, a
// subflow's or a call's outcome) is an event the runtime journals durably
// before anything that depends on it is seen outside the flow: a message
// or a timer before the flow sees it; the others (which the flow could
// obtain again after a crash) at the latest with the flow's next send,
// effecting call(), received message or timer (flows/flow_runtime.h,
// "Deferred events"). After a crash the runtime runs the flow again from its start
// against that journal (flows/flow_runtime.h): a flow must therefore be
// deterministic given its arguments and its events. It must not read the
// system clock, a random device, global mutable state or anything else that
// does not come through its context, and it must not keep pointers to
// objects outside its own frame other than the FlowContext.
//
//   Flow<Bytes> ping(FlowContext& ctx, Bytes args) {
//     Session s = co_await ctx.initiate("O=Bank B, L=Haikou, C=CN");
//     Bytes reply = co_await s.sendAndReceive(args);
//     co_await ctx.sleep(1'000'000);
//     co_return reply;
//   }
//
// Failures: an awaited operation that fails (the peer's flow failed or ended,
// a message the flow's decoder refuses, a send the messaging layer refuses)
// throws FlowFailure; a flow may catch it, else the flow ends with its error.
// Any other exception ends the flow too (code `unavailable`, the exception's
// text). Cancellation (kill, timeout) destroys the coroutine where it waits:
// destructors run, no exception is thrown into it.
//
// Coroutine parameters: take arguments by value (a coroutine's reference
// parameters dangle once the caller's expression ends), except the
// FlowContext, which lives as long as the flow.
//
// Threading: a flow runs on its runtime's executor only.

#include <coroutine>
#include <exception>
#include <functional>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>

#include "ledger/bytes.h"
#include "ledger/result.h"
#include "ledger/secure_hash.h"

namespace ccal::flows {

// Thrown inside a flow to end it (or a subflow) with an error.
class FlowFailure : public std::exception {
 public:
  explicit FlowFailure(Error error) : error_(std::move(error)) {
    if (error_.code == Errc::ok) error_.code = Errc::unavailable;
    what_ = error_.toString();
  }
  const Error& error() const { return error_; }
  const char* what() const noexcept override { return what_.c_str(); }

 private:
  Error error_;
  std::string what_;
};

[[noreturn]] inline void failFlow(Errc code, std::string message) {
  throw FlowFailure(makeError(code, std::move(message)));
}

class Session;
class FlowContext;

namespace detail {

// The error a flow ends with when it lets an exception out.
Error errorOfException(std::exception_ptr e);

struct FinalAwaiter {
  bool await_ready() const noexcept { return false; }
  template <class Promise>
  std::coroutine_handle<> await_suspend(std::coroutine_handle<Promise> h) noexcept {
    std::coroutine_handle<> next = h.promise().continuation;
    return next ? next : std::noop_coroutine();
  }
  void await_resume() const noexcept {}
};

}  // namespace detail

// A lazily started coroutine: it runs when awaited (inline, in the awaiting
// flow: `T v = co_await child(ctx, ...)`, which rethrows its failure) or when
// the runtime starts it. Movable, owns its frame.
template <class T>
class [[nodiscard]] Flow {
  static_assert(!std::is_void_v<T> && !std::is_reference_v<T>,
                "Flow<T> needs a value type (use bool or an empty struct for none)");

 public:
  struct promise_type {
    std::variant<std::monostate, T, Error> result;
    std::coroutine_handle<> continuation;

    Flow get_return_object() { return Flow(Handle::from_promise(*this)); }
    std::suspend_always initial_suspend() const noexcept { return {}; }
    detail::FinalAwaiter final_suspend() const noexcept { return {}; }
    void return_value(T value) { result.template emplace<1>(std::move(value)); }
    void unhandled_exception() {
      result.template emplace<2>(detail::errorOfException(std::current_exception()));
    }
  };
  using Handle = std::coroutine_handle<promise_type>;

  Flow(Flow&& other) noexcept : h_(std::exchange(other.h_, {})) {}
  Flow& operator=(Flow&& other) noexcept {
    if (this != &other) {
      if (h_) h_.destroy();
      h_ = std::exchange(other.h_, {});
    }
    return *this;
  }
  Flow(const Flow&) = delete;
  Flow& operator=(const Flow&) = delete;
  ~Flow() {
    if (h_) h_.destroy();
  }

  // Awaiting a flow runs it and gives its value, or throws its failure.
  auto operator co_await() noexcept { return Awaiter<false>{h_}; }
  // Awaiting asResult() gives Result<T> instead of throwing.
  auto asResult() noexcept { return Awaiter<true>{h_}; }

  // For the runtime: the frame, and its outcome once done().
  Handle handle() const { return h_; }
  bool done() const { return h_ && h_.done(); }
  Result<T> takeResult() {
    auto& r = h_.promise().result;
    CCAL_ASSERT_MSG(r.index() != 0, "takeResult() of a flow that has not finished");
    if (r.index() == 2) return std::get<2>(r);
    return std::move(std::get<1>(r));
  }

 private:
  explicit Flow(Handle h) : h_(h) {}

  template <bool as_result>
  struct Awaiter {
    Handle h;
    bool await_ready() const noexcept { return false; }
    std::coroutine_handle<> await_suspend(std::coroutine_handle<> awaiting) noexcept {
      h.promise().continuation = awaiting;
      return h;  // runs the child at once, in this flow
    }
    auto await_resume() {
      auto& r = h.promise().result;
      CCAL_ASSERT(r.index() != 0);
      if constexpr (as_result) {
        return r.index() == 2 ? Result<T>(std::get<2>(r)) : Result<T>(std::move(std::get<1>(r)));
      } else {
        if (r.index() == 2) throw FlowFailure(std::get<2>(r));
        return std::move(std::get<1>(r));
      }
    }
  };

  Handle h_;
};

namespace detail {

// What a flow asks its runtime for; see FlowCore::serve.
enum class RequestKind : uint8_t {
  initiate,       // text: the party
  send,           // session, payload
  receive,        // session
  sleep,          // number: delay in microseconds
  now,
  random,
  subflow_ended,  // text: the subflow's name; error: its failure
  call,           // text: the call's name; call: the operation
};

// A service operation a flow awaits through FlowContext::call: it starts
// the operation and calls `done` exactly once with its outcome, on any
// thread (the runtime posts it back to its executor).
using CallDone = std::function<void(Result<Bytes>)>;
using CallOp = std::function<void(CallDone done)>;

struct Request {
  RequestKind kind = RequestKind::now;
  uint32_t session = 0;
  int64_t number = 0;
  std::string text;
  Bytes payload;
  std::optional<Error> error;
  CallOp call;
  bool reads_only = false;  // call: the operation has no effect outside the flow
};

struct Answer {
  std::optional<Error> error;  // the operation failed: thrown as FlowFailure
  Bytes bytes;                 // receive
  int64_t number = 0;          // now, random (as bits)
  uint32_t session = 0;        // initiate
  std::string peer;            // initiate
};

class FlowCore;

// (A class with a constructor, not an aggregate: g++ 12 miscompiles brace-
// initialised aggregate temporaries inside co_await expressions.)
template <class R>
class Await {
 public:
  Await(FlowCore* c, Request r) : core(c), request(std::move(r)) {}
  FlowCore* core;
  Request request;
  bool await_ready() const noexcept { return false; }
  bool await_suspend(std::coroutine_handle<> h);
  R await_resume();
};

}  // namespace detail

using CallDone = detail::CallDone;
using CallOp = detail::CallOp;

// One side of a conversation with a peer's flow. A cheap handle, valid while
// its flow runs.
class Session {
 public:
  Session(detail::FlowCore* core, uint32_t index, std::string peer)
      : core_(core), index_(index), peer_(std::move(peer)) {}

  const std::string& peer() const { return peer_; }
  uint32_t index() const { return index_; }  // the flow's local session number

  // Resumes once the message is durably queued for the peer (the first send
  // of an initiated session opens it on the peer).
  detail::Await<bool> send(Bytes payload) {
    detail::Request r;
    r.kind = detail::RequestKind::send;
    r.session = index_;
    r.payload = std::move(payload);
    return detail::Await<bool>(core_, std::move(r));
  }
  // The peer's next message; throws FlowFailure when the peer's flow ended.
  detail::Await<Bytes> receive() {
    detail::Request r;
    r.kind = detail::RequestKind::receive;
    r.session = index_;
    return detail::Await<Bytes>(core_, std::move(r));
  }
  // The next message decoded by `decode(ByteView) -> Result<T>`, which must
  // validate it; a message it refuses ends the flow (FlowFailure) with an
  // error naming `what`, the session and the decoder's reason.
  template <class T, class Decode>
  Flow<T> receive(Decode decode, std::string what) {
    return receiveTyped<T>(*this, std::move(decode), std::move(what));
  }
  Flow<Bytes> sendAndReceive(Bytes payload) { return sendAndReceiveOn(*this, std::move(payload)); }

 private:
  template <class T, class Decode>
  static Flow<T> receiveTyped(Session s, Decode decode, std::string what) {
    Bytes bytes = co_await s.receive();
    Result<T> value = decode(ByteView(bytes));
    if (!value) {
      throw FlowFailure(makeError(value.error().code,
                                  "a malformed " + what + " (message of " +
                                      std::to_string(bytes.size()) + " bytes) from '" + s.peer_ +
                                      "' on session " + std::to_string(s.index_) + ": " +
                                      value.error().message));
    }
    co_return std::move(value).value();
  }
  static Flow<Bytes> sendAndReceiveOn(Session s, Bytes payload) {
    co_await s.send(std::move(payload));
    co_return co_await s.receive();
  }

  detail::FlowCore* core_;
  uint32_t index_;
  std::string peer_;
};

namespace detail {

// The runtime's side of one running flow (flows/flow_runtime.cpp).
class FlowCore {
 public:
  virtual ~FlowCore() = default;
  // Starts serving `request`. True when the answer is ready at once (the
  // flow goes on without suspending: a replayed event, a suppressed send);
  // false when `waiter` will be resumed (from the executor) once it is.
  virtual bool serve(Request request, std::coroutine_handle<> waiter) = 0;
  virtual Answer takeAnswer() = 0;
  virtual void pushSubFlow(std::string name) = 0;
  virtual void popSubFlow() = 0;
  virtual void setStep(std::string text) = 0;
  virtual const SecureHash& flowId() const = 0;
  virtual const std::string& flowName() const = 0;
  virtual const std::string& self() const = 0;
  virtual std::optional<Session> counterparty() = 0;
  // A live draw from the runtime's random source (not journaled by itself:
  // FlowContext::randomBytes journals what it draws as a call's outcome).
  virtual uint64_t drawRandom() = 0;
};

template <class R>
bool Await<R>::await_suspend(std::coroutine_handle<> h) {
  return !core->serve(std::move(request), h);
}

}  // namespace detail

// What a flow sees of its runtime. Lives as long as the flow.
class FlowContext {
 public:
  explicit FlowContext(detail::FlowCore& core) : core_(&core) {}

  const SecureHash& id() const { return core_->flowId(); }
  const std::string& flowName() const { return core_->flowName(); }
  const std::string& self() const { return core_->self(); }  // this node's name

  // Opens a session with `party` on behalf of the running (sub)flow, which
  // must be registered as initiating; nothing is sent until the first send.
  detail::Await<Session> initiate(std::string party) {
    detail::Request r;
    r.kind = detail::RequestKind::initiate;
    r.text = std::move(party);
    return detail::Await<Session>(core_, std::move(r));
  }
  // A responder's session with the flow that started it; nullopt in an
  // initiating flow.
  std::optional<Session> counterparty() { return core_->counterparty(); }

  detail::Await<bool> sleep(int64_t delay_micros) {
    detail::Request r;
    r.kind = detail::RequestKind::sleep;
    r.number = delay_micros;
    return detail::Await<bool>(core_, std::move(r));
  }
  // The node's clock (microseconds since the epoch) and a random number,
  // journaled: a replay sees the same values.
  detail::Await<int64_t> now() { return detail::Await<int64_t>(core_, request(detail::RequestKind::now)); }
  detail::Await<uint64_t> random() {
    return detail::Await<uint64_t>(core_, request(detail::RequestKind::random));
  }

  // Runs `child` as a subflow named `name` (the name its initiate() calls
  // use, and the one a replay checks): its outcome is journaled; a failure
  // is rethrown.
  template <class T>
  Flow<T> subFlow(std::string name, Flow<T> child) {
    return runSubFlow(core_, std::move(name), std::move(child));
  }

  // A journaled service call: `op` starts an asynchronous operation of the
  // node's services (a vault read or write, a notarisation) and completes
  // with Result<Bytes>. Live, the runtime makes every earlier event of the
  // flow durable, runs op, and resumes the flow with its outcome (a failure
  // is thrown as FlowFailure), which it journals with the flow's next
  // durable event. In a replay the journaled outcome is returned and op is
  // NOT run again; a replay whose call has another name than the journal's
  // is a divergence. If the node crashed while the call was in flight (no
  // outcome journaled), op runs again after the restart: operations used
  // this way must be idempotent. Reads the flow decides on (the vault's
  // view of the inputs, which transactions are missing) go through call()
  // too, so that a replay sees what the live run saw.
  detail::Await<Bytes> call(std::string name, detail::CallOp op) {
    detail::Request r;
    r.kind = detail::RequestKind::call;
    r.text = std::move(name);
    r.call = std::move(op);
    return detail::Await<Bytes>(core_, std::move(r));
  }
  // The same, decoded by `decode(ByteView) -> Result<T>`; an outcome it
  // refuses ends the flow with an error naming the call.
  template <class T, class Decode>
  Flow<T> call(std::string name, detail::CallOp op, Decode decode) {
    return callTyped<T>(core_, std::move(name), std::move(op), std::move(decode), false);
  }
  // A call whose operation only reads (the vault's transactions, which are
  // missing, random bytes): it has no effect outside the flow, so the
  // runtime may run it before the flow's earlier events are durable. Its
  // outcome is journaled like any call's. Anything that writes, sends or
  // notarises goes through call(), which runs only once every event before
  // it is durable.
  detail::Await<Bytes> read(std::string name, detail::CallOp op) {
    detail::Request r;
    r.kind = detail::RequestKind::call;
    r.text = std::move(name);
    r.call = std::move(op);
    r.reads_only = true;
    return detail::Await<Bytes>(core_, std::move(r));
  }
  template <class T, class Decode>
  Flow<T> read(std::string name, detail::CallOp op, Decode decode) {
    return callTyped<T>(core_, std::move(name), std::move(op), std::move(decode), true);
  }

  // `count` (1..random_bytes_max) random bytes from the runtime's source,
  // journaled as ONE event (a call named "random.bytes"), where random()
  // journals one event per 64 bits: a salt costs one durable write.
  detail::Await<Bytes> randomBytes(size_t count) {
    CCAL_ASSERT(count >= 1 && count <= random_bytes_max);
    detail::FlowCore* core = core_;
    return read("random.bytes", [core, count](CallDone done) {
      Bytes out;
      out.reserve(count + 8);
      while (out.size() < count) {
        const uint64_t r = core->drawRandom();
        for (int b = 0; b < 8 && out.size() < count; ++b) out.push_back(static_cast<uint8_t>(r >> (8 * b)));
      }
      done(std::move(out));
    });
  }
  static constexpr size_t random_bytes_max = 256;

  // The progress text that status shows ("collecting signatures").
  void step(std::string text) { core_->setStep(std::move(text)); }

 private:
  static detail::Request request(detail::RequestKind kind) {
    detail::Request r;
    r.kind = kind;
    return r;
  }
  template <class T>
  static Flow<T> runSubFlow(detail::FlowCore* core, std::string name, Flow<T> child) {
    core->pushSubFlow(name);
    Result<T> result = co_await child.asResult();
    core->popSubFlow();
    // (Computed before the co_await: g++ 12 evaluates both arms of a
    // conditional inside a co_await operand.)
    std::optional<Error> failure;
    if (!result) failure = result.error();
    co_await endSubFlow(core, name, std::move(failure));
    if (!result) throw FlowFailure(result.error());
    co_return std::move(result).value();
  }

  template <class T, class Decode>
  static Flow<T> callTyped(detail::FlowCore* core, std::string name, detail::CallOp op,
                           Decode decode, bool reads_only) {
    detail::Request r;
    r.kind = detail::RequestKind::call;
    r.text = name;
    r.call = std::move(op);
    r.reads_only = reads_only;
    Bytes bytes = co_await detail::Await<Bytes>(core, std::move(r));
    Result<T> value = decode(ByteView(bytes));
    if (!value) {
      throw FlowFailure(makeError(value.error().code, "the outcome of call '" + name +
                                                          "' does not decode: " +
                                                          value.error().message));
    }
    co_return std::move(value).value();
  }

  static detail::Await<bool> endSubFlow(detail::FlowCore* core, std::string name,
                                        std::optional<Error> error) {
    detail::Request ended;
    ended.kind = detail::RequestKind::subflow_ended;
    ended.text = std::move(name);
    ended.error = std::move(error);
    return detail::Await<bool>(core, std::move(ended));
  }

  detail::FlowCore* core_;
};

template <class R>
R detail::Await<R>::await_resume() {
  Answer a = core->takeAnswer();
  if (a.error) throw FlowFailure(std::move(*a.error));
  if constexpr (std::is_same_v<R, Bytes>) {
    return std::move(a.bytes);
  } else if constexpr (std::is_same_v<R, Session>) {
    return Session(core, a.session, std::move(a.peer));
  } else if constexpr (std::is_same_v<R, int64_t>) {
    return a.number;
  } else if constexpr (std::is_same_v<R, uint64_t>) {
    return static_cast<uint64_t>(a.number);
  } else {
    static_assert(std::is_same_v<R, bool>);
    return true;
  }
}

}  // namespace ccal::flows
