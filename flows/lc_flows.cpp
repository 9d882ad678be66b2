#include "flows/lc_flows.h"

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <set>

#include "contracts/contracts.h"
#include "ledger/assert.h"
#include "ledger/capnp_io.h"
#include "schemas/contracts_flows.capnp.h"

namespace ccal::flows {

using namespace ccal::contracts;
using detail::CallDone;
using detail::CallOp;

inline constexpr int64_t lc_day_micros = 86'400'000'000LL;

// --- arguments ----------------------------------------------------------------------------

const std::vector<DealFlowSpec>& lcFlowSpecs() {
  static const std::vector<DealFlowSpec> specs = {
      {lc_apply_deal,
       "the applicant (this node) applies to its bank for a letter of credit",
       {{"lc", ArgType::text, true, "the letter of credit's number"},
        {"bank", ArgType::party, true, "the issuing bank"},
        {"beneficiary", ArgType::party, true, "the seller the LC pays"},
        {"adviser", ArgType::party, false, "the advising bank (default: the issuing bank)"},
        {"amount", ArgType::amount, true, "minor units"},
        {"currency", ArgType::currency, true, "e.g. CNY"},
        {"expiry", ArgType::date, true, "YYYY-MM-DD: documents are presented by the end of this day (UTC)"},
        {"shipment", ArgType::date, true, "YYYY-MM-DD: the latest shipment date"},
        {"documents", ArgType::parties, true, "required document types separated by ';'"},
        {"notary", ArgType::party, false, "the notary (default: the node's)"}}},
      {lc_issue_deal, "the issuing bank (this node) issues an applied letter of credit",
       {{"lc", ArgType::text, true, "the letter of credit's number"}}},
      {lc_advise_deal, "the advising bank (this node) advises a letter of credit to its beneficiary",
       {{"lc", ArgType::text, true, "the letter of credit's number"}}},
      {lc_amend_deal,
       "propose (applicant, with the issuing bank) or accept / reject (beneficiary) an amendment",
       {{"lc", ArgType::text, true, "the letter of credit's number"},
        {"action", ArgType::text, true, "propose, accept or reject"},
        {"amount", ArgType::amount, false, "propose: the new amount"},
        {"expiry", ArgType::date, false, "propose: the new expiry date"},
        {"shipment", ArgType::date, false, "propose: the new latest shipment date"},
        {"documents", ArgType::parties, false, "propose: the new required document types"}}},
      {lc_present_deal,
       "the beneficiary (this node) presents documents under a letter of credit",
       {{"lc", ArgType::text, true, "the letter of credit's number"},
        {"documents", ArgType::parties, true, "type:sha256hex pairs separated by ';'"},
        {"amount", ArgType::amount, false, "the drawing (default: the undrawn balance)"}}},
      {lc_examine_deal,
       "the issuing bank (this node) examines a presentation",
       {{"lc", ArgType::text, true, "the letter of credit's number"},
        {"result", ArgType::text, true, "complying or discrepant"},
        {"reasons", ArgType::parties, false, "discrepant: the reasons separated by ';'"}}},
      {lc_waive_deal, "the applicant (this node) waives the discrepancies",
       {{"lc", ArgType::text, true, "the letter of credit's number"}}},
      {lc_refuse_deal, "the issuing bank (this node) refuses a discrepant presentation",
       {{"lc", ArgType::text, true, "the letter of credit's number"}}},
      {lc_pay_deal, "the issuing bank (this node) pays the drawing to the beneficiary in its tokens",
       {{"lc", ArgType::text, true, "the letter of credit's number"}}},
      {lc_close_deal, "the issuing bank (this node) closes a letter of credit",
       {{"lc", ArgType::text, true, "the letter of credit's number"}}},
  };
  return specs;
}

Result<std::vector<std::pair<std::string, SecureHash>>> parseLcDocuments(std::string_view text) {
  std::vector<std::pair<std::string, SecureHash>> out;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find(';', start);
    if (end == std::string_view::npos) end = text.size();
    const std::string_view item = text.substr(start, end - start);
    const size_t colon = item.rfind(':');
    if (colon == std::string_view::npos || colon == 0) {
      return makeError(Errc::malformed, "document '" + std::string(item) + "' is not type:sha256hex");
    }
    auto h = SecureHash::fromHex(item.substr(colon + 1));
    if (!h) {
      return makeError(Errc::malformed, "document '" + std::string(item.substr(0, colon)) +
                                            "': its hash is not 64 hex digits of a SHA-256");
    }
    out.emplace_back(std::string(item.substr(0, colon)), *h);
    start = end + 1;
  }
  return out;
}

namespace {

// --- helpers ------------------------------------------------------------------------------

struct Shared {
  const FlowServices* svc;
  DealConfig config;
  LcPolicy policy;
};

// The end of a YYYY-MM-DD day (UTC): midnight of the next day.
int64_t endOfDay(const DealArgs& args, std::string_view name) {
  return parseDateMicros(args.at(std::string(name))).value() + lc_day_micros;
}

std::string lcText(const LetterOfCredit& lc) { return "letter of credit " + lc.lcNumber; }

// Document types of an argument: non-empty (the table checks), each once,
// at most lc_documents_max.
std::vector<std::string> documentTypes(const DealArgs& args, std::string_view name) {
  std::vector<std::string> types = argParties(args, name);
  if (types.size() > lc_documents_max) {
    failFlow(Errc::malformed, "argument '" + std::string(name) + "': more than " +
                                  std::to_string(lc_documents_max) + " documents");
  }
  std::set<std::string> seen;
  for (const auto& t : types) {
    if (!seen.insert(t).second) {
      failFlow(Errc::malformed, "argument '" + std::string(name) + "': document type '" + t + "' given twice");
    }
  }
  return types;
}

// This node's one live (not closed) LC of `number` in which it holds `role`
// (a declared hash field: applicant, beneficiary, issuer, adviser).
Flow<std::pair<StateAndRef, LetterOfCredit>> findLc(FlowContext& ctx, const FlowServices& svc, std::string number,
                                                    std::string role) {
  const std::string type(lc_state_type);
  vault::Criteria c = vault::Criteria::field(type, "lc", vault::FieldOp::eq, {number}) &&
                      vault::Criteria::field(type, role, vault::FieldOp::eq, {svc.identity.owningKey.hash()});
  std::vector<StateAndRef> found = co_await queryStates(ctx, svc, "vault.lettersOfCredit", c);
  std::vector<std::pair<StateAndRef, LetterOfCredit>> live;
  for (auto& s : found) {
    auto lc = decodeLetterOfCredit(s.state.data);
    if (lc && lc->status != LcStatus::closed) live.emplace_back(std::move(s), std::move(lc).value());
  }
  if (live.empty()) {
    failFlow(Errc::not_found, "no live letter of credit " + number + " with this node as " + role);
  }
  if (live.size() > 1) failFlow(Errc::conflict, "more than one live letter of credit " + number);
  co_return std::move(live[0]);
}

void requireStatus(const LetterOfCredit& lc, std::initializer_list<LcStatus> allowed, const std::string& step) {
  if (std::find(allowed.begin(), allowed.end(), lc.status) != allowed.end()) return;
  std::string names;
  for (LcStatus s : allowed) names += std::string(names.empty() ? "" : " or ") + lcStatusName(s);
  failFlow(Errc::forbidden, "cannot " + step + " " + lcText(lc) + ": it is " + lcStatusName(lc.status) +
                                " (needs " + names + ")");
}

struct Step {
  StateAndRef in;
  LetterOfCredit after;
  std::string_view command;
  std::vector<Key> signers;
  std::optional<TimeWindow> window;
  std::string check;  // the business check the other signers apply
  std::vector<TransactionState> extraOutputs;
  std::vector<Command> extraCommands;
};

// Builds, signs (collecting the other signers' signatures), notarises and
// distributes one LC step; the transaction id.
Flow<Bytes> finishStep(FlowContext& ctx, const FlowServices& svc, Step step) {
  const Party notary = step.in.state.notary;
  TransactionBuilder b(notary);
  b.addInput(step.in.ref);
  b.addOutput(lcState(notary, step.after));
  for (auto& o : step.extraOutputs) b.addOutput(std::move(o));
  b.addCommand(Command{std::string(step.command), {}, step.signers});
  for (auto& c : step.extraCommands) b.addCommand(std::move(c));
  if (step.window) b.setTimeWindow(*step.window);
  Bytes salt = co_await privacySalt(ctx);
  b.setPrivacySalt(salt);
  auto wtx = b.build();
  if (!wtx) throw FlowFailure(wtx.error());
  SignedTransaction stx(std::move(wtx).value());
  stx = co_await collectSignatures(ctx, svc, std::move(stx), std::move(step.check));
  std::vector<std::string> none;
  stx = co_await finality(ctx, svc, std::move(stx), none);
  co_return idBytes(stx.id());
}

TimeWindow windowAround(const Shared& sh, int64_t now) {
  return TimeWindow{now - sh.config.clock_skew_micros_max, now + sh.config.time_window_micros};
}

// --- flows ----------------------------------------------------------------------------------

Flow<Bytes> applyFlow(FlowContext& ctx, std::shared_ptr<const Shared> sh, Bytes raw) {
  const FlowServices& svc = *sh->svc;
  const DealArgs args = dealArgsOf(lc_apply_deal, raw);
  const Key me = svc.identity.owningKey;
  const Party bank = partyNamed(svc, args.at("bank"), "bank");
  const Party beneficiary = partyNamed(svc, args.at("beneficiary"), "beneficiary");
  const Party adviser = args.count("adviser") ? partyNamed(svc, args.at("adviser"), "adviser") : bank;
  if (bank.owningKey == me) failFlow(Errc::malformed, "argument 'bank': the applicant cannot issue its own LC");
  if (beneficiary.owningKey == me || beneficiary.owningKey == bank.owningKey) {
    failFlow(Errc::malformed, "argument 'beneficiary': neither the applicant nor the issuing bank");
  }
  if (adviser.owningKey == me || adviser.owningKey == beneficiary.owningKey) {
    failFlow(Errc::malformed, "argument 'adviser': neither the applicant nor the beneficiary");
  }
  const std::string notaryName = args.count("notary") ? args.at("notary") : sh->config.notary;
  if (notaryName.empty()) failFlow(Errc::malformed, "no notary: pass notary=NAME (the node names none)");
  const Party notary = partyNamed(svc, notaryName, "notary");
  const std::string number = args.at("lc");
  const int64_t now = co_await ctx.now();
  const TimeWindow window = windowAround(*sh, now);
  LetterOfCredit lc;
  lc.lcNumber = number;
  lc.linearId = lcLinearId(me, number);
  lc.applicant = me;
  lc.beneficiary = beneficiary.owningKey;
  lc.issuingBank = bank.owningKey;
  lc.advisingBank = adviser.owningKey;
  lc.currency = args.at("currency");
  lc.terms = LcTerms{argAmount(args, "amount"), endOfDay(args, "expiry"), endOfDay(args, "shipment"),
                     documentTypes(args, "documents")};
  if (lc.terms.expiryMicros < *window.untilMicros) {
    failFlow(Errc::malformed, "argument 'expiry': " + args.at("expiry") + " is in the past");
  }
  if (lc.terms.latestShipmentMicros > lc.terms.expiryMicros) {
    failFlow(Errc::malformed, "argument 'shipment': " + args.at("shipment") + " is after the expiry");
  }
  // One LC per (applicant, number): this node's own record (the linear id
  // is a function of both).
  const std::string type(lc_state_type);
  vault::Criteria c = vault::Criteria::field(type, "lc", vault::FieldOp::eq, {number}) &&
                      vault::Criteria::field(type, "applicant", vault::FieldOp::eq, {me.hash()});
  std::vector<StateAndRef> same = co_await queryStates(ctx, svc, "vault.lettersOfCredit", std::move(c));
  if (!same.empty()) failFlow(Errc::conflict, "this applicant has a letter of credit " + number + " already");

  ctx.step("applying to " + bank.name + " for " + lcText(lc));
  TransactionBuilder b(notary);
  b.addOutput(lcState(notary, lc));
  b.addCommand(Command{std::string(lc_apply_command), {}, {me}});
  b.setTimeWindow(window);
  Bytes salt = co_await privacySalt(ctx);
  b.setPrivacySalt(salt);
  auto wtx = b.build();
  if (!wtx) throw FlowFailure(wtx.error());
  SignedTransaction stx(std::move(wtx).value());
  stx = co_await collectSignatures(ctx, svc, std::move(stx), std::string(lc_apply_deal));
  std::vector<std::string> none;
  stx = co_await finality(ctx, svc, std::move(stx), none);
  co_return idBytes(stx.id());
}

Flow<Bytes> issueFlow(FlowContext& ctx, std::shared_ptr<const Shared> sh, Bytes raw) {
  const FlowServices& svc = *sh->svc;
  const DealArgs args = dealArgsOf(lc_issue_deal, raw);
  auto [in, lc] = co_await findLc(ctx, svc, args.at("lc"), "issuer");
  requireStatus(lc, {LcStatus::applied}, "issue");
  if (lc.terms.amountMinor > sh->policy.lc_amount_max_minor) {
    failFlow(Errc::forbidden, "refused: " + lcText(lc) + " of " + std::to_string(lc.terms.amountMinor) + " " +
                                  lc.currency + " is above this bank's limit of " +
                                  std::to_string(sh->policy.lc_amount_max_minor));
  }
  LetterOfCredit after = lc;
  after.status = LcStatus::issued;
  ctx.step("issuing " + lcText(lc));
  Step st{in, after, lc_issue_command, {svc.identity.owningKey}, std::nullopt,
          std::string(lc_issue_deal), {}, {}};
  Bytes out = co_await finishStep(ctx, svc, std::move(st));
  co_return out;
}

Flow<Bytes> adviseFlow(FlowContext& ctx, std::shared_ptr<const Shared> sh, Bytes raw) {
  const FlowServices& svc = *sh->svc;
  const DealArgs args = dealArgsOf(lc_advise_deal, raw);
  auto [in, lc] = co_await findLc(ctx, svc, args.at("lc"), "adviser");
  requireStatus(lc, {LcStatus::issued}, "advise");
  LetterOfCredit after = lc;
  after.status = LcStatus::advised;
  ctx.step("advising " + lcText(lc));
  Step st{in, after, lc_advise_command, {svc.identity.owningKey},
          std::nullopt, std::string(lc_advise_deal), {}, {}};
  Bytes out = co_await finishStep(ctx, svc, std::move(st));
  co_return out;
}

Flow<Bytes> amendFlow(FlowContext& ctx, std::shared_ptr<const Shared> sh, Bytes raw) {
  const FlowServices& svc = *sh->svc;
  const DealArgs args = dealArgsOf(lc_amend_deal, raw);
  const std::string action = args.at("action");
  const Key me = svc.identity.owningKey;
  if (action == "propose") {
    auto [in, lc] = co_await findLc(ctx, svc, args.at("lc"), "applicant");
    requireStatus(lc, {LcStatus::issued, LcStatus::advised, LcStatus::refused}, "amend");
    if (lc.amendment) failFlow(Errc::conflict, lcText(lc) + " has an amendment pending already");
    LcTerms t = lc.terms;
    if (args.count("amount")) t.amountMinor = argAmount(args, "amount");
    if (args.count("expiry")) t.expiryMicros = endOfDay(args, "expiry");
    if (args.count("shipment")) t.latestShipmentMicros = endOfDay(args, "shipment");
    if (args.count("documents")) t.requiredDocuments = documentTypes(args, "documents");
    if (t == lc.terms) failFlow(Errc::malformed, "lc.amend: the amendment changes nothing (pass amount, expiry, shipment or documents)");
    const int64_t now = co_await ctx.now();
    const TimeWindow window = windowAround(*sh, now);
    if (t.expiryMicros != lc.terms.expiryMicros && t.expiryMicros < *window.untilMicros) {
      failFlow(Errc::malformed, "argument 'expiry': " + args.at("expiry") + " is in the past");
    }
    LetterOfCredit after = lc;
    after.amendment = t;
    ctx.step("proposing an amendment of " + lcText(lc));
    Step st{in, after, lc_propose_amendment_command, {lc.issuingBank, me},
            window, std::string(lc_amend_deal), {}, {}};
    Bytes out = co_await finishStep(ctx, svc, std::move(st));
    co_return out;
  }
  if (action == "accept" || action == "reject") {
    for (const char* arg : {"amount", "expiry", "shipment", "documents"}) {
      if (args.count(arg)) failFlow(Errc::malformed, "argument '" + std::string(arg) + "': only a proposal names terms");
    }
    auto [in, lc] = co_await findLc(ctx, svc, args.at("lc"), "beneficiary");
    if (!lc.amendment) failFlow(Errc::not_found, lcText(lc) + " has no amendment pending");
    LetterOfCredit after = lc;
    if (action == "accept") after.terms = *lc.amendment;
    after.amendment.reset();
    ctx.step(action + "ing the amendment of " + lcText(lc));
    const std::string_view command = action == "accept" ? lc_accept_amendment_command : lc_reject_amendment_command;
    Step st{in, after, command, {me}, std::nullopt,
            std::string(lc_amend_deal), {}, {}};
    Bytes out = co_await finishStep(ctx, svc, std::move(st));
    co_return out;
  }
  failFlow(Errc::malformed, "argument 'action': '" + action + "' is not propose, accept or reject");
}

Flow<Bytes> presentFlow(FlowContext& ctx, std::shared_ptr<const Shared> sh, Bytes raw) {
  const FlowServices& svc = *sh->svc;
  const DealArgs args = dealArgsOf(lc_present_deal, raw);
  auto docs = parseLcDocuments(args.at("documents"));
  if (!docs) failFlow(Errc::malformed, "argument 'documents': " + docs.error().message);
  auto [in, lc] = co_await findLc(ctx, svc, args.at("lc"), "beneficiary");
  const int64_t undrawn = lc.terms.amountMinor - lc.paidMinor;
  const int64_t drawing = args.count("amount") ? argAmount(args, "amount") : undrawn;
  if (drawing > undrawn) {
    failFlow(Errc::malformed, "argument 'amount': " + std::to_string(drawing) + " is more than the undrawn " +
                                  std::to_string(undrawn) + " of " + lcText(lc));
  }
  LetterOfCredit after = lc;
  after.status = LcStatus::presented;
  after.presentation.clear();
  for (const auto& [type, hash] : *docs) after.presentation.push_back(LcDocument{type, hash});
  after.drawingMinor = drawing;
  after.discrepancies.clear();
  after.amendment.reset();
  // The window ends by the expiry while there is time; after the expiry
  // the contract refuses the presentation ([expired]), which the flow reports.
  const int64_t now = co_await ctx.now();
  TimeWindow window = windowAround(*sh, now);
  if (now < lc.terms.expiryMicros) window.untilMicros = std::min(*window.untilMicros, lc.terms.expiryMicros);
  ctx.step("presenting " + std::to_string(after.presentation.size()) + " documents under " + lcText(lc));
  Step st{in, after, lc_present_command, {svc.identity.owningKey}, window,
          std::string(lc_present_deal), {}, {}};
  Bytes out = co_await finishStep(ctx, svc, std::move(st));
  co_return out;
}

Flow<Bytes> examineFlow(FlowContext& ctx, std::shared_ptr<const Shared> sh, Bytes raw) {
  const FlowServices& svc = *sh->svc;
  const DealArgs args = dealArgsOf(lc_examine_deal, raw);
  const std::string result = args.at("result");
  std::vector<std::string> reasons = argParties(args, "reasons");
  if (result == "complying") {
    if (!reasons.empty()) failFlow(Errc::malformed, "argument 'reasons': a complying presentation has none");
  } else if (result == "discrepant") {
    if (reasons.empty()) failFlow(Errc::malformed, "argument 'reasons': a discrepant finding names its reasons");
    if (reasons.size() > lc_reasons_max) {
      failFlow(Errc::malformed, "argument 'reasons': more than " + std::to_string(lc_reasons_max));
    }
  } else {
    failFlow(Errc::malformed, "argument 'result': '" + result + "' is not complying or discrepant");
  }
  auto [in, lc] = co_await findLc(ctx, svc, args.at("lc"), "issuer");
  requireStatus(lc, {LcStatus::presented}, "examine");
  LetterOfCredit after = lc;
  after.status = result == "complying" ? LcStatus::complying : LcStatus::discrepant;
  after.discrepancies = reasons;
  ctx.step("finding the presentation under " + lcText(lc) + " " + result);
  Step st{in, after, lc_examine_command, {svc.identity.owningKey},
          std::nullopt, std::string(lc_examine_deal), {}, {}};
  Bytes out = co_await finishStep(ctx, svc, std::move(st));
  co_return out;
}

Flow<Bytes> waiveFlow(FlowContext& ctx, std::shared_ptr<const Shared> sh, Bytes raw) {
  const FlowServices& svc = *sh->svc;
  const DealArgs args = dealArgsOf(lc_waive_deal, raw);
  auto [in, lc] = co_await findLc(ctx, svc, args.at("lc"), "applicant");
  requireStatus(lc, {LcStatus::discrepant}, "waive the discrepancies of");
  LetterOfCredit after = lc;
  after.status = LcStatus::waived;
  ctx.step("waiving the discrepancies of " + lcText(lc));
  Step st{in, after, lc_waive_command, {svc.identity.owningKey},
          std::nullopt, std::string(lc_waive_deal), {}, {}};
  Bytes out = co_await finishStep(ctx, svc, std::move(st));
  co_return out;
}

Flow<Bytes> refuseFlow(FlowContext& ctx, std::shared_ptr<const Shared> sh, Bytes raw) {
  const FlowServices& svc = *sh->svc;
  const DealArgs args = dealArgsOf(lc_refuse_deal, raw);
  auto [in, lc] = co_await findLc(ctx, svc, args.at("lc"), "issuer");
  requireStatus(lc, {LcStatus::discrepant, LcStatus::waived}, "refuse");
  LetterOfCredit after = lc;
  after.status = LcStatus::refused;
  ctx.step("refusing the presentation under " + lcText(lc));
  Step st{in, after, lc_refuse_command, {svc.identity.owningKey},
          std::nullopt, std::string(lc_refuse_deal), {}, {}};
  Bytes out = co_await finishStep(ctx, svc, std::move(st));
  co_return out;
}

Flow<Bytes> payFlow(FlowContext& ctx, std::shared_ptr<const Shared> sh, Bytes raw) {
  const FlowServices& svc = *sh->svc;
  const DealArgs args = dealArgsOf(lc_pay_deal, raw);
  const Key me = svc.identity.owningKey;
  auto [in, lc] = co_await findLc(ctx, svc, args.at("lc"), "issuer");
  requireStatus(lc, {LcStatus::complying, LcStatus::waived}, "pay");
  LetterOfCredit after = lc;
  after.status = LcStatus::paid;
  after.paidMinor = addChecked(lc.paidMinor, lc.drawingMinor).value_or(INT64_MAX);
  const Party notary = in.state.notary;
  std::vector<TransactionState> tokens{tokenState(notary, Token{lc.beneficiary, me, lc.currency, lc.drawingMinor})};
  std::vector<Command> issue{Command{std::string(token_issue_command), {}, {me}}};
  ctx.step("paying " + std::to_string(lc.drawingMinor) + " " + lc.currency + " under " + lcText(lc));
  Step st{in, after, lc_pay_command, {me, lc.beneficiary}, std::nullopt,
          std::string(lc_pay_deal), std::move(tokens), std::move(issue)};
  Bytes out = co_await finishStep(ctx, svc, std::move(st));
  co_return out;
}

Flow<Bytes> closeFlow(FlowContext& ctx, std::shared_ptr<const Shared> sh, Bytes raw) {
  const FlowServices& svc = *sh->svc;
  const DealArgs args = dealArgsOf(lc_close_deal, raw);
  const Key me = svc.identity.owningKey;
  auto [in, lc] = co_await findLc(ctx, svc, args.at("lc"), "issuer");
  const int64_t now = co_await ctx.now();
  const bool fully_drawn = lc.paidMinor >= lc.terms.amountMinor;
  const bool expired = now >= lc.terms.expiryMicros;
  const bool awaiting = lc.status == LcStatus::presented || lc.status == LcStatus::complying ||
                        lc.status == LcStatus::waived || lc.status == LcStatus::discrepant;
  std::vector<Key> signers{me};
  std::optional<TimeWindow> window;
  if (lc.status != LcStatus::applied && !fully_drawn) {
    if (expired && !awaiting) {
      window = TimeWindow{std::max(now - sh->config.clock_skew_micros_max, lc.terms.expiryMicros),
                          now + sh->config.time_window_micros};
    } else {
      signers.push_back(lc.beneficiary);  // irrevocable: the beneficiary consents
    }
  }
  LetterOfCredit after = lc;
  after.status = LcStatus::closed;
  after.amendment.reset();
  ctx.step("closing " + lcText(lc));
  Step st{in, after, lc_close_command, signers, window,
          std::string(lc_close_deal), {}, {}};
  Bytes out = co_await finishStep(ctx, svc, std::move(st));
  co_return out;
}

// --- business checks -------------------------------------------------------------------------

struct LcChange {
  LetterOfCredit before, after;
};

// The one LC the transaction consumes and creates again.
std::optional<LcChange> onlyChange(const LedgerTransaction& tx) {
  auto ins = tx.inputsOf(lc_contract);
  auto outs = tx.outputsOf(lc_contract);
  if (ins.size() != 1 || outs.size() != 1) return std::nullopt;
  auto before = decodeLetterOfCredit(ins[0]->data);
  auto after = decodeLetterOfCredit(outs[0]->data);
  if (!before || !after) return std::nullopt;
  return LcChange{std::move(before).value(), std::move(after).value()};
}

}  // namespace

void addLcChecks(FlowServices& svc, const LcPolicy& policy) {
  const FlowServices* s = &svc;
  // The issuing bank signs an amendment the applicant asks for.
  svc.checks[std::string(lc_amend_deal)] = [s, policy](const LedgerTransaction& tx,
                                                       const std::string& initiator) -> Status {
    auto who = initiatorKey(*s, initiator);
    if (!who) return who.error();
    auto c = onlyChange(tx);
    if (!c || !c->after.amendment) return refusal("the transaction proposes no single letter-of-credit amendment");
    if (!holdsKey(*s, c->before.issuingBank)) return refusal("this node is not the issuing bank of " + lcText(c->before));
    if (c->before.applicant != *who) return refusal("'" + initiator + "' is not the applicant of " + lcText(c->before));
    if (c->after.amendment->amountMinor > policy.lc_amount_max_minor) {
      return refusal("the amendment of " + lcText(c->before) + " to " + std::to_string(c->after.amendment->amountMinor) +
                    " " + c->before.currency + " is above this bank's limit of " +
                    std::to_string(policy.lc_amount_max_minor));
    }
    return {};
  };
  // The beneficiary signs a payment to it.
  svc.checks[std::string(lc_pay_deal)] = [s](const LedgerTransaction& tx, const std::string& initiator) -> Status {
    auto who = initiatorKey(*s, initiator);
    if (!who) return who.error();
    auto c = onlyChange(tx);
    if (!c || c->after.status != LcStatus::paid) return refusal("the transaction pays no single letter of credit");
    if (!holdsKey(*s, c->before.beneficiary)) return refusal("this node is not the beneficiary of " + lcText(c->before));
    if (c->before.issuingBank != *who) return refusal("'" + initiator + "' is not the issuing bank of " + lcText(c->before));
    auto paid = netTokensTo(tx, c->before.beneficiary, c->before.currency);
    if (!paid || *paid < c->before.drawingMinor) {
      return refusal("this beneficiary receives " + std::to_string(paid.value_or(0)) + " of the " +
                    std::to_string(c->before.drawingMinor) + " " + c->before.currency + " drawn under " +
                    lcText(c->before));
    }
    return {};
  };
  // The beneficiary consents to closing an LC with an undrawn balance.
  svc.checks[std::string(lc_close_deal)] = [s, policy](const LedgerTransaction& tx,
                                                       const std::string& initiator) -> Status {
    auto who = initiatorKey(*s, initiator);
    if (!who) return who.error();
    auto c = onlyChange(tx);
    if (!c || c->after.status != LcStatus::closed) return refusal("the transaction closes no single letter of credit");
    if (!holdsKey(*s, c->before.beneficiary)) return refusal("this node is not the beneficiary of " + lcText(c->before));
    if (c->before.issuingBank != *who) return refusal("'" + initiator + "' is not the issuing bank of " + lcText(c->before));
    const LcStatus st = c->before.status;
    if (st == LcStatus::presented || st == LcStatus::complying || st == LcStatus::waived || st == LcStatus::discrepant) {
      return refusal("a presentation under " + lcText(c->before) + " awaits examination or payment");
    }
    const int64_t undrawn = c->before.terms.amountMinor - c->before.paidMinor;
    if (undrawn > 0 && !policy.consent_to_cancellation) {
      return refusal(lcText(c->before) + " has " + std::to_string(undrawn) + " " + c->before.currency +
                    " undrawn; this beneficiary does not consent to cancelling it");
    }
    return {};
  };
}

Status registerLcFlows(FlowRuntime& runtime, const FlowServices& services, const DealConfig& config,
                       const LcPolicy& policy) {
  auto sh = std::make_shared<const Shared>(Shared{&services, config, policy});
  using Body = Flow<Bytes> (*)(FlowContext&, std::shared_ptr<const Shared>, Bytes);
  const std::vector<std::pair<std::string_view, Body>> flows = {
      {lc_apply_deal, applyFlow},     {lc_issue_deal, issueFlow},     {lc_advise_deal, adviseFlow},
      {lc_amend_deal, amendFlow},     {lc_present_deal, presentFlow}, {lc_examine_deal, examineFlow},
      {lc_waive_deal, waiveFlow},     {lc_refuse_deal, refuseFlow},   {lc_pay_deal, payFlow},
      {lc_close_deal, closeFlow},
  };
  for (const auto& entry : flows) {
    Body fn = entry.second;
    if (auto s = runtime.registerFlow(std::string(entry.first),
                                      [sh, fn](FlowContext& ctx, Bytes args) { return fn(ctx, sh, std::move(args)); });
        !s) {
      return s;
    }
  }
  return {};
}

}  // namespace ccal::flows
