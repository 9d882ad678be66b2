// Deal flows on real LMDB vaults: a bank, three cooperatives and a notary
// exchange tokens, credentials and receivables through the flow runtime
// over an in-memory hub, with virtual time.
#include "flows/deal_flows.h"

#include <doctest/doctest.h>

#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "contracts/contracts.h"
#include "flows/builtin_testing.h"
#include "flows/delivery.h"
#include "flows/lc_flows.h"
#include "flows/loan_flows.h"
#include "ledger/testing.h"
#include "test/support/temp_dir.h"
#include "vault/message_store.h"
#include "vault/vault.h"

using namespace ccal;
using namespace ccal::flows;
using namespace ccal::flows::testing;
using namespace ccal::contracts;

namespace {

const std::string bank = "O=Bank of Hainan, L=Haikou, C=CN";
const std::string coopA = "O=Haikou Fishing Cooperative, L=Haikou, C=CN";
const std::string coopB = "O=Sanya Tea Cooperative, L=Sanya, C=CN";
const std::string coopC = "O=Wenchang Coconut Cooperative, L=Wenchang, C=CN";
const std::string notary_name = "O=Hainan Notary, L=Haikou, C=CN";

// A single-threaded executor with virtual time, driven by the test.
class TestExecutor final : public Executor, public Clock {
 public:
  void post(std::function<void()> fn) override {
    std::lock_guard lock(mutex_);
    posted_.push_back(std::move(fn));
  }
  TimerId runAfter(int64_t delay_micros, std::function<void()> fn) override {
    const TimerId id = ++last_timer_;
    timers_.emplace(std::make_pair(now_ + delay_micros, id), std::move(fn));
    return id;
  }
  void cancel(TimerId id) override {
    for (auto it = timers_.begin(); it != timers_.end(); ++it) {
      if (it->first.second == id) {
        timers_.erase(it);
        return;
      }
    }
  }
  int64_t nowMicros() const override { return now_; }

  bool runUntil(const std::function<bool()>& pred, int64_t deadline_micros,
                const std::function<void()>& barrier) {
    const int64_t end = now_ + deadline_micros;
    for (;;) {
      if (pred()) return true;
      std::deque<std::function<void()>> batch;
      {
        std::lock_guard lock(mutex_);
        batch.swap(posted_);
      }
      if (!batch.empty()) {
        for (auto& fn : batch) fn();
        continue;
      }
      barrier();
      {
        std::lock_guard lock(mutex_);
        if (!posted_.empty()) continue;
      }
      if (timers_.empty() || timers_.begin()->first.first > end) return pred();
      auto it = timers_.begin();
      now_ = std::max(now_, it->first.first);
      auto fn = std::move(it->second);
      timers_.erase(it);
      fn();
    }
  }

 private:
  std::mutex mutex_;
  std::deque<std::function<void()>> posted_;
  std::map<std::pair<int64_t, TimerId>, std::function<void()>> timers_;
  TimerId last_timer_ = 0;
  int64_t now_ = 1'700'000'000'000'000;
};

class HubLink;

struct Hub {
  TestExecutor* executor = nullptr;
  std::set<std::string> names;
  std::map<std::string, HubLink*> members;
  void deliver(const std::string& from, const std::string& to, Bytes frame);
};

class HubLink final : public Link {
 public:
  HubLink(Hub& hub, std::string self) : hub_(hub), self_(std::move(self)) {
    hub_.members[self_] = this;
  }
  ~HubLink() override { hub_.members.erase(self_); }
  void setHandler(LinkHandler* handler) override { handler_ = handler; }
  Status send(std::string_view peer, Bytes frame) override {
    if (!hub_.names.count(std::string(peer))) {
      return makeError(Errc::not_found, "unknown peer '" + std::string(peer) + "'");
    }
    hub_.deliver(self_, std::string(peer), std::move(frame));
    return {};
  }
  size_t frameBytesMax() const override { return 1u << 20; }
  LinkHandler* handler_ = nullptr;

 private:
  Hub& hub_;
  std::string self_;
};

void Hub::deliver(const std::string& from, const std::string& to, Bytes frame) {
  executor->post([this, from, to, frame] {
    auto it = members.find(to);
    if (it != members.end() && it->second->handler_) it->second->handler_->onFrame(from, frame);
  });
}

struct World;

struct TNode {
  std::string name;
  KeyPair key;
  World& world;
  DealPolicy policy;
  ccal::testing::TempDir dir{"ccal-deal-flows-test"};
  ContractRegistry registry;
  FlowServices svc;
  std::unique_ptr<vault::Vault> vault;
  std::unique_ptr<vault::MessageStore> messages;
  std::unique_ptr<vault::FlowStore> flowStore;
  std::unique_ptr<HubLink> link;
  std::unique_ptr<Delivery> delivery;
  std::unique_ptr<FlowRuntime> runtime;
  std::map<FlowId, FlowInfo> finished;

  TNode(std::string n, uint8_t seed, World& w, DealPolicy p)
      : name(std::move(n)), key(ccal::testing::testKey(seed)), world(w), policy(p) {
    registerDealContracts(registry);
  }
  ~TNode() { close(); }
  Party party() const { return Party{name, Key(key.publicKey())}; }
  void open();
  void close() {
    runtime.reset();
    delivery.reset();
    link.reset();
    vault.reset();
    flowStore.reset();
    messages.reset();
  }
  void restart() {
    close();
    open();
  }
  void quiesce() {
    if (vault) vault->waitForWrites();  // vault writes queued by flows (their completions post back)
    if (delivery) delivery->waitForStore();
    if (runtime) runtime->waitForStore();
  }
  // Unconsumed states of a type, optionally of one declared field's value.
  std::vector<vault::VaultState> states(std::string_view type) const {
    return vault->query(vault::Query(vault::Criteria::stateType(std::string(type)))).value().states;
  }
  int64_t balance(const std::string& currency) const {
    int64_t total = 0;
    for (const auto& s : states(token_state_type)) {
      auto t = decodeToken(s.state.data).value();
      if (t.currency == currency && t.owner == Key(key.publicKey())) total += t.amountMinor;
    }
    return total;
  }
};

struct World {
  TestExecutor executor;
  Hub hub;
  Directory directory;
  Party notaryParty{notary_name, Key(ccal::testing::testKey(99).publicKey())};
  UniquenessNotary notary{notaryParty, ccal::testing::testKey(99)};
  std::map<std::string, std::unique_ptr<TNode>> nodes;

  World() {
    hub.executor = &executor;
    directory.parties[notary_name] = notaryParty;
  }
  ~World() { nodes.clear(); }
  TNode& add(const std::string& name, uint8_t seed, DealPolicy policy = {}) {
    hub.names.insert(name);
    auto node = std::make_unique<TNode>(name, seed, *this, policy);
    directory.parties[name] = node->party();
    node->open();
    TNode& ref = *node;
    nodes[name] = std::move(node);
    return ref;
  }
  TNode& operator[](const std::string& name) { return *nodes.at(name); }
  bool run(const std::function<bool()>& pred, int64_t deadline_micros = 600'000'000) {
    return executor.runUntil(pred, deadline_micros, [this] {
      for (auto& entry : nodes) entry.second->quiesce();
    });
  }
  FlowInfo await(TNode& n, const FlowId& id) {
    const bool done = run([&] { return n.finished.count(id) > 0; });
    REQUIRE_MESSAGE(done, "flow " << id.shortHex() << " did not finish");
    return n.finished.at(id);
  }
  FlowId start(TNode& n, std::string_view flow, const std::vector<std::string>& kvs) {
    auto args = parseDealArgs(flow, kvs);
    REQUIRE_MESSAGE(args.ok(), (args ? "" : args.error().message));
    auto id = n.runtime->startFlow(flow, encodeDealArgs(*args));
    REQUIRE(id);
    return *id;
  }
  FlowInfo runFlow(TNode& n, std::string_view flow, const std::vector<std::string>& kvs) {
    return await(n, start(n, flow, kvs));
  }
  SecureHash ok(TNode& n, std::string_view flow, const std::vector<std::string>& kvs) {
    FlowInfo info = runFlow(n, flow, kvs);
    REQUIRE_MESSAGE(info.outcome == vault::FlowOutcome::ok,
                    flow << " failed: " << (info.error ? info.error->message : ""));
    return idOf(info.result);
  }
  bool quiet() {
    return run([this] {
      for (auto& entry : nodes) {
        if (entry.second->runtime->running() > 0) return false;
      }
      return true;
    });
  }
};

void TNode::open() {
  vault::VaultConfig vc;
  vc.store.path = dir.path;
  vc.store.durable = false;
  TestExecutor* clock = &world.executor;
  vc.now_micros = [clock] { return clock->nowMicros(); };
  vault = vault::Vault::open(vc, registry, {key.publicKey()}).value();
  messages = std::make_unique<vault::MessageStore>(vault->store(), [clock] { return clock->nowMicros(); });
  flowStore = std::make_unique<vault::FlowStore>(vault->store(), [clock] { return clock->nowMicros(); });
  link = std::make_unique<HubLink>(world.hub, name);
  DeliveryConfig dc;
  dc.log = [](std::string_view) {};
  delivery = std::make_unique<Delivery>(*link, *messages, world.executor, world.executor, dc);
  FlowRuntimeConfig fc;
  fc.self = name;
  fc.flow_timeout_micros = 0;
  uint64_t counter = key.publicKey().bytes()[0];
  fc.random_u64 = [counter]() mutable { return ++counter * 0x9e3779b97f4a7c15ull; };
  fc.log = [](std::string_view) {};
  runtime = std::make_unique<FlowRuntime>(*delivery, world.executor, world.executor, *flowStore, fc);
  svc = FlowServices{};
  svc.identity = party();
  svc.keys = {key};
  svc.vault = vault.get();
  svc.contracts = &registry;
  const Directory* d = &world.directory;
  svc.partyByName = [d](std::string_view n) { return d->byName(n); };
  svc.partyByKey = [d](const Key& k) { return d->byKey(k); };
  svc.notary = &world.notary;
  addDealChecks(svc, policy);
  REQUIRE(registerBuiltinFlows(*runtime, svc).ok());
  DealConfig config;
  config.notary = notary_name;
  config.policy = policy;
  REQUIRE(registerDealFlows(*runtime, svc, config).ok());
  FlowRuntime::Hooks hooks;
  hooks.finished = [this](const FlowInfo& info) { finished[info.id] = info; };
  runtime->setHooks(std::move(hooks));
  REQUIRE(runtime->start().ok());
  REQUIRE(delivery->start().ok());
}

std::string errorOf(const FlowInfo& info) { return info.error ? info.error->message : "(no error)"; }

// The demo's opening: the bank issues tokens to A and B; A and C hold
// credentials for B (issued by C, shared with A), B for A.
struct Deal {
  World w;
  TNode& b = w.add(bank, 1);
  TNode& a = w.add(coopA, 2);
  TNode& bb = w.add(coopB, 3);
  TNode& c = w.add(coopC, 4);
  Deal() {
    w.ok(b, token_issue_deal, {"to=" + coopA, "amount=100000", "currency=CNY"});
    w.ok(b, token_issue_deal, {"to=" + coopB, "amount=200000", "currency=CNY"});
    w.ok(b, token_issue_deal, {"to=" + bank, "amount=1000000", "currency=CNY"});
    w.ok(b, token_issue_deal, {"to=" + coopC, "amount=1000000", "currency=CNY"});
    w.ok(c, member_issue_deal, {"member=" + coopB, "name=Sanya Tea Cooperative", "role=member", "days=365",
                                "observers=" + coopA});
  }
};

}  // namespace

TEST_CASE("deal flow arguments: the table validates before a flow starts") {
  CHECK(dealFlowSpecs().size() == 8 + lcFlowSpecs().size() + loanFlowSpecs().size());
  auto ok = parseDealArgs(token_move_deal, {"to=X", "amount=250", "currency=CNY"});
  REQUIRE(ok);
  CHECK(decodeDealArgs(token_move_deal, encodeDealArgs(*ok)).value() == *ok);
  auto err = [](std::string_view flow, const std::vector<std::string>& kvs) {
    auto r = parseDealArgs(flow, kvs);
    REQUIRE_FALSE(r);
    return r.error().message;
  };
  CHECK(err(token_move_deal, {"to=X", "currency=CNY"}).find("missing argument 'amount'") != std::string::npos);
  CHECK(err(token_move_deal, {"to=X", "amount=2.50", "currency=CNY"}).find("argument 'amount'") != std::string::npos);
  CHECK(err(token_move_deal, {"to=X", "amount=-1", "currency=CNY"}).find("must be positive") != std::string::npos);
  CHECK(err(token_move_deal, {"to=X", "amount=99999999999999999999", "currency=CNY"}).find("'amount'") !=
        std::string::npos);
  CHECK(err(token_move_deal, {"to=X", "amount=1", "currency=cny"}).find("argument 'currency'") != std::string::npos);
  CHECK(err(token_move_deal, {"to=X", "amount=1", "currency=CNY", "colour=red"}).find("unknown argument 'colour'") !=
        std::string::npos);
  CHECK(err(token_move_deal, {"to=X", "to=Y", "amount=1", "currency=CNY"}).find("'to' given twice") !=
        std::string::npos);
  CHECK(err(token_move_deal, {"to", "amount=1", "currency=CNY"}).find("not key=value") != std::string::npos);
  CHECK(err(token_move_deal, {"to=", "amount=1", "currency=CNY"}).find("'to' is empty") != std::string::npos);
  CHECK(err(receivable_issue_deal, {"buyer=X", "amount=1", "currency=CNY", "invoice=1", "due=2024-02-30"})
            .find("argument 'due'") != std::string::npos);
  CHECK(err(member_issue_deal, {"member=X", "name=N", "role=r", "days=0"}).find("argument 'days'") !=
        std::string::npos);
  CHECK(err("token.print", {}).find("no deal flow named") != std::string::npos);
  CHECK(parseDateMicros("1970-01-02").value() == 86'400'000'000LL);
  CHECK(parseDateMicros("2024-02-29").value() == 1'709'164'800'000'000LL);
}

TEST_CASE("token flows: issue, move with change and released locks, redeem with the issuer's signature") {
  Deal d;
  World& w = d.w;
  CHECK(d.a.balance("CNY") == 100000);
  const SecureHash move = w.ok(d.a, token_move_deal, {"to=" + coopB, "amount=30000", "currency=CNY"});
  REQUIRE(w.quiet());
  CHECK(d.a.balance("CNY") == 70000);
  CHECK(d.bb.balance("CNY") == 230000);
  CHECK(d.a.vault->hasTransaction(move));
  CHECK(d.bb.vault->hasTransaction(move));
  // The change is free to spend again: no lock is left behind.
  w.ok(d.a, token_move_deal, {"to=" + coopB, "amount=70000", "currency=CNY"});
  CHECK(d.a.balance("CNY") == 0);
  FlowInfo broke = w.runFlow(d.a, token_move_deal, {"to=" + coopB, "amount=1", "currency=CNY"});
  CHECK(broke.outcome == vault::FlowOutcome::failed);
  CHECK(broke.error->code == Errc::insufficient_balance);
  FlowInfo nobody = w.runFlow(d.bb, token_move_deal, {"to=O=Nobody", "amount=1", "currency=CNY"});
  CHECK(errorOf(nobody).find("argument 'to': no party named 'O=Nobody'") != std::string::npos);
  // Redeem 50000 of B's 300000 with the bank.
  w.ok(d.bb, token_redeem_deal, {"issuer=" + bank, "amount=50000", "currency=CNY"});
  REQUIRE(w.quiet());
  CHECK(d.bb.balance("CNY") == 250000);
  // Redeeming with a party that did not issue them: the selection finds none.
  FlowInfo wrong = w.runFlow(d.bb, token_redeem_deal, {"issuer=" + coopC, "amount=1", "currency=CNY"});
  CHECK(wrong.error->code == Errc::insufficient_balance);
  for (TNode* n : {&d.a, &d.bb, &d.b}) CHECK(n->vault->checkConsistency().ok());
}

TEST_CASE("receivables: issue, finance, settle; the notary guards invoice numbers and double financing") {
  Deal d;
  World& w = d.w;
  const SecureHash issued = w.ok(d.a, receivable_issue_deal, {"buyer=" + coopB, "amount=50000", "currency=CNY",
                                                             "invoice=INV-1", "due=2024-06-30"});
  REQUIRE(w.quiet());
  CHECK(d.bb.vault->hasTransaction(issued));
  CHECK(d.a.states(receivable_state_type).size() == 1);
  CHECK(d.bb.states(receivable_state_type).size() == 1);
  // The registration is consumed at the notary.
  const auto reg = registrationTransaction(d.a.party().owningKey, "INV-1", w.notaryParty).value();
  CHECK(w.notary.consumed.count(StateRef{reg.id(), 0}) == 1);
  // The same number again: refused.
  FlowInfo again = w.runFlow(d.a, receivable_issue_deal, {"buyer=" + coopB, "amount=1", "currency=CNY",
                                                          "invoice=INV-1", "due=2024-06-30"});
  CHECK(again.outcome == vault::FlowOutcome::failed);
  CHECK(again.error->code == Errc::conflict);

  // Two financings started at once, with the bank and with C: one wins, the
  // other gets the notary's conflict.
  const FlowId f1 = w.start(d.a, receivable_finance_deal, {"invoice=INV-1", "financier=" + bank, "advance=45000"});
  const FlowId f2 = w.start(d.a, receivable_finance_deal, {"invoice=INV-1", "financier=" + coopC, "advance=40000"});
  FlowInfo r1 = w.await(d.a, f1), r2 = w.await(d.a, f2);
  REQUIRE(w.quiet());
  CHECK(int(r1.outcome == vault::FlowOutcome::ok) + int(r2.outcome == vault::FlowOutcome::ok) == 1);
  const FlowInfo& lost = r1.outcome == vault::FlowOutcome::ok ? r2 : r1;
  CHECK(lost.error->code == Errc::conflict);
  CHECK(errorOf(lost).find("consumed already") != std::string::npos);
  TNode& winner = r1.outcome == vault::FlowOutcome::ok ? d.b : d.c;
  TNode& loser = r1.outcome == vault::FlowOutcome::ok ? d.c : d.b;
  const int64_t advance = r1.outcome == vault::FlowOutcome::ok ? 45000 : 40000;
  CHECK(d.a.balance("CNY") == 100000 + advance);
  CHECK(winner.balance("CNY") == 1000000 - advance);
  CHECK(loser.balance("CNY") == 1000000);  // its locks were released, nothing spent
  // The buyer knows whom to pay.
  auto owed = d.bb.states(receivable_state_type);
  REQUIRE(owed.size() == 1);
  CHECK(decodeReceivable(owed[0].state.data).value().holder == winner.party().owningKey);
  CHECK(d.a.states(receivable_state_type).empty());

  // Financing it again: the seller no longer holds it.
  FlowInfo twice = w.runFlow(d.a, receivable_finance_deal, {"invoice=INV-1", "financier=" + bank, "advance=1"});
  CHECK(twice.error->code == Errc::not_found);

  // B settles with the holder.
  w.ok(d.bb, receivable_settle_deal, {"invoice=INV-1", "seller=" + coopA});
  REQUIRE(w.quiet());
  CHECK(d.bb.balance("CNY") == 150000);
  CHECK(winner.balance("CNY") == 1000000 - advance + 50000);
  CHECK(d.bb.states(receivable_state_type).empty());
  CHECK(winner.states(receivable_state_type).empty());
  FlowInfo settleTwice = w.runFlow(d.bb, receivable_settle_deal, {"invoice=INV-1", "seller=" + coopA});
  CHECK(settleTwice.error->code == Errc::not_found);
  for (auto& entry : w.nodes) CHECK_MESSAGE(entry.second->vault->checkConsistency().ok(), entry.first);
}

TEST_CASE("responders refuse what their node does not agree to, and the initiator sees why") {
  World w;
  DealPolicy thrifty;
  thrifty.invoice_amount_max_minor = 10000;
  TNode& b = w.add(bank, 1);
  TNode& a = w.add(coopA, 2);
  TNode& bb = w.add(coopB, 3, thrifty);
  w.ok(b, token_issue_deal, {"to=" + bank, "amount=1000000", "currency=CNY"});
  w.ok(a, member_issue_deal, {"member=" + coopB, "name=Sanya Tea Cooperative", "role=member", "days=30"});
  FlowInfo big = w.runFlow(a, receivable_issue_deal, {"buyer=" + coopB, "amount=50000", "currency=CNY",
                                                      "invoice=INV-9", "due=2023-12-31"});
  CHECK(big.outcome == vault::FlowOutcome::failed);
  CHECK(errorOf(big).find("above this buyer's limit") != std::string::npos);
  // Due in the past (the virtual clock is in November 2023).
  FlowInfo late = w.runFlow(a, receivable_issue_deal, {"buyer=" + coopB, "amount=500", "currency=CNY",
                                                       "invoice=INV-10", "due=2023-01-31"});
  CHECK(errorOf(late).find("argument 'due'") != std::string::npos);
  // A buyer without a credential.
  FlowInfo stranger = w.runFlow(bb, receivable_issue_deal, {"buyer=" + coopA, "amount=500", "currency=CNY",
                                                            "invoice=B-1", "due=2023-12-31"});
  CHECK(errorOf(stranger).find("holds no valid credential") != std::string::npos);
  w.ok(a, receivable_issue_deal, {"buyer=" + coopB, "amount=5000", "currency=CNY", "invoice=INV-11",
                                  "due=2023-12-31"});
  // The financier refuses an advance above 95%.
  FlowInfo greedy = w.runFlow(a, receivable_finance_deal, {"invoice=INV-11", "financier=" + bank, "advance=4900"});
  CHECK(greedy.outcome == vault::FlowOutcome::failed);
  CHECK(errorOf(greedy).find("above this financier's 95%") != std::string::npos);
  // The holder refuses (its check) an advance below 50%... which its own flow
  // would offer only by mistake: the financier pays what was offered.
  FlowInfo cheap = w.runFlow(a, receivable_finance_deal, {"invoice=INV-11", "financier=" + bank, "advance=100"});
  CHECK(cheap.outcome == vault::FlowOutcome::failed);
  CHECK(errorOf(cheap).find("below this holder's 50%") != std::string::npos);
  REQUIRE(w.quiet());
  CHECK(b.balance("CNY") == 1000000);
  CHECK(a.states(receivable_state_type).size() == 1);
}

TEST_CASE("a revoked credential: the notary refuses the invoice that references it") {
  Deal d;
  World& w = d.w;
  // C revokes B's credential; A (an observer of the issue) does not learn of it.
  w.ok(d.c, member_revoke_deal, {"member=" + coopB});
  REQUIRE(w.quiet());
  CHECK(d.bb.states(member_state_type).empty());
  CHECK(d.a.states(member_state_type).size() == 1);
  FlowInfo info = w.runFlow(d.a, receivable_issue_deal, {"buyer=" + coopB, "amount=500", "currency=CNY",
                                                         "invoice=INV-2", "due=2024-06-30"});
  CHECK(info.outcome == vault::FlowOutcome::failed);
  CHECK(info.error->code == Errc::conflict);
  FlowInfo none = w.runFlow(d.c, member_revoke_deal, {"member=" + coopB});
  CHECK(none.error->code == Errc::not_found);
}

TEST_CASE("a financier that crashes in the middle of financing resumes and completes") {
  Deal d;
  World& w = d.w;
  w.ok(d.a, receivable_issue_deal, {"buyer=" + coopB, "amount=50000", "currency=CNY", "invoice=INV-3",
                                    "due=2024-06-30"});
  const uint64_t before = w.notary.requests;
  const FlowId f = w.start(d.a, receivable_finance_deal, {"invoice=INV-3", "financier=" + bank, "advance=40000"});
  REQUIRE(w.run([&] { return w.notary.requests == before + 1; }));
  d.b.restart();
  FlowInfo info = w.await(d.a, f);
  REQUIRE_MESSAGE(info.outcome == vault::FlowOutcome::ok, errorOf(info));
  REQUIRE(w.quiet());
  // A call in flight at the crash runs again after it: the notary answers
  // the same transaction again, without a conflict.
  CHECK(w.notary.requests <= before + 2);
  CHECK(w.notary.conflicts == 0);
  CHECK(d.a.balance("CNY") == 140000);
  CHECK(d.b.balance("CNY") == 960000);
  CHECK(decodeReceivable(d.bb.states(receivable_state_type).at(0).state.data).value().holder ==
        d.b.party().owningKey);
  for (auto& entry : w.nodes) CHECK_MESSAGE(entry.second->vault->checkConsistency().ok(), entry.first);
}

TEST_CASE("an invoice number issued twice from a vault that does not know it: the notary refuses") {
  Deal d;
  World& w = d.w;
  w.ok(d.a, receivable_issue_deal, {"buyer=" + coopB, "amount=50000", "currency=CNY", "invoice=INV-7",
                                    "due=2024-06-30"});
  // The seller's key on a node with a fresh vault (a restored backup): its
  // vault has no trace of INV-7, so only the notary can stop it.
  const std::string backup = coopA + " (backup)";
  TNode& a2 = w.add(backup, 2);
  w.ok(d.c, member_issue_deal, {"member=" + coopB, "name=Sanya Tea Cooperative", "role=member", "days=365",
                                "observers=" + backup});
  const uint64_t conflicts = w.notary.conflicts;
  FlowInfo again = w.runFlow(a2, receivable_issue_deal, {"buyer=" + coopB, "amount=1", "currency=CNY",
                                                         "invoice=INV-7", "due=2024-06-30"});
  CHECK(again.outcome == vault::FlowOutcome::failed);
  CHECK(again.error->code == Errc::conflict);
  CHECK(errorOf(again).find("consumed already") != std::string::npos);
  CHECK(w.notary.conflicts == conflicts + 1);
  // Another number from the same vault is fine.
  w.ok(a2, receivable_issue_deal, {"buyer=" + coopB, "amount=1", "currency=CNY", "invoice=INV-8",
                                   "due=2024-06-30"});
}
