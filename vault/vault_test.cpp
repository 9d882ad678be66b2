#include "vault/vault.h"
#include "vault/vault_internal.h"

#include <doctest/doctest.h>

#include "test/support/temp_dir.h"
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <future>
#include <mutex>
#include <set>
#include <thread>

#include "ledger/testing.h"

using namespace ccal;
using namespace ccal::testing;
using namespace ccal::vault;

namespace {

struct Fixture {
  ccal::testing::TempDir dir{"ccal-vault-test"};
  KeyPair alice = testKey(1), bob = testKey(2), bank = testKey(3), notary_key = testKey(9);
  Party alice_party = testParty("Haikou Fishing Cooperative", alice);
  Party bob_party = testParty("Sanya Tea Cooperative", bob);
  Party bank_party = testParty("Hainan Rural Bank", bank);
  Party notary = testParty("CCAL Notary", notary_key);
  ContractRegistry registry;
  int64_t clock = 1'000'000;
  std::unique_ptr<Vault> vault;
  int serial = 0;

  Fixture() {
    registry.add(std::make_unique<TestTokenContract>());
    registry.add(std::make_unique<DummyContract>());
    vault = openVault();
  }

  std::unique_ptr<Vault> openVault() {
    VaultConfig config;
    config.store.path = dir.path;
    config.store.durable = false;  // tests; durability has its own tests
    config.now_micros = [this] { return clock++; };
    return Vault::open(config, registry, {alice.publicKey()}).value();
  }

  TestToken token(const Party& owner, int64_t amount, const std::string& currency = "CNY") {
    ++serial;
    return TestToken{owner.owningKey, bank_party.owningKey, amount, currency,
                     1'700'000'000'000'000 + serial, "REF-" + std::to_string(serial),
                     SecureHash::of(asBytes("linear-" + std::to_string(serial)))};
  }

  SignedTransaction issue(std::vector<TestToken> tokens) {
    TransactionBuilder b(notary);
    for (const auto& t : tokens) b.addOutput(tokenState(notary, t));
    b.addCommand(Command{"ccal.test.Token.Issue", {}, {bank_party.owningKey}});
    SignedTransaction stx(b.build().value());
    stx.signWith(bank);
    return stx;
  }

  SignedTransaction move(std::vector<StateRef> inputs, std::vector<TestToken> outputs) {
    TransactionBuilder b(notary);
    for (const auto& r : inputs) b.addInput(r);
    for (const auto& t : outputs) b.addOutput(tokenState(notary, t));
    b.addCommand(Command{"ccal.test.Token.Move", {}, {alice_party.owningKey}});
    SignedTransaction stx(b.build().value());
    stx.signWith(alice).signWith(notary_key);
    return stx;
  }

  Page run(Query q) {
    auto page = vault->query(q);
    REQUIRE_MESSAGE(page.ok(), page.error().toString());
    return std::move(page).value();
  }
};

std::vector<int64_t> amounts(const Page& page) {
  std::vector<int64_t> out;
  for (const auto& s : page.states) out.push_back(decodeToken(s.state.data)->amountMinor);
  return out;
}

Criteria tokens() { return Criteria::stateType(std::string(token_state_type)); }
Criteria amount(FieldOp op, std::vector<FieldValue> v) {
  return Criteria::field(std::string(token_state_type), "amount", op, std::move(v));
}

}  // namespace

TEST_CASE_FIXTURE(Fixture, "recording stores the transaction and its relevant outputs") {
  auto stx = issue({token(alice_party, 100), token(bob_party, 50)});
  REQUIRE(vault->record(stx, RecordMode::only_relevant).ok());
  CHECK(vault->hasTransaction(stx.id()));
  auto back = vault->transaction(stx.id()).value();
  REQUIRE(back.has_value());
  CHECK(back->encode() == stx.encode());
  auto mine = vault->state({stx.id(), 0}).value();
  REQUIRE(mine.has_value());
  CHECK(mine->relevance == Relevance::participant);
  CHECK(mine->status == StateStatus::unconsumed);
  CHECK_FALSE(vault->state({stx.id(), 1}).value().has_value());  // Bob's: not relevant
  // Recording again is a no-op.
  CHECK(vault->record(stx, RecordMode::only_relevant).ok());
  CHECK(run(Query{tokens()}).total == 1);
}

TEST_CASE_FIXTURE(Fixture, "observers record every output as observed") {
  auto stx = issue({token(alice_party, 100), token(bob_party, 50)});
  REQUIRE(vault->record(stx, RecordMode::all_visible).ok());
  auto bobs = vault->state({stx.id(), 1}).value();
  REQUIRE(bobs.has_value());
  CHECK(bobs->relevance == Relevance::observed);
  Query q{tokens()};
  CHECK(run(q).total == 2);
  q.relevance = RelevanceFilter::observed;
  CHECK(amounts(run(q)) == std::vector<int64_t>{50});
  q.relevance = RelevanceFilter::participant;
  CHECK(amounts(run(q)) == std::vector<int64_t>{100});
}

TEST_CASE_FIXTURE(Fixture, "spending consumes held inputs; a second spender is a named conflict") {
  auto issued = issue({token(alice_party, 100)});
  REQUIRE(vault->record(issued, RecordMode::only_relevant).ok());
  auto spend = move({{issued.id(), 0}}, {token(alice_party, 60), token(alice_party, 40)});
  REQUIRE(vault->record(spend, RecordMode::only_relevant).ok());
  auto consumed = vault->state({issued.id(), 0}).value();
  CHECK(consumed->status == StateStatus::consumed);
  CHECK(consumed->consumedBy == spend.id());
  Query q{tokens()};
  CHECK(amounts(run(q)) == std::vector<int64_t>{60, 40});
  q.status = StatusFilter::consumed;
  CHECK(amounts(run(q)) == std::vector<int64_t>{100});
  q.status = StatusFilter::all;
  CHECK(run(q).total == 3);

  auto double_spend = move({{issued.id(), 0}}, {token(alice_party, 100)});
  auto r = vault->record(double_spend, RecordMode::only_relevant);
  CHECK(r.error().code == Errc::conflict);
  CHECK(r.error().message.find(double_spend.id().hex()) != std::string::npos);
  CHECK(r.error().message.find(spend.id().hex()) != std::string::npos);
  CHECK_FALSE(vault->hasTransaction(double_spend.id()));  // nothing of it written
  q.status = StatusFilter::all;
  CHECK(run(q).total == 3);
  Status consistent = vault->checkConsistency();
  CHECK_MESSAGE(consistent.ok(), (consistent.ok() ? "" : consistent.error().toString()));
}

TEST_CASE_FIXTURE(Fixture, "unverifiable or undecodable transactions are refused before writing") {
  auto unsigned_issue = issue({token(alice_party, 100)});
  SignedTransaction missing(unsigned_issue.tx());
  auto r = vault->record(missing, RecordMode::only_relevant);
  CHECK(r.error().code == Errc::missing_signatures);
  CHECK_FALSE(vault->hasTransaction(missing.id()));

  // A token state whose data does not decode for its declared schema.
  auto bad = tokenState(notary, token(alice_party, 1));
  bad.data = Bytes(16, 0xee);
  TransactionBuilder b(notary);
  b.addOutput(bad).addCommand(Command{"ccal.test.Token.Issue", {}, {bank_party.owningKey}});
  SignedTransaction stx(b.build().value());
  stx.signWith(bank);
  auto refused = vault->record(stx, RecordMode::only_relevant);
  CHECK_FALSE(refused.ok());
  CHECK(refused.error().message.find("output 0") != std::string::npos);
  CHECK_FALSE(vault->hasTransaction(stx.id()));
}

TEST_CASE_FIXTURE(Fixture, "every field operator, and/or, paging and sorting") {
  std::vector<TestToken> ts;
  for (int64_t a : {50, 10, 40, 20, 30}) ts.push_back(token(alice_party, a, a >= 30 ? "CNY" : "USD"));
  auto stx = issue(ts);
  REQUIRE(vault->record(stx, RecordMode::only_relevant).ok());
  Sort by_amount{"amount", false};
  auto q = [&](Criteria c) { return amounts(run(Query{std::move(c), StatusFilter::unconsumed,
                                                      RelevanceFilter::all, by_amount})); };
  using V = std::vector<int64_t>;
  CHECK(q(amount(FieldOp::eq, {int64_t{30}})) == V{30});
  CHECK(q(amount(FieldOp::lt, {int64_t{30}})) == V{10, 20});
  CHECK(q(amount(FieldOp::le, {int64_t{30}})) == V{10, 20, 30});
  CHECK(q(amount(FieldOp::gt, {int64_t{30}})) == V{40, 50});
  CHECK(q(amount(FieldOp::ge, {int64_t{30}})) == V{30, 40, 50});
  CHECK(q(amount(FieldOp::between, {int64_t{20}, int64_t{40}})) == V{20, 30, 40});
  CHECK(q(amount(FieldOp::in, {int64_t{50}, int64_t{10}, int64_t{99}})) == V{10, 50});
  auto usd = Criteria::field(std::string(token_state_type), "currency", FieldOp::eq,
                             {std::string("USD")});
  CHECK(q(usd && amount(FieldOp::gt, {int64_t{10}})) == V{20});
  // Ranges on one field intersect: the scan covers [20, 40] only.
  CHECK(q(amount(FieldOp::ge, {int64_t{20}}) && amount(FieldOp::le, {int64_t{40}})) ==
        V{20, 30, 40});
  CHECK(q(amount(FieldOp::gt, {int64_t{20}}) && amount(FieldOp::lt, {int64_t{40}}) && usd).empty());
  CHECK(q(amount(FieldOp::gt, {int64_t{40}}) && amount(FieldOp::lt, {int64_t{20}})).empty());
  CHECK(q(usd || amount(FieldOp::eq, {int64_t{50}})) == V{10, 20, 50});
  CHECK(q(tokens() && (usd || amount(FieldOp::ge, {int64_t{40}}))) == V{10, 20, 40, 50});
  CHECK(q(tokens() && Criteria::participant(alice_party.owningKey)) == V{10, 20, 30, 40, 50});
  CHECK(q(tokens() && Criteria::participant(bob_party.owningKey)).empty());
  CHECK(q(tokens() && Criteria::linearId(ts[2].linearId)) == V{40});
  CHECK(q(Criteria::field(std::string(token_state_type), "reference", FieldOp::eq,
                          {ts[1].reference})) == V{10});

  // Descending, paging, totals.
  Query paged{tokens(), StatusFilter::unconsumed, RelevanceFilter::all, Sort{"amount", true}, 2, 1};
  auto p1 = run(paged);
  CHECK(amounts(p1) == V{50, 40});
  CHECK(p1.total == 5);
  CHECK(p1.has_more);
  paged.page_number = 3;
  auto p3 = run(paged);
  CHECK(amounts(p3) == V{10});
  CHECK_FALSE(p3.has_more);
  paged.page_number = 4;
  CHECK(run(paged).states.empty());

  // The streaming path (one index range in sort order) agrees with the general path.
  for (bool desc : {false, true}) {
    for (uint32_t size : {1u, 2u, 3u, 5u}) {
      for (uint32_t page = 1; page <= 6; ++page) {
        Query streamed{amount(FieldOp::ge, {int64_t{20}}), StatusFilter::unconsumed,
                       RelevanceFilter::all, Sort{"amount", desc}, size, page};
        Query general = streamed;
        general.criteria = amount(FieldOp::ge, {int64_t{20}}) && tokens();
        auto a = run(streamed), b = run(general);
        CHECK(amounts(a) == amounts(b));
        CHECK(a.total == b.total);
        CHECK(a.has_more == b.has_more);
        // Two ranges on the sort field stream as their intersection.
        Query both = streamed;
        both.criteria = amount(FieldOp::gt, {int64_t{10}}) && amount(FieldOp::le, {int64_t{40}});
        Query both_general = both;
        both_general.criteria = both.criteria && tokens();
        auto c = run(both), d = run(both_general);
        CHECK(amounts(c) == amounts(d));
        CHECK(c.total == d.total);
        CHECK(c.total == 3);
        Query none = both;
        none.criteria = amount(FieldOp::gt, {int64_t{40}}) && amount(FieldOp::lt, {int64_t{20}});
        CHECK(run(none).total == 0);
        CHECK(run(none).states.empty());
      }
    }
  }
  // By type, newest first, streams with the maintained count.
  Query newest{tokens(), StatusFilter::unconsumed, RelevanceFilter::all, Sort{"recorded", true}, 3};
  auto np = run(newest);
  CHECK(np.total == 5);
  CHECK(np.states.size() == 3);
}

TEST_CASE_FIXTURE(Fixture, "time ranges select by recording and consumption time") {
  auto first = issue({token(alice_party, 1)});
  REQUIRE(vault->record(first, RecordMode::only_relevant).ok());
  int64_t between = clock;
  auto second = issue({token(alice_party, 2)});
  REQUIRE(vault->record(second, RecordMode::only_relevant).ok());
  CHECK(amounts(run(Query{Criteria::recordedBetween(between, clock + 10)})) ==
        std::vector<int64_t>{2});
  int64_t before_spend = clock;
  REQUIRE(vault->record(move({{first.id(), 0}}, {token(alice_party, 1)}), RecordMode::only_relevant)
              .ok());
  Query consumed{Criteria::consumedBetween(before_spend, clock + 10), StatusFilter::consumed};
  CHECK(amounts(run(consumed)) == std::vector<int64_t>{1});
}

TEST_CASE_FIXTURE(Fixture, "bad queries get errors naming what is wrong") {
  auto code = [&](Query q) { return vault->query(q); };
  auto unknown_field = code(Query{Criteria::field(std::string(token_state_type), "colour",
                                                  FieldOp::eq, {std::string("red")})});
  CHECK(unknown_field.error().code == Errc::bad_query);
  CHECK(unknown_field.error().message.find("'colour'") != std::string::npos);
  CHECK(unknown_field.error().message.find("amount") != std::string::npos);
  auto unknown_type = code(Query{Criteria::field("ccal.Nope", "amount", FieldOp::eq, {int64_t{1}})});
  CHECK(unknown_type.error().message.find("ccal.Nope") != std::string::npos);
  auto wrong_type = code(Query{amount(FieldOp::eq, {std::string("ten")})});
  CHECK(wrong_type.error().message.find("int64") != std::string::npos);
  CHECK(code(Query{amount(FieldOp::between, {int64_t{1}})}).error().code == Errc::bad_query);
  CHECK(code(Query{amount(FieldOp::between, {int64_t{5}, int64_t{1}})}).error().code ==
        Errc::bad_query);
  Query big{tokens()};
  big.page_size = 5000;
  CHECK(code(big).error().message.find("page size") != std::string::npos);
  Query zero{tokens()};
  zero.page_number = 0;
  CHECK(code(zero).error().code == Errc::bad_query);
  Query sort_unknown{tokens()};
  sort_unknown.sort.by = "colour";
  CHECK(code(sort_unknown).error().message.find("cannot sort by 'colour'") != std::string::npos);
}

TEST_CASE_FIXTURE(Fixture, "soft locks: one holder at a time, release, crash recovery") {
  auto stx = issue({token(alice_party, 10), token(alice_party, 20)});
  REQUIRE(vault->record(stx, RecordMode::only_relevant).ok());
  LockId flow_a = SecureHash::of(asBytes("flow a")), flow_b = SecureHash::of(asBytes("flow b"));
  std::vector<StateRef> both{{stx.id(), 0}, {stx.id(), 1}};
  REQUIRE(vault->lock(flow_a, std::span(both).first(1)).ok());
  CHECK(vault->lock(flow_a, std::span(both).first(1)).ok());  // again: fine
  auto taken = vault->lock(flow_b, both);
  CHECK(taken.error().code == Errc::locked);
  CHECK(taken.error().message.find(flow_a.shortHex()) != std::string::npos);
  // All or nothing: flow b did not get the second state either.
  CHECK_FALSE(vault->state(both[1]).value()->lock.has_value());
  CHECK(vault->lock(flow_b, std::span(both).subspan(1)).ok());
  CHECK(vault->release(flow_a).ok());
  CHECK_FALSE(vault->state(both[0]).value()->lock.has_value());
  // Crash recovery keeps live flows' locks only.
  REQUIRE(vault->lock(flow_a, std::span(both).first(1)).ok());
  std::vector<LockId> live{flow_b};
  CHECK(vault->releaseAllExcept(live).value() == 1);
  CHECK(vault->state(both[1]).value()->lock == flow_b);
  CHECK_FALSE(vault->state(both[0]).value()->lock.has_value());
  CHECK(vault->lock(flow_a, std::vector<StateRef>{{stx.id(), 7}}).error().code == Errc::not_found);
  // Spending clears the lock.
  REQUIRE(vault->record(move({both[1]}, {token(alice_party, 20)}), RecordMode::only_relevant).ok());
  CHECK_FALSE(vault->state(both[1]).value()->lock.has_value());
  CHECK(vault->lock(flow_a, std::span(both).subspan(1)).error().code == Errc::conflict);
  CHECK(vault->checkConsistency().ok());
}

TEST_CASE_FIXTURE(Fixture, "fungible selection locks enough, or names the available balance") {
  std::vector<TestToken> ts;
  for (int i = 0; i < 10; ++i) ts.push_back(token(alice_party, 10));
  ts.push_back(token(alice_party, 500, "USD"));
  REQUIRE(vault->record(issue(ts), RecordMode::only_relevant).ok());
  LockId f1 = SecureHash::of(asBytes("f1")), f2 = SecureHash::of(asBytes("f2"));
  auto s1 = vault->selectFungible(f1, "CNY", std::nullopt, 35);
  REQUIRE(s1.ok());
  CHECK(s1->total >= 35);
  CHECK(s1->states.size() == 4);
  auto s2 = vault->selectFungible(f2, "CNY", bank_party.owningKey.hash(), 60);
  REQUIRE(s2.ok());
  CHECK(s2->states.size() == 6);
  auto none = vault->selectFungible(f2, "CNY", std::nullopt, 1);
  CHECK(none.error().code == Errc::insufficient_balance);
  CHECK(none.error().message.find("0 available") != std::string::npos);
  // Locked states leave the token index (a selection reads only free ones)
  // and come back on release: the consistency check counts both.
  CHECK(vault->checkConsistency().ok());
  auto other_issuer = vault->selectFungible(f1, "USD", alice_party.owningKey.hash(), 1);
  CHECK(other_issuer.error().code == Errc::insufficient_balance);
  REQUIRE(vault->release(f1).ok());
  auto after = vault->selectFungible(f2, "CNY", std::nullopt, 50);
  CHECK(after.error().message.find("40 available") != std::string::npos);
  CHECK(vault->checkConsistency().ok());
  // Spending a selected (locked) state, and one released back: both leave.
  REQUIRE(vault->record(move({s2->states[0].ref}, {token(alice_party, 10)}), RecordMode::only_relevant).ok());
  REQUIRE(vault->record(move({s1->states[0].ref}, {token(alice_party, 10)}), RecordMode::only_relevant).ok());
  CHECK(vault->checkConsistency().ok());
  auto rest = vault->selectFungible(f1, "CNY", std::nullopt, 1000);
  CHECK(rest.error().message.find("50 available") != std::string::npos);
}

TEST_CASE_FIXTURE(Fixture, "parallel selections never hand out the same state") {
  std::vector<TestToken> ts;
  for (int i = 0; i < 200; ++i) ts.push_back(token(alice_party, 1));
  REQUIRE(vault->record(issue(ts), RecordMode::only_relevant).ok());
  std::mutex m;
  std::set<StateRef> handed_out;
  std::atomic<int> duplicates{0}, successes{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      LockId holder = SecureHash::of(asBytes("flow " + std::to_string(t)));
      for (int i = 0; i < 10; ++i) {
        auto s = vault->selectFungible(holder, "CNY", std::nullopt, 3);
        if (!s) continue;
        // Each selection takes fresh states: release nothing, so states run out.
        ++successes;
        std::lock_guard<std::mutex> g(m);
        for (const auto& vs : s->states) {
          if (vs.lock != holder) continue;
          if (!handed_out.insert(vs.ref).second) ++duplicates;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(duplicates == 0);
  CHECK(successes > 0);
  CHECK(vault->checkConsistency().ok());
}

TEST_CASE_FIXTURE(Fixture, "asynchronous selections queued at once never overlap; asynchronous release") {
  std::vector<TestToken> ts;
  for (int i = 0; i < 40; ++i) ts.push_back(token(alice_party, 1));
  REQUIRE(vault->record(issue(ts), RecordMode::only_relevant).ok());
  std::mutex m;
  std::condition_variable cv;
  int answered = 0, refused = 0;
  std::set<StateRef> handed_out;
  size_t handed = 0;
  // Queued back to back without waiting: they share group commits; each sees the earlier ones' locks.
  for (int f = 0; f < 12; ++f) {
    LockId holder = SecureHash::of(asBytes("async " + std::to_string(f)));
    vault->selectFungibleAsync(holder, "CNY", std::nullopt, 4, [&, holder](Result<FungibleSelection> s) {
      std::lock_guard<std::mutex> g(m);
      ++answered;
      if (!s) {
        CHECK(s.error().code == Errc::insufficient_balance);
        ++refused;
      } else {
        for (const auto& vs : s->states) {
          CHECK(vs.lock == holder);
          handed_out.insert(vs.ref);
          ++handed;
        }
      }
      cv.notify_all();
    });
  }
  {
    std::unique_lock<std::mutex> lock(m);
    REQUIRE(cv.wait_for(lock, std::chrono::seconds(30), [&] { return answered == 12; }));
  }
  CHECK(refused == 2);  // 40 states, 4 each: ten selections served
  CHECK(handed == 40);
  CHECK(handed_out.size() == 40);
  // An invalid amount is refused at once, on the caller's thread.
  bool bad = false;
  vault->selectFungibleAsync(SecureHash::of(asBytes("x")), "CNY", std::nullopt, 0,
                             [&](Result<FungibleSelection> s) { bad = !s && s.error().code == Errc::bad_query; });
  CHECK(bad);
  std::promise<Status> released;
  vault->releaseAsync(SecureHash::of(asBytes("async 0")), {}, [&](const Status& s) { released.set_value(s); });
  CHECK(released.get_future().get().ok());
  auto again = vault->selectFungible(SecureHash::of(asBytes("after")), "CNY", std::nullopt, 4);
  REQUIRE(again.ok());
  CHECK(again->states.size() == 4);
  CHECK(vault->checkConsistency().ok());
}

TEST_CASE_FIXTURE(Fixture, "tracking: a snapshot, then the updates that match") {
  REQUIRE(vault->record(issue({token(alice_party, 5)}), RecordMode::only_relevant).ok());
  std::vector<VaultUpdate> seen;
  std::mutex m;
  auto tracked = vault->track(Query{amount(FieldOp::ge, {int64_t{100}})}, [&](const VaultUpdate& u) {
    std::lock_guard<std::mutex> g(m);
    seen.push_back(u);
  });
  REQUIRE(tracked.ok());
  CHECK(tracked->first.total == 0);
  auto big = issue({token(alice_party, 150), token(alice_party, 7)});
  REQUIRE(vault->record(big, RecordMode::only_relevant).ok());
  REQUIRE(vault->record(move({{big.id(), 0}}, {token(alice_party, 150)}), RecordMode::only_relevant)
              .ok());
  vault->untrack(tracked->second);
  REQUIRE(vault->record(issue({token(alice_party, 1000)}), RecordMode::only_relevant).ok());
  std::lock_guard<std::mutex> g(m);
  REQUIRE(seen.size() == 2);
  CHECK(seen[0].produced.size() == 1);  // the 150, not the 7
  CHECK(seen[1].consumed.size() == 1);
  CHECK(seen[1].produced.size() == 1);
}

TEST_CASE_FIXTURE(Fixture, "a reopened vault has everything; indexes agree with states") {
  auto stx = issue({token(alice_party, 42)});
  REQUIRE(vault->record(stx, RecordMode::only_relevant).ok());
  vault.reset();
  vault = openVault();
  CHECK(vault->hasTransaction(stx.id()));
  CHECK(amounts(run(Query{amount(FieldOp::eq, {int64_t{42}})})) == std::vector<int64_t>{42});
  size_t n = 0;
  CHECK(vault->forEachTransaction([&](const SecureHash& id, ByteView bytes) {
    ++n;
    CHECK(SignedTransaction::decode(bytes)->id() == id);
    return true;
  }).ok());
  CHECK(n == 1);
}

TEST_CASE_FIXTURE(Fixture, "the consistency check notices a missing index entry") {
  auto stx = issue({token(alice_party, 42)});
  REQUIRE(vault->record(stx, RecordMode::only_relevant).ok());
  REQUIRE(vault->checkConsistency().ok());
  // Remove every participant index entry behind the vault's back.
  REQUIRE(vault->store()
              .write([&](WriteTxn& w) -> Status {
                std::vector<Bytes> doomed;
                const Db& ix = vault->store().db("ix_participant");
                Cursor c = w.cursor(ix);
                for (bool ok = c.first(); ok; ok = c.next()) doomed.emplace_back(c.key().begin(), c.key().end());
                for (const auto& k : doomed) CCAL_TRY(w.del(ix, k));
                return {};
              })
              .ok());
  auto broken = vault->checkConsistency();
  CHECK(broken.error().code == Errc::storage_error);
  CHECK(broken.error().message.find("ix_participant") != std::string::npos);
}

namespace {

// Every page of `q` by cursor, checking each page's bookkeeping.
std::vector<VaultState> allByCursor(Fixture& f, Query q, size_t* pages = nullptr) {
  std::vector<VaultState> out;
  size_t n = 0;
  for (;;) {
    Page page = f.run(q);
    ++n;
    CHECK(page.page_number == n);
    CHECK(page.states.size() <= q.page_size);
    CHECK(page.has_more == !page.next_cursor.empty());
    out.insert(out.end(), page.states.begin(), page.states.end());
    if (!page.has_more) {
      CHECK(out.size() == page.total);
      break;
    }
    CHECK(page.states.size() == q.page_size);
    q.cursor = page.next_cursor;
    REQUIRE(n < 1000);
  }
  if (pages) *pages = n;
  return out;
}

std::vector<StateRef> refsOf(const std::vector<VaultState>& states) {
  std::vector<StateRef> out;
  for (const auto& s : states) out.push_back(s.ref);
  return out;
}

}  // namespace

TEST_CASE_FIXTURE(Fixture, "cursor paging: every page once, in order, by either plan") {
  // Ties in the sort field, within one transaction and across two.
  auto first = issue({token(alice_party, 20), token(alice_party, 10), token(alice_party, 20),
                      token(alice_party, 40)});
  auto second = issue({token(alice_party, 20), token(alice_party, 40), token(alice_party, 30)});
  REQUIRE(vault->record(first, RecordMode::only_relevant).ok());
  REQUIRE(vault->record(second, RecordMode::only_relevant).ok());
  const std::vector<Criteria> shapes = {
      amount(FieldOp::ge, {int64_t{0}}),                        // streams from ix_field
      amount(FieldOp::ge, {int64_t{0}}) && tokens(),            // the general plan
      amount(FieldOp::gt, {int64_t{5}}) && amount(FieldOp::le, {int64_t{40}}),  // intersected
  };
  for (const auto& criteria : shapes) {
    for (bool desc : {false, true}) {
      // One big page is the reference order.
      Query whole{criteria, StatusFilter::unconsumed, RelevanceFilter::all, Sort{"amount", desc},
                  100};
      Page all = run(whole);
      REQUIRE(all.states.size() == 7);
      CHECK(all.next_cursor.empty());
      auto expected = refsOf(all.states);
      std::vector<int64_t> sorted_amounts = amounts(all);
      CHECK(std::is_sorted(sorted_amounts.begin(), sorted_amounts.end(),
                           [&](int64_t a, int64_t b) { return desc ? a > b : a < b; }));
      for (uint32_t size : {1u, 2u, 3u, 7u, 8u}) {
        Query q = whole;
        q.page_size = size;
        size_t pages = 0;
        CHECK(refsOf(allByCursor(*this, q, &pages)) == expected);
        CHECK(pages == std::max<size_t>(1, (7 + size - 1) / size));  // exact multiples: no empty page
        // Page numbers give the same pages.
        for (uint32_t number = 1; number <= pages; ++number) {
          Query numbered = q;
          numbered.page_number = number;
          auto page = run(numbered);
          std::vector<StateRef> want(expected.begin() + (number - 1) * size,
                                     expected.begin() + std::min<size_t>(7, number * size));
          CHECK(refsOf(page.states) == want);
          CHECK(page.has_more == (number < pages));
        }
      }
    }
  }
  // By type, newest and oldest first (ix_type), and every state (ix_recorded).
  for (const Criteria& criteria : {tokens(), Criteria::all()}) {
    for (bool desc : {false, true}) {
      Query whole{criteria, StatusFilter::unconsumed, RelevanceFilter::all, Sort{"recorded", desc},
                  100};
      auto expected = refsOf(run(whole).states);
      REQUIRE(expected.size() == 7);
      Query q = whole;
      q.page_size = 2;
      CHECK(refsOf(allByCursor(*this, q)) == expected);
    }
  }
  // Nothing matches: one empty page, no cursor.
  Query none{amount(FieldOp::gt, {int64_t{1000}}), StatusFilter::unconsumed, RelevanceFilter::all,
             Sort{"amount", false}, 2};
  auto empty = run(none);
  CHECK(empty.states.empty());
  CHECK(empty.total == 0);
  CHECK_FALSE(empty.has_more);
  CHECK(empty.next_cursor.empty());
}

TEST_CASE_FIXTURE(Fixture, "cursor paging is stable while states are recorded and consumed") {
  std::vector<TestToken> ts;
  for (int64_t a : {10, 20, 30, 40, 50, 60}) ts.push_back(token(alice_party, a));
  auto issued = issue(ts);
  REQUIRE(vault->record(issued, RecordMode::only_relevant).ok());
  for (bool streamed : {true, false}) {
    Criteria criteria = amount(FieldOp::ge, {int64_t{0}});
    if (!streamed) criteria = std::move(criteria) && tokens();
    Query q{criteria, StatusFilter::unconsumed, RelevanceFilter::all, Sort{"amount", false}, 2};
    auto p1 = run(q);
    std::vector<int64_t> seen = amounts(p1);
    // Meanwhile: a state before the cursor's position, one after it, and a
    // spend of a state not yet paged through.
    auto more = issue({token(alice_party, streamed ? 5 : 6), token(alice_party, streamed ? 45 : 46)});
    REQUIRE(vault->record(more, RecordMode::only_relevant).ok());
    StateRef spent{issued.id(), streamed ? 4u : 5u};  // 50, then 60
    REQUIRE(vault->record(move({spent}, {token(bob_party, 1)}), RecordMode::only_relevant).ok());
    q.cursor = p1.next_cursor;
    for (;;) {
      auto page = run(q);
      auto a = amounts(page);
      seen.insert(seen.end(), a.begin(), a.end());
      if (!page.has_more) break;
      q.cursor = page.next_cursor;
    }
    if (streamed) {
      CHECK(seen == std::vector<int64_t>{10, 20, 30, 40, 45, 60});
    } else {
      // The first round's 5 and 45 are there; the new 6 sorts before the
      // cursor, the new 46 after it; 60 was spent meanwhile.
      CHECK(seen == std::vector<int64_t>{5, 10, 20, 30, 40, 45, 46});
    }
  }
}

TEST_CASE_FIXTURE(Fixture, "a malformed or foreign cursor is a named bad_query") {
  auto issued = issue({token(alice_party, 1), token(alice_party, 2), token(alice_party, 3)});
  REQUIRE(vault->record(issued, RecordMode::only_relevant).ok());
  Query q{amount(FieldOp::ge, {int64_t{0}}), StatusFilter::unconsumed, RelevanceFilter::all,
          Sort{"amount", false}, 1};
  auto p1 = run(q);
  REQUIRE_FALSE(p1.next_cursor.empty());
  auto with = [&](Query other, std::string cursor) {
    other.cursor = std::move(cursor);
    return vault->query(other);
  };
  // The same query takes it.
  CHECK(with(q, p1.next_cursor).ok());
  // Another query does not: other criteria, order, status or sort field.
  Query other_criteria = q;
  other_criteria.criteria = amount(FieldOp::ge, {int64_t{1}});
  Query other_order = q;
  other_order.sort.descending = true;
  Query other_status = q;
  other_status.status = StatusFilter::all;
  Query other_sort = q;
  other_sort.sort.by = "recorded";
  for (const Query& other : {other_criteria, other_order, other_status, other_sort}) {
    auto refused = with(other, p1.next_cursor);
    REQUIRE_FALSE(refused.ok());
    CHECK(refused.error().code == Errc::bad_query);
    CHECK(refused.error().message.find("different query") != std::string::npos);
  }
  // Damaged ones.
  std::string flipped_version = p1.next_cursor;
  flipped_version[1] = flipped_version[1] == '1' ? '2' : '1';
  for (const std::string& bad :
       {std::string("zz"), p1.next_cursor.substr(0, 20), p1.next_cursor + "0",
        "X" + p1.next_cursor.substr(1), flipped_version, std::string(5000, 'a')}) {
    auto refused = with(q, bad);
    REQUIRE_FALSE(refused.ok());
    CHECK(refused.error().code == Errc::bad_query);
    CHECK(refused.error().message.find("cursor") != std::string::npos);
  }
  // A cursor with a page number.
  Query both = q;
  both.page_number = 2;
  auto refused = with(both, p1.next_cursor);
  CHECK(refused.error().message.find("not both") != std::string::npos);
}

TEST_CASE_FIXTURE(Fixture, "status filters over status-free indexes agree with the general plan") {
  std::vector<TestToken> ts;
  for (int64_t a : {10, 20, 30, 40, 50}) ts.push_back(token(alice_party, a));
  auto issued = issue(ts);
  REQUIRE(vault->record(issued, RecordMode::only_relevant).ok());
  REQUIRE(vault->record(move({{issued.id(), 1}, {issued.id(), 3}}, {token(alice_party, 25)}),
                        RecordMode::only_relevant)
              .ok());
  using V = std::vector<int64_t>;
  for (StatusFilter status : {StatusFilter::unconsumed, StatusFilter::consumed, StatusFilter::all}) {
    Query streamed{amount(FieldOp::ge, {int64_t{0}}), status, RelevanceFilter::all,
                   Sort{"amount", false}, 2};
    Query general = streamed;
    general.criteria = amount(FieldOp::ge, {int64_t{0}}) && tokens();
    auto a = allByCursor(*this, streamed), b = allByCursor(*this, general);
    CHECK(refsOf(a) == refsOf(b));
    V want = status == StatusFilter::unconsumed ? V{10, 25, 30, 50}
             : status == StatusFilter::consumed ? V{20, 40}
                                                : V{10, 20, 25, 30, 40, 50};
    Page whole = run(Query{streamed.criteria, status, RelevanceFilter::all, Sort{"amount", false}});
    CHECK(amounts(whole) == want);
    CHECK(whole.total == want.size());
    // Participant and linear id (status-free, filtered).
    CHECK(run(Query{Criteria::participant(alice_party.owningKey), status}).total == want.size());
    CHECK(run(Query{Criteria::linearId(ts[1].linearId), status}).total ==
          (status == StatusFilter::unconsumed ? 0u : 1u));
    CHECK(run(Query{Criteria::all(), status}).total == want.size());
  }
  Status consistent = vault->checkConsistency();
  CHECK_MESSAGE(consistent.ok(), (consistent.ok() ? "" : consistent.error().toString()));
}

TEST_CASE_FIXTURE(Fixture, "a VerifiedTransaction is recorded without checking it again") {
  auto stx = issue({token(alice_party, 7)});
  SignedTransaction unsigned_copy(stx.tx());
  auto refused = VerifiedTransaction::verify(unsigned_copy);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().code == Errc::missing_signatures);
  auto verified = VerifiedTransaction::verify(stx);
  REQUIRE(verified.ok());
  CHECK(verified->id() == stx.id());
  REQUIRE(vault->record(*verified, RecordMode::only_relevant).ok());
  CHECK(vault->record(*verified, RecordMode::only_relevant).ok());  // again: a no-op
  CHECK(vault->record(stx, RecordMode::only_relevant).ok());
  CHECK(run(Query{tokens()}).total == 1);
  auto spend = VerifiedTransaction::verify(move({{stx.id(), 0}}, {token(alice_party, 7)}));
  REQUIRE(spend.ok());
  REQUIRE(vault->record(*spend, RecordMode::only_relevant).ok());
  auto again = VerifiedTransaction::verify(move({{stx.id(), 0}}, {token(alice_party, 7)}));
  auto conflict = vault->record(*again, RecordMode::only_relevant);
  CHECK(conflict.error().code == Errc::conflict);
  CHECK(conflict.error().message.find(spend->id().hex()) != std::string::npos);
  CHECK(vault->checkConsistency().ok());
}

TEST_CASE_FIXTURE(Fixture, "a batch with a double spend and good records: each its own outcome") {
  std::vector<TestToken> ts;
  for (int i = 0; i < 8; ++i) ts.push_back(token(alice_party, 100 + i));
  auto issued = issue(ts);
  REQUIRE(vault->record(issued, RecordMode::only_relevant).ok());
  // Many records at once (one or a few batches): pairs spending the same state.
  std::vector<SignedTransaction> spends;
  for (uint32_t i = 0; i < 8; ++i) {
    spends.push_back(move({{issued.id(), i}}, {token(alice_party, 1)}));
    spends.push_back(move({{issued.id(), i}}, {token(alice_party, 2)}));
  }
  std::vector<Status> results(spends.size());
  std::atomic<int> finished{0};
  for (size_t i = 0; i < spends.size(); ++i) {
    vault->recordAsync(spends[i], RecordMode::only_relevant, [&, i](const Status& s) {
      results[i] = s;
      ++finished;
    });
  }
  while (finished.load() < static_cast<int>(spends.size())) std::this_thread::yield();
  for (size_t i = 0; i < spends.size(); i += 2) {
    // The first of each pair wins; the second names it.
    CHECK(results[i].ok());
    REQUIRE_FALSE(results[i + 1].ok());
    CHECK(results[i + 1].error().code == Errc::conflict);
    CHECK(results[i + 1].error().message.find(spends[i].id().hex()) != std::string::npos);
    CHECK(vault->hasTransaction(spends[i].id()));
    CHECK_FALSE(vault->hasTransaction(spends[i + 1].id()));
  }
  CHECK(vault->store().stats().reruns == 0);  // refused before writing
  CHECK(run(Query{tokens()}).total == 8);
  CHECK(vault->checkConsistency().ok());
}

TEST_CASE_FIXTURE(Fixture, "inputs prepared by the caller: used while current, redone when stale") {
  auto issued = issue({token(alice_party, 10), token(alice_party, 20), token(alice_party, 30)});
  REQUIRE(vault->record(issued, RecordMode::only_relevant).ok());
  const StateRef s0{issued.id(), 0}, s1{issued.id(), 1}, s2{issued.id(), 2};
  const LockId holder = SecureHash::of(asBytes("flow-1"));
  // Hold the writer so that every record below is prepared against the
  // stored states before any of them runs.
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  vault->store().submit([released](WriteTxn&) -> Status {
    released.wait();
    return {};
  }, [](const Status&) {});
  // Queued first: s1 is locked after the spends below were prepared.
  std::promise<Status> locked;
  vault->store().submit(
      [&](WriteTxn& w) -> Status {
        // (On the writer thread: failures come back as the status.)
        auto key = VaultAccess::keyOf(*vault, w, s1);
        if (!key) return makeError(Errc::not_found, "s1 is not stored");
        auto fields = VaultAccess::loadFields(*vault, w, *key);
        if (!fields.ok() || !fields->has_value()) return makeError(Errc::not_found, "s1 has no record");
        return VaultAccess::relock(*vault, w, *key, **fields, holder);
      },
      [&](const Status& s) { locked.set_value(s); });
  // a spends s0 (prepared, still current), b spends s0 too (prepared, but a
  // consumed it first), c spends s1 and s2 (prepared before s1's lock).
  auto a = move({s0}, {token(alice_party, 10)});
  auto b = move({s0}, {token(alice_party, 10)});
  auto c = move({s1, s2}, {token(alice_party, 50)});
  std::vector<std::future<Status>> results;
  for (const auto* tx : {&a, &b, &c}) {
    auto promise = std::make_shared<std::promise<Status>>();
    results.push_back(promise->get_future());
    vault->recordAsync(*tx, RecordMode::only_relevant, [promise](const Status& s) { promise->set_value(s); });
  }
  release.set_value();
  CHECK(locked.get_future().get().ok());
  CHECK(results[0].get().ok());
  Status refused = results[1].get();
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().code == Errc::conflict);
  CHECK(refused.error().message.find(a.id().hex()) != std::string::npos);
  CHECK(results[2].get().ok());
  for (const auto& [ref, by] : {std::pair{s0, a.id()}, std::pair{s1, c.id()}, std::pair{s2, c.id()}}) {
    auto st = vault->state(ref);
    REQUIRE((st.ok() && st->has_value()));
    CHECK((*st)->status == StateStatus::consumed);
    CHECK((*st)->consumedBy == by);
    CHECK_FALSE((*st)->lock.has_value());
  }
  CHECK(vault->store().read().entries(vault->store().db("ix_lock")) == 0);  // s1's lock went with it
  CHECK(run(Query{tokens()}).total == 2);
  CHECK(vault->checkConsistency().ok());
}

TEST_CASE_FIXTURE(Fixture, "a vault file of an older schema version is refused, not read") {
  vault.reset();
  // What vaults of schema 2 (states keyed by StateRef) and 3 (field entries
  // beginning with the type and field texts) leave behind.
  for (uint32_t old_version : {2u, 3u}) {
    CAPTURE(old_version);
    ccal::testing::TempDir old_dir{"ccal-vault-old-schema"};
    {
      StoreConfig config;
      config.path = old_dir.path;
      config.durable = false;
      auto old = Store::open(config, vaultDatabaseNames(), vault_schema_name, old_version);
      REQUIRE(old.ok());
    }
    VaultConfig config;
    config.store.path = old_dir.path;
    config.store.durable = false;
    auto refused = Vault::open(config, registry, {alice.publicKey()});
    REQUIRE_FALSE(refused.ok());
    CHECK(refused.error().code == Errc::schema_mismatch);
    CHECK(refused.error().message.find("version " + std::to_string(old_version)) != std::string::npos);
    CHECK(refused.error().message.find(std::to_string(vault_schema_version)) != std::string::npos);
  }
}

TEST_CASE_FIXTURE(Fixture, "declared-field entries begin with the field's 8-byte id, one range per field") {
  REQUIRE(vault->record(issue({token(alice_party, 42, "USD"), token(alice_party, 7, "CNY")}),
                        RecordMode::only_relevant)
              .ok());
  const auto declared = TestTokenSchema().fields();
  std::map<Bytes, std::string> ids;
  for (const auto& decl : declared) {
    Bytes id = fieldPrefix(token_state_type, decl.name);
    CHECK(id.size() == field_id_bytes);
    ids.emplace(id, decl.name);
  }
  CHECK(ids.size() == declared.size());  // distinct
  CHECK(fieldPrefix(token_state_type, "amount") != fieldPrefix("ccal.test.Other", "amount"));
  // Each stored entry: field id | value | recorded time | state key, and
  // each field's two entries are next to each other, ordered by value.
  ReadTxn r = vault->store().read();
  Cursor c = r.cursor(vault->store().db("ix_field"));
  std::vector<std::string> order;
  for (bool ok = c.first(); ok; ok = c.next()) {
    REQUIRE(c.key().size() > field_id_bytes + 8 + keys::state_key_bytes);
    Bytes id(c.key().begin(), c.key().begin() + field_id_bytes);
    REQUIRE(ids.count(id) == 1);
    order.push_back(ids[id]);
    if (ids[id] == "amount") {
      CHECK(keys::readInt(c.key().subspan(field_id_bytes, 8)) == (order.size() % 2 == 1 ? 7 : 42));
    }
  }
  REQUIRE(order.size() == 2 * declared.size());
  for (size_t i = 0; i < order.size(); i += 2) CHECK(order[i] == order[i + 1]);
  auto found = amounts(run(Query{amount(FieldOp::between, {int64_t{7}, int64_t{42}})}));
  std::sort(found.begin(), found.end());
  CHECK(found == std::vector<int64_t>{7, 42});
}

TEST_CASE_FIXTURE(Fixture, "sequence numbers keep growing across reopen, and lookups by id and ref agree") {
  auto first = issue({token(alice_party, 1), token(alice_party, 2)});
  REQUIRE(vault->record(first, RecordMode::only_relevant).ok());
  vault.reset();
  vault = openVault();
  // After reopening, a new transaction is stored after the first: spending
  // the first's outputs and recording new ones finds both by StateRef.
  auto second = issue({token(alice_party, 3)});
  REQUIRE(vault->record(second, RecordMode::only_relevant).ok());
  auto spend = move({{first.id(), 1}, {second.id(), 0}}, {token(alice_party, 5)});
  REQUIRE(vault->record(spend, RecordMode::only_relevant).ok());
  for (const auto& [ref, status] :
       std::vector<std::pair<StateRef, StateStatus>>{{{first.id(), 0}, StateStatus::unconsumed},
                                                     {{first.id(), 1}, StateStatus::consumed},
                                                     {{second.id(), 0}, StateStatus::consumed},
                                                     {{spend.id(), 0}, StateStatus::unconsumed}}) {
    auto s = vault->state(ref);
    REQUIRE(s.ok());
    REQUIRE(s->has_value());
    CHECK((*s)->ref == ref);
    CHECK((*s)->status == status);
  }
  CHECK_FALSE(vault->state({first.id(), 7})->has_value());
  CHECK_FALSE(vault->state({SecureHash::of(asBytes("nothing")), 0})->has_value());
  // Newest first by recording: the spend's output, then the first's
  // unconsumed output.
  Query newest{Criteria::stateType(std::string(token_state_type)), StatusFilter::unconsumed,
               RelevanceFilter::all, Sort{"recorded", true}};
  Page page = run(newest);
  REQUIRE(page.states.size() == 2);
  CHECK(page.states[0].ref == StateRef{spend.id(), 0});
  CHECK(page.states[1].ref == StateRef{first.id(), 0});
  // Transactions by id, in id order.
  std::vector<SecureHash> ids;
  REQUIRE(vault->forEachTransaction([&](const SecureHash& id, ByteView bytes) {
    CHECK(SignedTransaction::decode(bytes)->id() == id);
    ids.push_back(id);
    return true;
  }).ok());
  std::vector<SecureHash> expected{first.id(), second.id(), spend.id()};
  std::sort(expected.begin(), expected.end());
  CHECK(ids == expected);
  CHECK(vault->transaction(second.id())->value().id() == second.id());
  CHECK(vault->checkConsistency().ok());
}
