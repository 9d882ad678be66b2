// The mutual-aid loan flows on real LMDB vaults: a bank, four cooperatives
// and a notary, over an in-memory hub, with virtual time. Cooperatives A, B
// and C form a fund's committee (any 2 of 3); A and B contribute; D, a
// member of A, borrows, repays, and its credit record follows it.
#include "flows/loan_flows.h"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "contracts/contracts.h"
#include "flows/builtin_testing.h"
#include "flows/delivery.h"
#include "flows/flows_testing.h"
#include "ledger/testing.h"
#include "test/support/temp_dir.h"
#include "vault/flow_store.h"
#include "vault/message_store.h"
#include "vault/vault.h"

using namespace ccal;
using namespace ccal::flows;
using namespace ccal::flows::testing;
using namespace ccal::contracts;
using json = nlohmann::json;

namespace {

const std::string bank = "O=Bank of Hainan, L=Haikou, C=CN";
const std::string coopA = "O=Haikou Fishing Cooperative, L=Haikou, C=CN";
const std::string coopB = "O=Sanya Tea Cooperative, L=Sanya, C=CN";
const std::string coopC = "O=Wenchang Coconut Cooperative, L=Wenchang, C=CN";
const std::string coopD = "O=Qionghai Pepper Cooperative, L=Qionghai, C=CN";
const std::string notary_name = "O=Hainan Notary, L=Haikou, C=CN";
constexpr int64_t day = 86'400'000'000;

struct World;

struct TNode {
  std::string name;
  KeyPair key;
  World& world;
  LoanPolicy policy;
  ccal::testing::TempDir dir{"ccal-loan-flows-test"};
  ContractRegistry registry;
  FlowServices svc;
  std::unique_ptr<vault::Vault> vault;
  std::unique_ptr<vault::MessageStore> messages;
  std::unique_ptr<vault::FlowStore> flowStore;
  std::unique_ptr<HubLink> link;
  std::unique_ptr<Delivery> delivery;
  std::unique_ptr<FlowRuntime> runtime;
  std::map<FlowId, FlowInfo> finished;

  TNode(std::string n, uint8_t seed, World& w, LoanPolicy p)
      : name(std::move(n)), key(ccal::testing::testKey(seed)), world(w), policy(p) {
    registerDealContracts(registry);
  }
  ~TNode() {
    runtime.reset();
    delivery.reset();
    link.reset();
    vault.reset();
    flowStore.reset();
    messages.reset();
  }
  Key owningKey() const { return Key(key.publicKey()); }
  void open();
  void quiesce() {
    if (vault) vault->waitForWrites();  // vault writes queued by flows (their completions post back)
    delivery->waitForStore();
    runtime->waitForStore();
  }
  std::vector<vault::VaultState> states(std::string_view type) const {
    return vault->query(vault::Query(vault::Criteria::stateType(std::string(type)))).value().states;
  }
  // Unconsumed tokens of `owner` in this vault.
  int64_t tokensOf(const Key& owner) const {
    int64_t total = 0;
    for (const auto& s : states(token_state_type)) {
      auto t = decodeToken(s.state.data).value();
      if (t.owner == owner && t.currency == "CNY") total += t.amountMinor;
    }
    return total;
  }
  std::optional<Loan> loan(const std::string& id_hex) const {
    for (const auto& s : states(loan_state_type)) {
      auto l = decodeLoan(s.state.data).value();
      if (l.loanId.hex() == id_hex) return l;
    }
    return std::nullopt;
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
  TNode& add(const std::string& name, uint8_t seed, LoanPolicy policy = {}) {
    hub.names.insert(name);
    auto node = std::make_unique<TNode>(name, seed, *this, policy);
    directory.parties[name] = Party{name, node->owningKey()};
    node->open();
    TNode& ref = *node;
    nodes[name] = std::move(node);
    return ref;
  }
  bool run(const std::function<bool()>& pred, int64_t deadline_micros = 600'000'000) {
    return executor.runUntil(pred, deadline_micros, [this] {
      for (auto& entry : nodes) entry.second->quiesce();
    });
  }
  FlowInfo runFlow(TNode& n, std::string_view flow, const std::vector<std::string>& kvs) {
    auto args = parseDealArgs(flow, kvs);
    REQUIRE_MESSAGE(args.ok(), (args ? "" : args.error().message));
    auto id = n.runtime->startFlow(flow, encodeDealArgs(*args));
    REQUIRE(id);
    const bool done = run([&] { return n.finished.count(*id) > 0; });
    REQUIRE_MESSAGE(done, flow << " did not finish");
    return n.finished.at(*id);
  }
  json ok(TNode& n, std::string_view flow, const std::vector<std::string>& kvs) {
    FlowInfo info = runFlow(n, flow, kvs);
    REQUIRE_MESSAGE(info.outcome == vault::FlowOutcome::ok, flow << " failed: " << (info.error ? info.error->message : ""));
    // The loan flows answer JSON; the deal flows a transaction id (discarded here).
    return json::parse(info.result.begin(), info.result.end(), nullptr, false);
  }
  std::string fails(TNode& n, std::string_view flow, const std::vector<std::string>& kvs) {
    FlowInfo info = runFlow(n, flow, kvs);
    REQUIRE_MESSAGE(info.outcome != vault::FlowOutcome::ok, flow << " succeeded, expected a failure");
    return info.error ? info.error->message : "(no error)";
  }
  // Lets virtual time pass.
  void advance(int64_t micros) {
    bool fired = false;
    executor.runAfter(micros, [&fired] { fired = true; });
    REQUIRE(run([&] { return fired; }, micros + 1));
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
  svc.identity = Party{name, owningKey()};
  svc.keys = {key};
  svc.vault = vault.get();
  svc.contracts = &registry;
  const Directory* d = &world.directory;
  svc.partyByName = [d](std::string_view n) { return d->byName(n); };
  svc.partyByKey = [d](const Key& k) { return d->byKey(k); };
  svc.notary = &world.notary;
  addDealChecks(svc);
  // This node's own loan policy replaces the default one addDealChecks set.
  addLoanChecks(svc, policy);
  REQUIRE(registerBuiltinFlows(*runtime, svc).ok());
  DealConfig config;
  config.notary = notary_name;
  REQUIRE(registerDealFlows(*runtime, svc, config).ok());
  FlowRuntime::Hooks hooks;
  hooks.finished = [this](const FlowInfo& info) { finished[info.id] = info; };
  runtime->setHooks(std::move(hooks));
  REQUIRE(runtime->start().ok());
  REQUIRE(delivery->start().ok());
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// Tokens for everyone, D's credential from A, and the fund of A, B and C
// (2 of 3) that D may see, with A's and B's contributions.
struct Pool {
  World w;
  TNode& bk = w.add(bank, 1);
  TNode& a = w.add(coopA, 2);
  TNode& b = w.add(coopB, 3);
  TNode& c = w.add(coopC, 4);
  TNode& d = w.add(coopD, 5);
  Key fkey;
  std::string fund = "Hainan Mutual Aid";

  Pool() {
    for (const auto& to : {coopA, coopB, coopD}) {
      w.ok(bk, token_issue_deal, {"to=" + to, "amount=1000000", "currency=CNY"});
    }
    w.ok(a, member_issue_deal, {"member=" + coopD, "name=Qionghai Pepper Cooperative", "role=member", "days=365"});
    json created = w.ok(a, loan_fund_create_deal,
                        {"name=" + fund, "committee=" + coopA + ";" + coopB + ";" + coopC, "threshold=2",
                         "currency=CNY", "principal_max=500000", "interest_min_bp=0", "interest_max_bp=1200",
                         "term_min_days=30", "term_max_days=720", "members=" + coopD});
    std::vector<Key> committee{a.owningKey(), b.owningKey(), c.owningKey()};
    std::sort(committee.begin(), committee.end());
    fkey = fundKey(committee, 2).value();
    CHECK(created["fund_key"] == fkey.hash().hex());
    w.ok(a, loan_fund_contribute_deal, {"fund=" + fund, "amount=300000"});
    w.ok(b, loan_fund_contribute_deal, {"fund=" + fund, "amount=200000"});
  }
  std::string request(const std::string& amount = "100000") {
    json r = w.ok(d, loan_request_deal,
                  {"fund=" + fund, "amount=" + amount, "interest_bp=600", "term_days=90", "instalments=3"});
    return r["loan_id"];
  }
};

}  // namespace

TEST_CASE("loan flow arguments are in the deal table and validated before a start") {
  for (const auto& spec : loanFlowSpecs()) CHECK(findDealFlow(spec.flow) != nullptr);
  CHECK(loanFlowSpecs().size() == 7);
  auto err = [](std::string_view flow, const std::vector<std::string>& kvs) {
    auto r = parseDealArgs(flow, kvs);
    REQUIRE_FALSE(r);
    return r.error().message;
  };
  CHECK(contains(err(loan_request_deal, {"fund=F", "amount=1", "interest_bp=5", "term_days=90"}),
                 "missing argument 'instalments'"));
  CHECK(contains(err(loan_fund_contribute_deal, {"fund=F", "amount=-5"}), "argument 'amount'"));
  CHECK(contains(err(loan_approve_deal, {"loan=ab", "approvers=A;;B"}), "argument 'approvers'"));
  CHECK(parseDealArgs(loan_repay_deal, {"loan=ab"}).ok());
}

TEST_CASE("loan flows: a fund, two contributions, a reviewed request, k-of-n approval, disbursement, "
          "instalments and the credit report") {
  Pool p;
  World& w = p.w;
  // The fund: every committee member and the contributors hold it; the fund
  // key owns the contributions, which every committee member's vault sees.
  for (TNode* n : {&p.a, &p.b, &p.c, &p.d}) {
    auto funds = n->states(fund_state_type);
    REQUIRE(funds.size() == 1);
    CHECK(fundContributed(decodeFund(funds[0].state.data).value()) == 500'000);
  }
  for (TNode* n : {&p.a, &p.b, &p.c}) CHECK(n->tokensOf(p.fkey) == 500'000);
  CHECK(p.a.tokensOf(p.a.owningKey()) == 700'000);
  // A committee member's own payments never pick the fund's tokens.
  w.ok(p.a, token_move_deal, {"to=" + coopC, "amount=700000", "currency=CNY"});
  CHECK(p.a.tokensOf(p.fkey) == 500'000);

  // The request: every committee member reviews it with its own record.
  json req = w.ok(p.d, loan_request_deal,
                  {"fund=" + p.fund, "amount=100000", "interest_bp=600", "term_days=90", "instalments=3"});
  const std::string loan = req["loan_id"];
  REQUIRE(req["reviews"].size() == 3);
  for (const auto& r : req["reviews"]) {
    CHECK(r["would_approve"] == true);
    CHECK(r["credit_report"]["loans_taken"] == 0);
  }
  // Outside the fund's limits: the contract refuses.
  CHECK(contains(w.fails(p.d, loan_request_deal, {"fund=" + p.fund, "amount=600000", "interest_bp=600",
                                                  "term_days=90", "instalments=3"}),
                 "outside_limits"));
  CHECK(contains(w.fails(p.d, loan_request_deal, {"fund=" + p.fund, "amount=1000", "interest_bp=12.5",
                                                  "term_days=90", "instalments=3"}),
                 "argument 'interest_bp'"));
  // No credential: C cannot borrow.
  CHECK(contains(w.fails(p.c, loan_request_deal, {"fund=" + p.fund, "amount=1000", "interest_bp=600",
                                                  "term_days=90", "instalments=3"}),
                 "credential"));

  // Approval by 1 of 3 when 2 are needed: refused, the loan stays requested.
  CHECK(contains(w.fails(p.a, loan_approve_deal, {"loan=" + loan}), "approvals_below_threshold"));
  CHECK(p.a.loan(loan)->status == LoanStatus::requested);
  // Disbursing an unapproved loan: refused.
  CHECK(contains(w.fails(p.a, loan_disburse_deal, {"loan=" + loan}), "not approved"));
  // 2 of 3.
  w.ok(p.a, loan_approve_deal, {"loan=" + loan, "approvers=" + coopB});
  for (TNode* n : {&p.a, &p.b, &p.c, &p.d}) CHECK(n->loan(loan)->status == LoanStatus::approved);
  // Only an approver disburses.
  CHECK(contains(w.fails(p.c, loan_disburse_deal, {"loan=" + loan}), "did not approve"));
  w.ok(p.b, loan_disburse_deal, {"loan=" + loan});
  CHECK(p.d.tokensOf(p.d.owningKey()) == 1'100'000);
  for (TNode* n : {&p.a, &p.b, &p.c}) CHECK(n->tokensOf(p.fkey) == 400'000);
  CHECK(p.d.loan(loan)->status == LoanStatus::disbursed);

  // Two instalments on time, with the agreed interest (106000 over 3).
  json r1 = w.ok(p.d, loan_repay_deal, {"loan=" + loan});
  CHECK(r1["event"] == "repayment_on_time");
  CHECK(r1["repaid"] == 35'333);
  w.advance(20 * day);
  json r2 = w.ok(p.d, loan_repay_deal, {"loan=" + loan});
  CHECK(r2["event"] == "repayment_on_time");
  CHECK(r2["repaid"] == 70'666);
  for (TNode* n : {&p.a, &p.b, &p.c}) CHECK(n->tokensOf(p.fkey) == 400'000 + 70'666);
  // The borrower cannot overpay; only the borrower repays.
  CHECK(contains(w.fails(p.d, loan_repay_deal, {"loan=" + loan, "amount=40000"}), "argument 'amount'"));
  CHECK(contains(w.fails(p.a, loan_repay_deal, {"loan=" + loan}), "not the borrower"));

  // The credit report, from any committee member's vault and the borrower's.
  for (TNode* n : {&p.a, &p.b, &p.c, &p.d}) {
    CreditReport r = creditReportFromVault(*n->vault, p.d.owningKey()).value();
    CHECK(r.loans_taken == 1);
    CHECK(r.repaid_on_time == 2);
    CHECK(r.late == 0);
    CHECK(r.defaulted == 0);
    CHECK(r.outstanding_minor.at("CNY") == 106'000 - 70'666);
  }
  CHECK(p.c.states(credit_record_state_type).size() == 2);

  // The last instalment, late: after its due date (90 days).
  w.advance(75 * day);
  json r3 = w.ok(p.d, loan_repay_deal, {"loan=" + loan});
  CHECK(r3["event"] == "late_payment");
  CHECK(r3["status"] == "repaid");
  CreditReport r = creditReportFromVault(*p.b.vault, p.d.owningKey()).value();
  CHECK(r.late == 1);
  CHECK(r.settled == 1);
  CHECK(r.outstanding_minor.count("CNY") == 0);
  // A new request shows the committee that record.
  json again = w.ok(p.d, loan_request_deal,
                    {"fund=" + p.fund, "amount=50000", "interest_bp=600", "term_days=90", "instalments=3"});
  CHECK(again["reviews"][0]["credit_report"]["loans_taken"] == 1);
  CHECK(again["reviews"][0]["credit_report"]["late"] == 1);
  CHECK(again["reviews"][0]["credit_report"]["repaid_on_time"] == 2);
}

TEST_CASE("loan flows: default after the due date by k of n, and the committee refuses the next loan") {
  Pool p;
  World& w = p.w;
  const std::string loan = p.request();
  w.ok(p.c, loan_approve_deal, {"loan=" + loan, "approvers=" + coopA});
  w.ok(p.c, loan_disburse_deal, {"loan=" + loan});
  // Not overdue yet.
  CHECK(contains(w.fails(p.a, loan_default_deal, {"loan=" + loan}), "not overdue"));
  w.advance(31 * day);
  // Only an approver declares the default; the other approver signs.
  CHECK(contains(w.fails(p.b, loan_default_deal, {"loan=" + loan}), "did not approve"));
  json def = w.ok(p.a, loan_default_deal, {"loan=" + loan});
  CHECK(def["outstanding"] == 106'000);
  CHECK(p.d.loan(loan)->status == LoanStatus::defaulted);
  CHECK(contains(w.fails(p.d, loan_repay_deal, {"loan=" + loan}), "not disbursed"));
  CreditReport r = creditReportFromVault(*p.d.vault, p.d.owningKey()).value();
  CHECK(r.defaulted == 1);
  CHECK(r.outstanding_minor.at("CNY") == 106'000);

  // The next request: every reviewer sees the default and would refuse;
  // an approval is refused by the responder's check.
  json req = w.ok(p.d, loan_request_deal,
                  {"fund=" + p.fund, "amount=1000", "interest_bp=0", "term_days=30", "instalments=1"});
  for (const auto& rv : req["reviews"]) {
    CHECK(rv["would_approve"] == false);
    CHECK(rv["credit_report"]["defaulted"] == 1);
  }
  const std::string msg = w.fails(p.a, loan_approve_deal, {"loan=" + std::string(req["loan_id"]), "approvers=" + coopB});
  CHECK(contains(msg, "refused"));
  CHECK(contains(msg, "1 defaults"));
}

TEST_CASE("loan flows: responders refuse a fund their node does not agree to") {
  World w;
  TNode& a = w.add(coopA, 2);
  w.add(coopB, 3);
  w.add(coopC, 4, LoanPolicy{1'000, 0, true});
  // 1 of 3 is no majority.
  const std::string minority = w.fails(a, loan_fund_create_deal,
                                       {"name=F", "committee=" + coopA + ";" + coopB + ";" + coopC, "threshold=1",
                                        "currency=CNY", "principal_max=500", "interest_min_bp=0",
                                        "interest_max_bp=100", "term_min_days=30", "term_max_days=60"});
  CHECK(contains(minority, "majority"));
  // C's limit is 1000.
  CHECK(contains(w.fails(a, loan_fund_create_deal,
                         {"name=F", "committee=" + coopA + ";" + coopB + ";" + coopC, "threshold=2", "currency=CNY",
                          "principal_max=5000", "interest_min_bp=0", "interest_max_bp=100", "term_min_days=30",
                          "term_max_days=60"}),
                 "principal limit"));
  // Argument errors name the field.
  CHECK(contains(w.fails(a, loan_fund_create_deal,
                         {"name=F", "committee=" + coopB + ";" + coopC, "threshold=2", "currency=CNY",
                          "principal_max=5000", "interest_min_bp=0", "interest_max_bp=100", "term_min_days=30",
                          "term_max_days=60"}),
                 "argument 'committee'"));
  CHECK(contains(w.fails(a, loan_fund_create_deal,
                         {"name=F", "committee=" + coopA + ";" + coopB, "threshold=3", "currency=CNY",
                          "principal_max=5000", "interest_min_bp=0", "interest_max_bp=100", "term_min_days=30",
                          "term_max_days=60"}),
                 "argument 'threshold'"));
  CHECK(contains(w.fails(a, loan_fund_contribute_deal, {"fund=Nope", "amount=5"}), "argument 'fund'"));
  CHECK(contains(w.fails(a, loan_approve_deal, {"loan=xyz"}), "argument 'loan'"));
  w.ok(a, loan_fund_create_deal,
       {"name=F", "committee=" + coopA + ";" + coopB + ";" + coopC, "threshold=2", "currency=CNY",
        "principal_max=500", "interest_min_bp=0", "interest_max_bp=100", "term_min_days=30", "term_max_days=60"});
  // A contribution without tokens.
  CHECK(contains(w.fails(a, loan_fund_contribute_deal, {"fund=F", "amount=5"}), "insufficient balance"));
}
