#pragma once
// LedgerTransaction (a transaction with its inputs resolved to states) and
// the Contract interface: a pure, deterministic verify() that accepts or
// rejects with a code and a message. Same inputs, same verdict, on every node.

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "ledger/state_schema.h"
#include "ledger/transaction.h"

namespace ccal {

struct StateAndRef {
  TransactionState state;
  StateRef ref;

  bool operator==(const StateAndRef&) const = default;
};

class LedgerTransaction {
 public:
  // Pairs each input and reference of `tx` with its resolved state (in order).
  // Checks that the resolved states' notaries are the transaction's notary.
  static Result<LedgerTransaction> resolve(const WireTransaction& tx,
                                           std::vector<TransactionState> input_states,
                                           std::vector<TransactionState> reference_states);
  // Resolves through a lookup (a vault, a backchain) that returns each state.
  static Result<LedgerTransaction> resolve(
      const WireTransaction& tx,
      const std::function<Result<TransactionState>(const StateRef&)>& lookup);

  const SecureHash& id() const { return id_; }
  const std::vector<StateAndRef>& inputs() const { return inputs_; }
  const std::vector<StateAndRef>& references() const { return references_; }
  const std::vector<TransactionState>& outputs() const { return outputs_; }
  const std::vector<Command>& commands() const { return commands_; }
  const std::vector<SecureHash>& attachments() const { return attachments_; }
  const std::optional<Party>& notary() const { return notary_; }
  const std::optional<TimeWindow>& timeWindow() const { return time_window_; }

  // Helpers for contracts: states and commands of one contract or type.
  std::vector<const TransactionState*> inputsOf(std::string_view contract) const;
  std::vector<const TransactionState*> outputsOf(std::string_view contract) const;
  // Commands whose type starts with `prefix` (e.g. "ccal.Cash.").
  std::vector<const Command*> commandsOf(std::string_view prefix) const;

 private:
  LedgerTransaction() = default;

  SecureHash id_;
  std::vector<StateAndRef> inputs_;
  std::vector<StateAndRef> references_;
  std::vector<TransactionState> outputs_;
  std::vector<Command> commands_;
  std::vector<SecureHash> attachments_;
  std::optional<Party> notary_;
  std::optional<TimeWindow> time_window_;
};

// A contract's answer: accept, or reject with a contract-specific code
// (e.g. "amount_not_conserved") and a message a user can act on.
struct Verdict {
  bool accepted = true;
  std::string code;
  std::string message;

  static Verdict accept() { return {}; }
  static Verdict reject(std::string code, std::string message) {
    return {false, std::move(code), std::move(message)};
  }
};

class Contract {
 public:
  virtual ~Contract() = default;
  // The name states and transactions refer to, e.g. "ccal.Cash".
  virtual std::string_view name() const = 0;
  // Bumped whenever the verification logic changes.
  virtual uint32_t version() const = 0;
  // Pure and deterministic: no clock, no I/O, no randomness, no globals.
  virtual Verdict verify(const LedgerTransaction& tx) const = 0;

  // The hash of this contract's identity and version: what new states are
  // constrained to.
  SecureHash codeIdentity() const;
  static SecureHash codeIdentity(std::string_view name, uint32_t version);
  // The constraint hashes this code accepts for states it spends: its own,
  // plus earlier versions it declares compatible.
  virtual std::vector<SecureHash> acceptedIdentities() const { return {codeIdentity()}; }
  // The state types this contract governs, with their queryable fields.
  virtual std::vector<std::shared_ptr<const StateSchema>> stateSchemas() const { return {}; }
  // The command types its transactions use (e.g. "ccal.receivable.Finance"), declared so
  // that configuration naming them (observer rules) can be checked; empty: not declared.
  virtual std::vector<std::string_view> commandTypes() const { return {}; }
};

struct VerificationPolicy {
  // Networks forbid always-accept constraints; tests may allow them.
  bool allow_always_accept = false;
};

class ContractRegistry {
 public:
  // Registers a contract; asserts the name is not taken (a start-up bug).
  void add(std::unique_ptr<Contract> contract);
  const Contract* find(std::string_view name) const;
  std::vector<std::string> names() const;
  // The schema declared for a state type by any registered contract, or null.
  const StateSchema* schemaFor(std::string_view state_type) const;

  // Verifies a resolved transaction: every state's contract is registered,
  // every state's constraint accepted by the code that runs, and every
  // contract named by an input or output accepts. Errors: unknown_contract,
  // constraint_rejected, contract_rejected (naming the contract and its code).
  Status verify(const LedgerTransaction& tx, const VerificationPolicy& policy = {}) const;

 private:
  std::map<std::string, std::unique_ptr<Contract>, std::less<>> contracts_;
  std::map<std::string, std::shared_ptr<const StateSchema>, std::less<>> schemas_;
};

}  // namespace ccal
