#include "contracts/token.h"

#include <algorithm>

#include "ledger/capnp_io.h"
#include "schemas/contracts.capnp.h"

namespace ccal::contracts {

Bytes encodeToken(const Token& t) {
  return buildCanonical<schema::contracts::TokenState>([&](auto b) {
    t.owner.write(b.initOwner());
    t.issuer.write(b.initIssuer());
    b.setCurrency(t.currency);
    b.setAmountMinor(t.amountMinor);
  });
}

Result<Token> decodeToken(ByteView bytes) {
  return decodeMessage<schema::contracts::TokenState>(
      bytes, "token state", Canonical::required, [](auto r) -> Result<Token> {
        auto owner = Key::read(r.getOwner());
        if (!owner) return owner.error();
        auto issuer = Key::read(r.getIssuer());
        if (!issuer) return issuer.error();
        auto currency = readText(r.getCurrency(), "token state: currency", text_bounded_by_message);
        if (!currency) return currency.error();
        return Token{*owner, *issuer, std::move(currency).value(), r.getAmountMinor()};
      });
}

TransactionState tokenState(const Party& notary, const Token& t) {
  TransactionState s;
  s.contract = std::string(token_contract);
  s.stateType = std::string(token_state_type);
  s.data = encodeToken(t);
  s.participants = {t.owner};
  s.notary = notary;
  s.constraint.codeHash = Contract::codeIdentity(token_contract, 1);
  return s;
}

bool validCurrency(std::string_view currency) {
  return currency.size() == 3 &&
         std::all_of(currency.begin(), currency.end(), [](char c) { return c >= 'A' && c <= 'Z'; });
}

std::optional<int64_t> addChecked(int64_t a, int64_t b) {
  int64_t r = 0;
  if (__builtin_add_overflow(a, b, &r)) return std::nullopt;
  return r;
}

bool signedBy(const Command& command, const Key& key) {
  return std::find(command.signers.begin(), command.signers.end(), key) != command.signers.end();
}

Verdict sumTokens(const std::vector<const TransactionState*>& states, TokenTotals& totals) {
  for (const TransactionState* s : states) {
    if (s->stateType != token_state_type) {
      return Verdict::reject("bad_state", "a ccal.token state has type '" + s->stateType + "'");
    }
    auto t = decodeToken(s->data);
    if (!t) return Verdict::reject("bad_state", "a token state does not decode: " + t.error().message);
    if (!validCurrency(t->currency)) {
      return Verdict::reject("bad_currency", "currency '" + t->currency + "' is not three capital letters");
    }
    if (t->amountMinor <= 0) {
      return Verdict::reject("non_positive", "a token amount must be positive, not " +
                                                 std::to_string(t->amountMinor));
    }
    int64_t& total = totals[{t->currency, t->issuer.hash()}];
    auto sum = addChecked(total, t->amountMinor);
    if (!sum) return Verdict::reject("overflow", "the " + t->currency + " amounts overflow int64");
    total = *sum;
  }
  return Verdict::accept();
}

std::optional<int64_t> netTokensTo(const LedgerTransaction& tx, const Key& owner,
                                   std::string_view currency) {
  int64_t net = 0;
  for (const auto* s : tx.outputsOf(token_contract)) {
    auto t = decodeToken(s->data);
    if (!t) return std::nullopt;
    if (t->owner != owner || t->currency != currency) continue;
    auto sum = addChecked(net, t->amountMinor);
    if (!sum) return std::nullopt;
    net = *sum;
  }
  for (const auto* s : tx.inputsOf(token_contract)) {
    auto t = decodeToken(s->data);
    if (!t) return std::nullopt;
    if (t->owner != owner || t->currency != currency) continue;
    int64_t r = 0;
    if (__builtin_sub_overflow(net, t->amountMinor, &r)) return std::nullopt;
    net = r;
  }
  return net;
}

std::vector<FieldDecl> TokenSchema::fields() const {
  return {{"amount", FieldType::int64},
          {"currency", FieldType::text},
          {"issuer", FieldType::hash},
          {"owner", FieldType::hash}};
}

Result<StateView> TokenSchema::view(const TransactionState& state) const {
  auto t = decodeToken(state.data);
  if (!t) return t.error();
  StateView v;
  v.fields = {{"amount", t->amountMinor},
              {"currency", t->currency},
              {"issuer", t->issuer.hash()},
              {"owner", t->owner.hash()}};
  v.fungible = FungibleAmount{t->currency, t->issuer.hash(), t->amountMinor};
  return v;
}

namespace {

std::string tokenName(const std::pair<std::string, SecureHash>& k) {
  return k.first + " of issuer " + k.second.shortHex();
}

}  // namespace

Verdict TokenContract::verify(const LedgerTransaction& tx) const {
  auto commands = tx.commandsOf("ccal.token.");
  const auto inputs = tx.inputsOf(token_contract);
  const auto outputs = tx.outputsOf(token_contract);
  if (commands.size() != 1) {
    return Verdict::reject("one_command", "a transaction with token states needs exactly one ccal.token "
                                          "command, not " + std::to_string(commands.size()));
  }
  const Command& cmd = *commands[0];
  TokenTotals in, out;
  if (auto v = sumTokens(inputs, in); !v.accepted) return v;
  if (auto v = sumTokens(outputs, out); !v.accepted) return v;
  // A token is shared with its owner alone (tokenState): an owner left out
  // would not record what it received (a repayment to a fund that its
  // committee's vaults never see), another party would see it needlessly.
  for (const auto* s : outputs) {
    auto t = decodeToken(s->data).value();  // (sumTokens decoded it)
    if (s->participants.size() != 1 || !(s->participants[0] == t.owner)) {
      return Verdict::reject("wrong_participants", "a token's participants are its owner alone");
    }
  }

  if (cmd.type == token_issue_command) {
    if (!inputs.empty()) return Verdict::reject("issue_has_inputs", "an issue consumes no tokens");
    if (outputs.empty()) return Verdict::reject("no_outputs", "an issue creates tokens");
    if (out.size() != 1) {
      return Verdict::reject("mixed_tokens", "an issue creates tokens of one currency and one issuer");
    }
    auto t = decodeToken(outputs[0]->data).value();
    if (!signedBy(cmd, t.issuer)) {
      return Verdict::reject("missing_signature", "the issuer must sign an issue of " + t.currency);
    }
    return Verdict::accept();
  }
  if (cmd.type == token_move_command) {
    if (inputs.empty()) return Verdict::reject("no_inputs", "a move spends tokens");
    if (in != out) {
      for (const auto& [k, v] : in) {
        auto it = out.find(k);
        const int64_t o = it == out.end() ? 0 : it->second;
        if (o != v) {
          return Verdict::reject("not_conserved", "a move conserves " + tokenName(k) + ": inputs " +
                                                      std::to_string(v) + ", outputs " + std::to_string(o));
        }
      }
      return Verdict::reject("not_conserved", "a move creates tokens of " + tokenName(out.begin()->first) +
                                                  " that no input holds");
    }
    for (const auto* s : inputs) {
      auto t = decodeToken(s->data).value();
      if (!signedBy(cmd, t.owner)) {
        return Verdict::reject("missing_signature", "every input's owner must sign a move (owner " +
                                                        t.owner.hash().shortHex() + " does not)");
      }
    }
    return Verdict::accept();
  }
  if (cmd.type == token_redeem_command) {
    if (inputs.empty()) return Verdict::reject("no_inputs", "a redemption spends tokens");
    if (in.size() != 1 || out.size() > 1 || (out.size() == 1 && out.begin()->first != in.begin()->first)) {
      return Verdict::reject("mixed_tokens", "a redemption is of one currency and one issuer");
    }
    const int64_t change = out.empty() ? 0 : out.begin()->second;
    if (change >= in.begin()->second) {
      return Verdict::reject("nothing_redeemed", "a redemption must return less change than it spends");
    }
    for (const auto* s : inputs) {
      auto t = decodeToken(s->data).value();
      if (!signedBy(cmd, t.owner)) {
        return Verdict::reject("missing_signature", "every input's owner must sign a redemption");
      }
      if (!signedBy(cmd, t.issuer)) {
        return Verdict::reject("missing_signature", "the issuer must sign a redemption");
      }
    }
    return Verdict::accept();
  }
  return Verdict::reject("unknown_command", "unknown token command '" + cmd.type + "'");
}

}  // namespace ccal::contracts
