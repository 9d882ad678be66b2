#include "flows/builtin_flows.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "contracts/contracts.h"
#include "flows/builtin_testing.h"
#include "flows/deal_flows.h"
#include "flows/delivery.h"
#include "flows/flows_testing.h"
#include "ledger/testing.h"
#include "test/support/temp_dir.h"
#include "vault/message_store.h"
#include "vault/vault.h"

using namespace ccal;
using namespace ccal::flows;
using namespace ccal::flows::testing;

namespace {

const std::string alice = "O=Haikou Fishing Cooperative, L=Haikou, C=CN";
const std::string bob = "O=Sanya Tea Cooperative, L=Sanya, C=CN";
const std::string carol = "O=Wenchang Coconut Cooperative, L=Wenchang, C=CN";
const std::string regulator = "O=Hainan Regulator, L=Haikou, C=CN";
const std::string notary_name = "O=Hainan Notary, L=Haikou, C=CN";


struct World;

// One node: its vault (real LMDB in a temp dir), stores, Delivery, runtime
// and the built-in flows' services.
struct TNode {
  using Register = std::function<void(FlowRuntime&, FlowServices&, TNode&)>;
  std::string name;
  KeyPair key;
  World& world;
  Register reg;
  BackchainLimits limits;
  ccal::testing::TempDir dir{"ccal-builtin-flows-test"};
  ContractRegistry registry;
  FlowServices svc;
  std::unique_ptr<vault::Vault> vault;
  std::unique_ptr<vault::MessageStore> messages;
  std::unique_ptr<vault::FlowStore> flowStore;
  std::unique_ptr<HubLink> link;
  std::unique_ptr<Delivery> delivery;
  std::unique_ptr<FlowRuntime> runtime;
  std::map<FlowId, FlowInfo> finished;

  TNode(std::string n, uint8_t seed, World& w, Register r, BackchainLimits l)
      : name(std::move(n)), key(ccal::testing::testKey(seed)), world(w), reg(std::move(r)), limits(l) {
    registry.add(std::make_unique<ccal::testing::TestTokenContract>());
    ccal::contracts::registerDealContracts(registry);  // the receivable financing cases
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
  bool has(const SecureHash& id) const { return vault->hasTransaction(id); }
};

void registerHonest(FlowRuntime& rt, FlowServices& svc, TNode& node);

struct World {
  TestExecutor executor;
  Hub hub;
  Directory directory;
  Party notaryParty{notary_name, Key(ccal::testing::testKey(99).publicKey())};
  UniquenessNotary notary{notaryParty, ccal::testing::testKey(99)};
  std::vector<ObserverRule> rules{{regulator, {std::string(ccal::testing::token_contract)}, {}, false}};
  std::map<std::string, std::unique_ptr<TNode>> nodes;
  Parallel* parallel = nullptr;  // given to every node's services

  World() {
    hub.executor = &executor;
    directory.parties[notary_name] = notaryParty;
  }
  ~World() { nodes.clear(); }
  TNode& add(const std::string& name, uint8_t seed, TNode::Register reg = registerHonest,
             BackchainLimits limits = {}) {
    hub.names.insert(name);
    auto node = std::make_unique<TNode>(name, seed, *this, std::move(reg), limits);
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
  // Starts `flow` on `n` and waits for its end.
  FlowInfo runFlow(TNode& n, std::string_view flow, Bytes args) {
    auto id = n.runtime->startFlow(flow, std::move(args));
    REQUIRE(id);
    return await(n, *id);
  }
  SecureHash issue(TNode& n, int64_t amount) {
    const std::string a = std::to_string(amount);
    FlowInfo info = runFlow(n, token_issue_flow, Bytes(a.begin(), a.end()));
    REQUIRE_MESSAGE(info.outcome == vault::FlowOutcome::ok, (info.error ? info.error->message : ""));
    return idOf(info.result);
  }
  FlowInfo move(TNode& from, const std::string& to, const StateRef& ref) {
    return runFlow(from, token_move_flow, tokenMoveArgs(to, ref));
  }
  // Every node's flows have ended.
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
  svc.observer_rules = world.rules;
  svc.limits = limits;
  svc.parallel = world.parallel;
  reg(*runtime, svc, *this);
  FlowRuntime::Hooks hooks;
  hooks.finished = [this](const FlowInfo& info) { finished[info.id] = info; };
  runtime->setHooks(std::move(hooks));
  REQUIRE(runtime->start().ok());
  REQUIRE(delivery->start().ok());
}

void registerHonest(FlowRuntime& rt, FlowServices& svc, TNode& node) {
  REQUIRE(registerTokenFlows(rt, svc, &node.world.notaryParty).ok());
}

std::string errorOf(const FlowInfo& info) { return info.error ? info.error->message : "(no error)"; }

// A move whose output is worth one more than its input: the contract refuses it.
Flow<Bytes> inflatingMove(FlowContext& ctx, const FlowServices* svc, Bytes args) {
  const std::string text(args.begin(), args.end());
  const size_t a = text.find('|'), b = text.rfind('|');
  const StateRef ref{SecureHash::fromHex(text.substr(a + 1, b - a - 1)).value(),
                     static_cast<uint32_t>(std::stoul(text.substr(b + 1)))};
  auto recipient = svc->partyByName(text.substr(0, a)).value();
  std::vector<SecureHash> ids{ref.txId};
  auto txs = co_await loadTransactions(ctx, *svc, ids);
  const TransactionState in = txs[0]->tx().outputs()[ref.index];
  auto token = ccal::testing::decodeToken(in.data).value();
  token.owner = recipient.owningKey;
  token.amountMinor += 1;
  Bytes salt = co_await privacySalt(ctx);
  auto wtx = TransactionBuilder(in.notary)
                 .addInput(ref)
                 .addOutput(ccal::testing::tokenState(in.notary, token))
                 .addCommand(Command{"ccal.test.Token.Move", {}, {svc->identity.owningKey, recipient.owningKey}})
                 .setPrivacySalt(salt)
                 .build()
                 .value();
  SignedTransaction stx(std::move(wtx));
  stx = co_await collectSignatures(ctx, *svc, std::move(stx), std::string(token_move_flow));
  co_return Bytes(stx.id().bytes().begin(), stx.id().bytes().end());
}

// A signer that answers badly: `mode` says how.
enum class Rogue { wrong_type, malformed, bad_signature, foreign_key };

Flow<Bytes> rogueSigner(FlowContext& ctx, const FlowServices* svc, Rogue mode, Bytes) {
  Session s = *ctx.counterparty();
  std::vector<BuiltinMessage::Kind> accepted{BuiltinMessage::Kind::sign_request};
  // (The decoder as a local: g++ 12 destroys a capturing lambda temporary
  // inside a co_await operand twice.)
  auto decode = [accepted](ByteView b) { return decodeBuiltinMessage(b, accepted); };
  BuiltinMessage request = co_await s.receive<BuiltinMessage>(decode, "sign request");
  BuiltinMessage reply;
  reply.kind = BuiltinMessage::Kind::signatures;
  Bytes out;
  switch (mode) {
    case Rogue::wrong_type:
      reply.kind = BuiltinMessage::Kind::recorded;
      out = encodeBuiltinMessage(reply);
      break;
    case Rogue::malformed: out = Bytes{1, 2, 3}; break;
    case Rogue::bad_signature:
      // Signed by the right key over another transaction's id.
      reply.signatures.push_back(svc->keys[0].sign(signableBytes(SecureHash::of(Bytes{7}))));
      out = encodeBuiltinMessage(reply);
      break;
    case Rogue::foreign_key:
      reply.signatures.push_back(request.stx->signatureBy(ccal::testing::testKey(77)));
      out = encodeBuiltinMessage(reply);
      break;
  }
  co_await s.send(std::move(out));
  co_return Bytes{};
}

TNode::Register registerRogue(Rogue mode) {
  return [mode](FlowRuntime& rt, FlowServices& svc, TNode&) {
    const FlowServices* s = &svc;
    REQUIRE(rt.registerFlow(std::string(sign_transaction_flow), [s, mode](FlowContext& ctx, Bytes args) {
                return rogueSigner(ctx, s, mode, std::move(args));
              }).ok());
    REQUIRE(rt.registerInitiating(std::string(collect_signatures_flow),
                                  std::string(sign_transaction_flow))
                .ok());
  };
}

Flow<Bytes> rogueBackchain(FlowContext& ctx, const FlowServices* svc, Bytes args);

void registerWithInflating(FlowRuntime& rt, FlowServices& svc, TNode& node) {
  registerHonest(rt, svc, node);
  const FlowServices* s = &svc;
  REQUIRE(rt.registerFlow("rogue-backchain", [s](FlowContext& ctx, Bytes args) {
              return rogueBackchain(ctx, s, std::move(args));
            }).ok());
  REQUIRE(rt.registerInitiating("rogue-backchain", std::string(sign_transaction_flow)).ok());
  REQUIRE(rt.registerFlow("inflating-move", [s](FlowContext& ctx, Bytes args) {
              return inflatingMove(ctx, s, std::move(args));
            }).ok());
}

// Asks the peer to sign a move of the token at args' StateRef, then answers
// its backchain fetch with `decoy` (another transaction, or junk bytes).
Flow<Bytes> rogueBackchain(FlowContext& ctx, const FlowServices* svc, Bytes args) {
  const std::string text(args.begin(), args.end());
  const size_t a = text.find('|'), b = text.find('|', a + 1), c = text.rfind('|');
  const StateRef ref{SecureHash::fromHex(text.substr(a + 1, b - a - 1)).value(),
                     static_cast<uint32_t>(std::stoul(text.substr(b + 1, c - b - 1)))};
  const std::string decoy = text.substr(c + 1);  // a tx id in hex, or "junk"
  auto recipient = svc->partyByName(text.substr(0, a)).value();
  std::vector<SecureHash> ids{ref.txId};
  auto txs = co_await loadTransactions(ctx, *svc, ids);
  const TransactionState in = txs[0]->tx().outputs()[ref.index];
  auto token = ccal::testing::decodeToken(in.data).value();
  token.owner = recipient.owningKey;
  Bytes salt = co_await privacySalt(ctx);
  auto wtx = TransactionBuilder(in.notary)
                 .addInput(ref)
                 .addOutput(ccal::testing::tokenState(in.notary, token))
                 .addCommand(Command{"ccal.test.Token.Move", {}, {svc->identity.owningKey, recipient.owningKey}})
                 .setPrivacySalt(salt)
                 .build()
                 .value();
  SignedTransaction stx(std::move(wtx));
  stx.signWith(svc->keys[0]);
  Session s = co_await ctx.initiate(recipient.name);
  BuiltinMessage request;
  request.kind = BuiltinMessage::Kind::sign_request;
  request.check = std::string(token_move_flow);
  request.stx = stx;
  Bytes request_bytes = encodeBuiltinMessage(request);
  co_await s.send(std::move(request_bytes));
  co_await s.receive();  // the fetch of ref.txId
  BuiltinMessage reply;
  reply.kind = BuiltinMessage::Kind::transactions;
  if (decoy == "junk") {
    reply.transactions.push_back(Bytes(16, 0xab));
  } else {
    std::vector<SecureHash> decoy_ids{SecureHash::fromHex(decoy).value()};
    auto other = co_await loadTransactions(ctx, *svc, decoy_ids);
    reply.transactions.push_back(other[0]->encode());
  }
  Bytes reply_bytes = encodeBuiltinMessage(reply);
  co_await s.send(std::move(reply_bytes));
  co_await s.receive();  // the peer's answer, or its failure
  co_return Bytes{};
}

uint64_t vaultTransactionsCount(TNode& n) {
  uint64_t count = 0;
  REQUIRE(n.vault->forEachTransaction([&](const SecureHash&, ByteView) {
                  ++count;
                  return true;
                }).ok());
  return count;
}

vault::Page statesOf(TNode& n, vault::StatusFilter status, vault::RelevanceFilter relevance) {
  return n.vault->query(vault::Query(vault::Criteria::all(), status, relevance)).value();
}

}  // namespace

TEST_CASE("built-in flows: a token move A->B with a regulator observer") {
  World w;
  TNode& a = w.add(alice, 1, registerWithInflating);
  TNode& b = w.add(bob, 2);
  TNode& r = w.add(regulator, 3);
  const SecureHash issue = w.issue(a, 100);
  CHECK(a.has(issue));
  REQUIRE(w.run([&] { return r.has(issue); }));  // the rule names the token contract
  FlowInfo info = w.move(a, bob, StateRef{issue, 0});
  REQUIRE_MESSAGE(info.outcome == vault::FlowOutcome::ok, errorOf(info));
  const SecureHash move = idOf(info.result);
  REQUIRE(w.quiet());
  for (TNode* n : {&a, &b, &r}) {
    CHECK(n->has(move));
    CHECK(n->has(issue));  // b's from the backchain
    CHECK(n->vault->checkConsistency().ok());
  }
  CHECK(vaultTransactionsCount(a) == 2);
  CHECK(vaultTransactionsCount(b) == 2);
  CHECK(vaultTransactionsCount(r) == 2);
  // A's token is consumed, B holds the new one, the regulator sees it as an observer.
  CHECK(statesOf(a, vault::StatusFilter::unconsumed, vault::RelevanceFilter::all).states.empty());
  auto bs = statesOf(b, vault::StatusFilter::unconsumed, vault::RelevanceFilter::participant);
  REQUIRE(bs.states.size() == 1);
  CHECK(bs.states[0].ref == StateRef{move, 0});
  auto rs = statesOf(r, vault::StatusFilter::unconsumed, vault::RelevanceFilter::observed);
  REQUIRE(rs.states.size() == 1);
  CHECK(rs.states[0].ref == StateRef{move, 0});
  // Notarised: the notary consumed the input for this move.
  CHECK(w.notary.consumed.at(StateRef{issue, 0}) == move);
  auto stx = a.vault->transaction(move).value();
  REQUIRE(stx);
  CHECK(stx->verifyRequiredSignatures().ok());
  CHECK(stx->signers().count(ccal::testing::testKey(99).publicKey()) == 1);

  SUBCASE("finality again, with the regulator as an extra observer: a no-op everywhere") {
    FlowInfo again = w.runFlow(a, finality_flow, encodeFinalityArgs(*stx, {regulator}));
    REQUIRE_MESSAGE(again.outcome == vault::FlowOutcome::ok, errorOf(again));
    REQUIRE(w.quiet());
    CHECK(vaultTransactionsCount(a) == 2);
    CHECK(vaultTransactionsCount(b) == 2);
    CHECK(vaultTransactionsCount(r) == 2);
    CHECK(r.vault->checkConsistency().ok());
  }
  SUBCASE("double spend: the conflict names the StateRef, nothing recorded") {
    TNode& c = w.add(carol, 4);
    FlowInfo twice = w.move(a, carol, StateRef{issue, 0});
    CHECK(twice.outcome == vault::FlowOutcome::failed);
    CHECK(twice.error->code == Errc::conflict);
    CHECK(errorOf(twice).find("input states consumed already: " + StateRef{issue, 0}.toString() +
                              " (consumed by " + move.hex() + ")") != std::string::npos);
    REQUIRE(w.quiet());
    CHECK(vaultTransactionsCount(a) == 2);
    CHECK(statesOf(c, vault::StatusFilter::all, vault::RelevanceFilter::all).states.empty());
    CHECK(w.notary.conflicts == 1);
  }
  SUBCASE("a second hop B->C fetches the two-level backchain") {
    TNode& c = w.add(carol, 4, registerHonest, BackchainLimits{1, 10, 10});
    FlowInfo hop = w.move(b, carol, StateRef{move, 0});
    REQUIRE_MESSAGE(hop.outcome == vault::FlowOutcome::ok, errorOf(hop));
    REQUIRE(w.quiet());
    const SecureHash second = idOf(hop.result);
    CHECK(c.has(issue));
    CHECK(c.has(move));
    CHECK(c.has(second));
    CHECK(r.has(second));
    CHECK(c.vault->checkConsistency().ok());
    auto cs = statesOf(c, vault::StatusFilter::unconsumed, vault::RelevanceFilter::participant);
    REQUIRE(cs.states.size() == 1);
    CHECK(cs.states[0].ref == StateRef{second, 0});
  }
  SUBCASE("a backchain deeper than backchain_depth_max: an error, nothing recorded") {
    TNode& c = w.add(carol, 4, registerHonest, BackchainLimits{64, 1, 10});
    FlowInfo hop = w.move(b, carol, StateRef{move, 0});
    CHECK(hop.outcome == vault::FlowOutcome::failed);
    CHECK(hop.error->code == Errc::too_deep);
    CHECK(errorOf(hop).find("deeper than backchain_depth_max (1)") != std::string::npos);
    REQUIRE(w.quiet());
    CHECK(vaultTransactionsCount(c) == 0);
  }
}

TEST_CASE("built-in flows: bad answers and bad transactions end the flow naming them") {
  World w;
  TNode& a = w.add(alice, 1, registerWithInflating);
  TNode& r = w.add(regulator, 3);
  (void)r;
  const SecureHash issue = w.issue(a, 100);
  struct Case {
    Rogue mode;
    Errc code;
    std::string text;
  };
  const std::vector<Case> cases{
      {Rogue::wrong_type, Errc::malformed,
       "a recorded answer where a fetch request or signatures was expected"},
      {Rogue::malformed, Errc::malformed, "length 3 is not a whole number of 8-byte words"},
      {Rogue::bad_signature, Errc::bad_signature, " 2' over transaction "},
      {Rogue::foreign_key, Errc::bad_signature, "a key it was not asked for"},
  };
  for (const Case& c : cases) {
    CAPTURE(static_cast<int>(c.mode));
    TNode& b = w.add(bob + " " + std::to_string(static_cast<int>(c.mode)),
                     static_cast<uint8_t>(10 + static_cast<int>(c.mode)), registerRogue(c.mode));
    FlowInfo info = w.move(a, b.name, StateRef{issue, 0});
    CHECK(info.outcome == vault::FlowOutcome::failed);
    REQUIRE(info.error);
    CHECK(info.error->code == c.code);
    CHECK_MESSAGE(errorOf(info).find(c.text) != std::string::npos, errorOf(info));
    REQUIRE(w.quiet());
    CHECK(vaultTransactionsCount(a) == 1);
    CHECK(vaultTransactionsCount(b) == 0);
  }
  // A signer whose business check refuses, and one without the check.
  TNode& picky = w.add(bob + " picky", 20, [](FlowRuntime& rt, FlowServices& svc, TNode& node) {
    registerHonest(rt, svc, node);
    svc.checks[std::string(token_move_flow)] = [](const LedgerTransaction&, const std::string&) {
      return Status(makeError(Errc::forbidden, "the price is wrong"));
    };
  });
  FlowInfo refused = w.move(a, picky.name, StateRef{issue, 0});
  CHECK(refused.outcome == vault::FlowOutcome::failed);
  REQUIRE(refused.error);
  CHECK(refused.error->code == Errc::forbidden);
  CHECK_MESSAGE(errorOf(refused).find("business check 'ccal.example.TokenMove' refused transaction") !=
                    std::string::npos,
                errorOf(refused));
  CHECK(errorOf(refused).find("the price is wrong") != std::string::npos);
  TNode& unaware = w.add(bob + " unaware", 21, [](FlowRuntime& rt, FlowServices& svc, TNode& node) {
    registerHonest(rt, svc, node);
    svc.checks.clear();
  });
  FlowInfo unknown = w.move(a, unaware.name, StateRef{issue, 0});
  CHECK(unknown.outcome == vault::FlowOutcome::failed);
  CHECK_MESSAGE(errorOf(unknown).find("no business check 'ccal.example.TokenMove' is registered here") !=
                    std::string::npos,
                errorOf(unknown));
  REQUIRE(w.quiet());
  CHECK(vaultTransactionsCount(a) == 1);
  CHECK(vaultTransactionsCount(picky) == 0);
  CHECK(vaultTransactionsCount(unaware) == 0);

  // An honest signer refuses a transaction that fails its contract.
  TNode& b = w.add(bob, 2);
  FlowInfo info = w.runFlow(a, "inflating-move", tokenMoveArgs(bob, StateRef{issue, 0}));
  CHECK(info.outcome == vault::FlowOutcome::failed);
  REQUIRE(info.error);
  CHECK(info.error->code == Errc::contract_rejected);
  CHECK_MESSAGE(errorOf(info).find("fails its contracts") != std::string::npos, errorOf(info));
  CHECK_MESSAGE(errorOf(info).find("not_conserved") != std::string::npos, errorOf(info));
  REQUIRE(w.quiet());
  CHECK(vaultTransactionsCount(a) == 1);
  CHECK(vaultTransactionsCount(b) == 0);  // not even the backchain
  CHECK(w.notary.consumed.empty());
}

TEST_CASE("built-in flows: a backchain answer not asked for, or malformed: an error, nothing recorded") {
  World w;
  TNode& a = w.add(alice, 1, registerWithInflating);
  TNode& b = w.add(bob, 2);
  w.add(regulator, 3);
  const SecureHash first = w.issue(a, 100);
  const SecureHash second = w.issue(a, 50);
  for (const std::string& decoy : {second.hex(), std::string("junk")}) {
    CAPTURE(decoy);
    Bytes args = tokenMoveArgs(bob, StateRef{first, 0});
    const std::string tail = "|" + decoy;
    args.insert(args.end(), tail.begin(), tail.end());
    auto id = a.runtime->startFlow("rogue-backchain", args);
    REQUIRE(id);
    FlowInfo info = w.await(a, *id);
    CHECK(info.outcome == vault::FlowOutcome::failed);
    REQUIRE(w.quiet());
    REQUIRE(b.finished.size() >= 1);
    const FlowInfo& signer = std::prev(b.finished.end())->second;
    CHECK(signer.outcome == vault::FlowOutcome::failed);
    REQUIRE(signer.error);
    if (decoy == "junk") {
      CHECK_MESSAGE(signer.error->message.find("does not decode") != std::string::npos,
                    signer.error->message);
    } else {
      CHECK(signer.error->code == Errc::id_mismatch);
      CHECK_MESSAGE(signer.error->message.find("sent transaction " + second.hex() +
                                               ", which was not asked for (asked for " +
                                               first.hex() + ")") != std::string::npos,
                    signer.error->message);
    }
    // The initiator sees the signer's error.
    CHECK(errorOf(info).find(signer.error->message) != std::string::npos);
    CHECK(vaultTransactionsCount(b) == 0);
    b.finished.clear();
  }
}

// Runs each call's jobs on three threads taking indices from a counter.
class ThreadedParallel final : public Parallel {
 public:
  void forEach(size_t count, const std::function<void(size_t)>& fn) override {
    ++calls;
    jobs += count;
    std::atomic<size_t> next{0};
    auto take = [&] {
      for (size_t i; (i = next.fetch_add(1)) < count;) fn(i);
    };
    std::vector<std::thread> helpers;
    for (int t = 0; t < 2; ++t) helpers.emplace_back(take);
    take();
    for (auto& h : helpers) h.join();
  }
  int calls = 0;
  size_t jobs = 0;
};

TEST_CASE(
    "built-in flows: a fetched backchain is verified on several threads, recorded in dependency "
    "order") {
  ThreadedParallel parallel;
  World w;
  w.parallel = &parallel;
  TNode& a = w.add(alice, 1);
  TNode& b = w.add(bob, 2);
  w.add(regulator, 3);
  const SecureHash issued = w.issue(a, 100);
  FlowInfo to_bob = w.move(a, bob, StateRef{issued, 0});
  REQUIRE_MESSAGE(to_bob.outcome == vault::FlowOutcome::ok, errorOf(to_bob));
  const SecureHash paid = idOf(to_bob.result);
  REQUIRE(w.quiet());
  // Carol has seen nothing: paying her, bob sends the move and the issue.
  TNode& c = w.add(carol, 4);
  const int calls_before = parallel.calls;
  FlowInfo to_carol = w.move(b, carol, StateRef{paid, 0});
  REQUIRE_MESSAGE(to_carol.outcome == vault::FlowOutcome::ok, errorOf(to_carol));
  REQUIRE(w.quiet());
  CHECK(parallel.calls > calls_before);
  CHECK(parallel.jobs >= 2);
  const SecureHash last = idOf(to_carol.result);
  for (const SecureHash& id : {issued, paid, last}) CHECK(c.has(id));
}

TEST_CASE("built-in flows: a crash of the initiator after notarisation: replayed, not notarised again") {
  World w;
  TNode& a = w.add(alice, 1);
  TNode& b = w.add(bob, 2);
  TNode& r = w.add(regulator, 3);
  const SecureHash issue = w.issue(a, 100);
  REQUIRE(w.quiet());
  auto id = a.runtime->startFlow(token_move_flow, tokenMoveArgs(bob, StateRef{issue, 0}));
  REQUIRE(id);
  REQUIRE(w.run([&] {
    auto s = a.runtime->show(*id);
    return w.notary.requests == 1 && s && s->step.find("sending") != std::string::npos;
  }));
  CHECK(w.notary.requests == 1);
  {
    // The vault read of the input's transaction is journaled as which ids
    // the vault held, not as the transaction's bytes; the replay reads it again.
    auto journal = a.flowStore->journal(*id);
    REQUIRE(journal);
    const std::string magic = "CCALtxp1";
    int presence = 0;
    for (const auto& e : *journal) {
      if (std::search(e.bytes.begin(), e.bytes.end(), magic.begin(), magic.end()) != e.bytes.end()) ++presence;
    }
    CHECK(presence >= 1);
    // None holds the input's transaction itself.
    const Bytes issued = a.vault->transaction(issue).value()->encode();
    for (const auto& e : *journal) {
      CHECK(std::search(e.bytes.begin(), e.bytes.end(), issued.begin(), issued.end()) == e.bytes.end());
    }
  }
  a.restart();
  CHECK(a.runtime->stats().flows_resumed == 1);
  FlowInfo info = w.await(a, *id);
  REQUIRE_MESSAGE(info.outcome == vault::FlowOutcome::ok, errorOf(info));
  REQUIRE(w.quiet());
  CHECK(w.notary.requests == 1);  // the replay took the journaled answer
  const SecureHash move = idOf(info.result);
  for (TNode* n : {&a, &b, &r}) {
    CHECK(n->has(move));
    CHECK(vaultTransactionsCount(*n) == 2);
  }
}


// --- observers the finality must not skip (issue 8) -------------------------------------------

namespace {

// A node that ignores the network's observer rules (its copy has none).
void registerNoRules(FlowRuntime& rt, FlowServices& svc, TNode& node) {
  svc.observer_rules.clear();
  registerHonest(rt, svc, node);
}

// A node that ignores the rules and whose moves announce the regulator to
// their signers but leave it out of their finality.
void registerHiding(FlowRuntime& rt, FlowServices& svc, TNode& node) {
  svc.observer_rules.clear();
  REQUIRE(registerTokenFlows(rt, svc, &node.world.notaryParty, {regulator}).ok());
}

// The finished ReceiveFinality flows of `n` that recorded (or had) `id`.
int receivedFinalities(const TNode& n, const SecureHash& id) {
  int count = 0;
  for (const auto& entry : n.finished) {
    const FlowInfo& f = entry.second;
    if (f.name == receive_finality_flow && f.outcome == vault::FlowOutcome::ok && f.result.size() == 32 &&
        idOf(f.result) == id) {
      ++count;
    }
  }
  return count;
}

}  // namespace

TEST_CASE("observers: a signer refuses a finality that skips a required observer; nothing is recorded") {
  World w;
  TNode& a = w.add(alice, 1, registerNoRules);
  TNode& b = w.add(bob, 2);
  TNode& r = w.add(regulator, 3);
  const SecureHash issue = w.issue(a, 100);  // A alone: no rule of its own sends it anywhere
  REQUIRE(w.quiet());
  CHECK_FALSE(r.has(issue));
  const uint64_t notarised = w.notary.requests;
  FlowInfo info = w.move(a, bob, StateRef{issue, 0});
  CHECK(info.outcome == vault::FlowOutcome::failed);
  REQUIRE(info.error);
  CHECK(info.error->code == Errc::forbidden);
  CHECK_MESSAGE(errorOf(info).find("would not send it to observer '" + regulator +
                                   "', which the observer rule for contract 'ccal.test.Token' requires, "
                                   "so it is not signed") != std::string::npos,
                errorOf(info));
  REQUIRE(w.quiet());
  CHECK(w.notary.requests == notarised);  // never notarised
  CHECK(vaultTransactionsCount(a) == 1);   // its issue only
  CHECK(vaultTransactionsCount(b) == 0);
  CHECK(vaultTransactionsCount(r) == 0);
  CHECK(statesOf(a, vault::StatusFilter::unconsumed, vault::RelevanceFilter::all).states.size() == 1);
}

TEST_CASE(
    "observers: the regulator gets a transaction from its sender and from each participant, and "
    "records it once; a skipping sender is covered") {
  World w;
  TNode& a = w.add(alice, 1);
  TNode& b = w.add(bob, 2);
  TNode& r = w.add(regulator, 3);
  TNode& c = w.add(carol, 4, registerHiding);
  const SecureHash issue = w.issue(a, 100);
  FlowInfo info = w.move(a, bob, StateRef{issue, 0});
  REQUIRE_MESSAGE(info.outcome == vault::FlowOutcome::ok, errorOf(info));
  const SecureHash move = idOf(info.result);
  REQUIRE(w.quiet());
  CHECK(r.has(move));
  // From A, and from B: a participant sends on to the observers its rules
  // require whatever the sender's list says (a list can lie).
  CHECK(receivedFinalities(r, move) == 2);
  CHECK(receivedFinalities(r, issue) == 1);

  // C's own issue goes nowhere (it has no rules: nobody else knows of it), then
  // C moves it to B announcing the regulator, which its finality leaves out.
  const SecureHash c_issue = w.issue(c, 70);
  REQUIRE(w.quiet());
  CHECK_FALSE(r.has(c_issue));
  FlowInfo hidden = w.move(c, bob, StateRef{c_issue, 0});
  REQUIRE_MESSAGE(hidden.outcome == vault::FlowOutcome::ok, errorOf(hidden));
  const SecureHash c_move = idOf(hidden.result);
  REQUIRE(w.quiet());
  CHECK(b.has(c_move));
  CHECK(r.has(c_move));                        // B sent it on
  CHECK(r.has(c_issue));                       // with its backchain, from B
  CHECK(receivedFinalities(r, c_move) == 1);   // once: C never sent it
  auto rs = statesOf(r, vault::StatusFilter::unconsumed, vault::RelevanceFilter::observed);
  std::set<StateRef> observed;
  for (const auto& st : rs.states) observed.insert(st.ref);
  CHECK(observed.count(StateRef{c_move, 0}) == 1);  // recorded as an observer: all visible
  int forwarded = 0;
  for (const auto& entry : b.finished) {
    if (entry.second.name == receive_finality_flow && entry.second.result.size() == 32 &&
        idOf(entry.second.result) == c_move) {
      CHECK(entry.second.outcome == vault::FlowOutcome::ok);
      ++forwarded;
    }
  }
  CHECK(forwarded == 1);
  // Finality again from C, the regulator now named: a no-op everywhere.
  auto stx = c.vault->transaction(c_move).value();
  REQUIRE(stx);
  FlowInfo again = w.runFlow(c, finality_flow, encodeFinalityArgs(*stx, {regulator}));
  REQUIRE_MESSAGE(again.outcome == vault::FlowOutcome::ok, errorOf(again));
  REQUIRE(w.quiet());
  CHECK(vaultTransactionsCount(r) == 4);  // A's issue and move, C's issue and move
  for (TNode* n : {&a, &b, &r, &c}) CHECK(n->vault->checkConsistency().ok());
}

namespace {

// A node running the deal flows (tokens, credentials, receivables).
void registerDeals(FlowRuntime& rt, FlowServices& svc, TNode&) {
  addDealChecks(svc);
  REQUIRE(registerBuiltinFlows(rt, svc).ok());
  DealConfig config;
  config.notary = notary_name;
  REQUIRE(registerDealFlows(rt, svc, config).ok());
}

void registerDealsNoRules(FlowRuntime& rt, FlowServices& svc, TNode& node) {
  svc.observer_rules.clear();
  registerDeals(rt, svc, node);
}

FlowInfo runDeal(World& w, TNode& n, std::string_view flow, const std::vector<std::string>& kvs) {
  auto args = parseDealArgs(flow, kvs);
  REQUIRE_MESSAGE(args.ok(), (args ? "" : args.error().message));
  return w.runFlow(n, flow, encodeDealArgs(*args));
}

SecureHash okDeal(World& w, TNode& n, std::string_view flow, const std::vector<std::string>& kvs) {
  FlowInfo info = runDeal(w, n, flow, kvs);
  REQUIRE_MESSAGE(info.outcome == vault::FlowOutcome::ok, flow << ": " << errorOf(info));
  return idOf(info.result);
}

}  // namespace

TEST_CASE("observers: receivable financing is observed from a configured amount of the invoice") {
  const std::string bank = "O=Bank of Hainan, L=Haikou, C=CN";
  World w;
  ObserverRule financing{regulator, {std::string(ccal::contracts::receivable_contract)}, {}, false};
  financing.commands = {std::string(ccal::contracts::receivable_finance_command)};
  financing.amount_at_least = 50'000;
  w.rules = {financing};
  TNode& k = w.add(bank, 1, registerDeals);
  TNode& a = w.add(alice, 2, registerDeals);
  TNode& b = w.add(bob, 3, registerDeals);
  TNode& c = w.add(carol, 4, registerDeals);
  TNode& r = w.add(regulator, 5, registerDeals);
  TNode& cheat = w.add("O=Qionghai Rural Bank, L=Qionghai, C=CN", 6, registerDealsNoRules);
  okDeal(w, k, token_issue_deal, {"to=" + bank, "amount=1000000", "currency=CNY"});
  okDeal(w, c, member_issue_deal, {"member=" + bob, "name=Sanya Tea Cooperative", "role=member", "days=365",
                                   "observers=" + alice});
  const SecureHash big = okDeal(w, a, receivable_issue_deal,
                                {"buyer=" + bob, "amount=50000", "currency=CNY", "invoice=INV-1", "due=2024-06-30"});
  const SecureHash small = okDeal(w, a, receivable_issue_deal,
                                  {"buyer=" + bob, "amount=49999", "currency=CNY", "invoice=INV-2", "due=2024-06-30"});
  REQUIRE(w.quiet());
  CHECK(vaultTransactionsCount(r) == 0);  // no issue, token or credential transaction is observed
  // Equal to the threshold: observed; one below: not.
  const SecureHash financed = okDeal(w, a, receivable_finance_deal, {"invoice=INV-1", "financier=" + bank, "advance=45000"});
  const SecureHash unseen = okDeal(w, a, receivable_finance_deal, {"invoice=INV-2", "financier=" + bank, "advance=44000"});
  REQUIRE(w.quiet());
  CHECK(r.has(financed));
  CHECK(receivedFinalities(r, financed) == 3);  // from the initiator and the other two participants
  CHECK(r.has(big));  // the financing's backchain
  CHECK_FALSE(r.has(unseen));
  CHECK_FALSE(r.has(small));
  auto rs = statesOf(r, vault::StatusFilter::unconsumed, vault::RelevanceFilter::observed);
  bool receivable_seen = false;
  for (const auto& st : rs.states) {
    CHECK(st.ref.txId == financed);  // it observes what the rule grants, nothing else
    receivable_seen = receivable_seen || st.state.contract == ccal::contracts::receivable_contract;
  }
  CHECK(receivable_seen);

  // A financier whose node ignores the rules (it builds, collects the seller's
  // signature and finalises): the seller refuses to sign above the amount.
  okDeal(w, k, token_issue_deal, {"to=" + cheat.name, "amount=100000", "currency=CNY"});
  okDeal(w, a, receivable_issue_deal,
         {"buyer=" + bob, "amount=60000", "currency=CNY", "invoice=INV-9", "due=2024-06-30"});
  REQUIRE(w.quiet());
  const uint64_t regulator_had = vaultTransactionsCount(r);
  const uint64_t buyer_had = vaultTransactionsCount(b);
  const uint64_t notarised = w.notary.requests;
  FlowInfo refused = runDeal(w, a, receivable_finance_deal, {"invoice=INV-9", "financier=" + cheat.name, "advance=50000"});
  CHECK(refused.outcome == vault::FlowOutcome::failed);
  REQUIRE(refused.error);
  CHECK_MESSAGE(errorOf(refused).find("observer '" + regulator + "', which the observer rule for contract "
                                      "'ccal.receivable', command 'ccal.receivable.Finance', amount 60000 at "
                                      "least 50000 requires") != std::string::npos,
                errorOf(refused));
  REQUIRE(w.quiet());
  CHECK(w.notary.requests == notarised);  // never notarised
  CHECK(vaultTransactionsCount(r) == regulator_had);
  CHECK(vaultTransactionsCount(b) == buyer_had);
  bool still_held = false;
  const vault::Page held = a.vault->query(vault::Query(vault::Criteria::stateType(
                                               std::string(ccal::contracts::receivable_state_type))))
                               .value();
  for (const auto& st : held.states) {
    still_held = still_held || ccal::contracts::decodeReceivable(st.state.data).value().invoiceNumber == "INV-9";
  }
  CHECK(still_held);
  for (TNode* n : {&k, &a, &b, &c, &r, &cheat}) CHECK(n->vault->checkConsistency().ok());
}

TEST_CASE("built-in flows: message encodings refuse what is wrong") {
  BuiltinMessage fetch;
  fetch.kind = BuiltinMessage::Kind::fetch;
  fetch.ids = {SecureHash::of(Bytes{1}), SecureHash::of(Bytes{2})};
  Bytes bytes = encodeBuiltinMessage(fetch);
  auto back = decodeBuiltinMessage(bytes, {BuiltinMessage::Kind::fetch});
  REQUIRE(back);
  CHECK(back->ids == fetch.ids);
  auto wrong = decodeBuiltinMessage(bytes, {BuiltinMessage::Kind::signatures});
  REQUIRE(!wrong);
  CHECK(wrong.error().message.find("a fetch request where signatures was expected") != std::string::npos);
  BuiltinMessageLimits small;
  small.list_entries_max = 1;
  auto big = decodeBuiltinMessage(bytes, {BuiltinMessage::Kind::fetch}, small);
  REQUIRE(!big);
  CHECK(big.error().code == Errc::too_large);
  NotaryAnswer answer;
  answer.conflicts.push_back({StateRef{SecureHash::of(Bytes{3}), 2}, SecureHash::of(Bytes{4})});
  auto a2 = decodeNotaryAnswer(encodeNotaryAnswer(answer));
  REQUIRE(a2);
  REQUIRE(a2->conflicts.size() == 1);
  CHECK(a2->conflicts[0].ref == answer.conflicts[0].ref);
  CHECK(a2->conflicts[0].consumedBy == answer.conflicts[0].consumedBy);
  CHECK(decodeIdList(Bytes{1, 2, 3}).error().code == Errc::malformed);

  // The observers a sign request announces and the recipients a finality lists.
  auto stx = SignedTransaction(TransactionBuilder(Party{notary_name, Key(ccal::testing::testKey(99).publicKey())})
                                   .addOutput(ccal::testing::tokenState(
                                       Party{notary_name, Key(ccal::testing::testKey(99).publicKey())},
                                       ccal::testing::TestToken{Key(ccal::testing::testKey(1).publicKey()),
                                                                Key(ccal::testing::testKey(1).publicKey()),
                                                                5, "CNY", 0, "", SecureHash::of(Bytes{9})}))
                                   .addCommand(Command{"ccal.test.Token.Issue", {}, {Key(ccal::testing::testKey(1).publicKey())}})
                                   .setPrivacySalt(Bytes(32, 1))
                                   .build()
                                   .value());
  BuiltinMessage sign;
  sign.kind = BuiltinMessage::Kind::sign_request;
  sign.check = "c";
  sign.stx = stx;
  sign.observers = {regulator, alice};
  auto sb = decodeBuiltinMessage(encodeBuiltinMessage(sign), {BuiltinMessage::Kind::sign_request});
  REQUIRE(sb);
  CHECK(sb->observers == sign.observers);
  BuiltinMessage fin;
  fin.kind = BuiltinMessage::Kind::finality;
  fin.stx = stx;
  fin.recipients = {alice, bob, regulator};
  auto fb = decodeBuiltinMessage(encodeBuiltinMessage(fin), {BuiltinMessage::Kind::finality});
  REQUIRE(fb);
  CHECK(fb->recipients == fin.recipients);
  fin.recipients = {alice, ""};
  auto empty = decodeBuiltinMessage(encodeBuiltinMessage(fin), {BuiltinMessage::Kind::finality});
  REQUIRE(!empty);
  CHECK(empty.error().message.find("recipient 1 is empty") != std::string::npos);
  // A NUL inside a name (found by fuzz_messaging): it would decode, but
  // encode cut at the NUL (so not back to one value); refused, named.
  fin.recipients = {alice, "O=Mallory Bank XXX"};
  Bytes nul = encodeBuiltinMessage(fin);
  const std::string marker = "XXX";
  auto at = std::search(nul.begin(), nul.end(), marker.begin(), marker.end());
  REQUIRE(at != nul.end());
  *at = 0;
  auto with_nul = decodeBuiltinMessage(nul, {BuiltinMessage::Kind::finality});
  REQUIRE(!with_nul);
  CHECK(with_nul.error().message.find("recipient 1 contains a NUL byte") != std::string::npos);
}
