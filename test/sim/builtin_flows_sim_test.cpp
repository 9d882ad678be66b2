// The built-in flows (flows/builtin_flows.h) under the simulator: three
// cooperatives and a regulator (an observer of every token transaction by
// the network's observer rules), each a node with a real LMDB vault, its
// Delivery, FlowStore and FlowRuntime, and a notary that keeps a real
// consumed-state map (flows/builtin_testing.h UniquenessNotary). Tokens are
// issued, then moved between the cooperatives (collect signatures, backchain
// resolution, notarisation, finality to both parties and the regulator),
// one token twice at once (a double spend), while any member crashes and
// restarts at random moments and the network loses, duplicates and reorders
// frames. Invariants once the network heals: every flow ends; each move is
// either recorded -- identically -- on its sender, its recipient and the
// regulator, or (the double spend's loser) fails with the conflict naming
// the StateRef and is recorded nowhere; no vault holds a transaction twice
// or fails its consistency check; the notary consumed each state once.
//
// Each seed is one run; CCAL_SIM_SEED=<n> replays one, CCAL_SIM_SEEDS=<count>
// runs more.

#include <doctest/doctest.h>

#include <cstdio>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "flows/builtin_testing.h"
#include "flows/delivery.h"
#include "flows/flow_runtime.h"
#include "ledger/testing.h"
#include "test/sim/sim.h"
#include "vault/flow_store.h"
#include "vault/message_store.h"
#include "vault/vault.h"

using namespace ccal;
using namespace ccal::flows;
using namespace ccal::flows::testing;

namespace {

const std::vector<std::string> coops = {
    "O=Haikou Fishing Cooperative, L=Haikou, C=CN",
    "O=Sanya Tea Cooperative, L=Sanya, C=CN",
    "O=Wenchang Coconut Cooperative, L=Wenchang, C=CN",
};
const std::string regulator = "O=Hainan Regulator, L=Haikou, C=CN";
const std::string notary_name = "O=Hainan Notary, L=Haikou, C=CN";

std::vector<std::string> allMembers() {
  std::vector<std::string> out = coops;
  out.push_back(regulator);
  return out;
}

uint8_t seedOf(const std::string& name) {
  const auto all = allMembers();
  for (size_t i = 0; i < all.size(); ++i) {
    if (all[i] == name) return static_cast<uint8_t>(i + 1);
  }
  return 0;
}

class World;

class BuiltinNode final : public sim::Node {
 public:
  BuiltinNode(sim::MemberEnv& env, World& world);
  ~BuiltinNode() override {
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

 private:
  ContractRegistry registry_;
  FlowServices services_;
  std::unique_ptr<vault::Vault> vault_;
  std::unique_ptr<vault::MessageStore> messages_;
  std::unique_ptr<vault::FlowStore> flows_;
  std::unique_ptr<Delivery> delivery_;
  std::unique_ptr<FlowRuntime> runtime_;
};

struct Move {
  std::string from, to;
  StateRef input;
  bool contested = false;  // one of two moves of the same input
};

class World {
 public:
  explicit World(uint64_t seed) : sim(seed) {
    for (const auto& name : allMembers()) {
      directory.parties[name] = Party{name, Key(ccal::testing::testKey(seedOf(name)).publicKey())};
    }
    directory.parties[notary_name] = notary_party;
  }

  sim::Simulation sim;
  Directory directory;
  Party notary_party{notary_name, Key(ccal::testing::testKey(99).publicKey())};
  UniquenessNotary notary{notary_party, ccal::testing::testKey(99)};
  std::vector<ObserverRule> rules{{regulator, {std::string(ccal::testing::token_contract)}, {}, false}};
  // A member that ignores the rules: its moves announce the regulator to
  // their signers but leave it out of their finality (empty: none).
  std::string hider;
  std::vector<std::string> failures;
  std::map<FlowId, std::string> started;  // starts -> member
  std::map<FlowId, Move> moves;
  std::map<FlowId, int> finished_count;

  void fail(const std::string& what) {
    if (failures.size() < 20) failures.push_back(what);
  }
  BuiltinNode* node(const std::string& name) { return sim.nodeAs<BuiltinNode>(name); }

  void start(const std::string& member, std::string_view flow, Bytes args,
             std::optional<Move> move) {
    auto* n = node(member);
    if (n == nullptr) {  // down: the operator tries again a little later
      sim.at(200'000, [this, member, flow, args = std::move(args), move]() mutable {
        start(member, flow, std::move(args), move);
      });
      return;
    }
    // Tracked from the start: a start that was not durable before a crash
    // is simply unknown to the store at the end (never started).
    auto result = n->runtime().startFlow(flow, std::move(args), -1, {});
    if (!result) return fail("startFlow on '" + member + "': " + result.error().toString());
    started[*result] = member;
    if (move) moves[*result] = *move;
  }

  void onFinished(const std::string& member, const FlowInfo& info) {
    if (!info.responder && ++finished_count[info.id] > 1) {
      fail("flow " + info.id.shortHex() + " on '" + member + "' finished twice");
    }
  }

  bool allDone() {
    for (const auto& name : allMembers()) {
      auto* n = node(name);
      if (n == nullptr) return false;
      auto unfinished = n->flowStore().unfinishedFlows();
      if (!unfinished || !unfinished->empty()) return false;
    }
    // A start not yet durable is not in the store's unfinished flows.
    for (const auto& entry : started) {
      auto info = node(entry.second)->runtime().show(entry.first);
      if (info && info->phase != FlowPhase::finished) return false;
    }
    return true;
  }

  Result<FlowInfo> outcome(const FlowId& id) { return node(started.at(id))->runtime().show(id); }
};

BuiltinNode::BuiltinNode(sim::MemberEnv& env, World& world) {
  registry_.add(std::make_unique<ccal::testing::TestTokenContract>());
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
  fc.log = [&world, name = env.name](std::string_view line) {
    world.sim.trace(name + ": " + std::string(line));
  };
  runtime_ = std::make_unique<FlowRuntime>(*delivery_, env.executor, env.clock, *flows_, fc);
  services_.identity = world.directory.parties.at(env.name);
  services_.keys = {key};
  services_.vault = vault_.get();
  services_.contracts = &registry_;
  const Directory* d = &world.directory;
  services_.partyByName = [d](std::string_view n) { return d->byName(n); };
  services_.partyByKey = [d](const Key& k) { return d->byKey(k); };
  services_.notary = &world.notary;
  services_.observer_rules = world.rules;
  std::vector<std::string> hidden;
  if (env.name == world.hider) {
    services_.observer_rules.clear();
    hidden.push_back(regulator);
  }
  CCAL_ASSERT(registerTokenFlows(*runtime_, services_, &world.notary_party, hidden).ok());
  runtime_->setHooks({[&world, name = env.name](const FlowInfo& info) { world.onFinished(name, info); },
                      {},
                      {}});
  CCAL_ASSERT(runtime_->start().ok());
  CCAL_ASSERT(delivery_->start().ok());
}

struct Outcome {
  std::vector<std::string> failures;
  uint64_t moves_ok = 0, conflicts = 0, crashes = 0, recorded = 0;
};

uint64_t transactionCount(vault::Vault& v) {
  uint64_t n = 0;
  (void)v.forEachTransaction([&](const SecureHash&, ByteView) {
    ++n;
    return true;
  });
  return n;
}

Outcome runSeed(uint64_t seed, bool faults, const std::string& hider = "") {
  World world(seed);
  world.hider = hider;
  sim::Simulation& sim = world.sim;
  auto& rng = sim.rng();
  for (const auto& name : allMembers()) {
    sim.addMember(name, [&world](sim::MemberEnv& env) -> std::unique_ptr<sim::Node> {
      return std::make_unique<BuiltinNode>(env, world);
    });
  }
  // Issue: two tokens on each cooperative, no faults.
  for (const auto& c : coops) {
    for (int i = 0; i < 2; ++i) {
      const std::string amount = std::to_string(10 * (i + 1));
      world.start(c, token_issue_flow, Bytes(amount.begin(), amount.end()), std::nullopt);
    }
  }
  if (!sim.runUntil([&] { return world.started.size() == 6 && world.allDone(); }, 60'000'000)) {
    world.fail("the issues did not finish");
  }
  std::vector<std::pair<std::string, SecureHash>> issues;  // owner, issue tx
  for (const auto& [id, member] : world.started) {
    auto info = world.outcome(id);
    if (!info || info->outcome != vault::FlowOutcome::ok) {
      world.fail("issue on '" + member + "' failed: " +
                 (info && info->error ? info->error->message : std::string("?")));
      continue;
    }
    issues.emplace_back(member, SecureHash::fromBytes(info->result).value());
  }
  const size_t issued = issues.size();
  // Moves: each token to another cooperative; the first token twice at once.
  if (faults) {
    const double losses[] = {0, 0.05, 0.2};
    const double dups[] = {0, 0.1, 0.3};
    sim.network().loss = losses[rng.below(3)];
    sim.network().duplication = dups[rng.below(3)];
    sim.network().reorder = dups[rng.below(3)];
  }
  for (size_t i = 0; i < issues.size(); ++i) {
    const std::string owner = issues[i].first;
    const SecureHash tx = issues[i].second;
    std::vector<std::string> others;
    for (const auto& c : coops) {
      if (c != owner) others.push_back(c);
    }
    const std::string to = others[rng.below(others.size())];
    const StateRef ref{tx, 0};
    const bool contested = i == 0;
    const int64_t when = rng.between(0, 1'000'000);
    sim.at(when, [&world, owner, to, ref, contested] {
      world.start(owner, token_move_flow, tokenMoveArgs(to, ref), Move{owner, to, ref, contested});
    });
    if (contested) {
      std::string other_to = others[0] == to ? others[1] : others[0];
      sim.at(when, [&world, owner, other_to, ref] {
        world.start(owner, token_move_flow, tokenMoveArgs(other_to, ref), Move{owner, other_to, ref, true});
      });
    }
  }
  const int64_t fault_phase_micros = 4'000'000;
  if (faults) {
    for (int64_t t = rng.between(0, 200'000) + 1'500; t < fault_phase_micros;
         t += rng.between(50'000, 900'000)) {
      const auto all = allMembers();
      const std::string victim = all[rng.below(all.size())];
      sim.at(t, [&sim, victim, down = rng.between(1'000, 1'000'000)] {
        if (!sim.isUp(victim)) return;
        sim.crash(victim);
        sim.at(down, [&sim, victim] {
          if (!sim.isUp(victim)) sim.restart(victim);
        });
      });
    }
  }
  sim.runFor(fault_phase_micros + 1'000'000);
  sim.heal();
  for (const auto& name : allMembers()) {
    if (!sim.isUp(name)) sim.restart(name);
  }
  if (!sim.runUntil([&] { return world.allDone(); }, 600'000'000)) world.fail("not every flow ended");

  Outcome out;
  out.crashes = sim.crashes();
  if (!world.failures.empty()) {
    out.failures = world.failures;
    return out;
  }
  // Checks.
  if (world.moves.size() != issued + 1) {
    world.fail(std::to_string(world.moves.size()) + " moves started, want " + std::to_string(issued + 1));
  }
  std::map<StateRef, int> ok_per_input;
  std::set<SecureHash> recorded_moves;
  size_t contested_started = 0;
  for (const auto& [id, move] : world.moves) {
    auto info = world.outcome(id);
    if (!info && info.error().code == Errc::not_found) continue;  // its start was lost in a crash
    if (!info) {
      world.fail("no status of move " + id.shortHex() + ": " + info.error().message);
      continue;
    }
    if (move.contested) ++contested_started;
    if (info->outcome == vault::FlowOutcome::ok) {
      ++out.moves_ok;
      ++ok_per_input[move.input];
      const SecureHash tx = SecureHash::fromBytes(info->result).value();
      recorded_moves.insert(tx);
      auto stx = world.node(move.from)->vault().transaction(tx);
      if (!stx || !*stx) {
        world.fail("move " + tx.shortHex() + " is not in its sender's vault");
        continue;
      }
      const Bytes bytes = (*stx)->encode();
      for (const std::string& who : {move.to, regulator}) {
        auto there = world.node(who)->vault().transaction(tx);
        if (!there || !*there || (*there)->encode() != bytes) {
          world.fail("move " + tx.shortHex() + " is not recorded identically on '" + who + "'");
        }
      }
      auto consumed = world.notary.consumed.find(move.input);
      if (consumed == world.notary.consumed.end() || consumed->second != tx) {
        world.fail("the notary does not show " + move.input.toString() + " consumed by " + tx.shortHex());
      }
    } else {
      const std::string why = info->error ? info->error->toString() : "?";
      if (!move.contested || !info->error || info->error->code != Errc::conflict ||
          why.find(move.input.toString()) == std::string::npos) {
        world.fail("move " + id.shortHex() + " from '" + move.from + "' ended " +
                   vault::flowOutcomeName(info->outcome) + ": " + why);
      } else {
        ++out.conflicts;
      }
    }
  }
  for (const auto& [ref, n] : ok_per_input) {
    if (n != 1) world.fail(ref.toString() + " was moved " + std::to_string(n) + " times");
  }
  // Both contested moves ran: exactly one lost (a lost start leaves one).
  const uint64_t want_conflicts = contested_started == 2 ? 1 : 0;
  if (out.conflicts != want_conflicts) {
    world.fail(std::to_string(out.conflicts) + " double-spend conflicts, want " +
               std::to_string(want_conflicts));
  }
  // The regulator has every issue (a hider's only as the backchain of its
  // recorded moves, which its recipients sent on) and every move, once; each
  // vault is consistent.
  std::set<SecureHash> observed(recorded_moves.begin(), recorded_moves.end());
  for (const auto& [owner, tx] : issues) {
    if (owner != hider) observed.insert(tx);
  }
  for (const auto& [id, move] : world.moves) {
    auto info = world.outcome(id);
    if (info && info->outcome == vault::FlowOutcome::ok) observed.insert(move.input.txId);
  }
  const uint64_t reg_count = transactionCount(world.node(regulator)->vault());
  if (reg_count != observed.size()) {
    world.fail("the regulator holds " + std::to_string(reg_count) + " transactions, want " +
               std::to_string(observed.size()));
  }
  out.recorded = reg_count;
  for (const auto& name : allMembers()) {
    if (auto st = world.node(name)->vault().checkConsistency(); !st) {
      world.fail("'" + name + "' vault: " + st.error().message);
    }
  }
  // No state is unconsumed in two vaults' eyes after being spent: every
  // unconsumed participant state's ref is not consumed at the notary.
  for (const auto& name : coops) {
    auto page = world.node(name)->vault().query(
        vault::Query(vault::Criteria::all(), vault::StatusFilter::unconsumed,
                     vault::RelevanceFilter::participant));
    if (!page) {
      world.fail("query on '" + name + "': " + page.error().message);
      continue;
    }
    for (const auto& s : page->states) {
      if (world.notary.consumed.count(s.ref)) {
        world.fail("'" + name + "' holds " + s.ref.toString() + " unconsumed, which the notary consumed");
      }
    }
  }
  out.failures = world.failures;
  return out;
}

uint64_t envOr(const char* name, uint64_t fallback) {
  const char* text = ::getenv(name);
  return text && *text ? std::stoull(text) : fallback;
}

}  // namespace

TEST_CASE("built-in flow sim: token moves, a double spend, crashes and a lossy network") {
  std::vector<uint64_t> seeds;
  if (auto one = sim::seedFromEnvironment()) {
    seeds.push_back(*one);
  } else {
    for (uint64_t s = 1; s <= envOr("CCAL_SIM_SEEDS", 4); ++s) seeds.push_back(s);
  }
  uint64_t ok = 0, conflicts = 0, crashes = 0;
  for (uint64_t seed : seeds) {
    Outcome out = runSeed(seed, true);
    ok += out.moves_ok;
    conflicts += out.conflicts;
    crashes += out.crashes;
    if (!out.failures.empty()) {
      std::string all;
      for (const auto& f : out.failures) all += "\n  " + f;
      FAIL_CHECK("seed " << seed << " failed (replay it with CCAL_SIM_SEED=" << seed << "):" << all);
    }
  }
  MESSAGE(seeds.size() << " seeds: " << ok << " moves recorded, " << conflicts
                       << " double spends refused, " << crashes << " crashes");
  if (seeds.size() >= 4) CHECK(crashes > 0);
}

TEST_CASE("built-in flow sim: without faults every move is recorded on both sides and the regulator") {
  Outcome out = runSeed(sim::seedFromEnvironment().value_or(3), false);
  for (const auto& f : out.failures) MESSAGE(f);
  CHECK(out.failures.empty());
  CHECK(out.moves_ok == 6);
  CHECK(out.conflicts == 1);
  CHECK(out.recorded == 12);
}

TEST_CASE("built-in flow sim: a member whose finality skips the regulator; its recipients send every move on") {
  std::vector<uint64_t> seeds;
  if (auto one = sim::seedFromEnvironment()) {
    seeds.push_back(*one);
  } else {
    for (uint64_t s = 1; s <= envOr("CCAL_SIM_SEEDS", 2); ++s) seeds.push_back(s);
  }
  uint64_t ok = 0;
  for (uint64_t seed : seeds) {
    Outcome out = runSeed(seed, true, coops[0]);
    ok += out.moves_ok;
    if (!out.failures.empty()) {
      std::string all;
      for (const auto& f : out.failures) all += "\n  " + f;
      FAIL_CHECK("seed " << seed << " failed (replay it with CCAL_SIM_SEED=" << seed << "):" << all);
    }
  }
  MESSAGE(seeds.size() << " seeds with '" << coops[0] << "' hiding: " << ok << " moves recorded");
  // Without faults: every move reaches the regulator, the hider's from its recipients.
  Outcome quiet = runSeed(sim::seedFromEnvironment().value_or(3), false, coops[0]);
  for (const auto& f : quiet.failures) MESSAGE(f);
  CHECK(quiet.failures.empty());
  CHECK(quiet.moves_ok == 6);
  // 6 moves, the others' 4 issues, and the hider's 2 issues (each moved once,
  // reaching the regulator as a backchain).
  CHECK(quiet.recorded == 12);
}
