#pragma once
// ccal.lc: a documentary letter of credit with the UCP 600 roles: the
// applicant (the buyer who asks for it), the beneficiary (the seller it pays),
// the issuing bank (which undertakes to pay against complying documents) and
// the advising bank (which advises it to the beneficiary; it may be the
// issuing bank itself). One LetterOfCreditState per letter of credit, a
// linear state carried from transaction to transaction; every command
// consumes the LC (except Apply) and creates it again with the next status.
// Exactly one ccal.lc command and one LC in and out per transaction.
//
// Lifecycle (status before -> after, who signs):
//  - Apply       (none -> applied; applicant). Amount positive, currency
//                valid, at least one required document (each type named
//                once, at most lc_documents_max), latest shipment not after
//                expiry, expiry not before the end of the time window (a
//                time window with an end is required), four roles: applicant,
//                beneficiary and issuing bank distinct, the advising bank
//                neither applicant nor beneficiary.
//  - Issue       (applied -> issued; issuing bank). The LC is irrevocable
//                from here: only an accepted amendment changes its terms.
//  - Advise      (issued -> advised; advising bank).
//  - ProposeAmendment (issued | advised | refused, none pending -> same
//                status, pending amendment; issuing bank and applicant). The
//                amendment changes something; its amount is positive and
//                not below what was paid; its latest shipment not after its
//                expiry; a changed expiry not before the end of the window.
//  - AcceptAmendment (pending -> terms := the amendment, none pending;
//                beneficiary). The new terms must be exactly the amendment:
//                accepting part of it is a rejection (partial_acceptance).
//  - RejectAmendment (pending -> none pending, terms unchanged; beneficiary).
//                Silence is not consent: until accepted, the pending
//                amendment changes nothing, and a presentation made under
//                the current terms drops it (UCP 600 art. 10 c).
//  - Present     (advised | refused | paid with an undrawn balance ->
//                presented; beneficiary). At least one document (type and
//                32-byte SHA-256), each type once; a drawing positive and at
//                most the undrawn balance; only before expiry: the time
//                window must end at or before the expiry.
//  - Examine     (presented -> complying | discrepant; issuing bank).
//                Complying: no reasons, and every required document type was
//                presented. Discrepant: at least one reason.
//  - Waive       (discrepant -> waived; applicant). The reasons are kept.
//  - Refuse      (discrepant | waived -> refused; issuing bank).
//  - Pay         (complying | waived -> paid; issuing bank and beneficiary).
//                In the same transaction the beneficiary receives a net
//                amount of ccal.token tokens of the LC's currency of at least
//                the drawing; paid += drawing, never above the amount.
//  - Close       (any but closed -> closed; issuing bank). Without the
//                beneficiary's signature only when fully drawn, or once
//                expired (the time window starts at or after the expiry)
//                with no presentation awaiting examination or payment;
//                otherwise the beneficiary must consent (sign): the LC is
//                irrevocable. A closed LC stays in the vaults as a record
//                and no command consumes it.
//
// Rejection codes: one_command, bad_state, illegal_step, changed_terms,
// missing_signature, missing_field, non_positive, bad_currency, same_party,
// no_documents, duplicate_document, too_many, time_window_missing,
// expiry_in_past, shipment_after_expiry, amendment_pending, no_amendment,
// amendment_empty, amendment_below_paid, partial_acceptance, expired,
// overdrawn, bad_hash, documents_missing, reasons_missing,
// reasons_on_complying, payment_missing, underpaid, not_expired,
// unknown_command.
//
// Declared fields of ccal.lc.LetterOfCreditState: lc (text), amount (int64),
// currency (text), applicant, beneficiary, issuer, adviser (hash), status
// (text), expiry (time); linear id.

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ledger/contract.h"

namespace ccal::contracts {

inline constexpr std::string_view lc_contract = "ccal.lc";
inline constexpr std::string_view lc_state_type = "ccal.lc.LetterOfCreditState";
inline constexpr std::string_view lc_apply_command = "ccal.lc.Apply";
inline constexpr std::string_view lc_issue_command = "ccal.lc.Issue";
inline constexpr std::string_view lc_advise_command = "ccal.lc.Advise";
inline constexpr std::string_view lc_propose_amendment_command = "ccal.lc.ProposeAmendment";
inline constexpr std::string_view lc_accept_amendment_command = "ccal.lc.AcceptAmendment";
inline constexpr std::string_view lc_reject_amendment_command = "ccal.lc.RejectAmendment";
inline constexpr std::string_view lc_present_command = "ccal.lc.Present";
inline constexpr std::string_view lc_examine_command = "ccal.lc.Examine";
inline constexpr std::string_view lc_waive_command = "ccal.lc.Waive";
inline constexpr std::string_view lc_refuse_command = "ccal.lc.Refuse";
inline constexpr std::string_view lc_pay_command = "ccal.lc.Pay";
inline constexpr std::string_view lc_close_command = "ccal.lc.Close";

// Bounds of one LC state.
inline constexpr size_t lc_documents_max = 16;       // required or presented documents
inline constexpr size_t lc_reasons_max = 16;         // discrepancies
inline constexpr size_t lc_text_bytes_max = 256;     // an LC number, a document type, a reason

enum class LcStatus : uint8_t { applied, issued, advised, presented, complying, discrepant, waived, refused, paid, closed };
const char* lcStatusName(LcStatus s);
std::optional<LcStatus> lcStatusNamed(std::string_view name);

struct LcTerms {
  int64_t amountMinor = 0;
  int64_t expiryMicros = 0;          // presentations strictly before this instant
  int64_t latestShipmentMicros = 0;
  std::vector<std::string> requiredDocuments;
  bool operator==(const LcTerms&) const = default;
};

struct LcDocument {
  std::string type;
  SecureHash sha256;
  bool operator==(const LcDocument&) const = default;
};

struct LetterOfCredit {
  SecureHash linearId;
  std::string lcNumber;
  Key applicant, beneficiary, issuingBank, advisingBank;
  std::string currency;
  LcTerms terms;
  LcStatus status = LcStatus::applied;
  std::vector<std::string> discrepancies;
  std::optional<LcTerms> amendment;
  std::vector<LcDocument> presentation;
  int64_t drawingMinor = 0;
  int64_t paidMinor = 0;
  bool operator==(const LetterOfCredit&) const = default;
};

Bytes encodeLetterOfCredit(const LetterOfCredit& lc);
Result<LetterOfCredit> decodeLetterOfCredit(ByteView bytes);

// Participants: applicant and issuing bank; from issue on the advising bank
// too; from advice on the beneficiary too.
TransactionState lcState(const Party& notary, const LetterOfCredit& lc);
// The linear id of (applicant, LC number).
SecureHash lcLinearId(const Key& applicant, const std::string& lc_number);

class LetterOfCreditSchema final : public StateSchema {
 public:
  std::string_view stateType() const override { return lc_state_type; }
  std::vector<FieldDecl> fields() const override;
  Result<StateView> view(const TransactionState& state) const override;
};

class LetterOfCreditContract final : public Contract {
 public:
  std::string_view name() const override { return lc_contract; }
  uint32_t version() const override { return 1; }
  Verdict verify(const LedgerTransaction& tx) const override;
  std::vector<std::shared_ptr<const StateSchema>> stateSchemas() const override {
    return {std::make_shared<LetterOfCreditSchema>()};
  }
  std::vector<std::string_view> commandTypes() const override {
    return {lc_apply_command, lc_issue_command, lc_advise_command, lc_propose_amendment_command,
            lc_accept_amendment_command, lc_reject_amendment_command, lc_present_command,
            lc_examine_command, lc_waive_command, lc_refuse_command, lc_pay_command,
            lc_close_command};
  }
};

}  // namespace ccal::contracts
