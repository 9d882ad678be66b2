#include "flows/services.h"

#include <algorithm>
#include <set>

namespace ccal::flows {

std::vector<std::string> observersFor(const std::vector<ObserverRule>& rules,
                                      const std::vector<std::string>& contracts,
                                      const std::vector<std::string>& participants) {
  std::set<std::string> out;
  auto has = [](const std::vector<std::string>& list, const std::string& x) {
    return std::find(list.begin(), list.end(), x) != list.end();
  };
  for (const ObserverRule& rule : rules) {
    bool matches = rule.all_transactions;
    for (const std::string& c : rule.contracts) matches = matches || has(contracts, c);
    for (const std::string& p : rule.parties) matches = matches || has(participants, p);
    if (matches) out.insert(rule.observer);
  }
  return {out.begin(), out.end()};
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
