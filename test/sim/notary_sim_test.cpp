// The PBFT replicas (notary/replica.h) under the simulator, replicating a
// real key-value "consume" state machine (kv_state_machine.h) over each
// member's LMDB store: clusters of 1, 4 and 7 replicas, clients submitting
// conflicting requests while the network loses, duplicates, delays and
// reorders frames, partitions come and go, replicas crash and restart over
// their stores, clocks are skewed, and (Twins) one replica's identity runs
// as two instances that each talk to a part of the cluster: a Byzantine
// replica that equivocates, as primary and as backup.
//
// Invariants checked at the end of every run:
//   - on every honest replica, no key is taken by two different requests,
//     and honest replicas agree on each key's owner;
//   - honest replicas' executed sequences are prefixes of one another (the
//     effects of every batch both executed are equal) and their state
//     digests agree at equal heights;
//   - no two requests that share a key both completed "ok" at their clients
//     (a client completes on f+1 identical replies);
//   - once the network heals (every honest replica up and connected), every
//     request completes and every honest replica catches up.
//
// A failure names its seed; CCAL_SIM_SEED=<n> replays it. CCAL_SIM_SEEDS=<k>
// runs k seeds of every case, CCAL_SIM_REQUESTS=<n> n requests per seed.
// CI runs 15 seeds of 100 to 150 requests (about a minute of CPU under
// ASan, mostly LMDB writer threads and the simulator's quiesce barriers).

#include <doctest/doctest.h>

#include <cstdio>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "ledger/filtered_transaction.h"
#include "notary/notarisation_testing.h"
#include "notary/notary_client.h"
#include "notary/protocol_client.h"
#include "notary/replica.h"
#include "notary/uniqueness.h"
#include "test/sim/kv_state_machine.h"
#include "test/sim/sim.h"
#include "vault/store.h"

using namespace ccal;
using namespace ccal::notary;

namespace {

uint64_t envOr(const char* name, uint64_t fallback) {
  const char* text = ::getenv(name);
  return text && *text ? std::stoull(text) : fallback;
}

KeyPair keyOf(const std::string& name) {
  return KeyPair::fromSeed(SecureHash::of(asBytes("sim key " + name)).view()).value();
}

std::string replicaName(uint32_t i) {
  return "O=Notary Replica " + std::to_string(i) + ", L=Haikou, C=CN";
}
std::string clientName(uint32_t i) {
  return "O=Cooperative " + std::to_string(i) + ", L=Sanya, C=CN";
}

struct Plan {
  uint32_t replicas = 4;
  uint32_t clients = 2;
  uint32_t requests = 200;
  uint32_t keys = 60;
  bool faults = true;
  bool twins = false;          // replica 0 runs as two instances
  bool skewed_replica = false; // one replica's clock beyond the allowed drift, for good
  int64_t fault_phase_micros = 20'000'000;
  int64_t settle_deadline_micros = 600'000'000;
};

ReplicaConfig replicaConfig(const Plan& plan, uint32_t index) {
  ReplicaConfig c;
  c.cluster = "sim-notary";
  for (uint32_t i = 0; i < plan.replicas; ++i) c.replicas.push_back({replicaName(i), keyOf(replicaName(i)).publicKey()});
  c.self_index = index;
  std::map<std::string, PublicKey> clients;
  for (uint32_t i = 0; i < plan.clients; ++i) clients.emplace(clientName(i), keyOf(clientName(i)).publicKey());
  c.client_key = [clients](std::string_view name) -> std::optional<PublicKey> {
    auto it = clients.find(std::string(name));
    if (it == clients.end()) return std::nullopt;
    return it->second;
  };
  c.batch_size_max = 8;
  c.batch_delay_micros = 2'000;
  c.view_change_timeout_micros = 400'000;
  c.view_change_timeout_micros_max = 6'400'000;
  c.time_drift_micros_max = 2'000'000;
  c.checkpoint_interval_batches = 4;
  c.window_batches_max = 16;
  c.batches_in_flight_max = 8;
  c.status_interval_micros = 150'000;
  if (!::getenv("CCAL_SIM_LOG")) c.log = [](std::string_view) {};
  return c;
}

// Holds a store's writer from the start of an event to its quiesce, so the
// event's writes share one commit (sim.h); released before the store closes.
struct EventHold {
  std::optional<vault::Store::Hold> held;
  void begin(vault::Store& store) {
    if (!held) held.emplace(store.hold());
  }
  void end() { held.reset(); }
};

// One replica instance over its own store directory.
struct ReplicaInstance {
  std::unique_ptr<vault::Store> store;
  std::unique_ptr<sim::KvStateMachine> machine;
  std::unique_ptr<Replica> replica;

  ReplicaInstance(const std::string& dir, ReplicaConfig config, flows::Link& link,
                  flows::Executor& executor, const flows::Clock& clock) {
    vault::StoreConfig sc;
    sc.path = dir;
    sc.durable = false;
    sc.map_size_bytes = 64ull << 20;
    std::vector<std::string> dbs = pbft::ReplicaStore::dbNames();
    for (const auto& d : sim::KvStateMachine::dbNames()) dbs.push_back(d);
    store = vault::Store::open(sc, dbs, "ccal-notary-sim", 1).value();
    machine = std::make_unique<sim::KvStateMachine>(*store);
    const std::string name = config.replicas[config.self_index].name;
    replica = std::make_unique<Replica>(std::move(config), keyOf(name), link, executor, clock,
                                        *store, *machine);
    Status started = replica->start();
    CCAL_ASSERT_MSG(started.ok(), started.ok() ? "" : started.error().toString().c_str());
  }
  ~ReplicaInstance() {
    hold.end();
    replica.reset();
    machine.reset();
    store.reset();
  }
  void beginEvent() { hold.begin(*store); }
  void quiesce() {
    hold.end();
    replica->quiesceStore();
    machine->quiesce();
  }
  EventHold hold;
};

class ReplicaNode final : public sim::Node {
 public:
  ReplicaNode(sim::MemberEnv& env, const Plan& plan, uint32_t index)
      : instance(env.dir, replicaConfig(plan, index), env.link, env.executor, env.clock) {}
  void beginEvent() override { instance.beginEvent(); }
  void quiesce() override { instance.quiesce(); }
  ReplicaInstance instance;
};

// A link that lets one twin talk to some peers only.
class FilterLink final : public flows::Link {
 public:
  FilterLink(flows::Link& inner, std::set<std::string> peers) : inner_(inner), peers_(std::move(peers)) {}
  void setHandler(flows::LinkHandler* handler) override { handler_ = handler; }
  Status send(std::string_view peer, Bytes frame) override {
    if (!peers_.count(std::string(peer))) return Status();  // silently not delivered
    return inner_.send(peer, std::move(frame));
  }
  size_t frameBytesMax() const override { return inner_.frameBytesMax(); }
  bool reaches(std::string_view peer) const { return peers_.count(std::string(peer)) > 0; }
  flows::LinkHandler* handler() const { return handler_; }

 private:
  flows::Link& inner_;
  std::set<std::string> peers_;
  flows::LinkHandler* handler_ = nullptr;
};

// Twins: two instances of one replica identity, each talking to its part
// of the cluster (and to every client); they propose different batches (a
// different batch size and gathering), so as primary the identity equivocates.
class TwinNode final : public sim::Node, public flows::LinkHandler {
 public:
  TwinNode(sim::MemberEnv& env, const Plan& plan, uint32_t index) {
    std::set<std::string> a, b;
    for (uint32_t i = 0; i < plan.replicas; ++i) {
      if (i == index) continue;
      (i <= plan.replicas / 2 ? a : b).insert(replicaName(i));
    }
    for (uint32_t i = 0; i < plan.clients; ++i) {
      a.insert(clientName(i));
      b.insert(clientName(i));
    }
    env.link.setHandler(this);
    link_a_ = std::make_unique<FilterLink>(env.link, a);
    link_b_ = std::make_unique<FilterLink>(env.link, b);
    ReplicaConfig ca = replicaConfig(plan, index), cb = replicaConfig(plan, index);
    // Twin b proposes at every arrival (no gathering, at most 3 requests),
    // twin a gathers while batches are in flight: their batches differ.
    cb.batch_size_max = 3;
    cb.batch_delay_micros = 0;
    twin_a_ = std::make_unique<ReplicaInstance>(env.dir + "/a", ca, *link_a_, env.executor, env.clock);
    twin_b_ = std::make_unique<ReplicaInstance>(env.dir + "/b", cb, *link_b_, env.executor, env.clock);
  }
  ~TwinNode() override {
    twin_a_.reset();
    twin_b_.reset();
  }
  void beginEvent() override {
    twin_a_->beginEvent();
    twin_b_->beginEvent();
  }
  void quiesce() override {
    twin_a_->quiesce();
    twin_b_->quiesce();
  }
  void onFrame(std::string_view peer, ByteView frame) override {
    if (link_a_->reaches(peer)) link_a_->handler()->onFrame(peer, frame);
    if (link_b_->reaches(peer)) link_b_->handler()->onFrame(peer, frame);
  }
  void onPeerUp(std::string_view peer) override {
    if (link_a_->reaches(peer)) link_a_->handler()->onPeerUp(peer);
    if (link_b_->reaches(peer)) link_b_->handler()->onPeerUp(peer);
  }
  void onPeerDown(std::string_view) override {}

 private:
  std::unique_ptr<FilterLink> link_a_, link_b_;
  std::unique_ptr<ReplicaInstance> twin_a_, twin_b_;
};

class World;

class ClientNode final : public sim::Node {
 public:
  ClientNode(sim::MemberEnv& env, const Plan& plan, World& world);
  void submit(const std::string& id, const std::vector<std::string>& keys);

 private:
  World& world_;
  uint32_t f_;
  std::unique_ptr<ProtocolClient> client_;
};

class World {
 public:
  World(uint64_t seed, const Plan& plan) : sim(seed), plan_(plan) {}

  struct RequestLog {
    std::vector<std::string> keys;
    bool completed = false;
    std::string outcome;
  };
  sim::Simulation sim;
  std::map<std::string, RequestLog> requests;
  std::vector<std::string> failures;
  uint64_t completed = 0;

  void fail(const std::string& what) {
    if (failures.size() < 20) failures.push_back(what);
  }
  void onComplete(const std::string& id, const std::string& outcome) {
    RequestLog& r = requests[id];
    if (r.completed) return;
    r.completed = true;
    r.outcome = outcome;
    ++completed;
    sim.trace("completed " + id + " " + outcome);
  }
  bool allComplete() const { return completed == requests.size(); }
  const Plan& plan() const { return plan_; }

 private:
  const Plan& plan_;
};

ClientNode::ClientNode(sim::MemberEnv& env, const Plan& plan, World& world)
    : world_(world), f_((plan.replicas - 1) / 3) {
  ProtocolClientConfig c;
  c.client_name = env.name;
  for (uint32_t i = 0; i < plan.replicas; ++i) c.replicas.push_back({replicaName(i), keyOf(replicaName(i)).publicKey()});
  c.retransmit_delay_micros_min = 300'000;
  c.retransmit_delay_micros_max = 3'000'000;
  c.log = [](std::string_view) {};
  client_ = std::make_unique<ProtocolClient>(c, keyOf(env.name), env.link, env.executor, env.clock);
}

void ClientNode::submit(const std::string& id, const std::vector<std::string>& keys) {
  // Completes on f+1 identical replies: at least one from an honest replica.
  auto votes = std::make_shared<std::map<std::string, uint32_t>>();
  auto seq = std::make_shared<uint64_t>(0);
  auto submitted = client_->submit(
      sim::KvStateMachine::requestBody(id, keys),
      [this, id, votes, seq](uint32_t, ByteView reply) {
        const std::string body(reply.begin(), reply.end());
        if (++(*votes)[body] == f_ + 1) {
          world_.onComplete(id, body);
          client_->finish(*seq);
        }
      });
  CCAL_ASSERT(submitted.ok());
  *seq = *submitted;
}

struct Outcome {
  std::vector<std::string> failures;
  SecureHash trace;
  uint64_t completed = 0, ok = 0, view_changes = 0, state_transfers = 0, stable = 0,
           rejected = 0, crashes = 0, executed_max = 0;
  uint64_t overlapped = 0;  // batches handed to execution before the one before was durable
  // Votes sent as their write was queued; pre-prepares accepted without a
  // vote (restarted without a clean stop: the simulator's crashes).
  uint64_t votes_early = 0, votes_abstained = 0;
};

std::vector<uint32_t> honestReplicas(const Plan& plan) {
  std::vector<uint32_t> out;
  for (uint32_t i = plan.twins ? 1 : 0; i < plan.replicas; ++i) out.push_back(i);
  return out;
}

void checkInvariants(World& world, const Plan& plan, Outcome& out, bool caught_up_expected) {
  // Every honest replica's state.
  struct View {
    uint32_t index;
    uint64_t last;
    std::map<std::string, std::string> keys;
    sim::KvStateMachine* machine;
    Replica* replica;
  };
  std::vector<View> views;
  for (uint32_t i : honestReplicas(plan)) {
    auto* node = world.sim.nodeAs<ReplicaNode>(replicaName(i));
    if (node == nullptr) continue;
    auto& inst = node->instance;
    views.push_back({i, inst.machine->lastExecuted(), inst.machine->keys(), inst.machine.get(),
                     inst.replica.get()});
    const auto& st = inst.replica->stats();
    out.view_changes += st.view_changes;
    out.state_transfers += st.state_transfers;
    out.stable += st.checkpoints_stable;
    out.rejected += st.frames_rejected;
    out.overlapped += st.batches_overlapped;
    out.votes_early += st.votes_early;
    out.votes_abstained += st.votes_abstained;
    out.executed_max = std::max(out.executed_max, inst.machine->lastExecuted());
  }
  for (size_t a = 0; a < views.size(); ++a) {
    for (size_t b = a + 1; b < views.size(); ++b) {
      const uint64_t common = std::min(views[a].last, views[b].last);
      for (uint64_t s = 1; s <= common; ++s) {
        auto ea = views[a].machine->effects(s), eb = views[b].machine->effects(s);
        if (!ea || !eb || *ea != *eb) {
          world.fail("replicas " + std::to_string(views[a].index) + " and " +
                     std::to_string(views[b].index) + " differ at batch " + std::to_string(s));
          break;
        }
      }
      if (views[a].replica->stateDigestSeq() == views[b].replica->stateDigestSeq() &&
          views[a].replica->stateDigest() != views[b].replica->stateDigest()) {
        world.fail("replicas " + std::to_string(views[a].index) + " and " + std::to_string(views[b].index) +
                   " have different state digests at batch " + std::to_string(views[a].last));
      }
      for (const auto& [k, owner] : views[a].keys) {
        auto it = views[b].keys.find(k);
        if (it != views[b].keys.end() && it->second != owner) {
          world.fail("key " + k + " taken by " + owner + " at replica " + std::to_string(views[a].index) +
                     " and by " + it->second + " at replica " + std::to_string(views[b].index));
        }
      }
    }
  }
  // Client outcomes: no key consumed by two requests that both completed ok.
  std::map<std::string, std::string> ok_owner;
  for (const auto& [id, r] : world.requests) {
    if (!r.completed || r.outcome != "ok") continue;
    ++out.ok;
    for (const auto& k : r.keys) {
      auto [it, fresh] = ok_owner.emplace(k, id);
      if (!fresh && it->second != id) world.fail("key " + k + " consumed by both " + it->second + " and " + id);
      for (const auto& v : views) {
        auto owner = v.keys.find(k);
        if (v.last >= out.executed_max && (owner == v.keys.end() || owner->second != id)) {
          world.fail("request " + id + " completed ok but key " + k + " is not its at replica " +
                     std::to_string(v.index));
        }
      }
    }
  }
  if (caught_up_expected) {
    // Every honest replica reaches the cluster's last stable checkpoint (a
    // replica left alone ahead in a view change, beside a Byzantine twin or
    // the replica whose clock is beyond the drift (it rejects every batch),
    // catches up at checkpoints: 2 faults of 4 for the batches after it).
    uint64_t stable_max = 0;
    for (const auto& v : views) stable_max = std::max(stable_max, v.replica->stableSeq());
    const uint64_t required = plan.twins || plan.skewed_replica ? stable_max : out.executed_max;
    for (const auto& v : views) {
      if (v.last < required) {
        world.fail("replica " + std::to_string(v.index) + " stayed at batch " + std::to_string(v.last) +
                   " of " + std::to_string(out.executed_max));
      }
    }
  }
}

Outcome runSeed(uint64_t seed, const Plan& plan) {
  World world(seed, plan);
  sim::Simulation& sim = world.sim;
  auto& rng = sim.rng();
  if (plan.faults) {
    const double losses[] = {0, 0.02, 0.1, 0.25};
    const double dups[] = {0, 0.05, 0.2};
    const int64_t delays[] = {1'000, 20'000, 100'000};
    sim.network().loss = losses[rng.below(4)];
    sim.network().duplication = dups[rng.below(3)];
    sim.network().reorder = dups[rng.below(3)];
    sim.network().delay_micros_max = delays[rng.below(3)];
  }
  for (uint32_t i = 0; i < plan.replicas; ++i) {
    const bool twin = plan.twins && i == 0;
    sim.addMember(replicaName(i), [&plan, i, twin](sim::MemberEnv& env) -> std::unique_ptr<sim::Node> {
      if (twin) return std::make_unique<TwinNode>(env, plan, i);
      return std::make_unique<ReplicaNode>(env, plan, i);
    });
  }
  for (uint32_t i = 0; i < plan.clients; ++i) {
    sim.addMember(clientName(i), [&plan, &world](sim::MemberEnv& env) -> std::unique_ptr<sim::Node> {
      return std::make_unique<ClientNode>(env, plan, world);
    });
  }
  // The workload: requests at random moments, one or two keys each from a
  // small pool, so many conflict.
  for (uint32_t r = 0; r < plan.requests; ++r) {
    const std::string id = "r" + std::to_string(r);
    std::vector<std::string> keys{"k" + std::to_string(rng.below(plan.keys))};
    if (rng.chance(0.4)) {
      std::string k2 = "k" + std::to_string(rng.below(plan.keys));
      if (k2 != keys[0]) keys.push_back(k2);
    }
    world.requests[id].keys = keys;
    const std::string client = clientName(static_cast<uint32_t>(rng.below(plan.clients)));
    sim.at(rng.between(0, plan.fault_phase_micros), [&sim, client, id, keys] {
      sim.nodeAs<ClientNode>(client)->submit(id, keys);
    });
  }
  const uint32_t first_victim = plan.twins ? 1 : 0;
  const uint32_t victims = plan.replicas - first_victim;
  if (plan.skewed_replica) sim.setSkew(replicaName(plan.replicas - 1), 30'000'000);
  if (plan.faults) {
    for (int64_t t = rng.between(0, 2'000'000); t < plan.fault_phase_micros;
         t += rng.between(300'000, 3'000'000)) {
      const std::string victim = replicaName(first_victim + static_cast<uint32_t>(rng.below(victims)));
      switch (rng.below(3)) {
        case 0:
          sim.at(t, [&sim, victim, down = rng.between(1'000, 4'000'000)] {
            if (!sim.isUp(victim)) return;
            sim.crash(victim);
            sim.at(down, [&sim, victim] {
              if (!sim.isUp(victim)) sim.restart(victim);
            });
          });
          break;
        case 1: {
          std::set<std::string> side{victim};
          if (rng.chance(0.4)) side.insert(replicaName(static_cast<uint32_t>(rng.below(plan.replicas))));
          sim.at(t, [&sim, side, heal_after = rng.between(1'000, 4'000'000)] {
            sim.isolate(side);
            sim.at(heal_after, [&sim] { sim.heal(); });
          });
          break;
        }
        default:
          if (plan.skewed_replica && victim == replicaName(plan.replicas - 1)) break;
          sim.at(t, [&sim, victim, skew = rng.between(-1'000'000, 1'000'000)] {
            sim.setSkew(victim, skew);
          });
      }
    }
  }
  sim.runFor(plan.fault_phase_micros + 1'000'000);
  sim.heal();
  for (uint32_t i = 0; i < plan.replicas; ++i) {
    if (!sim.isUp(replicaName(i))) sim.restart(replicaName(i));
  }
  auto caughtUp = [&] {
    if (!world.allComplete()) return false;
    uint64_t lo = UINT64_MAX, hi = 0, stable = 0;
    for (uint32_t i : honestReplicas(plan)) {
      auto* node = sim.nodeAs<ReplicaNode>(replicaName(i));
      if (node == nullptr) return false;
      const uint64_t last = node->instance.machine->lastExecuted();
      lo = std::min(lo, last);
      hi = std::max(hi, last);
      stable = std::max(stable, node->instance.replica->stableSeq());
    }
    return plan.twins || plan.skewed_replica ? lo >= stable : lo == hi;
  };
  const bool done = sim.runUntil(caughtUp, plan.settle_deadline_micros);
  Outcome out;
  if (!world.allComplete()) {
    std::string missing;
    int shown = 0;
    for (const auto& [id, r] : world.requests) {
      if (!r.completed && shown++ < 5) missing += " " + id;
    }
    world.fail(std::to_string(world.requests.size() - world.completed) + " of " +
               std::to_string(world.requests.size()) + " requests never completed:" + missing);
  }
  checkInvariants(world, plan, out, done || world.allComplete());
  if (!world.failures.empty()) {
    for (uint32_t i : honestReplicas(plan)) {
      auto* node = sim.nodeAs<ReplicaNode>(replicaName(i));
      if (node == nullptr) continue;
      const Replica& r = *node->instance.replica;
      world.fail("  replica " + std::to_string(i) + ": view " + std::to_string(r.view()) +
                 (r.viewChanging() ? " (changing)" : "") + ", executed " +
                 std::to_string(r.lastExecuted()) + ", stable " + std::to_string(r.stableSeq()));
    }
  }
  out.failures = world.failures;
  out.trace = sim.traceHash();
  out.completed = world.completed;
  out.crashes = sim.crashes();
  return out;
}

Outcome runSeeds(const std::string& what, Plan plan, uint64_t ci_seeds, uint64_t first_seed) {
  plan.requests = static_cast<uint32_t>(envOr("CCAL_SIM_REQUESTS", plan.requests));
  std::vector<uint64_t> seeds;
  if (auto one = sim::seedFromEnvironment()) {
    seeds.push_back(*one);
  } else {
    for (uint64_t s = 0; s < envOr("CCAL_SIM_SEEDS", ci_seeds); ++s) seeds.push_back(first_seed + s);
  }
  Outcome total;
  for (uint64_t seed : seeds) {
    Outcome out = runSeed(seed, plan);
    total.completed += out.completed;
    total.ok += out.ok;
    total.view_changes += out.view_changes;
    total.state_transfers += out.state_transfers;
    total.stable += out.stable;
    total.rejected += out.rejected;
    total.crashes += out.crashes;
    total.overlapped += out.overlapped;
    total.votes_early += out.votes_early;
    total.votes_abstained += out.votes_abstained;
    if (!out.failures.empty()) {
      std::string all;
      for (const auto& f : out.failures) all += "\n  " + f;
      FAIL_CHECK(what << ": seed " << seed << " failed (replay it with CCAL_SIM_SEED=" << seed << "):" << all);
      std::fprintf(stderr, "notary sim %s: seed %llu FAILED\n", what.c_str(), static_cast<unsigned long long>(seed));
    }
  }
  MESSAGE(what << ": " << seeds.size() << " seeds, " << total.completed << " requests completed ("
               << total.ok << " ok, the rest conflicts), " << total.view_changes
               << " view changes, " << total.stable << " stable checkpoints, "
               << total.state_transfers << " state transfers, " << total.crashes << " crashes, "
               << total.rejected << " messages rejected, " << total.overlapped
               << " batches executed overlapped, " << total.votes_early << " votes sent early, "
               << total.votes_abstained << " withheld after a crash");
  return total;
}

}  // namespace

TEST_CASE("notary sim: 4 replicas under loss, duplication, reordering, partitions, crashes, skew") {
  Plan plan;
  plan.requests = 150;
  const Outcome total = runSeeds("4 replicas", plan, 10, 1);
  // Not vacuous: some batches went to the state machine while the one
  // before was still executing (several committed at once); votes went out
  // before their writes were durable, and replicas restarted after a crash
  // withheld theirs in the view they crashed in.
  CHECK(total.overlapped > 0);
  CHECK(total.votes_early > 0);
  CHECK(total.votes_abstained > 0);
}

TEST_CASE("notary sim: 7 replicas under faults") {
  Plan plan;
  plan.replicas = 7;
  plan.requests = 120;
  runSeeds("7 replicas", plan, 2, 101);
}

TEST_CASE("notary sim: a replica whose clock is beyond the allowed drift, for good") {
  Plan plan;
  plan.skewed_replica = true;
  plan.requests = 100;
  runSeeds("skewed replica", plan, 2, 201);
}

TEST_CASE("notary sim: Twins, replica 0 (the first primary) runs as two equivocating instances") {
  Plan plan;
  plan.twins = true;
  plan.requests = 120;
  runSeeds("twins, 4 replicas", plan, 3, 301);
  plan.replicas = 7;
  plan.requests = 100;
  runSeeds("twins, 7 replicas", plan, 1, 401);
}

TEST_CASE("notary sim: a single-replica cluster (f = 0) with crashes") {
  Plan plan;
  plan.replicas = 1;
  plan.requests = 150;
  runSeeds("1 replica", plan, 1, 501);
}

TEST_CASE("notary sim: without faults every request completes; one seed replays exactly") {
  Plan plan;
  plan.faults = false;
  plan.requests = 100;
  const uint64_t seed = sim::seedFromEnvironment().value_or(7);
  Outcome first = runSeed(seed, plan);
  for (const auto& f : first.failures) FAIL_CHECK(f);
  CHECK(first.completed == 100);
  CHECK(first.view_changes == 0);
  Outcome again = runSeed(seed, plan);
  CHECK(again.trace == first.trace);
}

// --- the notarisation state machine and NotaryClient over the protocol -----------------
// Requests the state machine refuses (StateMachine::check) are answered by
// every replica that received them, unordered, with a signed error reply
// (StateMachine::rejection); NotaryClient finishes on f+1 matching ones.

namespace {

constexpr const char* sim_notary_name = "O=Sim Notary, L=Haikou, C=CN";

std::vector<PublicKey> simReplicaKeys(uint32_t replicas) {
  std::vector<PublicKey> keys;
  for (uint32_t i = 0; i < replicas; ++i) keys.push_back(keyOf(replicaName(i)).publicKey());
  return keys;
}

Key simServiceKey(uint32_t replicas) {
  return Key::anyOf((replicas - 1) / 3 * 2 + 1, simReplicaKeys(replicas)).value();
}

// A replica over the real notarisation state machine, both in one Store.
class NotaryReplicaNode final : public sim::Node {
 public:
  NotaryReplicaNode(sim::MemberEnv& env, const Plan& plan, uint32_t index) {
    vault::StoreConfig sc;
    sc.path = env.dir;
    sc.durable = false;
    sc.map_size_bytes = 64ull << 20;
    store = UniquenessStateMachine::openStore(sc, pbft::ReplicaStore::dbNames()).value();
    UniquenessConfig uc;
    uc.notary_name = sim_notary_name;
    uc.service_key = simServiceKey(plan.replicas);
    uc.complete_on = &env.executor;
    machine = UniquenessStateMachine::open(*store, uc, keyOf(replicaName(index))).value();
    replica = std::make_unique<Replica>(replicaConfig(plan, index), keyOf(replicaName(index)), env.link,
                                        env.executor, env.clock, *store, *machine);
    Status started = replica->start();
    CCAL_ASSERT_MSG(started.ok(), started.ok() ? "" : started.error().toString().c_str());
  }
  ~NotaryReplicaNode() override {
    hold.end();
    replica.reset();
    machine.reset();
    store.reset();
  }
  void beginEvent() override { hold.begin(*store); }
  void quiesce() override {
    hold.end();
    replica->quiesceStore();
    // A barrier: the writer runs requests and their completions in order.
    CCAL_ASSERT(store->write([](vault::WriteTxn&) { return Status(); }).ok());
  }

  std::unique_ptr<vault::Store> store;
  std::unique_ptr<UniquenessStateMachine> machine;
  std::unique_ptr<Replica> replica;
  EventHold hold;
};

class NotaryClientNode final : public sim::Node {
 public:
  NotaryClientNode(sim::MemberEnv& env, const Plan& plan) {
    ProtocolClientConfig c;
    c.client_name = env.name;
    for (uint32_t i = 0; i < plan.replicas; ++i) c.replicas.push_back({replicaName(i), keyOf(replicaName(i)).publicKey()});
    c.retransmit_delay_micros_min = 300'000;
    c.retransmit_delay_micros_max = 3'000'000;
    c.log = [](std::string_view) {};
    channel = std::make_unique<ProtocolClient>(c, keyOf(env.name), env.link, env.executor, env.clock);
    NotaryClusterInfo info;
    info.name = sim_notary_name;
    info.service_key = simServiceKey(plan.replicas);
    info.f = (plan.replicas - 1) / 3;
    info.replica_keys = simReplicaKeys(plan.replicas);
    NotaryClientConfig nc;
    nc.log = [](std::string_view) {};
    client = std::make_unique<NotaryClient>(env.executor, *channel, info, nc);
  }
  ~NotaryClientNode() override {
    client.reset();
    channel.reset();
  }
  std::unique_ptr<ProtocolClient> channel;
  std::unique_ptr<NotaryClient> client;
};

}  // namespace

TEST_CASE("notary sim: requests the state machine refuses get the error from f+1 replicas, fast") {
  using notary::testing::spend;
  using notary::testing::stateRef;
  const Party party{sim_notary_name, simServiceKey(4)};
  const notary::testing::TestCluster other(1, "O=Other Notary, L=Haikou, C=CN", 60);
  for (const bool faults : {false, true}) {
    CAPTURE(faults);
    Plan plan;
    plan.clients = 1;
    sim::Simulation sim(sim::seedFromEnvironment().value_or(faults ? 12 : 11));
    if (faults) {
      sim.network().loss = 0.1;
      sim.network().duplication = 0.05;
      sim.network().reorder = 0.05;
      sim.network().delay_micros_max = 20'000;
    }
    for (uint32_t i = 0; i < plan.replicas; ++i) {
      sim.addMember(replicaName(i), [&plan, i](sim::MemberEnv& env) -> std::unique_ptr<sim::Node> {
        return std::make_unique<NotaryReplicaNode>(env, plan, i);
      });
    }
    sim.addMember(clientName(0), [&plan](sim::MemberEnv& env) -> std::unique_ptr<sim::Node> {
      return std::make_unique<NotaryClientNode>(env, plan);
    });
    // With faults, a backup is down for good: the other three still answer.
    if (faults) sim.crash(replicaName(3));

    const WireTransaction good = spend(party, {stateRef("good")});
    const WireTransaction hiding = spend(party, {stateRef("h1"), stateRef("h2")});
    const WireTransaction foreign = spend(other.party, {stateRef("foreign")});
    const WireTransaction addressed = spend(party, {stateRef("addressed")});
    struct Case {
      std::string what;
      SecureHash tx_id;
      Bytes body;
      std::optional<Errc> code;  // nullopt: notarised
      std::string says;
      std::optional<Result<NotarisationResult>> result;
      int64_t took_micros = 0;
    };
    std::vector<Case> cases;
    cases.push_back({"a good request", good.id(), notary::testing::nonValidatingRequest(good, sim_notary_name),
                     std::nullopt, "", std::nullopt, 0});
    cases.push_back({"a malformed body", good.id(), Bytes{0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08},
                     Errc::malformed, "", std::nullopt, 0});
    cases.push_back({"a request naming another notary", addressed.id(),
                     NotarisationRequest::nonValidating(other.party.name, FilteredTransaction::forNotary(addressed))
                         .encode(),
                     Errc::invalid_transaction, "the request is for notary " + other.party.name, std::nullopt, 0});
    cases.push_back({"a transaction naming another notary", foreign.id(),
                     notary::testing::nonValidatingRequest(foreign, sim_notary_name), Errc::invalid_transaction,
                     "the transaction's notary is " + other.party.name, std::nullopt, 0});
    cases.push_back(
        {"a filtered transaction hiding an input", hiding.id(),
         NotarisationRequest::nonValidating(sim_notary_name,
                                            FilteredTransaction::build(hiding,
                                                                       [](ComponentGroup g, uint32_t i) {
                                                                         return (g == ComponentGroup::inputs && i == 0) ||
                                                                                g == ComponentGroup::references ||
                                                                                g == ComponentGroup::notary ||
                                                                                g == ComponentGroup::time_window;
                                                                       }))
             .encode(),
         Errc::not_visible, "filtered transaction", std::nullopt, 0});
    const int64_t start = sim.now() + 100'000;
    sim.at(100'000, [&] {
      auto* node = sim.nodeAs<NotaryClientNode>(clientName(0));
      for (auto& c : cases) {
        node->client->submit(c.tx_id, c.body, [&sim, &c, start](Result<NotarisationResult> r) {
          c.result = std::move(r);
          c.took_micros = sim.now() - start;
        });
      }
    });
    const bool done = sim.runUntil(
        [&] {
          return std::all_of(cases.begin(), cases.end(), [](const Case& c) { return c.result.has_value(); });
        },
        20'000'000);
    CHECK(done);
    for (const auto& c : cases) {
      CAPTURE(c.what);
      REQUIRE(c.result.has_value());
      if (!c.code) {
        REQUIRE(c.result->ok());
        CHECK((*c.result)->kind == NotarisationResult::Kind::notarised);
      } else {
        REQUIRE(!c.result->ok());
        CHECK(c.result->error().code == *c.code);
        CHECK(c.result->error().message.find(c.says) != std::string::npos);
        CHECK(c.result->error().message.find("refused") != std::string::npos);
        // Far sooner than the client's 30 s timeout: no view change, at most
        // a few retransmissions under loss.
        CHECK(c.took_micros < (faults ? 5'000'000 : 500'000));
      }
    }
    // Nothing refused was ordered: only the good request executed.
    for (uint32_t i = 0; i < plan.replicas; ++i) {
      auto* node = sim.nodeAs<NotaryReplicaNode>(replicaName(i));
      if (node == nullptr) continue;
      CAPTURE(i);
      CHECK(node->replica->stats().requests_refused >= 1);
      if (!faults) {
        CHECK(node->replica->stats().requests_executed == 1);
        CHECK(node->replica->stats().view_changes == 0);
      }
      CHECK(node->machine->consumedBy(stateRef("h1")).value() == std::nullopt);
      CHECK(node->machine->consumedBy(stateRef("foreign")).value() == std::nullopt);
      CHECK(node->machine->consumedBy(stateRef("addressed")).value() == std::nullopt);
    }
  }
}

// --- a faulty client: authenticators valid for some replicas only ----------------------
// The rule (notary/README.md, "Faulty client"): a backup that cannot
// authenticate a request in a pre-prepare holds the batch and prepares it
// once it can (the client's own copy arrives) or once f+1 backups prepared
// it (one of them honest, which authenticated every request in it).

namespace {

class FaultyClientNode final : public sim::Node, public flows::LinkHandler {
 public:
  FaultyClientNode(sim::MemberEnv& env, const Plan& plan, World& world)
      : world_(world), link_(env.link), name_(env.name), f_((plan.replicas - 1) / 3) {
    pbft::KeyRing ring(keyOf(env.name), env.name);
    for (uint32_t i = 0; i < plan.replicas; ++i) {
      macs_.push_back(ring.keyFor(replicaName(i), keyOf(replicaName(i)).publicKey()).value());
    }
    env.link.setHandler(this);
  }
  // Sends the request to `send_to` only, its MAC valid for `valid_for` only.
  void submit(const std::string& id, const std::vector<std::string>& keys, const std::set<uint32_t>& valid_for,
              const std::set<uint32_t>& send_to) {
    pbft::WireRequest r;
    r.client = name_;
    r.client_seq = ++seq_;
    r.body = sim::KvStateMachine::requestBody(id, keys);
    for (uint32_t i = 0; i < macs_.size(); ++i) {
      Bytes tag = pbft::mac(macs_[i], r.digest());
      if (!valid_for.count(i)) tag[0] ^= 0x01;
      r.authenticator.push_back(std::move(tag));
    }
    ids_[r.client_seq] = id;
    const Bytes frame = pbft::encodeFrame(pbft::Message(r));
    for (uint32_t i : send_to) (void)link_.send(replicaName(i), frame);
  }
  void onFrame(std::string_view peer, ByteView frame) override {
    auto m = pbft::decodeFrame(frame, pbft::PbftLimits{});
    if (!m) return;
    for (const auto& reply : pbft::splitReplies(std::move(*m))) {
      auto id = ids_.find(reply.client_seq);
      if (id == ids_.end() || replicaName(reply.replica) != peer) continue;
      auto& voters = votes_[reply.client_seq][std::string(reply.body.begin(), reply.body.end())];
      voters.insert(reply.replica);
      if (voters.size() == f_ + 1)
        world_.onComplete(id->second, std::string(reply.body.begin(), reply.body.end()));
    }
  }
  void onPeerUp(std::string_view) override {}
  void onPeerDown(std::string_view) override {}

 private:
  World& world_;
  flows::Link& link_;
  std::string name_;
  uint32_t f_;
  std::vector<pbft::MacKey> macs_;
  uint64_t seq_ = 0;
  std::map<uint64_t, std::string> ids_;
  std::map<uint64_t, std::map<std::string, std::set<uint32_t>>> votes_;
};

struct FaultyClientRun {
  Plan plan;
  World world;
  explicit FaultyClientRun(uint64_t seed) : world(seed, plan) {
    plan.clients = 2;  // client 0 honest, client 1 faulty
    for (uint32_t i = 0; i < plan.replicas; ++i) {
      world.sim.addMember(replicaName(i), [this, i](sim::MemberEnv& env) -> std::unique_ptr<sim::Node> {
        return std::make_unique<ReplicaNode>(env, plan, i);
      });
    }
    world.sim.addMember(clientName(0), [this](sim::MemberEnv& env) -> std::unique_ptr<sim::Node> {
      return std::make_unique<ClientNode>(env, plan, world);
    });
    world.sim.addMember(clientName(1), [this](sim::MemberEnv& env) -> std::unique_ptr<sim::Node> {
      return std::make_unique<FaultyClientNode>(env, plan, world);
    });
  }
  Replica& replica(uint32_t i) { return *world.sim.nodeAs<ReplicaNode>(replicaName(i))->instance.replica; }
  sim::KvStateMachine& machine(uint32_t i) {
    return *world.sim.nodeAs<ReplicaNode>(replicaName(i))->instance.machine;
  }
  void honest(const std::string& id, std::vector<std::string> keys, int64_t at) {
    world.requests[id].keys = keys;
    world.sim.at(at, [this, id, keys] { world.sim.nodeAs<ClientNode>(clientName(0))->submit(id, keys); });
  }
  void faulty(const std::string& id, std::vector<std::string> keys, int64_t at, std::set<uint32_t> valid_for,
              std::set<uint32_t> send_to) {
    world.sim.at(at, [this, id, keys, valid_for, send_to] {
      world.sim.nodeAs<FaultyClientNode>(clientName(1))->submit(id, keys, valid_for, send_to);
    });
  }
};

}  // namespace

TEST_CASE("notary sim: a faulty client's request with MACs valid at f+1 backups commits everywhere, no view change") {
  FaultyClientRun run(sim::seedFromEnvironment().value_or(601));
  run.world.sim.network().reorder = 0.2;
  run.world.sim.network().delay_micros_max = 20'000;
  // Sent to the primary only; replica 3 cannot authenticate it.
  for (int i = 0; i < 6; ++i) {
    const std::string id = "faulty" + std::to_string(i);
    run.world.requests[id].keys = {"f" + std::to_string(i)};
    run.faulty(id, {"f" + std::to_string(i)}, 100'000 + 50'000 * i, {0, 1, 2}, {0});
    run.honest("honest" + std::to_string(i), {"h" + std::to_string(i)}, 120'000 + 50'000 * i);
  }
  const bool done = run.world.sim.runUntil(
      [&] {
        if (!run.world.allComplete()) return false;
        for (uint32_t i = 0; i < 4; ++i) {
          if (run.machine(i).lastExecuted() != run.machine(0).lastExecuted()) return false;
        }
        return true;
      },
      30'000'000);
  CHECK(done);
  for (const auto& [id, r] : run.world.requests) {
    CAPTURE(id);
    CHECK(r.completed);
    CHECK(r.outcome == "ok");
  }
  for (uint32_t i = 0; i < 4; ++i) {
    CAPTURE(i);
    CHECK(run.replica(i).stats().view_changes == 0);
    const auto keys = run.machine(i).keys();
    for (int k = 0; k < 6; ++k) CHECK(keys.at("f" + std::to_string(k)) == "faulty" + std::to_string(k));
  }
  CHECK(run.replica(3).stats().pre_prepares_held >= 1);
  CHECK(run.replica(3).stats().held_accepted_by_prepares >= 1);
}

TEST_CASE("notary sim: a faulty client's request no backup can authenticate never executes; honest requests still complete") {
  FaultyClientRun run(sim::seedFromEnvironment().value_or(602));
  // MACs valid at the primary only, sent to the primary only.
  run.faulty("forged0", {"x0"}, 100'000, {0}, {0});
  run.faulty("forged1", {"x1"}, 150'000, {0}, {0});
  for (int i = 0; i < 6; ++i) run.honest("honest" + std::to_string(i), {"h" + std::to_string(i)}, 120'000 + 300'000 * i);
  const bool done = run.world.sim.runUntil([&] { return run.world.allComplete(); }, 60'000'000);
  CHECK(done);
  for (const auto& [id, r] : run.world.requests) {
    CAPTURE(id);
    CHECK(r.completed);
    CHECK(r.outcome == "ok");
  }
  run.world.sim.runFor(5'000'000);
  for (uint32_t i = 0; i < 4; ++i) {
    CAPTURE(i);
    const auto keys = run.machine(i).keys();
    CHECK(!keys.count("x0"));
    CHECK(!keys.count("x1"));
  }
  uint64_t held = 0;
  for (uint32_t i = 1; i < 4; ++i) held += run.replica(i).stats().pre_prepares_held;
  CHECK(held >= 1);
}
