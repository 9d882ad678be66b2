#include "flows/builtin_flows.h"

#include <algorithm>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <tuple>

#include "contracts/token.h"
#include "ledger/capnp_io.h"
#include "schemas/builtin_flows.capnp.h"

namespace ccal::flows {

namespace {

using Kind = BuiltinMessage::Kind;

std::string quoted(std::string_view s) { return "'" + std::string(s) + "'"; }

// The transactions whose outputs `tx` spends or references, each once, in id order.
std::vector<SecureHash> dependencyIds(const WireTransaction& tx) {
  std::set<SecureHash> ids;
  for (const StateRef& r : tx.inputs()) ids.insert(r.txId);
  for (const StateRef& r : tx.references()) ids.insert(r.txId);
  return {ids.begin(), ids.end()};
}

[[noreturn]] void fail(const Error& error, const std::string& context) {
  failFlow(error.code, context + ": " + error.message);
}

Flow<BuiltinMessage> receiveMessage(Session s, std::vector<Kind> accepted, std::string what) {
  auto decode = [accepted](ByteView b) { return decodeBuiltinMessage(b, accepted); };
  BuiltinMessage m = co_await s.receive<BuiltinMessage>(decode, what);
  co_return m;
}

Flow<bool> sendMessage(Session s, BuiltinMessage m) {
  Bytes bytes = encodeBuiltinMessage(m);
  co_await s.send(std::move(bytes));
  co_return true;
}

// --- vault access, journaled (reads: FlowContext::read) ---------------------------------------------------------------

// The ones of `ids` the vault does not have.
Flow<std::vector<SecureHash>> missingOf(FlowContext& ctx, const FlowServices& svc,
                                        std::vector<SecureHash> ids) {
  if (ids.empty()) co_return std::vector<SecureHash>{};
  vault::Vault* v = svc.vault;
  CallOp op = [v, ids](CallDone done) {
    std::vector<SecureHash> missing;
    for (const SecureHash& id : ids) {
      if (!v->hasTransaction(id)) missing.push_back(id);
    }
    done(encodeIdList(missing));
  };
  std::vector<SecureHash> missing =
      co_await ctx.read<std::vector<SecureHash>>("vault.missing", std::move(op), decodeIdList);
  co_return missing;
}

// The vault's transactions of `ids`, in order; nullopt for those it does not have.
// A transaction is immutable in the vault once recorded (recording it again
// is a no-op) and is never removed, so the journal need not hold the bytes
// this read returns: the call's outcome is which of the ids the vault held
// (transaction_presence_magic, then one byte per id: 1 held, 0 not), the
// transactions read live reach the flow directly, and a replay reads the
// held ones again. A replay that finds one of them gone fails the flow (the
// vault lost a transaction). An outcome journaled before this form (a whole
// TransactionList) still decodes.
constexpr std::string_view transaction_presence_magic = "CCALtxp1";  // never the start of a Cap'n Proto message

Bytes presenceOutcome(const std::vector<std::optional<SignedTransaction>>& txs) {
  Bytes out(transaction_presence_magic.begin(), transaction_presence_magic.end());
  for (const auto& t : txs) out.push_back(t ? 1 : 0);
  return out;
}

bool isPresenceOutcome(ByteView b) {
  return b.size() >= transaction_presence_magic.size() &&
         std::equal(transaction_presence_magic.begin(), transaction_presence_magic.end(), b.begin());
}

Flow<std::vector<std::optional<SignedTransaction>>> vaultTransactions(FlowContext& ctx,
                                                                      const FlowServices& svc,
                                                                      std::vector<SecureHash> ids) {
  using List = std::vector<std::optional<SignedTransaction>>;
  if (ids.empty()) co_return List{};
  vault::Vault* v = svc.vault;
  // What the live read found, for the decode below (empty in a replay).
  auto live = std::make_shared<std::optional<List>>();
  CallOp op = [v, ids, live](CallDone done) {
    List out;
    for (const SecureHash& id : ids) {
      auto t = v->transaction(id);
      if (!t) {
        done(t.error());
        return;
      }
      out.push_back(std::move(t).value());
    }
    Bytes outcome = presenceOutcome(out);
    *live = std::move(out);
    done(std::move(outcome));
  };
  auto decode = [v, ids, live](ByteView b) -> Result<List> {
    if (!isPresenceOutcome(b)) return decodeTransactionList(b);
    const ByteView held = b.subspan(transaction_presence_magic.size());
    if (held.size() != ids.size()) {
      return makeError(Errc::malformed, "a presence list of " + std::to_string(held.size()) + " for " +
                                            std::to_string(ids.size()) + " transactions");
    }
    List out;
    if (*live) {
      out = std::move(**live);
      live->reset();
      return out;
    }
    for (size_t i = 0; i < ids.size(); ++i) {
      if (held[i] > 1) return makeError(Errc::malformed, "a presence byte other than 0 or 1");
      if (held[i] == 0) {
        out.emplace_back(std::nullopt);
        continue;
      }
      auto t = v->transaction(ids[i]);
      if (!t) return t.error();
      if (!*t) {
        return makeError(Errc::storage_error, "transaction " + ids[i].hex() +
                                                  " was in the vault when the flow read it and is gone now");
      }
      out.push_back(std::move(t).value());
    }
    return out;
  };
  List txs = co_await ctx.read<List>("vault.transactions", std::move(op), decode);
  if (txs.size() != ids.size()) {
    failFlow(Errc::storage_error, "the vault answered " + std::to_string(txs.size()) +
                                      " transactions for " + std::to_string(ids.size()));
  }
  co_return txs;
}

// Records `txs` in order (each idempotent), in one journaled call: all are
// queued to the vault's writer at once, in dependency order (the one writer
// applies them in that order, group-committed with other flows' records),
// and the call completes when every one is durable -- with the first
// failure in that order, if any. The executor is not blocked meanwhile.
// Records signed transactions (the vault verifies their signatures) or
// vault::VerifiedTransaction ones (verified by the flow already: not again).
template <class Tx>
Flow<bool> recordTxs(FlowContext& ctx, const FlowServices& svc, std::vector<Tx> txs,
                     vault::RecordMode mode) {
  if (txs.empty()) co_return true;
  vault::Vault* v = svc.vault;
  CallOp op = [v, txs, mode](CallDone done) {
    struct Pending {
      std::mutex mutex;
      size_t left = 0;
      std::vector<std::optional<Error>> errors;
      CallDone done;
    };
    auto pending = std::make_shared<Pending>();
    pending->left = txs.size();
    pending->errors.resize(txs.size());
    pending->done = std::move(done);
    for (size_t i = 0; i < txs.size(); ++i) {
      v->recordAsync(txs[i], mode, [pending, i, id = txs[i].id()](const Status& status) {
        std::unique_lock lock(pending->mutex);
        if (!status.ok()) {
          pending->errors[i] = makeError(status.error().code, "recording transaction " + id.hex() + ": " +
                                                                  status.error().message);
        }
        if (--pending->left > 0) return;
        lock.unlock();
        for (auto& error : pending->errors) {
          if (error) return pending->done(std::move(*error));
        }
        pending->done(Bytes{});
      });
    }
  };
  co_await ctx.call("vault.record", std::move(op));
  co_return true;
}

Flow<bool> recordAll(FlowContext& ctx, const FlowServices& svc, std::vector<SignedTransaction> txs,
                     vault::RecordMode mode) {
  return recordTxs(ctx, svc, std::move(txs), mode);
}

Flow<bool> recordVerified(FlowContext& ctx, const FlowServices& svc, vault::VerifiedTransaction tx,
                          vault::RecordMode mode) {
  return recordTxs(ctx, svc, std::vector<vault::VerifiedTransaction>{std::move(tx)}, mode);
}

// --- verification ----------------------------------------------------------------------------

using TxMap = std::map<SecureHash, SignedTransaction>;

Result<LedgerTransaction> toLedger(const WireTransaction& tx, const TxMap& known) {
  return LedgerTransaction::resolve(tx, [&](const StateRef& ref) -> Result<TransactionState> {
    auto it = known.find(ref.txId);
    if (it == known.end()) {
      return makeError(Errc::not_found, "the transaction of state " + ref.toString() + " is not known");
    }
    const auto& outputs = it->second.tx().outputs();
    if (ref.index >= outputs.size()) {
      return makeError(Errc::not_found, "transaction " + ref.txId.hex() + " has no output " +
                                            std::to_string(ref.index));
    }
    return outputs[ref.index];
  });
}

// Resolves and runs the contracts; fails the flow naming the transaction.
LedgerTransaction verifyContracts(const FlowServices& svc, const SignedTransaction& stx,
                                  const TxMap& known) {
  auto ltx = toLedger(stx.tx(), known);
  if (!ltx) fail(ltx.error(), "transaction " + stx.id().hex() + " does not resolve");
  if (auto s = svc.contracts->verify(*ltx, svc.policy); !s) {
    fail(s.error(), "transaction " + stx.id().hex() + " fails its contracts");
  }
  return std::move(ltx).value();
}

// The transactions `stx` depends on (its inputs' and references'), from this
// vault; the flow fails naming the first one the vault does not hold.
Flow<TxMap> knownDependencies(FlowContext& ctx, const FlowServices& svc, const SignedTransaction& stx) {
  const std::vector<SecureHash> dep_ids = dependencyIds(stx.tx());
  auto deps = co_await vaultTransactions(ctx, svc, dep_ids);
  TxMap known;
  for (size_t i = 0; i < dep_ids.size(); ++i) {
    if (!deps[i]) {
      failFlow(Errc::not_found, "transaction " + dep_ids[i].hex() + ", an input of " + stx.id().hex() +
                                    ", is not in this node's vault");
    }
    known.emplace(dep_ids[i], std::move(*deps[i]));
  }
  co_return known;
}

// The observers this node's rules require for `ltx`.
std::vector<RequiredObserver> requiredOf(const FlowServices& svc, const LedgerTransaction& ltx) {
  auto name = [&svc](const Key& k) -> std::optional<std::string> {
    auto party = svc.partyByKey ? svc.partyByKey(k) : std::nullopt;
    if (!party) return std::nullopt;
    return party->name;
  };
  return requiredObservers(svc.observer_rules, ltx, *svc.contracts, name);
}

// `fetched` in dependency order: every transaction after the ones it depends on.
std::vector<SecureHash> dependencyOrder(const TxMap& fetched) {
  std::vector<SecureHash> order;
  std::set<SecureHash> done, visiting;
  for (const auto& entry : fetched) {
    if (done.count(entry.first)) continue;
    std::vector<std::pair<SecureHash, size_t>> stack{{entry.first, 0}};
    visiting.insert(entry.first);
    while (!stack.empty()) {
      const SecureHash cur = stack.back().first;
      const std::vector<SecureHash> deps = dependencyIds(fetched.at(cur).tx());
      if (stack.back().second < deps.size()) {
        const SecureHash d = deps[stack.back().second++];
        if (fetched.count(d) && !done.count(d) && !visiting.count(d)) {
          visiting.insert(d);
          stack.emplace_back(d, 0);
        }
        continue;
      }
      visiting.erase(cur);
      done.insert(cur);
      order.push_back(cur);
      stack.pop_back();
    }
  }
  return order;
}

// --- backchain --------------------------------------------------------------------------------

// What resolution found: the transactions `stx` depends on (from the peer
// or the vault), and the verified chain to record, in dependency order.
struct Resolved {
  TxMap known;
  std::vector<SignedTransaction> chain;
};

// ResolveTransactions: fetches the missing backchain of `stx` from the peer
// of `s`, verifies it in dependency order. Records nothing (the caller
// records the chain with the transaction, once that is verified too).
Flow<Resolved> resolveBackchain(FlowContext& ctx, const FlowServices& svc, Session s,
                                SignedTransaction stx) {
  const BackchainLimits& limits = svc.limits;
  const std::vector<SecureHash> top = dependencyIds(stx.tx());
  TxMap fetched;
  std::set<SecureHash> asked;
  std::deque<std::pair<SecureHash, uint32_t>> queue;  // id, depth below stx
  {
    std::vector<SecureHash> missing = co_await missingOf(ctx, svc, top);
    for (const SecureHash& id : missing) {
      asked.insert(id);
      queue.emplace_back(id, 1);
    }
  }
  while (!queue.empty()) {
    std::vector<SecureHash> batch;
    std::vector<uint32_t> depths;
    while (!queue.empty() && batch.size() < limits.transactions_per_batch_max) {
      batch.push_back(queue.front().first);
      depths.push_back(queue.front().second);
      queue.pop_front();
    }
    if (fetched.size() + batch.size() > limits.backchain_transactions_max) {
      failFlow(Errc::too_large, "the backchain of transaction " + stx.id().hex() +
                                    " has more than backchain_transactions_max (" +
                                    std::to_string(limits.backchain_transactions_max) +
                                    ") transactions");
    }
    ctx.step("fetching " + std::to_string(batch.size()) + " backchain transactions from " +
             quoted(s.peer()));
    BuiltinMessage request;
    request.kind = Kind::fetch;
    request.ids = batch;
    co_await sendMessage(s, std::move(request));
    std::vector<Kind> accepted{Kind::transactions};
    BuiltinMessage got = co_await receiveMessage(s, accepted, "backchain batch");
    if (got.transactions.size() != batch.size()) {
      failFlow(Errc::malformed, quoted(s.peer()) + " sent " +
                                    std::to_string(got.transactions.size()) +
                                    " backchain transactions for " + std::to_string(batch.size()) +
                                    " asked for");
    }
    std::vector<SecureHash> next;
    std::map<SecureHash, uint32_t> next_depth;
    for (size_t i = 0; i < batch.size(); ++i) {
      auto dtx = SignedTransaction::decode(got.transactions[i]);
      if (!dtx) {
        fail(dtx.error(), "backchain transaction " + std::to_string(i) + " from " +
                              quoted(s.peer()) + " (asked for " + batch[i].hex() +
                              ") does not decode");
      }
      if (dtx->id() != batch[i]) {
        failFlow(Errc::id_mismatch, quoted(s.peer()) + " sent transaction " + dtx->id().hex() +
                                        ", which was not asked for (asked for " + batch[i].hex() +
                                        ")");
      }
      for (const SecureHash& dep : dependencyIds(dtx->tx())) {
        if (asked.insert(dep).second) {
          next.push_back(dep);
          next_depth[dep] = depths[i] + 1;
        }
      }
      fetched.emplace(batch[i], std::move(dtx).value());
    }
    std::vector<SecureHash> still = co_await missingOf(ctx, svc, next);
    for (const SecureHash& id : still) {
      if (next_depth[id] > limits.backchain_depth_max) {
        failFlow(Errc::too_deep, "the backchain of transaction " + stx.id().hex() +
                                     " is deeper than backchain_depth_max (" +
                                     std::to_string(limits.backchain_depth_max) + ")");
      }
      queue.emplace_back(id, next_depth[id]);
    }
  }
  // The vault's transactions the chain and stx spend from.
  std::set<SecureHash> from_vault;
  for (const auto& entry : fetched) {
    for (const SecureHash& dep : dependencyIds(entry.second.tx())) {
      if (!fetched.count(dep)) from_vault.insert(dep);
    }
  }
  for (const SecureHash& dep : top) {
    if (!fetched.count(dep)) from_vault.insert(dep);
  }
  std::vector<SecureHash> vault_ids(from_vault.begin(), from_vault.end());
  auto stored = co_await vaultTransactions(ctx, svc, vault_ids);
  Resolved out;
  for (size_t i = 0; i < vault_ids.size(); ++i) {
    if (!stored[i]) {
      failFlow(Errc::not_found, "transaction " + vault_ids[i].hex() +
                                    " of the backchain is neither in the vault nor sent by " +
                                    quoted(s.peer()));
    }
    out.known.emplace(vault_ids[i], std::move(*stored[i]));
  }
  ctx.step("verifying " + std::to_string(fetched.size()) + " backchain transactions");
  // Each transaction is verified against its dependencies' outputs, which
  // are all at hand (fetched or from the vault), so the checks are
  // independent of one another: they run at once (svc.parallel), and the
  // first failure in dependency order is the one reported.
  const std::vector<SecureHash> order = dependencyOrder(fetched);
  std::vector<std::optional<Error>> failures(order.size());
  const std::string from = quoted(s.peer());
  auto verifyOne = [&](size_t i) {
    const SecureHash& id = order[i];
    const SignedTransaction& dtx = fetched.at(id);
    try {
      TxMap lookup;
      for (const SecureHash& dep : dependencyIds(dtx.tx())) {
        auto f = fetched.find(dep);
        lookup.emplace(dep, f != fetched.end() ? f->second : out.known.at(dep));
      }
      verifyContracts(svc, dtx, lookup);
      if (auto st = dtx.verifyRequiredSignatures(); !st) {
        failures[i] =
            makeError(st.error().code, "backchain transaction " + id.hex() + " from " + from +
                                           " is not validly signed: " + st.error().message);
      }
    } catch (const FlowFailure& e) {
      failures[i] = e.error();
    } catch (const std::exception& e) {
      failures[i] = makeError(Errc::invalid_transaction, "verifying backchain transaction " +
                                                             id.hex() + " failed: " + e.what());
    }
  };
  if (svc.parallel != nullptr && order.size() > 1) {
    svc.parallel->forEach(order.size(), verifyOne);
  } else {
    for (size_t i = 0; i < order.size(); ++i) verifyOne(i);
  }
  for (size_t i = 0; i < order.size(); ++i) {
    if (failures[i]) throw FlowFailure(*failures[i]);
    out.chain.push_back(fetched.at(order[i]));
  }
  for (auto& entry : fetched) {
    if (std::binary_search(top.begin(), top.end(), entry.first)) {
      out.known.emplace(entry.first, std::move(entry.second));
    }
  }
  co_return out;
}

// The sender's side: answers the peer's fetch requests for the backchain of
// `stx` until it sends a message of kind `expected`, which it returns.
Flow<BuiltinMessage> serveUntil(FlowContext& ctx, const FlowServices& svc, Session s,
                                SignedTransaction stx, Kind expected, std::string what) {
  const std::vector<SecureHash> deps = dependencyIds(stx.tx());
  std::set<SecureHash> authorised(deps.begin(), deps.end());
  uint64_t served = 0;
  for (;;) {
    std::vector<Kind> accepted{Kind::fetch, expected};
    BuiltinMessage m = co_await receiveMessage(s, accepted, what);
    if (m.kind == expected) co_return m;
    if (m.ids.size() > svc.limits.transactions_per_batch_max) {
      failFlow(Errc::too_large, quoted(s.peer()) + " asked for " + std::to_string(m.ids.size()) +
                                    " transactions at once, over transactions_per_batch_max (" +
                                    std::to_string(svc.limits.transactions_per_batch_max) + ")");
    }
    for (const SecureHash& id : m.ids) {
      if (!authorised.count(id)) {
        failFlow(Errc::forbidden, quoted(s.peer()) + " asked for transaction " + id.hex() +
                                      ", which is not in the backchain of " + stx.id().hex());
      }
    }
    served += m.ids.size();
    if (served > svc.limits.backchain_transactions_max) {
      failFlow(Errc::too_large, quoted(s.peer()) + " asked for more than backchain_transactions_max (" +
                                    std::to_string(svc.limits.backchain_transactions_max) +
                                    ") transactions");
    }
    ctx.step("sending " + std::to_string(m.ids.size()) + " backchain transactions to " +
             quoted(s.peer()));
    auto txs = co_await vaultTransactions(ctx, svc, m.ids);
    BuiltinMessage reply;
    reply.kind = Kind::transactions;
    for (size_t i = 0; i < txs.size(); ++i) {
      if (!txs[i]) {
        failFlow(Errc::not_found, quoted(s.peer()) + " asked for transaction " + m.ids[i].hex() +
                                      ", which this vault does not have");
      }
      for (const SecureHash& dep : dependencyIds(txs[i]->tx())) authorised.insert(dep);
      reply.transactions.push_back(txs[i]->encode());
    }
    co_await sendMessage(s, std::move(reply));
  }
}

// --- collect signatures / sign -----------------------------------------------------------------

Flow<SignedTransaction> collectSignaturesBody(FlowContext& ctx, const FlowServices& svc,
                                              SignedTransaction stx, std::string check,
                                              std::vector<std::string> extra_observers) {
  ctx.step("collecting signatures");
  // The signatures the caller brought are checked; the ones made here are
  // valid by construction (not verified again).
  if (auto st = stx.checkSignaturesAreValid(); !st) fail(st.error(), "transaction " + stx.id().hex());
  for (const KeyPair* k : svc.keysFor(stx.tx().requiredSigningKeys())) stx.signWith(*k);
  const auto& notary = stx.tx().notary();
  std::map<std::string, std::vector<Key>> by_party;
  // A composite signer that no party holds (a fund's "k of n committee"
  // key) is fulfilled by the leaf signatures of the parties asked for their
  // own keys; checked once they have all signed.
  std::vector<Key> composite;
  for (const Key& k : stx.missingSigningKeys()) {
    if (notary && k == notary->owningKey) continue;
    auto party = svc.partyByKey ? svc.partyByKey(k) : std::nullopt;
    if (!party && !k.isSingle()) {
      composite.push_back(k);
      continue;
    }
    if (!party) failFlow(Errc::not_found, "no party is known for required signer " + k.describe());
    if (party->name == ctx.self()) {
      failFlow(Errc::missing_signatures, "this node must sign with " + k.describe() +
                                             ", which it does not hold");
    }
    by_party[party->name].push_back(k);
  }
  // The observers this node's finality will send the transaction to (its
  // rules' and the extra ones): each signer checks them against its rules.
  std::vector<std::string> announced;
  if (!by_party.empty()) {
    const TxMap known = co_await knownDependencies(ctx, svc, stx);
    auto ltx = toLedger(stx.tx(), known);
    if (!ltx) fail(ltx.error(), "transaction " + stx.id().hex() + " does not resolve");
    std::set<std::string> names(extra_observers.begin(), extra_observers.end());
    for (const RequiredObserver& r : requiredOf(svc, *ltx)) names.insert(r.observer);
    names.erase(ctx.self());
    announced.assign(names.begin(), names.end());
  }
  for (const auto& entry : by_party) {
    const std::string& name = entry.first;
    const std::vector<Key>& keys = entry.second;
    ctx.step("collecting the signature of " + quoted(name));
    Session s = co_await ctx.initiate(name);
    BuiltinMessage request;
    request.kind = Kind::sign_request;
    request.check = check;
    request.stx = stx;
    request.observers = announced;
    co_await sendMessage(s, std::move(request));
    BuiltinMessage got = co_await serveUntil(ctx, svc, s, stx, Kind::signatures, "signatures");
    const Bytes signable = signableBytes(stx.id());
    for (const DigitalSignature& sig : got.signatures) {
      const bool asked = std::any_of(keys.begin(), keys.end(),
                                     [&](const Key& k) { return k.contains(sig.by()); });
      if (!asked) {
        failFlow(Errc::bad_signature, quoted(name) + " returned a signature by " +
                                          Key(sig.by()).describe() + ", a key it was not asked for");
      }
      if (auto v = sig.verify(signable); !v) {
        fail(v.error(), "the signature of " + quoted(name) + " over transaction " + stx.id().hex() +
                            " does not verify");
      }
      stx.addSignature(sig);
    }
    const auto signers = stx.signers();
    for (const Key& k : keys) {
      if (!k.isFulfilledBy(signers)) {
        failFlow(Errc::missing_signatures,
                 quoted(name) + " did not sign transaction " + stx.id().hex() + " with " + k.describe());
      }
    }
  }
  for (const Key& k : composite) {
    if (!k.isFulfilledBy(stx.signers())) {
      failFlow(Errc::missing_signatures, "the signatures collected for transaction " + stx.id().hex() +
                                             " do not fulfil " + k.describe());
    }
  }
  co_return stx;
}

// What signing would give away. A deal's check looks at the deal's states;
// the same transaction could also move tokens this node signs for (its own,
// or a fund's it holds a share of) to the initiator: refused, unless the
// deal's allowance covers it (services.h, OutflowAllowance). Per owner and
// currency, every issuer's tokens lost count, whatever else comes in (an
// issuer's tokens swapped for another's are a loss too).
Status checkNothingGivenAway(const FlowServices& svc, const LedgerTransaction& ltx,
                             const std::string& check) {
  auto signsFor = [&](const Key& owner) {
    return std::any_of(svc.keys.begin(), svc.keys.end(),
                       [&](const KeyPair& k) { return owner.contains(k.publicKey()); });
  };
  // (owner, currency, issuer) -> net change, in 128 bits (sums of int64s).
  std::map<std::tuple<Key, std::string, Key>, __int128> net;
  for (bool in : {true, false}) {
    for (const TransactionState* st :
         in ? ltx.inputsOf(contracts::token_contract) : ltx.outputsOf(contracts::token_contract)) {
      auto t = contracts::decodeToken(st->data);
      if (!t) return Error{Errc::malformed, "a token state does not decode: " + t.error().message};
      if (!signsFor(t->owner)) continue;
      __int128& n = net[{t->owner, t->currency, t->issuer}];
      n += in ? -static_cast<__int128>(t->amountMinor) : static_cast<__int128>(t->amountMinor);
    }
  }
  std::map<std::pair<Key, std::string>, __int128> lost;
  for (const auto& [k, n] : net) {
    if (n < 0) lost[{std::get<0>(k), std::get<1>(k)}] += -n;
  }
  if (lost.empty()) return {};
  std::map<std::pair<Key, std::string>, __int128> allowed;
  if (auto a = svc.outflows.find(check); a != svc.outflows.end()) {
    for (const TokenOutflow& o : a->second(ltx)) allowed[{o.owner, o.currency}] += o.amountMinor;
  }
  for (const auto& [k, amount] : lost) {
    const __int128 may = allowed.count(k) ? allowed[k] : 0;
    if (amount > may) {
      return Error{Errc::forbidden,
                   "it would take " + std::to_string(static_cast<int64_t>(amount - may)) + " " +
                       k.second + " of tokens owned by " + k.first.describe() +
                       " (this node signs for it) beyond what deal " + quoted(check) + " pays"};
    }
  }
  return {};
}

Flow<Bytes> signTransactionResponder(FlowContext& ctx, const FlowServices* svc, Bytes) {
  Session s = *ctx.counterparty();
  std::vector<Kind> accepted{Kind::sign_request};
  BuiltinMessage request = co_await receiveMessage(s, accepted, "sign request");
  SignedTransaction stx = std::move(*request.stx);
  ctx.step("resolving the backchain of " + stx.id().hex());
  Resolved resolved = co_await ctx.subFlow(std::string(resolve_transactions_flow),
                                           resolveBackchain(ctx, *svc, s, stx));
  ctx.step("verifying " + stx.id().hex());
  LedgerTransaction ltx = verifyContracts(*svc, stx, resolved.known);
  if (auto st = stx.checkSignaturesAreValid(); !st) {
    fail(st.error(), "transaction " + stx.id().hex() + " from " + quoted(s.peer()));
  }
  auto mine = svc->keysFor(stx.tx().requiredSigningKeys());
  if (mine.empty()) {
    failFlow(Errc::forbidden, quoted(s.peer()) + " asked this node to sign transaction " +
                                  stx.id().hex() + ", which requires none of its keys");
  }
  // A node cannot hide a transaction from an observer by finalising it
  // alone: refuse to sign unless its finality goes to every observer our
  // rules require (besides us and the initiator, who record it anyway).
  {
    const std::set<std::string> announced(request.observers.begin(), request.observers.end());
    for (const RequiredObserver& r : requiredOf(*svc, ltx)) {
      if (r.observer == ctx.self() || r.observer == s.peer() || announced.count(r.observer)) continue;
      failFlow(Errc::forbidden, "the finality of transaction " + stx.id().hex() + " by " +
                                    quoted(s.peer()) + " would not send it to observer " +
                                    quoted(r.observer) + ", which " + r.rule +
                                    " requires, so it is not signed");
    }
  }
  auto check = svc->checks.find(request.check);
  if (check == svc->checks.end()) {
    failFlow(Errc::not_found, "no business check " + quoted(request.check) +
                                  " is registered here, so transaction " + stx.id().hex() +
                                  " is not signed");
  }
  if (auto st = check->second(ltx, s.peer()); !st) {
    fail(st.error(), "business check " + quoted(request.check) + " refused transaction " +
                         stx.id().hex());
  }
  if (auto st = checkNothingGivenAway(*svc, ltx, request.check); !st) {
    fail(st.error(),
         "transaction " + stx.id().hex() + " from " + quoted(s.peer()) + " is not signed");
  }
  co_await recordAll(ctx, *svc, std::move(resolved.chain), vault::RecordMode::only_relevant);
  BuiltinMessage reply;
  reply.kind = Kind::signatures;
  for (const KeyPair* k : mine) reply.signatures.push_back(stx.signatureBy(*k));
  co_await sendMessage(s, std::move(reply));
  co_return Bytes(stx.id().bytes().begin(), stx.id().bytes().end());
}

// --- notarise --------------------------------------------------------------------------------------

std::string conflictText(const NotaryAnswer& answer) {
  std::string out;
  for (const NotaryConflictInfo& c : answer.conflicts) {
    if (!out.empty()) out += ", ";
    out += c.ref.toString() + " (consumed by " + c.consumedBy.hex() + ")";
  }
  return out;
}

// caller_verifies: finality verifies the notarised transaction's signatures
// once itself (and records it as verified), so the notary's are not
// verified here too.
Flow<SignedTransaction> notariseBody(FlowContext& ctx, const FlowServices& svc,
                                     SignedTransaction stx, bool caller_verifies = false) {
  if (!stx.tx().needsNotarySignature()) co_return stx;
  const Party notary = *stx.tx().notary();
  if (svc.notary == nullptr) failFlow(Errc::unavailable, "this node has no notary gateway");
  auto validating = svc.notary->validating(notary);
  if (!validating) fail(validating.error(), "notary " + quoted(notary.name));
  NotaryRequest request;
  request.txId = stx.id();
  if (*validating) {
    request.full = stx;
    auto deps = co_await vaultTransactions(ctx, svc, dependencyIds(stx.tx()));
    for (auto& d : deps) {
      if (!d) failFlow(Errc::not_found, "an input transaction of " + stx.id().hex() + " is not in the vault");
      request.dependencies.push_back(std::move(*d));
    }
  } else {
    request.filtered = FilteredTransaction::forNotary(stx.tx());
  }
  ctx.step("notarising with " + quoted(notary.name));
  NotaryGateway* gateway = svc.notary;
  CallOp op = [gateway, notary, request](CallDone done) {
    gateway->notarise(notary, request, [done](Result<NotaryAnswer> answer) {
      if (!answer) {
        done(answer.error());
      } else {
        done(encodeNotaryAnswer(*answer));
      }
    });
  };
  NotaryAnswer answer =
      co_await ctx.call<NotaryAnswer>("notary.notarise", std::move(op), decodeNotaryAnswer);
  if (answer.conflict()) {
    failFlow(Errc::conflict, "notary " + quoted(notary.name) + " refused transaction " +
                                 stx.id().hex() + ": input states consumed already: " +
                                 conflictText(answer));
  }
  const Bytes signable = signableBytes(stx.id());
  for (const DigitalSignature& sig : answer.signatures) {
    if (!notary.owningKey.contains(sig.by())) {
      failFlow(Errc::bad_signature, "notary " + quoted(notary.name) + " answered with a signature by " +
                                        Key(sig.by()).describe() + ", which is not one of its keys");
    }
    if (!caller_verifies) {
      if (auto v = sig.verify(signable); !v) {
        fail(v.error(), "a signature of notary " + quoted(notary.name) + " does not verify");
      }
    }
    stx.addSignature(sig);
  }
  if (caller_verifies) co_return stx;
  if (auto st = stx.verifyRequiredSignatures(); !st) {
    fail(st.error(), "transaction " + stx.id().hex() + " after notarisation by " + quoted(notary.name));
  }
  co_return stx;
}

// --- finality ----------------------------------------------------------------------------------------

// Sends `stx` to every one of `recipients` (name -> observer) and serves
// each one's backchain requests until it has recorded it; they record in
// parallel. Each finality request lists the recipients, `also` (nodes that
// had it sent otherwise) and this node.
Flow<bool> distribute(FlowContext& ctx, const FlowServices& svc, SignedTransaction stx,
                      std::map<std::string, bool> recipients, std::vector<std::string> also) {
  std::set<std::string> listed(also.begin(), also.end());
  for (const auto& entry : recipients) listed.insert(entry.first);
  listed.insert(ctx.self());
  const std::vector<std::string> names(listed.begin(), listed.end());
  std::vector<Session> sessions;
  for (const auto& entry : recipients) {
    ctx.step("sending " + stx.id().hex() + " to " + quoted(entry.first));
    Session s = co_await ctx.initiate(entry.first);
    BuiltinMessage m;
    m.kind = Kind::finality;
    m.stx = stx;
    m.observer = entry.second;
    m.recipients = names;
    co_await sendMessage(s, std::move(m));
    sessions.push_back(s);
  }
  for (Session& s : sessions) {
    ctx.step("waiting for " + quoted(s.peer()) + " to record " + stx.id().hex());
    co_await serveUntil(ctx, svc, s, stx, Kind::recorded, "recorded answer");
  }
  co_return true;
}

Flow<SignedTransaction> finalityBody(FlowContext& ctx, const FlowServices& svc, SignedTransaction stx,
                                     std::vector<std::string> extra_observers) {
  ctx.step("verifying " + stx.id().hex());
  const TxMap known = co_await knownDependencies(ctx, svc, stx);
  const LedgerTransaction ltx = verifyContracts(svc, stx, known);
  std::vector<Key> allowed_missing;
  if (stx.tx().needsNotarySignature()) allowed_missing.push_back(stx.tx().notary()->owningKey);
  if (auto st = stx.verifySignaturesExcept(allowed_missing); !st) {
    fail(st.error(), "transaction " + stx.id().hex());
  }
  stx = co_await ctx.subFlow(std::string(notarise_flow), notariseBody(ctx, svc, std::move(stx), true));
  // Every signature, the notary's too, verified once here; the vault takes
  // the verified transaction without verifying it again.
  auto verified = vault::VerifiedTransaction::verify(stx);
  if (!verified) {
    const std::string by = stx.tx().needsNotarySignature() ? " after notarisation by " + quoted(stx.tx().notary()->name) : "";
    fail(verified.error(), "transaction " + stx.id().hex() + by);
  }
  ctx.step("finality: recording " + stx.id().hex());
  co_await recordVerified(ctx, svc, std::move(verified).value(), vault::RecordMode::only_relevant);

  std::set<std::string> participants;
  auto note = [&](const TransactionState& state) {
    for (const Key& k : state.participants) {
      auto party = svc.partyByKey ? svc.partyByKey(k) : std::nullopt;
      if (party) participants.insert(party->name);
    }
  };
  for (const StateAndRef& in : ltx.inputs()) note(in.state);
  for (const TransactionState& out : ltx.outputs()) note(out);
  std::map<std::string, bool> recipients;  // name -> observer
  for (const std::string& p : participants) recipients[p] = false;
  for (const RequiredObserver& r : requiredOf(svc, ltx)) recipients.emplace(r.observer, true);
  for (const std::string& o : extra_observers) recipients.emplace(o, true);
  recipients.erase(ctx.self());
  std::vector<std::string> also;
  co_await distribute(ctx, svc, stx, std::move(recipients), std::move(also));
  co_return stx;
}

Flow<Bytes> receiveFinalityResponder(FlowContext& ctx, const FlowServices* svc, Bytes) {
  Session s = *ctx.counterparty();
  std::vector<Kind> accepted{Kind::finality};
  BuiltinMessage m = co_await receiveMessage(s, accepted, "finality request");
  SignedTransaction stx = std::move(*m.stx);
  std::vector<SecureHash> self_id{stx.id()};
  std::vector<SecureHash> missing = co_await missingOf(ctx, *svc, self_id);
  std::map<std::string, bool> skipped;  // observers our rules require (sent on by a participant)
  if (!missing.empty()) {
    ctx.step("resolving the backchain of " + stx.id().hex());
    Resolved resolved = co_await ctx.subFlow(std::string(resolve_transactions_flow),
                                             resolveBackchain(ctx, *svc, s, stx));
    ctx.step("verifying " + stx.id().hex());
    const LedgerTransaction ltx = verifyContracts(*svc, stx, resolved.known);
    // A participant sends the transaction on to every observer its rules
    // require. Whether it is one is read from its own keys, and the sender's
    // recipient list is not trusted (a sender could list an observer it
    // never sent to, or call this node an observer): observers record a
    // transaction once, however many send it.
    bool participant = false;
    auto note = [&](const TransactionState& state) {
      if (!svc->keysFor(state.participants).empty()) participant = true;
    };
    for (const StateAndRef& in : ltx.inputs()) note(in.state);
    for (const TransactionState& out : ltx.outputs()) note(out);
    if (participant) {
      for (const RequiredObserver& r : requiredOf(*svc, ltx)) {
        if (r.observer != ctx.self() && r.observer != s.peer()) skipped.emplace(r.observer, true);
      }
    }
    // Verified once here; the vault takes it without verifying it again.
    auto verified = vault::VerifiedTransaction::verify(stx);
    if (!verified) fail(verified.error(), "transaction " + stx.id().hex() + " from " + quoted(s.peer()));
    ctx.step("recording " + stx.id().hex());
    co_await recordAll(ctx, *svc, std::move(resolved.chain), vault::RecordMode::only_relevant);
    vault::RecordMode mode = vault::RecordMode::only_relevant;
    if (m.observer) mode = vault::RecordMode::all_visible;
    co_await recordVerified(ctx, *svc, std::move(verified).value(), mode);
  }
  BuiltinMessage ack;
  ack.kind = Kind::recorded;
  co_await sendMessage(s, std::move(ack));
  if (!skipped.empty()) {
    // Send it on to the observers our rules require ourselves (they record
    // it once, however many send it).
    ctx.step("sending " + stx.id().hex() + " on to " + std::to_string(skipped.size()) +
             " observers our rules require");
    co_await ctx.subFlow(std::string(finality_flow),
                         distribute(ctx, *svc, stx, std::move(skipped), m.recipients));
  }
  co_return Bytes(stx.id().bytes().begin(), stx.id().bytes().end());
}

struct FinalityArgs {
  SignedTransaction stx;
  std::vector<std::string> extra_observers;
};

Result<FinalityArgs> decodeFinalityArgs(ByteView bytes) {
  ReadLimits limits;
  limits.message_bytes_max = 8u << 20;
  return decodeMessage<schema::builtin::FinalityArgs>(
      bytes, "finality arguments", Canonical::required,
      [](auto r) -> Result<FinalityArgs> {
        auto stx = SignedTransaction::decode(asByteView(r.getTransaction()));
        if (!stx) return makeError(stx.error().code, "transaction: " + stx.error().message);
        FinalityArgs args{std::move(stx).value(), {}};
        auto l = r.getExtraObservers();
        if (l.size() > 64) return makeError(Errc::too_large, "more than 64 extra observers");
        for (auto t : l) {
          auto name = readText(t, "an extra observer's name", text_bounded_by_message);
          if (!name) return name.error();
          args.extra_observers.push_back(std::move(name).value());
        }
        return args;
      },
      limits);
}

Flow<Bytes> finalityStartable(FlowContext& ctx, const FlowServices* svc, Bytes args) {
  auto decoded = decodeFinalityArgs(args);
  if (!decoded) throw FlowFailure(decoded.error());
  SignedTransaction done =
      co_await finality(ctx, *svc, std::move(decoded->stx), std::move(decoded->extra_observers));
  co_return done.encode();
}

}  // namespace

Flow<SignedTransaction> collectSignatures(FlowContext& ctx, const FlowServices& services,
                                          SignedTransaction stx, std::string check,
                                          std::vector<std::string> extra_observers) {
  return ctx.subFlow(std::string(collect_signatures_flow),
                     collectSignaturesBody(ctx, services, std::move(stx), std::move(check),
                                           std::move(extra_observers)));
}

Flow<SignedTransaction> notarise(FlowContext& ctx, const FlowServices& services,
                                 SignedTransaction stx) {
  return ctx.subFlow(std::string(notarise_flow), notariseBody(ctx, services, std::move(stx)));
}

Flow<SignedTransaction> finality(FlowContext& ctx, const FlowServices& services,
                                 SignedTransaction stx, std::vector<std::string> extra_observers) {
  return ctx.subFlow(std::string(finality_flow),
                     finalityBody(ctx, services, std::move(stx), std::move(extra_observers)));
}

Flow<std::vector<std::optional<SignedTransaction>>> loadTransactions(FlowContext& ctx,
                                                                     const FlowServices& services,
                                                                     std::vector<SecureHash> ids) {
  return vaultTransactions(ctx, services, std::move(ids));
}

Bytes encodeFinalityArgs(const SignedTransaction& stx, const std::vector<std::string>& extra_observers) {
  return buildCanonical<schema::builtin::FinalityArgs>([&](auto b) {
    b.setTransaction(asData(stx.encode()));
    auto l = b.initExtraObservers(static_cast<uint32_t>(extra_observers.size()));
    for (uint32_t i = 0; i < extra_observers.size(); ++i) l.set(i, extra_observers[i]);
  });
}

Flow<Bytes> privacySalt(FlowContext& ctx) {
  Bytes salt = co_await ctx.randomBytes(32);  // one journaled event
  co_return salt;
}

Status registerBuiltinFlows(FlowRuntime& runtime, const FlowServices& services) {
  const FlowServices* svc = &services;
  if (auto s = runtime.registerFlow(std::string(sign_transaction_flow),
                                    [svc](FlowContext& ctx, Bytes args) {
                                      return signTransactionResponder(ctx, svc, std::move(args));
                                    });
      !s) {
    return s;
  }
  if (auto s = runtime.registerFlow(std::string(receive_finality_flow),
                                    [svc](FlowContext& ctx, Bytes args) {
                                      return receiveFinalityResponder(ctx, svc, std::move(args));
                                    });
      !s) {
    return s;
  }
  if (auto s = runtime.registerFlow(std::string(finality_flow),
                                    [svc](FlowContext& ctx, Bytes args) {
                                      return finalityStartable(ctx, svc, std::move(args));
                                    });
      !s) {
    return s;
  }
  if (auto s = runtime.registerInitiating(std::string(collect_signatures_flow),
                                          std::string(sign_transaction_flow));
      !s) {
    return s;
  }
  return runtime.registerInitiating(std::string(finality_flow), std::string(receive_finality_flow));
}

}  // namespace ccal::flows
