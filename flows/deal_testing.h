#pragma once
// Test helpers for the deal, letter-of-credit and loan flows' unit tests
// (tests only): members with real LMDB vaults (not fsync'd), Delivery,
// FlowStore and FlowRuntime running the built-in and deal flows, over an
// in-memory hub with virtual time (flows/flows_testing.h), and a notary that
// keeps a real consumed-state map (flows/builtin_testing.h). Flows are
// started by name with key=value arguments, as `ccal flow start` passes them.

#include <doctest/doctest.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "contracts/contracts.h"
#include "flows/builtin_testing.h"
#include "flows/deal_flows.h"
#include "flows/delivery.h"
#include "flows/flows_testing.h"
#include "ledger/testing.h"
#include "test/support/temp_dir.h"
#include "vault/flow_store.h"
#include "vault/message_store.h"
#include "vault/vault.h"

namespace ccal::flows::testing {

inline const std::string deal_test_notary = "O=Hainan Notary, L=Haikou, C=CN";

struct DealTestWorld;

// Called on each open of a node, after addDealChecks(svc, its DealPolicy):
// adds or replaces business checks (a letter-of-credit or loan policy).
using NodeSetup = std::function<void(FlowServices&)>;

struct DealTestNode {
  std::string name;
  KeyPair key;
  DealTestWorld& world;
  DealPolicy policy;
  NodeSetup setup;
  ccal::testing::TempDir dir{"ccal-deal-test"};
  ContractRegistry registry;
  FlowServices svc;
  std::unique_ptr<vault::Vault> vault;
  std::unique_ptr<vault::MessageStore> messages;
  std::unique_ptr<vault::FlowStore> flowStore;
  std::unique_ptr<HubLink> link;
  std::unique_ptr<Delivery> delivery;
  std::unique_ptr<FlowRuntime> runtime;
  std::map<FlowId, FlowInfo> finished;
  // Registers flows of a test's own (a dishonest node's) at each open,
  // after the deal flows (DealTestWorld::add, or set it and restart()).
  std::function<void(FlowRuntime&, FlowServices&)> extra_flows;

  DealTestNode(std::string n, uint8_t seed, DealTestWorld& w, DealPolicy p, NodeSetup s)
      : name(std::move(n)), key(ccal::testing::testKey(seed)), world(w), policy(p), setup(std::move(s)) {
    contracts::registerDealContracts(registry);
  }
  ~DealTestNode() { close(); }
  Key owningKey() const { return Key(key.publicKey()); }
  Party party() const { return Party{name, owningKey()}; }
  void open();
  void close() {
    quiesce();
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
  // Unconsumed states of a type in this vault (any relevance).
  std::vector<vault::VaultState> states(std::string_view type) const {
    return vault->query(vault::Query(vault::Criteria::stateType(std::string(type)))).value().states;
  }
  // Unconsumed tokens of `currency` owned by `owner`, as this vault sees them.
  int64_t tokensOf(const Key& owner, const std::string& currency = "CNY") const {
    int64_t total = 0;
    for (const auto& s : states(contracts::token_state_type)) {
      auto t = contracts::decodeToken(s.state.data).value();
      if (t.currency == currency && t.owner == owner) total += t.amountMinor;
    }
    return total;
  }
  int64_t balance(const std::string& currency) const { return tokensOf(owningKey(), currency); }
};

struct DealTestWorld {
  TestExecutor executor;
  Hub hub;
  Directory directory;
  Party notaryParty{deal_test_notary, Key(ccal::testing::testKey(99).publicKey())};
  UniquenessNotary notary{notaryParty, ccal::testing::testKey(99)};
  std::vector<ObserverRule> observer_rules;  // every node's; set before adding nodes
  std::map<std::string, std::unique_ptr<DealTestNode>> nodes;

  DealTestWorld() {
    hub.executor = &executor;
    directory.parties[deal_test_notary] = notaryParty;
  }
  ~DealTestWorld() { nodes.clear(); }
  DealTestNode& add(const std::string& name, uint8_t seed, DealPolicy policy = {},
                    NodeSetup setup = {},
                    std::function<void(FlowRuntime&, FlowServices&)> extra_flows = {}) {
    hub.names.insert(name);
    auto node = std::make_unique<DealTestNode>(name, seed, *this, policy, std::move(setup));
    node->extra_flows = std::move(extra_flows);
    directory.parties[name] = node->party();
    node->open();
    DealTestNode& ref = *node;
    nodes[name] = std::move(node);
    return ref;
  }
  DealTestNode& operator[](const std::string& name) { return *nodes.at(name); }

  bool run(const std::function<bool()>& pred, int64_t deadline_micros = 600'000'000) {
    return executor.runUntil(pred, deadline_micros, [this] {
      for (auto& entry : nodes) entry.second->quiesce();
    });
  }
  // Lets `micros` of virtual time pass.
  void advance(int64_t micros) {
    bool fired = false;
    executor.runAfter(micros, [&fired] { fired = true; });
    REQUIRE(run([&fired] { return fired; }, micros + 1));
  }
  // Runs until no node runs a flow (finality's last receivers recorded).
  bool quiet() {
    return run([this] {
      for (auto& entry : nodes) {
        if (entry.second->runtime->running() > 0) return false;
      }
      return true;
    });
  }
  FlowId start(DealTestNode& n, std::string_view flow, const std::vector<std::string>& kvs) {
    auto args = parseDealArgs(flow, kvs);
    REQUIRE_MESSAGE(args.ok(), (args ? "" : args.error().message));
    auto id = n.runtime->startFlow(flow, encodeDealArgs(*args));
    REQUIRE(id);
    return *id;
  }
  FlowInfo await(DealTestNode& n, const FlowId& id) {
    const bool done = run([&] { return n.finished.count(id) > 0; });
    REQUIRE_MESSAGE(done, "flow " << id.shortHex() << " did not finish");
    return n.finished.at(id);
  }
  // Starts the flow, waits for its end and for every node to be quiet.
  FlowInfo runFlow(DealTestNode& n, std::string_view flow, const std::vector<std::string>& kvs) {
    FlowInfo info = await(n, start(n, flow, kvs));
    quiet();
    return info;
  }
  // The flow succeeds; its end.
  FlowInfo okInfo(DealTestNode& n, std::string_view flow, const std::vector<std::string>& kvs) {
    FlowInfo info = runFlow(n, flow, kvs);
    REQUIRE_MESSAGE(info.outcome == vault::FlowOutcome::ok,
                    flow << " failed: " << (info.error ? info.error->message : ""));
    return info;
  }
  // The flow succeeds; the id of the transaction it finalised.
  SecureHash ok(DealTestNode& n, std::string_view flow, const std::vector<std::string>& kvs) {
    return idOf(okInfo(n, flow, kvs).result);
  }
  // The flow fails; its error message.
  std::string fails(DealTestNode& n, std::string_view flow, const std::vector<std::string>& kvs) {
    FlowInfo info = runFlow(n, flow, kvs);
    REQUIRE_MESSAGE(info.outcome != vault::FlowOutcome::ok, flow << " succeeded, but should have failed");
    return info.error ? info.error->message : std::string("(no error)");
  }
};

inline void DealTestNode::open() {
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
  fc.ended = lockReleaser(*vault, {});
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
  svc.observer_rules = world.observer_rules;
  addDealChecks(svc, policy);
  if (setup) setup(svc);
  REQUIRE(registerBuiltinFlows(*runtime, svc).ok());
  DealConfig config;
  config.notary = deal_test_notary;
  config.policy = policy;
  REQUIRE(registerDealFlows(*runtime, svc, config).ok());
  if (extra_flows) extra_flows(*runtime, svc);
  FlowRuntime::Hooks hooks;
  hooks.finished = [this](const FlowInfo& info) { finished[info.id] = info; };
  runtime->setHooks(std::move(hooks));
  REQUIRE(runtime->start().ok());
  REQUIRE(releaseLocksOfEndedFlows(*runtime, *vault).ok());
  REQUIRE(delivery->start().ok());
}

}  // namespace ccal::flows::testing
