#include "contracts/letter_of_credit.h"

#include <algorithm>
#include <optional>
#include <set>

#include "contracts/token.h"
#include "ledger/capnp_io.h"
#include "schemas/letter_of_credit.capnp.h"

namespace ccal::contracts {

namespace {

constexpr const char* status_names[] = {"applied",    "issued",     "advised", "presented", "complying",
                                        "discrepant", "waived",     "refused", "paid",      "closed"};
constexpr size_t status_count = sizeof(status_names) / sizeof(status_names[0]);

void writeTerms(schema::lc::LcTerms::Builder b, const LcTerms& t) {
  b.setAmountMinor(t.amountMinor);
  b.setExpiryMicros(t.expiryMicros);
  b.setLatestShipmentMicros(t.latestShipmentMicros);
  auto docs = b.initRequiredDocuments(static_cast<uint32_t>(t.requiredDocuments.size()));
  for (uint32_t i = 0; i < t.requiredDocuments.size(); ++i) docs.set(i, t.requiredDocuments[i]);
}

Result<LcTerms> readTerms(schema::lc::LcTerms::Reader r) {
  LcTerms t;
  t.amountMinor = r.getAmountMinor();
  t.expiryMicros = r.getExpiryMicros();
  t.latestShipmentMicros = r.getLatestShipmentMicros();
  for (auto d : r.getRequiredDocuments()) {
    auto name =
        readText(d, "letter of credit state: a required document's name", text_bounded_by_message);
    if (!name) return name.error();
    t.requiredDocuments.push_back(std::move(name).value());
  }
  return t;
}

}  // namespace

const char* lcStatusName(LcStatus s) {
  const auto i = static_cast<size_t>(s);
  return i < status_count ? status_names[i] : "unknown";
}

std::optional<LcStatus> lcStatusNamed(std::string_view name) {
  for (size_t i = 0; i < status_count; ++i) {
    if (name == status_names[i]) return static_cast<LcStatus>(i);
  }
  return std::nullopt;
}

Bytes encodeLetterOfCredit(const LetterOfCredit& lc) {
  return buildCanonical<schema::lc::LetterOfCreditState>([&](auto b) {
    b.setLinearId(asData(lc.linearId.view()));
    b.setLcNumber(lc.lcNumber);
    lc.applicant.write(b.initApplicant());
    lc.beneficiary.write(b.initBeneficiary());
    lc.issuingBank.write(b.initIssuingBank());
    lc.advisingBank.write(b.initAdvisingBank());
    b.setCurrency(lc.currency);
    writeTerms(b.initTerms(), lc.terms);
    b.setStatus(static_cast<schema::lc::LcStatus>(static_cast<uint16_t>(lc.status)));
    auto reasons = b.initDiscrepancies(static_cast<uint32_t>(lc.discrepancies.size()));
    for (uint32_t i = 0; i < lc.discrepancies.size(); ++i) reasons.set(i, lc.discrepancies[i]);
    b.setHasAmendment(lc.amendment.has_value());
    if (lc.amendment) writeTerms(b.initAmendment(), *lc.amendment);
    auto docs = b.initPresentation(static_cast<uint32_t>(lc.presentation.size()));
    for (uint32_t i = 0; i < lc.presentation.size(); ++i) {
      docs[i].setDocumentType(lc.presentation[i].type);
      docs[i].setSha256(asData(lc.presentation[i].sha256.view()));
    }
    b.setDrawingMinor(lc.drawingMinor);
    b.setPaidMinor(lc.paidMinor);
  });
}

Result<LetterOfCredit> decodeLetterOfCredit(ByteView bytes) {
  return decodeMessage<schema::lc::LetterOfCreditState>(
      bytes, "letter of credit state", Canonical::required, [](auto r) -> Result<LetterOfCredit> {
        LetterOfCredit lc;
        auto id = SecureHash::fromBytes(asByteView(r.getLinearId()));
        if (!id) return id.error();
        lc.linearId = *id;
        CCAL_TRY_ASSIGN(lc.lcNumber,
                        readText(r.getLcNumber(), "letter of credit state: the LC number",
                                 text_bounded_by_message));
        auto applicant = Key::read(r.getApplicant());
        if (!applicant) return applicant.error();
        auto beneficiary = Key::read(r.getBeneficiary());
        if (!beneficiary) return beneficiary.error();
        auto issuing = Key::read(r.getIssuingBank());
        if (!issuing) return issuing.error();
        auto advising = Key::read(r.getAdvisingBank());
        if (!advising) return advising.error();
        lc.applicant = *applicant;
        lc.beneficiary = *beneficiary;
        lc.issuingBank = *issuing;
        lc.advisingBank = *advising;
        CCAL_TRY_ASSIGN(lc.currency, readText(r.getCurrency(), "letter of credit state: currency",
                                              text_bounded_by_message));
        auto terms = readTerms(r.getTerms());
        if (!terms) return terms.error();
        lc.terms = std::move(terms).value();
        const auto status = static_cast<size_t>(r.getStatus());
        if (status >= status_count) {
          return makeError(Errc::malformed, "letter of credit state: unknown status " + std::to_string(status));
        }
        lc.status = static_cast<LcStatus>(status);
        for (auto d : r.getDiscrepancies()) {
          auto reason =
              readText(d, "letter of credit state: a discrepancy", text_bounded_by_message);
          if (!reason) return reason.error();
          lc.discrepancies.push_back(std::move(reason).value());
        }
        if (r.getHasAmendment()) {
          auto amendment = readTerms(r.getAmendment());
          if (!amendment) return amendment.error();
          lc.amendment = std::move(amendment).value();
        }
        for (auto d : r.getPresentation()) {
          auto h = SecureHash::fromBytes(asByteView(d.getSha256()));
          if (!h) return makeError(Errc::malformed, "letter of credit state: a document hash is not 32 bytes");
          auto type =
              readText(d.getDocumentType(), "letter of credit state: a presented document's type",
                       text_bounded_by_message);
          if (!type) return type.error();
          lc.presentation.push_back(LcDocument{std::move(type).value(), *h});
        }
        lc.drawingMinor = r.getDrawingMinor();
        lc.paidMinor = r.getPaidMinor();
        return lc;
      });
}

TransactionState lcState(const Party& notary, const LetterOfCredit& lc) {
  TransactionState s;
  s.contract = std::string(lc_contract);
  s.stateType = std::string(lc_state_type);
  s.data = encodeLetterOfCredit(lc);
  s.participants = {lc.applicant, lc.issuingBank};
  if (lc.status != LcStatus::applied && lc.advisingBank != lc.issuingBank) s.participants.push_back(lc.advisingBank);
  if (lc.status != LcStatus::applied && lc.status != LcStatus::issued) s.participants.push_back(lc.beneficiary);
  s.notary = notary;
  s.constraint.codeHash = Contract::codeIdentity(lc_contract, 1);
  return s;
}

SecureHash lcLinearId(const Key& applicant, const std::string& lc_number) {
  const std::string_view tag = "ccal.lc.linear";
  Bytes b(tag.begin(), tag.end());
  b.push_back(0);
  const SecureHash k = applicant.hash();
  b.insert(b.end(), k.bytes().begin(), k.bytes().end());
  b.insert(b.end(), lc_number.begin(), lc_number.end());
  return SecureHash::of(b);
}

std::vector<FieldDecl> LetterOfCreditSchema::fields() const {
  return {{"lc", FieldType::text},          {"amount", FieldType::int64},  {"currency", FieldType::text},
          {"applicant", FieldType::hash},   {"beneficiary", FieldType::hash}, {"issuer", FieldType::hash},
          {"adviser", FieldType::hash},     {"status", FieldType::text},   {"expiry", FieldType::time}};
}

Result<StateView> LetterOfCreditSchema::view(const TransactionState& state) const {
  auto lc = decodeLetterOfCredit(state.data);
  if (!lc) return lc.error();
  StateView v;
  v.linearId = lc->linearId;
  v.fields = {{"lc", lc->lcNumber},
              {"amount", lc->terms.amountMinor},
              {"currency", lc->currency},
              {"applicant", lc->applicant.hash()},
              {"beneficiary", lc->beneficiary.hash()},
              {"issuer", lc->issuingBank.hash()},
              {"adviser", lc->advisingBank.hash()},
              {"status", std::string(lcStatusName(lc->status))},
              {"expiry", lc->terms.expiryMicros}};
  return v;
}

// --- verification ------------------------------------------------------------------------------

namespace {

Verdict reject(std::string code, std::string message) { return Verdict::reject(std::move(code), std::move(message)); }

std::string lcName(const LetterOfCredit& lc) { return "letter of credit " + lc.lcNumber; }

bool in(LcStatus s, std::initializer_list<LcStatus> allowed) {
  return std::find(allowed.begin(), allowed.end(), s) != allowed.end();
}

Verdict illegal(const LetterOfCredit& lc, const std::string& step, const std::string& allowed) {
  return reject("illegal_step", "cannot " + step + " " + lcName(lc) + ": it is " + lcStatusName(lc.status) +
                                    " (allowed from " + allowed + ")");
}

// Everything but the status and what the step itself changes is kept: the
// parties, the number, the currency and the linear id always.
bool sameIdentity(const LetterOfCredit& a, const LetterOfCredit& b) {
  return a.linearId == b.linearId && a.lcNumber == b.lcNumber && a.applicant == b.applicant &&
         a.beneficiary == b.beneficiary && a.issuingBank == b.issuingBank && a.advisingBank == b.advisingBank &&
         a.currency == b.currency;
}

// The document types of a list: each non-empty, bounded and named once.
Verdict checkDocumentTypes(const std::vector<std::string>& types, const std::string& what) {
  if (types.size() > lc_documents_max) {
    return reject("too_many", what + " has more than " + std::to_string(lc_documents_max) + " documents");
  }
  std::set<std::string> seen;
  for (const std::string& t : types) {
    if (t.empty()) return reject("missing_field", what + " names a document without a type");
    if (t.size() > lc_text_bytes_max) {
      return reject("too_many", what + ": document type longer than " + std::to_string(lc_text_bytes_max) + " bytes");
    }
    if (!seen.insert(t).second) return reject("duplicate_document", what + " names document type '" + t + "' twice");
  }
  return Verdict::accept();
}

// Terms on their own: amount positive, documents well formed, shipment not
// after expiry.
Verdict checkTerms(const LcTerms& t, const std::string& what) {
  if (t.amountMinor <= 0) return reject("non_positive", what + ": the amount must be positive, not " + std::to_string(t.amountMinor));
  if (t.requiredDocuments.empty()) return reject("no_documents", what + " requires no document");
  if (auto v = checkDocumentTypes(t.requiredDocuments, what); !v.accepted) return v;
  if (t.latestShipmentMicros > t.expiryMicros) {
    return reject("shipment_after_expiry", what + ": the latest shipment date is after the expiry");
  }
  return Verdict::accept();
}

Verdict checkExpiryAhead(const LedgerTransaction& tx, int64_t expiry, const std::string& what) {
  const auto& tw = tx.timeWindow();
  if (!tw || !tw->untilMicros) return reject("time_window_missing", what + " needs a time window with an end");
  if (expiry < *tw->untilMicros) return reject("expiry_in_past", what + ": the expiry is before the end of the time window");
  return Verdict::accept();
}

Verdict needs(const Command& cmd, const Key& key, const std::string& who, const std::string& what) {
  if (signedBy(cmd, key)) return Verdict::accept();
  return reject("missing_signature", who + " must sign " + what);
}

// A fresh LC as Apply creates it: status applied, nothing presented, paid,
// pending or found yet.
bool pristine(const LetterOfCredit& lc) {
  return lc.status == LcStatus::applied && lc.discrepancies.empty() && !lc.amendment && lc.presentation.empty() &&
         lc.drawingMinor == 0 && lc.paidMinor == 0;
}

// Every field but the status equal.
bool onlyStatusChanged(LetterOfCredit before, const LetterOfCredit& after) {
  before.status = after.status;
  return before == after;
}

Verdict verifyApply(const LedgerTransaction& tx, const Command& cmd, const LetterOfCredit& lc) {
  if (!pristine(lc)) return reject("illegal_step", "an application creates " + lcName(lc) + " applied, with nothing presented, paid or pending");
  if (lc.lcNumber.empty()) return reject("missing_field", "a letter of credit names its number");
  if (lc.lcNumber.size() > lc_text_bytes_max) return reject("too_many", "an LC number is longer than " + std::to_string(lc_text_bytes_max) + " bytes");
  if (!validCurrency(lc.currency)) return reject("bad_currency", "currency '" + lc.currency + "' is not three capital letters");
  if (lc.applicant == lc.beneficiary || lc.applicant == lc.issuingBank || lc.beneficiary == lc.issuingBank ||
      lc.advisingBank == lc.applicant || lc.advisingBank == lc.beneficiary) {
    return reject("same_party", lcName(lc) + ": applicant, beneficiary and issuing bank are three parties, and the "
                                           "advising bank is neither applicant nor beneficiary");
  }
  if (auto v = checkTerms(lc.terms, lcName(lc)); !v.accepted) return v;
  if (auto v = checkExpiryAhead(tx, lc.terms.expiryMicros, "the application of " + lcName(lc)); !v.accepted) return v;
  return needs(cmd, lc.applicant, "the applicant", "its application");
}

Verdict verifyProposal(const LedgerTransaction& tx, const Command& cmd, const LetterOfCredit& before,
                       const LetterOfCredit& after) {
  if (!in(before.status, {LcStatus::issued, LcStatus::advised, LcStatus::refused})) {
    return illegal(before, "amend", "issued, advised or refused");
  }
  if (before.amendment) return reject("amendment_pending", lcName(before) + " has an amendment pending already");
  if (!after.amendment) return reject("no_amendment", "a proposal creates " + lcName(before) + " with its amendment pending");
  LetterOfCredit kept = after;
  kept.amendment.reset();
  if (kept != before) return reject("changed_terms", "a proposal changes nothing until the beneficiary accepts");
  const LcTerms& a = *after.amendment;
  if (a == before.terms) return reject("amendment_empty", "the amendment of " + lcName(before) + " changes nothing");
  if (auto v = checkTerms(a, "the amendment of " + lcName(before)); !v.accepted) return v;
  if (a.amountMinor < before.paidMinor) {
    return reject("amendment_below_paid", "the amendment of " + lcName(before) + " lowers the amount below the " +
                                              std::to_string(before.paidMinor) + " paid");
  }
  if (a.expiryMicros != before.terms.expiryMicros) {
    if (auto v = checkExpiryAhead(tx, a.expiryMicros, "the amendment of " + lcName(before)); !v.accepted) return v;
  }
  if (auto v = needs(cmd, before.issuingBank, "the issuing bank", "an amendment"); !v.accepted) return v;
  return needs(cmd, before.applicant, "the applicant", "an amendment it asks for");
}

Verdict verifyAcceptance(const Command& cmd, const LetterOfCredit& before, const LetterOfCredit& after) {
  if (!before.amendment) return reject("no_amendment", lcName(before) + " has no amendment pending");
  if (after.amendment) return reject("illegal_step", "an accepted amendment is no longer pending");
  LetterOfCredit expected = before;
  expected.terms = *before.amendment;
  expected.amendment.reset();
  if (after.terms != expected.terms) {
    return reject("partial_acceptance", "the beneficiary accepts the amendment of " + lcName(before) +
                                            " whole or not at all: accepting part of it is a rejection");
  }
  if (after != expected) return reject("changed_terms", "accepting an amendment changes only the terms it names");
  return needs(cmd, before.beneficiary, "the beneficiary", "its acceptance of an amendment");
}

Verdict verifyRejection(const Command& cmd, const LetterOfCredit& before, const LetterOfCredit& after) {
  if (!before.amendment) return reject("no_amendment", lcName(before) + " has no amendment pending");
  LetterOfCredit expected = before;
  expected.amendment.reset();
  if (after != expected) return reject("changed_terms", "rejecting an amendment keeps the terms and drops the amendment");
  return needs(cmd, before.beneficiary, "the beneficiary", "its rejection of an amendment");
}

Verdict verifyPresentation(const LedgerTransaction& tx, const Command& cmd, const LetterOfCredit& before,
                           const LetterOfCredit& after) {
  const int64_t undrawn = before.terms.amountMinor - before.paidMinor;
  const bool can_present = in(before.status, {LcStatus::advised, LcStatus::refused}) ||
                           (before.status == LcStatus::paid && undrawn > 0);
  if (!can_present) return illegal(before, "present documents under", "advised, refused, or paid with an undrawn balance");
  LetterOfCredit kept = after;
  kept.presentation = before.presentation;
  kept.drawingMinor = before.drawingMinor;
  kept.discrepancies = before.discrepancies;
  kept.amendment = before.amendment;  // a presentation drops a pending amendment
  if (!onlyStatusChanged(before, kept) || after.amendment || !after.discrepancies.empty()) {
    return reject("changed_terms", "a presentation adds documents and a drawing, drops a pending amendment "
                                   "and clears earlier reasons; nothing else changes");
  }
  if (after.presentation.empty()) return reject("no_documents", "a presentation under " + lcName(before) + " has no document");
  std::vector<std::string> types;
  for (const LcDocument& d : after.presentation) types.push_back(d.type);
  if (auto v = checkDocumentTypes(types, "the presentation under " + lcName(before)); !v.accepted) return v;
  for (const LcDocument& d : after.presentation) {
    if (d.sha256 == SecureHash()) return reject("bad_hash", "document '" + d.type + "' has no SHA-256");
  }
  if (after.drawingMinor <= 0) return reject("non_positive", "a presentation draws a positive amount");
  if (after.drawingMinor > undrawn) {
    return reject("overdrawn", "a drawing of " + std::to_string(after.drawingMinor) + " " + before.currency +
                                   " exceeds the undrawn " + std::to_string(undrawn) + " of " + lcName(before));
  }
  const auto& tw = tx.timeWindow();
  if (!tw || !tw->untilMicros) return reject("time_window_missing", "a presentation needs a time window with an end");
  if (*tw->untilMicros > before.terms.expiryMicros) {
    return reject("expired", "documents are presented under " + lcName(before) +
                                 " only before its expiry; the time window ends after it");
  }
  return needs(cmd, before.beneficiary, "the beneficiary", "its presentation");
}

Verdict verifyExamination(const Command& cmd, const LetterOfCredit& before, const LetterOfCredit& after) {
  if (before.status != LcStatus::presented) return illegal(before, "examine", "presented");
  LetterOfCredit kept = after;
  kept.discrepancies = before.discrepancies;
  if (!onlyStatusChanged(before, kept)) return reject("changed_terms", "an examination adds its findings only");
  if (after.status == LcStatus::complying) {
    if (!after.discrepancies.empty()) return reject("reasons_on_complying", "a complying presentation has no discrepancies");
    for (const std::string& required : before.terms.requiredDocuments) {
      const bool found = std::any_of(before.presentation.begin(), before.presentation.end(),
                                     [&required](const LcDocument& d) { return d.type == required; });
      if (!found) {
        return reject("documents_missing", "a presentation without the required '" + required + "' under " +
                                               lcName(before) + " does not comply");
      }
    }
  } else if (after.status == LcStatus::discrepant) {
    if (after.discrepancies.empty()) return reject("reasons_missing", "a discrepant finding names its reasons");
    if (after.discrepancies.size() > lc_reasons_max) {
      return reject("too_many", "more than " + std::to_string(lc_reasons_max) + " discrepancies");
    }
    for (const std::string& r : after.discrepancies) {
      if (r.empty() || r.size() > lc_text_bytes_max) {
        return reject("missing_field", "a discrepancy is a reason of 1.." + std::to_string(lc_text_bytes_max) + " bytes");
      }
    }
  } else {
    return reject("illegal_step", "an examination finds a presentation complying or discrepant, not " +
                                      std::string(lcStatusName(after.status)));
  }
  return needs(cmd, before.issuingBank, "the issuing bank", "its examination");
}

Verdict verifyPayment(const LedgerTransaction& tx, const Command& cmd, const LetterOfCredit& before,
                      const LetterOfCredit& after) {
  if (!in(before.status, {LcStatus::complying, LcStatus::waived})) {
    return illegal(before, "pay", "complying, or discrepant and waived");
  }
  LetterOfCredit expected = before;
  expected.status = LcStatus::paid;
  auto paid = addChecked(before.paidMinor, before.drawingMinor);
  if (!paid || *paid > before.terms.amountMinor) {
    return reject("overdrawn", "paying " + std::to_string(before.drawingMinor) + " would exceed the amount of " + lcName(before));
  }
  expected.paidMinor = *paid;
  if (after != expected) return reject("changed_terms", "a payment adds the drawing to what was paid; nothing else changes");
  if (auto v = needs(cmd, before.issuingBank, "the issuing bank", "its payment"); !v.accepted) return v;
  if (auto v = needs(cmd, before.beneficiary, "the beneficiary", "its receipt of the payment"); !v.accepted) return v;
  auto net = netTokensTo(tx, before.beneficiary, before.currency);
  if (!net || *net <= 0) {
    return reject("payment_missing", "the beneficiary of " + lcName(before) + " receives no " + before.currency +
                                         " tokens in the payment's transaction");
  }
  if (*net < before.drawingMinor) {
    return reject("underpaid", "the beneficiary receives " + std::to_string(*net) + " of the " +
                                   std::to_string(before.drawingMinor) + " " + before.currency + " drawn");
  }
  return Verdict::accept();
}

Verdict verifyClose(const LedgerTransaction& tx, const Command& cmd, const LetterOfCredit& before,
                    const LetterOfCredit& after) {
  if (before.status == LcStatus::applied) {
    // An application the bank declines: applicant or bank closes it.
    if (!onlyStatusChanged(before, after)) return reject("changed_terms", "closing changes only the status");
    if (signedBy(cmd, before.issuingBank) || signedBy(cmd, before.applicant)) return Verdict::accept();
    return reject("missing_signature", "the issuing bank or the applicant must sign the closing of an application");
  }
  LetterOfCredit kept = after;
  kept.amendment = before.amendment;  // a pending amendment lapses
  if (!onlyStatusChanged(before, kept) || after.amendment) {
    return reject("changed_terms", "closing changes only the status (and drops a pending amendment)");
  }
  if (auto v = needs(cmd, before.issuingBank, "the issuing bank", "the closing"); !v.accepted) return v;
  if (signedBy(cmd, before.beneficiary)) return Verdict::accept();
  if (before.paidMinor >= before.terms.amountMinor) return Verdict::accept();
  const auto& tw = tx.timeWindow();
  const bool expired = tw && tw->fromMicros && *tw->fromMicros >= before.terms.expiryMicros;
  if (!expired) {
    return reject("not_expired", lcName(before) + " is irrevocable: before its expiry and not fully drawn it closes only "
                                                "with the beneficiary's signature (a time window from the expiry on "
                                                "shows it expired)");
  }
  if (in(before.status, {LcStatus::presented, LcStatus::complying, LcStatus::waived, LcStatus::discrepant})) {
    return reject("missing_signature", "a presentation under " + lcName(before) +
                                           " awaits examination or payment: the beneficiary must sign its closing");
  }
  return Verdict::accept();
}

}  // namespace

Verdict LetterOfCreditContract::verify(const LedgerTransaction& tx) const {
  auto commands = tx.commandsOf("ccal.lc.");
  if (commands.size() != 1) {
    return reject("one_command", "a transaction with letter-of-credit states needs exactly one ccal.lc command, not " +
                                     std::to_string(commands.size()));
  }
  const Command& cmd = *commands[0];
  std::vector<LetterOfCredit> ins, outs;
  for (const auto* s : tx.inputsOf(lc_contract)) {
    if (s->stateType != lc_state_type) return reject("bad_state", "a ccal.lc state has type '" + s->stateType + "'");
    auto lc = decodeLetterOfCredit(s->data);
    if (!lc) return reject("bad_state", "a letter of credit does not decode: " + lc.error().message);
    ins.push_back(std::move(lc).value());
  }
  for (const auto* s : tx.outputsOf(lc_contract)) {
    if (s->stateType != lc_state_type) return reject("bad_state", "a ccal.lc state has type '" + s->stateType + "'");
    auto lc = decodeLetterOfCredit(s->data);
    if (!lc) return reject("bad_state", "a letter of credit does not decode: " + lc.error().message);
    outs.push_back(std::move(lc).value());
  }

  if (cmd.type == lc_apply_command) {
    if (!ins.empty() || outs.size() != 1) {
      return reject("illegal_step", "an application consumes no letter of credit and creates one");
    }
    return verifyApply(tx, cmd, outs[0]);
  }

  const bool known = cmd.type == lc_issue_command || cmd.type == lc_advise_command ||
                     cmd.type == lc_propose_amendment_command || cmd.type == lc_accept_amendment_command ||
                     cmd.type == lc_reject_amendment_command || cmd.type == lc_present_command ||
                     cmd.type == lc_examine_command || cmd.type == lc_waive_command ||
                     cmd.type == lc_refuse_command || cmd.type == lc_pay_command || cmd.type == lc_close_command;
  if (!known) return reject("unknown_command", "unknown letter-of-credit command '" + cmd.type + "'");
  if (ins.size() != 1 || outs.size() != 1) {
    return reject("illegal_step", "a " + cmd.type + " consumes one letter of credit and creates it again");
  }
  const LetterOfCredit& before = ins[0];
  const LetterOfCredit& after = outs[0];
  if (!sameIdentity(before, after)) {
    return reject("changed_terms", "the parties, number, currency and linear id of " + lcName(before) + " never change");
  }
  if (before.status == LcStatus::closed) return illegal(before, "change", "any status but closed");

  // Steps whose status after is fixed.
  auto expectStatus = [&after, &before](LcStatus s) -> Verdict {
    if (after.status == s) return Verdict::accept();
    return reject("illegal_step", "the step leaves " + lcName(before) + " " + lcStatusName(s) + ", not " +
                                      lcStatusName(after.status));
  };

  if (cmd.type == lc_issue_command) {
    if (before.status != LcStatus::applied) return illegal(before, "issue", "applied");
    if (auto v = expectStatus(LcStatus::issued); !v.accepted) return v;
    if (!onlyStatusChanged(before, after)) return reject("changed_terms", "the bank issues the terms applied for");
    return needs(cmd, before.issuingBank, "the issuing bank", "the issue");
  }
  if (cmd.type == lc_advise_command) {
    if (before.status != LcStatus::issued) return illegal(before, "advise", "issued");
    if (auto v = expectStatus(LcStatus::advised); !v.accepted) return v;
    if (!onlyStatusChanged(before, after)) return reject("changed_terms", "advising changes only the status");
    return needs(cmd, before.advisingBank, "the advising bank", "its advice");
  }
  if (cmd.type == lc_propose_amendment_command) {
    return verifyProposal(tx, cmd, before, after);
  }
  if (cmd.type == lc_accept_amendment_command) {
    return verifyAcceptance(cmd, before, after);
  }
  if (cmd.type == lc_reject_amendment_command) {
    return verifyRejection(cmd, before, after);
  }
  if (cmd.type == lc_present_command) {
    if (auto v = expectStatus(LcStatus::presented); !v.accepted) return v;
    return verifyPresentation(tx, cmd, before, after);
  }
  if (cmd.type == lc_examine_command) {
    return verifyExamination(cmd, before, after);
  }
  if (cmd.type == lc_waive_command) {
    if (before.status != LcStatus::discrepant) return illegal(before, "waive discrepancies of", "discrepant");
    if (auto v = expectStatus(LcStatus::waived); !v.accepted) return v;
    if (!onlyStatusChanged(before, after)) return reject("changed_terms", "a waiver changes only the status");
    return needs(cmd, before.applicant, "the applicant", "its waiver");
  }
  if (cmd.type == lc_refuse_command) {
    if (!in(before.status, {LcStatus::discrepant, LcStatus::waived})) {
      return illegal(before, "refuse", "discrepant or waived");
    }
    if (auto v = expectStatus(LcStatus::refused); !v.accepted) return v;
    if (!onlyStatusChanged(before, after)) return reject("changed_terms", "a refusal changes only the status");
    return needs(cmd, before.issuingBank, "the issuing bank", "its refusal");
  }
  if (cmd.type == lc_pay_command) {
    return verifyPayment(tx, cmd, before, after);
  }
  // Close.
  if (auto v = expectStatus(LcStatus::closed); !v.accepted) return v;
  return verifyClose(tx, cmd, before, after);
}

}  // namespace ccal::contracts
