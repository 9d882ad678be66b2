#pragma once
// ccal.loan: a mutual-aid loan fund that member cooperatives contribute
// settlement tokens to, loans from it, and the credit records that
// repayments and defaults leave (contracts/credit_record.h summarises them).
//
// Who controls the fund's tokens. The fund's tokens are ordinary ccal.token
// states whose owner is the fund key: the composite key "any k of the n
// committee keys" (Key::anyOf, as the notary cluster's key is "any q of its
// replicas"). The token contract requires the owner's signature to move
// them, and a signature by a composite key is fulfilled only by k distinct
// committee members' signatures, so no single member -- nor any k-1 -- can
// spend the fund, whatever its own vault or node does; the rule is the
// ledger's, checked by every verifier and the notary's clients. The fund
// state names the committee and k, so anyone can recompute the fund key
// (fundKey()). Committee members' vaults record the fund's tokens (they hold
// a leaf of the owner key).
//
// Commands (ccal.loan.*), exactly one per transaction with ccal.loan states:
//  - CreateFund: no loan-contract inputs; one FundState out with no
//    contributions; a name; 1..committee_members_max distinct single-key
//    members; 1 <= k <= n; valid currency; 0 <= interest min <= max <=
//    interest_bp_max; 1 <= term min <= max <= term_days_max; positive
//    principal limit; at most members_max members; every committee member
//    signs (consents to serve).
//  - Contribute: one fund in, the same fund out with one contributor's total
//    raised by X > 0 (a new contributor joins with X > 0), and the fund key receives exactly X net
//    tokens of the fund's currency in the same transaction; the contributor signs.
//  - Request: no loan inputs; one LoanState out (status requested, nothing
//    repaid, no approvals); references the fund state (its committee, k and
//    currency copied into the loan; principal, interest, term within the
//    fund's limits; 1..instalments_max instalments, at most one a day);
//    references a membership credential of the borrower valid over the
//    time window (member.h: checkCredential); the borrower signs.
//  - Approve: a requested loan in, the same loan out approved, with
//    approvals = at least k distinct committee members, each of whom signs.
//  - Disburse: an approved loan in, the same loan out disbursed at a time
//    within the time window (of at most loan_window_micros_max, as for
//    Repay and Default: time_window_too_wide); the borrower receives exactly the principal in
//    tokens of the loan's currency and the fund key pays exactly that, in
//    the same transaction (so the token move is signed by k of n); at
//    least k committee members sign the Disburse command.
//  - Repay: a disbursed loan in, the same loan out with repaid raised by
//    X > 0 (at most the total due, principal plus simple interest); status
//    repaid when the total is reached; the fund key receives exactly X net
//    tokens; the borrower signs; one credit record out: late_payment if the
//    time window starts after the due date of the earliest unpaid
//    instalment, else (the window must end by that due date) full_settlement
//    when the loan is repaid, else repayment_on_time; amount X, at a time
//    within the window.
//  - Default: a disbursed loan in, the same loan out defaulted; the time
//    window starts after the earliest unpaid instalment's due date; at least
//    k committee members sign; one credit record out: default, amount the
//    outstanding total.
// Every loan, fund and record output has the participants the helpers below
// give it (fund: committee, members, contributors; loan and record: borrower and
// committee), so each is shared with the borrower and the committee.
// Credit records are never consumed.
//
// Rejection codes: one_command, bad_state, unknown_command, one_output,
// missing_field, bad_committee, bad_threshold, bad_currency, bad_limits,
// non_positive, overflow, has_contributions, missing_signature,
// illegal_step, changed_terms, wrong_participants, bad_contribution,
// payment_mismatch, fund_missing, fund_mismatch, outside_limits,
// bad_schedule, time_window_missing, not_member, approvals_below_threshold,
// not_committee, not_disbursed_in_window, record_missing, record_mismatch,
// overpaid, time_window_straddles_due, not_overdue, record_consumed,
// time_window_too_wide.
//
// Declared fields: ccal.loan.FundState (linear id = fund id): name,
// currency (text), fund_key (hash), contributed (int64).
// ccal.loan.LoanState (linear id = loan id): fund (hash), borrower (hash),
// status (text), amount (int64, the principal), currency (text), due (time:
// the earliest unpaid instalment's due date, 0 before disbursement and
// after the end). ccal.loan.CreditRecord: subject (hash), event (text), fund,
// loan (hash), amount (int64), currency (text), at (time).

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ledger/composite_key.h"
#include "ledger/contract.h"

namespace ccal::contracts {

inline constexpr std::string_view loan_contract = "ccal.loan";
inline constexpr std::string_view fund_state_type = "ccal.loan.FundState";
inline constexpr std::string_view loan_state_type = "ccal.loan.LoanState";
inline constexpr std::string_view credit_record_state_type = "ccal.loan.CreditRecord";
inline constexpr std::string_view loan_create_fund_command = "ccal.loan.CreateFund";
inline constexpr std::string_view loan_contribute_command = "ccal.loan.Contribute";
inline constexpr std::string_view loan_request_command = "ccal.loan.Request";
inline constexpr std::string_view loan_approve_command = "ccal.loan.Approve";
inline constexpr std::string_view loan_disburse_command = "ccal.loan.Disburse";
inline constexpr std::string_view loan_repay_command = "ccal.loan.Repay";
inline constexpr std::string_view loan_default_command = "ccal.loan.Default";

inline constexpr size_t committee_members_max = 16;
inline constexpr int32_t interest_bp_max = 10'000;  // 100% simple interest over the term
inline constexpr int32_t term_days_max = 36'500;
inline constexpr uint32_t instalments_max = 120;
inline constexpr size_t contributors_max = 256;
inline constexpr size_t members_max = 256;
inline constexpr int64_t loan_day_micros = 86'400'000'000;
// The widest time window of a disbursement, repayment or default (whose
// times and credit records come from it).
inline constexpr int64_t loan_window_micros_max = loan_day_micros;

struct FundContribution {
  Key contributor;
  int64_t amountMinor = 0;  // the contributor's total
  bool operator==(const FundContribution&) const = default;
};

struct Fund {
  SecureHash fundId;
  std::string name;
  std::vector<Key> committee;
  uint32_t threshold = 0;
  std::string currency;
  int32_t interestMinBp = 0, interestMaxBp = 0;
  int32_t termMinDays = 0, termMaxDays = 0;
  int64_t principalMaxMinor = 0;
  std::vector<FundContribution> contributions;
  // Members besides the committee that hold the fund (to contribute and
  // to borrow): participants, so they see every contribution.
  std::vector<Key> members;
  bool operator==(const Fund&) const = default;
};

enum class LoanStatus : uint8_t { requested, approved, disbursed, repaid, defaulted };
std::string_view loanStatusName(LoanStatus s);

struct Loan {
  SecureHash loanId;
  SecureHash fundId;
  Key borrower;
  std::vector<Key> committee;
  uint32_t threshold = 0;
  std::string currency;
  int64_t principalMinor = 0;
  int32_t interestBp = 0;
  int32_t termDays = 0;
  uint32_t instalments = 0;
  LoanStatus status = LoanStatus::requested;
  std::vector<Key> approvals;
  int64_t disbursedMicros = 0;
  int64_t repaidMinor = 0;
  bool operator==(const Loan&) const = default;
};

enum class CreditEvent : uint8_t { repayment_on_time, late_payment, full_settlement, loan_default };
std::string_view creditEventName(CreditEvent e);

struct CreditRecord {
  Key subject;
  SecureHash fundId;
  SecureHash loanId;
  CreditEvent event = CreditEvent::repayment_on_time;
  int64_t amountMinor = 0;
  std::string currency;
  int64_t atMicros = 0;
  bool operator==(const CreditRecord&) const = default;
};

Bytes encodeFund(const Fund& f);
Result<Fund> decodeFund(ByteView bytes);
Bytes encodeLoan(const Loan& l);
Result<Loan> decodeLoan(ByteView bytes);
Bytes encodeCreditRecord(const CreditRecord& r);
Result<CreditRecord> decodeCreditRecord(ByteView bytes);

// The fund key: any `threshold` of the committee keys (bad_key if the
// committee is not a set of single keys or the threshold is out of range).
Result<Key> fundKey(const std::vector<Key>& committee, uint32_t threshold);
int64_t fundContributed(const Fund& f);

// Participants: the fund's committee, members and contributors.
TransactionState fundState(const Party& notary, const Fund& f);
// Participants: the borrower and the committee.
TransactionState loanState(const Party& notary, const Loan& l);
TransactionState creditRecordState(const Party& notary, const CreditRecord& r,
                                   const std::vector<Key>& committee);

// Principal plus simple interest (principal * bp / 10000, rounded down);
// nullopt on overflow.
std::optional<int64_t> loanTotalDue(const Loan& l);
// What is due in all by the end of instalment i (1..n): total * i / n.
int64_t cumulativeDue(const Loan& l, uint32_t i);
// The due date of instalment i (1..n): disbursed + term * i / n.
int64_t instalmentDueMicros(const Loan& l, uint32_t i);
// The first instalment not fully paid (1..n), or nullopt when nothing is
// outstanding.
std::optional<uint32_t> nextUnpaidInstalment(const Loan& l);
// The outstanding total (total due minus repaid; 0 if it overflows).
int64_t loanOutstanding(const Loan& l);

class FundSchema final : public StateSchema {
 public:
  std::string_view stateType() const override { return fund_state_type; }
  std::vector<FieldDecl> fields() const override;
  Result<StateView> view(const TransactionState& state) const override;
};

class LoanSchema final : public StateSchema {
 public:
  std::string_view stateType() const override { return loan_state_type; }
  std::vector<FieldDecl> fields() const override;
  Result<StateView> view(const TransactionState& state) const override;
};

class CreditRecordSchema final : public StateSchema {
 public:
  std::string_view stateType() const override { return credit_record_state_type; }
  std::vector<FieldDecl> fields() const override;
  Result<StateView> view(const TransactionState& state) const override;
};

class LoanContract final : public Contract {
 public:
  std::string_view name() const override { return loan_contract; }
  uint32_t version() const override { return 1; }
  Verdict verify(const LedgerTransaction& tx) const override;
  std::vector<std::shared_ptr<const StateSchema>> stateSchemas() const override {
    return {std::make_shared<FundSchema>(), std::make_shared<LoanSchema>(),
            std::make_shared<CreditRecordSchema>()};
  }
  std::vector<std::string_view> commandTypes() const override {
    return {loan_create_fund_command, loan_contribute_command, loan_request_command,
            loan_approve_command, loan_disburse_command, loan_repay_command, loan_default_command};
  }
};

}  // namespace ccal::contracts
