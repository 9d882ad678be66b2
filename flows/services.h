#pragma once
// What the built-in flows (flows/builtin_flows.h) need of their node: its
// identity and signing keys, the vault, the contracts, a party directory,
// a notary gateway and the network's observer rules. The node fills one
// FlowServices and hands it to registerBuiltinFlows(); flows/ depends on
// neither notary/ nor node/, which implement NotaryGateway and provide the
// rules.
//
// Flows reach the vault and the notary only through FlowContext::call (a
// journaled call), so a replay after a crash sees what the live run saw and
// does not notarise or record a second time; the gateway and the vault's
// record must therefore be idempotent (the vault's record is; a notary
// answers a transaction it has notarised with the same signatures).

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "ledger/contract.h"
#include "ledger/crypto.h"
#include "ledger/filtered_transaction.h"
#include "ledger/signed_transaction.h"
#include "vault/vault.h"

namespace ccal::flows {

// Bounds of backchain resolution, per resolution.
struct BackchainLimits {
  uint32_t transactions_per_batch_max = 64;     // ids in one fetch request
  uint32_t backchain_depth_max = 1'000;         // dependency levels below the transaction
  uint32_t backchain_transactions_max = 10'000;  // transactions fetched in all
};

// --- the notary ----------------------------------------------------------------------------

struct NotaryConflictInfo {
  StateRef ref;
  SecureHash consumedBy;  // the transaction that consumed it (a BFT notary names the SHA-256 of its id)
};

// A notary's answer: signatures over the transaction id that fulfil the
// notary's key, or the conflicts (no signatures).
struct NotaryAnswer {
  std::vector<DigitalSignature> signatures;
  std::vector<NotaryConflictInfo> conflicts;
  bool conflict() const { return !conflicts.empty(); }
};

// What a notarisation sends: the transaction filtered to what a
// non-validating notary checks, or the whole transaction with its inputs'
// transactions for a validating one.
struct NotaryRequest {
  SecureHash txId;
  std::optional<FilteredTransaction> filtered;   // non-validating
  std::optional<SignedTransaction> full;         // validating
  std::vector<SignedTransaction> dependencies;   // validating: the inputs' transactions
};

// Implemented by the node over notary::NotaryClient (and by tests over a
// simulated uniqueness service).
class NotaryGateway {
 public:
  using Done = std::function<void(Result<NotaryAnswer>)>;
  virtual ~NotaryGateway() = default;
  // Whether `notary` is a validating cluster; not_found when unknown.
  virtual Result<bool> validating(const Party& notary) const = 0;
  // Notarises; `done` runs exactly once, on any thread, with the answer or
  // an error (timeout, refusal). Must be idempotent: asking again for the
  // same transaction gives the same answer.
  virtual void notarise(const Party& notary, NotaryRequest request, Done done) = 0;
};

// --- observers --------------------------------------------------------------------------

// Which observers must receive which transactions (the network parameters'
// observer rules, node::ObserverRule). `observer` receives a transaction when
//  - all_transactions, or
//  - one of `parties` (X.500) is among its participants, or
//  - it has a state (input or output) of one of `contracts`, and, when the
//    rule has them, passes its filters:
//      * `commands`: the transaction has a command of one of these types
//        (the contracts' own command names, e.g. "ccal.receivable.Finance");
//      * `amount_at_least`: the amount it moves for the rule's contracts is
//        at least this. That amount is the larger of two totals of the
//        declared int64 field `amount_field` (StateSchema::fields) over the
//        states of the rule's contracts whose schema declares it: the total
//        over its inputs and the total over its outputs (sums saturate at
//        INT64_MAX). A transaction with no such state moves nothing (0); a
//        state whose fields cannot be read counts as INT64_MAX (observed
//        rather than missed). Deterministic: every node computes the same.
struct ObserverRule {
  ObserverRule() = default;
  // A rule without filters (`{observer, contracts, parties, all}` reads as before them).
  ObserverRule(std::string observer_name, std::vector<std::string> contract_names,
               std::vector<std::string> party_names = {}, bool all = false)
      : observer(std::move(observer_name)),
        contracts(std::move(contract_names)),
        parties(std::move(party_names)),
        all_transactions(all) {}

  std::string observer;
  std::vector<std::string> contracts;
  std::vector<std::string> parties;
  bool all_transactions = false;
  std::vector<std::string> commands;       // empty: any command
  std::optional<int64_t> amount_at_least;  // none: any amount
  std::string amount_field = "amount";     // with amount_at_least
};

// An observer a transaction must go to, and why: the first rule naming it
// that matches, described ("the observer rule for contract 'ccal.lc'",
// "... for participant 'O=...'", "... for all transactions").
struct RequiredObserver {
  std::string observer;
  std::string rule;
};

// The observers the rules require for `tx`, one entry each, sorted by name
// (the arguments as for observersFor below, which lists only the names).
std::vector<RequiredObserver> requiredObservers(
    const std::vector<ObserverRule>& rules, const LedgerTransaction& tx,
    const ContractRegistry& contracts,
    const std::function<std::optional<std::string>(const Key&)>& partyName);

// The observers `rules` name for `tx` (resolved: its inputs' states known);
// sorted, without duplicates. `contracts` gives the states' declared fields
// (for amount_at_least); `partyName` names a participant key's party
// (nullopt when unknown: it matches no `parties` entry).
std::vector<std::string> observersFor(
    const std::vector<ObserverRule>& rules, const LedgerTransaction& tx,
    const ContractRegistry& contracts,
    const std::function<std::optional<std::string>(const Key&)>& partyName);

// The amount `tx` moves for `contracts` by `field` (see ObserverRule).
int64_t observedAmount(const LedgerTransaction& tx, const ContractRegistry& registry,
                       const std::vector<std::string>& contracts, const std::string& field);

// --- the services ------------------------------------------------------------------------

// A deal's business check, registered by name: SignTransaction applies the
// one the initiator names (CollectSignatures' `check`) to the resolved,
// contract-verified transaction before signing; an error refuses to sign.
// An unknown name is refused too. `initiator` is the asking node's name.
using BusinessCheck =
    std::function<Status(const LedgerTransaction& tx, const std::string& initiator)>;

// What a deal lets an owner this node signs for pay: SignTransaction refuses
// a transaction that leaves any such owner (one of this node's keys, or a
// composite key with one of them as a leaf — a fund) with less of a currency
// than it had, beyond what the deal's allowance (registered under the check's
// name) returns for that owner and currency. Most deals allow nothing: the
// payer builds the transaction and the others only receive.
struct TokenOutflow {
  Key owner;
  std::string currency;
  int64_t amountMinor = 0;
};
using OutflowAllowance = std::function<std::vector<TokenOutflow>(const LedgerTransaction& tx)>;

// Runs independent, pure jobs (backchain verification) on several threads.
// forEach returns once fn(0) .. fn(count - 1) have all run; the calling
// thread takes part. fn must not throw and must write only its own index's
// share of any shared state. Results therefore do not depend on how the
// jobs were spread.
class Parallel {
 public:
  virtual ~Parallel() = default;
  virtual void forEach(size_t count, const std::function<void(size_t)>& fn) = 0;
};

struct FlowServices {
  Party identity;             // this node's legal identity (its name is the runtime's self)
  std::vector<KeyPair> keys;  // signing keys (the identity's among them)
  vault::Vault* vault = nullptr;
  const ContractRegistry* contracts = nullptr;
  VerificationPolicy policy;
  // The party directory (the network map).
  std::function<std::optional<Party>(std::string_view name)> partyByName;
  std::function<std::optional<Party>(const Key& key)> partyByKey;
  NotaryGateway* notary = nullptr;
  std::vector<ObserverRule> observer_rules;
  std::map<std::string, BusinessCheck, std::less<>> checks;
  std::map<std::string, OutflowAllowance, std::less<>> outflows;  // by check name
  BackchainLimits limits;
  // Where independent backchain transactions are verified at once; null:
  // one after another on the flow's thread (the simulator's choice).
  Parallel* parallel = nullptr;

  std::vector<PublicKey> publicKeys() const;
  // Our keys among `keys` (single keys, or leaves of composite ones).
  std::vector<const KeyPair*> keysFor(const std::vector<Key>& keys) const;
};

}  // namespace ccal::flows
