#include "notary/uniqueness.h"

#include <capnp/message.h>
#include <doctest/doctest.h>

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "ledger/merkle.h"
#include "notary/notarisation_testing.h"
#include "schemas/notary.capnp.h"

using namespace ccal;
using namespace ccal::notary;
using namespace ccal::notary::testing;
using Outcome = NotarisationReply::Outcome;

namespace {

// Checks what every reply must satisfy: a success carries its transaction
// signature (and no batch-root signature or proof); any other answer a proof
// that leads to a root the replica signed for this batch.
void checkSigned(const Executed& executed, const PublicKey& replica, uint64_t seq) {
  for (size_t i = 0; i < executed.replies.size(); ++i) {
    auto s = signedReply(executed.replies[i]);
    CHECK(s.leafIndex == i);
    CHECK(s.leafCount == executed.replies.size());
    auto reply = NotarisationReply::decode(s.reply).value();
    CHECK(reply.batchSeq == seq);
    if (reply.outcome == Outcome::success) {
      REQUIRE(s.txSignature.has_value());
      CHECK(s.txSignature->by() == replica);
      CHECK(s.txSignature->verify(signableBytes(reply.txId)).ok());
      CHECK_FALSE(s.rootSignature.has_value());
      CHECK(s.proof.empty());
    } else {
      auto root = s.root();
      REQUIRE(root.ok());
      REQUIRE(s.rootSignature.has_value());
      CHECK(s.rootSignature->by() == replica);
      CHECK(s.rootSignature->verify(batchRootSignableBytes(seq, s.leafCount, *root)).ok());
      CHECK_FALSE(s.txSignature.has_value());
    }
  }
}

struct Fixture {
  TestCluster cluster;
  TestReplica replica{cluster.config(), cluster.replica_keys[0]};

  Executed run(std::vector<Request> requests, int64_t time_micros = 1'000'000) {
    uint64_t seq = replica.sm->lastExecuted() + 1;
    auto executed = replica.execute(std::move(requests), time_micros);
    if (!executed.ok()) FAIL(executed.error().toString());
    CHECK(replica.sm->lastExecuted() == seq);
    checkSigned(*executed, cluster.replica_keys[0].publicKey(), seq);
    // The packed form the replica keeps durably gives back the same replies, byte for byte.
    if (executed->replies.empty()) {
      CHECK(executed->packed_replies.empty());
    } else {
      auto expanded = replica.sm->expandReplies(seq, executed->packed_replies);
      REQUIRE(expanded.ok());
      CHECK(*expanded == executed->replies);
    }
    return std::move(executed).value();
  }
  NotarisationReply notarise(const WireTransaction& tx, int64_t time_micros = 1'000'000) {
    auto executed = run({request(nonValidatingRequest(tx))}, time_micros);
    REQUIRE(executed.replies.size() == 1);
    return replyOf(executed.replies[0]);
  }
  std::optional<SecureHash> consumer(const StateRef& ref) { return replica.sm->consumedBy(ref).value(); }
};

}  // namespace

TEST_CASE("unconsumed inputs become consumed by the transaction") {
  Fixture fx;
  auto a = stateRef("a"), b = stateRef("b", 3);
  auto tx = spend(fx.cluster.party, {a, b});
  auto reply = fx.notarise(tx);
  CHECK(reply.outcome == Outcome::success);
  CHECK(reply.txId == tx.id());
  CHECK(fx.consumer(a) == tx.id());
  CHECK(fx.consumer(b) == tx.id());
  CHECK_FALSE(fx.consumer(stateRef("b", 2)).has_value());

  auto effects = BatchEffects::decode(fx.replica.sm->effects(1).value()).value();
  CHECK(effects.seq == 1);
  REQUIRE(effects.consumed.size() == 2);
  CHECK(effects.consumed[0] == ConsumedState{a, tx.id()});
  CHECK(effects.consumed[1] == ConsumedState{b, tx.id()});
  CHECK(fx.replica.sm->effects(2).error().code == Errc::not_found);
}

TEST_CASE("re-notarising a committed transaction is an idempotent success") {
  Fixture fx;
  auto tx = spend(fx.cluster.party, {stateRef("a")});
  auto first = fx.notarise(tx);
  REQUIRE(first.outcome == Outcome::success);
  auto again = fx.notarise(tx, 9'000'000);
  CHECK(again.outcome == Outcome::success);
  CHECK(again.sameAnswer(first));
  CHECK(again.batchSeq == 2);
  // The second batch changed nothing.
  auto effects = BatchEffects::decode(fx.replica.sm->effects(2).value()).value();
  CHECK(effects.consumed.empty());

  SUBCASE("twice in one batch") {
    auto tx2 = spend(fx.cluster.party, {stateRef("c")});
    auto executed = fx.run({request(nonValidatingRequest(tx2)), request(nonValidatingRequest(tx2), 2)});
    CHECK(replyOf(executed.replies[0]).outcome == Outcome::success);
    CHECK(replyOf(executed.replies[1]).outcome == Outcome::success);
    auto e = BatchEffects::decode(executed.effects).value();
    CHECK(e.consumed.size() == 1);
  }
  SUBCASE("a transaction without inputs, after its time window has passed") {
    auto tw = spend(fx.cluster.party, {}, {}, TimeWindow{std::nullopt, 2'000'000});
    CHECK(fx.notarise(tw, 1'000'000).outcome == Outcome::success);
    CHECK(fx.notarise(tw, 5'000'000).outcome == Outcome::success);
    auto other = spend(fx.cluster.party, {}, {}, TimeWindow{std::nullopt, 2'000'000});
    CHECK(fx.notarise(other, 5'000'000).outcome == Outcome::error);
  }
}

TEST_CASE("an input consumed by another transaction is a conflict naming it and the consuming tx hash") {
  Fixture fx;
  auto a = stateRef("a"), fresh = stateRef("fresh");
  auto tx1 = spend(fx.cluster.party, {a});
  REQUIRE(fx.notarise(tx1).outcome == Outcome::success);
  auto tx2 = spend(fx.cluster.party, {fresh, a});
  auto reply = fx.notarise(tx2);
  CHECK(reply.outcome == Outcome::conflict);
  REQUIRE(reply.conflicts.size() == 1);
  CHECK(reply.conflicts[0].ref == a);
  CHECK(reply.conflicts[0].consumingTxIdHash == SecureHash::of(tx1.id().view()));
  CHECK_FALSE(reply.conflicts[0].isReference);
  CHECK(reply.describe().find(a.toString()) != std::string::npos);
  // Nothing of the conflicting transaction was consumed.
  CHECK_FALSE(fx.consumer(fresh).has_value());
  CHECK(fx.consumer(a) == tx1.id());

  SUBCASE("within one batch, the first in order wins") {
    auto b = stateRef("b");
    auto x = spend(fx.cluster.party, {b}), y = spend(fx.cluster.party, {b});
    auto executed = fx.run({request(nonValidatingRequest(y)), request(nonValidatingRequest(x), 2)});
    CHECK(replyOf(executed.replies[0]).outcome == Outcome::success);
    auto second = replyOf(executed.replies[1]);
    REQUIRE(second.outcome == Outcome::conflict);
    CHECK(second.conflicts[0].consumingTxIdHash == consumingTxIdHash(y.id()));
    CHECK(fx.consumer(b) == y.id());
  }
}

TEST_CASE("references must be unconsumed and are not consumed") {
  Fixture fx;
  auto in = stateRef("in"), ref = stateRef("ref");
  auto tx = spend(fx.cluster.party, {in}, {ref});
  CHECK(fx.notarise(tx).outcome == Outcome::success);
  CHECK_FALSE(fx.consumer(ref).has_value());
  // The reference can be read again, and spent.
  CHECK(fx.notarise(spend(fx.cluster.party, {stateRef("in2")}, {ref})).outcome == Outcome::success);
  auto spender = spend(fx.cluster.party, {ref});
  CHECK(fx.notarise(spender).outcome == Outcome::success);
  // Now it is consumed: referencing it is a conflict, and nothing is consumed.
  auto in3 = stateRef("in3");
  auto late = fx.notarise(spend(fx.cluster.party, {in3}, {ref}));
  REQUIRE(late.outcome == Outcome::conflict);
  CHECK(late.conflicts[0].ref == ref);
  CHECK(late.conflicts[0].isReference);
  CHECK(late.conflicts[0].consumingTxIdHash == consumingTxIdHash(spender.id()));
  CHECK_FALSE(fx.consumer(in3).has_value());
  // The first transaction stays notarised even though its reference is gone.
  CHECK(fx.notarise(tx).outcome == Outcome::success);
}

TEST_CASE("time windows are checked against the batch's agreed time, [from, until)") {
  Fixture fx;
  const int64_t t = 5'000'000;
  int n = 0;
  auto with = [&](std::optional<int64_t> from, std::optional<int64_t> until) {
    return fx.notarise(spend(fx.cluster.party, {stateRef("tw" + std::to_string(n++))}, {},
                             TimeWindow{from, until}),
                       t);
  };
  CHECK(with(t, std::nullopt).outcome == Outcome::success);
  CHECK(with(t - 1, t + 1).outcome == Outcome::success);
  CHECK(with(std::nullopt, t + 1).outcome == Outcome::success);
  auto at_until = with(std::nullopt, t);
  CHECK(at_until.outcome == Outcome::error);
  CHECK(at_until.error.code == Errc::invalid_transaction);
  CHECK(at_until.error.message.find("time window") != std::string::npos);
  CHECK(with(t + 1, std::nullopt).outcome == Outcome::error);
  CHECK(with(t + 1, t + 10).outcome == Outcome::error);
  // A refused window consumed nothing.
  CHECK_FALSE(fx.consumer(stateRef("tw3")).has_value());
  CHECK(fx.consumer(stateRef("tw0")).has_value());
}

TEST_CASE("requests for another notary are refused by check() and answered with an error") {
  Fixture fx;
  auto in = stateRef("in");
  TestCluster other(1, "O=Other Notary, L=Haikou, C=CN", 200);
  struct Case {
    const char* name;
    Bytes body;
  };
  std::vector<Case> cases = {
      {"request names another notary", nonValidatingRequest(spend(fx.cluster.party, {in}), other.party.name)},
      {"transaction names another notary", nonValidatingRequest(spend(other.party, {in}))},
      {"our name with another key",
       nonValidatingRequest(spend(Party{fx.cluster.party.name, other.service_key}, {in}))},
  };
  for (const auto& c : cases) {
    CAPTURE(c.name);
    Status checked = fx.replica.sm->check(request(c.body));
    REQUIRE_FALSE(checked.ok());
    CHECK(checked.error().code == Errc::invalid_transaction);
    CHECK(checked.error().message.find("notary") != std::string::npos);
    auto reply = replyOf(fx.run({request(c.body)}).replies[0]);
    CHECK(reply.outcome == Outcome::error);
    CHECK(reply.error.message == checked.error().message);
  }
  CHECK_FALSE(fx.consumer(in).has_value());
}

TEST_CASE("malformed bytes: every truncation and a corruption sweep are refused without a trace") {
  Fixture fx;
  auto in = stateRef("in");
  auto tx = spend(fx.cluster.party, {in}, {stateRef("ref")}, TimeWindow{0, 9'000'000});
  Bytes good = nonValidatingRequest(tx);
  REQUIRE(fx.replica.sm->check(request(good)).ok());

  CHECK(fx.replica.sm->check(request({})).error().code == Errc::malformed);
  for (size_t len = 0; len < good.size(); len += 3) {
    Bytes cut(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(len));
    CHECK_FALSE(fx.replica.sm->check(request(cut)).ok());
  }
  Bytes longer = good;
  longer.insert(longer.end(), 8, 0);
  CHECK(fx.replica.sm->check(request(longer)).error().code == Errc::not_canonical);

  // Flip bits 0, 3 and 6 of every byte: a mutation either fails check(), or
  // still decodes to the same transaction's inputs (no forgery gets through).
  // (Cap'n Proto's schema-less canonical check lets a few through: a UInt32
  // list pointer widened to 8-byte elements, an empty list's offset.)
  size_t refused = 0, accepted = 0;
  std::vector<Request> corrupted;
  for (size_t i = 0; i < good.size(); ++i) {
    for (int bit = 0; bit < 8; bit += 3) {
      Bytes bad = good;
      bad[i] ^= static_cast<uint8_t>(1u << bit);
      Status s = fx.replica.sm->check(request(bad));
      if (!s.ok()) {
        ++refused;
        CHECK_FALSE(s.error().message.empty());
        if (corrupted.size() < 64) corrupted.push_back(request(bad, corrupted.size() + 1));
        continue;
      }
      ++accepted;
      auto r = NotarisationRequest::decode(bad).value();
      CHECK(r.txId() == tx.id());
      CHECK(r.filtered().inputs() == tx.inputs());
      CHECK(r.filtered().references() == tx.references());
      CHECK(r.filtered().timeWindow() == tx.timeWindow());
    }
  }
  MESSAGE("corruption sweep: " << refused << " refused, " << accepted << " harmless");
  CHECK(refused > 0);
  // Executed, they are error replies and nothing is consumed.
  auto executed = fx.run(corrupted);
  for (const auto& r : executed.replies) CHECK(replyOf(r).outcome == Outcome::error);
  CHECK_FALSE(fx.consumer(in).has_value());
  CHECK(BatchEffects::decode(executed.effects).value().consumed.empty());
  // And the good request still works afterwards.
  CHECK(fx.notarise(tx).outcome == Outcome::success);
}

namespace {

// Re-encodes a request with the filtered transaction changed by `edit`.
Bytes editFiltered(const Bytes& body, const std::function<void(schema::FilteredTransaction::Builder)>& edit) {
  kj::ArrayPtr<const capnp::word> words(reinterpret_cast<const capnp::word*>(body.data()),
                                        body.size() / sizeof(capnp::word));
  kj::ArrayPtr<const capnp::word> segments[1] = {words};
  capnp::SegmentArrayMessageReader reader(kj::arrayPtr(segments, 1));
  capnp::MallocMessageBuilder builder;
  builder.setRoot(reader.getRoot<schema::notary::NotarisationRequest>());
  auto root = builder.getRoot<schema::notary::NotarisationRequest>();
  edit(root.getNonValidating());
  return canonicalBytes(root.asReader());
}

}  // namespace

TEST_CASE("a filtered transaction that hides or forges components is refused") {
  Fixture fx;
  auto a = stateRef("a"), b = stateRef("b"), ref = stateRef("ref");
  auto tx = spend(fx.cluster.party, {a, b}, {ref}, TimeWindow{0, 9'000'000});
  auto body = [&](const std::function<bool(ComponentGroup, uint32_t)>& reveal) {
    auto request = NotarisationRequest::nonValidating(fx.cluster.party.name,
                                                      FilteredTransaction::build(tx, reveal));
    // Written directly: the builder's canonical bytes, whatever is revealed.
    REQUIRE(request.encode() == request.encodeBuilt());
    return request.encode();
  };
  auto notaryView = [](ComponentGroup g, uint32_t) {
    return g == ComponentGroup::inputs || g == ComponentGroup::references || g == ComponentGroup::notary ||
           g == ComponentGroup::time_window;
  };
  REQUIRE(fx.replica.sm->check(request(body(notaryView))).ok());

  struct Case {
    const char* name;
    std::function<bool(ComponentGroup, uint32_t)> reveal;
    Errc code;
  };
  std::vector<Case> cases = {
      {"hides input 1", [&](ComponentGroup g, uint32_t i) { return notaryView(g, i) && !(g == ComponentGroup::inputs && i == 1); }, Errc::not_visible},
      {"hides the references", [&](ComponentGroup g, uint32_t i) { return notaryView(g, i) && g != ComponentGroup::references; }, Errc::not_visible},
      {"hides the time window", [&](ComponentGroup g, uint32_t i) { return notaryView(g, i) && g != ComponentGroup::time_window; }, Errc::not_visible},
      {"hides the notary", [&](ComponentGroup g, uint32_t i) { return notaryView(g, i) && g != ComponentGroup::notary; }, Errc::not_visible},
      {"reveals the outputs", [&](ComponentGroup g, uint32_t i) { return notaryView(g, i) || g == ComponentGroup::outputs; }, Errc::invalid_transaction},
      {"reveals the commands", [&](ComponentGroup g, uint32_t i) { return notaryView(g, i) || g == ComponentGroup::commands; }, Errc::invalid_transaction},
  };
  for (const auto& c : cases) {
    CAPTURE(c.name);
    Status s = fx.replica.sm->check(request(body(c.reveal)));
    REQUIRE_FALSE(s.ok());
    CHECK(s.error().code == c.code);
  }

  Bytes good = body(notaryView);
  // A forged input: another StateRef in place of input 0, same nonce and proof.
  Bytes forged_input = editFiltered(good, [&](auto f) {
    f.getGroups()[0].getComponents().set(0, asData(encodeStateRef(stateRef("forged"))));
  });
  CHECK(fx.replica.sm->check(request(forged_input)).error().code == Errc::merkle_proof_invalid);
  // The id of another transaction.
  auto other = spend(fx.cluster.party, {a});
  Bytes forged_id = editFiltered(good, [&](auto f) { f.setId(asData(other.id().view())); });
  CHECK_FALSE(fx.replica.sm->check(request(forged_id)).ok());
  // A count that hides an input from the proof.
  Bytes forged_count = editFiltered(good, [&](auto f) { f.getGroups()[0].setComponentCount(3); });
  CHECK_FALSE(fx.replica.sm->check(request(forged_count)).ok());
  auto executed = fx.run({request(forged_input), request(forged_id, 2), request(forged_count, 3)});
  for (const auto& r : executed.replies) CHECK(replyOf(r).outcome == Outcome::error);
  CHECK_FALSE(fx.consumer(a).has_value());
  CHECK_FALSE(fx.consumer(stateRef("forged")).has_value());
}

TEST_CASE("validating mode: signatures and contracts of the transaction and its backchain") {
  TestCluster cluster;
  ContractRegistry registry;
  registry.add(std::make_unique<ccal::testing::DummyContract>());
  UniquenessConfig config = cluster.config();
  config.validating = true;
  config.registry = &registry;
  TestReplica replica(config, cluster.replica_keys[0]);

  auto alice = ccal::testing::testKey(1), bob = ccal::testing::testKey(2);
  const Party& notary = cluster.party;
  auto issue = TransactionBuilder(notary)
                   .addOutput(ccal::testing::dummyState(notary, {Key(alice.publicKey())}, "one"))
                   .addCommand(ccal::testing::dummyCommand("Issue", {Key(alice.publicKey())}))
                   .build()
                   .value();
  SignedTransaction issued(issue);
  issued.signWith(alice);
  auto moveTx = [&](const std::string& value, size_t outputs) {
    TransactionBuilder b(notary);
    b.addInput({issue.id(), 0});
    for (size_t i = 0; i < outputs; ++i) b.addOutput(ccal::testing::dummyState(notary, {Key(bob.publicKey())}, value));
    b.addCommand(ccal::testing::dummyCommand("Move", {Key(alice.publicKey())}));
    return b.build().value();
  };
  auto validating = [&](const SignedTransaction& stx, std::vector<SignedTransaction> deps) {
    return NotarisationRequest::validating(notary.name, stx, std::move(deps)).encode();
  };

  SignedTransaction good(moveTx("two", 1));
  good.signWith(alice);
  SignedTransaction unsigned_move(moveTx("two", 1));
  SignedTransaction bad_contract(moveTx("two", 2));
  bad_contract.signWith(alice);
  SignedTransaction forbidden(moveTx("forbidden", 1));
  forbidden.signWith(alice);
  SignedTransaction wrong_signer(moveTx("two", 1));
  wrong_signer.signWith(bob);
  SignedTransaction issued_unsigned(issue);  // a dependency missing its signature

  struct Case {
    const char* name;
    Bytes body;
    Errc code;
  };
  std::vector<Case> cases = {
      {"missing the mover's signature", validating(unsigned_move, {issued}), Errc::missing_signatures},
      {"signed by the wrong key", validating(wrong_signer, {issued}), Errc::missing_signatures},
      {"contract refuses the move", validating(bad_contract, {issued}), Errc::contract_rejected},
      {"contract refuses the value", validating(forbidden, {issued}), Errc::contract_rejected},
      {"dependency missing", validating(good, {}), Errc::not_found},
      {"dependency unsigned", validating(good, {issued_unsigned}), Errc::missing_signatures},
      {"a filtered transaction", nonValidatingRequest(good.tx()), Errc::invalid_transaction},
  };
  std::vector<Request> batch;
  for (const auto& c : cases) {
    CAPTURE(c.name);
    Status s = replica.sm->check(request(c.body));
    REQUIRE_FALSE(s.ok());
    CHECK(s.error().code == c.code);
    batch.push_back(request(c.body, batch.size() + 1));
  }
  // A signature that does not verify.
  {
    auto sig = alice.sign(signableBytes(good.id()));
    auto bytes = sig.bytes();
    bytes[5] ^= 1;
    SignedTransaction bad_sig(good.tx(), {DigitalSignature(alice.publicKey(), bytes)});
    Status s = replica.sm->check(request(validating(bad_sig, {issued})));
    CHECK(s.error().code == Errc::bad_signature);
  }
  auto refused = replica.execute(batch).value();
  for (size_t i = 0; i < batch.size(); ++i) {
    auto r = replyOf(refused.replies[i]);
    CHECK(r.outcome == Outcome::error);
    CHECK(r.error.code == cases[i].code);
  }
  CHECK_FALSE(replica.sm->consumedBy({issue.id(), 0}).value().has_value());

  REQUIRE(replica.sm->check(request(validating(good, {issued}))).ok());
  auto ok = replica.execute({request(validating(good, {issued}))}).value();
  CHECK(replyOf(ok.replies[0]).outcome == Outcome::success);
  CHECK(replica.sm->consumedBy({issue.id(), 0}).value() == good.id());
  // Its notary signature completes the transaction.
  good.addSignature(*signedReply(ok.replies[0]).txSignature);
  CHECK(good.verifySignaturesExcept({cluster.service_key}).ok());
}

TEST_CASE("determinism: same batches, same effects, replies and state; applyEffects reaches the same state") {
  TestCluster cluster;
  TestReplica r0(cluster.config(), cluster.replica_keys[0]);
  TestReplica r1(cluster.config(), cluster.replica_keys[1]);
  TestReplica r2(cluster.config(), cluster.replica_keys[2]);

  std::vector<Batch> batches;
  uint64_t client_seq = 1;
  for (uint64_t seq = 1; seq <= 6; ++seq) {
    Batch b;
    b.seq = seq;
    b.time_micros = static_cast<int64_t>(seq) * 1'000'000;
    for (int i = 0; i < 20; ++i) {
      // Overlapping spends, references and windows, so that every rule plays.
      int k = static_cast<int>(seq) * 7 + i;
      auto tx = spend(cluster.party, {stateRef("s" + std::to_string(k % 31))},
                      i % 3 == 0 ? std::vector<StateRef>{stateRef("s" + std::to_string((k + 5) % 31))}
                                 : std::vector<StateRef>{},
                      i % 4 == 0 ? std::optional<TimeWindow>(TimeWindow{std::nullopt, 3'500'000}) : std::nullopt);
      b.requests.push_back(request(nonValidatingRequest(tx), client_seq++));
    }
    b.requests.push_back(request(Bytes{1, 2, 3}, client_seq++));
    batches.push_back(std::move(b));
  }
  size_t successes = 0, conflicts = 0, errors = 0;
  for (const auto& b : batches) {
    auto e0 = r0.execute(b).value();
    auto e1 = r1.execute(b).value();
    CHECK(e0.effects == e1.effects);
    REQUIRE(e0.replies.size() == e1.replies.size());
    for (size_t i = 0; i < e0.replies.size(); ++i) {
      auto s0 = signedReply(e0.replies[i]), s1 = signedReply(e1.replies[i]);
      CHECK(s0.reply == s1.reply);  // byte-identical answers; only signatures differ
      CHECK(s0.proof == s1.proof);
      auto outcome = replyOf(e0.replies[i]).outcome;
      successes += outcome == Outcome::success;
      conflicts += outcome == Outcome::conflict;
      errors += outcome == Outcome::error;
    }
    REQUIRE(r2.applyEffects(b.seq, e0.effects).ok());
    CHECK(r2.sm->lastExecuted() == b.seq);
  }
  MESSAGE(successes << " successes, " << conflicts << " conflicts, " << errors << " errors");
  CHECK(successes > 0);
  CHECK(conflicts > 0);
  CHECK(errors > batches.size());
  CHECK(r0.sm->stateDigest().value() == r1.sm->stateDigest().value());
  CHECK(r0.sm->stateDigest().value() == r2.sm->stateDigest().value());
  for (uint64_t seq = 1; seq <= batches.size(); ++seq) {
    CHECK(r0.sm->effects(seq).value() == r2.sm->effects(seq).value());
  }
  // The replica that caught up answers the next batch as the others do.
  Batch next;
  next.seq = batches.size() + 1;
  next.time_micros = 1;
  next.requests.push_back(request(nonValidatingRequest(spend(cluster.party, {stateRef("s3")})), client_seq));
  auto n0 = r0.execute(next).value(), n2 = r2.execute(next).value();
  CHECK(signedReply(n0.replies[0]).reply == signedReply(n2.replies[0]).reply);
  CHECK(replyOf(n0.replies[0]).outcome == Outcome::conflict);
}

TEST_CASE("applyEffects refuses bad effects and changes nothing") {
  TestCluster cluster;
  TestReplica r(cluster.config(), cluster.replica_keys[0]);
  auto digest = r.sm->stateDigest().value();
  CHECK(r.applyEffects(1, Bytes{1, 2, 3}).error().code == Errc::malformed);
  BatchEffects wrong_seq;
  wrong_seq.seq = 2;
  CHECK(r.applyEffects(1, wrong_seq.encode()).error().code == Errc::malformed);
  BatchEffects twice;
  twice.seq = 1;
  twice.consumed = {{stateRef("a"), SecureHash::of(asBytes("t1"))}, {stateRef("a"), SecureHash::of(asBytes("t2"))}};
  CHECK_FALSE(r.applyEffects(1, twice.encode()).ok());
  CHECK(r.sm->lastExecuted() == 0);
  CHECK(r.sm->stateDigest().value() == digest);
  BatchEffects good;
  good.seq = 1;
  good.consumed = {{stateRef("a"), SecureHash::of(asBytes("t1"))}};
  CHECK(r.applyEffects(1, good.encode()).ok());
  CHECK(r.sm->consumedBy(stateRef("a")).value() == SecureHash::of(asBytes("t1")));
  // Effects that contradict the state: the replica has diverged.
  BatchEffects contradict;
  contradict.seq = 2;
  contradict.consumed = {{stateRef("a"), SecureHash::of(asBytes("t2"))}};
  CHECK(r.applyEffects(2, contradict.encode()).error().code == Errc::storage_error);
  CHECK(r.sm->lastExecuted() == 1);
}

TEST_CASE("restart: lastExecuted, consumed states and answers survive reopening the store") {
  TestCluster cluster;
  TestReplica r(cluster.config(), cluster.replica_keys[0], /*durable*/ true);
  auto a = stateRef("a");
  auto tx = spend(cluster.party, {a});
  auto first = r.execute({request(nonValidatingRequest(tx))}).value();
  REQUIRE(replyOf(first.replies[0]).outcome == Outcome::success);
  auto noinputs = spend(cluster.party, {}, {stateRef("ref")});
  REQUIRE(replyOf(r.execute({request(nonValidatingRequest(noinputs))}).value().replies[0]).outcome ==
          Outcome::success);
  auto digest = r.sm->stateDigest().value();
  r.close();

  r.open(cluster.config(), cluster.replica_keys[0], true);
  CHECK(r.sm->lastExecuted() == 2);
  CHECK(r.sm->stateDigest().value() == digest);
  CHECK(r.sm->consumedBy(a).value() == tx.id());
  CHECK(r.sm->effects(1).value() == first.effects);
  auto again = r.execute({request(nonValidatingRequest(tx)), request(nonValidatingRequest(noinputs), 2),
                          request(nonValidatingRequest(spend(cluster.party, {a})), 3)})
                   .value();
  CHECK(replyOf(again.replies[0]).outcome == Outcome::success);
  CHECK(replyOf(again.replies[1]).outcome == Outcome::success);
  CHECK(replyOf(again.replies[2]).outcome == Outcome::conflict);
  CHECK(r.sm->lastExecuted() == 3);
}

TEST_CASE("reply proofs match the ledger's Merkle code for every batch size") {
  TestCluster cluster;
  TestReplica r(cluster.config(), cluster.replica_keys[0]);
  uint64_t cseq = 1;
  // "q0" consumed first: spending it again is a conflict.
  REQUIRE(replyOf(r.execute({request(nonValidatingRequest(spend(cluster.party, {stateRef("q0")})),
                                     cseq++)})
                      .value()
                      .replies[0])
              .outcome == Outcome::success);
  for (size_t n : {1, 2, 3, 5, 8, 13}) {
    // Conflicts at odd places (proven by the batch root), successes at even
    // ones (proven by their transaction signature, no proof).
    std::vector<Request> requests;
    for (size_t i = 0; i < n; ++i) {
      std::vector<StateRef> inputs{stateRef("p" + std::to_string(cseq))};
      if (i % 2 == 1) inputs.push_back(stateRef("q0"));
      requests.push_back(request(nonValidatingRequest(spend(cluster.party, inputs)), cseq));
      ++cseq;
    }
    auto e = r.execute(requests).value();
    std::vector<SecureHash> leaves;
    for (const auto& b : e.replies) leaves.push_back(replyLeaf(signedReply(b).reply));
    for (uint32_t i = 0; i < n; ++i) {
      auto s = signedReply(e.replies[i]);
      if (i % 2 == 0) {
        CHECK(replyOf(e.replies[i]).outcome == Outcome::success);
        CHECK(s.proof.empty());
        continue;
      }
      CHECK(replyOf(e.replies[i]).outcome == Outcome::conflict);
      CHECK(s.proof == merkle::prove(leaves, std::span<const uint32_t>(&i, 1)));
      CHECK(s.root().value() == merkle::root(leaves));
    }
    checkSigned(e, cluster.replica_keys[0].publicKey(), r.sm->lastExecuted());
  }
  // An empty batch executes, with no replies.
  auto empty = r.execute(std::vector<Request>{}).value();
  CHECK(empty.replies.empty());
  CHECK(BatchEffects::decode(empty.effects).value().seq == r.sm->lastExecuted());
}

TEST_CASE(
    "packed replies: a fraction of the signed replies' size; damaged, truncated or foreign bytes "
    "are refused") {
  Fixture fx;
  auto taken = stateRef("taken");
  REQUIRE(fx.notarise(spend(fx.cluster.party, {taken})).outcome == Outcome::success);
  std::vector<Request> requests;
  for (uint64_t i = 1; i <= 40; ++i) {
    // Successes, one conflict and one request for another notary (an error).
    auto tx = spend(fx.cluster.party, {i == 7 ? taken : stateRef("pk" + std::to_string(i))});
    requests.push_back(request(i == 9
                                   ? nonValidatingRequest(tx, "O=Elsewhere Notary, L=Paris, C=FR")
                                   : nonValidatingRequest(tx),
                               i));
  }
  const Executed e = fx.run(requests);  // (run checks the round trip)
  const uint64_t seq = fx.replica.sm->lastExecuted();
  CHECK(replyOf(e.replies[6]).outcome == Outcome::conflict);
  CHECK(replyOf(e.replies[8]).outcome == Outcome::error);
  size_t signed_bytes = 0;
  for (const auto& r : e.replies) signed_bytes += r.size();
  CAPTURE(signed_bytes);
  CAPTURE(e.packed_replies.size());
  CHECK(e.packed_replies.size() * 3 < signed_bytes);

  const auto& sm = *fx.replica.sm;
  CHECK(!sm.expandReplies(seq + 1, e.packed_replies).ok());  // another batch's number
  Bytes trailing = e.packed_replies;
  trailing.push_back(0);
  CHECK(!sm.expandReplies(seq, trailing).ok());
  for (size_t cut : {size_t{0}, size_t{1}, size_t{40}, e.packed_replies.size() - 1}) {
    CHECK(!sm.expandReplies(seq, ByteView(e.packed_replies).first(cut)).ok());
  }
  // A flipped bit in a signature or in a reply.
  for (size_t at : {size_t{5}, e.packed_replies.size() - 3}) {
    Bytes damaged = e.packed_replies;
    damaged[at] ^= 0x10;
    auto r = sm.expandReplies(seq, damaged);
    REQUIRE(!r.ok());
    CHECK(r.error().message.find("packed replies of batch " + std::to_string(seq)) !=
          std::string::npos);
  }
  // Another replica's packed replies do not pass as this one's.
  TestReplica other(fx.cluster.config(), fx.cluster.replica_keys[1]);
  auto theirs =
      other.execute({request(nonValidatingRequest(spend(fx.cluster.party, {stateRef("o")})))})
          .value();
  CHECK(other.sm->expandReplies(1, theirs.packed_replies).value() == theirs.replies);
  CHECK(!sm.expandReplies(1, theirs.packed_replies).ok());
}

TEST_CASE("a request with repeated inputs or nothing to notarise is refused") {
  Fixture fx;
  auto a = stateRef("a");
  Status nothing = fx.replica.sm->check(request(nonValidatingRequest(spend(fx.cluster.party, {}))));
  CHECK(nothing.error().code == Errc::invalid_transaction);
  CHECK(nothing.error().message.find("nothing to notarise") != std::string::npos);
  auto both = TransactionBuilder(fx.cluster.party).addInput(a).addReference(a).addOutput(
      ccal::testing::dummyState(fx.cluster.party, {}, "x")).build();
  if (both.ok()) {  // the ledger may refuse it itself; the notary must in any case
    CHECK_FALSE(fx.replica.sm->check(request(nonValidatingRequest(*both))).ok());
  }
}

namespace {

// Collects posted work from any thread; the test thread runs it.
class QueueExecutor final : public flows::Executor {
 public:
  void post(std::function<void()> fn) override {
    std::lock_guard lock(mutex_);
    queue_.push_back(std::move(fn));
    posted_.notify_all();
  }
  TimerId runAfter(int64_t, std::function<void()>) override { FAIL("no timers here"); return 1; }
  void cancel(TimerId) override {}
  // Runs one posted function, waiting for it up to a bound.
  bool runOne() {
    std::function<void()> fn;
    {
      std::unique_lock lock(mutex_);
      if (!posted_.wait_for(lock, std::chrono::seconds(30), [&] { return !queue_.empty(); })) return false;
      fn = std::move(queue_.front());
      queue_.pop_front();
    }
    fn();
    return true;
  }

 private:
  std::mutex mutex_;
  std::condition_variable posted_;
  std::deque<std::function<void()>> queue_;
};

}  // namespace

TEST_CASE(
    "with complete_on, replies are signed and decided and done run on that executor, in that "
    "order") {
  TestCluster cluster;
  QueueExecutor executor;
  UniquenessConfig config = cluster.config();
  config.complete_on = &executor;
  TestReplica replica(config, cluster.replica_keys[0], true);
  auto tx = spend(cluster.party, {stateRef("a")});
  Batch batch;
  batch.seq = 1;
  batch.time_micros = 1;
  batch.requests = {request(nonValidatingRequest(tx))};
  std::optional<Result<Executed>> out;
  std::optional<Executed> settled;
  const auto test_thread = std::this_thread::get_id();
  replica.sm->execute(
      batch,
      [&](Result<Executed> r) {
        CHECK(std::this_thread::get_id() == test_thread);
        CHECK(settled.has_value());
        out.emplace(std::move(r));
      },
      [&](const Executed& e) {
        CHECK(std::this_thread::get_id() == test_thread);
        CHECK_FALSE(out.has_value());
        settled.emplace(e);
      });
  // Two posts: the signing once the outcome is settled (decided), then done
  // once the write is durable.
  REQUIRE(executor.runOne());
  REQUIRE(settled.has_value());
  REQUIRE(executor.runOne());
  REQUIRE(out.has_value());
  REQUIRE(out->ok());
  checkSigned(**out, cluster.replica_keys[0].publicKey(), 1);
  CHECK(replyOf((*out)->replies[0]).outcome == Outcome::success);
  // decided had the replies done carries, byte for byte, signed once.
  CHECK(settled->replies == (*out)->replies);
  CHECK(settled->effects == (*out)->effects);
  CHECK(settled->packed_replies == (*out)->packed_replies);
  CHECK(replica.sm->lastExecuted() == 1);

  std::optional<Status> applied;
  BatchEffects effects;
  effects.seq = 2;
  replica.sm->applyEffects(2, effects.encode(), [&](Status s) {
    CHECK(std::this_thread::get_id() == test_thread);
    applied.emplace(s);
  });
  REQUIRE(executor.runOne());
  REQUIRE(applied.has_value());
  CHECK(applied->ok());
  CHECK(replica.sm->lastExecuted() == 2);
}

TEST_CASE(
    "completions still queued when the machine is destroyed do nothing (its replica stopped)") {
  TestCluster cluster;
  QueueExecutor executor;
  UniquenessConfig config = cluster.config();
  config.complete_on = &executor;
  TestReplica replica(config, cluster.replica_keys[0], true);
  Batch batch;
  batch.seq = 1;
  batch.time_micros = 1;
  batch.requests = {request(nonValidatingRequest(spend(cluster.party, {stateRef("gone")})))};
  bool called = false;
  replica.sm->execute(
      batch, [&](Result<Executed>) { called = true; }, [&](const Executed&) { called = true; });
  // The write is durable, the signing and done are posted, not run; then the
  // machine goes (a replica's restart). Before: the signing used the freed
  // machine (ASan: heap-use-after-free, seen in replica_test under CI).
  REQUIRE(replica.store->write([](vault::WriteTxn&) { return Status(); }).ok());
  replica.sm.reset();
  REQUIRE(executor.runOne());
  REQUIRE(executor.runOne());
  CHECK_FALSE(called);
}

TEST_CASE("requests and batches over their limits are refused") {
  TestCluster cluster;
  UniquenessConfig config = cluster.config();
  config.limits.request_bytes_max = 512;
  config.limits.batch_requests_max = 2;
  TestReplica replica(config, cluster.replica_keys[0]);
  Bytes body = nonValidatingRequest(spend(cluster.party, {stateRef("a")}));
  REQUIRE(body.size() > 512);
  Status s = replica.sm->check(request(body));
  CHECK(s.error().code == Errc::too_large);
  CHECK(s.error().message.find("over the limit") != std::string::npos);
  // A batch over the limit is not executed at all.
  auto r = replica.execute({request(body, 1), request(body, 2), request(body, 3)});
  CHECK(r.error().code == Errc::too_large);
  CHECK(replica.sm->lastExecuted() == 0);
  auto ok = replica.execute({request(body, 1)});
  REQUIRE(ok.ok());
  CHECK(replyOf(ok->replies[0]).error.code == Errc::too_large);
  CHECK_FALSE(replica.sm->consumedBy(stateRef("a")).value().has_value());
}

TEST_CASE("a configuration that cannot work is an error naming it") {
  TestCluster cluster;
  ccal::testing::TempDir dir("ccal-notary");
  auto store = UniquenessStateMachine::openStore(TestReplica::storeConfig(dir.path, false)).value();
  auto stranger = UniquenessStateMachine::open(*store, cluster.config(), ccal::testing::testKey(9));
  REQUIRE_FALSE(stranger.ok());
  CHECK(stranger.error().code == Errc::bad_key);
  UniquenessConfig validating = cluster.config();
  validating.validating = true;
  CHECK(UniquenessStateMachine::open(*store, validating, cluster.replica_keys[0]).error().message.find(
            "contract registry") != std::string::npos);
  UniquenessConfig unnamed = cluster.config();
  unnamed.notary_name.clear();
  CHECK_FALSE(UniquenessStateMachine::open(*store, unnamed, cluster.replica_keys[0]).ok());
}

TEST_CASE("rejection: a request check() refuses gets a signed error reply naming batch 0, never a success or conflict") {
  Fixture fx;
  const Bytes garbage{0xff, 0x00, 0x13, 0x37};
  const Request r = request(garbage, 3);
  Status refused = fx.replica.sm->check(r);
  REQUIRE(!refused.ok());
  const Bytes bytes = fx.replica.sm->rejection(r, refused.error());
  auto s = signedReply(bytes);
  auto reply = NotarisationReply::decode(s.reply).value();
  CHECK(reply.outcome == Outcome::error);
  CHECK(reply.batchSeq == 0);
  CHECK(reply.requestHash == SecureHash::of(garbage));
  CHECK(reply.error.code == refused.error().code);
  CHECK(reply.error.message == refused.error().message);
  CHECK_FALSE(s.txSignature.has_value());
  CHECK(s.leafCount == 1);
  auto root = s.root();
  REQUIRE(root.ok());
  REQUIRE(s.rootSignature.has_value());
  CHECK(s.rootSignature->by() == fx.cluster.replica_keys[0].publicKey());
  CHECK(s.rootSignature->verify(batchRootSignableBytes(0, 1, *root)).ok());
  // Deterministic: every honest replica gives the same answer (but its own signature).
  TestReplica other(fx.cluster.config(), fx.cluster.replica_keys[1]);
  auto theirs = NotarisationReply::decode(signedReply(other.sm->rejection(r, refused.error())).reply).value();
  CHECK(theirs.sameAnswer(reply));
  // An error message over the reply limit is cut, so the reply still decodes.
  const Error long_error = makeError(Errc::malformed, std::string(5000, 'x'));
  auto cut = NotarisationReply::decode(signedReply(fx.replica.sm->rejection(r, long_error)).reply);
  REQUIRE(cut.ok());
  CHECK(cut->error.message.size() == default_notarisation_limits.error_message_bytes_max);
  // Batch 0 is only ever an error: a success or a conflict naming it is refused.
  NotarisationReply forged = reply;
  forged.outcome = Outcome::success;
  CHECK(NotarisationReply::decode(forged.encode()).error().code == Errc::malformed);
}

TEST_CASE("check cache: execute() reuses what check() decoded; the cache is bounded") {
  TestCluster cluster;
  UniquenessConfig config = cluster.config();
  config.checked_requests_cached_max = 2;
  TestReplica replica(config, cluster.replica_keys[0]);
  std::vector<Request> requests;
  for (int i = 0; i < 3; ++i) {
    requests.push_back(request(nonValidatingRequest(spend(cluster.party, {stateRef("c" + std::to_string(i))})),
                               uint64_t(i + 1)));
  }
  for (const auto& r : requests) REQUIRE(replica.sm->check(r).ok());
  CHECK(replica.sm->checkStats().decoded == 3);
  REQUIRE(replica.sm->check(requests[2]).ok());  // cached
  CHECK(replica.sm->checkStats().decoded == 3);
  CHECK(replica.sm->checkStats().cache_hits == 1);
  // requests[0] was dropped (the oldest beyond 2): decoded again; 1 and 2 come from the cache.
  auto executed = replica.execute(requests);
  REQUIRE(executed.ok());
  for (const auto& b : executed->replies) CHECK(replyOf(b).outcome == Outcome::success);
  CHECK(replica.sm->checkStats().decoded == 4);
  CHECK(replica.sm->checkStats().cache_hits == 3);
  // Taken by execute(): the same bodies again are decoded afresh (and answered idempotently).
  auto again = replica.execute(requests);
  REQUIRE(again.ok());
  CHECK(replica.sm->checkStats().decoded == 7);
  for (const auto& b : again->replies) CHECK(replyOf(b).outcome == Outcome::success);
  // A refused request's outcome is cached too.
  const Request bad = request(Bytes{1, 2, 3}, 9);
  CHECK(!replica.sm->check(bad).ok());
  CHECK(!replica.sm->check(bad).ok());
  CHECK(replica.sm->checkStats().decoded == 8);
}

TEST_CASE(
    "the consumed index is written in passes; until then memory and the batches' effects answer, "
    "across a reopen") {
  TestCluster cluster;
  UniquenessConfig config = cluster.config();
  config.consumed_merge_interval_batches = 3;
  TestReplica r(config, cluster.replica_keys[0], /*durable*/ true);
  TestReplica every(cluster.config(),
                    cluster.replica_keys[1]);  // the same batches, a pass per batch
  every.sm.reset();
  every.store.reset();
  UniquenessConfig each = cluster.config();
  each.consumed_merge_interval_batches = 1;
  every.open(each, cluster.replica_keys[1]);
  auto in_index = [&] { return r.store->read().entries(r.store->db("notary_consumed")); };
  std::vector<WireTransaction> txs;
  uint64_t cs = 0;
  auto both = [&](std::vector<Request> requests) {
    auto got = r.execute(requests).value();
    auto want = every.execute(requests).value();
    CHECK(got.effects == want.effects);
    for (size_t i = 0; i < got.replies.size(); ++i)
      CHECK(replyOf(got.replies[i]).encode() == replyOf(want.replies[i]).encode());
    return got;
  };
  for (int i = 0; i < 2; ++i) {
    txs.push_back(spend(cluster.party, {stateRef("pass" + std::to_string(i))}));
    both({request(nonValidatingRequest(txs.back()), ++cs)});
  }
  CHECK(in_index() == 0);  // in memory: batches 1 and 2
  CHECK(every.store->read().entries(every.store->db("notary_consumed")) == 2);
  CHECK(r.sm->consumedBy(stateRef("pass0")).value() == txs[0].id());
  // A conflict with a state consumed in memory names its consumer; a
  // re-notarisation of a transaction whose inputs are there is the same success.
  auto mixed = both({request(nonValidatingRequest(spend(cluster.party, {stateRef("pass1")})), ++cs),
                     request(nonValidatingRequest(txs[0]), ++cs)});
  CHECK(replyOf(mixed.replies[0]).outcome == Outcome::conflict);
  CHECK(replyOf(mixed.replies[0]).conflicts[0].consumingTxIdHash == consumingTxIdHash(txs[1].id()));
  CHECK(replyOf(mixed.replies[1]).outcome == Outcome::success);
  CHECK(in_index() == 2);  // batch 3 took the pass: everything so far
  for (int i = 2; i < 4; ++i) {
    txs.push_back(spend(cluster.party, {stateRef("pass" + std::to_string(i))}));
    both({request(nonValidatingRequest(txs.back()), ++cs)});
  }
  CHECK(in_index() == 2);  // batches 4 and 5 in memory
  CHECK(r.sm->stateDigest().value() == every.sm->stateDigest().value());
  const auto digest = r.sm->stateDigest().value();

  // Reopened: batches 4 and 5 come back from their effects.
  r.open(config, cluster.replica_keys[0], true);
  CHECK(r.sm->lastExecuted() == 5);
  CHECK(r.sm->stateDigest().value() == digest);
  CHECK(r.sm->consumedBy(stateRef("pass3")).value() == txs[3].id());
  auto again =
      both({request(nonValidatingRequest(spend(cluster.party, {stateRef("pass3")})), ++cs)});
  CHECK(replyOf(again.replies[0]).outcome == Outcome::conflict);
  CHECK(in_index() == 4);  // batch 6: the next pass
  CHECK(r.sm->stateDigest().value() == every.sm->stateDigest().value());

  // Bounded by states as well as batches.
  config.consumed_merge_interval_batches = 1000;
  config.consumed_unmerged_states_max = 2;
  r.open(config, cluster.replica_keys[0], true);
  for (int i = 4; i < 6; ++i) {
    txs.push_back(spend(cluster.party, {stateRef("pass" + std::to_string(i))}));
    both({request(nonValidatingRequest(txs.back()), ++cs)});
  }
  CHECK(in_index() == 6);
  config.consumed_merge_interval_batches = 0;
  r.close();
  r.store = UniquenessStateMachine::openStore(TestReplica::storeConfig(r.dir->path, true)).value();
  auto refused = UniquenessStateMachine::open(*r.store, config, cluster.replica_keys[0]);
  REQUIRE(!refused.ok());
  CHECK(refused.error().message.find("merge interval") != std::string::npos);
}

TEST_CASE(
    "applied effects take the consumed index's pass with them (open replays at most the merge "
    "interval)") {
  TestCluster cluster;
  UniquenessConfig config = cluster.config();
  config.consumed_merge_interval_batches = 1000;
  TestReplica source(cluster.config(), cluster.replica_keys[0]);
  TestReplica r(config, cluster.replica_keys[1], /*durable*/ true);
  std::vector<Executed> executed;
  std::vector<WireTransaction> txs;
  for (uint64_t i = 0; i < 3; ++i) {
    txs.push_back(spend(cluster.party, {stateRef("t" + std::to_string(i))}));
    auto req = request(nonValidatingRequest(txs.back()), i + 1);
    executed.push_back(source.execute({req}).value());
    if (i < 2) REQUIRE(r.execute({req}).ok());
  }
  auto in_index = [&] { return r.store->read().entries(r.store->db("notary_consumed")); };
  CHECK(in_index() == 0);  // batches 1 and 2 in memory
  REQUIRE(r.applyEffects(3, executed[2].effects).ok());
  CHECK(in_index() == 3);  // the transfer wrote them with its own
  CHECK(r.sm->consumedBy(stateRef("t0")).value() == txs[0].id());
  r.open(config, cluster.replica_keys[1], true);
  CHECK(r.sm->lastExecuted() == 3);
  CHECK(r.sm->stateDigest().value() == source.sm->stateDigest().value());
  CHECK(r.sm->consumedBy(stateRef("t2")).value() == txs[2].id());
}
