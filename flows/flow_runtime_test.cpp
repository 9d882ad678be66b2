#include "flows/flow_runtime.h"

#include <doctest/doctest.h>

#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "flows/delivery.h"
#include "flows/flows_testing.h"
#include "ledger/contract.h"
#include "test/support/temp_dir.h"
#include "vault/message_store.h"
#include "vault/vault.h"

using namespace ccal;
using namespace ccal::flows;
using namespace ccal::flows::testing;

namespace {

const std::string alice = "O=Haikou Fishing Cooperative, L=Haikou, C=CN";
const std::string bob = "O=Sanya Tea Cooperative, L=Sanya, C=CN";
const std::string carol = "O=Hainan Rural Bank, L=Haikou, C=CN";

Bytes bytesOf(const std::string& s) { return Bytes(s.begin(), s.end()); }
std::string textOf(ByteView b) { return std::string(b.begin(), b.end()); }


// --- the flows the tests run ---------------------------------------------------------------

// ping: args "<peer>|<rounds>"; sends "ping i/n", expects "pong i".
Flow<Bytes> pingFlow(FlowContext& ctx, Bytes args) {
  const std::string text = textOf(args);
  const std::string peer = text.substr(0, text.find('|'));
  const int rounds = std::stoi(text.substr(text.find('|') + 1));
  Session s = co_await ctx.initiate(peer);
  for (int i = 0; i < rounds; ++i) {
    ctx.step("round " + std::to_string(i));
    Bytes reply = co_await s.sendAndReceive(
        bytesOf("ping " + std::to_string(i) + "/" + std::to_string(rounds)));
    if (textOf(reply) != "pong " + std::to_string(i)) {
      failFlow(Errc::malformed, "round " + std::to_string(i) + " got '" + textOf(reply) + "'");
    }
  }
  co_return bytesOf("ponged " + std::to_string(rounds));
}

Flow<Bytes> pongFlow(FlowContext& ctx, Bytes) {
  Session s = *ctx.counterparty();
  for (;;) {
    const std::string ping = textOf(co_await s.receive());
    const size_t space = ping.find(' '), slash = ping.find('/');
    const int i = std::stoi(ping.substr(space + 1, slash - space - 1));
    const int n = std::stoi(ping.substr(slash + 1));
    co_await s.send(bytesOf("pong " + std::to_string(i)));
    if (i + 1 == n) co_return bytesOf("answered " + std::to_string(n));
  }
}

// A subflow (ping as "ping-sub"), a sleep, the time and a random number.
Flow<Bytes> sleeperFlow(FlowContext& ctx, Bytes args) {
  Bytes sub = co_await ctx.subFlow("ping-sub", pingFlow(ctx, args));
  const int64_t before = co_await ctx.now();
  co_await ctx.sleep(2'000'000);
  const int64_t after = co_await ctx.now();
  const uint64_t r = co_await ctx.random();
  (void)r;
  if (after - before < 2'000'000) failFlow(Errc::timeout, "slept too little");
  co_return bytesOf(textOf(sub) + ", slept");
}

// Asks the peer for a flow; the peer may not have it, or may throw.
Flow<Bytes> askFlow(FlowContext& ctx, Bytes args) {
  Session s = co_await ctx.initiate(textOf(args));
  Bytes reply = co_await s.sendAndReceive(bytesOf("hello"));
  co_return reply;
}

Flow<Bytes> throwerFlow(FlowContext& ctx, Bytes) {
  Session s = *ctx.counterparty();
  co_await s.receive();
  throw std::runtime_error("the thrower refuses");
}

// Answers with a message the asker's typed decoder refuses.
Flow<Bytes> garbageFlow(FlowContext& ctx, Bytes) {
  Session s = *ctx.counterparty();
  co_await s.receive();
  co_await s.send(bytesOf("n=12x"));
  co_return Bytes{};
}

Result<int> decodeCount(ByteView b) {
  const std::string text = textOf(b);
  if (text.rfind("n=", 0) != 0) return makeError(Errc::malformed, "no 'n=' prefix");
  for (size_t i = 2; i < text.size(); ++i) {
    if (text[i] < '0' || text[i] > '9') {
      return makeError(Errc::malformed, "'" + text.substr(2) + "' is not a number");
    }
  }
  return std::stoi(text.substr(2));
}

Flow<Bytes> typedAskFlow(FlowContext& ctx, Bytes args) {
  Session s = co_await ctx.initiate(textOf(args));
  co_await s.send(bytesOf("how many?"));
  const int n = co_await s.receive<int>(decodeCount, "count");
  co_return bytesOf(std::to_string(n));
}

// v1 receives first, then sleeps; v2 (after a "fix") sleeps first: its replay diverges.
Flow<Bytes> divergeV1(FlowContext& ctx, Bytes args) {
  Session s = co_await ctx.initiate(textOf(args));
  co_await s.sendAndReceive(bytesOf("ping 0/1"));
  co_await ctx.sleep(60'000'000);
  co_return bytesOf("v1");
}
Flow<Bytes> divergeV2(FlowContext& ctx, Bytes args) {
  Session s = co_await ctx.initiate(textOf(args));
  co_await ctx.sleep(60'000'000);
  co_await s.sendAndReceive(bytesOf("ping 0/1"));
  co_return bytesOf("v2");
}

// One round of two, then a long sleep: the peer's pong waits for round 1.
Flow<Bytes> holdFlow(FlowContext& ctx, Bytes args) {
  Session s = co_await ctx.initiate(textOf(args));
  co_await s.sendAndReceive(bytesOf("ping 0/2"));
  co_await ctx.sleep(3'600'000'000);
  co_return bytesOf("held");
}

// Opens sessions without sending until the runtime refuses one.
Flow<Bytes> manySessionsFlow(FlowContext& ctx, Bytes args) {
  for (int i = 0;; ++i) {
    Session s = co_await ctx.initiate(textOf(args));
    (void)s;
    if (i > 1000) co_return bytesOf("no limit");
  }
}

// Answers the first message with ten.
Flow<Bytes> spamFlow(FlowContext& ctx, Bytes) {
  Session s = *ctx.counterparty();
  co_await s.receive();
  for (int i = 0; i < 10; ++i) co_await s.send(bytesOf("spam " + std::to_string(i)));
  co_return Bytes{};
}

// Sends once, then sleeps while the answers pile up.
Flow<Bytes> askAndSleepFlow(FlowContext& ctx, Bytes args) {
  Session s = co_await ctx.initiate(textOf(args));
  co_await s.send(bytesOf("go"));
  co_await ctx.sleep(3'600'000'000);
  co_return Bytes{};
}

Flow<Bytes> longSleepFlow(FlowContext& ctx, Bytes) {
  co_await ctx.sleep(3'600'000'000);
  co_return bytesOf("woke");
}

// One member: vault store, message store, Delivery, flow store and runtime.
struct Member {
  std::string name;
  Hub& hub;
  TestExecutor& executor;
  ccal::testing::TempDir dir{"ccal-flow-runtime-test"};
  ContractRegistry registry;
  std::function<void(FlowRuntime&)> registerFlows;
  std::unique_ptr<vault::Vault> vault;
  std::unique_ptr<vault::MessageStore> messages;
  std::unique_ptr<vault::FlowStore> flowStore;
  std::unique_ptr<HubLink> link;
  std::unique_ptr<Delivery> delivery;
  std::unique_ptr<FlowRuntime> runtime;
  std::vector<std::string> logs;
  std::map<FlowId, FlowInfo> finished;
  std::function<void(FlowRuntimeConfig&)> tweak;

  Member(std::string n, Hub& h, TestExecutor& ex, std::function<void(FlowRuntime&)> reg,
         std::function<void(FlowRuntimeConfig&)> t = {})
      : name(std::move(n)), hub(h), executor(ex), registerFlows(std::move(reg)), tweak(std::move(t)) {
    open();
  }
  ~Member() { close(); }

  void open() {
    vault::VaultConfig vc;
    vc.store.path = dir.path;
    vc.store.durable = false;
    vault = vault::Vault::open(vc, registry, {}).value();
    TestExecutor* clock = &executor;
    messages = std::make_unique<vault::MessageStore>(vault->store(),
                                                     [clock] { return clock->nowMicros(); });
    flowStore = std::make_unique<vault::FlowStore>(vault->store(),
                                                   [clock] { return clock->nowMicros(); });
    link = std::make_unique<HubLink>(hub, name);
    DeliveryConfig dc;
    dc.log = [this](std::string_view line) { logs.emplace_back(line); };
    delivery = std::make_unique<Delivery>(*link, *messages, executor, executor, dc);
    FlowRuntimeConfig fc;
    fc.self = name;
    fc.flow_timeout_micros = 0;
    uint64_t counter = 0;
    fc.random_u64 = [counter]() mutable { return ++counter * 0x9e3779b97f4a7c15ull; };
    fc.log = [this](std::string_view line) { logs.emplace_back(line); };
    if (tweak) tweak(fc);
    runtime = std::make_unique<FlowRuntime>(*delivery, executor, executor, *flowStore, fc);
    registerFlows(*runtime);
    FlowRuntime::Hooks hooks;
    hooks.finished = [this](const FlowInfo& info) { finished[info.id] = info; };
    runtime->setHooks(std::move(hooks));
    REQUIRE(runtime->start().ok());
    REQUIRE(delivery->start().ok());
  }
  void close() {
    runtime.reset();
    delivery.reset();
    link.reset();
    vault.reset();  // drains queued writes, which use the stores below
    flowStore.reset();
    messages.reset();
  }
  void restart() {
    close();
    open();
  }
  void quiesce() {
    if (delivery) delivery->waitForStore();
    if (runtime) runtime->waitForStore();
  }
};

void registerAll(FlowRuntime& rt) {
  REQUIRE(rt.registerFlow("pong", pongFlow).ok());
  REQUIRE(rt.registerFlow("ping", pingFlow).ok());
  REQUIRE(rt.registerInitiating("ping", "pong").ok());
  REQUIRE(rt.registerInitiating("ping-sub", "pong").ok());
  REQUIRE(rt.registerFlow("sleeper", sleeperFlow).ok());
  REQUIRE(rt.registerFlow("thrower", throwerFlow).ok());
  REQUIRE(rt.registerFlow("garbage", garbageFlow).ok());
  REQUIRE(rt.registerFlow("nobody", pongFlow).ok());  // on every member but bob
  REQUIRE(rt.registerFlow("ask-nobody", askFlow).ok());
  REQUIRE(rt.registerInitiating("ask-nobody", "nobody").ok());
  REQUIRE(rt.registerFlow("ask-thrower", askFlow).ok());
  REQUIRE(rt.registerInitiating("ask-thrower", "thrower").ok());
  REQUIRE(rt.registerFlow("ask-typed", typedAskFlow).ok());
  REQUIRE(rt.registerInitiating("ask-typed", "garbage").ok());
  REQUIRE(rt.registerFlow("long-sleep", longSleepFlow).ok());
  REQUIRE(rt.registerFlow("hold", holdFlow).ok());
  REQUIRE(rt.registerFlow("many-sessions", manySessionsFlow).ok());
  REQUIRE(rt.registerFlow("spam", spamFlow).ok());
  REQUIRE(rt.registerFlow("ask-spam", askAndSleepFlow).ok());
  REQUIRE(rt.registerInitiating("ask-spam", "spam").ok());
  REQUIRE(rt.registerInitiating("many-sessions", "pong").ok());
  REQUIRE(rt.registerInitiating("hold", "pong").ok());
}

struct Net {
  TestExecutor executor;
  Hub hub;
  std::vector<std::unique_ptr<Member>> members;

  Net() {
    hub.executor = &executor;
    hub.names = {alice, bob, carol};
  }
  ~Net() { members.clear(); }
  Member& add(const std::string& name, std::function<void(FlowRuntime&)> reg = registerAll,
              std::function<void(FlowRuntimeConfig&)> tweak = {}) {
    members.push_back(std::make_unique<Member>(name, hub, executor, std::move(reg), std::move(tweak)));
    return *members.back();
  }
  bool run(const std::function<bool()>& pred, int64_t deadline_micros = 120'000'000) {
    return executor.runUntil(pred, deadline_micros, [this] {
      for (auto& m : members) m->quiesce();
    });
  }
  // Runs until the flow has finished on `m` (its end durable); its info.
  FlowInfo await(Member& m, const FlowId& id) {
    const bool done = run([&] { return m.finished.count(id) > 0; });
    REQUIRE_MESSAGE(done, "flow " << id.shortHex() << " did not finish");
    return m.finished.at(id);
  }
};

void registerWithoutNobody(FlowRuntime& rt) {
  REQUIRE(rt.registerFlow("pong", pongFlow).ok());
  REQUIRE(rt.registerFlow("ping", pingFlow).ok());
  REQUIRE(rt.registerInitiating("ping", "pong").ok());
  REQUIRE(rt.registerFlow("thrower", throwerFlow).ok());
  REQUIRE(rt.registerFlow("garbage", garbageFlow).ok());
}

}  // namespace

TEST_CASE("flow runtime: registry checks") {
  Net net;
  Member& a = net.add(alice, [](FlowRuntime& rt) {
    CHECK(rt.registerFlow("", pongFlow).error().code == Errc::malformed);
    CHECK(rt.registerFlow("pong", pongFlow).ok());
    CHECK(rt.registerFlow("pong", pongFlow).error().code == Errc::conflict);
    auto missing = rt.registerInitiating("ping", "no-such-responder");
    REQUIRE(!missing.ok());
    CHECK(missing.error().code == Errc::not_found);
    CHECK(missing.error().message.find("no-such-responder") != std::string::npos);
    CHECK(rt.registerInitiating("ping", "pong").ok());
    CHECK(rt.registerInitiating("ping", "pong").error().code == Errc::conflict);
  });
  auto unknown = a.runtime->startFlow("not-registered", {});
  REQUIRE(!unknown);
  CHECK(unknown.error().code == Errc::not_found);
}

TEST_CASE("flow runtime: ping-pong between two members, status and results") {
  Net net;
  Member& a = net.add(alice);
  Member& b = net.add(bob);
  auto id = a.runtime->startFlow("ping", bytesOf(bob + "|3"));
  REQUIRE(id);
  FlowInfo info = net.await(a, *id);
  CHECK(info.outcome == vault::FlowOutcome::ok);
  CHECK(textOf(info.result) == "ponged 3");
  CHECK(info.step == "round 2");
  // The responder finished too, with its own result.
  CHECK(net.run([&] { return b.finished.size() == 1; }));
  CHECK(textOf(b.finished.begin()->second.result) == "answered 3");
  CHECK(b.finished.begin()->second.responder);
  CHECK(b.finished.begin()->second.counterparty == alice);
  // Status: finished flows are listed; show() reads the store after a restart.
  CHECK(a.runtime->list().size() == 1);
  a.restart();
  auto shown = a.runtime->show(*id);
  REQUIRE(shown);
  CHECK(shown->phase == FlowPhase::finished);
  CHECK(textOf(shown->result) == "ponged 3");
  CHECK(a.runtime->stats().flows_resumed == 0);
  CHECK(a.runtime->show(SecureHash::of(asBytes("nothing"))).error().code == Errc::not_found);
}

TEST_CASE("flow runtime: a subflow, a sleep, the clock and a random number") {
  Net net;
  Member& a = net.add(alice);
  net.add(bob);
  auto id = a.runtime->startFlow("sleeper", bytesOf(bob + "|2"));
  REQUIRE(id);
  FlowInfo info = net.await(a, *id);
  CHECK_MESSAGE(info.outcome == vault::FlowOutcome::ok, (info.error ? info.error->toString() : ""));
  CHECK(textOf(info.result) == "ponged 2, slept");
  // Events: 2 receives, the subflow's end, now, timer, now, random.
  CHECK(info.eventsJournaled == 7);
}

TEST_CASE("flow runtime: a peer without the responder flow: a clear error on both sides") {
  Net net;
  Member& a = net.add(alice);
  Member& b = net.add(bob, registerWithoutNobody);
  auto id = a.runtime->startFlow("ask-nobody", bytesOf(bob));
  REQUIRE(id);
  FlowInfo info = net.await(a, *id);
  CHECK(info.outcome == vault::FlowOutcome::failed);
  REQUIRE(info.error);
  CHECK(info.error->code == Errc::not_found);
  CHECK(info.error->message.find("no flow 'nobody' is registered on '" + bob + "'") !=
        std::string::npos);
  // Bob keeps a failed record of the flow it could not run.
  REQUIRE(net.run([&] { return b.finished.size() == 1; }));
  const FlowInfo& theirs = b.finished.begin()->second;
  CHECK(theirs.name == "nobody");
  REQUIRE(theirs.error);
  CHECK(theirs.error->message.find("asked for by flow 'ask-nobody' of '" + alice + "'") !=
        std::string::npos);
}

TEST_CASE("flow runtime: a responder that throws: the initiator ends with its error") {
  Net net;
  Member& a = net.add(alice);
  Member& b = net.add(bob);
  auto id = a.runtime->startFlow("ask-thrower", bytesOf(bob));
  REQUIRE(id);
  FlowInfo info = net.await(a, *id);
  CHECK(info.outcome == vault::FlowOutcome::failed);
  REQUIRE(info.error);
  CHECK(info.error->message.find("the thrower refuses") != std::string::npos);
  CHECK(info.error->message.find("flow 'thrower' of '" + bob + "' failed") != std::string::npos);
  REQUIRE(net.run([&] { return b.finished.size() == 1; }));
  CHECK(b.finished.begin()->second.outcome == vault::FlowOutcome::failed);
}

TEST_CASE("flow runtime: a malformed typed message ends the flow with an error naming it") {
  Net net;
  Member& a = net.add(alice);
  net.add(bob);
  auto id = a.runtime->startFlow("ask-typed", bytesOf(bob));
  REQUIRE(id);
  FlowInfo info = net.await(a, *id);
  CHECK(info.outcome == vault::FlowOutcome::failed);
  REQUIRE(info.error);
  CHECK(info.error->code == Errc::malformed);
  CHECK(info.error->message.find("a malformed count") != std::string::npos);
  CHECK(info.error->message.find("'12x' is not a number") != std::string::npos);
}

TEST_CASE("flow runtime: crash and restart of the initiator mid-flow resumes by replay") {
  Net net;
  Member& a = net.add(alice);
  Member& b = net.add(bob);
  auto id = a.runtime->startFlow("sleeper", bytesOf(bob + "|3"));
  REQUIRE(id);
  // Until it sleeps: the subflow done, its receives journaled.
  REQUIRE(net.run([&] {
    auto s = a.runtime->show(*id);
    return s && s->waiting.find("sleeping") != std::string::npos;
  }));
  a.restart();
  CHECK(a.runtime->stats().flows_resumed == 1);
  CHECK(a.runtime->stats().events_replayed == 5);  // 3 receives, subflow end, now
  CHECK(a.runtime->stats().sends_suppressed == 3);
  FlowInfo info = net.await(a, *id);
  CHECK(info.outcome == vault::FlowOutcome::ok);
  CHECK(textOf(info.result) == "ponged 3, slept");
  REQUIRE(net.run([&] { return b.finished.size() == 1; }));
  CHECK(textOf(b.finished.begin()->second.result) == "answered 3");
}

TEST_CASE("flow runtime: a replay that diverges from its journal stops with the step") {
  Net net;
  bool fixed = false;
  auto reg = [&fixed](FlowRuntime& rt) {
    registerAll(rt);
    REQUIRE(rt.registerFlow("diverge", fixed ? divergeV2 : divergeV1).ok());
    REQUIRE(rt.registerInitiating("diverge", "pong").ok());
  };
  Member& a = net.add(alice, reg);
  net.add(bob);
  auto id = a.runtime->startFlow("diverge", bytesOf(bob));
  REQUIRE(id);
  REQUIRE(net.run([&] {
    auto s = a.runtime->show(*id);
    return s && s->waiting.find("sleeping") != std::string::npos;
  }));
  fixed = true;
  a.restart();
  FlowInfo info = net.await(a, *id);
  CHECK(info.outcome == vault::FlowOutcome::failed);
  REQUIRE(info.error);
  CHECK(info.error->code == Errc::conflict);
  CHECK(info.error->message.find("diverged at step 0: the flow asked to sleep but its journal "
                                 "has a message of session 0 (seq 0)") != std::string::npos);
  CHECK(a.runtime->stats().divergences == 1);
}

TEST_CASE("flow runtime: kill and timeout") {
  Net net;
  Member& a = net.add(alice);
  Member& b = net.add(bob);
  auto sleeper = a.runtime->startFlow("long-sleep", {});
  REQUIRE(sleeper);
  REQUIRE(net.run([&] {
    auto s = a.runtime->show(*sleeper);
    return s && s->waiting.find("sleeping") != std::string::npos;
  }));
  CHECK(a.runtime->kill(*sleeper, "test").ok());
  CHECK(a.runtime->kill(*sleeper, "again").error().code == Errc::conflict);
  FlowInfo killed = net.await(a, *sleeper);
  CHECK(killed.outcome == vault::FlowOutcome::killed);
  CHECK(killed.error->message.find("was killed: test") != std::string::npos);
  CHECK(a.runtime->kill(*sleeper).error().code == Errc::not_found);
  // The kill is journaled: after a restart the flow stays finished as killed.
  a.restart();
  auto shown = a.runtime->show(*sleeper);
  REQUIRE(shown);
  CHECK(shown->outcome == vault::FlowOutcome::killed);

  // Killed before its start record is durable: it never runs, here or after a restart.
  auto early = a.runtime->startFlow("long-sleep", {});
  REQUIRE(early);
  CHECK(a.runtime->kill(*early, "at once").ok());
  FlowInfo early_info = net.await(a, *early);
  CHECK(early_info.outcome == vault::FlowOutcome::killed);
  CHECK(early_info.eventsJournaled == 1);  // the abort
  a.restart();
  CHECK(a.runtime->stats().flows_resumed == 0);

  // A flow that finishes within its timeout, and one that does not.
  auto ping = b.runtime->startFlow("ping", bytesOf(alice + "|1"), 5'000'000);
  REQUIRE(ping);
  FlowInfo ok = net.await(b, *ping);
  CHECK(ok.outcome == vault::FlowOutcome::ok);
  auto slow = a.runtime->startFlow("long-sleep", {}, 5'000'000);
  REQUIRE(slow);
  FlowInfo timed = net.await(a, *slow);
  CHECK(timed.outcome == vault::FlowOutcome::failed);
  CHECK(timed.error->code == Errc::timeout);
}

TEST_CASE("flow runtime: a killed flow's counterparty sees the error") {
  Net net;
  Member& a = net.add(alice);
  Member& b = net.add(bob);
  auto id = a.runtime->startFlow("hold", bytesOf(bob));
  REQUIRE(id);
  REQUIRE(net.run([&] {
    auto s = a.runtime->show(*id);
    return s && s->waiting.find("sleeping") != std::string::npos;
  }));
  // Bob's pong waits for round 1.
  std::vector<FlowInfo> theirs = b.runtime->list();
  REQUIRE(theirs.size() == 1);
  CHECK(theirs[0].phase == FlowPhase::running);
  CHECK(theirs[0].waiting.find("waiting for a message from '" + alice + "' on session 0") !=
        std::string::npos);
  REQUIRE(a.runtime->kill(*id, "the deal is off").ok());
  FlowInfo killed = net.await(a, *id);
  CHECK(killed.outcome == vault::FlowOutcome::killed);
  REQUIRE(net.run([&] { return b.finished.size() == 1; }));
  const FlowInfo& pong = b.finished.begin()->second;
  CHECK(pong.outcome == vault::FlowOutcome::failed);
  REQUIRE(pong.error);
  CHECK(pong.error->message.find("flow 'hold' of '" + alice + "' failed") != std::string::npos);
  CHECK(pong.error->message.find("was killed: the deal is off") != std::string::npos);
}

TEST_CASE("flow runtime: sessions per flow are bounded") {
  Net net;
  Member& a = net.add(alice);
  net.add(bob);
  auto id = a.runtime->startFlow("many-sessions", bytesOf(bob));
  REQUIRE(id);
  FlowInfo info = net.await(a, *id);
  CHECK(info.outcome == vault::FlowOutcome::failed);
  REQUIRE(info.error);
  CHECK(info.error->code == Errc::too_large);
  CHECK(info.error->message.find("sessions_per_flow_max (64)") != std::string::npos);
}

TEST_CASE("flow runtime: a member at flows_running_max refuses a responder with a clear error") {
  Net net;
  Member& a = net.add(alice);
  net.add(bob, registerAll, [](FlowRuntimeConfig& c) { c.flows_running_max = 1; });
  auto first = a.runtime->startFlow("hold", bytesOf(bob));
  REQUIRE(first);
  REQUIRE(net.run([&] {
    auto s = a.runtime->show(*first);
    return s && s->waiting.find("sleeping") != std::string::npos;
  }));
  auto second = a.runtime->startFlow("ping", bytesOf(bob + "|1"));
  REQUIRE(second);
  FlowInfo info = net.await(a, *second);
  CHECK(info.outcome == vault::FlowOutcome::failed);
  REQUIRE(info.error);
  CHECK(info.error->code == Errc::unavailable);
  CHECK(info.error->message.find("runs flows_running_max (1) flows") != std::string::npos);
}

TEST_CASE("flow runtime: messages a flow does not take are bounded") {
  Net net;
  Member& a = net.add(alice, registerAll,
                      [](FlowRuntimeConfig& c) { c.messages_waiting_per_flow_max = 4; });
  net.add(bob);
  auto id = a.runtime->startFlow("ask-spam", bytesOf(bob));
  REQUIRE(id);
  FlowInfo info = net.await(a, *id);
  CHECK(info.outcome == vault::FlowOutcome::failed);
  REQUIRE(info.error);
  CHECK(info.error->code == Errc::too_large);
  CHECK(info.error->message.find("'" + bob + "' sent more than 4 messages") != std::string::npos);
}

TEST_CASE("flow runtime: a thousand flows at once between two members") {
  Net net;
  Member& a = net.add(alice);
  Member& b = net.add(bob);
  constexpr int flows = 1000;
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<FlowId> ids;
  for (int i = 0; i < flows; ++i) {
    auto id = a.runtime->startFlow("ping", bytesOf(bob + "|2"));
    REQUIRE(id);
    ids.push_back(*id);
  }
  CHECK(a.runtime->running() == flows);
  REQUIRE(net.run([&] { return a.finished.size() == flows && b.finished.size() == flows; }));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (const FlowId& id : ids) CHECK(textOf(a.finished.at(id).result) == "ponged 2");
  CHECK(a.runtime->running() == 0);
  CHECK(b.runtime->running() == 0);
  MESSAGE(flows << " ping flows of 2 rounds (4 messages and 5 journaled events each, both "
                   "sides): "
                << static_cast<int>(flows / seconds) << " flows/s (this build, no fsync)");
}

TEST_CASE("flow runtime: session message ids are deterministic and distinct") {
  const SecureHash flow = SecureHash::of(asBytes("flow"));
  CHECK(sessionMessageId(flow, 0, true, 0) == sessionMessageId(flow, 0, true, 0));
  std::set<MessageId> ids;
  for (uint32_t s = 0; s < 3; ++s) {
    for (bool dir : {false, true}) {
      for (uint64_t seq = 0; seq < 3; ++seq) ids.insert(sessionMessageId(flow, s, dir, seq));
    }
  }
  CHECK(ids.size() == 18);
  CHECK(responderFlowId(flow, 0) != responderFlowId(flow, 1));
  CHECK(responderFlowId(flow, 0) != flow);
}

// --- journaled service calls (FlowContext::call) ----------------------------------------

namespace {

// A service the call tests use: counts the operations it starts; completes
// them at once, or holds them (a call in flight) when `hold` is set.
struct CountingService {
  int started = 0;
  bool hold = false;
  bool fail = false;
  int transient_failures = 0;  // the next this many operations fail with `unavailable`
  std::vector<CallDone> held;

  CallOp op() {
    return [this](CallDone done) {
      ++started;
      if (transient_failures > 0) {
        --transient_failures;
        done(makeError(Errc::unavailable, "the service is busy"));
        return;
      }
      if (hold) {
        held.push_back(std::move(done));
        return;
      }
      if (fail) {
        done(makeError(Errc::insufficient_balance, "boom"));
        return;
      }
      const std::string v = "v" + std::to_string(started);
      done(Bytes(v.begin(), v.end()));
    };
  }
};

// Calls `name` (args), then sleeps for an hour, then returns the outcome.
Flow<Bytes> callFlow(FlowContext& ctx, CountingService* service, Bytes args) {
  Bytes got = co_await ctx.call(textOf(args), service->op());
  co_await ctx.sleep(3'600'000'000);
  co_return got;
}

Result<int> decodeV(ByteView b) {
  const std::string text = textOf(b);
  if (text.empty() || text[0] != 'v') return makeError(Errc::malformed, "no 'v' prefix");
  return std::stoi(text.substr(1));
}

Flow<Bytes> typedCallFlow(FlowContext& ctx, CountingService* service, Bytes args) {
  const int n = co_await ctx.call<int>(textOf(args), service->op(), decodeV);
  co_return bytesOf("n=" + std::to_string(n));
}

Flow<Bytes> oddCallFlow(FlowContext& ctx, Bytes) {
  const int n = co_await ctx.call<int>(
      "svc.odd", [](CallDone done) { done(bytesOf("x1")); }, decodeV);
  co_return bytesOf(std::to_string(n));
}

std::function<void(FlowRuntime&)> registerCalls(CountingService& service,
                                                const std::string& name = "svc.get") {
  return [&service, name](FlowRuntime& rt) {
    registerAll(rt);
    REQUIRE(rt.registerFlow("call", [&service, name](FlowContext& ctx, Bytes) {
                return callFlow(ctx, &service, bytesOf(name));
              }).ok());
    REQUIRE(rt.registerFlow("typed-call", [&service](FlowContext& ctx, Bytes args) {
                return typedCallFlow(ctx, &service, std::move(args));
              }).ok());
  };
}

bool sleeping(Member& m, const FlowId& id) {
  auto s = m.runtime->show(id);
  return s && s->waiting.find("sleeping") != std::string::npos;
}

}  // namespace

TEST_CASE("flow runtime: a call's outcome is journaled; a replay does not run it again") {
  Net net;
  CountingService service;
  Member& a = net.add(alice, registerCalls(service));
  auto id = a.runtime->startFlow("call", {});
  REQUIRE(id);
  REQUIRE(net.run([&] { return sleeping(a, *id); }));
  CHECK(service.started == 1);
  CHECK(a.runtime->show(*id)->eventsJournaled == 1);
  a.restart();
  CHECK(a.runtime->stats().events_replayed == 1);
  CHECK(service.started == 1);  // answered from the journal
  CHECK(a.runtime->kill(*id, "enough").ok());
  FlowInfo info = net.await(a, *id);
  CHECK(info.outcome == vault::FlowOutcome::killed);

  auto typed = a.runtime->startFlow("typed-call", bytesOf("svc.typed"));
  REQUIRE(typed);
  info = net.await(a, *typed);
  REQUIRE(info.outcome == vault::FlowOutcome::ok);
  CHECK(textOf(info.result) == "n=2");
}

TEST_CASE("flow runtime: a call outcome the decoder refuses ends the flow naming the call") {
  Net net;
  Member& a = net.add(alice, [](FlowRuntime& rt) {
    registerAll(rt);
    REQUIRE(rt.registerFlow("typed-odd", oddCallFlow).ok());
  });
  auto id = a.runtime->startFlow("typed-odd", {});
  REQUIRE(id);
  FlowInfo o = net.await(a, *id);
  CHECK(o.outcome == vault::FlowOutcome::failed);
  REQUIRE(o.error);
  CHECK(o.error->code == Errc::malformed);
  CHECK(o.error->message.find("the outcome of call 'svc.odd' does not decode: no 'v' prefix") !=
        std::string::npos);
}

TEST_CASE("flow runtime: a crash while a call is in flight runs it again after the restart") {
  Net net;
  CountingService service;
  service.hold = true;
  Member& a = net.add(alice, registerCalls(service));
  auto id = a.runtime->startFlow("call", {});
  REQUIRE(id);
  REQUIRE(net.run([&] { return service.started == 1; }));
  CHECK(a.runtime->show(*id)->waiting.find("waiting for call 'svc.get'") != std::string::npos);
  a.restart();
  REQUIRE(net.run([&] { return service.started == 2; }));  // run again: nothing was journaled
  // The first incarnation's completion is dropped; the second one's counts.
  service.held[0](bytesOf("stale"));
  service.held[1](bytesOf("fresh"));
  REQUIRE(net.run([&] { return sleeping(a, *id); }));
  a.restart();
  CHECK(service.started == 2);
  CHECK(a.runtime->kill(*id).ok());
  net.await(a, *id);
}

TEST_CASE("flow runtime: a replay whose call has another name diverges") {
  Net net;
  CountingService service;
  std::string name = "svc.a";
  Member& a = net.add(alice, [&](FlowRuntime& rt) { registerCalls(service, name)(rt); });
  auto id = a.runtime->startFlow("call", {});
  REQUIRE(id);
  REQUIRE(net.run([&] { return sleeping(a, *id); }));
  name = "svc.b";
  a.restart();
  FlowInfo info = net.await(a, *id);
  CHECK(info.outcome == vault::FlowOutcome::failed);
  REQUIRE(info.error);
  CHECK(info.error->code == Errc::conflict);
  CHECK(info.error->message.find("diverged at step 0: the flow asked for call 'svc.b' but its "
                                 "journal has the outcome of call 'svc.a'") != std::string::npos);
  CHECK(service.started == 1);
}

TEST_CASE("flow runtime: a call that fails ends the flow with its error, also in a replay") {
  Net net;
  CountingService service;
  service.fail = true;
  Member& a = net.add(alice, registerCalls(service));
  auto id = a.runtime->startFlow("call", {});
  REQUIRE(id);
  FlowInfo info = net.await(a, *id);
  CHECK(info.outcome == vault::FlowOutcome::failed);
  REQUIRE(info.error);
  CHECK(info.error->code == Errc::insufficient_balance);
  CHECK(info.error->message.find("call 'svc.get' failed: boom") != std::string::npos);
}

TEST_CASE("flow runtime: a call that fails transiently runs again with backoff, then the flow goes on") {
  Net net;
  CountingService service;
  service.transient_failures = 3;
  Member& a = net.add(alice, registerCalls(service));
  const int64_t t0 = net.executor.nowMicros();
  auto id = a.runtime->startFlow("call", {});
  REQUIRE(id);
  REQUIRE(net.run([&] { return sleeping(a, *id); }));
  CHECK(service.started == 4);
  CHECK(a.runtime->stats().call_retries == 3);
  CHECK(a.runtime->stats().flows_parked == 0);
  // 100 + 200 + 400 ms of backoff (virtual time).
  CHECK(net.executor.nowMicros() - t0 >= 700'000);
  CHECK(a.runtime->show(*id)->eventsJournaled == 1);  // only the successful outcome is journaled
  CHECK(a.runtime->kill(*id).ok());
  net.await(a, *id);
}

TEST_CASE("flow runtime: a call that keeps failing parks the flow in the hospital; retry and kill") {
  Net net;
  CountingService service;
  service.transient_failures = 1000;
  Member& a = net.add(alice, registerCalls(service), [](FlowRuntimeConfig& c) {
    c.flow_timeout_micros = 10'000'000;  // suspended while parked
  });
  auto id = a.runtime->startFlow("call", {});
  REQUIRE(id);
  REQUIRE(net.run([&] { return a.runtime->show(*id)->phase == FlowPhase::parked; }));
  CHECK(service.started == 5);  // call_attempts_max
  FlowInfo parked = *a.runtime->show(*id);
  CHECK(parked.waiting.find("parked in the hospital: call 'svc.get' failed 5 times: unavailable: the service is "
                            "busy") != std::string::npos);
  CHECK(a.runtime->stats().flows_parked == 1);
  a.quiesce();
  auto hospital = a.flowStore->hospital();
  REQUIRE(hospital);
  REQUIRE(hospital->size() == 1);
  CHECK(hospital->front().id == *id);
  CHECK(hospital->front().parkReason.find("failed 5 times") != std::string::npos);
  // Parked well past its timeout: still parked, not timed out.
  REQUIRE_FALSE(net.run([&] { return a.finished.count(*id) > 0; }, 30'000'000));

  // Fixed: retry runs the call again (attempts afresh) and the flow goes on.
  service.transient_failures = 0;
  REQUIRE(a.runtime->retry(*id).ok());
  REQUIRE(net.run([&] { return sleeping(a, *id); }));
  CHECK(service.started == 6);
  CHECK(a.runtime->stats().flows_retried == 1);
  CHECK(a.runtime->retry(*id).error().code == Errc::conflict);  // not in the hospital
  a.quiesce();
  CHECK(a.flowStore->hospital()->empty());
  CHECK(a.runtime->kill(*id).ok());
  net.await(a, *id);

  // Killed in the hospital.
  service.transient_failures = 1000;
  auto other = a.runtime->startFlow("call", {});
  REQUIRE(other);
  REQUIRE(net.run([&] { return a.runtime->show(*other)->phase == FlowPhase::parked; }));
  CHECK(a.runtime->kill(*other, "given up").ok());
  FlowInfo killed = net.await(a, *other);
  CHECK(killed.outcome == vault::FlowOutcome::killed);
  REQUIRE(killed.error);
  CHECK(killed.error->message.find("given up") != std::string::npos);
}

TEST_CASE("flow runtime: a parked flow stays parked across a restart; retry replays it, kill ends it") {
  Net net;
  CountingService service;
  service.transient_failures = 1000;
  Member& a = net.add(alice, registerCalls(service));
  auto id = a.runtime->startFlow("call", {});
  auto other = a.runtime->startFlow("call", {});
  REQUIRE(id);
  REQUIRE(other);
  REQUIRE(net.run([&] {
    return a.runtime->show(*id)->phase == FlowPhase::parked && a.runtime->show(*other)->phase == FlowPhase::parked;
  }));
  CHECK(service.started == 10);
  a.restart();
  CHECK(service.started == 10);  // not resumed by start()
  CHECK(a.runtime->running() == 0);
  FlowInfo shown = *a.runtime->show(*id);
  CHECK(shown.phase == FlowPhase::parked);
  CHECK(shown.waiting.find("failed 5 times") != std::string::npos);

  service.transient_failures = 0;
  REQUIRE(a.runtime->retry(*id).ok());  // out of the store's hospital, replayed to its call
  REQUIRE(net.run([&] { return sleeping(a, *id); }));
  CHECK(service.started == 11);
  CHECK(a.runtime->kill(*id).ok());
  net.await(a, *id);

  CHECK(a.runtime->kill(*other, "not needed").ok());  // only in the store: recorded killed
  a.quiesce();
  FlowInfo ended = *a.runtime->show(*other);
  CHECK(ended.phase == FlowPhase::finished);
  CHECK(ended.outcome == vault::FlowOutcome::killed);
  REQUIRE(ended.error);
  CHECK(ended.error->message.find("not needed") != std::string::npos);
  CHECK(a.runtime->retry(*other).error().code == Errc::conflict);
  CHECK(a.flowStore->hospital()->empty());
}

