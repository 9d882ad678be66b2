#pragma once
// The mutual-aid loan flows (issue 8) over the ccal.loan contract
// (contracts/loan.h), in the style of the deal flows (flows/deal_flows.h):
// key=value arguments validated by the same table (dealFlowSpecs() includes
// loanFlowSpecs()), business checks that SignTransaction applies before a
// committee member signs, finality to every participant (the borrower and
// the committee; the fund's contributors) and the network's observers.
// Every flow's result is a JSON object with the finalised transaction's id
// ("tx_id") and what the flow made ("fund_id", "loan_id", ...).
//
//  loan.fund.create      a committee member creates a fund; every committee
//                        member signs (check: it is on the committee, the
//                        threshold is a majority when policy asks, the
//                        limits within its policy).
//  loan.fund.contribute  this node pays tokens to the fund key and raises its
//                        contribution (it must hold the fund state: a
//                        committee member, an earlier contributor, or an
//                        observer of the fund's creation).
//  loan.request          a member borrower requests a loan within the fund's
//                        limits, referencing the fund and its own credential;
//                        then each committee member reviews it (the
//                        loan.request.review subflow): it computes the
//                        borrower's credit report from its own vault, logs it,
//                        says whether it would approve, and the flow's result
//                        lists every review.
//  loan.approve          a committee member approves with the committee
//                        members it names: each signs after its check (it is
//                        an approver on the committee, the loan within its
//                        policy, the borrower's credential referenced and
//                        valid, the borrower's record within its policy).
//                        Fewer than k approvers: the contract refuses
//                        (approvals_below_threshold).
//  loan.disburse         an approver pays the principal from the fund's tokens
//                        (owned by the k-of-n fund key) to the borrower, in the
//                        transaction that marks the loan disbursed; the
//                        loan's approvers sign (check: an approved loan, the
//                        borrower paid exactly the principal from the fund,
//                        its credential referenced and valid).
//  loan.repay            the borrower pays an instalment (by default what the
//                        next one still needs) to the fund key; the credit
//                        record (on time, late, full settlement) goes to the
//                        borrower and the committee.
//  loan.default          an approver declares an overdue loan in default with
//                        the other approvers (check: a default of a loan this
//                        node approved, asked by a committee member; the
//                        contract checks that the time window starts after
//                        the unpaid instalment's due date, the notary that
//                        the window holds its clock), leaving a default
//                        credit record.
//
// The fund's tokens are selected by owner (the fund key), not with the
// vault's selectFungible, which would mix them with a committee member's own
// tokens; the borrower's repayments likewise select only its own tokens.

#include <string>
#include <string_view>
#include <vector>

#include "contracts/credit_record.h"
#include "flows/deal_flows.h"

namespace ccal::flows {

inline constexpr std::string_view loan_fund_create_deal = "loan.fund.create";
inline constexpr std::string_view loan_fund_contribute_deal = "loan.fund.contribute";
inline constexpr std::string_view loan_request_deal = "loan.request";
inline constexpr std::string_view loan_approve_deal = "loan.approve";
inline constexpr std::string_view loan_disburse_deal = "loan.disburse";
inline constexpr std::string_view loan_repay_deal = "loan.repay";
inline constexpr std::string_view loan_default_deal = "loan.default";
// loan.request's review subflow and its responder.
inline constexpr std::string_view loan_review_flow = "loan.request.review";
inline constexpr std::string_view loan_review_responder = "loan.request.review.respond";

// A review answer is small; a larger one is refused.
inline constexpr size_t loan_review_bytes_max = 4096;
// States read to compute one credit report.
inline constexpr uint32_t credit_report_states_max = 100'000;

// The loan flows' arguments (part of dealFlowSpecs()).
const std::vector<DealFlowSpec>& loanFlowSpecs();

// What this node agrees to as a committee member.
struct LoanPolicy {
  // It approves and disburses loans up to this principal (minor units).
  int64_t principal_max_minor = 1'000'000'000'000;
  // It approves for borrowers with at most this many defaults on record.
  int64_t borrower_defaults_max = 0;
  // It serves only on committees whose threshold is a majority.
  bool majority_required = true;
};

// The credit report of `subject` from this vault's credit records and loan
// states (consumed ones included), for `ccal credit report` and the
// committee's checks. too_large past credit_report_states_max states.
Result<contracts::CreditReport> creditReportFromVault(const vault::Vault& vault, const Key& subject);

// Adds the checks named loan.fund.create, loan.approve, loan.disburse and
// loan.default to `svc.checks` (addDealChecks calls it).
void addLoanChecks(FlowServices& svc, const LoanPolicy& policy = {});

// Registers the loan flows and the review responder (registerDealFlows
// calls it).
Status registerLoanFlows(FlowRuntime& runtime, const FlowServices& services, const DealConfig& config,
                         const LoanPolicy& policy = {});

}  // namespace ccal::flows
