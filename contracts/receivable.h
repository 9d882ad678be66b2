#pragma once
// ccal.receivable: a seller's invoice against a buyer, owed to its current
// holder. Commands (exactly one per transaction):
//  - Register: creates the InvoiceRegistration of (seller, invoice number);
//    consumes nothing; the seller signs.
//  - Issue: consumes that registration (at its canonical StateRef, below),
//    creates the receivable (holder = seller); seller and buyer sign (the
//    buyer acknowledges the debt); amount positive, currency valid, the
//    due date not before the end of the time window (so not in the past
//    whenever the notary accepts it); references a membership credential
//    of the buyer valid over the window (member.h: checkCredential).
//  - Finance: consumes the receivable, creates it with a new holder (the
//    financier); old and new holder sign; in the same transaction the old
//    holder receives a positive net amount of tokens of the receivable's
//    currency (the advance). The buyer is a participant, so it learns whom
//    to pay.
//  - Settle: consumes the receivable, creates none; buyer and holder sign;
//    the holder receives a net amount of tokens of the receivable's
//    currency of at least the receivable's amount.
//
// Uniqueness, guarded by the notary. Financing or settling twice conflicts
// at the notary because the receivable state is consumed. The same seller's
// invoice number issued twice: each (seller, invoice number, notary) has
// exactly one registration StateRef that the ledger accepts, output 0 of
// the "canonical registration transaction" -- a transaction whose every
// component, privacy salt included (a hash of seller key and number), is a
// function of (seller, invoice number, notary) alone, so whoever builds it
// gets the same transaction id (registrationTransaction()). Issue must
// consume that very StateRef (the contract recomputes the id:
// registration_not_canonical otherwise), so a second issue of the same
// number spends the same StateRef as the first and the notary answers with
// its conflict, whichever node or vault tries it. The registration
// transaction consumes nothing, so it needs no notarisation; its id reveals
// nothing beyond the seller and number that the receivable shows anyway.
// (Moving the seller's states to another notary would open a new series;
// there is no notary change in this ledger yet.)
//
// Rejection codes: one_command, bad_state, register_has_inputs, one_output,
// missing_field, missing_signature, registration_missing,
// registration_not_canonical, registration_mismatch, illegal_step,
// non_positive, bad_currency, same_party, time_window_missing, due_in_past,
// not_member, changed_terms, same_holder, advance_missing, wrong_currency,
// underpaid, unknown_command, wrong_participants (a receivable output's
// participants are its holder and buyer, as receivableState() makes them).
//
// Declared fields of ccal.receivable.ReceivableState: amount (int64),
// currency, invoice (text), due (time), seller, buyer, holder (hash);
// linear id. Of ccal.receivable.InvoiceRegistration: seller (hash), invoice (text).

#include <string>
#include <string_view>

#include "ledger/contract.h"

namespace ccal::contracts {

inline constexpr std::string_view receivable_contract = "ccal.receivable";
inline constexpr std::string_view receivable_state_type = "ccal.receivable.ReceivableState";
inline constexpr std::string_view registration_state_type = "ccal.receivable.InvoiceRegistration";
inline constexpr std::string_view receivable_register_command = "ccal.receivable.Register";
inline constexpr std::string_view receivable_issue_command = "ccal.receivable.Issue";
inline constexpr std::string_view receivable_finance_command = "ccal.receivable.Finance";
inline constexpr std::string_view receivable_settle_command = "ccal.receivable.Settle";

struct Receivable {
  Key seller, buyer, holder;
  std::string currency;
  int64_t amountMinor = 0;
  int64_t dueMicros = 0;
  std::string invoiceNumber;
  SecureHash linearId;
  bool operator==(const Receivable&) const = default;
};

struct InvoiceRegistration {
  Key seller;
  std::string invoiceNumber;
  bool operator==(const InvoiceRegistration&) const = default;
};

Bytes encodeReceivable(const Receivable& r);
Result<Receivable> decodeReceivable(ByteView bytes);
Bytes encodeRegistration(const InvoiceRegistration& r);
Result<InvoiceRegistration> decodeRegistration(ByteView bytes);

// Participants: holder and buyer.
TransactionState receivableState(const Party& notary, const Receivable& r);
TransactionState registrationState(const Party& notary, const InvoiceRegistration& r);

// The canonical registration transaction of (seller, number, notary): the
// same bytes wherever it is built. Its output 0 is the registration.
Result<WireTransaction> registrationTransaction(const Key& seller, const std::string& invoice_number,
                                                const Party& notary);
// The linear id of the receivable of (seller, invoice number).
SecureHash receivableLinearId(const Key& seller, const std::string& invoice_number);

class ReceivableSchema final : public StateSchema {
 public:
  std::string_view stateType() const override { return receivable_state_type; }
  std::vector<FieldDecl> fields() const override;
  Result<StateView> view(const TransactionState& state) const override;
};

class RegistrationSchema final : public StateSchema {
 public:
  std::string_view stateType() const override { return registration_state_type; }
  std::vector<FieldDecl> fields() const override;
  Result<StateView> view(const TransactionState& state) const override;
};

class ReceivableContract final : public Contract {
 public:
  std::string_view name() const override { return receivable_contract; }
  uint32_t version() const override { return 1; }
  Verdict verify(const LedgerTransaction& tx) const override;
  std::vector<std::shared_ptr<const StateSchema>> stateSchemas() const override {
    return {std::make_shared<ReceivableSchema>(), std::make_shared<RegistrationSchema>()};
  }
  std::vector<std::string_view> commandTypes() const override {
    return {receivable_register_command, receivable_issue_command, receivable_finance_command,
            receivable_settle_command};
  }
};

}  // namespace ccal::contracts
