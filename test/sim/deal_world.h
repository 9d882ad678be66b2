#pragma once
// The simulated network of the deal, letter-of-credit and loan simulations
// (tests only): each member a node with a real LMDB vault (not fsync'd),
// Delivery, FlowStore and FlowRuntime running the built-in and deal flows
// (flows/deal_flows.h registers the LC and loan flows too), a notary that
// keeps a real consumed-state map (flows/builtin_testing.h), and what the
// scenarios share: starting flows by label, waiting for every flow to end,
// checking outcomes and balances, and a fault phase that crashes and
// restarts random members on a lossy, duplicating, reordering network.

#include <doctest/doctest.h>

#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "contracts/contracts.h"
#include "flows/builtin_testing.h"
#include "flows/deal_flows.h"
#include "flows/delivery.h"
#include "flows/flow_runtime.h"
#include "ledger/testing.h"
#include "test/sim/sim.h"
#include "vault/flow_store.h"
#include "vault/message_store.h"
#include "vault/vault.h"

namespace ccal::sim {

inline const std::string deal_notary_name = "O=Hainan Notary, L=Haikou, C=CN";

class DealWorld;

class DealNode final : public Node {
 public:
  DealNode(MemberEnv& env, DealWorld& world);
  ~DealNode() override {
    // The stores' writes in flight complete first: FlowRuntime's store
    // completions read the runtime through `this`.
    quiesce();
    runtime_.reset();
    delivery_.reset();
    vault_.reset();
    flows_.reset();
    messages_.reset();
  }
  void quiesce() override {
    if (vault_) vault_->waitForWrites();  // vault writes queued by flows (their completions post back)
    if (delivery_) delivery_->waitForStore();
    if (runtime_) runtime_->waitForStore();
  }
  flows::FlowRuntime& runtime() { return *runtime_; }
  vault::FlowStore& flowStore() { return *flows_; }
  vault::Vault& vault() { return *vault_; }
  Key key() const { return services_.identity.owningKey; }

 private:
  ContractRegistry registry_;
  flows::FlowServices services_;
  std::unique_ptr<vault::Vault> vault_;
  std::unique_ptr<vault::MessageStore> messages_;
  std::unique_ptr<vault::FlowStore> flows_;
  std::unique_ptr<flows::Delivery> delivery_;
  std::unique_ptr<flows::FlowRuntime> runtime_;
};

class DealWorld {
 public:
  // `member_names` are X.500 names; each runs a DealNode. `observer_rules` are
  // every node's network observer rules.
  DealWorld(uint64_t seed, std::vector<std::string> member_names, std::vector<flows::ObserverRule> rules = {})
      : sim(seed), names(std::move(member_names)), observer_rules(std::move(rules)) {
    for (const auto& name : names) {
      directory.parties[name] = Party{name, Key(ccal::testing::testKey(seedOf(name)).publicKey())};
    }
    directory.parties[deal_notary_name] = notary_party;
    for (const auto& name : names) {
      sim.addMember(name, [this](MemberEnv& env) -> std::unique_ptr<Node> {
        return std::make_unique<DealNode>(env, *this);
      });
    }
  }

  Simulation sim;
  const std::vector<std::string> names;  // the members, in order
  const std::vector<flows::ObserverRule> observer_rules;
  flows::testing::Directory directory;
  Party notary_party{deal_notary_name, Key(ccal::testing::testKey(99).publicKey())};
  flows::testing::UniquenessNotary notary{notary_party, ccal::testing::testKey(99)};
  std::vector<std::string> failures;
  struct Started {
    std::string member;
    std::string_view flow;
    std::vector<std::string> kvs;
    flows::FlowId id;
  };
  std::map<std::string, Started> named;  // the test's name for a flow -> the flow

  // A member's test key seed (1.. in `names` order).
  uint8_t seedOf(const std::string& name) const {
    for (size_t i = 0; i < names.size(); ++i) {
      if (names[i] == name) return static_cast<uint8_t>(i + 1);
    }
    return 0;
  }
  void fail(const std::string& what) {
    if (failures.size() < 20) failures.push_back(what);
  }
  DealNode* node(const std::string& name) { return sim.nodeAs<DealNode>(name); }
  Key keyOf(const std::string& name) const { return directory.parties.at(name).owningKey; }

  // Starts `flow` on `member` with key=value arguments, named `label`; a
  // member that is down is asked again a little later, as an operator would.
  void start(const std::string& label, const std::string& member, std::string_view flow,
             std::vector<std::string> kvs) {
    auto* n = node(member);
    if (n == nullptr) {
      sim.at(200'000, [this, label, member, flow, kvs] { start(label, member, flow, kvs); });
      return;
    }
    auto args = flows::parseDealArgs(flow, kvs);
    if (!args) return fail(label + ": " + args.error().message);
    auto result = n->runtime().startFlow(flow, flows::encodeDealArgs(*args), -1, {});
    if (!result) return fail("startFlow " + label + ": " + result.error().toString());
    named[label] = Started{member, flow, kvs, *result};
  }
  // Starts the flow from a simulation event (so the simulator waits for the
  // stores' writes it makes before running the next event).
  void startSoon(const std::string& label, const std::string& member, std::string_view flow,
                 std::vector<std::string> kvs) {
    sim.at(1'000, [this, label, member, flow, kvs] { start(label, member, flow, kvs); });
  }

  // Every member is up with no unfinished flow, and every started flow ended.
  bool allDone() {
    for (const auto& name : names) {
      auto* n = node(name);
      if (n == nullptr) return false;
      auto unfinished = n->flowStore().unfinishedFlows();
      if (!unfinished || !unfinished->empty()) return false;
    }
    for (const auto& entry : named) {
      auto info = node(entry.second.member)->runtime().show(entry.second.id);
      if (info && info->phase != flows::FlowPhase::finished) return false;
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
    for (const auto& name : names) {
      auto* n = node(name);
      if (n == nullptr) {
        out += " [" + name + " down]";
        continue;
      }
      for (const flows::FlowInfo& f : n->runtime().list()) {
        if (f.phase == flows::FlowPhase::finished) continue;
        out += " [" + name.substr(0, name.find(',')) + ": " + f.name + (f.responder ? " for " + f.counterparty : "") +
               ", step '" + f.step + "', waiting '" + f.waiting + "']";
      }
    }
    return out;
  }

  // The flow's end; not_found when its start was lost in a crash.
  Result<flows::FlowInfo> outcome(const std::string& label) {
    auto it = named.find(label);
    if (it == named.end()) return makeError(Errc::not_found, label + " was not started");
    return node(it->second.member)->runtime().show(it->second.id);
  }
  // The flow's end if it succeeded; a failure is recorded otherwise.
  std::optional<flows::FlowInfo> succeededInfo(const std::string& label) {
    auto info = outcome(label);
    if (!info) {
      fail(label + ": " + info.error().message);
      return std::nullopt;
    }
    if (info->outcome != vault::FlowOutcome::ok) {
      fail(label + " ended " + vault::flowOutcomeName(info->outcome) + ": " +
           (info->error ? info->error->toString() : std::string("?")));
      return std::nullopt;
    }
    return *info;
  }
  bool succeeded(const std::string& label) { return succeededInfo(label).has_value(); }
  // The flow failed with `text` in its error ("[code] message").
  void failedWith(const std::string& label, const std::string& text) {
    auto info = outcome(label);
    if (!info) return fail(label + ": " + info.error().message);
    if (info->outcome == vault::FlowOutcome::ok) return fail(label + " succeeded; it should fail with " + text);
    const std::string got = info->error ? info->error->toString() : std::string();
    if (got.find(text) == std::string::npos) fail(label + " failed with '" + got + "', want " + text);
  }

  // The unconsumed states of `type` in `name`'s vault (any relevance).
  std::vector<vault::VaultState> unconsumed(const std::string& name, std::string_view type) {
    auto page = node(name)->vault().query(vault::Query(vault::Criteria::stateType(std::string(type))));
    if (!page) {
      fail("query of '" + name + "': " + page.error().message);
      return {};
    }
    return page->states;
  }
  // The CNY tokens `owner` holds, as `vault_of`'s vault sees them.
  int64_t tokensOf(const std::string& vault_of, const Key& owner) {
    int64_t total = 0;
    for (const auto& s : unconsumed(vault_of, contracts::token_state_type)) {
      auto t = contracts::decodeToken(s.state.data);
      if (t && t->owner == owner && t->currency == "CNY") total += t->amountMinor;
    }
    return total;
  }
  // The CNY tokens `name` holds in its own vault.
  int64_t balance(const std::string& name) { return tokensOf(name, keyOf(name)); }

  // Crashes and restarts random members for `micros`, on a lossy network,
  // then heals everything; the crashes so far.
  uint64_t faultPhase(int64_t micros) {
    auto& rng = sim.rng();
    const double losses[] = {0, 0.05, 0.2};
    const double dups[] = {0, 0.1, 0.3};
    sim.network().loss = losses[rng.below(3)];
    sim.network().duplication = dups[rng.below(3)];
    sim.network().reorder = dups[rng.below(3)];
    for (int64_t t = rng.between(0, 200'000) + 1'500; t < micros; t += rng.between(50'000, 900'000)) {
      const std::string victim = names[rng.below(names.size())];
      sim.at(t, [this, victim, down = rng.between(1'000, 1'000'000)] {
        if (!sim.isUp(victim)) return;
        sim.crash(victim);
        sim.at(down, [this, victim] {
          if (!sim.isUp(victim)) sim.restart(victim);
        });
      });
    }
    sim.runFor(micros + 1'000'000);
    sim.network().loss = 0;
    sim.network().duplication = 0;
    sim.network().reorder = 0;
    sim.heal();
    for (const auto& name : names) {
      if (!sim.isUp(name)) sim.restart(name);
    }
    return sim.crashes();
  }
  // Every member's vault passes its consistency check.
  void checkVaults() {
    for (const auto& name : names) {
      if (auto st = node(name)->vault().checkConsistency(); !st) fail("'" + name + "' vault: " + st.error().message);
    }
  }
};

inline DealNode::DealNode(MemberEnv& env, DealWorld& world) {
  contracts::registerDealContracts(registry_);
  const KeyPair key = ccal::testing::testKey(world.seedOf(env.name));
  vault::VaultConfig vc;
  vc.store.path = env.dir;
  vc.store.durable = false;
  const flows::Clock* clock = &env.clock;
  vc.now_micros = [clock] { return clock->nowMicros(); };
  vault_ = vault::Vault::open(vc, registry_, {key.publicKey()}).value();
  messages_ = std::make_unique<vault::MessageStore>(vault_->store(), [clock] { return clock->nowMicros(); });
  flows_ = std::make_unique<vault::FlowStore>(vault_->store(), [clock] { return clock->nowMicros(); });
  flows::DeliveryConfig dc;
  dc.retransmit_delay_micros_min = 50'000;
  dc.retransmit_delay_micros_max = 1'000'000;
  dc.log = [](std::string_view) {};
  delivery_ = std::make_unique<flows::Delivery>(env.link, *messages_, env.executor, env.clock, dc);
  flows::FlowRuntimeConfig fc;
  fc.self = env.name;
  fc.flow_timeout_micros = 0;
  Rng* rng = &world.sim.rng();
  fc.random_u64 = [rng] { return rng->next(); };
  fc.log = [&world, name = env.name](std::string_view line) { world.sim.trace(name + ": " + std::string(line)); };
  runtime_ = std::make_unique<flows::FlowRuntime>(*delivery_, env.executor, env.clock, *flows_, fc);
  services_.identity = world.directory.parties.at(env.name);
  services_.keys = {key};
  services_.vault = vault_.get();
  services_.contracts = &registry_;
  const flows::testing::Directory* d = &world.directory;
  services_.partyByName = [d](std::string_view n) { return d->byName(n); };
  services_.partyByKey = [d](const Key& k) { return d->byKey(k); };
  services_.notary = &world.notary;
  services_.observer_rules = world.observer_rules;
  flows::addDealChecks(services_);
  CCAL_ASSERT(flows::registerBuiltinFlows(*runtime_, services_).ok());
  flows::DealConfig config;
  config.notary = deal_notary_name;
  CCAL_ASSERT(flows::registerDealFlows(*runtime_, services_, config).ok());
  runtime_->setHooks({{}, {}, {}});
  CCAL_ASSERT(runtime_->start().ok());
  CCAL_ASSERT(delivery_->start().ok());
}

// The seeds a fault test runs: CCAL_SIM_SEED=<n> alone, or 1..CCAL_SIM_SEEDS
// (default `count`).
inline std::vector<uint64_t> faultSeeds(uint64_t count) {
  std::vector<uint64_t> seeds;
  if (auto one = seedFromEnvironment()) {
    seeds.push_back(*one);
    return seeds;
  }
  const char* text = ::getenv("CCAL_SIM_SEEDS");
  if (text && *text) count = std::stoull(text);
  for (uint64_t s = 1; s <= count; ++s) seeds.push_back(s);
  return seeds;
}

// Fails the test case with a seed's failures and how to replay it.
inline void reportSeed(uint64_t seed, const std::vector<std::string>& failures) {
  if (failures.empty()) return;
  std::string all;
  for (const auto& f : failures) all += "\n  " + f;
  FAIL_CHECK("seed " << seed << " failed (replay it with CCAL_SIM_SEED=" << seed << "):" << all);
}

}  // namespace ccal::sim
