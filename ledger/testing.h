#pragma once
// Test helpers: deterministic keys, parties and states, and a small contract,
// so that a test reads like the deal it checks. Used by tests only.

#include <algorithm>
#include <map>
#include <string>

#include "ledger/contract.h"
#include "ledger/crypto.h"
#include "ledger/signed_transaction.h"
#include "ledger/transaction.h"

namespace ccal::testing {

// A key pair from a seed of 32 copies of `n`: the same key in every run.
// `bytes` with the first byte of the first occurrence of `marker` made a NUL:
// how tests plant a NUL inside an encoded text, which no encoder writes.
inline Bytes withNulAt(Bytes bytes, std::string_view marker) {
  auto at = std::search(bytes.begin(), bytes.end(), marker.begin(), marker.end());
  CCAL_ASSERT_MSG(at != bytes.end(), "the marker is not in the bytes");
  *at = 0;
  return bytes;
}

inline KeyPair testKey(uint8_t n) {
  Bytes seed(KeyPair::seed_bytes, n);
  return KeyPair::fromSeed(seed).value();
}

inline Party testParty(const std::string& org, const KeyPair& key) {
  return Party{"O=" + org + ", L=Haikou, C=CN", Key(key.publicKey())};
}

// "ccal.test.Dummy": states carry an opaque value; Issue needs no inputs and
// the value "forbidden" is refused; Move keeps the number of states.
class DummyContract final : public Contract {
 public:
  static constexpr std::string_view contract_name = "ccal.test.Dummy";
  std::string_view name() const override { return contract_name; }
  uint32_t version() const override { return 1; }
  Verdict verify(const LedgerTransaction& tx) const override {
    auto issues = tx.commandsOf("ccal.test.Dummy.Issue");
    auto moves = tx.commandsOf("ccal.test.Dummy.Move");
    if (issues.size() + moves.size() != 1) {
      return Verdict::reject("one_command", "exactly one Dummy command is needed");
    }
    for (const auto* out : tx.outputsOf(contract_name)) {
      if (std::string(out->data.begin(), out->data.end()) == "forbidden") {
        return Verdict::reject("forbidden_value", "an output holds the forbidden value");
      }
    }
    if (!issues.empty() && !tx.inputsOf(contract_name).empty()) {
      return Verdict::reject("issue_has_inputs", "an issue consumes no states");
    }
    if (!moves.empty() && tx.inputsOf(contract_name).size() != tx.outputsOf(contract_name).size()) {
      return Verdict::reject("move_count", "a move keeps the number of states");
    }
    return Verdict::accept();
  }
};

inline TransactionState dummyState(const Party& notary, const std::vector<Key>& participants,
                                   const std::string& value) {
  TransactionState s;
  s.contract = std::string(DummyContract::contract_name);
  s.stateType = "ccal.test.DummyState";
  s.data = Bytes(value.begin(), value.end());
  s.participants = participants;
  s.notary = notary;
  s.constraint.codeHash = Contract::codeIdentity(DummyContract::contract_name, 1);
  return s;
}

inline Command dummyCommand(const std::string& verb, const std::vector<Key>& signers) {
  return Command{"ccal.test.Dummy." + verb, {}, signers};
}

}  // namespace ccal::testing

// --- a fungible, queryable token for vault tests and benchmarks ---------------

#include "ledger/state_schema.h"
#include "schemas/testing.capnp.h"

namespace ccal::testing {

struct TestToken {
  Key owner, issuer;
  int64_t amountMinor = 0;
  std::string currency;
  int64_t dueMicros = 0;
  std::string reference;
  SecureHash linearId;
};

inline constexpr std::string_view token_contract = "ccal.test.Token";
inline constexpr std::string_view token_state_type = "ccal.test.TokenState";

inline Bytes encodeToken(const TestToken& t) {
  return buildCanonical<schema::testing::TestToken>([&](auto b) {
    t.owner.write(b.initOwner());
    t.issuer.write(b.initIssuer());
    b.setAmountMinor(t.amountMinor);
    b.setCurrency(t.currency);
    b.setDueMicros(t.dueMicros);
    b.setReference(t.reference);
    b.setLinearId(kj::ArrayPtr<const kj::byte>(t.linearId.bytes().data(), 32));
  });
}

inline Result<TestToken> decodeToken(ByteView bytes) {
  return decodeMessage<schema::testing::TestToken>(
      bytes, "test token", Canonical::required, [](auto r) -> Result<TestToken> {
        auto owner = Key::read(r.getOwner());
        if (!owner) return owner.error();
        auto issuer = Key::read(r.getIssuer());
        if (!issuer) return issuer.error();
        auto id = SecureHash::fromBytes(asByteView(r.getLinearId()));
        if (!id) return id.error();
        std::string currency, reference;
        CCAL_TRY_ASSIGN(currency,
                        readText(r.getCurrency(), "test token currency", text_bounded_by_message));
        CCAL_TRY_ASSIGN(
            reference, readText(r.getReference(), "test token reference", text_bounded_by_message));
        return TestToken{*owner,
                         *issuer,
                         r.getAmountMinor(),
                         std::move(currency),
                         r.getDueMicros(),
                         std::move(reference),
                         *id};
      });
}

class TestTokenSchema final : public StateSchema {
 public:
  std::string_view stateType() const override { return token_state_type; }
  std::vector<FieldDecl> fields() const override {
    return {{"amount", FieldType::int64},
            {"currency", FieldType::text},
            {"due", FieldType::time},
            {"reference", FieldType::text},
            {"owner", FieldType::hash}};
  }
  Result<StateView> view(const TransactionState& state) const override {
    auto t = decodeToken(state.data);
    if (!t) return t.error();
    StateView v;
    v.linearId = t->linearId;
    v.fields = {{"amount", t->amountMinor},
                {"currency", t->currency},
                {"due", t->dueMicros},
                {"reference", t->reference},
                {"owner", t->owner.hash()}};
    v.fungible = FungibleAmount{t->currency, t->issuer.hash(), t->amountMinor};
    return v;
  }
};

// Issue creates tokens; Move conserves each currency's total.
class TestTokenContract final : public Contract {
 public:
  std::string_view name() const override { return token_contract; }
  uint32_t version() const override { return 1; }
  Verdict verify(const LedgerTransaction& tx) const override {
    std::map<std::string, int64_t> in, out;
    for (const auto* s : tx.inputsOf(token_contract)) {
      auto t = decodeToken(s->data);
      if (!t) return Verdict::reject("bad_state", t.error().message);
      in[t->currency] += t->amountMinor;
    }
    for (const auto* s : tx.outputsOf(token_contract)) {
      auto t = decodeToken(s->data);
      if (!t) return Verdict::reject("bad_state", t.error().message);
      if (t->amountMinor <= 0) return Verdict::reject("non_positive", "amounts are positive");
      out[t->currency] += t->amountMinor;
    }
    if (!tx.commandsOf("ccal.test.Token.Move").empty() && in != out) {
      return Verdict::reject("not_conserved", "a move conserves every currency's total");
    }
    return Verdict::accept();
  }
  std::vector<std::shared_ptr<const StateSchema>> stateSchemas() const override {
    return {std::make_shared<TestTokenSchema>()};
  }
};

inline TransactionState tokenState(const Party& notary, const TestToken& t) {
  TransactionState s;
  s.contract = std::string(token_contract);
  s.stateType = std::string(token_state_type);
  s.data = encodeToken(t);
  s.participants = {t.owner};
  s.notary = notary;
  s.constraint.codeHash = Contract::codeIdentity(token_contract, 1);
  return s;
}

}  // namespace ccal::testing
