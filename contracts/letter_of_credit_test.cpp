#include "contracts/letter_of_credit.h"

#include <doctest/doctest.h>

#include <algorithm>

#include "contracts/contract_testing.h"

using namespace ccal;
using namespace ccal::contracts;
using namespace ccal::contracts::testing;

namespace {

// The deal language of contract_testing.h with the letter of credit's verbs:
// cooperative A (applicant) buys from cooperative B (beneficiary) under a
// letter of credit of the Bank of Hainan (issuing bank), advised by the
// Bank of Sanya. Each verb is a deal of one LC step; the LC before the step
// is the one named, the LC after it what the step makes of it.
struct LcLedger : Ledger {
  Actor adviser = actor("Bank of Sanya", 5);
  const Actor &applicant = coopA, &beneficiary = coopB, &issuer = bank;

  static constexpr int64_t expiry = t0_micros + 60 * day_micros;

  LetterOfCredit applied(const Amount& a = 1000_EUR) const {
    LetterOfCredit lc;
    lc.lcNumber = "LC-2026-001";
    lc.linearId = lcLinearId(applicant.key(), lc.lcNumber);
    lc.applicant = applicant.key();
    lc.beneficiary = beneficiary.key();
    lc.issuingBank = issuer.key();
    lc.advisingBank = adviser.key();
    lc.currency = a.currency;
    lc.terms = LcTerms{a.minor, expiry, expiry - 15 * day_micros,
                       {"commercial_invoice", "bill_of_lading", "insurance_certificate"}};
    return lc;
  }
  static LetterOfCredit at(LetterOfCredit lc, LcStatus s) {
    lc.status = s;
    return lc;
  }
  static SecureHash doc(std::string_view text) { return SecureHash::of(Bytes(text.begin(), text.end())); }
  // The LC as the usual path leaves it at `s`: every required document
  // presented, drawing the whole amount; discrepant with one reason.
  LetterOfCredit lcAt(LcStatus s) const {
    LetterOfCredit lc = at(applied(), s);
    if (s == LcStatus::applied || s == LcStatus::issued || s == LcStatus::advised) return lc;
    for (const auto& t : lc.terms.requiredDocuments) lc.presentation.push_back({t, doc(t)});
    lc.drawingMinor = lc.terms.amountMinor;
    if (s == LcStatus::discrepant || s == LcStatus::waived || s == LcStatus::refused) {
      lc.discrepancies = {"bill of lading not clean"};
    }
    if (s == LcStatus::paid || s == LcStatus::closed) lc.paidMinor = lc.drawingMinor;
    return lc;
  }

  Deal step(const LetterOfCredit& before, std::string_view command, const LetterOfCredit& after) {
    Deal d = deal();
    d.input(lcState(notary.party(), before)).output(lcState(notary.party(), after)).command(command);
    return d;
  }
  Deal applies(const LetterOfCredit& lc) {
    Deal d = deal();
    d.output(lcState(notary.party(), lc)).timeWindow(t0_micros, t0_micros + day_micros).command(lc_apply_command);
    return d;
  }
  Deal issues(const LetterOfCredit& lc) { return step(lc, lc_issue_command, at(lc, LcStatus::issued)); }
  Deal advises(const LetterOfCredit& lc) { return step(lc, lc_advise_command, at(lc, LcStatus::advised)); }
  Deal proposes(const LetterOfCredit& lc, const LcTerms& amendment) {
    LetterOfCredit after = lc;
    after.amendment = amendment;
    Deal d = step(lc, lc_propose_amendment_command, after);
    d.timeWindow(t0_micros, t0_micros + day_micros);
    return d;
  }
  Deal accepts(const LetterOfCredit& lc) {
    LetterOfCredit after = lc;
    after.terms = *lc.amendment;
    after.amendment.reset();
    return step(lc, lc_accept_amendment_command, after);
  }
  Deal rejectsAmendment(const LetterOfCredit& lc) {
    LetterOfCredit after = lc;
    after.amendment.reset();
    return step(lc, lc_reject_amendment_command, after);
  }
  // Presents `docs` drawing `drawing`, in a day-long window ending at `until`.
  Deal presents(const LetterOfCredit& lc, std::vector<LcDocument> docs, int64_t drawing,
                int64_t until = t0_micros + day_micros) {
    LetterOfCredit after = at(lc, LcStatus::presented);
    after.presentation = std::move(docs);
    after.drawingMinor = drawing;
    after.discrepancies.clear();
    after.amendment.reset();
    Deal d = step(lc, lc_present_command, after);
    d.timeWindow(until - day_micros, until);
    return d;
  }
  std::vector<LcDocument> allDocuments(const LetterOfCredit& lc) const {
    std::vector<LcDocument> docs;
    for (const auto& t : lc.terms.requiredDocuments) docs.push_back({t, doc(t)});
    return docs;
  }
  Deal examines(const LetterOfCredit& lc, std::vector<std::string> reasons) {
    LetterOfCredit after = at(lc, reasons.empty() ? LcStatus::complying : LcStatus::discrepant);
    after.discrepancies = std::move(reasons);
    return step(lc, lc_examine_command, after);
  }
  Deal waives(const LetterOfCredit& lc) { return step(lc, lc_waive_command, at(lc, LcStatus::waived)); }
  Deal refuses(const LetterOfCredit& lc) { return step(lc, lc_refuse_command, at(lc, LcStatus::refused)); }
  // The LC step of a payment; the deal adds the tokens.
  Deal pays(const LetterOfCredit& lc) {
    LetterOfCredit after = at(lc, LcStatus::paid);
    after.paidMinor += lc.drawingMinor;
    return step(lc, lc_pay_command, after);
  }
  Deal closes(const LetterOfCredit& lc) {
    LetterOfCredit after = at(lc, LcStatus::closed);
    after.amendment.reset();
    return step(lc, lc_close_command, after);
  }
};

}  // namespace

TEST_CASE("letter of credit state round-trips and declares its fields") {
  LcLedger l;
  LetterOfCredit lc = l.lcAt(LcStatus::discrepant);
  lc.amendment = LcTerms{5, 6, 5, {"x"}};
  CHECK(decodeLetterOfCredit(encodeLetterOfCredit(lc)).value() == lc);
  auto v = LetterOfCreditSchema().view(lcState(l.notary.party(), lc)).value();
  CHECK(v.linearId == lc.linearId);
  CHECK(v.fields.size() == LetterOfCreditSchema().fields().size());
  CHECK(std::get<std::string>(v.fields[7].second) == "discrepant");
  CHECK(lcStatusNamed("waived") == LcStatus::waived);
  CHECK_FALSE(lcStatusNamed("honoured"));
  CHECK_FALSE(decodeLetterOfCredit(Bytes{1, 2, 3}));
  // A NUL inside a document name would not encode back: refused, named.
  lc.amendment = LcTerms{5, 6, 5, {"bill of lading QQQ"}};
  auto refused = decodeLetterOfCredit(ccal::testing::withNulAt(encodeLetterOfCredit(lc), "QQQ"));
  REQUIRE_FALSE(refused);
  CHECK(refused.error().message.find("a required document's name contains a NUL byte") !=
        std::string::npos);
  // Who sees it: the beneficiary only once advised.
  CHECK(lcState(l.notary.party(), l.applied()).participants.size() == 2);
  CHECK(lcState(l.notary.party(), l.lcAt(LcStatus::issued)).participants.size() == 3);
  CHECK(lcState(l.notary.party(), l.lcAt(LcStatus::advised)).participants.size() == 4);
  LetterOfCredit sameBank = l.lcAt(LcStatus::advised);
  sameBank.advisingBank = sameBank.issuingBank;
  CHECK(lcState(l.notary.party(), sameBank).participants.size() == 3);
}

TEST_CASE("lc apply: the applicant asks its bank for an LC with sound terms") {
  LcLedger l;
  const Actor &a = l.applicant, &b = l.beneficiary, &bank = l.issuer;
  const LetterOfCredit lc = l.applied();
  l.applies(lc).signedBy(a).verifies();
  // The issuing bank may advise its own LC.
  LetterOfCredit selfAdvised = lc;
  selfAdvised.advisingBank = bank.key();
  l.applies(selfAdvised).signedBy(a).verifies();
  l.applies(lc).signedBy(bank).fails("missing_signature");
  auto with = [&lc](auto change) {
    LetterOfCredit x = lc;
    change(x);
    return x;
  };
  l.applies(with([](auto& x) { x.terms.amountMinor = 0; })).signedBy(a).fails("non_positive");
  l.applies(with([](auto& x) { x.terms.amountMinor = -100; })).signedBy(a).fails("non_positive");
  l.applies(with([](auto& x) { x.currency = "eur"; })).signedBy(a).fails("bad_currency");
  l.applies(with([](auto& x) { x.lcNumber = ""; })).signedBy(a).fails("missing_field");
  l.applies(with([](auto& x) { x.lcNumber = std::string(300, 'N'); })).signedBy(a).fails("too_many");
  l.applies(with([&a](auto& x) { x.beneficiary = a.key(); })).signedBy(a).fails("same_party");
  l.applies(with([&a](auto& x) { x.issuingBank = a.key(); })).signedBy(a).fails("same_party");
  l.applies(with([&b](auto& x) { x.issuingBank = b.key(); })).signedBy(a).fails("same_party");
  l.applies(with([&b](auto& x) { x.advisingBank = b.key(); })).signedBy(a).fails("same_party");
  l.applies(with([](auto& x) { x.terms.requiredDocuments.clear(); })).signedBy(a).fails("no_documents");
  l.applies(with([](auto& x) { x.terms.requiredDocuments.push_back("bill_of_lading"); })).signedBy(a)
      .fails("duplicate_document");
  l.applies(with([](auto& x) { x.terms.requiredDocuments.push_back(""); })).signedBy(a).fails("missing_field");
  l.applies(with([](auto& x) { x.terms.requiredDocuments.assign(lc_documents_max + 1, "d"); })).signedBy(a)
      .fails("too_many");
  l.applies(with([](auto& x) {
    x.terms.requiredDocuments.clear();
    for (size_t i = 0; i <= lc_documents_max; ++i) x.terms.requiredDocuments.push_back("doc" + std::to_string(i));
  })).signedBy(a).fails("too_many");
  l.applies(with([](auto& x) { x.terms.latestShipmentMicros = x.terms.expiryMicros + 1; })).signedBy(a)
      .fails("shipment_after_expiry");
  // The expiry against the time window.
  l.applies(with([](auto& x) {
    x.terms.expiryMicros = t0_micros + day_micros / 2;
    x.terms.latestShipmentMicros = t0_micros;
  })).signedBy(a).fails("expiry_in_past");
  l.applies(lc).timeWindow(t0_micros, std::nullopt).signedBy(a).fails("time_window_missing");
  // A fresh LC is applied for, with nothing presented, paid or pending.
  l.applies(l.lcAt(LcStatus::issued)).signedBy(a).fails("illegal_step");
  l.applies(with([](auto& x) { x.paidMinor = 1; })).signedBy(a).fails("illegal_step");
  l.applies(with([](auto& x) { x.amendment = x.terms; })).signedBy(a).fails("illegal_step");
  // Shape: one LC out, none in, one command.
  l.applies(lc).output(lcState(l.notary.party(), lc)).signedBy(a).fails("illegal_step");
  l.applies(lc).input(lcState(l.notary.party(), lc)).signedBy(a).fails("illegal_step");
  l.applies(lc).signedBy(a).command(lc_issue_command).signedBy(bank).fails("one_command");
  l.deal().output(lcState(l.notary.party(), lc)).issues(bank, 5_EUR, to(b)).signedBy(bank).fails("one_command");
  l.step(lc, "ccal.lc.Cancel", lc).signedBy(a).fails("unknown_command");
  // A state of another type under ccal.lc.
  {
    TransactionState odd = lcState(l.notary.party(), lc);
    odd.stateType = "ccal.lc.Guarantee";
    l.applies(lc).output(odd).signedBy(a).fails("bad_state");
    TransactionState garbage = lcState(l.notary.party(), lc);
    garbage.data = Bytes{0, 1, 2};
    l.deal().output(garbage).timeWindow(t0_micros, t0_micros + day_micros).command(lc_apply_command).signedBy(a)
        .fails("bad_state");
  }
}

TEST_CASE("lc issue and advise: the banks' steps, in order, terms unchanged") {
  LcLedger l;
  const Actor &a = l.applicant, &bank = l.issuer, &adviser = l.adviser;
  const LetterOfCredit applied = l.applied(), issued = l.lcAt(LcStatus::issued);
  l.issues(applied).signedBy(bank).verifies();
  l.issues(applied).signedBy(a).fails("missing_signature");
  l.issues(issued).signedBy(bank).fails("illegal_step");
  l.step(applied, lc_issue_command, LcLedger::at(applied, LcStatus::advised)).signedBy(bank).fails("illegal_step");
  {
    LetterOfCredit more = LcLedger::at(applied, LcStatus::issued);
    more.terms.amountMinor += 1;
    l.step(applied, lc_issue_command, more).signedBy(bank).fails("changed_terms");
    LetterOfCredit otherBeneficiary = LcLedger::at(applied, LcStatus::issued);
    otherBeneficiary.beneficiary = l.coopC.key();
    l.step(applied, lc_issue_command, otherBeneficiary).signedBy(bank).fails("changed_terms");
  }
  // Issue consumes the one LC and creates it again.
  l.deal().input(lcState(l.notary.party(), applied)).command(lc_issue_command).signedBy(bank).fails("illegal_step");

  l.advises(issued).signedBy(adviser).verifies();
  l.advises(issued).signedBy(bank).fails("missing_signature");
  l.advises(applied).signedBy(adviser).fails("illegal_step");
  l.advises(l.lcAt(LcStatus::advised)).signedBy(adviser).fails("illegal_step");
  {
    LetterOfCredit later = LcLedger::at(issued, LcStatus::advised);
    later.terms.expiryMicros += day_micros;
    l.step(issued, lc_advise_command, later).signedBy(adviser).fails("changed_terms");
  }
}

TEST_CASE("lc amendment: the issuing bank and the applicant propose, only the beneficiary's acceptance makes it") {
  LcLedger l;
  const Actor &a = l.applicant, &b = l.beneficiary, &bank = l.issuer;
  const LetterOfCredit advised = l.lcAt(LcStatus::advised);
  LcTerms bigger = advised.terms;
  bigger.amountMinor += 50000;
  bigger.expiryMicros += 10 * day_micros;

  // Propose: both the bank and the applicant sign; the terms stay as they are.
  l.proposes(advised, bigger).signedBy(bank, a).verifies();
  l.proposes(l.lcAt(LcStatus::issued), bigger).signedBy(bank, a).verifies();
  l.proposes(l.lcAt(LcStatus::refused), bigger).signedBy(bank, a).verifies();
  l.proposes(advised, bigger).signedBy(bank).fails("missing_signature");
  l.proposes(advised, bigger).signedBy(a).fails("missing_signature");
  l.proposes(l.applied(), bigger).signedBy(bank, a).fails("illegal_step");
  l.proposes(l.lcAt(LcStatus::presented), bigger).signedBy(bank, a).fails("illegal_step");
  l.proposes(l.lcAt(LcStatus::paid), bigger).signedBy(bank, a).fails("illegal_step");
  l.proposes(advised, advised.terms).signedBy(bank, a).fails("amendment_empty");
  {
    LcTerms zero = bigger;
    zero.amountMinor = 0;
    l.proposes(advised, zero).signedBy(bank, a).fails("non_positive");
    LcTerms late = bigger;
    late.latestShipmentMicros = late.expiryMicros + 1;
    l.proposes(advised, late).signedBy(bank, a).fails("shipment_after_expiry");
    LcTerms past = bigger;
    past.expiryMicros = t0_micros;
    past.latestShipmentMicros = t0_micros - day_micros;
    l.proposes(advised, past).signedBy(bank, a).fails("expiry_in_past");
    l.proposes(advised, bigger).timeWindow(t0_micros, std::nullopt).signedBy(bank, a).fails("time_window_missing");
    // Below what was paid: an LC partly drawn, refused on its second presentation.
    LetterOfCredit drawn = l.lcAt(LcStatus::refused);
    drawn.paidMinor = 60000;
    LcTerms smaller = drawn.terms;
    smaller.amountMinor = 50000;
    l.proposes(drawn, smaller).signedBy(bank, a).fails("amendment_below_paid");
  }
  LetterOfCredit pending = advised;
  pending.amendment = bigger;
  l.proposes(pending, bigger).signedBy(bank, a).fails("amendment_pending");
  // A proposal that changes the terms at once.
  {
    LetterOfCredit after = advised;
    after.amendment = bigger;
    after.terms = bigger;
    l.step(advised, lc_propose_amendment_command, after).timeWindow(t0_micros, t0_micros + day_micros)
        .signedBy(bank, a).fails("changed_terms");
    l.step(advised, lc_propose_amendment_command, advised).timeWindow(t0_micros, t0_micros + day_micros)
        .signedBy(bank, a).fails("no_amendment");
  }

  // Accept: the beneficiary, all of it.
  l.accepts(pending).signedBy(b).verifies();
  l.accepts(pending).signedBy(bank, a).fails("missing_signature");  // silence is not consent
  {
    LetterOfCredit partial = pending;
    partial.amendment.reset();
    partial.terms.amountMinor = bigger.amountMinor;  // the amount, not the new expiry
    l.step(pending, lc_accept_amendment_command, partial).signedBy(b).fails("partial_acceptance");
    LetterOfCredit stillPending = pending;
    stillPending.terms = bigger;
    l.step(pending, lc_accept_amendment_command, stillPending).signedBy(b).fails("illegal_step");
    LetterOfCredit moved = pending;
    moved.terms = bigger;
    moved.amendment.reset();
    moved.status = LcStatus::presented;
    l.step(pending, lc_accept_amendment_command, moved).signedBy(b).fails("changed_terms");
    l.step(advised, lc_accept_amendment_command, advised).signedBy(b).fails("no_amendment");
  }

  // Reject: the beneficiary; the terms stay.
  l.rejectsAmendment(pending).signedBy(b).verifies();
  l.rejectsAmendment(pending).signedBy(bank).fails("missing_signature");
  l.step(advised, lc_reject_amendment_command, advised).signedBy(b).fails("no_amendment");
  {
    LetterOfCredit after = pending;
    after.amendment.reset();
    after.terms.amountMinor += 1;
    l.step(pending, lc_reject_amendment_command, after).signedBy(b).fails("changed_terms");
  }
}

TEST_CASE("lc present: the beneficiary presents documents by type and hash, only before expiry") {
  LcLedger l;
  const Actor &b = l.beneficiary, &bank = l.issuer;
  const LetterOfCredit advised = l.lcAt(LcStatus::advised);
  const auto docs = l.allDocuments(advised);
  const int64_t amount = advised.terms.amountMinor;
  l.presents(advised, docs, amount).signedBy(b).verifies();
  l.presents(advised, docs, amount / 2).signedBy(b).verifies();
  // Re-presentation after a refusal; a further drawing after a partial payment.
  l.presents(l.lcAt(LcStatus::refused), docs, amount).signedBy(b).verifies();
  {
    LetterOfCredit partly = l.lcAt(LcStatus::paid);
    partly.paidMinor = amount - 100;
    l.presents(partly, docs, 100).signedBy(b).verifies();
    l.presents(partly, docs, 101).signedBy(b).fails("overdrawn");
    l.presents(l.lcAt(LcStatus::paid), docs, 1).signedBy(b).fails("illegal_step");  // fully drawn
  }
  // A presentation drops a pending amendment (a rejection by conduct).
  {
    LetterOfCredit pending = advised;
    pending.amendment = advised.terms;
    pending.amendment->amountMinor += 1;
    l.presents(pending, docs, amount).signedBy(b).verifies();
    LetterOfCredit kept = LcLedger::at(pending, LcStatus::presented);
    kept.presentation = docs;
    kept.drawingMinor = amount;
    l.step(pending, lc_present_command, kept).timeWindow(t0_micros, t0_micros + day_micros).signedBy(b)
        .fails("changed_terms");
  }
  l.presents(advised, docs, amount).signedBy(bank).fails("missing_signature");
  l.presents(l.lcAt(LcStatus::issued), docs, amount).signedBy(b).fails("illegal_step");
  l.presents(l.lcAt(LcStatus::presented), docs, amount).signedBy(b).fails("illegal_step");
  l.presents(l.lcAt(LcStatus::complying), docs, amount).signedBy(b).fails("illegal_step");
  l.presents(advised, {}, amount).signedBy(b).fails("no_documents");
  {
    auto twice = docs;
    twice.push_back(docs[0]);
    l.presents(advised, twice, amount).signedBy(b).fails("duplicate_document");
    auto unhashed = docs;
    unhashed[1].sha256 = SecureHash();
    l.presents(advised, unhashed, amount).signedBy(b).fails("bad_hash");
    auto untyped = docs;
    untyped[0].type = "";
    l.presents(advised, untyped, amount).signedBy(b).fails("missing_field");
  }
  l.presents(advised, docs, 0).signedBy(b).fails("non_positive");
  l.presents(advised, docs, amount + 1).signedBy(b).fails("overdrawn");
  // Expiry, by the time window: ending at the expiry is in time, after it is not.
  l.presents(advised, docs, amount, LcLedger::expiry).signedBy(b).verifies();
  l.presents(advised, docs, amount, LcLedger::expiry + 1).signedBy(b).fails("expired");
  l.presents(advised, docs, amount, LcLedger::expiry + 30 * day_micros).signedBy(b).fails("expired");
  l.presents(advised, docs, amount).timeWindow(t0_micros, std::nullopt).signedBy(b).fails("time_window_missing");
  {
    LetterOfCredit after = LcLedger::at(advised, LcStatus::presented);
    after.presentation = docs;
    after.drawingMinor = amount;
    l.step(advised, lc_present_command, after).signedBy(b).fails("time_window_missing");
    after.terms.expiryMicros += day_micros;
    l.step(advised, lc_present_command, after).timeWindow(t0_micros, t0_micros + day_micros).signedBy(b)
        .fails("changed_terms");
    LetterOfCredit examined = LcLedger::at(after, LcStatus::complying);
    l.step(advised, lc_present_command, examined).timeWindow(t0_micros, t0_micros + day_micros).signedBy(b)
        .fails("illegal_step");
  }
}

TEST_CASE("lc examine, waive, refuse: the bank's findings and the applicant's waiver") {
  LcLedger l;
  const Actor &a = l.applicant, &b = l.beneficiary, &bank = l.issuer;
  const LetterOfCredit presented = l.lcAt(LcStatus::presented);
  l.examines(presented, {}).signedBy(bank).verifies();
  l.examines(presented, {"invoice amount differs from the drawing", "late shipment"}).signedBy(bank).verifies();
  l.examines(presented, {}).signedBy(b).fails("missing_signature");
  l.examines(presented, {}).signedBy(a).fails("missing_signature");
  l.examines(l.lcAt(LcStatus::advised), {}).signedBy(bank).fails("illegal_step");
  l.examines(l.lcAt(LcStatus::complying), {}).signedBy(bank).fails("illegal_step");
  {
    LetterOfCredit missingDoc = presented;
    missingDoc.presentation.pop_back();
    l.examines(missingDoc, {}).signedBy(bank).fails("documents_missing");
    // ... which is a discrepancy the bank may name.
    l.examines(missingDoc, {"no insurance certificate"}).signedBy(bank).verifies();
    LetterOfCredit complyingWithReasons = LcLedger::at(presented, LcStatus::complying);
    complyingWithReasons.discrepancies = {"none really"};
    l.step(presented, lc_examine_command, complyingWithReasons).signedBy(bank).fails("reasons_on_complying");
    l.step(presented, lc_examine_command, LcLedger::at(presented, LcStatus::discrepant)).signedBy(bank)
        .fails("reasons_missing");
    l.examines(presented, {""}).signedBy(bank).fails("missing_field");
    l.examines(presented, std::vector<std::string>(lc_reasons_max + 1, "x")).signedBy(bank).fails("too_many");
    l.step(presented, lc_examine_command, LcLedger::at(presented, LcStatus::paid)).signedBy(bank)
        .fails("illegal_step");
    LetterOfCredit otherDocs = LcLedger::at(presented, LcStatus::complying);
    otherDocs.presentation[0].sha256 = LcLedger::doc("forged");
    l.step(presented, lc_examine_command, otherDocs).signedBy(bank).fails("changed_terms");
  }

  const LetterOfCredit discrepant = l.lcAt(LcStatus::discrepant);
  l.waives(discrepant).signedBy(a).verifies();
  l.waives(discrepant).signedBy(bank).fails("missing_signature");
  l.waives(l.lcAt(LcStatus::complying)).signedBy(a).fails("illegal_step");
  l.waives(l.lcAt(LcStatus::presented)).signedBy(a).fails("illegal_step");
  {
    LetterOfCredit cleared = LcLedger::at(discrepant, LcStatus::waived);
    cleared.drawingMinor += 1;
    l.step(discrepant, lc_waive_command, cleared).signedBy(a).fails("changed_terms");
    l.step(discrepant, lc_waive_command, LcLedger::at(discrepant, LcStatus::complying)).signedBy(a)
        .fails("illegal_step");
  }

  l.refuses(discrepant).signedBy(bank).verifies();
  l.refuses(l.lcAt(LcStatus::waived)).signedBy(bank).verifies();
  l.refuses(discrepant).signedBy(a).fails("missing_signature");
  l.refuses(l.lcAt(LcStatus::complying)).signedBy(bank).fails("illegal_step");
  l.refuses(l.lcAt(LcStatus::paid)).signedBy(bank).fails("illegal_step");
  {
    LetterOfCredit after = LcLedger::at(discrepant, LcStatus::refused);
    after.discrepancies.clear();
    l.step(discrepant, lc_refuse_command, after).signedBy(bank).fails("changed_terms");
  }
}

TEST_CASE("lc pay: the issuing bank pays the drawing in tokens in the same transaction, never above the amount") {
  LcLedger l;
  const Actor &a = l.applicant, &b = l.beneficiary, &bank = l.issuer;
  const LetterOfCredit complying = l.lcAt(LcStatus::complying), waived = l.lcAt(LcStatus::waived);
  l.pays(complying).signedBy(bank, b).issues(bank, 1000_EUR, to(b)).signedBy(bank).verifies();
  l.pays(waived).signedBy(bank, b).issues(bank, 1000_EUR, to(b)).signedBy(bank).verifies();
  // From the bank's own tokens, with change back.
  l.pays(complying).signedBy(bank, b).tokenIn(bank, 1500_EUR).tokenOut(b, 1000_EUR).tokenOut(bank, 500_EUR)
      .command(token_move_command).signedBy(bank).verifies();
  l.pays(complying).signedBy(bank).issues(bank, 1000_EUR, to(b)).signedBy(bank).fails("missing_signature");
  l.pays(complying).signedBy(b).issues(bank, 1000_EUR, to(b)).signedBy(bank).fails("missing_signature");
  l.pays(complying).signedBy(bank, b).fails("payment_missing");
  l.pays(complying).signedBy(bank, b).issues(bank, 1000_CNY, to(b)).signedBy(bank).fails("payment_missing");
  l.pays(complying).signedBy(bank, b).issues(bank, 1000_EUR, to(a)).signedBy(bank).fails("payment_missing");
  l.pays(complying).signedBy(bank, b).issues(bank, 999_EUR, to(b)).signedBy(bank).fails("underpaid");
  // No payment without a complying or waived presentation.
  for (LcStatus s : {LcStatus::advised, LcStatus::presented, LcStatus::discrepant, LcStatus::refused, LcStatus::paid}) {
    CAPTURE(lcStatusName(s));
    l.pays(l.lcAt(s)).signedBy(bank, b).issues(bank, 1000_EUR, to(b)).signedBy(bank).fails("illegal_step");
  }
  // The amount is never exceeded, even by a state that claims more.
  {
    LetterOfCredit greedy = complying;
    greedy.paidMinor = 1;
    l.pays(greedy).signedBy(bank, b).issues(bank, 1000_EUR, to(b)).signedBy(bank).fails("overdrawn");
    LetterOfCredit after = LcLedger::at(complying, LcStatus::paid);
    after.paidMinor = complying.drawingMinor - 1;
    l.step(complying, lc_pay_command, after).signedBy(bank, b).issues(bank, 1000_EUR, to(b)).signedBy(bank)
        .fails("changed_terms");
    l.step(complying, lc_pay_command, LcLedger::at(complying, LcStatus::closed)).signedBy(bank, b)
        .issues(bank, 1000_EUR, to(b)).signedBy(bank).fails("changed_terms");
  }
  // A payment consumes the LC and creates it again, paid.
  l.deal().input(lcState(l.notary.party(), complying)).command(lc_pay_command).signedBy(bank, b)
      .issues(bank, 1000_EUR, to(b)).signedBy(bank).fails("illegal_step");
}

TEST_CASE("lc close: irrevocable until fully drawn, expired, or the beneficiary consents") {
  LcLedger l;
  const Actor &a = l.applicant, &b = l.beneficiary, &bank = l.issuer;
  const int64_t expiry = LcLedger::expiry;
  // Fully drawn: the bank closes alone.
  l.closes(l.lcAt(LcStatus::paid)).signedBy(bank).verifies();
  l.closes(l.lcAt(LcStatus::paid)).signedBy(a).fails("missing_signature");
  // Before expiry, not fully drawn: only with the beneficiary's consent.
  l.closes(l.lcAt(LcStatus::advised)).signedBy(bank).fails("not_expired");
  l.closes(l.lcAt(LcStatus::advised)).timeWindow(expiry - 1, expiry + day_micros).signedBy(bank).fails("not_expired");
  l.closes(l.lcAt(LcStatus::advised)).signedBy(bank, b).verifies();
  l.closes(l.lcAt(LcStatus::advised)).signedBy(b).fails("missing_signature");
  // Expired: the bank alone, unless a presentation awaits examination or payment.
  l.closes(l.lcAt(LcStatus::advised)).timeWindow(expiry, expiry + day_micros).signedBy(bank).verifies();
  l.closes(l.lcAt(LcStatus::refused)).timeWindow(expiry, expiry + day_micros).signedBy(bank).verifies();
  l.closes(l.lcAt(LcStatus::complying)).timeWindow(expiry, expiry + day_micros).signedBy(bank)
      .fails("missing_signature");
  l.closes(l.lcAt(LcStatus::presented)).timeWindow(expiry, expiry + day_micros).signedBy(bank, b).verifies();
  // A pending amendment lapses.
  {
    LetterOfCredit pending = l.lcAt(LcStatus::advised);
    pending.amendment = pending.terms;
    pending.amendment->amountMinor *= 2;
    l.closes(pending).signedBy(bank, b).verifies();
    l.step(pending, lc_close_command, LcLedger::at(pending, LcStatus::closed)).signedBy(bank, b).fails("changed_terms");
  }
  // An application the bank declines: the applicant or the bank closes it.
  l.closes(l.applied()).signedBy(bank).verifies();
  l.closes(l.applied()).signedBy(a).verifies();
  l.closes(l.applied()).signedBy(b).fails("missing_signature");
  // Closed is the end.
  l.closes(l.lcAt(LcStatus::closed)).signedBy(bank, b).fails("illegal_step");
  l.issues(LcLedger::at(l.applied(), LcStatus::closed)).signedBy(bank).fails("illegal_step");
  l.step(l.lcAt(LcStatus::paid), lc_close_command, l.lcAt(LcStatus::paid)).signedBy(bank).fails("illegal_step");
  {
    LetterOfCredit renumbered = l.lcAt(LcStatus::closed);
    renumbered.lcNumber = "LC-2026-002";
    l.step(l.lcAt(LcStatus::paid), lc_close_command, renumbered).signedBy(bank).fails("changed_terms");
  }
}

TEST_CASE("lc lifecycle: application, discrepant presentation, waiver and payment, as one chain of steps") {
  LcLedger l;
  const Actor &a = l.applicant, &b = l.beneficiary, &bank = l.issuer, &adviser = l.adviser;
  LetterOfCredit lc = l.applied(500_EUR);
  l.applies(lc).signedBy(a).verifies();
  l.issues(lc).signedBy(bank).verifies();
  lc.status = LcStatus::issued;
  l.advises(lc).signedBy(adviser).verifies();
  lc.status = LcStatus::advised;
  auto docs = l.allDocuments(lc);
  l.presents(lc, docs, 50000).signedBy(b).verifies();
  lc.status = LcStatus::presented;
  lc.presentation = docs;
  lc.drawingMinor = 50000;
  l.examines(lc, {"bill of lading claused"}).signedBy(bank).verifies();
  lc.status = LcStatus::discrepant;
  lc.discrepancies = {"bill of lading claused"};
  l.pays(lc).signedBy(bank, b).issues(bank, 500_EUR, to(b)).signedBy(bank).fails("illegal_step");
  l.waives(lc).signedBy(a).verifies();
  lc.status = LcStatus::waived;
  l.pays(lc).signedBy(bank, b).issues(bank, 500_EUR, to(b)).signedBy(bank).verifies();
  lc.status = LcStatus::paid;
  lc.paidMinor = 50000;
  l.presents(lc, docs, 1).signedBy(b).fails("illegal_step");
  l.closes(lc).signedBy(bank).verifies();
}
