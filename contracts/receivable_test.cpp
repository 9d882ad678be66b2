#include "contracts/receivable.h"

#include <doctest/doctest.h>

#include "contracts/contract_testing.h"

using namespace ccal;
using namespace ccal::contracts;
using namespace ccal::contracts::testing;

TEST_CASE("receivable and registration states round-trip and declare their fields") {
  Ledger l;
  Receivable r = l.invoice(l.coopA, l.coopB, 500_EUR, "INV-1");
  CHECK(decodeReceivable(encodeReceivable(r)).value() == r);
  InvoiceRegistration reg{l.coopA.key(), "INV-1"};
  CHECK(decodeRegistration(encodeRegistration(reg)).value() == reg);
  auto v = ReceivableSchema().view(receivableState(l.notary.party(), r)).value();
  CHECK(v.linearId == r.linearId);
  CHECK(v.fields.size() == ReceivableSchema().fields().size());
  CHECK(RegistrationSchema().view(registrationState(l.notary.party(), reg)).value().fields.size() == 2);
  // A NUL inside the invoice number would not encode back (cStr() used to cut
  // the number there): refused, named.
  r.invoiceNumber = "INV-QQQ";
  auto refused = decodeReceivable(ccal::testing::withNulAt(encodeReceivable(r), "QQQ"));
  REQUIRE_FALSE(refused);
  CHECK(refused.error().message.find("receivable state: invoice number contains a NUL byte") !=
        std::string::npos);
}

TEST_CASE("the registration transaction is the same wherever it is built, and differs per number") {
  Ledger l;
  auto a = registrationTransaction(l.coopA.key(), "INV-1", l.notary.party()).value();
  auto b = registrationTransaction(l.coopA.key(), "INV-1", l.notary.party()).value();
  CHECK(a.id() == b.id());
  CHECK(a.encode() == b.encode());
  CHECK(registrationTransaction(l.coopA.key(), "INV-2", l.notary.party()).value().id() != a.id());
  CHECK(registrationTransaction(l.coopB.key(), "INV-1", l.notary.party()).value().id() != a.id());
  // It verifies as a Register.
  auto ltx = LedgerTransaction::resolve(a, {}, {}).value();
  CHECK(l.registry.verify(ltx).ok());
}

TEST_CASE("receivable register") {
  Ledger l;
  const Actor &coopA = l.coopA, &coopB = l.coopB;
  l.deal().registers(coopA, "INV-1").signedBy(coopA).verifies();
  l.deal().registers(coopA, "INV-1").signedBy(coopB).fails("missing_signature");
  l.deal().registers(coopA, "").signedBy(coopA).fails("missing_field");
  l.deal().registers(coopA, "INV-1").signedBy(coopA).registers(coopA, "INV-2").signedBy(coopA).fails("one_command");
  l.deal().registers(coopA, "INV-1").output(registrationState(l.notary.party(), {coopA.key(), "INV-2"}))
      .signedBy(coopA).fails("one_output");
  l.deal().registers(coopA, "INV-1").input(registrationState(l.notary.party(), {coopA.key(), "INV-0"}))
      .signedBy(coopA).fails("register_has_inputs");
}

TEST_CASE("receivable issue: seller and member buyer sign, canonical registration, due date ahead") {
  Ledger l;
  const Actor &coopA = l.coopA, &coopB = l.coopB, &coopC = l.coopC, &bank = l.bank;
  const Member buyerCard = l.credential(coopC, coopB);
  Receivable r = l.invoice(coopA, coopB, 500_EUR, "INV-1");
  l.deal().invoices(r).references(buyerCard).signedBy(coopA, coopB).verifies();
  // Signers.
  l.deal().invoices(r).references(buyerCard).signedBy(coopA).fails("missing_signature");
  l.deal().invoices(r).references(buyerCard).signedBy(coopB).fails("missing_signature");
  // Uniqueness: the registration must be the canonical one, of this invoice.
  l.deal().invoices(r, false).references(buyerCard).signedBy(coopA, coopB).fails("registration_not_canonical");
  Receivable other = r;
  other.invoiceNumber = "INV-2";
  {
    auto reg = registrationTransaction(coopA.key(), "INV-1", l.notary.party()).value();
    l.deal().input(registrationState(l.notary.party(), {coopA.key(), "INV-1"}), StateRef{reg.id(), 0})
        .output(receivableState(l.notary.party(), other)).timeWindow(t0_micros, t0_micros + day_micros)
        .command(receivable_issue_command).references(buyerCard).signedBy(coopA, coopB)
        .fails("registration_mismatch");
  }
  l.deal().output(receivableState(l.notary.party(), r)).timeWindow(t0_micros, t0_micros + day_micros)
      .command(receivable_issue_command).references(buyerCard).signedBy(coopA, coopB)
      .fails("registration_missing");
  // Amount, currency, parties.
  Receivable zero = l.invoice(coopA, coopB, minor(0, "EUR"), "INV-1");
  l.deal().invoices(zero).references(buyerCard).signedBy(coopA, coopB).fails("non_positive");
  Receivable negative = l.invoice(coopA, coopB, minor(-1, "EUR"), "INV-1");
  l.deal().invoices(negative).references(buyerCard).signedBy(coopA, coopB).fails("non_positive");
  Receivable badCur = l.invoice(coopA, coopB, minor(5, "E1R"), "INV-1");
  l.deal().invoices(badCur).references(buyerCard).signedBy(coopA, coopB).fails("bad_currency");
  Receivable self = l.invoice(coopA, coopA, 5_EUR, "INV-1");
  l.deal().invoices(self).references(l.credential(coopC, coopA)).signedBy(coopA).fails("same_party");
  Receivable heldByBank = r;
  heldByBank.holder = bank.key();
  l.deal().invoices(heldByBank).references(buyerCard).signedBy(coopA, coopB).fails("illegal_step");
  // Due date against the time window.
  Receivable past = l.invoice(coopA, coopB, 500_EUR, "INV-1", t0_micros - day_micros);
  l.deal().invoices(past).references(buyerCard).signedBy(coopA, coopB).fails("due_in_past");
  Receivable inWindow = l.invoice(coopA, coopB, 500_EUR, "INV-1", t0_micros + day_micros / 2);
  l.deal().invoices(inWindow).references(buyerCard).signedBy(coopA, coopB).fails("due_in_past");
  l.deal().invoices(r).timeWindow(t0_micros, std::nullopt).references(buyerCard).signedBy(coopA, coopB)
      .fails("time_window_missing");
  // The buyer's credential, by reference, valid over the window.
  l.deal().invoices(r).signedBy(coopA, coopB).fails("not_member");
  l.deal().invoices(r).references(l.credential(coopC, coopC)).signedBy(coopA, coopB).fails("not_member");
  l.deal().invoices(r).references(l.credential(coopC, coopB, t0_micros - day_micros, t0_micros + 1000))
      .signedBy(coopA, coopB).fails("not_member");
  l.deal().invoices(r).references(l.credential(coopC, coopB, t0_micros + 1, t0_micros + 9 * day_micros))
      .signedBy(coopA, coopB).fails("not_member");
  // A receivable consumed by an issue: not an issue.
  l.deal().invoices(r).input(receivableState(l.notary.party(), r)).references(buyerCard)
      .signedBy(coopA, coopB).fails("illegal_step");
}

TEST_CASE("receivable finance: assignment against an advance in the same transaction") {
  Ledger l;
  const Actor &coopA = l.coopA, &coopB = l.coopB, &coopC = l.coopC, &bank = l.bank;
  Receivable r = l.invoice(coopA, coopB, 500_EUR, "INV-1");
  l.deal().finances(r, bank).signedBy(coopA, bank).moves(450_EUR, from(bank), to(coopA)).signedBy(bank)
      .verifies();
  // The assigned receivable stays shared with the buyer (who learns whom to pay).
  {
    Receivable after = r;
    after.holder = bank.key();
    TransactionState out = receivableState(l.notary.party(), after);
    out.participants = {bank.key()};
    l.deal()
        .input(receivableState(l.notary.party(), r))
        .output(out)
        .command(receivable_finance_command)
        .signedBy(coopA, bank)
        .moves(450_EUR, from(bank), to(coopA))
        .signedBy(bank)
        .fails("wrong_participants");
  }
  // The advance with change back to the financier.
  l.deal().finances(r, bank).signedBy(coopA, bank).tokenIn(bank, 1000_EUR).tokenOut(coopA, 450_EUR)
      .tokenOut(bank, 550_EUR).command(token_move_command).signedBy(bank).verifies();
  l.deal().finances(r, bank).signedBy(bank).moves(450_EUR, from(bank), to(coopA)).signedBy(bank)
      .fails("missing_signature");
  l.deal().finances(r, bank).signedBy(coopA).moves(450_EUR, from(bank), to(coopA)).signedBy(bank)
      .fails("missing_signature");
  l.deal().finances(r, bank).signedBy(coopA, bank).fails("advance_missing");
  // An advance in another currency is no advance.
  l.deal().finances(r, bank).signedBy(coopA, bank).moves(450_CNY, from(bank), to(coopA)).signedBy(bank)
      .fails("advance_missing");
  // The seller paying itself is no advance.
  l.deal().finances(r, bank).signedBy(coopA, bank).moves(450_EUR, from(coopA), to(coopA)).signedBy(coopA)
      .fails("advance_missing");
  l.deal().finances(r, coopA).signedBy(coopA).moves(450_EUR, from(bank), to(coopA)).signedBy(bank)
      .fails("same_holder");
  // Terms are kept.
  {
    Receivable more = r;
    more.amountMinor += 1;
    more.holder = bank.key();
    l.deal().input(receivableState(l.notary.party(), r)).output(receivableState(l.notary.party(), more))
        .command(receivable_finance_command).signedBy(coopA, bank)
        .moves(450_EUR, from(bank), to(coopA)).signedBy(bank).fails("changed_terms");
  }
  // Lifecycle: financing needs a live receivable in and out.
  l.deal().output(receivableState(l.notary.party(), r)).command(receivable_finance_command)
      .signedBy(coopA, bank).fails("illegal_step");
  l.deal().input(receivableState(l.notary.party(), r)).command(receivable_finance_command)
      .signedBy(coopA, bank).fails("illegal_step");
  // A registration outside register/issue.
  l.deal().finances(r, bank).signedBy(coopA, bank).registers(coopC, "X").signedBy(coopC).fails("one_command");
  l.deal().finances(r, bank).signedBy(coopA, bank).moves(450_EUR, from(bank), to(coopA)).signedBy(bank)
      .output(registrationState(l.notary.party(), {coopA.key(), "INV-9"})).fails("illegal_step");
}

TEST_CASE("receivable settle: the buyer pays the holder in full; the receivable is consumed") {
  Ledger l;
  const Actor &coopA = l.coopA, &coopB = l.coopB, &bank = l.bank;
  Receivable r = l.invoice(coopA, coopB, 500_EUR, "INV-1");
  Receivable financed = r;
  financed.holder = bank.key();
  l.deal().settles(financed).signedBy(coopB, bank).moves(500_EUR, from(coopB), to(bank)).signedBy(coopB)
      .verifies();
  l.deal().settles(r).signedBy(coopB, coopA).moves(500_EUR, from(coopB), to(coopA)).signedBy(coopB)
      .verifies();
  l.deal().settles(financed).signedBy(bank).moves(500_EUR, from(coopB), to(bank)).signedBy(coopB)
      .fails("missing_signature");
  l.deal().settles(financed).signedBy(coopB).moves(500_EUR, from(coopB), to(bank)).signedBy(coopB)
      .fails("missing_signature");
  l.deal().settles(financed).signedBy(coopB, bank).moves(499_EUR, from(coopB), to(bank)).signedBy(coopB)
      .fails("underpaid");
  // Paying the seller after financing pays the wrong party.
  l.deal().settles(financed).signedBy(coopB, bank).moves(500_EUR, from(coopB), to(coopA)).signedBy(coopB)
      .fails("underpaid");
  l.deal().settles(financed).signedBy(coopB, bank).moves(500_CNY, from(coopB), to(bank)).signedBy(coopB)
      .fails("wrong_currency");
  // Settled means consumed: recreating it is illegal.
  l.deal().settles(financed).signedBy(coopB, bank).moves(500_EUR, from(coopB), to(bank)).signedBy(coopB)
      .output(receivableState(l.notary.party(), financed)).fails("illegal_step");
  l.deal().settles(financed).input(receivableState(l.notary.party(), r)).signedBy(coopB, bank)
      .moves(500_EUR, from(coopB), to(bank)).signedBy(coopB).fails("illegal_step");
  l.deal().settles(financed).signedBy(coopB, bank).command(receivable_finance_command).signedBy(coopB, bank).fails("one_command");
  l.deal().input(receivableState(l.notary.party(), r)).command("ccal.receivable.Cancel").signedBy(coopA)
      .fails("unknown_command");
}
