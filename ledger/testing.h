#pragma once
// Test helpers: deterministic keys, parties and states, and a small contract,
// so that a test reads like the deal it checks. Used by tests only.

#include <string>

#include "ledger/contract.h"
#include "ledger/crypto.h"
#include "ledger/signed_transaction.h"
#include "ledger/transaction.h"

namespace ccal::testing {

// A key pair from a seed of 32 copies of `n`: the same key in every run.
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
