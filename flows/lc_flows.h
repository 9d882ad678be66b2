#pragma once
// The letter-of-credit flows (issue 8) on the ccal.lc contract
// (contracts/letter_of_credit.h) and the built-in flows. Every flow's result
// is the 32-byte id of the transaction it finalised; finality sends it to
// every participant the LC names at its status (applicant and issuing bank;
// the advising bank from issue on; the beneficiary from advice on) and to
// the observers the network's rules name for contract "ccal.lc".
// Arguments are key=value text in the deal flows' table (lcFlowSpecs(),
// part of dealFlowSpecs(): validated by parseDealArgs before a flow starts).
// An LC is found in this node's vault by its number (`lc`) and this node's
// role in it; more than one live LC of that number and role is a conflict.
//
//  lc.apply    the applicant (this node) applies to its issuing bank.
//  lc.issue    the issuing bank issues an applied LC (irrevocable from here);
//              it refuses above its limit (LcPolicy::lc_amount_max_minor).
//  lc.advise   the advising bank advises an issued LC to the beneficiary.
//  lc.amend    action=propose: the applicant asks for an amendment, the
//              issuing bank signs (check: it is the issuing bank, the
//              initiator the applicant, the new amount within its limit);
//              action=accept | reject: the beneficiary answers the pending
//              amendment. Until accepted the terms do not change.
//  lc.present  the beneficiary presents documents ("type:sha256hex;...")
//              drawing an amount (default: the undrawn balance), with a
//              time window that ends by the expiry (after it the contract
//              refuses: [expired]).
//  lc.examine  the issuing bank finds the presentation complying, or
//              discrepant with reasons ("reason;reason").
//  lc.waive    the applicant waives the discrepancies.
//  lc.refuse   the issuing bank refuses a discrepant (or waived) presentation.
//  lc.pay      the issuing bank pays the drawing to the beneficiary in its
//              own ccal.token tokens (issued in the same transaction); the
//              beneficiary signs (check: it is the beneficiary, the initiator
//              the issuing bank, it receives the drawing in the LC's currency).
//  lc.close    the issuing bank closes the LC: alone when fully drawn, when
//              still an application, or once expired; otherwise the
//              beneficiary must consent (check: it is the beneficiary, the
//              initiator the issuing bank, and its policy consents to
//              cancelling an undrawn balance, LcPolicy::consent_to_cancellation).

#include <vector>

#include "flows/deal_flows.h"

namespace ccal::flows {

inline constexpr std::string_view lc_apply_deal = "lc.apply";
inline constexpr std::string_view lc_issue_deal = "lc.issue";
inline constexpr std::string_view lc_advise_deal = "lc.advise";
inline constexpr std::string_view lc_amend_deal = "lc.amend";
inline constexpr std::string_view lc_present_deal = "lc.present";
inline constexpr std::string_view lc_examine_deal = "lc.examine";
inline constexpr std::string_view lc_waive_deal = "lc.waive";
inline constexpr std::string_view lc_refuse_deal = "lc.refuse";
inline constexpr std::string_view lc_pay_deal = "lc.pay";
inline constexpr std::string_view lc_close_deal = "lc.close";

// What this node agrees to in letters of credit.
struct LcPolicy {
  // As issuing bank: issues and signs amendments up to this amount (minor units).
  int64_t lc_amount_max_minor = 1'000'000'000'000;
  // As beneficiary: consents to cancelling an LC with an undrawn balance before its expiry.
  bool consent_to_cancellation = false;
};

// The LC flows' argument table (dealFlowSpecs() includes it).
const std::vector<DealFlowSpec>& lcFlowSpecs();

// Parses "type:sha256hex;type:sha256hex" (lc.present's documents).
Result<std::vector<std::pair<std::string, SecureHash>>> parseLcDocuments(std::string_view text);

// Adds the business checks lc.amend, lc.pay and lc.close to `svc.checks`
// (addDealChecks calls it with the default policy; call it again to change it).
void addLcChecks(FlowServices& svc, const LcPolicy& policy = {});

// Registers the LC flows (registerDealFlows calls it with the default policy).
Status registerLcFlows(FlowRuntime& runtime, const FlowServices& services, const DealConfig& config,
                       const LcPolicy& policy = {});

}  // namespace ccal::flows
