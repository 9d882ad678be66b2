// The simulator itself: its random numbers, scheduler, network faults,
// member crashes and restarts, clocks and trace.

#include "test/sim/sim.h"

#include <doctest/doctest.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

using namespace ccal;
using namespace ccal::sim;

namespace {

const std::string alice = "O=Haikou Fishing Cooperative, L=Haikou, C=CN";
const std::string bob = "O=Sanya Tea Cooperative, L=Sanya, C=CN";
const std::string bank = "O=Hainan Rural Bank, L=Haikou, C=CN";

Bytes bytesOf(const std::string& s) { return Bytes(s.begin(), s.end()); }

// Records what its link delivers.
struct Recorded {
  std::vector<std::pair<std::string, std::string>> frames;  // (from, text)
  std::vector<std::string> events;                          // "up NAME" / "down NAME"
  std::vector<int> incarnations;
  std::vector<std::string> dirs;
  int destroyed = 0;
};

class EchoNode final : public Node, public flows::LinkHandler {
 public:
  EchoNode(MemberEnv& env, Recorded& rec) : env_(env), rec_(rec) {
    env.link.setHandler(this);
    rec_.incarnations.push_back(env.incarnation);
    rec_.dirs.push_back(env.dir);
  }
  ~EchoNode() override { ++rec_.destroyed; }
  void onFrame(std::string_view peer, ByteView frame) override {
    rec_.frames.emplace_back(std::string(peer), std::string(frame.begin(), frame.end()));
  }
  void onPeerUp(std::string_view peer) override { rec_.events.push_back("up " + std::string(peer)); }
  void onPeerDown(std::string_view peer) override {
    rec_.events.push_back("down " + std::string(peer));
  }
  Status send(const std::string& to, const std::string& text) {
    return env_.link.send(to, bytesOf(text));
  }
  flows::Executor& executor() { return env_.executor; }
  const flows::Clock& clock() { return env_.clock; }

 private:
  MemberEnv env_;
  Recorded& rec_;
};

struct Trio {
  std::map<std::string, Recorded> rec;  // outlives the nodes
  Simulation sim;
  explicit Trio(uint64_t seed, NetworkConfig net = {}) : sim(seed, net) {
    for (const auto& name : {alice, bob, bank}) {
      sim.addMember(name, [this, name](MemberEnv& env) -> std::unique_ptr<Node> {
        return std::make_unique<EchoNode>(env, rec[name]);
      });
    }
    sim.runFor(1);  // peer-up notifications
  }
  EchoNode& node(const std::string& name) { return *sim.nodeAs<EchoNode>(name); }
};

}  // namespace

TEST_CASE("sim: the random numbers are a function of the seed") {
  Rng a(42), b(42), c(43);
  std::vector<uint64_t> va, vb, vc;
  for (int i = 0; i < 100; ++i) {
    va.push_back(a.next());
    vb.push_back(b.next());
    vc.push_back(c.next());
  }
  CHECK(va == vb);
  CHECK(va != vc);
  // A pinned value: the same on every platform and build.
  CHECK(Rng(0).next() == 0xe220a8397b1dcdafull);
  Rng r(7);
  int hits = 0;
  std::set<int64_t> seen;
  for (int i = 0; i < 10'000; ++i) {
    const uint64_t v = r.below(10);
    CHECK(v < 10);
    const int64_t w = r.between(-3, 3);
    CHECK(w >= -3);
    CHECK(w <= 3);
    seen.insert(w);
    if (r.chance(0.25)) ++hits;
  }
  CHECK(seen.size() == 7);
  CHECK(hits > 2'200);
  CHECK(hits < 2'800);
  CHECK_FALSE(r.chance(0));
  CHECK(r.chance(1));
}

TEST_CASE("sim: events run in time order, first come first served at one time") {
  Scheduler s;
  auto alive = std::make_shared<bool>(true);
  std::vector<int> order;
  s.schedule(20, 0, nullptr, [&] { order.push_back(3); });
  s.schedule(10, 0, nullptr, [&] { order.push_back(1); });
  s.schedule(10, 0, nullptr, [&] { order.push_back(2); });
  const uint64_t cancelled = s.schedule(15, 0, nullptr, [&] { order.push_back(99); });
  s.schedule(5, 1, alive, [&] { order.push_back(0); });
  s.schedule(6, 1, alive, [&] { order.push_back(98); });  // its incarnation dies first
  s.cancel(cancelled);
  std::vector<int> after_members;
  auto after = [&](int member) { after_members.push_back(member); };
  const int64_t start = s.now();
  CHECK(s.step(start + 100, after));  // 0 at +5
  *alive = false;
  while (s.step(start + 100, after)) {
  }
  CHECK(order == std::vector<int>{0, 1, 2, 3});
  CHECK(s.now() == start + 100);  // ran up to the deadline
  CHECK(after_members == std::vector<int>{1, 0, 0, 0});
  CHECK(s.eventsRun() == 4);

  // A post from another thread runs after the event during which it came.
  std::vector<std::string> log;
  s.schedule(0, 0, nullptr, [&] {
    std::thread([&] { s.post(0, nullptr, [&] { log.push_back("foreign"); }); }).join();
    s.post(0, nullptr, [&] { log.push_back("local"); });
    log.push_back("event");
  });
  while (s.step(s.now() + 10, nullptr)) {
  }
  CHECK(log == std::vector<std::string>{"event", "local", "foreign"});
}

TEST_CASE("sim: frames flow between members; the link refuses unknown peers and big frames") {
  NetworkConfig net;
  net.frame_bytes_max = 64;
  Trio t(1, net);
  CHECK(t.rec[alice].events == std::vector<std::string>{"up " + bob, "up " + bank});
  for (int i = 0; i < 20; ++i) REQUIRE(t.node(alice).send(bob, "f" + std::to_string(i)));
  t.sim.runFor(1'000'000);
  REQUIRE(t.rec[bob].frames.size() == 20);
  for (const auto& [from, text] : t.rec[bob].frames) CHECK(from == alice);

  Status unknown = t.node(alice).send("O=Nobody, C=XX", "x");
  REQUIRE(!unknown.ok());
  CHECK(unknown.error().code == Errc::not_found);
  Status big = t.node(alice).send(bob, std::string(65, 'x'));
  REQUIRE(!big.ok());
  CHECK(big.error().code == Errc::too_large);
}

TEST_CASE("sim: loss, duplication and reordering") {
  {
    NetworkConfig net;
    net.loss = 1;
    Trio t(2, net);
    for (int i = 0; i < 10; ++i) REQUIRE(t.node(alice).send(bob, "x"));
    t.sim.runFor(1'000'000);
    CHECK(t.rec[bob].frames.empty());
    CHECK(t.sim.networkStats().frames_lost == 10);
  }
  {
    NetworkConfig net;
    net.duplication = 1;
    Trio t(3, net);
    for (int i = 0; i < 10; ++i) REQUIRE(t.node(alice).send(bob, "x"));
    t.sim.runFor(1'000'000);
    CHECK(t.rec[bob].frames.size() == 20);
  }
  {
    NetworkConfig net;
    net.reorder = 0.5;
    Trio t(4, net);
    for (int i = 0; i < 50; ++i) REQUIRE(t.node(alice).send(bob, std::to_string(i)));
    t.sim.runFor(10'000'000);
    REQUIRE(t.rec[bob].frames.size() == 50);
    bool reordered = false;
    for (size_t i = 0; i < 50; ++i) reordered |= t.rec[bob].frames[i].second != std::to_string(i);
    CHECK(reordered);
  }
}

TEST_CASE("sim: partitions cut frames both ways and tell both sides; healing restores them") {
  Trio t(5);
  t.rec[alice].events.clear();
  t.rec[bob].events.clear();
  t.sim.isolate({alice});
  t.sim.runFor(1);
  CHECK(t.rec[alice].events == std::vector<std::string>{"down " + bob, "down " + bank});
  CHECK(t.rec[bob].events == std::vector<std::string>{"down " + alice});
  CHECK_FALSE(t.sim.connected(alice, bob));
  CHECK(t.sim.connected(bob, bank));
  REQUIRE(t.node(alice).send(bob, "lost"));
  REQUIRE(t.node(bob).send(alice, "lost"));
  REQUIRE(t.node(bob).send(bank, "kept"));
  t.sim.runFor(1'000'000);
  CHECK(t.rec[alice].frames.empty());
  CHECK(t.rec[bob].frames.empty());
  CHECK(t.rec[bank].frames.size() == 1);
  CHECK(t.sim.networkStats().frames_undeliverable == 2);
  t.sim.heal();
  t.sim.runFor(1);
  CHECK(t.rec[alice].events.back() == "up " + bank);
  REQUIRE(t.node(alice).send(bob, "through"));
  t.sim.runFor(1'000'000);
  CHECK(t.rec[bob].frames.size() == 1);
}

TEST_CASE("sim: a crash destroys a member's node; a restart rebuilds it over the same directory") {
  Trio t(6);
  const std::string dir = t.rec[bob].dirs.at(0);
  std::filesystem::create_directories(dir);
  {
    std::FILE* f = std::fopen((dir + "/kept").c_str(), "w");
    REQUIRE(f != nullptr);
    std::fclose(f);
  }
  // A timer of the crashed incarnation never fires.
  bool fired = false;
  t.node(bob).executor().runAfter(500'000, [&] { fired = true; });
  REQUIRE(t.node(alice).send(bob, "in flight"));
  t.rec[alice].events.clear();
  t.sim.crash(bob);
  CHECK(t.rec[bob].destroyed == 1);
  CHECK_FALSE(t.sim.isUp(bob));
  CHECK(t.sim.node(bob) == nullptr);
  t.sim.runFor(1'000'000);
  CHECK_FALSE(fired);
  CHECK(t.rec[bob].frames.empty());  // the frame found nobody
  CHECK(t.rec[alice].events == std::vector<std::string>{"down " + bob});
  t.sim.restart(bob);
  t.sim.runFor(1);
  CHECK(t.rec[bob].incarnations == std::vector<int>{0, 1});
  CHECK(t.rec[bob].dirs.at(1) == dir);
  CHECK(std::filesystem::exists(dir + "/kept"));
  CHECK(t.rec[alice].events.back() == "up " + bob);
  CHECK(t.rec[bob].events.back() == "up " + bank);
  REQUIRE(t.node(alice).send(bob, "after"));
  t.sim.runFor(1'000'000);
  CHECK(t.rec[bob].frames.size() == 1);
  CHECK(t.sim.crashes() == 1);
}

TEST_CASE("sim: members' clocks are virtual time plus their skew") {
  Trio t(7);
  const int64_t start = t.sim.now();
  CHECK(start >= Scheduler::start_micros);
  t.sim.setSkew(bob, -30'000'000);
  t.sim.runFor(2'000'000);
  CHECK(t.sim.now() == start + 2'000'000);
  CHECK(t.node(alice).clock().nowMicros() == t.sim.now());
  CHECK(t.node(bob).clock().nowMicros() == t.sim.now() - 30'000'000);
  // Timers run on virtual time, whatever the skew.
  int64_t fired_at = 0;
  t.node(bob).executor().runAfter(1'000, [&] { fired_at = t.sim.now(); });
  t.sim.runFor(10'000);
  CHECK(fired_at == start + 2'001'000);
}

TEST_CASE("sim: a run is a function of its seed (trace hash)") {
  auto run = [](uint64_t seed) {
    NetworkConfig net;
    net.loss = 0.2;
    net.duplication = 0.2;
    net.reorder = 0.3;
    Trio t(seed, net);
    for (int i = 0; i < 30; ++i) {
      t.sim.at(t.sim.rng().between(0, 1'000'000), [&t, i] {
        const std::string& from = i % 2 ? alice : bob;
        REQUIRE(t.node(from).send(bank, std::to_string(i)));
      });
    }
    t.sim.at(500'000, [&t] { t.sim.crash(bank); });
    t.sim.at(700'000, [&t] { t.sim.restart(bank); });
    t.sim.runFor(5'000'000);
    return std::make_pair(t.sim.traceHash(), t.rec[bank].frames);
  };
  auto a = run(11), b = run(11), c = run(12);
  CHECK(a.first == b.first);
  CHECK(a.second == b.second);
  CHECK(a.first != c.first);
}

TEST_CASE("sim: runUntil stops when the predicate holds or at the deadline") {
  Trio t(8);
  int ticks = 0;
  std::function<void()> tick = [&] {
    ++ticks;
    t.node(alice).executor().runAfter(1'000, tick);
  };
  tick();
  CHECK(t.sim.runUntil([&] { return ticks >= 10; }, 1'000'000));
  CHECK(ticks == 10);
  const int64_t before = t.sim.now();
  CHECK_FALSE(t.sim.runUntil([] { return false; }, 50'000));
  CHECK(t.sim.now() == before + 50'000);
}
