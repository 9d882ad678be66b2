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
#include "flows/builtin_testing.h"
#include "flows/delivery.h"
#include "flows/flow_runtime.h"
#include "flows/lc_flows.h"
#include "ledger/testing.h"
#include "test/sim/sim.h"
#include "vault/flow_store.h"
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
const std::string regulator = "O=Hainan Regulator, L=Haikou, C=CN";
const std::string notary_name = "O=Hainan Notary, L=Haikou, C=CN";
const std::vector<std::string> members = {bank, coopA, coopB, regulator};
const std::vector<std::string> parties = {bank, coopA, coopB};

constexpr int64_t day_micros = 86'400'000'000LL;

uint8_t seedOf(const std::string& name) {
  for (size_t i = 0; i < members.size(); ++i) {
    if (members[i] == name) return static_cast<uint8_t>(i + 1);
  }
  return 0;
}

class World;

class LcNode final : public sim::Node {
 public:
  LcNode(sim::MemberEnv& env, World& world);
  ~LcNode() override {
    // The stores' writes in flight complete first: FlowRuntime::storeDone's
    // completion reads the runtime's executor_ through `this`, so a write
    // completing after the runtime is gone is a use after free (ASan, in a
    // crash during a flow).
    quiesce();
    runtime_.reset();
    delivery_.reset();
    vault_.reset();
    flows_.reset();
    messages_.reset();
  }
  void quiesce() override {
    if (vault_) vault_->waitForWrites();  // vault writes queued by flows (their completions post back)
    delivery_->waitForStore();
    runtime_->waitForStore();
  }
  FlowRuntime& runtime() { return *runtime_; }
  vault::FlowStore& flowStore() { return *flows_; }
  vault::Vault& vault() { return *vault_; }
  Key key() const { return services_.identity.owningKey; }

 private:
  ContractRegistry registry_;
  FlowServices services_;
  std::unique_ptr<vault::Vault> vault_;
  std::unique_ptr<vault::MessageStore> messages_;
  std::unique_ptr<vault::FlowStore> flows_;
  std::unique_ptr<Delivery> delivery_;
  std::unique_ptr<FlowRuntime> runtime_;
};

class World {
 public:
  explicit World(uint64_t seed) : sim(seed) {
    for (const auto& name : members) {
      directory.parties[name] = Party{name, Key(ccal::testing::testKey(seedOf(name)).publicKey())};
    }
    directory.parties[notary_name] = notary_party;
  }

  sim::Simulation sim;
  Directory directory;
  Party notary_party{notary_name, Key(ccal::testing::testKey(99).publicKey())};
  UniquenessNotary notary{notary_party, ccal::testing::testKey(99)};
  std::vector<std::string> failures;
  struct Started {
    std::string member;
    std::string_view flow;
    std::vector<std::string> kvs;
    FlowId id;
  };
  std::map<std::string, Started> named;  // the test's name for a flow -> the flow

  void fail(const std::string& what) {
    if (failures.size() < 20) failures.push_back(what);
  }
  LcNode* node(const std::string& name) { return sim.nodeAs<LcNode>(name); }

  void start(const std::string& label, const std::string& member, std::string_view flow,
             std::vector<std::string> kvs) {
    auto* n = node(member);
    if (n == nullptr) {  // down: the operator tries again a little later
      sim.at(200'000, [this, label, member, flow, kvs] { start(label, member, flow, kvs); });
      return;
    }
    auto args = parseDealArgs(flow, kvs);
    if (!args) return fail(label + ": " + args.error().message);
    auto result = n->runtime().startFlow(flow, encodeDealArgs(*args), -1, {});
    if (!result) return fail("startFlow " + label + ": " + result.error().toString());
    named[label] = Started{member, flow, kvs, *result};
  }

  // Starts the flow from a simulation event (so the simulator waits for the
  // stores' writes it makes before running the next event).
  void startSoon(const std::string& label, const std::string& member, std::string_view flow,
                 std::vector<std::string> kvs) {
    sim.at(1'000, [this, label, member, flow, kvs] { start(label, member, flow, kvs); });
  }

  bool allDone() {
    for (const auto& name : members) {
      auto* n = node(name);
      if (n == nullptr) return false;
      auto unfinished = n->flowStore().unfinishedFlows();
      if (!unfinished || !unfinished->empty()) return false;
    }
    for (const auto& entry : named) {
      auto info = node(entry.second.member)->runtime().show(entry.second.id);
      if (info && info->phase != FlowPhase::finished) return false;
    }
    return true;
  }

  // Runs until `label` was started and every flow ended; a start lost in a
  // crash (the flow unknown to its node) is started again, as an operator would.
  bool settle(const std::string& label) {
    for (int attempt = 0; attempt < 3; ++attempt) {
      if (!sim.runUntil([&] { return named.count(label) && allDone(); }, 600'000'000)) return false;
      const Started s = named.at(label);
      auto info = node(s.member)->runtime().show(s.id);
      if (info || info.error().code != Errc::not_found) return true;
      named.erase(label);
      startSoon(label, s.member, s.flow, s.kvs);
    }
    return false;
  }

  // What is still running, for a failure's message.
  std::string running() {
    std::string out;
    for (const auto& name : members) {
      auto* n = node(name);
      if (n == nullptr) {
        out += " [" + name + " down]";
        continue;
      }
      for (const FlowInfo& f : n->runtime().list()) {
        if (f.phase == FlowPhase::finished) continue;
        out += " [" + name.substr(0, name.find(',')) + ": " + f.name + (f.responder ? " for " + f.counterparty : "") +
               ", step '" + f.step + "', waiting '" + f.waiting + "']";
      }
    }
    return out;
  }

  Result<FlowInfo> outcome(const std::string& label) {
    auto it = named.find(label);
    if (it == named.end()) return makeError(Errc::not_found, label + " was not started");
    return node(it->second.member)->runtime().show(it->second.id);
  }
  bool succeeded(const std::string& label) {
    auto info = outcome(label);
    if (!info) {
      fail(label + ": " + info.error().message);
      return false;
    }
    if (info->outcome != vault::FlowOutcome::ok) {
      fail(label + " ended " + vault::flowOutcomeName(info->outcome) + ": " +
           (info->error ? info->error->toString() : std::string("?")));
      return false;
    }
    return true;
  }
  // The flow failed with `text` in its error.
  void failedWith(const std::string& label, const std::string& text) {
    auto info = outcome(label);
    if (!info) return fail(label + ": " + info.error().message);
    if (info->outcome == vault::FlowOutcome::ok) return fail(label + " succeeded; it should fail with " + text);
    const std::string got = info->error ? info->error->toString() : std::string();
    if (got.find(text) == std::string::npos) fail(label + " failed with '" + got + "', want " + text);
  }

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
  int64_t balance(const std::string& name) {
    int64_t total = 0;
    auto page = node(name)->vault().query(vault::Query(vault::Criteria::stateType(std::string(token_state_type)),
                                                       vault::StatusFilter::unconsumed,
                                                       vault::RelevanceFilter::participant));
    if (!page) {
      fail("balance of '" + name + "': " + page.error().message);
      return 0;
    }
    for (const auto& s : page->states) {
      auto t = decodeToken(s.state.data);
      if (t && t->owner == node(name)->key() && t->currency == "CNY") total += t->amountMinor;
    }
    return total;
  }
};

LcNode::LcNode(sim::MemberEnv& env, World& world) {
  registerDealContracts(registry_);
  const KeyPair key = ccal::testing::testKey(seedOf(env.name));
  vault::VaultConfig vc;
  vc.store.path = env.dir;
  vc.store.durable = false;
  const Clock* clock = &env.clock;
  vc.now_micros = [clock] { return clock->nowMicros(); };
  vault_ = vault::Vault::open(vc, registry_, {key.publicKey()}).value();
  messages_ = std::make_unique<vault::MessageStore>(vault_->store(), [clock] { return clock->nowMicros(); });
  flows_ = std::make_unique<vault::FlowStore>(vault_->store(), [clock] { return clock->nowMicros(); });
  DeliveryConfig dc;
  dc.retransmit_delay_micros_min = 50'000;
  dc.retransmit_delay_micros_max = 1'000'000;
  dc.log = [](std::string_view) {};
  delivery_ = std::make_unique<Delivery>(env.link, *messages_, env.executor, env.clock, dc);
  FlowRuntimeConfig fc;
  fc.self = env.name;
  fc.flow_timeout_micros = 0;
  sim::Rng* rng = &world.sim.rng();
  fc.random_u64 = [rng] { return rng->next(); };
  fc.log = [&world, name = env.name](std::string_view line) { world.sim.trace(name + ": " + std::string(line)); };
  runtime_ = std::make_unique<FlowRuntime>(*delivery_, env.executor, env.clock, *flows_, fc);
  services_.identity = world.directory.parties.at(env.name);
  services_.keys = {key};
  services_.vault = vault_.get();
  services_.contracts = &registry_;
  const Directory* d = &world.directory;
  services_.partyByName = [d](std::string_view n) { return d->byName(n); };
  services_.partyByKey = [d](const Key& k) { return d->byKey(k); };
  services_.notary = &world.notary;
  services_.observer_rules = {ObserverRule{regulator, {std::string(lc_contract)}, {}, false}};
  addDealChecks(services_);
  CCAL_ASSERT(registerBuiltinFlows(*runtime_, services_).ok());
  DealConfig config;
  config.notary = notary_name;
  CCAL_ASSERT(registerDealFlows(*runtime_, services_, config).ok());
  runtime_->setHooks({{}, {}, {}});
  CCAL_ASSERT(runtime_->start().ok());
  CCAL_ASSERT(delivery_->start().ok());
}

// Crashes and restarts random members for `micros`, on a lossy network,
// then heals everything.
uint64_t faultPhase(World& world, int64_t micros) {
  sim::Simulation& sim = world.sim;
  auto& rng = sim.rng();
  const double losses[] = {0, 0.05, 0.2};
  const double dups[] = {0, 0.1, 0.3};
  sim.network().loss = losses[rng.below(3)];
  sim.network().duplication = dups[rng.below(3)];
  sim.network().reorder = dups[rng.below(3)];
  for (int64_t t = rng.between(0, 200'000) + 1'500; t < micros; t += rng.between(50'000, 900'000)) {
    const std::string victim = members[rng.below(members.size())];
    sim.at(t, [&sim, victim, down = rng.between(1'000, 1'000'000)] {
      if (!sim.isUp(victim)) return;
      sim.crash(victim);
      sim.at(down, [&sim, victim] {
        if (!sim.isUp(victim)) sim.restart(victim);
      });
    });
  }
  sim.runFor(micros + 1'000'000);
  sim.network().loss = 0;
  sim.network().duplication = 0;
  sim.network().reorder = 0;
  sim.heal();
  for (const auto& name : members) {
    if (!sim.isUp(name)) sim.restart(name);
  }
  return sim.crashes();
}

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
  for (const auto& name : members) {
    sim.addMember(name, [&world](sim::MemberEnv& env) -> std::unique_ptr<sim::Node> {
      return std::make_unique<LcNode>(env, world);
    });
  }
  Outcome out;
  // One flow at a time: each step needs the one before. `faulty` steps run
  // while members crash and the network misbehaves (when `faults`).
  auto step = [&](const std::string& label, const std::string& member, std::string_view flow,
                  std::vector<std::string> kvs, bool faulty = false) {
    if (!world.failures.empty()) return false;
    world.startSoon(label, member, flow, std::move(kvs));
    if (faults && faulty) faultPhase(world, 1'500'000);
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

  for (const auto& name : members) {
    if (auto st = world.node(name)->vault().checkConsistency(); !st) {
      world.fail("'" + name + "' vault: " + st.error().message);
    }
  }
  return done();
}

uint64_t envOr(const char* name, uint64_t fallback) {
  const char* text = ::getenv(name);
  return text && *text ? std::stoull(text) : fallback;
}

void report(uint64_t seed, const Outcome& out) {
  if (out.failures.empty()) return;
  std::string all;
  for (const auto& f : out.failures) all += "\n  " + f;
  FAIL_CHECK("seed " << seed << " failed (replay it with CCAL_SIM_SEED=" << seed << "):" << all);
}

}  // namespace

TEST_CASE("lc sim: application, amendments with and without consent, discrepancy, waiver, payment, expiry") {
  const uint64_t seed = sim::seedFromEnvironment().value_or(7);
  report(seed, runSeed(seed, false));
}

TEST_CASE("lc sim: presentation, examination, waiver and payment with crashes and a lossy network") {
  std::vector<uint64_t> seeds;
  if (auto one = sim::seedFromEnvironment()) {
    seeds.push_back(*one);
  } else {
    for (uint64_t s = 1; s <= envOr("CCAL_SIM_SEEDS", 2); ++s) seeds.push_back(s);
  }
  uint64_t crashes = 0;
  for (uint64_t seed : seeds) {
    Outcome out = runSeed(seed, true);
    crashes += out.crashes;
    report(seed, out);
  }
  MESSAGE(seeds.size() << " seeds, " << crashes << " crashes");
  if (seeds.size() >= 2) CHECK(crashes > 0);
}
