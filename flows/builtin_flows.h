#pragma once
// The built-in flows: collect signatures / sign, backchain resolution,
// notarise, finality / receive finality. Written against FlowServices
// (flows/services.h); every vault read or write and every notarisation goes
// through FlowContext::call, so a flow replayed after a crash sees what it
// saw live and records or notarises nothing twice.
//
// Protocol (schemas/builtin_flows.capnp, one session per counterparty):
//  - CollectSignatures -> SignTransaction: the initiator sends a sign
//    request (the business check's name and the partly signed transaction);
//    the signer resolves its backchain over the same session (below),
//    verifies contracts and the signatures so far, applies the named check
//    and answers with its signatures over the id, by each of its keys the
//    transaction requires; the initiator verifies each one (by a key it
//    asked that party for, over this id).
//  - Backchain (ResolveTransactions on the receiver, served by the sender
//    on the session it sent the transaction on): the receiver asks for the
//    inputs' and references' transactions it does not have, in batches of
//    at most transactions_per_batch_max ids, then for theirs, breadth first,
//    at most backchain_depth_max levels and backchain_transactions_max
//    transactions; a peer sending a transaction not asked for, one that
//    does not decode, or one that fails its contracts or signatures (all
//    required, the notary's included) ends the flow naming it, and nothing
//    of the chain is recorded; otherwise the chain is recorded in dependency
//    order (only_relevant). The sender serves only transactions in the
//    backchain of the one it sent.
//  - Notarise: the filtered transaction for a non-validating notary (the
//    whole one with its inputs' transactions for a validating one) through
//    NotaryGateway; the notary's signatures are checked and attached; a
//    conflict ends the flow (Errc::conflict) naming each StateRef and the
//    transaction that consumed it.
//  - Finality -> ReceiveFinality: verify (contracts, every signature but
//    the notary's), notarise when there are inputs, references or a time
//    window, record (only_relevant), then send the transaction to every
//    participant with a known party and every observer the rules name plus
//    the caller's extra observers; each receiver resolves its backchain,
//    verifies the transaction fully and records it (participants:
//    only_relevant, observers: all_visible) before answering `recorded`. A
//    receiver that has the transaction already answers at once.
//  - Observers (issue 8): the sign request lists the observers the
//    initiator's finality will send to (its rules' plus its extra ones); a
//    signer whose own copy of the rules requires an observer not listed
//    (other than itself and the initiator) refuses to sign (Errc::forbidden,
//    naming the observer and the rule). The finality request lists every
//    node it goes to; a participant (not an observer) that records a
//    transaction for which its rules require an observer not listed sends
//    it on to that observer itself, after answering (a ReceiveFinality
//    there, as above: recorded once however many send it). So a node cannot
//    hide a transaction from an observer by leaving it out of finality.

#include <string>
#include <string_view>
#include <vector>

#include "flows/builtin_messages.h"
#include "flows/flow.h"
#include "flows/flow_runtime.h"
#include "flows/services.h"

namespace ccal::flows {

inline constexpr std::string_view collect_signatures_flow = "ccal.CollectSignatures";
inline constexpr std::string_view sign_transaction_flow = "ccal.SignTransaction";
inline constexpr std::string_view finality_flow = "ccal.Finality";
inline constexpr std::string_view receive_finality_flow = "ccal.ReceiveFinality";
inline constexpr std::string_view notarise_flow = "ccal.Notarise";
inline constexpr std::string_view resolve_transactions_flow = "ccal.ResolveTransactions";

// Registers the responders (SignTransaction, ReceiveFinality), the
// initiating subflows that open sessions to them (CollectSignatures,
// Finality) and Finality as a startable flow (args: encodeFinalityArgs).
// `services` must outlive the runtime.
Status registerBuiltinFlows(FlowRuntime& runtime, const FlowServices& services);

// Subflows, for a deal flow to await (each runs as a named subflow):
// the transaction signed by every required signer but the notary.
// `extra_observers`: those the caller's finality will add (as its
// extra_observers) beyond the rules'; the sign request announces them with
// the rules' observers.
Flow<SignedTransaction> collectSignatures(FlowContext& ctx, const FlowServices& services,
                                          SignedTransaction stx, std::string check,
                                          std::vector<std::string> extra_observers = {});
// The transaction with the notary's signatures (as is when it needs none).
Flow<SignedTransaction> notarise(FlowContext& ctx, const FlowServices& services,
                                 SignedTransaction stx);
// Verifies, notarises, records and distributes; the notarised transaction.
Flow<SignedTransaction> finality(FlowContext& ctx, const FlowServices& services,
                                 SignedTransaction stx, std::vector<std::string> extra_observers);

// The vault's transactions of `ids`, in order, nullopt for those it does
// not have: a journaled read (call "vault.transactions").
Flow<std::vector<std::optional<SignedTransaction>>> loadTransactions(FlowContext& ctx,
                                                                     const FlowServices& services,
                                                                     std::vector<SecureHash> ids);

// The arguments of the startable "ccal.Finality" flow; its result is the
// notarised transaction's encoding.
Bytes encodeFinalityArgs(const SignedTransaction& stx, const std::vector<std::string>& extra_observers);

// The deterministic privacy salt of a transaction a flow builds: from four
// journaled random numbers (a flow must not read the OS random source).
Flow<Bytes> privacySalt(FlowContext& ctx);

}  // namespace ccal::flows
