#include "vault/message_store.h"

#include <doctest/doctest.h>

#include "test/support/temp_dir.h"
#include <unistd.h>

#include <atomic>
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
    messages.reset();
    vault.reset();
    open();
  }

  bool enqueue(const std::string& peer, std::string_view id, std::string_view payload) {
    auto r = messages->enqueue(peer, msgId(id), asBytes(payload));
    REQUIRE_MESSAGE(r.ok(), r.error().toString());
    return *r;
  }

  bool receive(const std::string& peer, std::string_view id, std::string_view payload) {
    auto r = messages->receive(peer, msgId(id), asBytes(payload));
    REQUIRE_MESSAGE(r.ok(), r.error().toString());
    return *r;
  }

  bool consume(const std::string& peer, std::string_view id) {
    auto r = messages->consume(peer, msgId(id));
    REQUIRE_MESSAGE(r.ok(), r.error().toString());
    return *r;
  }

  std::vector<OutboxMessage> pending(const std::string& peer, uint32_t limit = 100,
                                     uint64_t from_seq = 0) {
    auto r = messages->pending(peer, limit, from_seq);
    REQUIRE_MESSAGE(r.ok(), r.error().toString());
    return *r;
  }

  std::vector<InboxMessage> unconsumed(uint32_t limit = 100, uint64_t from_seq = 0) {
    auto r = messages->unconsumed(limit, from_seq);
    REQUIRE_MESSAGE(r.ok(), r.error().toString());
    return *r;
  }
};

std::vector<Bytes> payloads(const std::vector<OutboxMessage>& ms) {
  std::vector<Bytes> out;
  for (const auto& m : ms) out.push_back(m.payload);
  return out;
}

std::vector<Bytes> payloads(const std::vector<InboxMessage>& ms) {
  std::vector<Bytes> out;
  for (const auto& m : ms) out.push_back(m.payload);
  return out;
}

std::vector<Bytes> list(std::initializer_list<std::string_view> items) {
  std::vector<Bytes> out;
  for (auto s : items) out.push_back(bytesOf(s));
  return out;
}

}  // namespace

// ---------------------------------------------------------------- outbox

TEST_CASE_FIXTURE(Fixture, "outbox: pending per peer in enqueue order") {
  CHECK(enqueue(alice, "a1", "to alice 1"));
  CHECK(enqueue(bob, "b1", "to bob 1"));
  CHECK(enqueue(alice, "a2", "to alice 2"));
  CHECK(enqueue(bob, "b2", "to bob 2"));
  CHECK(enqueue(alice, "a3", "to alice 3"));
  auto to_alice = pending(alice);
  CHECK(payloads(to_alice) == list({"to alice 1", "to alice 2", "to alice 3"}));
  CHECK(to_alice[0].id == msgId("a1"));
  CHECK(to_alice[0].peer == alice);
  CHECK(to_alice[0].seq < to_alice[1].seq);
  CHECK(to_alice[1].seq < to_alice[2].seq);
  CHECK(payloads(pending(bob)) == list({"to bob 1", "to bob 2"}));
  CHECK(pending(bank).empty());
  // Paging: a limit, and a start seq.
  CHECK(payloads(pending(alice, 2)) == list({"to alice 1", "to alice 2"}));
  CHECK(payloads(pending(alice, 100, to_alice[1].seq)) == list({"to alice 2", "to alice 3"}));
  CHECK(payloads(pending(alice, 100, to_alice[2].seq + 1)).empty());
}

TEST_CASE_FIXTURE(Fixture, "outbox: enqueueing the same id again is a no-op") {
  CHECK(enqueue(alice, "m", "payload"));
  CHECK_FALSE(enqueue(alice, "m", "payload"));
  CHECK(pending(alice).size() == 1);
  // The same id with another payload is a bug in the sender's id derivation.
  auto other = messages->enqueue(alice, msgId("m"), asBytes("different"));
  REQUIRE_FALSE(other.ok());
  CHECK(other.error().code == Errc::conflict);
  CHECK_MESSAGE(contains(other.error().message, msgId("m").hex()), other.error().message);
  CHECK_MESSAGE(contains(other.error().message, alice), other.error().message);
  CHECK(payloads(pending(alice)) == list({"payload"}));
  // Ids are scoped by peer.
  CHECK(enqueue(bob, "m", "payload"));
  CHECK(pending(bob).size() == 1);
}

TEST_CASE_FIXTURE(Fixture, "outbox: acknowledging removes; twice or unknown is a no-op") {
  enqueue(alice, "a1", "1");
  enqueue(alice, "a2", "2");
  enqueue(alice, "a3", "3");
  auto acked = messages->acknowledge(alice, msgId("a2"));
  REQUIRE(acked.ok());
  CHECK(*acked);
  CHECK(payloads(pending(alice)) == list({"1", "3"}));
  CHECK_FALSE(messages->acknowledge(alice, msgId("a2")).value());
  CHECK_FALSE(messages->acknowledge(alice, msgId("never")).value());
  CHECK_FALSE(messages->acknowledge(bob, msgId("a1")).value());  // another peer's id space
  CHECK(payloads(pending(alice)) == list({"1", "3"}));
  // After acknowledgement, the same id queues again, at the end.
  const uint64_t last = pending(alice).back().seq;
  CHECK(enqueue(alice, "a2", "2"));
  auto now = pending(alice);
  CHECK(payloads(now) == list({"1", "3", "2"}));
  CHECK(now.back().seq > last);
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
  for (const char* id : {"x-ab", "y-ab"}) REQUIRE(messages->acknowledge("ab", msgId(id)).value());
  CHECK(messages->outboxPeers(10).value() == V{"a", "a b", "b", "c"});
  CHECK(payloads(pending("a")) == list({"x", "y"}));
}

TEST_CASE_FIXTURE(Fixture, "outbox: the sequence is persisted and never reused after a restart") {
  enqueue(alice, "a1", "1");
  enqueue(bob, "b1", "1");
  enqueue(alice, "a2", "2");
  const uint64_t high = pending(alice).back().seq;
  for (const auto& m : pending(alice)) REQUIRE(messages->acknowledge(alice, m.id).value());
  reopen();
  CHECK(pending(alice).empty());
  CHECK(payloads(pending(bob)) == list({"1"}));  // unacknowledged: still pending
  enqueue(alice, "a3", "3");
  REQUIRE(pending(alice).size() == 1);
  CHECK(pending(alice)[0].seq > high);
  CHECK_FALSE(enqueue(bob, "b1", "1"));  // still a no-op after the restart
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
  auto last = messages->acknowledge(alice, msgId("async0"));
  REQUIRE(last.ok());
  CHECK(*last);
  CHECK(added == 500);
  CHECK(failed == 0);
  auto all = pending(alice, message_listing_max);
  REQUIRE(all.size() == 499);
  for (int i = 1; i < 500; ++i) CHECK(all[i - 1].payload == bytesOf(std::to_string(i)));
}

// ---------------------------------------------------------------- inbox

TEST_CASE_FIXTURE(Fixture, "inbox: a duplicate is detected and not stored twice") {
  CHECK(receive(alice, "m1", "hello"));
  CHECK_FALSE(receive(alice, "m1", "hello"));
  CHECK_FALSE(receive(alice, "m1", "a replay with other bytes"));
  auto inbox = unconsumed();
  REQUIRE(inbox.size() == 1);
  CHECK(inbox[0].payload == bytesOf("hello"));
  CHECK(inbox[0].peer == alice);
  CHECK(inbox[0].id == msgId("m1"));
  CHECK(inbox[0].receivedMicros == 1'000);
  // The same id from another peer is another message.
  CHECK(receive(bob, "m1", "from bob"));
  CHECK(unconsumed().size() == 2);
}

TEST_CASE_FIXTURE(Fixture, "inbox: consuming removes the message and keeps the dedup record") {
  receive(alice, "m1", "one");
  receive(bob, "m2", "two");
  receive(alice, "m3", "three");
  CHECK(payloads(unconsumed()) == list({"one", "two", "three"}));
  clock = 2'000;
  CHECK(consume(bob, "m2"));
  CHECK_FALSE(consume(bob, "m2"));  // twice: a no-op
  CHECK(payloads(unconsumed()) == list({"one", "three"}));
  // Still a duplicate after consumption.
  CHECK_FALSE(receive(bob, "m2", "two"));
  CHECK(payloads(unconsumed()) == list({"one", "three"}));
  auto record = messages->dedup(bob, msgId("m2")).value();
  REQUIRE(record.has_value());
  CHECK(record->consumed);
  CHECK(record->receivedMicros == 1'000);
  CHECK(record->consumedMicros == 2'000);
  auto fresh = messages->dedup(alice, msgId("m1")).value();
  REQUIRE(fresh.has_value());
  CHECK_FALSE(fresh->consumed);
  CHECK_FALSE(messages->dedup(alice, msgId("m2")).value().has_value());

  auto never = messages->consume(alice, msgId("never"));
  REQUIRE_FALSE(never.ok());
  CHECK(never.error().code == Errc::not_found);
  CHECK_MESSAGE(contains(never.error().message, msgId("never").hex()), never.error().message);
}

TEST_CASE_FIXTURE(Fixture, "inbox: unconsumed in arrival order, paged") {
  for (int i = 0; i < 10; ++i) {
    receive(i % 2 == 0 ? alice : bob, "m" + std::to_string(i), std::to_string(i));
  }
  auto all = unconsumed();
  REQUIRE(all.size() == 10);
  for (int i = 0; i < 10; ++i) {
    CHECK(all[i].payload == bytesOf(std::to_string(i)));
    if (i > 0) CHECK(all[i].seq > all[i - 1].seq);
  }
  CHECK(payloads(unconsumed(3)) == list({"0", "1", "2"}));
  CHECK(payloads(unconsumed(3, all[3].seq)) == list({"3", "4", "5"}));
  consume(bob, "m3");
  CHECK(payloads(unconsumed(3, all[3].seq)) == list({"4", "5", "6"}));
}

TEST_CASE_FIXTURE(
    Fixture, "inbox: pruning forgets consumed records by age, bounded, never unconsumed ones") {
  for (int i = 0; i < 10; ++i) receive(alice, "m" + std::to_string(i), "x");
  for (int i = 0; i < 6; ++i) {
    clock = 100 + i;  // m0 consumed at 100, ..., m5 at 105
    consume(alice, "m" + std::to_string(i));
  }
  // Consumed before 104: m0..m3. At most 3 per call.
  auto first = messages->pruneDedup(104, 3);
  REQUIRE(first.ok());
  CHECK(first->removed == 3);
  CHECK(first->more);
  auto second = messages->pruneDedup(104, 3);
  REQUIRE(second.ok());
  CHECK(second->removed == 1);
  CHECK_FALSE(second->more);
  CHECK(messages->pruneDedup(104).value().removed == 0);
  for (int i = 0; i < 10; ++i) {
    CAPTURE(i);
    CHECK(messages->dedup(alice, msgId("m" + std::to_string(i))).value().has_value() == (i >= 4));
  }
  // Unconsumed messages are never pruned, however old.
  auto all = messages->pruneDedup(1'000'000'000);
  REQUIRE(all.ok());
  CHECK(all->removed == 2);  // m4, m5
  CHECK(unconsumed().size() == 4);
  for (int i = 6; i < 10; ++i) CHECK_FALSE(receive(alice, "m" + std::to_string(i), "x"));
  // A forgotten id is new again: pruning trades memory for the dedup window.
  CHECK(receive(alice, "m0", "x"));
}

TEST_CASE_FIXTURE(Fixture,
                  "inbox: messages, dedup records and the arrival sequence survive a restart") {
  receive(alice, "m1", "one");
  receive(bob, "m2", "two");
  consume(alice, "m1");
  const uint64_t high = unconsumed().back().seq;
  reopen();
  CHECK(payloads(unconsumed()) == list({"two"}));
  CHECK_FALSE(receive(alice, "m1", "one"));
  CHECK_FALSE(receive(bob, "m2", "two"));
  CHECK(receive(bank, "m3", "three"));
  CHECK(unconsumed().back().seq > high);
  CHECK(consume(bob, "m2"));
  CHECK(payloads(unconsumed()) == list({"three"}));
}

TEST_CASE_FIXTURE(Fixture, "inbox: racing receives of the same message: exactly one is new") {
  constexpr int threads = 4, ids = 200;
  std::atomic<int> fresh{0}, dup{0}, errors{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&] {
      for (int i = 0; i < ids; ++i) {
        auto r = messages->receive(alice, msgId(std::to_string(i)), asBytes(std::to_string(i)));
        if (!r.ok()) {
          ++errors;
        } else if (*r) {
          ++fresh;
        } else {
          ++dup;
        }
      }
    });
  }
  for (auto& w : workers) w.join();
  CHECK(errors == 0);
  CHECK(fresh == ids);
  CHECK(dup == ids * (threads - 1));
  auto all = unconsumed(message_listing_max);
  REQUIRE(all.size() == ids);
  std::set<MessageId> distinct;
  for (const auto& m : all) distinct.insert(m.id);
  CHECK(distinct.size() == ids);
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
  refused(messages->receive(alice, id, Bytes(message_payload_bytes_max + 1)), Errc::too_large,
          "message_payload_bytes_max");
  refused(messages->enqueue("", id, {}), Errc::malformed, "peer name is empty");
  refused(messages->receive(std::string(peer_name_bytes_max + 1, 'p'), id, {}), Errc::too_large,
          "peer_name_bytes_max");
  refused(messages->enqueue(std::string("a\0b", 3), id, {}), Errc::malformed, "NUL");
  refused(messages->pending(alice, 0), Errc::bad_query, "message_listing_max");
  refused(messages->pending(alice, message_listing_max + 1), Errc::bad_query,
          "message_listing_max");
  refused(messages->unconsumed(message_listing_max + 1), Errc::bad_query, "message_listing_max");
  refused(messages->outboxPeers(0), Errc::bad_query, "message_listing_max");
  refused(messages->pruneDedup(0, dedup_prune_batch_max + 1), Errc::bad_query,
          "dedup_prune_batch_max");
  CHECK(pending(alice).empty());
  CHECK(unconsumed().empty());

  // At the limits: accepted, and read back whole.
  const std::string longest(peer_name_bytes_max, 'p');
  CHECK(enqueue(longest, "m", std::string(message_payload_bytes_max, 'x')));
  CHECK(receive(longest, "m", std::string(message_payload_bytes_max, 'y')));
  CHECK(pending(longest)[0].payload == Bytes(message_payload_bytes_max, 'x'));
  CHECK(unconsumed()[0].payload == Bytes(message_payload_bytes_max, 'y'));
  CHECK(unconsumed()[0].peer == longest);
  // Empty payloads are payloads.
  CHECK(enqueue(alice, "empty", ""));
  CHECK(pending(alice)[0].payload.empty());
}
