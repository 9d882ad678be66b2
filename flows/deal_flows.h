#pragma once
// The cooperative economy's deal flows (issue 7), built on the built-in
// flows (collectSignatures, finality: flows/builtin_flows.h) and the
// contracts of contracts/. Every flow's result is the 32-byte id of the
// transaction it finalised.
//
//  token.issue        the issuer (this node) issues tokens to a holder.
//  token.move         this node pays a holder: the vault's fungible selection
//                     (soft-locked for the flow, released at its end), change
//                     back to this node.
//  token.redeem       this node returns tokens to their issuer, who signs
//                     (check: it issued them, the initiator owned them).
//  member.issue       this cooperative issues a credential to a member.
//  member.revoke      this cooperative revokes its credentials of a member.
//  receivable.issue   this seller invoices a buyer: registers the invoice
//                     number (contracts/receivable.h), references the buyer's
//                     credential, the buyer signs (check: it is the buyer,
//                     the initiator is the seller, the amount within policy).
//  receivable.finance this holder assigns an invoice to a financier: it shares
//                     the receivable's transaction with the financier (the
//                     subflow receivable.share: recorded as an observer, with
//                     its backchain, not notarised again), then the financier's responder checks the
//                     offer (it is the financier; the initiator holds the
//                     receivable; the advance within policy), pays the advance
//                     from its tokens and collects the holder's signature
//                     (check: the holder is paid an advance of the currency,
//                     the new holder is the initiator); the buyer, a
//                     participant, learns whom to pay.
//  receivable.settle  this buyer pays the receivable's holder in full (check:
//                     the holder is paid the amount, the initiator is the buyer).
//
// Arguments are key=value text, as `ccal flow start ... key=value` passes
// them: dealFlowSpecs() is the table of each flow's arguments, and
// parseDealArgs() validates them before a flow starts (unknown flow,
// unknown, repeated, missing or malformed argument: Errc::malformed naming
// it); the flow decodes and checks them again (encodeDealArgs /
// decodeDealArgs). A responder that refuses ends its flow with the reason,
// which the initiator's flow fails with.

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "flows/builtin_flows.h"
#include "flows/flow_runtime.h"
#include "flows/services.h"

namespace ccal::flows {

inline constexpr std::string_view token_issue_deal = "token.issue";
inline constexpr std::string_view token_move_deal = "token.move";
inline constexpr std::string_view token_redeem_deal = "token.redeem";
inline constexpr std::string_view member_issue_deal = "member.issue";
inline constexpr std::string_view member_revoke_deal = "member.revoke";
inline constexpr std::string_view receivable_issue_deal = "receivable.issue";
inline constexpr std::string_view receivable_finance_deal = "receivable.finance";
inline constexpr std::string_view receivable_settle_deal = "receivable.settle";
// The financier's side of receivable.finance.
inline constexpr std::string_view receivable_finance_responder = "receivable.finance.respond";

// --- arguments ----------------------------------------------------------------------------

enum class ArgType : uint8_t {
  party,     // a party's X.500 name, as the network map knows it
  amount,    // a positive integer of minor units (fits int64)
  currency,  // three capital letters
  text,      // 1..256 bytes, no line breaks
  date,      // YYYY-MM-DD (midnight UTC)
  days,      // an integer 1..36500
  parties,   // party names separated by ';'
};

struct ArgSpec {
  std::string_view name;
  ArgType type;
  bool required;
  std::string_view help;
};

struct DealFlowSpec {
  std::string_view flow;
  std::string_view summary;
  std::vector<ArgSpec> args;
};

using DealArgs = std::map<std::string, std::string, std::less<>>;

inline constexpr size_t deal_arg_bytes_max = 256;

// Every deal flow and its arguments (for the CLI's help and validation).
const std::vector<DealFlowSpec>& dealFlowSpecs();
const DealFlowSpec* findDealFlow(std::string_view flow);
// Validates `key_values` ("key=value" each) against the flow's spec.
Result<DealArgs> parseDealArgs(std::string_view flow, const std::vector<std::string>& key_values);
// The flow's argument bytes: "key=value" lines in key order.
Bytes encodeDealArgs(const DealArgs& args);
Result<DealArgs> decodeDealArgs(std::string_view flow, ByteView bytes);
// Typed readers of validated arguments.
int64_t argAmount(const DealArgs& args, std::string_view name);
std::vector<std::string> argParties(const DealArgs& args, std::string_view name);
// Microseconds since the epoch of midnight UTC of a YYYY-MM-DD date.
Result<int64_t> parseDateMicros(std::string_view date);

// A list of states as a journaled call's outcome (schema dealflows.StateList),
// for the deal, letter-of-credit and loan flows' vault reads.
Bytes encodeStates(const std::vector<StateAndRef>& states);
Result<std::vector<StateAndRef>> decodeStates(ByteView bytes);
// Releases every soft lock the flow holds (a journaled call, not blocking the executor).
Flow<bool> releaseLocks(FlowContext& ctx, const FlowServices& svc);

// --- policy and registration ------------------------------------------------------------

// What this node agrees to, applied by its responders' business checks.
struct DealPolicy {
  // A buyer acknowledges invoices up to this amount (minor units).
  int64_t invoice_amount_max_minor = 1'000'000'000'000;
  // A financier advances at most this percentage of an invoice's amount.
  int64_t finance_advance_percent_max = 95;
  // A holder sells an invoice for at least this percentage of its amount.
  int64_t finance_advance_percent_min = 50;
};

struct DealConfig {
  // The notary new states are created under (issues); empty: the flows
  // that need one take the `notary` argument.
  std::string notary;
  DealPolicy policy;
  int64_t time_window_micros = 10 * 60'000'000LL;  // receivable.issue's window after now
  int64_t clock_skew_micros_max = 60'000'000;      // ... and before now
};

// --- building blocks of the deal, letter-of-credit and loan flows -----------------------

// A flow's arguments decoded and checked again (the flow fails with the error).
DealArgs dealArgsOf(std::string_view flow, const Bytes& bytes);
// The party `name` from the network map; the flow fails naming argument `arg`.
Party partyNamed(const FlowServices& svc, const std::string& name, std::string_view arg);
// The notary argument `notary`, or the node's configured one.
Party dealNotary(const FlowServices& svc, const DealConfig& config, const DealArgs& args);
Bytes idBytes(const SecureHash& id);
// Unconsumed states matching `criteria` (the first page of at most 200), as the
// journaled call `call` (its name is part of the journal: keep it stable).
Flow<std::vector<StateAndRef>> queryStates(FlowContext& ctx, const FlowServices& svc, std::string call,
                                           vault::Criteria criteria);
// Salts and builds `b`, collects the signatures (`check`: the responders'
// business check), notarises and records it, sends it to the participants,
// the rules' observers and `observers`.
Flow<SignedTransaction> signAndFinalise(FlowContext& ctx, const FlowServices& svc, TransactionBuilder b,
                                        std::string check, std::vector<std::string> observers);
// Token outputs paying `amount` of the selected tokens to `payee`, the rest
// back to `payer`, per issuer in the order first selected (each (currency,
// issuer) conserved). The selection must cover `amount`.
std::vector<TransactionState> payOutputs(const std::vector<StateAndRef>& selected, const Key& payer,
                                         const Key& payee, const std::string& currency, int64_t amount,
                                         const Party& notary);
// Runs `body` and releases this flow's soft locks whatever its outcome.
Flow<Bytes> releasingLocks(FlowContext& ctx, const FlowServices& svc, Flow<Bytes> body);
// ... but a flow killed or timed out never runs its own code again: the
// runtime's `ended` callback (FlowRuntimeConfig) releases what its id holds
// once its end is durable — this one, on the vault's writer (a failure is
// logged; the next start releases it) — and at start, once the runtime has
// resumed its flows, releaseLocksOfEndedFlows frees the locks of every holder
// not running (a node stopped between a flow's end and the release).
std::function<void(const FlowId&)> lockReleaser(vault::Vault& vault,
                                                std::function<void(std::string_view)> log);
Result<uint64_t> releaseLocksOfEndedFlows(const FlowRuntime& runtime, vault::Vault& vault);

// For the responders' business checks:
bool holdsKey(const FlowServices& svc, const Key& k);  // a key this node signs with
Status refusal(const std::string& why);               // Errc::forbidden "refused: why"
// The owning key of the initiator named `initiator` (not_found if unknown).
Result<Key> initiatorKey(const FlowServices& svc, const std::string& initiator);
// The one state of `type` among `states`, decoded; none if absent, repeated or undecodable.
template <class T, class DecodeFn>
std::optional<T> onlyOf(const std::vector<const TransactionState*>& states, std::string_view type,
                        DecodeFn decode) {
  std::optional<T> out;
  for (const auto* s : states) {
    if (s->stateType != type) continue;
    if (out) return std::nullopt;
    auto v = decode(s->data);
    if (!v) return std::nullopt;
    out = *v;
  }
  return out;
}

// Adds the business checks named after the deal flows (token.redeem,
// receivable.issue, receivable.finance, receivable.settle) to `svc.checks`,
// which SignTransaction looks up by name when a sign request arrives. Call
// it while filling the node's FlowServices; `svc` must outlive the runtime.
void addDealChecks(FlowServices& svc, const DealPolicy& policy = {});

// Registers the deal flows and the finance responder. The built-in flows
// must be registered too (registerBuiltinFlows). `services` must outlive
// the runtime.
Status registerDealFlows(FlowRuntime& runtime, const FlowServices& services, DealConfig config = {});

}  // namespace ccal::flows
