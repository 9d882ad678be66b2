// The letter-of-credit flows (flows/lc_flows.h) under the simulator: a bank
// (issuing and advising), cooperative A (applicant), cooperative B
// (beneficiary) and a regulator that the observer rules name for ccal.lc,
// each a node with a real LMDB vault, Delivery, FlowStore and FlowRuntime,
// and a notary that keeps a real consumed-state map. The lifecycle:
// application, issue, advice; an amendment the beneficiary accepts; one it
// rejects and one it ignores (its presentation drops it); a discrepant
// presentation, the applicant's waiver, the bank's payment in tokens; a
// second LC left to expire, whose late presentation the contract refuses
// and which the bank then closes alone. With faults, members crash and
// restart and the network loses, duplicates and reorders frames while the
// presentation, examination, waiver and payment run. Invariants: every
// flow ends as expected; every party and the regulator hold the same LC at
// each step; the beneficiary is paid exactly the drawing; every vault passes
// its consistency check.
//
// CCAL_SIM_SEED=<n> replays one seed, CCAL_SIM_SEEDS=<count> runs more.

#include <doctest/doctest.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "contracts/contracts.h"
#include "flows/deal_flows.h"
#include "flows/lc_flows.h"
#include "test/sim/deal_world.h"

using namespace ccal;
using namespace ccal::flows;
using namespace ccal::contracts;

namespace {

const std::string bank = "O=Bank of Hainan, L=Haikou, C=CN";
const std::string coopA = "O=Haikou Fishing Cooperative, L=Haikou, C=CN";
const std::string coopB = "O=Sanya Tea Cooperative, L=Sanya, C=CN";
const std::string regulator = "O=Hainan Regulator, L=Haikou, C=CN";
const std::vector<std::string> members = {bank, coopA, coopB, regulator};

constexpr int64_t day_micros = 86'400'000'000LL;

// The LC scenario's world: the shared simulated network (the regulator
// observes every ccal.lc transaction) plus its own checks.
class World : public sim::DealWorld {
 public:
  explicit World(uint64_t seed)
      : DealWorld(seed, members, {ObserverRule{regulator, {std::string(lc_contract)}, {}, false}}) {}

  // The one live LC of `number` in `name`'s vault (a failure otherwise).
  std::optional<LetterOfCredit> lc(const std::string& name, const std::string& number) {
    const std::string type(lc_state_type);
    auto page = node(name)->vault().query(
        vault::Query(vault::Criteria::field(type, "lc", vault::FieldOp::eq, {number})));
    if (!page || page->states.size() != 1) {
      fail("'" + name + "' holds " + (page ? std::to_string(page->states.size()) : page.error().message) +
           " live LCs " + number);
      return std::nullopt;
    }
    auto lc = decodeLetterOfCredit(page->states[0].state.data);
    if (!lc) fail("'" + name + "': " + lc.error().message);
    return lc ? std::optional<LetterOfCredit>(*lc) : std::nullopt;
  }
  // Every party and the regulator hold the same LC, at `status`.
  std::optional<LetterOfCredit> agreed(const std::string& number, LcStatus status) {
    std::optional<LetterOfCredit> first;
    for (const auto& name : members) {
      auto held = lc(name, number);
      if (!held) continue;
      if (held->status != status) {
        fail("'" + name + "' holds " + number + " " + lcStatusName(held->status) + ", want " + lcStatusName(status));
      }
      if (!first) {
        first = held;
      } else if (!(*first == *held)) {
        fail("'" + name + "' holds another version of " + number);
      }
    }
    return first;
  }
};

std::string docOf(const std::string& type) {
  return type + ":" + SecureHash::of(Bytes(type.begin(), type.end())).hex();
}

struct Outcome {
  std::vector<std::string> failures;
  uint64_t crashes = 0;
};

constexpr int64_t lc_amount = 100'000, amended_amount = 150'000;

Outcome runSeed(uint64_t seed, bool faults) {
  World world(seed);
  sim::Simulation& sim = world.sim;
  Outcome out;
  // One flow at a time: each step needs the one before. `faulty` steps run
  // while members crash and the network misbehaves (when `faults`).
  auto step = [&](const std::string& label, const std::string& member, std::string_view flow,
                  std::vector<std::string> kvs, bool faulty = false) {
    if (!world.failures.empty()) return false;
    world.startSoon(label, member, flow, std::move(kvs));
    if (faults && faulty) world.faultPhase(1'500'000);
    if (!world.settle(label)) {
      world.fail(label + " did not end; still running: " + world.running());
      return false;
    }
    return true;
  };
  auto ok = [&](const std::string& label, const std::string& member, std::string_view flow,
                std::vector<std::string> kvs, bool faulty = false) {
    return step(label, member, flow, std::move(kvs), faulty) && world.succeeded(label);
  };
  auto done = [&] {
    out.failures = world.failures;
    out.crashes = sim.crashes();
    return out;
  };

  // Sim time starts 2024-01-01. LC-1: 1000.00 CNY, expiring at the end of 2024-03-31.
  if (!ok("apply", coopA, lc_apply_deal,
          {"lc=LC-1", "bank=" + bank, "beneficiary=" + coopB, "amount=" + std::to_string(lc_amount), "currency=CNY",
           "expiry=2024-03-31", "shipment=2024-03-15", "documents=invoice;bill_of_lading;insurance"}) ||
      !ok("issue", bank, lc_issue_deal, {"lc=LC-1"}) || !ok("advise", bank, lc_advise_deal, {"lc=LC-1"})) {
    return done();
  }
  world.agreed("LC-1", LcStatus::advised);

  // An amendment with the beneficiary's consent.
  if (!ok("propose 1", coopA, lc_amend_deal, {"lc=LC-1", "action=propose", "amount=" + std::to_string(amended_amount)})) {
    return done();
  }
  if (auto lc = world.agreed("LC-1", LcStatus::advised); lc && (!lc->amendment || lc->terms.amountMinor != lc_amount)) {
    world.fail("a proposed amendment changed the terms before the beneficiary's consent");
  }
  if (!ok("accept 1", coopB, lc_amend_deal, {"lc=LC-1", "action=accept"})) return done();
  if (auto lc = world.agreed("LC-1", LcStatus::advised); lc && (lc->amendment || lc->terms.amountMinor != amended_amount)) {
    world.fail("the accepted amendment did not take effect");
  }
  // Without it: rejected; then proposed again and ignored.
  if (!ok("propose 2", coopA, lc_amend_deal, {"lc=LC-1", "action=propose", "expiry=2024-06-30"}) ||
      !ok("reject 2", coopB, lc_amend_deal, {"lc=LC-1", "action=reject"}) ||
      !ok("propose 3", coopA, lc_amend_deal, {"lc=LC-1", "action=propose", "amount=999999"})) {
    return done();
  }
  if (auto lc = world.agreed("LC-1", LcStatus::advised);
      lc && (lc->terms.amountMinor != amended_amount || lc->terms.expiryMicros != parseDateMicros("2024-04-01").value())) {
    world.fail("an amendment without the beneficiary's consent changed the terms");
  }

  // A discrepant presentation (no insurance document), a waiver, payment.
  if (!ok("present", coopB, lc_present_deal,
          {"lc=LC-1", "documents=" + docOf("invoice") + ";" + docOf("bill_of_lading")}, true) ||
      !ok("examine", bank, lc_examine_deal, {"lc=LC-1", "result=discrepant", "reasons=insurance document missing"},
          true) ||
      !ok("waive", coopA, lc_waive_deal, {"lc=LC-1"}, true) || !ok("pay", bank, lc_pay_deal, {"lc=LC-1"}, true)) {
    return done();
  }
  if (auto lc = world.agreed("LC-1", LcStatus::paid)) {
    if (lc->amendment) world.fail("the ignored amendment survived the presentation");
    if (lc->terms.amountMinor != amended_amount || lc->paidMinor != amended_amount) {
      world.fail("LC-1 paid " + std::to_string(lc->paidMinor) + " of " + std::to_string(lc->terms.amountMinor));
    }
    if (lc->discrepancies != std::vector<std::string>{"insurance document missing"}) world.fail("the reasons were lost");
  }
  if (world.balance(coopB) != amended_amount) {
    world.fail("the beneficiary holds " + std::to_string(world.balance(coopB)) + " CNY, want " +
               std::to_string(amended_amount));
  }
  if (world.balance(regulator) != 0) world.fail("the regulator owns tokens");
  if (!ok("close 1", bank, lc_close_deal, {"lc=LC-1"})) return done();
  world.agreed("LC-1", LcStatus::closed);

  // LC-2 expires at the end of 2024-01-10; presented after that, it is refused.
  if (!ok("apply 2", coopA, lc_apply_deal,
          {"lc=LC-2", "bank=" + bank, "beneficiary=" + coopB, "amount=5000", "currency=CNY", "expiry=2024-01-10",
           "shipment=2024-01-05", "documents=invoice"}) ||
      !ok("issue 2", bank, lc_issue_deal, {"lc=LC-2"}) || !ok("advise 2", bank, lc_advise_deal, {"lc=LC-2"})) {
    return done();
  }
  const int64_t expiry = parseDateMicros("2024-01-11").value();
  if (sim.now() < expiry) sim.runFor(expiry - sim.now() + 60'000'000);
  if (!step("present 2", coopB, lc_present_deal, {"lc=LC-2", "documents=" + docOf("invoice")})) return done();
  world.failedWith("present 2", "[expired]");
  world.agreed("LC-2", LcStatus::advised);
  if (!ok("close 2", bank, lc_close_deal, {"lc=LC-2"})) return done();
  world.agreed("LC-2", LcStatus::closed);

  world.checkVaults();
  return done();
}

}  // namespace

TEST_CASE("lc sim: application, amendments with and without consent, discrepancy, waiver, payment, expiry") {
  const uint64_t seed = sim::seedFromEnvironment().value_or(7);
  sim::reportSeed(seed, runSeed(seed, false).failures);
}

TEST_CASE("lc sim: presentation, examination, waiver and payment with crashes and a lossy network") {
  const std::vector<uint64_t> seeds = sim::faultSeeds(2);
  uint64_t crashes = 0;
  for (uint64_t seed : seeds) {
    Outcome out = runSeed(seed, true);
    crashes += out.crashes;
    sim::reportSeed(seed, out.failures);
  }
  MESSAGE(seeds.size() << " seeds, " << crashes << " crashes");
  if (seeds.size() >= 2) CHECK(crashes > 0);
}
