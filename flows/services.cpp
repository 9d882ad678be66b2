#include "flows/services.h"

#include <algorithm>
#include <cstdint>
#include <map>
#include <set>
#include <variant>

namespace ccal::flows {

namespace {

bool has(const std::vector<std::string>& list, std::string_view x) {
  return std::find(list.begin(), list.end(), x) != list.end();
}

int64_t saturatedAdd(int64_t a, int64_t b) {
  int64_t out = 0;
  if (__builtin_add_overflow(a, b, &out)) return b < 0 ? INT64_MIN : INT64_MAX;
  return out;
}

}  // namespace

int64_t observedAmount(const LedgerTransaction& tx, const ContractRegistry& registry,
                       const std::vector<std::string>& contracts, const std::string& field) {
  // The field's value in one state; nullopt when its schema does not declare it as int64.
  auto valueOf = [&](const TransactionState& state) -> std::optional<int64_t> {
    if (!has(contracts, state.contract)) return std::nullopt;
    const StateSchema* schema = registry.schemaFor(state.stateType);
    if (schema == nullptr) return std::nullopt;
    const auto decls = schema->fields();
    const bool declared = std::any_of(decls.begin(), decls.end(), [&](const FieldDecl& d) {
      return d.name == field && d.type == FieldType::int64;
    });
    if (!declared) return std::nullopt;
    auto view = schema->view(state);
    if (!view) return INT64_MAX;
    for (const auto& [name, value] : view->fields) {
      if (name == field && std::holds_alternative<int64_t>(value)) return std::get<int64_t>(value);
    }
    return INT64_MAX;
  };
  int64_t in = 0, out = 0;
  for (const StateAndRef& s : tx.inputs()) {
    if (auto v = valueOf(s.state)) in = saturatedAdd(in, *v);
  }
  for (const TransactionState& s : tx.outputs()) {
    if (auto v = valueOf(s)) out = saturatedAdd(out, *v);
  }
  return std::max(in, out);
}

std::vector<RequiredObserver> requiredObservers(
    const std::vector<ObserverRule>& rules, const LedgerTransaction& tx,
    const ContractRegistry& registry,
    const std::function<std::optional<std::string>(const Key&)>& partyName) {
  std::set<std::string> contracts, participants, commands;
  auto note = [&](const TransactionState& state) {
    contracts.insert(state.contract);
    for (const Key& k : state.participants) {
      auto name = partyName ? partyName(k) : std::nullopt;
      if (name) participants.insert(*name);
    }
  };
  for (const StateAndRef& in : tx.inputs()) note(in.state);
  for (const TransactionState& out : tx.outputs()) note(out);
  for (const Command& c : tx.commands()) commands.insert(c.type);
  // Why `rule` matches, or nullopt.
  auto why = [&](const ObserverRule& rule) -> std::optional<std::string> {
    if (rule.all_transactions) return "the observer rule for all transactions";
    for (const std::string& p : rule.parties) {
      if (participants.count(p)) return "the observer rule for participant '" + p + "'";
    }
    const auto c = std::find_if(rule.contracts.begin(), rule.contracts.end(),
                                [&](const std::string& k) { return contracts.count(k) > 0; });
    if (c == rule.contracts.end()) return std::nullopt;
    std::string text = "the observer rule for contract '" + *c + "'";
    if (!rule.commands.empty()) {
      const auto cmd = std::find_if(rule.commands.begin(), rule.commands.end(),
                                    [&](const std::string& k) { return commands.count(k) > 0; });
      if (cmd == rule.commands.end()) return std::nullopt;
      text += ", command '" + *cmd + "'";
    }
    if (rule.amount_at_least) {
      const int64_t amount = observedAmount(tx, registry, rule.contracts, rule.amount_field);
      if (amount < *rule.amount_at_least) return std::nullopt;
      text += ", " + rule.amount_field + " " + std::to_string(amount) + " at least " +
              std::to_string(*rule.amount_at_least);
    }
    return text;
  };
  std::map<std::string, std::string> out;
  for (const ObserverRule& rule : rules) {
    if (out.count(rule.observer)) continue;
    if (auto w = why(rule)) out.emplace(rule.observer, std::move(*w));
  }
  std::vector<RequiredObserver> list;
  for (auto& entry : out) list.push_back({entry.first, std::move(entry.second)});
  return list;
}

std::vector<std::string> observersFor(
    const std::vector<ObserverRule>& rules, const LedgerTransaction& tx,
    const ContractRegistry& registry,
    const std::function<std::optional<std::string>(const Key&)>& partyName) {
  std::vector<std::string> out;
  for (RequiredObserver& r : requiredObservers(rules, tx, registry, partyName)) {
    out.push_back(std::move(r.observer));
  }
  return out;
}

std::vector<PublicKey> FlowServices::publicKeys() const {
  std::vector<PublicKey> out;
  for (const KeyPair& k : keys) out.push_back(k.publicKey());
  return out;
}

std::vector<const KeyPair*> FlowServices::keysFor(const std::vector<Key>& wanted) const {
  std::vector<const KeyPair*> out;
  for (const KeyPair& k : keys) {
    const bool needed = std::any_of(wanted.begin(), wanted.end(),
                                    [&](const Key& w) { return w.contains(k.publicKey()); });
    if (needed) out.push_back(&k);
  }
  return out;
}

}  // namespace ccal::flows
