#include "notary/notary_client.h"

#include <doctest/doctest.h>

#include <deque>
#include <map>

#include "notary/notarisation_testing.h"

using namespace ccal;
using namespace ccal::notary;
using namespace ccal::notary::testing;

namespace {

// A single-threaded executor with virtual time, run by the test.
class ManualExecutor final : public flows::Executor {
 public:
  void post(std::function<void()> fn) override { queue_.push_back(std::move(fn)); }
  TimerId runAfter(int64_t delay_micros, std::function<void()> fn) override {
    TimerId id = next_++;
    timers_[id] = {now_ + delay_micros, std::move(fn)};
    return id;
  }
  void cancel(TimerId id) override { timers_.erase(id); }
  void runUntilIdle() {
    while (!queue_.empty()) {
      auto fn = std::move(queue_.front());
      queue_.pop_front();
      fn();
    }
  }
  void advance(int64_t micros) {
    int64_t until = now_ + micros;
    for (;;) {
      runUntilIdle();
      auto due = timers_.end();
      for (auto it = timers_.begin(); it != timers_.end(); ++it) {
        if (it->second.first <= until && (due == timers_.end() || it->second.first < due->second.first)) due = it;
      }
      if (due == timers_.end()) break;
      now_ = due->second.first;
      auto fn = std::move(due->second.second);
      timers_.erase(due);
      fn();
    }
    now_ = until;
  }
  size_t timers() const { return timers_.size(); }

 private:
  std::deque<std::function<void()>> queue_;
  std::map<TimerId, std::pair<int64_t, std::function<void()>>> timers_;
  TimerId next_ = 1;
  int64_t now_ = 0;
};

enum class Behaviour { honest, silent, bad_signature, garbage, wrong_index, replay_other };

// Drives 3f+1 real state machines directly, each executing every request
// as a batch of its own in submission order (no protocol), and hands each
// replica's reply to the client through the executor.
class TestChannel final : public RequestChannel {
 public:
  TestChannel(ManualExecutor& executor, const TestCluster& cluster)
      : executor_(executor), cluster_(cluster) {
    for (uint32_t i = 0; i < 3 * cluster.f + 1; ++i) {
      replicas.push_back(std::make_unique<TestReplica>(cluster.config(), cluster.replica_keys[i]));
      behaviour.push_back(Behaviour::honest);
    }
  }

  using RequestChannel::submit;
  Result<uint64_t> submit(Bytes body, const SecureHash&, ReplyFn on_reply) override {
    if (refuse) return makeError(Errc::too_large, "refused by the test channel");
    uint64_t seq = next_seq_++;
    for (uint32_t i = 0; i < replicas.size(); ++i) {
      auto executed = replicas[i]->execute({request(body, seq)}, time_micros);
      REQUIRE(executed.ok());
      Bytes reply = executed->replies[0];
      uint32_t index = i;
      switch (behaviour[i]) {
        case Behaviour::honest: break;
        case Behaviour::silent: continue;
        case Behaviour::bad_signature: {
          auto s = signedReply(reply);
          auto bytes = s.txSignature ? s.txSignature->bytes() : s.rootSignature->bytes();
          bytes[0] ^= 1;
          if (s.txSignature) s.txSignature = DigitalSignature(s.txSignature->by(), bytes);
          else
            s.rootSignature = DigitalSignature(s.rootSignature->by(), bytes);
          reply = s.encode();
          break;
        }
        case Behaviour::garbage: reply = Bytes{1, 2, 3, 4, 5, 6, 7, 8}; break;
        case Behaviour::wrong_index:  // claims to be the next replica
          index = (i + 1) % static_cast<uint32_t>(replicas.size());
          break;
        case Behaviour::replay_other:  // its own, validly signed answer to an earlier request
          if (!previous_[i].empty()) reply = previous_[i];
          break;
      }
      previous_[i] = executed->replies[0];
      executor_.post([this, seq, index, reply, on_reply]() {
        if (finished_.count(seq)) return;
        on_reply(index, reply);
        for (uint32_t d = 0; d < duplicates; ++d) on_reply(index, reply);
      });
    }
    return seq;
  }
  void finish(uint64_t client_seq) override { finished_.insert(client_seq); }
  uint32_t replicaCount() const override { return static_cast<uint32_t>(replicas.size()); }
  uint32_t faultsTolerated() const override { return cluster_.f; }

  std::vector<std::unique_ptr<TestReplica>> replicas;
  std::vector<Behaviour> behaviour;
  int64_t time_micros = 1'000'000;
  uint32_t duplicates = 0;
  bool refuse = false;

 private:
  ManualExecutor& executor_;
  const TestCluster& cluster_;
  uint64_t next_seq_ = 1;
  std::set<uint64_t> finished_;
  std::map<uint32_t, Bytes> previous_;  // each replica's last reply
};

NotaryClusterInfo infoOf(const TestCluster& cluster) {
  NotaryClusterInfo info;
  info.name = cluster.party.name;
  info.service_key = cluster.service_key;
  info.f = cluster.f;
  for (const auto& k : cluster.replica_keys) info.replica_keys.push_back(k.publicKey());
  return info;
}

struct ClientFixture {
  explicit ClientFixture(uint32_t f = 1) : cluster(f), channel(executor, cluster) {
    NotaryClientConfig config;
    config.timeout_micros = 5'000'000;
    config.log = [this](std::string_view line) { log.emplace_back(line); };
    client = std::make_unique<NotaryClient>(executor, channel, infoOf(cluster), config);
  }
  std::optional<Result<NotarisationResult>> notarise(const SignedTransaction& stx) {
    std::optional<Result<NotarisationResult>> out;
    client->notarise(stx, [&](Result<NotarisationResult> r) {
      CHECK_FALSE(out.has_value());  // exactly once
      out.emplace(std::move(r));
    });
    executor.runUntilIdle();
    return out;
  }
  SignedTransaction signedSpend(const std::vector<StateRef>& inputs,
                                std::optional<TimeWindow> window = std::nullopt) {
    SignedTransaction stx(spend(cluster.party, inputs, {}, window));
    stx.signWith(ccal::testing::testKey(1));
    return stx;
  }

  ManualExecutor executor;
  TestCluster cluster;
  TestChannel channel;
  std::vector<std::string> log;
  std::unique_ptr<NotaryClient> client;
};

}  // namespace

TEST_CASE("notarised with 3 of 4 replica signatures, which complete the transaction") {
  ClientFixture fx;
  CHECK(fx.client->successThreshold() == 3);
  CHECK(fx.client->agreementThreshold() == 2);
  auto stx = fx.signedSpend({stateRef("a")});
  CHECK_FALSE(stx.verifyRequiredSignatures().ok());  // the notary's signature is missing
  auto result = fx.notarise(stx);
  REQUIRE(result.has_value());
  if (!result->ok()) FAIL(result->error().toString());
  CHECK((*result)->kind == NotarisationResult::Kind::notarised);
  CHECK((*result)->signatures.size() == 3);  // done as soon as the composite key is fulfilled
  for (const auto& s : (*result)->signatures) stx.addSignature(s);
  CHECK(stx.verifyRequiredSignatures().ok());
  CHECK(fx.client->counters().notarised == 1);
  CHECK(fx.client->counters().replies_ignored == 0);
  CHECK(fx.executor.timers() == 0);  // the timeout was cancelled
  // Every replica committed it; the fourth reply, arriving late, is dropped.
  for (auto& r : fx.channel.replicas) CHECK(r->sm->consumedBy(stateRef("a")).value() == stx.id());
}

TEST_CASE("one Byzantine replica can neither stop nor fake a notarisation") {
  ClientFixture fx;
  struct Case {
    const char* name;
    Behaviour behaviour;
  };
  for (auto c : {Case{"silent", Behaviour::silent}, Case{"bad signature", Behaviour::bad_signature},
                 Case{"garbage", Behaviour::garbage}, Case{"claims another index", Behaviour::wrong_index}}) {
    CAPTURE(c.name);
    // The Byzantine replica answers first, so the client sees its reply before the honest ones.
    fx.channel.behaviour = {c.behaviour, Behaviour::honest, Behaviour::honest, Behaviour::honest};
    fx.log.clear();
    auto stx = fx.signedSpend({stateRef(std::string("byz ") + c.name)});
    auto result = fx.notarise(stx);
    REQUIRE(result.has_value());
    REQUIRE(result->ok());
    CHECK((*result)->kind == NotarisationResult::Kind::notarised);
    CHECK((*result)->signatures.size() == 3);
    for (const auto& s : (*result)->signatures) CHECK(s.by() != fx.cluster.replica_keys[0].publicKey());
    if (c.behaviour != Behaviour::silent) {
      REQUIRE_FALSE(fx.log.empty());
      CHECK(fx.log[0].find("ignored a reply from replica") != std::string::npos);
    }
  }
  CHECK(fx.client->counters().replies_ignored >= 3);

  SUBCASE("a replica whose state says conflict (validly signed) is outvoted") {
    // Replica 3 alone has seen another spend of the state.
    auto a = stateRef("diverged");
    auto other = spend(fx.cluster.party, {a});
    REQUIRE(fx.channel.replicas[3]->execute({request(nonValidatingRequest(other))}).ok());
    fx.channel.behaviour = {Behaviour::honest, Behaviour::honest, Behaviour::honest, Behaviour::honest};
    auto stx = fx.signedSpend({a});
    auto result = fx.notarise(stx);
    REQUIRE(result.has_value());
    REQUIRE(result->ok());
    CHECK((*result)->kind == NotarisationResult::Kind::notarised);
  }
  SUBCASE("a replayed reply to an earlier request is ignored") {
    fx.channel.behaviour = {Behaviour::replay_other, Behaviour::honest, Behaviour::honest, Behaviour::honest};
    fx.channel.duplicates = 2;
    fx.log.clear();
    auto result = fx.notarise(fx.signedSpend({stateRef("replayed")}));
    REQUIRE(result.has_value());
    CHECK(result->ok());
    // Duplicates of honest replies are ignored too; nothing counts twice.
    bool saw_duplicate = false, saw_replay = false;
    for (const auto& line : fx.log) {
      saw_duplicate |= line.find("already answered") != std::string::npos;
      saw_replay |= line.find("replica 0") != std::string::npos && line.find("another request") != std::string::npos;
    }
    CHECK(saw_duplicate);
    CHECK(saw_replay);
  }
}

TEST_CASE("a double spend gets a verified conflict from f+1 replicas") {
  ClientFixture fx;
  auto a = stateRef("a");
  auto first = fx.signedSpend({a});
  REQUIRE(fx.notarise(first).value().ok());
  auto second = fx.signedSpend({a, stateRef("b")});
  auto result = fx.notarise(second);
  REQUIRE(result.has_value());
  REQUIRE(result->ok());
  CHECK((*result)->kind == NotarisationResult::Kind::conflict);
  REQUIRE((*result)->conflicts.size() == 1);
  CHECK((*result)->conflicts[0].ref == a);
  CHECK((*result)->conflicts[0].consumingTxIdHash == consumingTxIdHash(first.id()));
  CHECK((*result)->proof.size() == 2);
  CHECK(fx.client->verifyConflictProof(second.id(), (*result)->proof).ok());
  // The proof is not transferable to another transaction, and one signer is not enough.
  CHECK_FALSE(fx.client->verifyConflictProof(first.id(), (*result)->proof).ok());
  CHECK(fx.client->verifyConflictProof(second.id(), {(*result)->proof[0]}).error().code ==
        Errc::missing_signatures);
  CHECK_FALSE(fx.client->verifyConflictProof(second.id(), {(*result)->proof[0], (*result)->proof[0]}).ok());
  auto tampered = (*result)->proof;
  tampered[1][tampered[1].size() / 2] ^= 1;
  CHECK_FALSE(fx.client->verifyConflictProof(second.id(), tampered).ok());
  CHECK(fx.client->counters().conflicts == 1);
  CHECK(fx.client->counters().root_verifications == 2);
  for (auto& r : fx.channel.replicas) CHECK_FALSE(r->sm->consumedBy(stateRef("b")).value().has_value());

  SUBCASE("a Byzantine replica's bad root signature does not count") {
    fx.channel.behaviour = {Behaviour::bad_signature, Behaviour::silent, Behaviour::silent, Behaviour::honest};
    auto third = fx.signedSpend({a});
    auto r = fx.notarise(third);
    CHECK_FALSE(r.has_value());  // one valid conflict answer is not enough
    fx.executor.advance(5'000'000);
    CHECK(fx.client->counters().timeouts == 1);
  }
}

TEST_CASE("refusals need f+1 matching signed errors; too few answers time out") {
  ClientFixture fx;
  fx.channel.time_micros = 10'000'000;
  auto late = fx.signedSpend({stateRef("late")}, TimeWindow{std::nullopt, 2'000'000});
  auto result = fx.notarise(late);
  REQUIRE(result.has_value());
  REQUIRE_FALSE(result->ok());
  CHECK(result->error().code == Errc::invalid_transaction);
  CHECK(result->error().message.find("time window") != std::string::npos);

  SUBCASE("two silent replicas: no answer, then a timeout") {
    fx.channel.behaviour = {Behaviour::silent, Behaviour::honest, Behaviour::silent, Behaviour::honest};
    std::optional<Result<NotarisationResult>> out;
    fx.client->notarise(fx.signedSpend({stateRef("waits")}), [&](Result<NotarisationResult> r) { out.emplace(r); });
    fx.executor.advance(4'999'999);
    CHECK_FALSE(out.has_value());
    fx.executor.advance(1);
    REQUIRE(out.has_value());
    CHECK(out->error().code == Errc::timeout);
    CHECK(out->error().message.find("2 signatures of 3") != std::string::npos);
  }
  SUBCASE("notarisations beyond pending_requests_max are refused") {
    NotaryClientConfig config;
    config.pending_requests_max = 1;
    config.log = [](std::string_view) {};
    NotaryClient small(fx.executor, fx.channel, infoOf(fx.cluster), config);
    fx.channel.behaviour = {Behaviour::silent, Behaviour::silent, Behaviour::silent, Behaviour::silent};
    std::vector<Result<NotarisationResult>> out;
    small.notarise(fx.signedSpend({stateRef("p1")}), [&](Result<NotarisationResult> r) { out.push_back(r); });
    small.notarise(fx.signedSpend({stateRef("p2")}), [&](Result<NotarisationResult> r) { out.push_back(r); });
    fx.executor.runUntilIdle();
    REQUIRE(out.size() == 1);
    CHECK(out[0].error().code == Errc::unavailable);
    fx.executor.advance(30'000'000);
    REQUIRE(out.size() == 2);
    CHECK(out[1].error().code == Errc::timeout);
  }
  SUBCASE("a request the channel refuses fails at once") {
    fx.channel.refuse = true;
    auto r = fx.notarise(fx.signedSpend({stateRef("refused")}));
    REQUIRE(r.has_value());
    CHECK(r->error().code == Errc::too_large);
  }
}

TEST_CASE("a cluster of 7 (f = 2) needs 5 signatures") {
  ClientFixture fx(2);
  fx.channel.behaviour = {Behaviour::silent, Behaviour::bad_signature, Behaviour::honest, Behaviour::honest,
                          Behaviour::honest, Behaviour::honest, Behaviour::honest};
  CHECK(fx.client->successThreshold() == 5);
  auto stx = fx.signedSpend({stateRef("seven")});
  auto result = fx.notarise(stx);
  REQUIRE(result.has_value());
  REQUIRE(result->ok());
  CHECK((*result)->signatures.size() == 5);
  for (const auto& s : (*result)->signatures) stx.addSignature(s);
  CHECK(stx.verifyRequiredSignatures().ok());
}

TEST_CASE("validating requests carry the whole transaction and its dependencies") {
  ManualExecutor executor;
  TestCluster cluster;
  ContractRegistry registry;
  registry.add(std::make_unique<ccal::testing::DummyContract>());
  auto info = infoOf(cluster);
  info.validating = true;
  TestChannel channel(executor, cluster);
  UniquenessConfig config = cluster.config();
  config.validating = true;
  config.registry = &registry;
  for (uint32_t i = 0; i < 4; ++i) channel.replicas[i]->open(config, cluster.replica_keys[i]);
  NotaryClient client(executor, channel, info);

  auto alice = ccal::testing::testKey(1);
  auto issue = TransactionBuilder(cluster.party)
                   .addOutput(ccal::testing::dummyState(cluster.party, {Key(alice.publicKey())}, "one"))
                   .addCommand(ccal::testing::dummyCommand("Issue", {Key(alice.publicKey())}))
                   .build()
                   .value();
  SignedTransaction issued(issue);
  issued.signWith(alice);
  auto move = TransactionBuilder(cluster.party)
                  .addInput({issue.id(), 0})
                  .addOutput(ccal::testing::dummyState(cluster.party, {Key(alice.publicKey())}, "two"))
                  .addCommand(ccal::testing::dummyCommand("Move", {Key(alice.publicKey())}))
                  .build()
                  .value();
  SignedTransaction stx(move);
  stx.signWith(alice);
  auto body = NotarisationRequest::decode(client.requestFor(stx, {issued})).value();
  CHECK(body.isValidating());
  std::optional<Result<NotarisationResult>> out;
  client.notarise(stx, [&](Result<NotarisationResult> r) { out.emplace(r); }, {issued});
  executor.runUntilIdle();
  REQUIRE(out.has_value());
  if (!out->ok()) FAIL(out->error().toString());
  CHECK((*out)->kind == NotarisationResult::Kind::notarised);
}
