#include "ledger/contract.h"

namespace ccal {

namespace {

Status checkNotary(const WireTransaction& tx, const TransactionState& state, const StateRef& ref,
                   const char* role) {
  // A transaction without a notary has no inputs or references (see WireTransaction).
  CCAL_ASSERT(tx.notary().has_value());
  if (!(state.notary == *tx.notary())) {
    return makeError(Errc::invalid_transaction,
                     std::string(role) + " " + ref.toString() + " is under notary '" +
                         state.notary.name + "', not the transaction's notary '" +
                         tx.notary()->name + "'");
  }
  return {};
}

}  // namespace

Result<LedgerTransaction> LedgerTransaction::resolve(const WireTransaction& tx,
                                                     std::vector<TransactionState> input_states,
                                                     std::vector<TransactionState> reference_states) {
  if (input_states.size() != tx.inputs().size() ||
      reference_states.size() != tx.references().size()) {
    return makeError(Errc::invalid_transaction, "resolved state counts do not match transaction " +
                                                    tx.id().hex());
  }
  LedgerTransaction ltx;
  ltx.id_ = tx.id();
  for (size_t i = 0; i < input_states.size(); ++i) {
    CCAL_TRY(checkNotary(tx, input_states[i], tx.inputs()[i], "input"));
    ltx.inputs_.push_back({std::move(input_states[i]), tx.inputs()[i]});
  }
  for (size_t i = 0; i < reference_states.size(); ++i) {
    CCAL_TRY(checkNotary(tx, reference_states[i], tx.references()[i], "reference"));
    ltx.references_.push_back({std::move(reference_states[i]), tx.references()[i]});
  }
  ltx.outputs_ = tx.outputs();
  ltx.commands_ = tx.commands();
  ltx.attachments_ = tx.attachments();
  ltx.notary_ = tx.notary();
  ltx.time_window_ = tx.timeWindow();
  return ltx;
}

Result<LedgerTransaction> LedgerTransaction::resolve(
    const WireTransaction& tx,
    const std::function<Result<TransactionState>(const StateRef&)>& lookup) {
  std::vector<TransactionState> inputs, references;
  for (const auto& ref : tx.inputs()) {
    auto s = lookup(ref);
    if (!s) return makeError(s.error().code, "input " + ref.toString() + ": " + s.error().message);
    inputs.push_back(std::move(s).value());
  }
  for (const auto& ref : tx.references()) {
    auto s = lookup(ref);
    if (!s) return makeError(s.error().code, "reference " + ref.toString() + ": " + s.error().message);
    references.push_back(std::move(s).value());
  }
  return resolve(tx, std::move(inputs), std::move(references));
}

std::vector<const TransactionState*> LedgerTransaction::inputsOf(std::string_view contract) const {
  std::vector<const TransactionState*> out;
  for (const auto& in : inputs_)
    if (in.state.contract == contract) out.push_back(&in.state);
  return out;
}

std::vector<const TransactionState*> LedgerTransaction::outputsOf(std::string_view contract) const {
  std::vector<const TransactionState*> out;
  for (const auto& s : outputs_)
    if (s.contract == contract) out.push_back(&s);
  return out;
}

std::vector<const Command*> LedgerTransaction::commandsOf(std::string_view prefix) const {
  std::vector<const Command*> out;
  for (const auto& c : commands_)
    if (std::string_view(c.type).starts_with(prefix)) out.push_back(&c);
  return out;
}

SecureHash Contract::codeIdentity(std::string_view name, uint32_t version) {
  Bytes preimage;
  append(preimage, asBytes("CCAL contract code identity"));
  appendU32(preimage, static_cast<uint32_t>(name.size()));
  append(preimage, asBytes(name));
  appendU32(preimage, version);
  return SecureHash::of(preimage);
}

SecureHash Contract::codeIdentity() const { return codeIdentity(name(), version()); }

void ContractRegistry::add(std::unique_ptr<Contract> contract) {
  CCAL_ASSERT(contract != nullptr);
  std::string name(contract->name());
  CCAL_ASSERT_MSG(!contracts_.contains(name), "a contract name is registered twice");
  for (auto& schema : contract->stateSchemas()) {
    CCAL_ASSERT(schema != nullptr);
    std::string type(schema->stateType());
    CCAL_ASSERT_MSG(!schemas_.contains(type), "a state type is declared by two contracts");
    schemas_.emplace(std::move(type), std::move(schema));
  }
  contracts_.emplace(std::move(name), std::move(contract));
}

const StateSchema* ContractRegistry::schemaFor(std::string_view state_type) const {
  auto it = schemas_.find(state_type);
  return it == schemas_.end() ? nullptr : it->second.get();
}

const Contract* ContractRegistry::find(std::string_view name) const {
  auto it = contracts_.find(name);
  return it == contracts_.end() ? nullptr : it->second.get();
}

std::vector<std::string> ContractRegistry::names() const {
  std::vector<std::string> out;
  for (const auto& [name, _] : contracts_) out.push_back(name);
  return out;
}

Status ContractRegistry::verify(const LedgerTransaction& tx, const VerificationPolicy& policy) const {
  std::set<std::string, std::less<>> to_run;
  auto check = [&](const TransactionState& state, const std::string& where,
                   bool is_output) -> Status {
    const Contract* contract = find(state.contract);
    if (contract == nullptr) {
      return makeError(Errc::unknown_contract,
                       where + " names contract '" + state.contract + "', which is not installed");
    }
    to_run.insert(state.contract);
    if (state.constraint.alwaysAccept) {
      if (!policy.allow_always_accept) {
        return makeError(Errc::constraint_rejected,
                         where + " has an always-accept constraint, which this network forbids");
      }
      return {};
    }
    // New states must carry the running code's identity; spent states may
    // carry any identity the running code accepts (earlier compatible versions).
    if (is_output) {
      if (state.constraint.codeHash != contract->codeIdentity()) {
        return makeError(Errc::constraint_rejected,
                         where + " is constrained to code " + state.constraint.codeHash.shortHex() +
                             ", not contract '" + state.contract + "' version " +
                             std::to_string(contract->version()));
      }
      return {};
    }
    for (const auto& accepted : contract->acceptedIdentities()) {
      if (accepted == state.constraint.codeHash) return {};
    }
    return makeError(Errc::constraint_rejected,
                     where + " was created under code " + state.constraint.codeHash.shortHex() +
                         ", which contract '" + state.contract + "' version " +
                         std::to_string(contract->version()) + " does not accept");
  };
  for (const auto& in : tx.inputs()) CCAL_TRY(check(in.state, "input " + in.ref.toString(), false));
  for (size_t i = 0; i < tx.outputs().size(); ++i) {
    CCAL_TRY(check(tx.outputs()[i], "output " + std::to_string(i), true));
  }
  for (const auto& name : to_run) {
    Verdict verdict = find(name)->verify(tx);
    if (!verdict.accepted) {
      return makeError(Errc::contract_rejected,
                       "contract '" + name + "' rejected transaction " + tx.id().hex() + ": [" +
                           verdict.code + "] " + verdict.message);
    }
  }
  return {};
}

}  // namespace ccal
