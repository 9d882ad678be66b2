#include "flows/delivery.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <queue>
#include <set>
#include <string>
#include <vector>

#include "flows/flows_testing.h"
#include "ledger/contract.h"
#include "test/support/temp_dir.h"
#include "vault/vault.h"

using namespace ccal;
using namespace ccal::flows;
using namespace ccal::flows::testing;

namespace {

const std::string alice = "O=Haikou Fishing Cooperative, L=Haikou, C=CN";
const std::string bob = "O=Sanya Tea Cooperative, L=Sanya, C=CN";

MessageId msgId(const std::string& name) { return SecureHash::of(asBytes(name)); }
Bytes bytesOf(const std::string& s) { return Bytes(s.begin(), s.end()); }
std::string textOf(ByteView b) { return std::string(b.begin(), b.end()); }

class TestLink;

// Frames between two members. Each frame passes through `filter`, which may
// drop it, keep it back to release later (reordering) or copy it.
struct Wire {
  TestExecutor* executor = nullptr;
  std::map<std::string, TestLink*> members;
  std::set<std::string> down;  // members whose frames are lost both ways
  std::function<int(const std::string& to, ByteView frame)> copies;  // default 1
  std::vector<std::pair<std::string, std::pair<std::string, Bytes>>> held_back;
  bool hold_back = false;
  size_t frame_bytes_max = 1u << 16;

  void deliver(const std::string& from, const std::string& to, Bytes frame);
  void releaseReversed();
};

class TestLink final : public Link {
 public:
  TestLink(Wire& wire, std::string self) : wire_(wire), self_(std::move(self)) {
    wire_.members[self_] = this;
  }
  ~TestLink() override { wire_.members.erase(self_); }
  void setHandler(LinkHandler* handler) override { handler_ = handler; }
  Status send(std::string_view peer, Bytes frame) override {
    if (peer != alice && peer != bob) {
      return makeError(Errc::not_found, "unknown peer '" + std::string(peer) + "'");
    }
    if (frame.size() > wire_.frame_bytes_max) return makeError(Errc::too_large, "frame too big");
    ++frames_sent;
    wire_.deliver(self_, std::string(peer), std::move(frame));
    return {};
  }
  size_t frameBytesMax() const override { return wire_.frame_bytes_max; }

  LinkHandler* handler_ = nullptr;
  uint64_t frames_sent = 0;

 private:
  Wire& wire_;
  std::string self_;
};

void Wire::deliver(const std::string& from, const std::string& to, Bytes frame) {
  if (down.count(from) || down.count(to)) return;
  const int n = copies ? copies(to, frame) : 1;
  for (int i = 0; i < n; ++i) {
    if (hold_back) {
      held_back.push_back({from, {to, frame}});
      continue;
    }
    executor->post([this, from, to, frame] {
      auto it = members.find(to);
      if (it != members.end() && !down.count(to) && it->second->handler_) {
        it->second->handler_->onFrame(from, frame);
      }
    });
  }
}

void Wire::releaseReversed() {
  hold_back = false;
  auto frames = std::move(held_back);
  held_back.clear();
  std::reverse(frames.begin(), frames.end());
  for (auto& [from, rest] : frames) deliver(from, rest.first, std::move(rest.second));
}

struct Received {
  std::string peer;
  MessageId id;
  std::string payload;
};

class Recorder final : public MessageHandler {
 public:
  void onMessage(std::string_view peer, const MessageId& id, ByteView payload) override {
    got.push_back({std::string(peer), id, textOf(payload)});
  }
  std::vector<Received> got;
};

// One member: its vault (for the store), message store, link and Delivery;
// restart() destroys them all and opens them again over the same directory.
struct Member {
  std::string name;
  Wire& wire;
  TestExecutor& executor;
  ccal::testing::TempDir dir{"ccal-delivery-test"};
  ContractRegistry registry;
  DeliveryConfig config;
  std::unique_ptr<vault::Vault> vault;
  std::unique_ptr<vault::MessageStore> store;
  std::unique_ptr<TestLink> link;
  std::unique_ptr<Delivery> delivery;
  Recorder recorder;
  std::vector<std::string> logs;

  Member(std::string n, Wire& w, TestExecutor& ex, DeliveryConfig c = {})
      : name(std::move(n)), wire(w), executor(ex), config(std::move(c)) {
    config.log = [this](std::string_view line) { logs.emplace_back(line); };
    open();
  }

  void open() {
    vault::VaultConfig vc;
    vc.store.path = dir.path;
    vc.store.durable = false;
    vault = vault::Vault::open(vc, registry, {}).value();
    store = std::make_unique<vault::MessageStore>(vault->store(),
                                                  [this] { return executor.nowMicros(); });
    link = std::make_unique<TestLink>(wire, name);
    delivery = std::make_unique<Delivery>(*link, *store, executor, executor, config);
    delivery->setHandler(&recorder);
    REQUIRE(delivery->start());
  }
  void close() {
    delivery.reset();
    link.reset();
    store.reset();
    vault.reset();  // drains the writer: its completions find the Delivery gone
  }
  void restart() {
    close();
    recorder.got.clear();
    open();
  }
  // The member loses its store (a new disk): everything it had is gone.
  void wipe() {
    close();
    std::filesystem::remove_all(dir.path);
    recorder.got.clear();
    open();
  }
  void barrier() {
    if (vault) REQUIRE(vault->store().write([](vault::WriteTxn&) { return Status(); }));
  }
};

struct Pair {
  TestExecutor executor;
  Wire wire;
  std::unique_ptr<Member> a, b;
  explicit Pair(DeliveryConfig config = {}) {
    wire.executor = &executor;
    a = std::make_unique<Member>(alice, wire, executor, config);
    b = std::make_unique<Member>(bob, wire, executor, config);
  }
  bool run(const std::function<bool()>& pred, int64_t deadline_micros = 600'000'000) {
    return executor.runUntil(pred, deadline_micros, [this] {
      a->barrier();
      b->barrier();
    });
  }
  void settle() { run([] { return false; }, 60'000'000); }

  // Sends and waits until the message is durably queued.
  Status send(Member& from, const std::string& to, const std::string& id,
              const std::string& payload) {
    std::optional<Status> result;
    from.delivery->send(to, msgId(id), bytesOf(payload), [&](const Status& s) { result = s; });
    REQUIRE(run([&] { return result.has_value(); }));
    return *result;
  }
};

std::vector<std::string> payloads(const Recorder& r) {
  std::vector<std::string> out;
  for (const auto& m : r.got) out.push_back(m.payload);
  return out;
}

std::vector<std::string> numbered(int from, int to) {
  std::vector<std::string> out;
  for (int i = from; i < to; ++i) out.push_back("m" + std::to_string(i));
  return out;
}

}  // namespace

TEST_CASE("delivery: messages arrive once, in order, and leave the outbox when acknowledged") {
  Pair p;
  // Sent together, so that their commits, acknowledgements and frames batch.
  int accepted = 0;
  for (const auto& m : numbered(0, 20)) {
    p.a->delivery->send(bob, msgId(m), bytesOf(m), [&](const Status& s) {
      CHECK(s.ok());
      ++accepted;
    });
  }
  REQUIRE(p.run([&] { return p.b->recorder.got.size() == 20; }));
  CHECK(accepted == 20);
  p.settle();
  CHECK(payloads(p.b->recorder) == numbered(0, 20));
  for (const auto& m : p.b->recorder.got) {
    CHECK(m.peer == alice);
    CHECK(m.id == msgId(m.payload));
  }
  CHECK(p.a->delivery->inFlight(bob) == 0);
  CHECK(p.a->store->pending(bob, 100).value().empty());
  CHECK(p.a->delivery->stats().messages_acknowledged == 20);
  CHECK(p.b->store->unconsumed(alice, 100).value().size() == 20);
  CHECK(p.b->delivery->stats().messages_delivered == 20);
  // Acknowledgements are batched: far fewer ack frames than messages.
  CHECK(p.b->delivery->stats().ack_frames_sent < 20);

  // Consumed messages are not handed over again after a restart; the rest are, in order.
  for (int i = 0; i < 10; ++i) {
    std::optional<Status> done;
    p.b->delivery->consume(alice, msgId("m" + std::to_string(i)),
                           [&](const Status& s) { done = s; });
    REQUIRE(p.run([&] { return done.has_value(); }));
    CHECK(done->ok());
  }
  p.b->restart();
  CHECK(payloads(p.b->recorder) == numbered(10, 20));
  // Consuming an unknown message is an error naming it.
  std::optional<Status> done;
  p.b->delivery->consume(alice, msgId("never"), [&](const Status& s) { done = s; });
  REQUIRE(p.run([&] { return done.has_value(); }));
  REQUIRE(!done->ok());
  CHECK(done->error().code == Errc::not_found);
}

TEST_CASE("delivery: both directions at once") {
  Pair p;
  for (int i = 0; i < 10; ++i) {
    REQUIRE(p.send(*p.a, bob, "a" + std::to_string(i), "a" + std::to_string(i)));
    REQUIRE(p.send(*p.b, alice, "b" + std::to_string(i), "b" + std::to_string(i)));
  }
  REQUIRE(p.run([&] { return p.a->recorder.got.size() == 10 && p.b->recorder.got.size() == 10; }));
  CHECK(payloads(p.b->recorder).front() == "a0");
  CHECK(payloads(p.a->recorder).back() == "b9");
}

TEST_CASE("delivery: lost frames are retransmitted until acknowledged") {
  Pair p;
  uint64_t x = 12345;
  // Drops about two frames of every three, both ways (messages and acks),
  // pseudo-randomly (a fixed pattern could fall in step with the retransmissions).
  p.wire.copies = [&](const std::string&, ByteView) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    return (x >> 33) % 3 == 0 ? 1 : 0;
  };
  for (const auto& m : numbered(0, 30)) REQUIRE(p.send(*p.a, bob, m, m));
  const bool drained = p.run([&] { return p.a->delivery->inFlight(bob) == 0; });
  INFO("in flight " << p.a->delivery->inFlight(bob) << ", delivered "
                    << p.b->recorder.got.size() << ", retransmitted "
                    << p.a->delivery->stats().messages_retransmitted << ", acked "
                    << p.a->delivery->stats().messages_acknowledged << ", frames a "
                    << p.a->link->frames_sent << ", frames b " << p.b->link->frames_sent);
  REQUIRE(drained);
  CHECK(payloads(p.b->recorder) == numbered(0, 30));
  CHECK(p.a->delivery->stats().messages_retransmitted > 0);
}

TEST_CASE("delivery: duplicated and reordered frames are delivered once, in send order") {
  Pair p;
  p.wire.copies = [](const std::string&, ByteView) { return 3; };
  p.wire.hold_back = true;
  for (const auto& m : numbered(0, 12)) REQUIRE(p.send(*p.a, bob, m, m));
  // Every frame arrives three times, newest first.
  p.wire.releaseReversed();
  REQUIRE(p.run([&] { return p.a->delivery->inFlight(bob) == 0; }));
  p.settle();
  CHECK(payloads(p.b->recorder) == numbered(0, 12));
  CHECK(p.b->delivery->stats().messages_duplicate > 0);
  CHECK(p.b->delivery->stats().messages_stored == 12);
}

TEST_CASE("delivery: store and forward while the peer is down, across a sender restart") {
  Pair p;
  p.wire.down.insert(bob);
  for (const auto& m : numbered(0, 10)) REQUIRE(p.send(*p.a, bob, m, m));
  p.run([] { return false; }, 5'000'000);
  CHECK(p.b->recorder.got.empty());
  // The sender restarts with everything still in its outbox.
  p.a->restart();
  CHECK(p.a->store->pending(bob, 100).value().size() == 10);
  p.wire.down.erase(bob);
  p.b->delivery->onPeerUp(alice);
  p.a->delivery->onPeerUp(bob);
  REQUIRE(p.run([&] { return p.a->delivery->inFlight(bob) == 0; }));
  p.settle();
  CHECK(payloads(p.b->recorder) == numbered(0, 10));
}

TEST_CASE("delivery: a receiver restart hands over stored messages again, in order, and "
          "later ones follow") {
  Pair p;
  for (const auto& m : numbered(0, 5)) REQUIRE(p.send(*p.a, bob, m, m));
  REQUIRE(p.run([&] { return p.b->recorder.got.size() == 5; }));
  p.b->restart();
  CHECK(payloads(p.b->recorder) == numbered(0, 5));
  for (const auto& m : numbered(5, 10)) REQUIRE(p.send(*p.a, bob, m, m));
  REQUIRE(p.run([&] { return p.b->recorder.got.size() == 10; }));
  CHECK(payloads(p.b->recorder) == numbered(0, 10));
}

TEST_CASE("delivery: out-of-order arrivals wait in the inbox, also across a restart") {
  Pair p;
  // The first message's frames are lost until released; later ones arrive.
  bool drop_first = true;
  p.wire.copies = [&](const std::string& to, ByteView frame) {
    if (to == bob && drop_first) {
      auto text = textOf(frame);
      if (text.find("m0") != std::string::npos) return 0;
    }
    return 1;
  };
  for (const auto& m : numbered(0, 6)) REQUIRE(p.send(*p.a, bob, m, m));
  p.run([] { return false; }, 1'000'000);
  CHECK(p.b->recorder.got.empty());
  CHECK(p.b->store->unconsumed(alice, 100).value().size() == 5);  // stored, waiting
  CHECK(p.a->delivery->inFlight(bob) == 1);                 // only m0 unacknowledged
  // A restart keeps them waiting (nothing handed over before m0).
  p.b->restart();
  CHECK(p.b->recorder.got.empty());
  drop_first = false;
  REQUIRE(p.run([&] { return p.b->recorder.got.size() == 6; }));
  CHECK(payloads(p.b->recorder) == numbered(0, 6));
}

TEST_CASE("delivery: waiting is bounded; what is over the bound comes again") {
  DeliveryConfig config;
  config.inbox_waiting_messages_max = 3;
  Pair p(config);
  bool drop_first = true;
  p.wire.copies = [&](const std::string& to, ByteView frame) {
    if (to == bob && drop_first && textOf(frame).find("m0") != std::string::npos) return 0;
    return 1;
  };
  for (const auto& m : numbered(0, 10)) REQUIRE(p.send(*p.a, bob, m, m));
  p.run([] { return false; }, 500'000);
  CHECK(p.b->store->unconsumed(alice, 100).value().size() == 3);
  CHECK(p.b->delivery->stats().messages_over_waiting_max > 0);
  drop_first = false;
  REQUIRE(p.run([&] { return p.a->delivery->inFlight(bob) == 0; }));
  CHECK(payloads(p.b->recorder) == numbered(0, 10));
}

TEST_CASE("delivery: the window bounds messages in flight per peer") {
  DeliveryConfig config;
  config.window_messages_max = 4;
  Pair p(config);
  p.wire.down.insert(bob);
  for (const auto& m : numbered(0, 20)) REQUIRE(p.send(*p.a, bob, m, m));
  p.run([] { return false; }, 2'000'000);
  CHECK(p.a->delivery->inFlight(bob) == 4);
  CHECK(p.a->store->pending(bob, 100).value().size() == 20);
  p.wire.down.erase(bob);
  p.a->delivery->onPeerUp(bob);
  REQUIRE(p.run([&] { return p.a->delivery->inFlight(bob) == 0; }));
  CHECK(payloads(p.b->recorder) == numbered(0, 20));
}

TEST_CASE("delivery: a message sent while the window has room goes out from send()'s copy once "
          "durable; beyond the window it is read back from the outbox, in order") {
  DeliveryConfig config;
  config.window_messages_max = 8;
  Pair p(config);
  // The first send finds the outbox not yet read: one read, then the window
  // follows the outbox by itself.
  REQUIRE(p.send(*p.a, bob, "m0", "m0"));
  REQUIRE(p.run([&] { return p.b->recorder.got.size() == 1; }));
  const uint64_t reads = p.a->delivery->stats().outbox_reads;
  CHECK(reads >= 1);
  for (const auto& m : numbered(1, 6)) REQUIRE(p.send(*p.a, bob, m, m));
  REQUIRE(p.run([&] { return p.b->recorder.got.size() == 6; }));
  CHECK(p.a->delivery->stats().outbox_reads == reads);
  CHECK(payloads(p.b->recorder) == numbered(0, 6));
  // Many at once while the peer is away: the window's worth goes from the
  // copies, the rest is read from the outbox as acknowledgements free room.
  p.wire.down.insert(bob);
  int accepted = 0;
  for (const auto& m : numbered(6, 40)) {
    p.a->delivery->send(bob, msgId(m), bytesOf(m), [&](const Status& s) {
      CHECK(s.ok());
      ++accepted;
    });
  }
  // (A send's completion may run before its message takes its place in the
  // window: wait for both, then the window holds exactly its bound.)
  REQUIRE(p.run([&] { return accepted == 34 && p.a->delivery->inFlight(bob) >= 8; }));
  CHECK(p.a->delivery->inFlight(bob) == 8);
  p.wire.down.erase(bob);
  p.a->delivery->onPeerUp(bob);
  REQUIRE(p.run([&] { return p.a->delivery->inFlight(bob) == 0 && p.b->recorder.got.size() == 40; }));
  CHECK(payloads(p.b->recorder) == numbered(0, 40));
  CHECK(p.a->delivery->stats().outbox_reads > reads);
  // The acknowledgements' removals from the outbox are writes of their own.
  REQUIRE(p.run([&] { return p.a->store->pending(bob, 100).value().empty(); }));
  // A restarted sender reads its outbox first, then follows it by itself again.
  p.a->restart();
  REQUIRE(p.send(*p.a, bob, "m40", "m40"));
  REQUIRE(p.send(*p.a, bob, "m41", "m41"));
  REQUIRE(p.run([&] { return p.b->recorder.got.size() == 42; }));
  CHECK(payloads(p.b->recorder) == numbered(0, 42));
}

TEST_CASE("delivery: send refuses what it cannot deliver, before storing it") {
  DeliveryConfig config;
  config.knows_peer = [](std::string_view peer) { return peer == alice || peer == bob; };
  Pair p(config);
  Status unknown = p.send(*p.a, "O=Nobody, L=Nowhere, C=XX", "x", "x");
  REQUIRE(!unknown.ok());
  CHECK(unknown.error().code == Errc::not_found);
  CHECK(unknown.error().message.find("O=Nobody") != std::string::npos);

  std::optional<Status> big;
  p.a->delivery->send(bob, msgId("big"), Bytes(p.a->delivery->payloadBytesMax() + 1, 7),
                      [&](const Status& s) { big = s; });
  REQUIRE(p.run([&] { return big.has_value(); }));
  REQUIRE(!big->ok());
  CHECK(big->error().code == Errc::too_large);

  // The largest payload goes through.
  std::optional<Status> largest;
  p.a->delivery->send(bob, msgId("largest"), Bytes(p.a->delivery->payloadBytesMax(), 7),
                      [&](const Status& s) { largest = s; });
  REQUIRE(p.run([&] { return largest.has_value(); }));
  CHECK(largest->ok());
  const bool arrived = p.run([&] { return p.b->recorder.got.size() == 1; });
  INFO("a: " << (p.a->logs.empty() ? "" : p.a->logs.back()));
  INFO("b: " << (p.b->logs.empty() ? "" : p.b->logs.back()));
  REQUIRE(arrived);
  CHECK(p.b->recorder.got[0].payload.size() == p.a->delivery->payloadBytesMax());
  p.settle();

  // The same id again with the same payload is fine (a replaying flow); with
  // another payload while pending, a conflict.
  p.wire.down.insert(bob);
  REQUIRE(p.send(*p.a, bob, "same", "one"));
  CHECK(p.send(*p.a, bob, "same", "one").ok());
  Status conflict = p.send(*p.a, bob, "same", "two");
  REQUIRE(!conflict.ok());
  CHECK(conflict.error().code == Errc::conflict);
  CHECK(p.a->store->pending(bob, 100).value().size() == 1);
}

TEST_CASE("delivery: malformed frames are dropped with a reason and harm nothing") {
  Pair p;
  REQUIRE(p.send(*p.a, bob, "m0", "m0"));
  REQUIRE(p.run([&] { return p.b->recorder.got.size() == 1; }));
  Delivery& d = *p.b->delivery;
  const MessageId id = msgId("evil");
  std::vector<std::pair<std::string, Bytes>> bad = {
      {"empty", {}},
      {"garbage", bytesOf("not a frame at all")},
      {"incarnation 0", encodeMessageFrame(0, 1, 1, id, bytesOf("x"))},
      {"seq 0", encodeMessageFrame(3, 0, 0, id, bytesOf("x"))},
      {"floor 0", encodeMessageFrame(3, 5, 0, id, bytesOf("x"))},
      {"floor above seq", encodeMessageFrame(3, 5, 6, id, bytesOf("x"))},
      {"ack too long", encodeAckFrame(3, 0, std::vector<uint64_t>(5000, 1))},
      {"ack seq not above upTo", encodeAckFrame(3, 10, {4})},
      {"ack incarnation 0", encodeAckFrame(0, 10, {})},
  };
  // A frame with trailing bytes is not canonical.
  Bytes trailing = encodeMessageFrame(7, 1, 1, id, bytesOf("x"));
  trailing.resize(trailing.size() + 8, 0);
  bad.push_back({"trailing bytes", trailing});
  Bytes short_id = encodeMessageFrame(7, 1, 1, id, bytesOf("x"));
  bad.push_back({"truncated", Bytes(short_id.begin(), short_id.begin() + 24)});
  const auto before = d.stats().frames_malformed;
  for (const auto& entry : bad) {  // not a structured binding: CAPTURE is a lambda (clang 14)
    const std::string& what = entry.first;
    CAPTURE(what);
    d.onFrame(alice, entry.second);
  }
  p.settle();
  CHECK(d.stats().frames_malformed == before + bad.size());
  CHECK(p.b->logs.size() >= bad.size());
  CHECK(p.b->logs.front().find("alice") == std::string::npos);
  CHECK(p.b->logs.front().find(alice) != std::string::npos);
  // Still works.
  REQUIRE(p.send(*p.a, bob, "m1", "m1"));
  REQUIRE(p.run([&] {
    return std::any_of(p.b->recorder.got.begin(), p.b->recorder.got.end(),
                       [](const Received& r) { return r.payload == "m1"; });
  }));
}

TEST_CASE("delivery: frame encodings decode back and are canonical") {
  const MessageId id = msgId("a");
  Bytes frame = encodeMessageFrame(1'700'000'000'000'000, 9, 4, id, bytesOf("payload"));
  CHECK(frame.size() % 8 == 0);
  CHECK(frame.size() <= 7 + message_frame_overhead_bytes);
  // An ack of 1000 seqs fits the bound used to split acks.
  Bytes ack = encodeAckFrame(1'700'000'000'000'000, 5000, std::vector<uint64_t>(1000, 6000));
  CHECK(ack.size() <= 64 + 1000 * 8);
}

TEST_CASE("delivery: thousands of mutated frames from a peer never crash it nor disturb others") {
  Pair p;
  const std::string mallory = "O=Mallory Trading, L=Nowhere, C=XX";
  std::vector<Bytes> seeds = {
      encodeMessageFrame(5, 3, 2, msgId("x"), bytesOf("payload")),
      encodeMessageFrame(5, 1, 1, msgId("y"), bytesOf("")),
      encodeAckFrame(5, 2, {4, 7}),
  };
  uint64_t x = 99;
  auto next = [&] {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    return x >> 33;
  };
  Delivery& d = *p.b->delivery;
  for (int i = 0; i < 3000; ++i) {
    Bytes frame = seeds[next() % seeds.size()];
    switch (next() % 4) {
      case 0:  // flip bytes
        for (int k = 0; k < 1 + static_cast<int>(next() % 4); ++k) {
          frame[next() % frame.size()] ^= static_cast<uint8_t>(1 + next() % 255);
        }
        break;
      case 1:  // truncate
        frame.resize(next() % frame.size());
        break;
      case 2:  // extend
        for (int k = 0; k < 1 + static_cast<int>(next() % 16); ++k) {
          frame.push_back(static_cast<uint8_t>(next()));
        }
        break;
      default:  // random bytes
        frame.assign(next() % 96, 0);
        for (auto& b : frame) b = static_cast<uint8_t>(next());
    }
    d.onFrame(mallory, frame);
    if (i % 100 == 0) p.settle();
  }
  p.settle();
  CHECK(d.stats().frames_malformed > 1000);
  // Whatever Mallory's frames did, Alice's messages still arrive in order.
  for (const auto& m : numbered(0, 5)) REQUIRE(p.send(*p.a, bob, m, m));
  REQUIRE(p.run([&] { return p.a->delivery->inFlight(bob) == 0; }));
  p.settle();
  std::vector<std::string> from_alice;
  for (const auto& r : p.b->recorder.got) {
    if (r.peer == alice) from_alice.push_back(r.payload);
  }
  CHECK(from_alice == numbered(0, 5));
}

TEST_CASE("delivery: a peer reusing a seq with another id is refused, naming both ids") {
  Pair p;
  REQUIRE(p.send(*p.a, bob, "m0", "m0"));
  REQUIRE(p.run([&] { return p.b->recorder.got.size() == 1; }));
  const uint64_t stream = p.a->store->outboxStream(bob).value().incarnation;
  REQUIRE(stream != 0);
  Delivery& d = *p.b->delivery;
  // Seq 1 again under another id: handed over (and consumed or not) before.
  d.onFrame(alice, encodeMessageFrame(stream, 1, 1, msgId("impostor"), bytesOf("x")));
  // Seq 3 (above the watermark) twice, under two ids.
  d.onFrame(alice, encodeMessageFrame(stream, 3, 2, msgId("third"), bytesOf("3")));
  d.onFrame(alice, encodeMessageFrame(stream, 3, 2, msgId("other third"), bytesOf("3")));
  p.settle();
  CHECK(d.stats().messages_conflicting == 2);
  const auto logged = [&](const MessageId& a, const MessageId& b) {
    return std::any_of(p.b->logs.begin(), p.b->logs.end(), [&](const std::string& line) {
      return line.find(a.hex()) != std::string::npos && line.find(b.hex()) != std::string::npos;
    });
  };
  CHECK(logged(msgId("impostor"), msgId("m0")));
  CHECK(logged(msgId("other third"), msgId("third")));
  CHECK(payloads(p.b->recorder) == std::vector<std::string>{"m0"});
}

TEST_CASE("delivery: a sender whose store is wiped starts a newer stream; the receiver says so "
          "and loses or repeats nothing") {
  Pair p;
  for (const auto& m : numbered(0, 5)) REQUIRE(p.send(*p.a, bob, m, m));
  REQUIRE(p.run([&] { return p.a->delivery->inFlight(bob) == 0; }));
  const uint64_t old_stream = p.a->store->outboxStream(bob).value().incarnation;
  // Alice's disk is replaced, a second later; her seqs start at 1 again.
  p.executor.runAfter(1'000'000, [] {});
  p.run([] { return false; }, 2'000'000);
  p.a->wipe();
  CHECK(p.a->store->outboxStream(bob).value().incarnation == 0);
  for (const auto& m : numbered(5, 10)) REQUIRE(p.send(*p.a, bob, m, m));
  REQUIRE(p.run([&] { return p.a->delivery->inFlight(bob) == 0; }));
  p.settle();
  const uint64_t new_stream = p.a->store->outboxStream(bob).value().incarnation;
  CHECK(new_stream > old_stream);
  CHECK(payloads(p.b->recorder) == numbered(0, 10));
  CHECK(p.b->delivery->stats().stream_restarts == 1);
  CHECK(std::any_of(p.b->logs.begin(), p.b->logs.end(), [](const std::string& line) {
    return line.find("restarted its message numbering") != std::string::npos;
  }));
  // A late frame of the old stream is dropped, with a reason.
  p.b->delivery->onFrame(alice, encodeMessageFrame(old_stream, 6, 6, msgId("late"), bytesOf("l")));
  p.settle();
  CHECK(p.b->delivery->stats().messages_stale_stream == 1);
  CHECK(payloads(p.b->recorder) == numbered(0, 10));
  // After a receiver restart the newer stream goes on.
  p.b->restart();
  for (const auto& m : numbered(10, 12)) REQUIRE(p.send(*p.a, bob, m, m));
  REQUIRE(p.run([&] { return p.b->recorder.got.size() == 12; }));
  CHECK(payloads(p.b->recorder) == numbered(0, 12));  // none consumed: all again, in order
}

TEST_CASE("delivery: a receiver whose store is wiped takes the stream up at the sender's floor") {
  Pair p;
  for (const auto& m : numbered(0, 5)) REQUIRE(p.send(*p.a, bob, m, m));
  REQUIRE(p.run([&] { return p.a->delivery->inFlight(bob) == 0; }));
  p.b->wipe();
  for (const auto& m : numbered(5, 10)) REQUIRE(p.send(*p.a, bob, m, m));
  REQUIRE(p.run([&] { return p.a->delivery->inFlight(bob) == 0; }));
  p.settle();
  CHECK(payloads(p.b->recorder) == numbered(5, 10));
  auto state = p.b->store->receiveState(alice).value();
  REQUIRE(state.has_value());
  CHECK(state->watermark == 10);
}
