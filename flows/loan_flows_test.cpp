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
#include "flows/deal_testing.h"

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
constexpr int64_t day = 86'400'000'000;

using TNode = DealTestNode;

// The loan tests' world: each node applies its own loan policy; the loan
// flows answer JSON.
struct World : DealTestWorld {
  TNode& add(const std::string& name, uint8_t seed, LoanPolicy policy = {}) {
    // This node's own loan policy replaces the default one addDealChecks set.
    return DealTestWorld::add(name, seed, {}, [policy](FlowServices& s) { addLoanChecks(s, policy); });
  }
  // The flow succeeds; its JSON result (the deal flows answer a transaction id: discarded here).
  json ok(TNode& n, std::string_view flow, const std::vector<std::string>& kvs) {
    FlowInfo info = okInfo(n, flow, kvs);
    return json::parse(info.result.begin(), info.result.end(), nullptr, false);
  }
};

// The loan `id_hex` in `n`'s vault, if it holds it unconsumed.
std::optional<Loan> loanOf(const TNode& n, const std::string& id_hex) {
  for (const auto& s : n.states(loan_state_type)) {
    auto l = decodeLoan(s.state.data).value();
    if (l.loanId.hex() == id_hex) return l;
  }
  return std::nullopt;
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
  CHECK(loanOf(p.a, loan)->status == LoanStatus::requested);
  // Disbursing an unapproved loan: refused.
  CHECK(contains(w.fails(p.a, loan_disburse_deal, {"loan=" + loan}), "not approved"));
  // 2 of 3.
  w.ok(p.a, loan_approve_deal, {"loan=" + loan, "approvers=" + coopB});
  for (TNode* n : {&p.a, &p.b, &p.c, &p.d}) CHECK(loanOf(*n, loan)->status == LoanStatus::approved);
  // Only an approver disburses.
  CHECK(contains(w.fails(p.c, loan_disburse_deal, {"loan=" + loan}), "did not approve"));
  w.ok(p.b, loan_disburse_deal, {"loan=" + loan});
  CHECK(p.d.tokensOf(p.d.owningKey()) == 1'100'000);
  for (TNode* n : {&p.a, &p.b, &p.c}) CHECK(n->tokensOf(p.fkey) == 400'000);
  CHECK(loanOf(p.d, loan)->status == LoanStatus::disbursed);

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
  CHECK(loanOf(p.d, loan)->status == LoanStatus::defaulted);
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
