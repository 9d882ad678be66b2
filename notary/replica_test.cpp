#include "notary/replica.h"

#include <doctest/doctest.h>

#include <filesystem>

#include "notary/notarisation_testing.h"
#include "notary/pbft_testing.h"

using namespace ccal;
using namespace ccal::notary;
using namespace ccal::notary::testing;
using pbft::WireRequest;

namespace {

std::string replicaName(uint32_t i) { return "O=Replica " + std::to_string(i) + ", L=Haikou, C=CN"; }
const std::string client_name = "O=Alice, L=Haikou, C=CN";
KeyPair clientKey() { return ccal::testing::testKey(7); }

// What the client receives.
class ClientSink final : public flows::LinkHandler {
 public:
  void onFrame(std::string_view, ByteView frame) override {
    auto m = pbft::decodeFrame(frame, pbft::PbftLimits{});
    REQUIRE(m.ok());
    auto split = pbft::splitReplies(std::move(*m));
    REQUIRE(!split.empty());
    ++frames;
    for (auto& r : split) replies.push_back(std::move(r));
  }
  void onPeerUp(std::string_view) override {}
  void onPeerDown(std::string_view) override {}
  size_t repliesFor(uint64_t client_seq) const {
    size_t n = 0;
    for (const auto& r : replies) n += r.client_seq == client_seq;
    return n;
  }
  std::vector<pbft::ReplyMsg> replies;
  size_t frames = 0;
};

// 4 replicas over the real notarisation state machine, each on its own
// LMDB store, connected by an in-memory hub and run by one manual loop.
struct Cluster {
  ManualLoop loop;
  LinkHub hub{loop};
  TestCluster keys{1};
  std::vector<std::string> logs;
  ClientSink client;

  struct Member {
    std::unique_ptr<ccal::testing::TempDir> dir;
    std::unique_ptr<SkewedClock> clock;
    std::unique_ptr<vault::Store> store;
    std::unique_ptr<UniquenessStateMachine> machine;
    std::unique_ptr<Replica> replica;
  };
  std::vector<Member> members;

  std::function<void(ReplicaConfig&)> tweak;  // applied to every replica's configuration

  explicit Cluster(std::vector<int64_t> skews = {0, 0, 0, 0},
                   std::function<void(ReplicaConfig&)> tweak_config = {})
      : tweak(std::move(tweak_config)) {
    hub.link(client_name).setHandler(&client);
    for (uint32_t i = 0; i < 4; ++i) {
      Member m;
      m.dir = std::make_unique<ccal::testing::TempDir>("ccal-replica");
      m.clock = std::make_unique<SkewedClock>(loop, skews[i]);
      members.push_back(std::move(m));
      open(i, true);
    }
    for (auto& m : members) REQUIRE(m.replica->start().ok());
  }
  // Replica i's state machine and protocol over its store (opened first
  // when `store`), not yet started.
  void open(uint32_t i, bool store) {
    Member& m = members[i];
    if (store) {
      m.store = UniquenessStateMachine::openStore(TestReplica::storeConfig(m.dir->path, false),
                                                  pbft::ReplicaStore::dbNames())
                    .value();
    }
    UniquenessConfig uc = keys.config();
    uc.complete_on = &loop;
    m.machine = UniquenessStateMachine::open(*m.store, uc, keys.replica_keys[i]).value();
    m.replica = std::make_unique<Replica>(config(i), keys.replica_keys[i], hub.link(replicaName(i)),
                                          loop, *m.clock, *m.store, *m.machine);
  }
  ~Cluster() {
    settle();
    for (auto& m : members) {
      m.replica.reset();
      m.machine.reset();
      m.store.reset();
    }
  }

  // Replica i stops and starts again from its store (state machine and
  // protocol): as after a crash, or, clean, as a node's orderly stop does.
  void restart(uint32_t i, bool clean = false) {
    settle();
    Member& m = members[i];
    if (clean) m.replica->recordCleanStop();
    m.replica.reset();
    m.machine.reset();
    open(i, false);
    REQUIRE(m.replica->start().ok());
  }

  // Every replica's store file and vote log as they are now (settled): what
  // a power loss now would leave. Returns the copies' directories.
  std::vector<std::string> snapshot() {
    settle();
    std::vector<std::string> copies;
    for (auto& m : members) {
      copies.push_back(m.dir->path + "/../snapshot");
      std::filesystem::create_directories(copies.back());
      for (const char* file : {"data.mdb", "pbft_votes.log"}) {
        std::filesystem::copy_file(m.dir->path + "/" + file, copies.back() + "/" + file,
                                   std::filesystem::copy_options::overwrite_existing);
      }
    }
    return copies;
  }
  // A power loss of the whole cluster: every replica stops at once and
  // starts again (as after a crash) over its store file as `snapshot()` took it.
  void powerLoss(const std::vector<std::string>& copies) {
    settle();
    for (size_t i = 0; i < members.size(); ++i) {
      Member& m = members[i];
      m.replica.reset();
      m.machine.reset();
      m.store.reset();
      for (const char* file : {"data.mdb", "pbft_votes.log"}) {
        std::filesystem::copy_file(copies[i] + "/" + file, m.dir->path + "/" + file,
                                   std::filesystem::copy_options::overwrite_existing);
      }
    }
    for (uint32_t i = 0; i < members.size(); ++i) open(i, true);
    for (auto& m : members) REQUIRE(m.replica->start().ok());
  }

  ReplicaConfig config(uint32_t index) {
    ReplicaConfig c;
    c.cluster = "test-notary";
    for (uint32_t i = 0; i < 4; ++i) c.replicas.push_back({replicaName(i), keys.replica_keys[i].publicKey()});
    c.self_index = index;
    c.client_key = [](std::string_view name) -> std::optional<PublicKey> {
      if (name == client_name) return clientKey().publicKey();
      return std::nullopt;
    };
    c.batch_size_max = 16;
    c.batch_delay_micros = 0;
    c.view_change_timeout_micros = 10'000'000;
    c.time_drift_micros_max = 5'000'000;
    c.checkpoint_interval_batches = 4;
    c.window_batches_max = 16;
    c.status_interval_micros = 1'000'000;
    c.reply_batches_durable_max = 4;
    c.log = [this, index](std::string_view line) { logs.push_back(std::to_string(index) + ": " + std::string(line)); };
    if (tweak) tweak(c);
    return c;
  }

  // Every store request queued so far has posted its completion.
  void settle() {
    for (auto& m : members) {
      m.replica->quiesceStore();
      REQUIRE(m.store->write([](vault::WriteTxn&) { return Status(); }).ok());
    }
  }
  bool runUntil(const std::function<bool()>& pred, int64_t micros) {
    return loop.runUntil(pred, micros, [this] { settle(); });
  }
  void runFor(int64_t micros) { runUntil([] { return false; }, micros); }

  // A request with a valid MAC for each replica except those in `bad_for`.
  WireRequest request(Bytes body, uint64_t client_seq, std::set<uint32_t> bad_for = {}) {
    WireRequest r;
    r.client = client_name;
    r.client_seq = client_seq;
    r.body = std::move(body);
    pbft::KeyRing ring(clientKey(), client_name);
    for (uint32_t i = 0; i < 4; ++i) {
      auto k = ring.keyFor(replicaName(i), keys.replica_keys[i].publicKey()).value();
      Bytes tag = pbft::mac(k, r.digest());
      if (bad_for.count(i)) tag[0] ^= 0x55;
      r.authenticator.push_back(tag);
    }
    return r;
  }
  void send(const WireRequest& r, std::set<uint32_t> to = {0, 1, 2, 3}) {
    for (uint32_t i : to) REQUIRE(hub.link(client_name).send(replicaName(i), pbft::encodeFrame(pbft::Message(r))).ok());
  }
  // After settle(): replies go out before their batch's write is durable,
  // and lastExecuted() moves when it is.
  uint64_t executedEverywhere() {
    settle();
    uint64_t lo = UINT64_MAX;
    for (const auto& m : members) lo = std::min(lo, m.replica->lastExecuted());
    return lo;
  }
  bool logged(std::string_view what) const {
    for (const auto& l : logs) {
      if (l.find(what) != std::string::npos) return true;
    }
    return false;
  }
};

Bytes spendBody(const TestCluster& keys, const std::string& state) {
  return nonValidatingRequest(spend(keys.party, {stateRef(state)}), keys.party.name);
}

}  // namespace

TEST_CASE("replica: the normal case orders, commits and executes a request, and every replica replies") {
  Cluster c;
  const WireTransaction tx = spend(c.keys.party, {stateRef("a")});
  c.send(c.request(nonValidatingRequest(tx, c.keys.party.name), 1));
  REQUIRE(c.runUntil([&] { return c.client.repliesFor(1) == 4; }, 1'000'000));
  CHECK(c.executedEverywhere() == 1);
  for (const auto& r : c.client.replies) {
    CAPTURE(r.replica);
    auto signed_reply = signedReply(r.body);
    auto reply = replyOf(r.body);
    CHECK(reply.outcome == NotarisationReply::Outcome::success);
    CHECK(reply.batchSeq == 1);
    REQUIRE(signed_reply.txSignature.has_value());
    CHECK(signed_reply.txSignature->by() == c.keys.replica_keys[r.replica].publicKey());
    CHECK(signed_reply.txSignature->verify(signableBytes(tx.id())).ok());
  }
  for (auto& m : c.members) {
    CHECK(m.machine->consumedBy(stateRef("a")).value() == tx.id());
    CHECK(m.replica->view() == 0);
    CHECK(m.replica->stats().frames_rejected == 0);
  }
  CHECK(c.members[0].replica->stats().batches_proposed == 1);
  // The replies went out once the execution was settled, not after its write.
  for (auto& m : c.members) CHECK(m.replica->stats().batches_replied_early == 1);

  // A retransmission is answered from the reply cache, not executed again.
  c.send(c.request(nonValidatingRequest(tx, c.keys.party.name), 1));
  REQUIRE(c.runUntil([&] { return c.client.repliesFor(1) == 8; }, 1'000'000));
  for (auto& m : c.members) {
    CHECK(m.replica->stats().replies_from_cache == 1);
    CHECK(m.replica->stats().requests_executed == 1);
  }
}

TEST_CASE(
    "replica: the reply cache survives a restart for the latest batches, one packed record per "
    "batch") {
  Cluster c;
  std::vector<WireRequest> sent;
  for (uint64_t cs = 1; cs <= 6; ++cs) {
    sent.push_back(c.request(spendBody(c.keys, "restart" + std::to_string(cs)), cs));
    c.send(sent.back());
    REQUIRE(c.runUntil([&] { return c.client.repliesFor(cs) == 4; }, 1'000'000));
  }
  c.runFor(50'000);  // the last batch's replies wait for another write, then go alone
  c.settle();
  Cluster::Member& m = c.members[2];
  // Six batches, each one record (config: at most 4 kept), packed by the state machine.
  CHECK(m.store->read().entries(m.store->db("pbft_replies")) == 4);
  auto stored = pbft::ReplicaStore(*m.store).load().value();
  REQUIRE(stored.reply_batches.size() == 4);
  CHECK(stored.reply_batches.begin()->first == 3);
  CHECK(!stored.reply_batches.at(6).packed.empty());
  Bytes before;
  for (const auto& r : c.client.replies) {
    if (r.replica == 2 && r.client_seq == 6) before = r.body;
  }
  REQUIRE(!before.empty());
  // A reply as versions before kept it (one record per reply: 0x00 || client
  // || 0x00 || u64 BE client_seq -> format 2, u64 view, u32 length, body).
  REQUIRE(m.store
              ->write([&](vault::WriteTxn& txn) {
                Bytes k{0};
                append(k, asBytes(client_name));
                k.push_back(0);
                for (int i = 7; i >= 0; --i)
                  k.push_back(static_cast<uint8_t>(uint64_t{99} >> (8 * i)));
                Bytes v{2, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0x42};
                return txn.put(m.store->db("pbft_replies"), k, v);
              })
              .ok());

  c.restart(2);
  c.client.replies.clear();
  // A retransmission of a request of a kept batch: answered from the reloaded
  // cache with the very same signed reply, not executed again.
  c.send(sent[5], {2});
  REQUIRE(c.runUntil([&] { return c.client.repliesFor(6) == 1; }, 1'000'000));
  CHECK(c.client.replies[0].body == before);
  CHECK(m.replica->stats().replies_from_cache == 1);
  CHECK(m.replica->stats().requests_executed == 0);
  // The older record answers too (kept in memory), and is deleted from the store.
  c.send(c.request(spendBody(c.keys, "old"), 99), {2});
  REQUIRE(c.runUntil([&] { return c.client.repliesFor(99) == 1; }, 1'000'000));
  CHECK(c.client.replies.back().body == Bytes{0x42});
  // One from a batch that fell out of the durable window is not in the
  // restarted replica's cache (as a reply evicted from any cache): the client
  // finishes on the 2f+1 replicas that still hold it.
  c.send(sent[0]);
  REQUIRE(c.runUntil([&] { return c.client.repliesFor(1) == 3; }, 1'000'000));
  for (const auto& r : c.client.replies) {
    if (r.client_seq != 1) continue;
    CHECK(r.replica != 2);
    CHECK(replyOf(r.body).outcome == NotarisationReply::Outcome::success);
  }
  CHECK(m.replica->stats().replies_from_cache == 2);
  // Left in the store: one record per kept batch (the older record is gone).
  c.settle();
  CHECK(m.store->read().entries(m.store->db("pbft_replies")) == 4);
}

TEST_CASE(
    "replica: votes go out as their write is queued; restarted without a clean stop a backup "
    "abstains in its view and a primary asks for the next one") {
  Cluster c;
  uint64_t cs = 0;
  auto notarise = [&](const std::string& state) {
    ++cs;
    c.send(c.request(spendBody(c.keys, state), cs));
    REQUIRE(c.runUntil([&] { return c.client.repliesFor(cs) >= 3; }, 60'000'000));
  };
  // The first vote of the view waits for a durable record of the view; the
  // later ones go out with their slot's write queued. (Settled after the
  // first: a member whose writer lags could otherwise take every
  // pre-prepare before its first record is durable.)
  notarise("early0");
  REQUIRE(c.runUntil([&] { return c.executedEverywhere() == 1; }, 10'000'000));
  c.runFor(100'000);
  for (int i = 1; i < 4; ++i) notarise("early" + std::to_string(i));
  REQUIRE(c.runUntil([&] { return c.executedEverywhere() == 4; }, 10'000'000));
  c.runFor(100'000);
  for (auto& m : c.members) {
    CHECK(m.replica->stats().votes_early >= 2);
    CHECK(m.replica->stats().votes_abstained == 0);
  }

  // A backup restarted as after a crash: a prepare it sent may not be in its
  // store, so it sends none in view 0; the other three still commit.
  c.restart(2);
  for (int i = 0; i < 3; ++i) notarise("abstain" + std::to_string(i));
  // (The client's three replies need not include backup 2's: it has seen
  // every pre-prepare once it has executed every batch.)
  REQUIRE(c.runUntil([&] { return c.executedEverywhere() == 7; }, 10'000'000));
  c.runFor(100'000);  // (lastExecuted() moves on the writer thread; completions may be queued)
  Replica& b = *c.members[2].replica;
  CHECK(b.view() == 0);
  CHECK(b.stats().votes_early == 0);
  CHECK(b.stats().votes_abstained == 3);
  // Restarted again before a clean stop: it still abstains.
  c.restart(2);
  notarise("abstain-again");
  REQUIRE(c.runUntil([&] { return c.executedEverywhere() == 8; }, 10'000'000));
  c.runFor(100'000);  // (lastExecuted() moves on the writer thread; completions may be queued)
  {
    // (Seen once as 0 under a loaded ctest run, not reproduced in 80 stressed
    // runs: what replica 2 did, should it recur.)
    std::string all;
    for (const auto& l : c.logs) all += l + "\n";
    const auto& st2 = c.members[2].replica->stats();
    INFO(all);
    INFO("replica 2: decided by commits " << st2.batches_decided_by_commits << ", executed "
                                          << st2.batches_executed << ", frames rejected "
                                          << st2.frames_rejected);
    CHECK(st2.votes_abstained == 1);
  }
  // A clean stop while withholding is not one: a vote of the crashed run in
  // view 0 may still be lost, so it withholds in view 0 after it as well.
  c.restart(2, true);
  CHECK(!pbft::ReplicaStore(*c.members[2].store).load().value().meta.clean_stop);
  CHECK(c.logged("no clean stop is recorded"));
  for (int i = 0; i < 2; ++i) notarise("still" + std::to_string(i));
  REQUIRE(c.runUntil([&] { return c.executedEverywhere() == 10; }, 10'000'000));
  c.runFor(100'000);  // (lastExecuted() moves on the writer thread; completions may be queued)
  CHECK(c.members[2].replica->stats().votes_abstained == 2);

  // The primary restarted as after a crash may have proposed batches its
  // log does not hold: it proposes nothing more in view 0 and asks for view
  // 1, which the others join when their timers expire.
  c.restart(0);
  CHECK(c.members[0].replica->viewChanging());
  notarise("new-view");
  for (auto& m : c.members) CHECK(m.replica->view() == 1);
  // View 0 is behind backup 2 now: in view 1 it votes, early once the view
  // is recorded (settled first, as above: it could lag behind the others).
  REQUIRE(c.runUntil([&] { return c.executedEverywhere() == c.members[0].replica->lastExecuted(); },
                     10'000'000));
  c.runFor(100'000);
  for (int i = 0; i < 3; ++i) notarise("view1-" + std::to_string(i));
  CHECK(c.members[2].replica->stats().votes_early >= 2);
  // A clean stop now is one: the next start votes at once.
  c.restart(2, true);
  CHECK(pbft::ReplicaStore(*c.members[2].store).load().value().meta.clean_stop);
  for (int i = 0; i < 3; ++i) notarise("clean" + std::to_string(i));
  c.settle();  // (lastExecuted() moves when a batch's write is durable)
  const uint64_t executed = c.members[0].replica->lastExecuted();
  REQUIRE(c.runUntil([&] { return c.executedEverywhere() == executed; }, 10'000'000));
  CHECK(c.members[2].replica->stats().votes_abstained == 0);
  CHECK(c.members[2].replica->stats().votes_early >= 2);
  for (auto& m : c.members) CHECK(m.replica->stats().frames_rejected == 0);
}

TEST_CASE(
    "replica: a slot accepted with an early vote is recorded with its prepared certificate's "
    "write, "
    "or by the view change") {
  Cluster c;
  uint64_t cs = 0;
  auto notarise = [&](const std::string& state) {
    ++cs;
    c.send(c.request(spendBody(c.keys, state), cs));
    REQUIRE(c.runUntil([&] { return c.client.repliesFor(cs) >= 3; }, 60'000'000));
  };
  for (int i = 0; i < 3; ++i) notarise("recorded" + std::to_string(i));
  REQUIRE(c.runUntil([&] { return c.executedEverywhere() == 3; }, 10'000'000));
  auto stored = [&](uint32_t i) {
    c.settle();
    return pbft::ReplicaStore(*c.members[i].store).load().value();
  };
  // Prepared slots were recorded (with their batches) by the prepared certificate's write.
  for (uint64_t seq = 1; seq <= 3; ++seq) {
    auto rec = stored(1);
    REQUIRE(rec.slots.count(seq));
    CHECK(rec.slots.at(seq).has_prepared);
    CHECK(rec.slots.at(seq).batches.size() == 1);
  }
  // Backups 2 and 3 lose their prepares: backup 1 votes for batch 4 but its
  // slot never prepares, so nothing has recorded it yet. (Nor does backup 1
  // get the others' view-changes: as view 1's primary it would otherwise
  // re-propose the slot in view 1 as soon as the writer threads let it,
  // before the check below.)
  c.hub.setFilter([&](const std::string& from, const std::string& to, ByteView frame) {
    if (from != replicaName(2) && from != replicaName(3)) return true;
    auto m = pbft::decodeFrame(frame, pbft::PbftLimits{});
    if (m && to == replicaName(1) && std::holds_alternative<pbft::SignedMsg>(*m) &&
        std::get<pbft::SignedMsg>(*m).kind == pbft::SignedKind::view_change)
      return false;
    return !(m && std::holds_alternative<pbft::Prepare>(*m));
  });
  const uint64_t early = c.members[1].replica->stats().votes_early;
  ++cs;
  c.send(c.request(spendBody(c.keys, "unprepared"), cs));
  c.runFor(500'000);  // well within the view timer
  CHECK(c.members[1].replica->stats().votes_early == early + 1);
  CHECK(stored(1).slots.count(4) == 0);
  // The view timer: the view-change's write records the slot (its Q entry
  // and batch) before the view-change reports it.
  REQUIRE(c.runUntil([&] { return c.members[1].replica->view() > 0; }, 60'000'000));
  auto rec = stored(1);
  REQUIRE(rec.slots.count(4));
  CHECK(rec.slots.at(4).pre_prepared.size() == 1);
  CHECK(rec.slots.at(4).pre_prepared.begin()->second == 0);
  CHECK(!rec.slots.at(4).has_prepared);
  CHECK(rec.slots.at(4).batches.size() == 1);
  // Healed, the request completes in the new view.
  c.hub.setFilter(nullptr);
  REQUIRE(c.runUntil([&] { return c.client.repliesFor(cs) >= 3; }, 120'000'000));
}

TEST_CASE(
    "replica: a request that comes while at most batches_in_flight_at_once_max batches are in "
    "flight is "
    "proposed at once; beyond that it gathers for batch_delay_micros") {
  for (uint32_t at_once : {0u, 1u, 2u}) {
    CAPTURE(at_once);
    Cluster c({0, 0, 0, 0}, [at_once](ReplicaConfig& rc) {
      rc.batch_delay_micros = 500'000;  // the four requests take well under the view timer (10 s)
      rc.batches_in_flight_at_once_max = at_once;
    });
    // Commits held back: no batch executes, each proposed one stays in flight.
    c.hub.setFilter([](const std::string&, const std::string&, ByteView frame) {
      auto m = pbft::decodeFrame(frame, pbft::PbftLimits{});
      return !(m && std::holds_alternative<pbft::Commit>(*m));
    });
    const Replica& primary = *c.members[0].replica;
    // The k-th request comes while k - 1 batches are in flight: at once for
    // k - 1 <= at_once, after the batch delay otherwise.
    for (uint64_t k = 1; k <= 4; ++k) {
      CAPTURE(k);
      c.send(c.request(spendBody(c.keys, "s" + std::to_string(k)), k));
      c.runFor(100'000);
      const uint64_t in_flight_before = k - 1;
      if (in_flight_before <= at_once) {
        CHECK(primary.stats().batches_proposed == k);
      } else {
        CHECK(primary.stats().batches_proposed == k - 1);
        c.runFor(500'000);
        CHECK(primary.stats().batches_proposed == k);
      }
    }
    CHECK(c.executedEverywhere() == 0);
    c.hub.setFilter(nullptr);  // (the dropped commits come again with the status rounds)
    // (Resent a batch or all of them per status round to a stalled peer.)
    REQUIRE(c.runUntil([&] { return c.executedEverywhere() == 4; }, 30'000'000));
    for (uint64_t k = 1; k <= 4; ++k) CHECK(c.client.repliesFor(k) >= 3);
  }
}

TEST_CASE(
    "replica: peers that lost the commits of several batches get them all resent within a few "
    "status rounds, not one batch every other round") {
  Cluster c({0, 0, 0, 0}, [](ReplicaConfig& rc) {
    rc.checkpoint_interval_batches = 8;  // no checkpoint among the batches below
  });
  // Every commit lost for a moment (shorter than a status interval, 1 s):
  // four batches prepare everywhere and execute nowhere.
  c.hub.setFilter([](const std::string&, const std::string&, ByteView frame) {
    auto m = pbft::decodeFrame(frame, pbft::PbftLimits{});
    return !(m && std::holds_alternative<pbft::Commit>(*m));
  });
  for (uint64_t k = 1; k <= 4; ++k)
    c.send(c.request(spendBody(c.keys, "lost" + std::to_string(k)), k));
  c.runFor(400'000);
  CHECK(c.members[0].replica->stats().batches_proposed == 4);
  CHECK(c.executedEverywhere() == 0);
  c.hub.setFilter(nullptr);
  // One status round resends one batch (a peer that executed nothing in an
  // interval is often only slow); the peers then execute no more than that,
  // so the next round resends every batch in flight.
  REQUIRE(c.runUntil([&] { return c.executedEverywhere() == 4; }, 3'500'000));
  for (uint64_t k = 1; k <= 4; ++k) CHECK(c.client.repliesFor(k) >= 3);
  for (auto& m : c.members) CHECK(m.replica->view() == 0);
}

TEST_CASE(
    "replica: a backup that never gets a batch's pre-prepare executes it on 2f+1 commits of the "
    "view, "
    "fetching the batch") {
  Cluster c;
  // Every pre-prepare to backup 3 is lost (the status rounds' resends too).
  c.hub.setFilter([](const std::string&, const std::string& to, ByteView frame) {
    if (to != replicaName(3)) return true;
    auto m = pbft::decodeFrame(frame, pbft::PbftLimits{});
    return !(m && std::holds_alternative<pbft::PrePrepareMsg>(*m));
  });
  const WireTransaction tx = spend(c.keys.party, {stateRef("unseen")});
  c.send(c.request(nonValidatingRequest(tx, c.keys.party.name), 1));
  // Well within a status interval (1 s) and the view timer (10 s).
  REQUIRE(c.runUntil([&] { return c.executedEverywhere() == 1; }, 500'000));
  const Replica& r3 = *c.members[3].replica;
  CHECK(r3.stats().batches_decided_by_commits == 1);
  CHECK(r3.stats().batches_fetched == 1);
  CHECK(r3.view() == 0);
  CHECK(c.members[3].machine->consumedBy(stateRef("unseen")).value() == tx.id());
  for (uint32_t i = 0; i < 3; ++i)
    CHECK(c.members[i].replica->stats().batches_decided_by_commits == 0);
  REQUIRE(c.runUntil([&] { return c.client.repliesFor(1) == 4; }, 500'000));
  for (const auto& r : c.client.replies)
    CHECK(replyOf(r.body).outcome == NotarisationReply::Outcome::success);
}

TEST_CASE(
    "replica: replies sent before their execution was durable are given again, byte for byte, "
    "after a power loss of the whole cluster lost every execution of their batch") {
  Cluster c;
  // Commits held back: every replica prepares batch 1 (its P durable), none executes it.
  c.hub.setFilter([](const std::string&, const std::string&, ByteView frame) {
    auto m = pbft::decodeFrame(frame, pbft::PbftLimits{});
    return !(m && std::holds_alternative<pbft::Commit>(*m));
  });
  const WireTransaction first = spend(c.keys.party, {stateRef("lost")});
  c.send(c.request(nonValidatingRequest(first, c.keys.party.name), 1));
  c.runFor(500'000);  // well within the view timer
  REQUIRE(c.client.replies.empty());
  for (auto& m : c.members) {
    const auto stored = pbft::ReplicaStore(*m.store).load().value();
    REQUIRE(stored.slots.count(1));
    CHECK(stored.slots.at(1).has_prepared);
    CHECK(m.machine->lastExecuted() == 0);
    CHECK(m.replica->stats().prepared_logged == 1);  // P durable in the vote log
  }
  // What a power loss would leave of every replica from here on: the P
  // certificates, nothing of the execution.
  const std::vector<std::string> before_execution = c.snapshot();

  c.hub.setFilter(nullptr);  // (the dropped commits come again with the status rounds)
  REQUIRE(c.runUntil([&] { return c.client.repliesFor(1) == 4; }, 5'000'000));
  std::map<uint32_t, Bytes> answered;
  for (const auto& r : c.client.replies) answered[r.replica] = r.body;
  for (auto& m : c.members) CHECK(m.replica->stats().batches_replied_early == 1);
  CHECK(replyOf(answered.at(0)).outcome == NotarisationReply::Outcome::success);

  // Every replica loses its execution of batch 1, its reply cache and its
  // commits: the client holds signed successes the replicas no longer record.
  c.powerLoss(before_execution);
  for (auto& m : c.members) {
    CHECK(m.machine->lastExecuted() == 0);
    CHECK_FALSE(m.machine->consumedBy(stateRef("lost")).value().has_value());
  }
  c.client.replies.clear();
  // Another transaction spending the same state: it must not succeed.
  const WireTransaction second = spend(c.keys.party, {stateRef("lost"), stateRef("other")});
  c.send(c.request(nonValidatingRequest(second, c.keys.party.name), 2));
  // The next view re-proposes batch 1 from the P certificates; executed
  // again, it gives the same replies, byte for byte.
  REQUIRE(c.runUntil([&] { return c.client.repliesFor(1) == 4 && c.client.repliesFor(2) >= 3; },
                     120'000'000));
  for (const auto& r : c.client.replies) {
    CAPTURE(r.replica);
    if (r.client_seq == 1) {
      CHECK(r.body == answered.at(r.replica));
      continue;
    }
    auto reply = replyOf(r.body);
    REQUIRE(reply.outcome == NotarisationReply::Outcome::conflict);
    REQUIRE(reply.conflicts.size() == 1);
    CHECK(reply.conflicts[0].ref == stateRef("lost"));
    CHECK(reply.conflicts[0].consumingTxIdHash == consumingTxIdHash(first.id()));
  }
  for (auto& m : c.members) {
    CHECK(m.machine->consumedBy(stateRef("lost")).value() == first.id());
    CHECK_FALSE(m.machine->consumedBy(stateRef("other")).value().has_value());
    CHECK(m.replica->view() >= 1);
  }
}

TEST_CASE(
    "replica: a prepared certificate durable only in the vote log survives a crash; the store "
    "takes it with the batch's execution and the log's space is released") {
  Cluster c({0, 0, 0, 0},
            [](ReplicaConfig& rc) { rc.vote_log_bytes = pbft::VoteLog::capacity_bytes_min; });
  // Commits held back: every replica prepares batch 1, none executes it.
  c.hub.setFilter([](const std::string&, const std::string&, ByteView frame) {
    auto m = pbft::decodeFrame(frame, pbft::PbftLimits{});
    return !(m && std::holds_alternative<pbft::Commit>(*m));
  });
  const WireTransaction tx = spend(c.keys.party, {stateRef("logged")});
  c.send(c.request(nonValidatingRequest(tx, c.keys.party.name), 1));
  c.runFor(500'000);
  REQUIRE(c.client.replies.empty());
  auto& m = c.members[1];
  const std::string log_path = pbft::ReplicaStore::voteLogPath(*m.store);
  {
    const auto stored = pbft::ReplicaStore(*m.store).load().value();
    REQUIRE(stored.slots.count(1));
    CHECK(stored.slots.at(1).has_prepared);
    CHECK(m.replica->stats().prepared_logged == 1);
    auto records = pbft::VoteLog::read(log_path).value();
    REQUIRE(records.size() == 1);
    auto logged = pbft::ReplicaStore::decodeLoggedSlot(records[0].payload).value();
    CHECK(logged.first.seq == 1);
    CHECK(logged.first.has_prepared);
    CHECK(logged.first.batches.count(logged.first.prepared_digest) == 1);  // the batch inline
  }
  // The store alone does not have it: P is durable in the log only.
  const std::string aside = log_path + ".aside";
  std::filesystem::rename(log_path, aside);
  {
    const auto stored = pbft::ReplicaStore(*m.store).load().value();
    CHECK((!stored.slots.count(1) || !stored.slots.at(1).has_prepared));
  }
  std::filesystem::rename(aside, log_path);
  // A crash (no clean stop): the restarted replica has P from the log,
  // and the store takes the recovered records before the ring is reused.
  c.restart(1);
  c.runFor(100'000);
  {
    std::filesystem::rename(log_path, aside);
    const auto stored = pbft::ReplicaStore(*m.store).load().value();
    REQUIRE(stored.slots.count(1));
    CHECK(stored.slots.at(1).has_prepared);
    std::filesystem::rename(aside, log_path);
  }
  c.hub.setFilter(nullptr);
  REQUIRE(c.runUntil([&] { return c.client.repliesFor(1) >= 3; }, 10'000'000));
  REQUIRE(c.runUntil([&] { return c.executedEverywhere() == 1; }, 10'000'000));
  // Each execution takes its slot's record to the store and the log's space
  // is released: many more batches than the ring (16 blocks) holds at once
  // are all logged.
  for (uint64_t k = 2; k <= 41; ++k) {
    const std::string name = "next" + std::to_string(k);
    c.send(c.request(nonValidatingRequest(spend(c.keys.party, {stateRef(name)}), c.keys.party.name),
                     k));
    REQUIRE(c.runUntil([&] { return c.executedEverywhere() == k; }, 10'000'000));
  }
  for (uint32_t i = 0; i < 4; ++i) {
    CAPTURE(i);
    const auto& st = c.members[i].replica->stats();
    CHECK(st.prepared_log_full == 0);
    // (The restarted replica abstains in view 0: it may decide a batch on
    // the others' commits before the prepares it needs are in.)
    CHECK(st.prepared_logged + st.batches_decided_by_commits >= (i == 1 ? 40 : 41));
  }
}

TEST_CASE(
    "replica: a vote log record is released only once the store write holding its slot is "
    "durable") {
  Cluster c({0, 0, 0, 0},
            [](ReplicaConfig& rc) { rc.vote_log_bytes = pbft::VoteLog::capacity_bytes_min; });
  auto sendSpend = [&](uint64_t k) {
    c.send(
        c.request(nonValidatingRequest(spend(c.keys.party, {stateRef("held" + std::to_string(k))}),
                                       c.keys.party.name),
                  k));
  };
  sendSpend(1);
  REQUIRE(c.runUntil([&] { return c.executedEverywhere() == 1; }, 10'000'000));
  auto& m = c.members[1];
  const uint64_t logged_before = m.replica->stats().prepared_logged;
  CHECK(logged_before >= 1);
  // Replica 1's store writer held: none of its writes becomes durable, so
  // none of its records may be released; its 16-block ring fills and further
  // prepared certificates go to the (held) store. The others go on.
  std::optional<vault::Store::Hold> hold(m.store->hold());
  auto settleOthers = [&] {
    for (uint32_t i : {0u, 2u, 3u}) {
      c.members[i].replica->quiesceStore();
      REQUIRE(c.members[i].store->write([](vault::WriteTxn&) { return Status(); }).ok());
    }
  };
  auto othersExecuted = [&](uint64_t k) {
    for (uint32_t i : {0u, 2u, 3u}) {
      if (c.members[i].machine->lastExecuted() < k) return false;
    }
    return true;
  };
  const uint64_t held_batches = 24;
  for (uint64_t k = 2; k <= 1 + held_batches; ++k) {
    sendSpend(k);
    REQUIRE(c.loop.runUntil([&] { return othersExecuted(k); }, 10'000'000, settleOthers));
    // (Replica 1's timers run: its slots' store write is queued, and held.)
    c.loop.runUntil([] { return false; }, 50'000, settleOthers);
  }
  const auto held = m.replica->stats();
  CHECK(held.prepared_logged - logged_before >= 8);
  // (Released when the write is queued rather than durable, the ring never
  // fills: 24 logged, none refused.)
  CHECK(held.prepared_log_full > 0);
  CHECK(m.machine->lastExecuted() == 1);
  // The writer goes on: everything queued becomes durable, the records are
  // released, and the ring takes new records again.
  hold.reset();
  REQUIRE(c.runUntil([&] { return c.executedEverywhere() == 1 + held_batches; }, 20'000'000));
  const uint64_t logged_after_hold = m.replica->stats().prepared_logged;
  for (uint64_t k = 2 + held_batches; k <= 1 + held_batches + 20; ++k) {
    sendSpend(k);
    REQUIRE(c.runUntil([&] { return c.executedEverywhere() == k; }, 10'000'000));
  }
  CHECK(m.replica->stats().prepared_logged - logged_after_hold >= 20);
}

TEST_CASE(
    "replica: a batch's replies to a client go in one frame, split to stay within the frame "
    "limit") {
  Cluster c;
  for (uint64_t cs = 1; cs <= 6; ++cs)
    c.send(c.request(spendBody(c.keys, "frame" + std::to_string(cs)), cs));
  REQUIRE(c.runUntil([&] { return c.client.replies.size() == 24; }, 1'000'000));
  const uint64_t batches = c.members[0].replica->stats().batches_executed;
  CHECK(batches < 6);
  CHECK(c.client.frames == 4 * batches);  // one per replica per batch

  // A frame limit below one reply: each reply goes alone.
  Cluster small({0, 0, 0, 0}, [](ReplicaConfig& rc) { rc.limits.frame_bytes_max = 4096 + 100; });
  for (uint64_t cs = 1; cs <= 6; ++cs) {
    small.send(small.request(spendBody(small.keys, "small" + std::to_string(cs)), cs));
  }
  REQUIRE(small.runUntil([&] { return small.client.replies.size() == 24; }, 1'000'000));
  CHECK(small.members[0].replica->stats().batches_executed < 6);
  CHECK(small.client.frames == 24);
  for (uint64_t cs = 1; cs <= 6; ++cs) CHECK(small.client.repliesFor(cs) == 4);
}

TEST_CASE(
    "replica: a cluster of one records its pre-prepare and prepared certificate in one write and "
    "executes at once") {
  ManualLoop loop;
  LinkHub hub{loop};
  TestCluster keys{0};
  ClientSink client;
  hub.link(client_name).setHandler(&client);
  ccal::testing::TempDir dir("ccal-replica-one");
  SkewedClock clock(loop, 0);
  auto store = UniquenessStateMachine::openStore(TestReplica::storeConfig(dir.path, false),
                                                 pbft::ReplicaStore::dbNames())
                   .value();
  UniquenessConfig uc = keys.config();
  uc.complete_on = &loop;
  auto machine = UniquenessStateMachine::open(*store, uc, keys.replica_keys[0]).value();
  ReplicaConfig rc;
  rc.cluster = "test-notary";
  rc.replicas.push_back({replicaName(0), keys.replica_keys[0].publicKey()});
  rc.client_key = [](std::string_view name) -> std::optional<PublicKey> {
    if (name == client_name) return clientKey().publicKey();
    return std::nullopt;
  };
  rc.batch_delay_micros = 0;
  auto replica = std::make_unique<Replica>(rc, keys.replica_keys[0], hub.link(replicaName(0)), loop,
                                           clock, *store, *machine);
  REQUIRE(replica->start().ok());
  auto settle = [&] {
    replica->quiesceStore();
    REQUIRE(store->write([](vault::WriteTxn&) { return Status(); }).ok());
  };
  const uint64_t commits_before = store->stats().commits;
  WireRequest r;
  r.client = client_name;
  r.client_seq = 1;
  r.body = spendBody(keys, "one");
  pbft::KeyRing ring(clientKey(), client_name);
  r.authenticator.push_back(
      pbft::mac(ring.keyFor(replicaName(0), keys.replica_keys[0].publicKey()).value(), r.digest()));
  REQUIRE(hub.link(client_name).send(replicaName(0), pbft::encodeFrame(pbft::Message(r))).ok());
  REQUIRE(loop.runUntil([&] { return client.repliesFor(1) == 1; }, 1'000'000, settle));
  CHECK(replyOf(client.replies[0].body).outcome == NotarisationReply::Outcome::success);
  // The slot (pre-prepare and P) and the execution: two writes at most, where
  // three went one after the other (pre-prepare, then P, then execution).
  CHECK(store->stats().commits - commits_before <= 2);
  const auto stored = pbft::ReplicaStore(*store).load().value();
  REQUIRE(stored.slots.count(1));
  CHECK(stored.slots.at(1).has_prepared);
  // Its execution may share its slot's write: the replies wait until it is durable.
  CHECK(replica->stats().batches_replied_early == 0);
  settle();
  replica.reset();
  machine.reset();
  store.reset();
}

TEST_CASE("replica: a request relayed by the primary is authenticated by its MAC at each backup") {
  Cluster c;
  c.send(c.request(spendBody(c.keys, "relayed"), 5), {0});  // the primary only
  REQUIRE(c.runUntil([&] { return c.client.repliesFor(5) == 4; }, 1'000'000));
  CHECK(c.executedEverywhere() == 1);
}

TEST_CASE("replica: backups do not prepare a batch holding a request whose MAC for them is bad, until the client's copy comes") {
  Cluster c;
  // Sent to the primary only, with the backups' MAC entries forged.
  const WireRequest forged = c.request(spendBody(c.keys, "forged"), 9, {1, 2, 3});
  c.send(forged, {0});
  c.runFor(2'000'000);  // well under the view-change timeout
  CHECK(c.client.replies.empty());
  for (auto& m : c.members) CHECK(m.replica->lastExecuted() == 0);
  CHECK(c.members[0].replica->stats().batches_proposed == 1);
  for (uint32_t i = 1; i < 4; ++i) {
    CHECK(c.members[i].replica->stats().pre_prepares_held == 1);
    CHECK(c.members[i].replica->stats().store_writes == 0);  // nothing accepted, no prepare
  }
  CHECK(c.logged("is not authenticated for this replica"));
  // The client's own copy authenticates it at each backup: the held batch is prepared and commits.
  c.send(forged, {1, 2, 3});
  REQUIRE(c.runUntil([&] { return c.client.repliesFor(9) == 4; }, 1'000'000));
  CHECK(c.executedEverywhere() == 1);
  for (auto& m : c.members) {
    CHECK(m.replica->view() == 0);
    CHECK(m.replica->stats().held_accepted_by_prepares == 0);
  }
}

TEST_CASE("replica: a backup that cannot authenticate a request prepares its batch on f+1 backups' prepares") {
  Cluster c;
  // Replica 3's MAC entry is forged; replicas 1 and 2 authenticate it (f+1 = 2).
  c.send(c.request(spendBody(c.keys, "vouched"), 11, {3}), {0});
  REQUIRE(c.runUntil([&] { return c.client.repliesFor(11) == 4; }, 1'000'000));
  CHECK(c.executedEverywhere() == 1);
  CHECK(c.members[3].replica->stats().pre_prepares_held == 1);
  CHECK(c.members[3].replica->stats().held_accepted_by_prepares == 1);
  CHECK(c.members[3].machine->consumedBy(stateRef("vouched")).value().has_value());
  for (auto& m : c.members) CHECK(m.replica->view() == 0);
}

TEST_CASE("replica: a request no backup can authenticate is never executed; the view changes past it") {
  Cluster c;
  c.send(c.request(spendBody(c.keys, "primary only"), 12, {1, 2, 3}), {0});
  // An honest request, sent to every replica, waits behind it and completes in the next view.
  c.send(c.request(spendBody(c.keys, "honest"), 13));
  REQUIRE(c.runUntil([&] { return c.client.repliesFor(13) == 4; }, 60'000'000));
  for (uint32_t i = 1; i < 4; ++i) {
    CAPTURE(i);
    CHECK(c.members[i].replica->view() >= 1);
    CHECK(c.members[i].machine->consumedBy(stateRef("honest")).value().has_value());
  }
  c.runFor(5'000'000);
  CHECK(c.client.repliesFor(12) == 0);
  for (auto& m : c.members) CHECK(m.machine->consumedBy(stateRef("primary only")).value() == std::nullopt);
}

TEST_CASE("replica: backups refuse a batch whose timestamp is outside the allowed drift; a view change gets past the primary") {
  // The primary's clock is 60 s ahead (the drift allowed is 5 s; the view
  // change timeout is 10 s, so its batch is still out of bounds then).
  Cluster c({60'000'000, 0, 0, 0});
  c.send(c.request(spendBody(c.keys, "late"), 3));
  c.runFor(2'000'000);
  CHECK(c.client.replies.empty());
  for (auto& m : c.members) CHECK(m.replica->lastExecuted() == 0);
  for (uint32_t i = 1; i < 4; ++i) CHECK(c.members[i].replica->stats().frames_rejected >= 1);
  CHECK(c.logged("beyond time_drift_micros_max"));
  // The backups' view timers expire: replica 1 becomes primary and its
  // batch commits with replicas 1, 2, 3 (replica 0 refuses its timestamp too).
  REQUIRE(c.runUntil([&] { return c.client.repliesFor(3) >= 3; }, 60'000'000));
  c.settle();  // (replies go out before the write is durable; lastExecuted() moves when it is)
  for (uint32_t i = 1; i < 4; ++i) {
    CHECK(c.members[i].replica->view() >= 1);
    CHECK(c.members[i].replica->lastExecuted() >= 1);  // (a null batch may come first)
    CHECK(c.members[i].machine->consumedBy(stateRef("late")).value().has_value());
  }
  // Replica 0 refuses the new primary's timestamp (its own clock is the one
  // off) and still follows: the others' 2f+1 commits decide the batch there.
  REQUIRE(c.runUntil(
      [&] { return c.members[0].machine->consumedBy(stateRef("late")).value().has_value(); },
      5'000'000));
  CHECK(c.members[0].replica->stats().batches_decided_by_commits >= 1);
}

TEST_CASE(
    "replica: a backup cut off for longer than the allowed drift catches up on commits; the "
    "primary does not resend it pre-prepares it would refuse") {
  Cluster c;
  const std::string cut = replicaName(3);
  bool cut_off = true;
  c.hub.setFilter(
      [&](const std::string&, const std::string& to, ByteView) { return !(cut_off && to == cut); });
  c.send(c.request(spendBody(c.keys, "while cut off"), 1));
  REQUIRE(c.runUntil([&] { return c.client.repliesFor(1) >= 3; }, 5'000'000));
  c.runFor(7'000'000);  // the batch's timestamp is now beyond the 5 s drift
  CHECK(c.members[3].replica->lastExecuted() == 0);
  cut_off = false;
  REQUIRE(c.runUntil(
      [&] {
        return c.members[3].machine->consumedBy(stateRef("while cut off")).value().has_value();
      },
      10'000'000));
  const auto& st = c.members[3].replica->stats();
  CHECK(st.batches_decided_by_commits >= 1);
  CHECK(st.frames_rejected == 0);  // (before: the resent pre-prepare, refused for its timestamp)
  CHECK(!c.logged("3: rejected"));
}

TEST_CASE("replica: a request the state machine refuses is answered with its signed error, unordered and not cached") {
  Cluster c;
  const Bytes garbage{0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07};
  c.send(c.request(garbage, 4));
  REQUIRE(c.runUntil([&] { return c.client.repliesFor(4) == 4; }, 1'000'000));
  for (const auto& r : c.client.replies) {
    CAPTURE(r.replica);
    auto signed_reply = signedReply(r.body);
    auto reply = replyOf(r.body);
    CHECK(reply.outcome == NotarisationReply::Outcome::error);
    CHECK(reply.batchSeq == 0);
    CHECK(reply.requestHash == SecureHash::of(garbage));
    CHECK(reply.error.code == Errc::malformed);
    REQUIRE(signed_reply.rootSignature.has_value());
    CHECK(signed_reply.rootSignature->by() == c.keys.replica_keys[r.replica].publicKey());
    auto root = signed_reply.root();
    REQUIRE(root.ok());
    CHECK(signed_reply.rootSignature->verify(batchRootSignableBytes(0, 1, *root)).ok());
  }
  for (auto& m : c.members) {
    CHECK(m.replica->lastExecuted() == 0);
    CHECK(m.replica->stats().requests_refused == 1);
    CHECK(m.replica->stats().batches_proposed == 0);
  }
  // Sent again, it is checked again (a refusal is not an executed reply).
  c.send(c.request(garbage, 4));
  REQUIRE(c.runUntil([&] { return c.client.repliesFor(4) == 8; }, 1'000'000));
  for (auto& m : c.members) {
    CHECK(m.replica->stats().requests_refused == 2);
    CHECK(m.replica->stats().replies_from_cache == 0);
  }
  // A good request afterwards is ordered as usual.
  c.send(c.request(spendBody(c.keys, "after"), 5));
  REQUIRE(c.runUntil([&] { return c.client.repliesFor(5) == 4; }, 1'000'000));
  CHECK(c.executedEverywhere() == 1);
}

namespace {
uint64_t executedAt(Cluster& c, uint32_t i) {
  c.settle();
  return c.members[i].replica->lastExecuted();
}
bool othersExecuted(Cluster& c, uint64_t k) {
  return executedAt(c, 0) >= k && executedAt(c, 1) >= k && executedAt(c, 2) >= k;
}
}  // namespace

TEST_CASE(
    "replica: a backup that lost a new view's prepares and commits for a null batch catches up on "
    "status") {
  Cluster c;
  // View 0: seq 1's pre-prepare is lost everywhere and every commit too; in
  // view 1 (O = {1: null, 2: batch}) replica 3 loses seq 1's prepares and
  // commits. (Before: they were never resent for a null batch, and replica 3
  // waited for its view timer, alone.)
  bool loss = true;
  c.hub.setFilter([&](const std::string&, const std::string& to, ByteView frame) {
    if (!loss) return true;
    auto m = pbft::decodeFrame(frame, pbft::PbftLimits{});
    if (!m) return true;
    if (auto* pp = std::get_if<pbft::PrePrepareMsg>(&*m)) return !(pp->view == 0 && pp->seq == 1);
    if (auto* cm = std::get_if<pbft::Commit>(&*m)) {
      if (cm->view == 0) return false;
      if (to == replicaName(3) && cm->view == 1 && cm->seq == 1) return false;
    }
    if (auto* p = std::get_if<pbft::Prepare>(&*m)) {
      if (to == replicaName(3) && p->view == 1 && p->seq == 1) return false;
    }
    return true;
  });
  c.send(c.request(spendBody(c.keys, "nullA1"), 1));
  c.runFor(10'000);
  c.send(c.request(spendBody(c.keys, "nullA2"), 2));
  REQUIRE(c.runUntil([&] { return othersExecuted(c, 2); },
                     30'000'000));  // after the view change (10 s)
  for (auto& m : c.members) CHECK(m.replica->view() == 1);
  loss = false;
  CHECK(c.runUntil([&] { return executedAt(c, 3) >= 2; }, 5'000'000));  // status rounds of 1 s
  CHECK(c.members[3].replica->view() == 1);
}

TEST_CASE(
    "replica: a backup that accepted an equivocating primary's other batch fetches the one decided "
    "by commits") {
  Cluster c;
  // The primary sends replica 3 another batch for (0, 1) than the others'.
  c.hub.setFilter([&](const std::string& from, const std::string& to, ByteView frame) {
    if (from != replicaName(0) || to != replicaName(3)) return true;
    auto m = pbft::decodeFrame(frame, pbft::PbftLimits{});
    if (!m) return true;
    auto* pp = std::get_if<pbft::PrePrepareMsg>(&*m);
    return pp == nullptr ||
           (pp->batch.requests.size() == 1 && pp->batch.requests[0].client_seq == 50);
  });
  pbft::BatchBody other;
  other.time_micros = c.loop.nowMicros();
  other.requests.push_back(c.request(spendBody(c.keys, "forged"), 50));
  REQUIRE(
      c.hub.link(replicaName(0))
          .send(replicaName(3), pbft::encodeFrame(pbft::Message(pbft::PrePrepareMsg{0, 1, other})))
          .ok());
  c.runFor(10'000);
  c.send(c.request(spendBody(c.keys, "real"), 1));
  REQUIRE(c.runUntil([&] { return othersExecuted(c, 1); }, 2'000'000));
  // (Before: it held the other batch, asked for none, and left the view alone at its timer.)
  CHECK(c.runUntil([&] { return executedAt(c, 3) >= 1; }, 5'000'000));
  CHECK(c.members[3].replica->stats().batches_decided_by_commits == 1);
  CHECK(c.members[3].replica->stats().batches_fetched >= 1);
  CHECK(c.members[3].replica->view() == 0);
}

TEST_CASE(
    "replica: a state transfer source that answers with no effects is replaced, as a silent one "
    "is") {
  for (bool silent : {false, true}) {
    CAPTURE(silent);
    Cluster c;
    bool cut = true;
    c.hub.setFilter([&](const std::string& from, const std::string& to, ByteView frame) {
      const bool involves3 = from == replicaName(3) || to == replicaName(3);
      if (cut) return !involves3;
      auto m = pbft::decodeFrame(frame, pbft::PbftLimits{});
      if (!m) return true;
      if (from == replicaName(3) && to == replicaName(0)) {
        if (auto* fe = std::get_if<pbft::FetchEffectsMsg>(&*m)) {
          // Replica 0 (faulty) answers every fetch with nothing, or not at all.
          if (!silent) {
            const uint64_t from_seq = fe->from_seq;
            c.loop.runAfter(500'000, [&c, from_seq] {
              (void)c.hub.link(replicaName(0))
                  .send(replicaName(3),
                        pbft::encodeFrame(pbft::Message(pbft::EffectsDataMsg{from_seq, {}})));
            });
          }
          return false;
        }
      }
      if (from == replicaName(0) && to == replicaName(3)) {
        if (auto* ed = std::get_if<pbft::EffectsDataMsg>(&*m)) return ed->effects.empty();
      }
      return true;
    });
    for (uint64_t k = 1; k <= 9; ++k) {
      c.send(c.request(spendBody(c.keys, "st" + std::to_string(k)), k));
      REQUIRE(c.runUntil([&] { return othersExecuted(c, k); }, 5'000'000));
    }
    c.runFor(1'000'000);
    CHECK(c.members[0].replica->stableSeq() >= 8);
    cut = false;
    // (Before, with empty answers: 119 of them in 60 s, one transfer, nothing executed.)
    CHECK(c.runUntil([&] { return executedAt(c, 3) >= 8; }, 60'000'000));
  }
}
