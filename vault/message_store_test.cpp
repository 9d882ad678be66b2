#include "vault/message_store.h"

#include <doctest/doctest.h>

#include "test/support/temp_dir.h"
#include <unistd.h>

#include <atomic>
#include <future>
#include <optional>
#include <filesystem>
#include <map>
#include <set>
#include <thread>

#include "vault/vault.h"

using namespace ccal;
using namespace ccal::vault;

namespace {

MessageId msgId(std::string_view name) {
  return SecureHash::of(asBytes(name));
}
Bytes bytesOf(std::string_view s) {
  return Bytes(s.begin(), s.end());
}

bool contains(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

const std::string alice = "O=Haikou Fishing Cooperative, L=Haikou, C=CN";
const std::string bob = "O=Sanya Tea Cooperative, L=Sanya, C=CN";
const std::string bank = "O=Hainan Rural Bank, L=Haikou, C=CN";

struct Fixture {
  ccal::testing::TempDir dir{"ccal-message-store-test"};
  ContractRegistry registry;
  std::atomic<int64_t> clock{1'000};
  std::unique_ptr<Vault> vault;
  std::unique_ptr<MessageStore> messages;

  Fixture() { open(); }

  void open() {
    VaultConfig config;
    config.store.path = dir.path;
    config.store.durable = false;
    vault = Vault::open(config, registry, {}).value();
    messages = std::make_unique<MessageStore>(vault->store(), [this] { return clock.load(); });
  }

  void reopen() {
    vault.reset();  // drains queued writes first
    messages.reset();
    open();
  }

  bool enqueue(const std::string& peer, std::string_view id, std::string_view payload) {
    auto r = messages->enqueue(peer, msgId(id), asBytes(payload));
    REQUIRE_MESSAGE(r.ok(), r.error().toString());
    return *r;
  }

  uint64_t acknowledge(const std::string& peer, std::vector<uint64_t> seqs) {
    auto r = messages->acknowledge(peer, std::move(seqs));
    REQUIRE_MESSAGE(r.ok(), r.error().toString());
    return *r;
  }

  // Receives one message of the peer's stream `inc`.
  ArrivalResult arrive(const std::string& peer, uint64_t inc, uint64_t floor, uint64_t seq,
                       std::string_view id, std::string_view payload = "p") {
    std::vector<ArrivingMessage> one;
    one.push_back(ArrivingMessage{seq, msgId(id), bytesOf(payload)});
    auto r = messages->receive(peer, inc, floor, std::move(one));
    REQUIRE_MESSAGE(r.ok(), r.error().toString());
    REQUIRE(r->arrivals.size() == 1);
    return r->arrivals[0];
  }
  Arrival arriveKind(const std::string& peer, uint64_t seq, std::string_view id,
                     std::string_view payload = "p") {
    return arrive(peer, 7, 1, seq, id, payload).kind;
  }

  uint64_t watermark(const std::string& peer) {
    auto s = messages->receiveState(peer);
    REQUIRE_MESSAGE(s.ok(), s.error().toString());
    REQUIRE(s->has_value());
    return (*s)->watermark;
  }

  Result<bool> consume(const std::string& peer, uint64_t inc, uint64_t seq, std::string_view id) {
    return messages->consume(InboxKey{peer, inc, seq, msgId(id)});
  }

  std::vector<OutboxMessage> pending(const std::string& peer, uint32_t limit = 100,
                                     uint64_t from_seq = 0) {
    auto r = messages->pending(peer, limit, from_seq);
    REQUIRE_MESSAGE(r.ok(), r.error().toString());
    return *r;
  }

  std::vector<InboxMessage> unconsumed(const std::string& peer, uint32_t limit = 100) {
    auto r = messages->unconsumed(peer, limit);
    REQUIRE_MESSAGE(r.ok(), r.error().toString());
    return *r;
  }
};

std::vector<Bytes> payloads(const std::vector<OutboxMessage>& ms) {
  std::vector<Bytes> out;
  for (const auto& m : ms) out.push_back(m.payload);
  return out;
}

std::vector<uint64_t> seqsOf(const std::vector<OutboxMessage>& ms) {
  std::vector<uint64_t> out;
  for (const auto& m : ms) out.push_back(m.seq);
  return out;
}

std::vector<uint64_t> seqsOf(const std::vector<InboxMessage>& ms) {
  std::vector<uint64_t> out;
  for (const auto& m : ms) out.push_back(m.seq);
  return out;
}

std::vector<Bytes> list(std::initializer_list<std::string_view> items) {
  std::vector<Bytes> out;
  for (auto s : items) out.push_back(bytesOf(s));
  return out;
}

using Seqs = std::vector<uint64_t>;

}  // namespace

// ---------------------------------------------------------------- outbox

TEST_CASE_FIXTURE(Fixture, "outbox: each peer's stream is numbered 1, 2, 3 in enqueue order") {
  CHECK(messages->outboxStream(alice).value().incarnation == 0);
  CHECK(enqueue(alice, "a1", "to alice 1"));
  CHECK(enqueue(bob, "b1", "to bob 1"));
  CHECK(enqueue(alice, "a2", "to alice 2"));
  CHECK(enqueue(bob, "b2", "to bob 2"));
  CHECK(enqueue(alice, "a3", "to alice 3"));
  auto to_alice = pending(alice);
  CHECK(payloads(to_alice) == list({"to alice 1", "to alice 2", "to alice 3"}));
  CHECK(to_alice[0].id == msgId("a1"));
  CHECK(to_alice[0].peer == alice);
  CHECK(seqsOf(to_alice) == Seqs{1, 2, 3});
  CHECK(seqsOf(pending(bob)) == Seqs{1, 2});
  CHECK(pending(bank).empty());
  // The stream's incarnation comes from the clock at its first message.
  auto stream = messages->outboxStream(alice).value();
  CHECK(stream.incarnation == 1'000);
  CHECK(stream.next_seq == 4);
  // Paging: a limit, and a start seq.
  CHECK(payloads(pending(alice, 2)) == list({"to alice 1", "to alice 2"}));
  CHECK(payloads(pending(alice, 100, 2)) == list({"to alice 2", "to alice 3"}));
  CHECK(payloads(pending(alice, 100, 4)).empty());
}

TEST_CASE_FIXTURE(Fixture, "outbox: enqueueing a pending id again is a no-op, another payload a conflict") {
  CHECK(enqueue(alice, "m", "payload"));
  CHECK_FALSE(enqueue(alice, "m", "payload"));
  CHECK(pending(alice).size() == 1);
  // The same id with another payload is a bug in the sender's id derivation.
  auto other = messages->enqueue(alice, msgId("m"), asBytes("different"));
  REQUIRE_FALSE(other.ok());
  CHECK(other.error().code == Errc::conflict);
  CHECK_MESSAGE(contains(other.error().message, msgId("m").hex()), other.error().message);
  CHECK_MESSAGE(contains(other.error().message, alice), other.error().message);
  CHECK_MESSAGE(contains(other.error().message, "7 bytes, now 9"), other.error().message);
  CHECK(payloads(pending(alice)) == list({"payload"}));
  // Ids are scoped by peer.
  CHECK(enqueue(bob, "m", "payload"));
  CHECK(pending(bob).size() == 1);
  // In one batch: the second copy is a no-op, a conflict fails only its own item.
  std::vector<OutgoingMessage> batch;
  batch.push_back(OutgoingMessage{bank, msgId("x"), bytesOf("1")});
  batch.push_back(OutgoingMessage{bank, msgId("x"), bytesOf("1")});
  batch.push_back(OutgoingMessage{bank, msgId("x"), bytesOf("2")});
  batch.push_back(OutgoingMessage{bank, msgId("y"), bytesOf("3")});
  std::promise<Result<std::vector<Result<Enqueued>>>> done;
  messages->enqueueBatchAsync(std::move(batch), [&](const auto& r) { done.set_value(r); });
  auto results = done.get_future().get();
  REQUIRE(results.ok());
  REQUIRE(results->size() == 4);
  // Each queued message says where it is in the stream; the no-op names the
  // seq it is pending at.
  const uint64_t incarnation = messages->outboxStream(bank).value().incarnation;
  CHECK(incarnation != 0);
  CHECK((*results)[0].value().queued);
  CHECK((*results)[0].value().seq == 1);
  CHECK((*results)[0].value().incarnation == incarnation);
  CHECK_FALSE((*results)[1].value().queued);
  CHECK((*results)[1].value().seq == 1);
  CHECK((*results)[1].value().incarnation == incarnation);
  CHECK((*results)[2].error().code == Errc::conflict);
  CHECK((*results)[3].value().queued);
  CHECK((*results)[3].value().seq == 2);
  CHECK((*results)[3].value().incarnation == incarnation);
  CHECK(payloads(pending(bank)) == list({"1", "3"}));
  CHECK(seqsOf(pending(bank)) == Seqs{1, 2});
}

TEST_CASE_FIXTURE(Fixture, "outbox: acknowledging by seq removes; twice or unknown is a no-op") {
  enqueue(alice, "a1", "1");
  enqueue(alice, "a2", "2");
  enqueue(alice, "a3", "3");
  CHECK(acknowledge(alice, {2}) == 1);
  CHECK(payloads(pending(alice)) == list({"1", "3"}));
  CHECK(acknowledge(alice, {2, 99}) == 0);
  CHECK(acknowledge(bob, {1}) == 0);  // another peer's stream
  CHECK(payloads(pending(alice)) == list({"1", "3"}));
  // An acknowledged id is no longer pending: the same id queues again, as a
  // new message at the end (see message_store.h).
  CHECK(enqueue(alice, "a2", "2"));
  CHECK(seqsOf(pending(alice)) == Seqs{1, 3, 4});
  // A pending one is still a no-op.
  CHECK_FALSE(enqueue(alice, "a1", "1"));
}

TEST_CASE_FIXTURE(Fixture,
                  "outbox: a peer's pending messages are bounded; others' are not affected") {
  messages->setOutboxMessagesPerPeerMax(3);
  enqueue(alice, "a1", "1");
  enqueue(alice, "a2", "2");
  enqueue(alice, "a3", "3");
  auto over = messages->enqueue(alice, msgId("a4"), asBytes("4"));
  REQUIRE(!over);
  CHECK(over.error().code == Errc::too_large);
  CHECK(over.error().message.find("3 messages for '" + alice + "' are pending, the limit") !=
        std::string::npos);
  CHECK_FALSE(enqueue(alice, "a1", "1"));  // a pending one is still a no-op, not refused
  CHECK(enqueue(bob, "b1", "1"));          // another peer's outbox has room
  CHECK(acknowledge(alice, {1}) == 1);
  CHECK(enqueue(alice, "a4", "4"));  // room again
  CHECK(payloads(pending(alice)) == list({"2", "3", "4"}));
  // In a batch, the messages over the limit are refused, the others queued.
  std::vector<OutgoingMessage> batch;
  for (const char* id : {"b2", "b3", "b4"}) batch.push_back({bob, msgId(id), Bytes{1}});
  std::promise<std::vector<Result<Enqueued>>> got;
  messages->enqueueBatchAsync(
      std::move(batch),
      [&](const Result<std::vector<Result<Enqueued>>>& r) { got.set_value(r.value()); });
  auto results = got.get_future().get();
  REQUIRE(results.size() == 3);
  CHECK(results[0].ok());
  CHECK(results[1].ok());
  CHECK(!results[2].ok());
}

TEST_CASE_FIXTURE(Fixture, "outbox: peers with pending messages, in name order, paged") {
  CHECK(messages->outboxPeers(10).value().empty());
  // Names that are prefixes of one another are still separate peers.
  for (const char* peer : {"b", "a", "ab", "a b", "c"}) {
    enqueue(peer, std::string("x-") + peer, "x");
    enqueue(peer, std::string("y-") + peer, "y");
  }
  using V = std::vector<std::string>;
  CHECK(messages->outboxPeers(10).value() == V{"a", "a b", "ab", "b", "c"});
  CHECK(messages->outboxPeers(2).value() == V{"a", "a b"});
  CHECK(messages->outboxPeers(2, "a b").value() == V{"ab", "b"});
  CHECK(messages->outboxPeers(10, "b").value() == V{"c"});
  CHECK(messages->outboxPeers(10, "c").value().empty());
  CHECK(acknowledge("ab", {1, 2}) == 2);
  CHECK(messages->outboxPeers(10).value() == V{"a", "a b", "b", "c"});
  CHECK(payloads(pending("a")) == list({"x", "y"}));
}

TEST_CASE_FIXTURE(Fixture, "outbox: the stream and pending ids survive a restart; seqs are never reused") {
  enqueue(alice, "a1", "1");
  enqueue(bob, "b1", "1");
  enqueue(alice, "a2", "2");
  const uint64_t incarnation = messages->outboxStream(alice).value().incarnation;
  CHECK(acknowledge(alice, {1, 2}) == 2);
  clock = 5'000;
  reopen();
  CHECK(pending(alice).empty());
  CHECK(payloads(pending(bob)) == list({"1"}));  // unacknowledged: still pending
  enqueue(alice, "a3", "3");
  CHECK(seqsOf(pending(alice)) == Seqs{3});
  CHECK(messages->outboxStream(alice).value().incarnation == incarnation);  // not the clock's
  CHECK_FALSE(enqueue(bob, "b1", "1"));  // still a no-op after the restart
  CHECK(messages->enqueue(bob, msgId("b1"), asBytes("other")).error().code == Errc::conflict);
}

TEST_CASE_FIXTURE(Fixture, "outbox: concurrent enqueueing loses and duplicates nothing") {
  constexpr int threads = 4, per_thread = 150;
  const std::vector<std::string> peers = {alice, bob, bank};
  std::atomic<int> added{0}, repeated{0}, errors{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      for (int i = 0; i < per_thread; ++i) {
        const std::string& peer = peers[static_cast<size_t>(i) % peers.size()];
        const std::string name = std::to_string(t) + ":" + std::to_string(i);
        auto r = messages->enqueue(peer, msgId(name), asBytes(name));
        if (!r.ok()) {
          ++errors;
        } else if (*r) {
          ++added;
        } else {
          ++repeated;  // the previous thread queued it first
        }
        // Every other message is also enqueued by the next thread (a sender
        // replaying): it must not be queued twice.
        if (i % 2 == 0) {
          const std::string theirs = std::to_string((t + 1) % threads) + ":" + std::to_string(i);
          auto again = messages->enqueue(peer, msgId(theirs), asBytes(theirs));
          if (!again.ok()) {
            ++errors;
          } else if (*again) {
            ++added;
          } else {
            ++repeated;
          }
        }
      }
    });
  }
  for (auto& w : workers) w.join();
  CHECK(errors == 0);
  CHECK(added == threads * per_thread);
  CHECK(repeated == threads * per_thread / 2);
  std::set<std::string> seen;
  for (const auto& peer : peers) {
    auto all = pending(peer, message_listing_max);
    // Odd-numbered messages are enqueued by their own thread only: to a
    // peer, they appear in the order that thread sent them.
    std::map<int, int> last_odd_of_thread;
    for (const auto& m : all) {
      std::string name(m.payload.begin(), m.payload.end());
      CHECK(seen.insert(name).second);
      CHECK(m.id == msgId(name));
      const int t = std::stoi(name.substr(0, name.find(':')));
      const int i = std::stoi(name.substr(name.find(':') + 1));
      if (i % 2 == 1) {
        auto [it, first] = last_odd_of_thread.emplace(t, i);
        if (!first) {
          CHECK(i > it->second);
          it->second = i;
        }
      }
    }
  }
  CHECK(seen.size() == static_cast<size_t>(threads * per_thread));
}

TEST_CASE_FIXTURE(Fixture, "outbox: async enqueue reports after the commit; refusals at once") {
  std::atomic<int> added{0}, failed{0};
  for (int i = 0; i < 500; ++i) {
    messages->enqueueAsync(alice, msgId("async" + std::to_string(i)), asBytes(std::to_string(i)),
                           [&](const Result<bool>& r) {
                             if (r.ok() && *r) {
                               ++added;
                             } else {
                               ++failed;
                             }
                           });
  }
  std::optional<Result<bool>> refused;
  messages->enqueueAsync(alice, msgId("big"), Bytes(message_payload_bytes_max + 1),
                         [&](const Result<bool>& r) { refused = r; });
  REQUIRE(refused.has_value());  // called before enqueueAsync returned
  CHECK(refused->error().code == Errc::too_large);
  // A blocking call queued behind them returns after they are all done.
  CHECK(acknowledge(alice, {1}) == 1);
  CHECK(added == 500);
  CHECK(failed == 0);
  auto all = pending(alice, message_listing_max);
  REQUIRE(all.size() == 499);
  for (int i = 1; i < 500; ++i) CHECK(all[i - 1].payload == bytesOf(std::to_string(i)));
}

// ---------------------------------------------------------------- inbox

TEST_CASE_FIXTURE(Fixture, "inbox: in order, the watermark follows; duplicates below it are not stored") {
  CHECK_FALSE(messages->receiveState(alice).value().has_value());
  auto first = arrive(alice, 7, 1, 1, "m1", "hello");
  CHECK(first.kind == Arrival::stored);
  CHECK(watermark(alice) == 1);
  CHECK(arriveKind(alice, 2, "m2") == Arrival::stored);
  CHECK(watermark(alice) == 2);
  CHECK(arriveKind(alice, 1, "m1", "a replay with other bytes") == Arrival::duplicate);
  CHECK(arriveKind(alice, 2, "m2") == Arrival::duplicate);
  auto inbox = unconsumed(alice);
  REQUIRE(inbox.size() == 2);
  CHECK(inbox[0].payload == bytesOf("hello"));
  CHECK(inbox[0].id == msgId("m1"));
  CHECK(inbox[0].incarnation == 7);
  CHECK(seqsOf(inbox) == Seqs{1, 2});
  // Consumed, a copy is still a duplicate (by the watermark, not by a record).
  CHECK(consume(alice, 7, 1, "m1").value());
  CHECK(arriveKind(alice, 1, "m1") == Arrival::duplicate);
  CHECK(seqsOf(unconsumed(alice)) == Seqs{2});
  // Another peer's stream is separate.
  CHECK(arrive(bob, 3, 1, 1, "m1").kind == Arrival::stored);
  CHECK(watermark(bob) == 1);
}

TEST_CASE_FIXTURE(Fixture, "inbox: a seq reused under another id is a conflict naming both ids") {
  CHECK(arriveKind(alice, 1, "m1") == Arrival::stored);
  CHECK(arriveKind(alice, 3, "m3") == Arrival::stored);  // above the watermark: in the inbox
  auto below = arrive(alice, 7, 1, 1, "other1");
  CHECK(below.kind == Arrival::conflict);
  CHECK(below.other_id == msgId("m1"));
  auto above = arrive(alice, 7, 1, 3, "other3");
  CHECK(above.kind == Arrival::conflict);
  CHECK(above.other_id == msgId("m3"));
  // Consumed: the id log still has it.
  CHECK(consume(alice, 7, 1, "m1").value());
  CHECK(arrive(alice, 7, 1, 1, "other1").kind == Arrival::conflict);
  CHECK(seqsOf(unconsumed(alice)) == Seqs{3});
  CHECK(unconsumed(alice)[0].id == msgId("m3"));
}

TEST_CASE_FIXTURE(Fixture, "inbox: gaps wait above the watermark; filling one moves it over the run") {
  CHECK(arriveKind(alice, 1, "m1") == Arrival::stored);
  CHECK(arriveKind(alice, 3, "m3") == Arrival::stored);
  CHECK(arriveKind(alice, 4, "m4") == Arrival::stored);
  CHECK(arriveKind(alice, 6, "m6") == Arrival::stored);
  CHECK(watermark(alice) == 1);
  CHECK(arriveKind(alice, 4, "m4") == Arrival::duplicate);  // duplicate above the watermark
  CHECK(arriveKind(alice, 2, "m2") == Arrival::stored);
  CHECK(watermark(alice) == 4);  // over 2, 3, 4; 5 is missing
  CHECK(arriveKind(alice, 5, "m5") == Arrival::stored);
  CHECK(watermark(alice) == 6);
  CHECK(seqsOf(unconsumed(alice)) == Seqs{1, 2, 3, 4, 5, 6});
  // Several in one request, in any order, with a duplicate among them.
  std::vector<ArrivingMessage> batch;
  for (uint64_t seq : {9, 8, 7, 8, 11}) {
    batch.push_back(ArrivingMessage{seq, msgId("m" + std::to_string(seq)), bytesOf("p")});
  }
  auto r = messages->receive(alice, 7, 1, std::move(batch));
  REQUIRE(r.ok());
  std::vector<Arrival> kinds;
  for (const auto& a : r->arrivals) kinds.push_back(a.kind);
  CHECK(kinds == std::vector<Arrival>{Arrival::stored, Arrival::stored, Arrival::stored,
                                      Arrival::duplicate, Arrival::stored});
  CHECK(r->state.watermark == 9);
  CHECK(watermark(alice) == 9);
}

TEST_CASE_FIXTURE(Fixture, "inbox: the seqs stored above the watermark are bounded") {
  CHECK(arriveKind(alice, 1, "m1") == Arrival::stored);
  const uint64_t edge = 1 + receive_ahead_seqs_max;
  CHECK(arriveKind(alice, edge, "edge") == Arrival::stored);
  CHECK(arriveKind(alice, edge + 1, "beyond") == Arrival::too_far_ahead);
  CHECK(seqsOf(unconsumed(alice)) == Seqs{1, edge});
  // Once the watermark moves, further seqs are taken.
  CHECK(arriveKind(alice, 2, "m2") == Arrival::stored);
  CHECK(arriveKind(alice, edge + 1, "beyond") == Arrival::stored);
}

TEST_CASE_FIXTURE(Fixture, "inbox: watermark, gaps and the inbox survive a restart") {
  CHECK(arriveKind(alice, 1, "m1") == Arrival::stored);
  CHECK(arriveKind(alice, 2, "m2") == Arrival::stored);
  CHECK(arriveKind(alice, 4, "m4") == Arrival::stored);
  CHECK(consume(alice, 7, 1, "m1").value());
  reopen();
  CHECK(watermark(alice) == 2);
  CHECK(seqsOf(unconsumed(alice)) == Seqs{2, 4});
  CHECK(arriveKind(alice, 1, "m1") == Arrival::duplicate);
  CHECK(arriveKind(alice, 4, "m4") == Arrival::duplicate);
  CHECK(arriveKind(alice, 2, "x") == Arrival::conflict);
  CHECK(arriveKind(alice, 3, "m3") == Arrival::stored);
  CHECK(watermark(alice) == 4);
  auto states = messages->receiveStates(10).value();
  REQUIRE(states.size() == 1);
  CHECK(states[0].peer == alice);
  CHECK(states[0].incarnation == 7);
  CHECK(states[0].watermark == 4);
}

TEST_CASE_FIXTURE(Fixture, "inbox: a peer's first message starts its stream at the floor") {
  // Everything below 100 was acknowledged to the sender (by a store this
  // node had before, or never: either way it will not come again).
  auto r = messages->receive(alice, 7, 100, {ArrivingMessage{101, msgId("m101"), bytesOf("p")}});
  REQUIRE(r.ok());
  CHECK(r->stream_started);
  CHECK(r->arrivals[0].kind == Arrival::stored);
  CHECK(r->state.watermark == 99);
  CHECK(arrive(alice, 7, 100, 100, "m100").kind == Arrival::stored);
  CHECK(watermark(alice) == 101);
  CHECK(arrive(alice, 7, 100, 50, "old").kind == Arrival::duplicate);
}

TEST_CASE_FIXTURE(Fixture, "inbox: a newer incarnation restarts the stream; the older one is stale") {
  CHECK(arriveKind(alice, 1, "m1") == Arrival::stored);
  CHECK(arriveKind(alice, 2, "m2") == Arrival::stored);
  CHECK(arriveKind(alice, 4, "m4") == Arrival::stored);  // stranded above a gap
  // The sender's store was wiped: it starts again at seq 1 under incarnation 9.
  auto r = messages->receive(alice, 9, 1, {ArrivingMessage{1, msgId("new1"), bytesOf("n")}});
  REQUIRE(r.ok());
  CHECK(r->stream_restarted);
  CHECK(r->previous_incarnation == 7);
  CHECK(r->previous_watermark == 2);
  CHECK(r->arrivals[0].kind == Arrival::stored);  // not mistaken for old seq 1
  CHECK(r->state.incarnation == 9);
  CHECK(r->state.watermark == 1);
  // The old stream's messages stay in the inbox, before the new one's.
  auto inbox = unconsumed(alice);
  REQUIRE(inbox.size() == 4);
  CHECK(inbox[0].incarnation == 7);
  CHECK(inbox[2].id == msgId("m4"));
  CHECK(inbox[3].incarnation == 9);
  CHECK(inbox[3].id == msgId("new1"));
  // They can still be consumed (handed over: of an older stream).
  CHECK(consume(alice, 7, 4, "m4").value());
  // Frames of the old stream are stale: not stored, not acknowledged.
  CHECK(arriveKind(alice, 3, "m3") == Arrival::stale_stream);
  CHECK(watermark(alice) == 1);
}

TEST_CASE_FIXTURE(Fixture, "inbox: a floor above the watermark reports the lost seqs and moves on") {
  CHECK(arriveKind(alice, 1, "m1") == Arrival::stored);
  CHECK(arriveKind(alice, 6, "m6") == Arrival::stored);
  // The sender says 1..4 were acknowledged: this store lost 2..4.
  auto r = messages->receive(alice, 7, 5, {ArrivingMessage{5, msgId("m5"), bytesOf("p")}});
  REQUIRE(r.ok());
  CHECK(r->skipped_from == 2);
  CHECK(r->skipped_to == 4);
  CHECK(r->arrivals[0].kind == Arrival::stored);
  CHECK(r->state.watermark == 6);
}

TEST_CASE_FIXTURE(Fixture, "inbox: consume answers consumed now, before, never received, wrong id") {
  CHECK(arriveKind(alice, 1, "m1") == Arrival::stored);
  CHECK(arriveKind(alice, 3, "m3") == Arrival::stored);
  CHECK(consume(alice, 7, 1, "m1").value());
  CHECK_FALSE(consume(alice, 7, 1, "m1").value());
  auto never = consume(alice, 7, 2, "m2");
  REQUIRE_FALSE(never.ok());
  CHECK(never.error().code == Errc::not_found);
  CHECK_MESSAGE(contains(never.error().message, "never received"), never.error().message);
  CHECK(consume(bob, 7, 1, "m1").error().code == Errc::not_found);
  auto early = consume(alice, 7, 3, "m3");  // above the watermark: not handed over yet
  REQUIRE_FALSE(early.ok());
  CHECK(early.error().code == Errc::bad_query);
  CHECK_MESSAGE(contains(early.error().message, "watermark"), early.error().message);
  CHECK(arriveKind(alice, 2, "m2") == Arrival::stored);
  auto wrong = consume(alice, 7, 2, "m3");
  REQUIRE_FALSE(wrong.ok());
  CHECK(wrong.error().code == Errc::conflict);
  CHECK_MESSAGE(contains(wrong.error().message, msgId("m2").hex()), wrong.error().message);
  CHECK(consume(alice, 7, 3, "m3").value());
  CHECK(seqsOf(unconsumed(alice)) == Seqs{2});
}

TEST_CASE_FIXTURE(Fixture, "inbox: the id log keeps the most recent seqs; older copies stay duplicates") {
  const uint64_t total = received_ids_kept_max + 2 * message_batch_max;
  for (uint64_t seq = 1; seq <= total;) {
    std::vector<ArrivingMessage> batch;
    for (; batch.size() < message_batch_max && seq <= total; ++seq) {
      batch.push_back(ArrivingMessage{seq, msgId(std::to_string(seq)), {}});
    }
    auto r = messages->receive(alice, 7, 1, std::move(batch));
    REQUIRE(r.ok());
  }
  CHECK(watermark(alice) == total);
  auto first = messages->receivedIds(alice, 1).value();
  REQUIRE(first.size() == 1);
  // At most received_ids_kept_max (+ what one request may leave) are kept.
  CHECK(first[0].seq > total - received_ids_kept_max - message_batch_max);
  CHECK(first[0].id == msgId(std::to_string(first[0].seq)));
  // A copy of a forgotten seq is still a duplicate (the watermark says so);
  // only its id can no longer be compared.
  CHECK(arriveKind(alice, 1, "anything") == Arrival::duplicate);
  CHECK(arriveKind(alice, total, "other") == Arrival::conflict);
}

TEST_CASE_FIXTURE(Fixture, "inbox: racing receives of the same messages: each is stored once") {
  constexpr int threads = 4, seqs = 200;
  std::atomic<int> fresh{0}, dup{0}, errors{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      for (int i = 0; i < seqs; ++i) {
        // Each thread in its own order: some forwards, some backwards.
        const uint64_t seq = t % 2 == 0 ? uint64_t(i + 1) : uint64_t(seqs - i);
        auto r = messages->receive(alice, 7, 1,
                                   {ArrivingMessage{seq, msgId(std::to_string(seq)), {}}});
        if (!r.ok()) {
          ++errors;
        } else if (r->arrivals[0].kind == Arrival::stored) {
          ++fresh;
        } else if (r->arrivals[0].kind == Arrival::duplicate) {
          ++dup;
        } else {
          ++errors;
        }
      }
    });
  }
  for (auto& w : workers) w.join();
  CHECK(errors == 0);
  CHECK(fresh == seqs);
  CHECK(dup == seqs * (threads - 1));
  CHECK(watermark(alice) == seqs);
  CHECK(unconsumed(alice, message_listing_max).size() == seqs);
}

// ---------------------------------------------------------------- limits

TEST_CASE_FIXTURE(Fixture, "message store: limits are enforced and named") {
  auto refused = [](const auto& r, Errc code, std::string_view part) {
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == code);
    CHECK_MESSAGE(contains(r.error().message, part), r.error().message);
  };
  const MessageId id = msgId("m");
  refused(messages->enqueue(alice, id, Bytes(message_payload_bytes_max + 1)), Errc::too_large,
          "message_payload_bytes_max");
  refused(messages->receive(alice, 7, 1, {ArrivingMessage{1, id, Bytes(message_payload_bytes_max + 1)}}),
          Errc::too_large, "message_payload_bytes_max");
  refused(messages->receive(alice, 0, 1, {}), Errc::malformed, "incarnation");
  refused(messages->receive(alice, 7, 0, {}), Errc::malformed, "floor");
  refused(messages->receive(alice, 7, 1, {ArrivingMessage{0, id, {}}}), Errc::malformed, "seq 0");
  refused(messages->receive(alice, 7, 1, std::vector<ArrivingMessage>(message_batch_max + 1)),
          Errc::too_large, "message_batch_max");
  refused(messages->acknowledge(alice, std::vector<uint64_t>(message_batch_max + 1, 1)),
          Errc::too_large, "message_batch_max");
  refused(messages->enqueue("", id, {}), Errc::malformed, "peer name is empty");
  refused(messages->receive(std::string(peer_name_bytes_max + 1, 'p'), 7, 1, {}), Errc::too_large,
          "peer_name_bytes_max");
  refused(messages->enqueue(std::string("a\0b", 3), id, {}), Errc::malformed, "NUL");
  refused(messages->pending(alice, 0), Errc::bad_query, "message_listing_max");
  refused(messages->pending(alice, message_listing_max + 1), Errc::bad_query,
          "message_listing_max");
  refused(messages->unconsumed(alice, message_listing_max + 1), Errc::bad_query,
          "message_listing_max");
  refused(messages->outboxPeers(0), Errc::bad_query, "message_listing_max");
  refused(messages->receiveStates(0), Errc::bad_query, "message_listing_max");
  CHECK(pending(alice).empty());
  CHECK(unconsumed(alice).empty());
  CHECK_FALSE(messages->receiveState(alice).value().has_value());

  // At the limits: accepted, and read back whole.
  const std::string longest(peer_name_bytes_max, 'p');
  CHECK(enqueue(longest, "m", std::string(message_payload_bytes_max, 'x')));
  CHECK(arrive(longest, 7, 1, 1, "m", std::string(message_payload_bytes_max, 'y')).kind ==
        Arrival::stored);
  CHECK(pending(longest)[0].payload == Bytes(message_payload_bytes_max, 'x'));
  CHECK(unconsumed(longest)[0].payload == Bytes(message_payload_bytes_max, 'y'));
  CHECK(unconsumed(longest)[0].peer == longest);
  CHECK(messages->receivedIds(longest, 10).value().size() == 1);
  // Empty payloads are payloads.
  CHECK(enqueue(alice, "empty", ""));
  CHECK(pending(alice)[0].payload.empty());
}
