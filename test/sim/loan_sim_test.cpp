// The mutual-aid loan flows (flows/loan_flows.h) under the simulator: five
// members -- a bank and four cooperatives -- each a node with a real LMDB
// vault, Delivery, FlowStore and FlowRuntime, and a notary that keeps a real
// consumed-state map. A, B and C form a fund's committee (any 2 of 3); A and
// B contribute; D, a member of A, requests a loan that the committee
// reviews; an approval by 1 of 3 is refused, one by 2 of 3 passes; the loan
// is disbursed from the fund's tokens and D repays two instalments. With
// faults, members crash and restart and the network loses, duplicates and
// reorders frames from the approval on. Invariants once the network heals:
// every flow ends as expected; every committee member's vault holds the
// same fund balance and the same loan; tokens are conserved; every vault's
// credit report of D is the same (one loan, two on-time repayments, the
// rest outstanding) and every vault passes its consistency check.
//
// CCAL_SIM_SEED=<n> replays one seed, CCAL_SIM_SEEDS=<count> runs more.

#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "contracts/contracts.h"
#include "flows/deal_flows.h"
#include "flows/loan_flows.h"
#include "test/sim/deal_world.h"

using namespace ccal;
using namespace ccal::flows;
using namespace ccal::contracts;

namespace {

const std::string bank = "O=Bank of Hainan, L=Haikou, C=CN";
const std::string coopA = "O=Haikou Fishing Cooperative, L=Haikou, C=CN";
const std::string coopB = "O=Sanya Tea Cooperative, L=Sanya, C=CN";
const std::string coopC = "O=Wenchang Coconut Cooperative, L=Wenchang, C=CN";
const std::string coopD = "O=Qionghai Pepper Cooperative, L=Qionghai, C=CN";
const std::vector<std::string> members = {bank, coopA, coopB, coopC, coopD};
const std::string fund_name = "Hainan Mutual Aid";

// The loan scenario's world: the shared simulated network plus the loan
// flows' JSON results.
class World : public sim::DealWorld {
 public:
  explicit World(uint64_t seed) : DealWorld(seed, members) {}

  // The flow's JSON result, or a failure recorded (the loan flows answer
  // JSON; the deal flows a transaction id: null here).
  std::optional<nlohmann::json> succeeded(const std::string& label) {
    auto info = succeededInfo(label);
    if (!info) return std::nullopt;
    auto j = nlohmann::json::parse(info->result.begin(), info->result.end(), nullptr, false);
    return j.is_discarded() ? nlohmann::json() : j;
  }
};

struct Outcome {
  std::vector<std::string> failures;
  uint64_t crashes = 0;
};

constexpr int64_t issued = 1'000'000, contribution_a = 300'000, contribution_b = 200'000, principal = 100'000;

Outcome runSeed(uint64_t seed, bool faults) {
  World world(seed);
  sim::Simulation& sim = world.sim;
  Outcome out;
  auto finish = [&] {
    out.crashes = sim.crashes();
    out.failures = world.failures;
    return out;
  };
  // Runs until every started flow ends (a phase), with faults when asked.
  auto phase = [&](const char* what, bool with_faults) {
    if (with_faults) world.faultPhase(3'000'000);
    if (!sim.runUntil([&] { return world.allDone(); }, 600'000'000)) world.fail(std::string(what) + " did not end");
  };
  const auto s = [](int64_t v) { return std::to_string(v); };

  for (const auto& to : {coopA, coopB, coopD}) {
    world.start("issue " + to, bank, token_issue_deal, {"to=" + to, "amount=" + s(issued), "currency=CNY"});
  }
  world.start("credential D", coopA, member_issue_deal,
              {"member=" + coopD, "name=Qionghai Pepper", "role=member", "days=365"});
  world.start("fund", coopA, loan_fund_create_deal,
              {"name=" + fund_name, "committee=" + coopA + ";" + coopB + ";" + coopC, "threshold=2", "currency=CNY",
               "principal_max=500000", "interest_min_bp=0", "interest_max_bp=1200", "term_min_days=30",
               "term_max_days=720", "members=" + coopD});
  phase("the set-up", false);
  for (const auto& l : {"issue " + coopA, "issue " + coopB, "issue " + coopD, std::string("credential D"),
                        std::string("fund")}) {
    world.succeeded(l);
  }
  if (!world.failures.empty()) return finish();

  world.start("contribute A", coopA, loan_fund_contribute_deal, {"fund=" + fund_name, "amount=" + s(contribution_a)});
  phase("A's contribution", false);
  world.start("contribute B", coopB, loan_fund_contribute_deal, {"fund=" + fund_name, "amount=" + s(contribution_b)});
  phase("B's contribution", false);
  world.start("request", coopD, loan_request_deal,
              {"fund=" + fund_name, "amount=" + s(principal), "interest_bp=600", "term_days=90", "instalments=3"});
  phase("the request", false);
  world.succeeded("contribute A");
  world.succeeded("contribute B");
  auto req = world.succeeded("request");
  if (!req) return finish();
  const std::string loan = (*req)["loan_id"];
  if ((*req)["reviews"].size() != 3) world.fail("the request has " + s((*req)["reviews"].size()) + " reviews, want 3");

  // 1 of 3 refused; 2 of 3 approve; B disburses; D repays twice.
  world.start("approve 1 of 3", coopC, loan_approve_deal, {"loan=" + loan});
  phase("the approval by one", faults);
  world.failedWith("approve 1 of 3", "approvals_below_threshold");
  world.start("approve 2 of 3", coopA, loan_approve_deal, {"loan=" + loan, "approvers=" + coopB});
  phase("the approval by two", faults);
  if (!world.succeeded("approve 2 of 3")) return finish();
  world.start("disburse", coopB, loan_disburse_deal, {"loan=" + loan});
  phase("the disbursement", faults);
  if (!world.succeeded("disburse")) return finish();
  for (int i = 1; i <= 2; ++i) {
    const std::string label = "repay " + s(i);
    world.start(label, coopD, loan_repay_deal, {"loan=" + loan});
    phase(label.c_str(), faults);
    if (auto r = world.succeeded(label); r && (*r)["event"] != "repayment_on_time") {
      world.fail(label + " recorded " + std::string((*r)["event"]));
    }
  }
  if (!world.failures.empty()) return finish();

  // The vaults agree.
  std::vector<Key> committee{world.keyOf(coopA), world.keyOf(coopB), world.keyOf(coopC)};
  std::sort(committee.begin(), committee.end());
  const Key fkey = fundKey(committee, 2).value();
  const int64_t repaid = 70'666;  // two of three instalments of 106000
  const int64_t in_fund = contribution_a + contribution_b - principal + repaid;
  for (const auto& name : {coopA, coopB, coopC}) {
    if (world.tokensOf(name, fkey) != in_fund) {
      world.fail("'" + name + "' sees " + s(world.tokensOf(name, fkey)) + " CNY in the fund, want " + s(in_fund));
    }
  }
  const std::map<std::string, int64_t> own = {{coopA, issued - contribution_a},
                                              {coopB, issued - contribution_b},
                                              {coopD, issued + principal - repaid}};
  int64_t total = in_fund;
  for (const auto& [name, want] : own) {
    const int64_t have = world.tokensOf(name, world.keyOf(name));
    total += have;
    if (have != want) world.fail("'" + name + "' holds " + s(have) + " CNY, want " + s(want));
  }
  if (total != 3 * issued) world.fail("tokens are not conserved: " + s(total));
  for (const auto& name : {coopA, coopB, coopC, coopD}) {
    auto loans = world.unconsumed(name, loan_state_type);
    if (loans.size() != 1) {
      world.fail("'" + name + "' holds " + s(loans.size()) + " live loans, want 1");
      continue;
    }
    auto l = decodeLoan(loans[0].state.data);
    if (!l || l->status != LoanStatus::disbursed || l->repaidMinor != repaid) {
      world.fail("'" + name + "' holds the loan in another state");
    }
    auto r = creditReportFromVault(world.node(name)->vault(), world.keyOf(coopD));
    if (!r || r->loans_taken != 1 || r->repaid_on_time != 2 || r->late != 0 || r->defaulted != 0 ||
        r->outstanding_minor.at("CNY") != 106'000 - repaid) {
      world.fail("'" + name + "''s credit report of D: " + (r ? describeCreditReport(*r) : r.error().message));
    }
  }
  world.checkVaults();
  return finish();
}

}  // namespace

TEST_CASE("loan sim: a fund, contributions, a reviewed request, k-of-n approval, disbursement, instalments") {
  const uint64_t seed = sim::seedFromEnvironment().value_or(11);
  sim::reportSeed(seed, runSeed(seed, false).failures);
}

TEST_CASE("loan sim: approval, disbursement and instalments with crashes and a lossy network") {
  const std::vector<uint64_t> seeds = sim::faultSeeds(2);
  uint64_t crashes = 0;
  for (uint64_t seed : seeds) {
    Outcome out = runSeed(seed, true);
    crashes += out.crashes;
    sim::reportSeed(seed, out.failures);
  }
  MESSAGE(seeds.size() << " seeds, " << crashes << " crashes");
}
