#pragma once
// ccal.token: a bank's tokenised deposit. Fungible amounts by (currency,
// issuer) in exact integer minor units (int64, overflow checked; no floating
// point). Commands (ccal.token.Issue / Move / Redeem), at most one per
// transaction:
//  - Issue: no token inputs; every output issued by one issuer in one
//    currency, positive; the issuer signs.
//  - Move: token inputs; per (currency, issuer) the outputs sum to the
//    inputs; every input's owner signs.
//  - Redeem: token inputs of one (currency, issuer); the outputs (change)
//    sum to less than the inputs; every input's owner and the issuer sign.
// Rejection codes: one_command, bad_state, bad_currency, non_positive,
// overflow, issue_has_inputs, no_inputs, mixed_tokens, not_conserved,
// nothing_redeemed, missing_signature, wrong_participants (a token output's
// participants are its owner alone, as tokenState() makes them).
//
// Declared fields of ccal.token.TokenState: amount (int64), currency (text),
// issuer (hash), owner (hash); fungible (currency, issuer, amount), so the
// vault's selectFungible works on it.

#include <map>
#include <string>
#include <string_view>
#include <utility>

#include "ledger/contract.h"

namespace ccal::contracts {

inline constexpr std::string_view token_contract = "ccal.token";
inline constexpr std::string_view token_state_type = "ccal.token.TokenState";
inline constexpr std::string_view token_issue_command = "ccal.token.Issue";
inline constexpr std::string_view token_move_command = "ccal.token.Move";
inline constexpr std::string_view token_redeem_command = "ccal.token.Redeem";

struct Token {
  Key owner, issuer;
  std::string currency;
  int64_t amountMinor = 0;
  bool operator==(const Token&) const = default;
};

Bytes encodeToken(const Token& t);
Result<Token> decodeToken(ByteView bytes);
TransactionState tokenState(const Party& notary, const Token& t);

// Three capital letters A-Z.
bool validCurrency(std::string_view currency);
// a + b, or nullopt on overflow.
std::optional<int64_t> addChecked(int64_t a, int64_t b);

// Per (currency, issuer key hash) sums of the given token states, or the
// rejection (bad_state, overflow) of the first that fails.
using TokenTotals = std::map<std::pair<std::string, SecureHash>, int64_t>;
Verdict sumTokens(const std::vector<const TransactionState*>& states, TokenTotals& totals);
// The net amount of `currency` that `owner` receives in `tx`'s token
// outputs minus what it spends in its token inputs (any issuer); nullopt
// when a state does not decode or a sum overflows.
std::optional<int64_t> netTokensTo(const LedgerTransaction& tx, const Key& owner,
                                   std::string_view currency);

bool signedBy(const Command& command, const Key& key);

class TokenSchema final : public StateSchema {
 public:
  std::string_view stateType() const override { return token_state_type; }
  std::vector<FieldDecl> fields() const override;
  Result<StateView> view(const TransactionState& state) const override;
};

class TokenContract final : public Contract {
 public:
  std::string_view name() const override { return token_contract; }
  uint32_t version() const override { return 1; }
  Verdict verify(const LedgerTransaction& tx) const override;
  std::vector<std::shared_ptr<const StateSchema>> stateSchemas() const override {
    return {std::make_shared<TokenSchema>()};
  }
  std::vector<std::string_view> commandTypes() const override {
    return {token_issue_command, token_move_command, token_redeem_command};
  }
};

}  // namespace ccal::contracts
