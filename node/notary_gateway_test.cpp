#include "node/notary_gateway.h"

#include <doctest/doctest.h>

#include <future>
#include <memory>
#include <set>

#include "node/asio_executor.h"
#include "notary/notarisation_testing.h"

using namespace ccal;
using namespace ccal::node;
using namespace ccal::notary;
using namespace ccal::notary::testing;

namespace {

// 3f+1 real uniqueness state machines (on LMDB), each executing every
// request as a batch of its own in submission order; replies go to the
// client on the executor. (The PBFT ordering itself is tested in notary/.)
class StateMachineChannel final : public RequestChannel {
 public:
  StateMachineChannel(flows::Executor& executor, const TestCluster& cluster)
      : executor_(executor), cluster_(cluster) {
    for (uint32_t i = 0; i < 3 * cluster.f + 1; ++i) {
      replicas_.push_back(std::make_unique<TestReplica>(cluster.config(), cluster.replica_keys[i]));
    }
  }
  using RequestChannel::submit;
  Result<uint64_t> submit(Bytes body, const SecureHash&, ReplyFn on_reply) override {
    const uint64_t seq = next_seq_++;
    ++submitted;
    for (uint32_t i = 0; i < replicas_.size(); ++i) {
      auto executed = replicas_[i]->execute({request(body, seq)});
      if (!executed) return executed.error();
      Bytes reply = executed->replies.at(0);
      executor_.post([on_reply, i, reply] { on_reply(i, reply); });
    }
    return seq;
  }
  void finish(uint64_t) override {}
  uint32_t replicaCount() const override { return static_cast<uint32_t>(replicas_.size()); }
  uint32_t faultsTolerated() const override { return cluster_.f; }

  uint64_t submitted = 0;

 private:
  flows::Executor& executor_;
  const TestCluster& cluster_;
  std::vector<std::unique_ptr<TestReplica>> replicas_;
  uint64_t next_seq_ = 1;
};

NotaryClusterInfo infoOf(const TestCluster& cluster, bool validating) {
  NotaryClusterInfo info;
  info.name = cluster.party.name;
  info.service_key = cluster.service_key;
  info.validating = validating;
  info.f = cluster.f;
  for (const auto& k : cluster.replica_keys) info.replica_keys.push_back(k.publicKey());
  return info;
}

struct Fixture {
  explicit Fixture(bool validating = false) : channel(executor, cluster), validating_cluster(validating) {
    executor.start();
    executor.runSync([&] {
      NotaryClientConfig config;
      config.log = [](std::string_view) {};
      client = std::make_unique<NotaryClient>(executor, channel, infoOf(cluster, validating), config);
    });
    gateway = std::make_unique<ClientNotaryGateway>(
        executor, [this](std::string_view name) -> std::optional<ClientNotaryGateway::Cluster> {
          if (name != cluster.party.name) return std::nullopt;
          return ClientNotaryGateway::Cluster{client.get(), validating_cluster};
        });
  }
  ~Fixture() {
    executor.runSync([&] { client.reset(); });
    executor.stop();
  }
  // Notarises from this (non-executor) thread and waits for the answer.
  Result<flows::NotaryAnswer> notarise(const Party& notary, flows::NotaryRequest request) {
    std::promise<Result<flows::NotaryAnswer>> promise;
    auto answer = promise.get_future();
    gateway->notarise(notary, std::move(request),
                      [&](Result<flows::NotaryAnswer> r) { promise.set_value(std::move(r)); });
    return answer.get();
  }
  flows::NotaryRequest filtered(const SignedTransaction& stx) {
    flows::NotaryRequest r;
    r.txId = stx.id();
    r.filtered = FilteredTransaction::forNotary(stx.tx());
    return r;
  }
  SignedTransaction signedSpend(const std::vector<StateRef>& inputs, const std::string& salt = "") {
    TransactionBuilder b(cluster.party);
    for (const auto& r : inputs) b.addInput(r);
    auto alice = ccal::testing::testKey(1);
    b.addOutput(ccal::testing::dummyState(cluster.party, {Key(alice.publicKey())}, "moved" + salt));
    b.addCommand(ccal::testing::dummyCommand("Move", {Key(alice.publicKey())}));
    SignedTransaction stx(b.build().value());
    stx.signWith(alice);
    return stx;
  }

  AsioExecutor executor;
  TestCluster cluster;
  StateMachineChannel channel;
  bool validating_cluster;
  std::unique_ptr<NotaryClient> client;
  std::unique_ptr<ClientNotaryGateway> gateway;
};

}  // namespace

TEST_CASE("the gateway notarises through the notary client: signatures that complete the transaction") {
  Fixture fx;
  CHECK(fx.gateway->validating(fx.cluster.party).value() == false);
  auto stx = fx.signedSpend({stateRef("a")});
  auto answer = fx.notarise(fx.cluster.party, fx.filtered(stx));
  REQUIRE_MESSAGE(answer.ok(), answer.error().toString());
  CHECK_FALSE(answer->conflict());
  CHECK(answer->signatures.size() >= 3);
  for (const auto& s : answer->signatures) stx.addSignature(s);
  CHECK(stx.verifyRequiredSignatures().ok());

  // Asked again (a flow replayed after a crash): the same transaction is notarised again.
  auto again = fx.notarise(fx.cluster.party, fx.filtered(stx));
  REQUIRE_MESSAGE(again.ok(), again.error().toString());
  CHECK_FALSE(again->conflict());
  CHECK(again->signatures.size() >= 3);
}

TEST_CASE("the gateway turns a double spend into the conflicting StateRef and the consumer's id hash") {
  Fixture fx;
  auto first = fx.signedSpend({stateRef("a"), stateRef("b")});
  REQUIRE(fx.notarise(fx.cluster.party, fx.filtered(first)).ok());
  auto second = fx.signedSpend({stateRef("b"), stateRef("c")}, "second");
  auto answer = fx.notarise(fx.cluster.party, fx.filtered(second));
  REQUIRE_MESSAGE(answer.ok(), answer.error().toString());
  REQUIRE(answer->conflict());
  REQUIRE(answer->conflicts.size() == 1);
  CHECK(answer->conflicts[0].ref == stateRef("b"));
  CHECK(answer->conflicts[0].consumedBy == consumingTxIdHash(first.id()));
  CHECK(answer->signatures.empty());
}

TEST_CASE("the gateway refuses, without asking a replica, what does not fit the cluster") {
  Fixture fx;
  auto stx = fx.signedSpend({stateRef("a")});

  Party stranger{"O=Other Notary, L=Haikou, C=CN", fx.cluster.service_key};
  CHECK(fx.gateway->validating(stranger).error().code == Errc::not_found);
  auto unknown = fx.notarise(stranger, fx.filtered(stx));
  REQUIRE_FALSE(unknown.ok());
  CHECK(unknown.error().code == Errc::not_found);
  CHECK(unknown.error().message.find("O=Other Notary") != std::string::npos);

  flows::NotaryRequest whole;
  whole.txId = stx.id();
  whole.full = stx;
  auto wrong_form = fx.notarise(fx.cluster.party, whole);
  REQUIRE_FALSE(wrong_form.ok());
  CHECK(wrong_form.error().code == Errc::malformed);
  CHECK(wrong_form.error().message.find("non-validating") != std::string::npos);

  auto other = fx.signedSpend({stateRef("z")});
  flows::NotaryRequest mismatched = fx.filtered(other);
  mismatched.txId = stx.id();
  auto mismatch = fx.notarise(fx.cluster.party, mismatched);
  REQUIRE_FALSE(mismatch.ok());
  CHECK(mismatch.error().code == Errc::id_mismatch);
  CHECK(fx.channel.submitted == 0);
}

TEST_CASE("a validating cluster gets the whole transaction and refuses a filtered one") {
  Fixture fx(/*validating=*/true);
  CHECK(fx.gateway->validating(fx.cluster.party).value() == true);
  auto stx = fx.signedSpend({stateRef("a")});
  auto refused = fx.notarise(fx.cluster.party, fx.filtered(stx));
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().code == Errc::malformed);
  CHECK(refused.error().message.find("validating") != std::string::npos);
  CHECK(fx.channel.submitted == 0);
}
