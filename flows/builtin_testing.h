#pragma once
// Test helpers for the built-in flows (tests only): a notary gateway over a
// real uniqueness map (a StateRef is consumed by one transaction, ever; a
// second spender gets the conflict naming it; asking again for the same
// transaction gets the same signature), a party directory, and the example
// deal: a two-party move of a ccal.test.Token (ledger/testing.h) from this
// node to another, with the new owner's signature collected, notarised and
// finalised.

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "flows/builtin_flows.h"
#include "ledger/testing.h"

namespace ccal::flows::testing {

inline constexpr std::string_view token_move_flow = "ccal.example.TokenMove";
inline constexpr std::string_view token_issue_flow = "ccal.example.TokenIssue";

// A non-validating notary: one key, a consumed-state map.
class UniquenessNotary final : public NotaryGateway {
 public:
  UniquenessNotary(Party party, KeyPair key) : party_(std::move(party)), key_(std::move(key)) {}
  const Party& party() const { return party_; }

  Result<bool> validating(const Party& notary) const override {
    if (notary != party_) return makeError(Errc::not_found, "unknown notary '" + notary.name + "'");
    return false;
  }
  void notarise(const Party& notary, NotaryRequest request, Done done) override {
    ++requests;
    if (notary != party_) {
      done(makeError(Errc::not_found, "unknown notary '" + notary.name + "'"));
      return;
    }
    if (!request.filtered) {
      done(makeError(Errc::malformed, "a non-validating notary needs the filtered transaction"));
      return;
    }
    const FilteredTransaction& ftx = *request.filtered;
    if (ftx.id() != request.txId) {
      done(makeError(Errc::id_mismatch, "the filtered transaction is not " + request.txId.hex()));
      return;
    }
    for (ComponentGroup g : {ComponentGroup::inputs, ComponentGroup::references, ComponentGroup::notary,
                             ComponentGroup::time_window}) {
      if (auto s = ftx.checkAllVisible(g); !s) {
        done(s.error());
        return;
      }
    }
    NotaryAnswer answer;
    for (const StateRef& ref : ftx.inputs()) {
      auto it = consumed.find(ref);
      if (it != consumed.end() && it->second != ftx.id()) answer.conflicts.push_back({ref, it->second});
    }
    for (const StateRef& ref : ftx.references()) {
      auto it = consumed.find(ref);
      if (it != consumed.end()) answer.conflicts.push_back({ref, it->second});
    }
    if (answer.conflict()) {
      ++conflicts;
      done(std::move(answer));
      return;
    }
    for (const StateRef& ref : ftx.inputs()) consumed.emplace(ref, ftx.id());
    answer.signatures.push_back(key_.sign(signableBytes(ftx.id())));
    done(std::move(answer));
  }

  std::map<StateRef, SecureHash> consumed;
  uint64_t requests = 0;
  uint64_t conflicts = 0;

 private:
  Party party_;
  KeyPair key_;
};

struct Directory {
  std::map<std::string, Party> parties;
  std::optional<Party> byName(std::string_view name) const {
    auto it = parties.find(std::string(name));
    if (it == parties.end()) return std::nullopt;
    return it->second;
  }
  std::optional<Party> byKey(const Key& key) const {
    for (const auto& entry : parties) {
      if (entry.second.owningKey == key) return entry.second;
    }
    return std::nullopt;
  }
};

// The deal's arguments: "<recipient>|<tx id hex>|<output index>".
inline Bytes tokenMoveArgs(const std::string& recipient, const StateRef& ref) {
  const std::string s = recipient + "|" + ref.txId.hex() + "|" + std::to_string(ref.index);
  return Bytes(s.begin(), s.end());
}

// Moves the token at the given StateRef to the recipient; the result is the
// move's transaction id. `hidden_observers` (a node that cheats): announced
// to the signers as its finality's observers, but left out of its finality.
inline Flow<Bytes> tokenMove(FlowContext& ctx, const FlowServices* svc, Bytes args,
                             std::vector<std::string> hidden_observers = {}) {
  const std::string text(args.begin(), args.end());
  const size_t a = text.find('|'), b = text.rfind('|');
  if (a == std::string::npos || a == b) failFlow(Errc::malformed, "token move arguments: " + text);
  const std::string recipient_name = text.substr(0, a);
  auto tx_id = SecureHash::fromHex(text.substr(a + 1, b - a - 1));
  if (!tx_id) failFlow(Errc::malformed, "token move arguments: not a transaction id");
  const StateRef ref{*tx_id, static_cast<uint32_t>(std::stoul(text.substr(b + 1)))};
  auto recipient = svc->partyByName(recipient_name);
  if (!recipient) failFlow(Errc::not_found, "no party named '" + recipient_name + "'");
  std::vector<SecureHash> ids{ref.txId};
  auto txs = co_await loadTransactions(ctx, *svc, ids);
  if (!txs[0] || ref.index >= txs[0]->tx().outputs().size()) {
    failFlow(Errc::not_found, "no token " + ref.toString() + " in the vault");
  }
  const TransactionState in = txs[0]->tx().outputs()[ref.index];
  auto token = ccal::testing::decodeToken(in.data);
  if (!token) failFlow(token.error().code, "the state is not a token: " + token.error().message);
  ccal::testing::TestToken moved = *token;
  moved.owner = recipient->owningKey;
  Bytes salt = co_await privacySalt(ctx);
  auto wtx = TransactionBuilder(in.notary)
                 .addInput(ref)
                 .addOutput(ccal::testing::tokenState(in.notary, moved))
                 .addCommand(Command{"ccal.test.Token.Move", {}, {token->owner, recipient->owningKey}})
                 .setPrivacySalt(salt)
                 .build();
  if (!wtx) throw FlowFailure(wtx.error());
  SignedTransaction stx(std::move(wtx).value());
  stx = co_await collectSignatures(ctx, *svc, std::move(stx), std::string(token_move_flow),
                                   std::move(hidden_observers));
  std::vector<std::string> no_extra;
  stx = co_await finality(ctx, *svc, std::move(stx), no_extra);
  co_return Bytes(stx.id().bytes().begin(), stx.id().bytes().end());
}

// Issues a token of `amount` to this node (args: the amount as text); the
// result is the issue's transaction id.
inline Flow<Bytes> tokenIssue(FlowContext& ctx, const FlowServices* svc, const Party* notary,
                              Bytes args) {
  const int64_t amount = std::stoll(std::string(args.begin(), args.end()));
  Bytes salt = co_await privacySalt(ctx);
  const uint64_t linear = co_await ctx.random();
  ccal::testing::TestToken t;
  t.owner = svc->identity.owningKey;
  t.issuer = svc->identity.owningKey;
  t.amountMinor = amount;
  t.currency = "CNY";
  t.linearId = SecureHash::of(Bytes(reinterpret_cast<const uint8_t*>(&linear),
                                    reinterpret_cast<const uint8_t*>(&linear) + 8));
  auto wtx = TransactionBuilder(*notary)
                 .addOutput(ccal::testing::tokenState(*notary, t))
                 .addCommand(Command{"ccal.test.Token.Issue", {}, {t.owner}})
                 .setPrivacySalt(salt)
                 .build();
  if (!wtx) throw FlowFailure(wtx.error());
  SignedTransaction stx(std::move(wtx).value());
  stx = co_await collectSignatures(ctx, *svc, std::move(stx), std::string(token_issue_flow));
  std::vector<std::string> no_extra;
  stx = co_await finality(ctx, *svc, std::move(stx), no_extra);
  co_return Bytes(stx.id().bytes().begin(), stx.id().bytes().end());
}

// The business check of a token move: the signer must be a new owner.
inline Status checkTokenMove(const FlowServices& svc, const LedgerTransaction& tx) {
  for (const TransactionState& out : tx.outputs()) {
    auto t = ccal::testing::decodeToken(out.data);
    if (t && svc.identity.owningKey == t->owner) return {};
  }
  return makeError(Errc::forbidden, "this node receives no token in the move");
}

// Registers the built-in flows, the deal and the deal's check. With
// `hidden_observers`, the node's moves hide their finality from them (see
// tokenMove; the caller clears its observer rules too).
inline Status registerTokenFlows(FlowRuntime& rt, FlowServices& svc, const Party* notary,
                                 std::vector<std::string> hidden_observers = {}) {
  const FlowServices* s = &svc;
  svc.checks[std::string(token_move_flow)] = [s](const LedgerTransaction& tx, const std::string&) {
    return checkTokenMove(*s, tx);
  };
  if (auto st = registerBuiltinFlows(rt, svc); !st) return st;
  if (auto st = rt.registerFlow(std::string(token_move_flow),
                                [s, hidden_observers](FlowContext& ctx, Bytes args) {
                                  return tokenMove(ctx, s, std::move(args), hidden_observers);
                                });
      !st) {
    return st;
  }
  return rt.registerFlow(std::string(token_issue_flow), [s, notary](FlowContext& ctx, Bytes args) {
    return tokenIssue(ctx, s, notary, std::move(args));
  });
}

inline SecureHash idOf(const Bytes& result) { return SecureHash::fromBytes(result).value(); }

}  // namespace ccal::flows::testing
