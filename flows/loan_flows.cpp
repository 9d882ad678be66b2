#include "flows/loan_flows.h"

#include <algorithm>
#include <charconv>
#include <memory>
#include <set>

#include "contracts/contracts.h"
#include "ledger/assert.h"
#include "ledger/capnp_io.h"
#include "schemas/contracts_flows.capnp.h"
#include "schemas/loan.capnp.h"

namespace ccal::flows {

using namespace ccal::contracts;
using detail::CallDone;
using detail::CallOp;

const std::vector<DealFlowSpec>& loanFlowSpecs() {
  static const std::vector<DealFlowSpec> specs = {
      {loan_fund_create_deal,
       "a committee member creates a mutual-aid fund; the whole committee signs",
       {{"name", ArgType::text, true, "the fund's name (unique in this node's vault)"},
        {"committee", ArgType::parties, true, "the committee members, ';'-separated (this node among them)"},
        {"threshold", ArgType::amount, true, "k: committee approvals a loan needs (1..n)"},
        {"currency", ArgType::currency, true, "e.g. CNY"},
        {"principal_max", ArgType::amount, true, "the largest loan, minor units"},
        {"interest_min_bp", ArgType::text, true, "lowest interest, basis points 0..10000"},
        {"interest_max_bp", ArgType::text, true, "highest interest, basis points 0..10000"},
        {"term_min_days", ArgType::days, true, "shortest term"},
        {"term_max_days", ArgType::days, true, "longest term"},
        {"members", ArgType::parties, false, "members besides the committee who may contribute and borrow"},
        {"notary", ArgType::party, false, "the notary (default: the node's)"}}},
      {loan_fund_contribute_deal,
       "this node contributes tokens to a fund",
       {{"fund", ArgType::text, true, "the fund's name"}, {"amount", ArgType::amount, true, "minor units"}}},
      {loan_request_deal,
       "this member requests a loan from a fund; the committee reviews it",
       {{"fund", ArgType::text, true, "the fund's name"},
        {"amount", ArgType::amount, true, "the principal, minor units"},
        {"interest_bp", ArgType::text, true, "simple interest over the term, basis points"},
        {"term_days", ArgType::days, true, "the term"},
        {"instalments", ArgType::days, true, "equal instalments over the term (1..120)"}}},
      {loan_approve_deal,
       "this committee member approves a loan with the members it names",
       {{"loan", ArgType::text, true, "the loan id (hex)"},
        {"approvers", ArgType::parties, false, "the other approving committee members"}}},
      {loan_disburse_deal,
       "an approver pays an approved loan's principal from the fund to the borrower",
       {{"loan", ArgType::text, true, "the loan id (hex)"}}},
      {loan_repay_deal,
       "the borrower repays (by default the rest of the next instalment)",
       {{"loan", ArgType::text, true, "the loan id (hex)"},
        {"amount", ArgType::amount, false, "minor units (default: the next instalment's rest)"}}},
      {loan_default_deal,
       "an approver declares an overdue loan in default with the other approvers",
       {{"loan", ArgType::text, true, "the loan id (hex)"}}},
  };
  return specs;
}

namespace {

// --- arguments and helpers ------------------------------------------------------------------

struct Shared {
  const FlowServices* svc;
  DealConfig config;
  LoanPolicy policy;
};

int32_t argBasisPoints(const DealArgs& args, std::string_view name) {
  const std::string& v = args.at(std::string(name));
  int32_t out = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
  if (ec != std::errc() || p != v.data() + v.size() || out < 0 || out > interest_bp_max) {
    failFlow(Errc::malformed, "argument '" + std::string(name) + "' is not basis points 0.." +
                                  std::to_string(interest_bp_max) + ": '" + v + "'");
  }
  return out;
}

SecureHash argLoanId(const DealArgs& args) {
  auto id = SecureHash::fromHex(args.at("loan"));
  if (!id) failFlow(Errc::malformed, "argument 'loan' is not a loan id (64 hex digits): '" + args.at("loan") + "'");
  return *id;
}

std::string quote(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += ' ';
    } else {
      out += c;
    }
  }
  return out + "\"";
}

Bytes jsonResult(const std::vector<std::pair<std::string, std::string>>& fields) {
  std::string s = "{";
  for (const auto& [k, v] : fields) {
    if (s.size() > 1) s += ",";
    s += quote(k) + ":" + v;
  }
  s += "}";
  return Bytes(s.begin(), s.end());
}

Flow<SecureHash> randomId(FlowContext& ctx) {
  const Bytes seed = co_await ctx.randomBytes(16);  // one journaled event
  co_return SecureHash::of(seed);
}

// --- journaled vault access --------------------------------------------------------------

// Unconsumed tokens of `currency` owned by `owner` summing to at least
// `amount`, locked for this flow (unlocked ones, or this flow's own after a
// restart). Not the vault's selectFungible: that picks any token the vault
// holds, and a committee member's vault holds the fund's.
Flow<std::vector<StateAndRef>> selectOwned(FlowContext& ctx, const FlowServices& svc, Key owner,
                                           std::string currency, int64_t amount) {
  vault::Vault* v = svc.vault;
  const SecureHash holder = ctx.id();
  CallOp op = [v, holder, owner, currency, amount](CallDone done) {
    const std::string type(token_state_type);
    auto c = vault::Criteria::field(type, "owner", vault::FieldOp::eq, {owner.hash()}) &&
             vault::Criteria::field(type, "currency", vault::FieldOp::eq, {currency});
    auto page = v->query(vault::Query(c, vault::StatusFilter::unconsumed, vault::RelevanceFilter::all, {}, 1000));
    if (!page) {
      done(page.error());
      return;
    }
    std::vector<StateAndRef> chosen;
    std::vector<StateRef> refs;
    int64_t total = 0;
    for (const auto& s : page->states) {
      if (total >= amount) break;
      if (s.lock && *s.lock != holder) continue;
      auto t = decodeToken(s.state.data);
      if (!t) continue;
      chosen.push_back({s.state, s.ref});
      refs.push_back(s.ref);
      total = addChecked(total, t->amountMinor).value_or(total);
    }
    if (total < amount) {
      done(makeError(Errc::insufficient_balance, "insufficient balance: " + std::to_string(amount) + " " + currency +
                                                     " asked for, " + std::to_string(total) +
                                                     " available unlocked to " + owner.describe()));
      return;
    }
    if (auto s = v->lock(holder, refs); !s) {
      done(s.error());
      return;
    }
    done(encodeStates(chosen));
  };
  auto decode = [](ByteView b) { return decodeStates(b); };
  std::vector<StateAndRef> out = co_await ctx.call<std::vector<StateAndRef>>("vault.selectOwned", std::move(op), decode);
  co_return out;
}

Flow<StateAndRef> findFund(FlowContext& ctx, const FlowServices& svc, std::string name) {
  const std::string type(fund_state_type);
  vault::Criteria c = vault::Criteria::field(type, "name", vault::FieldOp::eq, {name});
  std::vector<StateAndRef> found = co_await queryStates(ctx, svc, "vault.fund", c);
  if (found.empty()) {
    failFlow(Errc::not_found, "argument 'fund': this node holds no fund named '" + name +
                                  "' (its committee, members and contributors do)");
  }
  if (found.size() > 1) failFlow(Errc::conflict, "argument 'fund': more than one fund is named '" + name + "'");
  co_return found[0];
}

Flow<StateAndRef> findLoan(FlowContext& ctx, const FlowServices& svc, SecureHash id) {
  vault::Criteria c = vault::Criteria::linearId(id) && vault::Criteria::stateType(std::string(loan_state_type));
  std::vector<StateAndRef> found = co_await queryStates(ctx, svc, "vault.loan", c);
  if (found.empty()) failFlow(Errc::not_found, "argument 'loan': this node holds no live loan " + id.hex());
  co_return found[0];
}

// The borrower's credential that the transaction which made `loan` referenced.
Flow<StateAndRef> loanCredential(FlowContext& ctx, const FlowServices& svc, StateAndRef loan, Key borrower) {
  std::vector<SecureHash> ids{loan.ref.txId};
  auto made = co_await loadTransactions(ctx, svc, ids);
  if (!made[0]) failFlow(Errc::not_found, "the loan's transaction " + loan.ref.txId.hex() + " is not in the vault");
  for (const StateRef& r : made[0]->tx().references()) {
    std::vector<SecureHash> refIds{r.txId};
    auto refTx = co_await loadTransactions(ctx, svc, refIds);
    if (!refTx[0] || r.index >= refTx[0]->tx().outputs().size()) continue;
    const TransactionState& s = refTx[0]->tx().outputs()[r.index];
    if (s.stateType != member_state_type) continue;
    auto m = decodeMember(s.data);
    if (m && m->member == borrower) co_return StateAndRef{s, r};
  }
  failFlow(Errc::not_found, "the loan's transaction references no credential of its borrower");
}

Loan loanOf(const StateAndRef& s) {
  auto l = decodeLoan(s.state.data);
  if (!l) throw FlowFailure(l.error());
  return *l;
}

TimeWindow nowWindow(const Shared& sh, int64_t now) {
  return TimeWindow{now - sh.config.clock_skew_micros_max, now + sh.config.time_window_micros};
}

// The window around now, starting no earlier than the credential it
// references (which must be valid over all of it).
TimeWindow credentialWindow(const Shared& sh, int64_t now, const StateAndRef& cred) {
  TimeWindow w = nowWindow(sh, now);
  if (auto m = decodeMember(cred.state.data)) w.fromMicros = std::max(*w.fromMicros, m->validFromMicros);
  return w;
}

// --- review messages ---------------------------------------------------------------------

struct Review {
  bool wouldApprove = false;
  std::string reason;
  CreditReport report;
};

Bytes encodeReviewRequest(const StateRef& ref) {
  return buildCanonical<schema::loan::ReviewRequest>([&](auto b) { writeStateRef(b.initLoan(), ref); });
}

Result<StateRef> decodeReviewRequest(ByteView bytes) {
  return decodeMessage<schema::loan::ReviewRequest>(bytes, "loan review request", Canonical::required,
                                                     [](auto r) { return readStateRef(r.getLoan()); });
}

Bytes encodeReview(const Review& v) {
  return buildCanonical<schema::loan::LoanReview>([&](auto b) {
    b.setWouldApprove(v.wouldApprove);
    b.setReason(v.reason);
    b.setLoansTaken(v.report.loans_taken);
    b.setRepaidOnTime(v.report.repaid_on_time);
    b.setLate(v.report.late);
    b.setDefaulted(v.report.defaulted);
    b.setSettled(v.report.settled);
    auto fill = [](auto list, const std::map<std::string, int64_t>& m) {
      uint32_t i = 0;
      for (const auto& [currency, amount] : m) {
        list[i].setCurrency(currency);
        list[i].setAmountMinor(amount);
        ++i;
      }
    };
    fill(b.initOutstanding(static_cast<uint32_t>(v.report.outstanding_minor.size())), v.report.outstanding_minor);
    fill(b.initRepaid(static_cast<uint32_t>(v.report.repaid_minor.size())), v.report.repaid_minor);
  });
}

Result<Review> decodeReview(ByteView bytes, const SecureHash& subject) {
  if (bytes.size() > loan_review_bytes_max) {
    return makeError(Errc::too_large, "a loan review of " + std::to_string(bytes.size()) + " bytes is over " +
                                          std::to_string(loan_review_bytes_max));
  }
  return decodeMessage<schema::loan::LoanReview>(
      bytes, "loan review", Canonical::required, [&subject](auto r) -> Result<Review> {
        Review v;
        v.wouldApprove = r.getWouldApprove();
        CCAL_TRY_ASSIGN(v.reason,
                        readText(r.getReason(), "a loan review's reason", text_bounded_by_message));
        v.report.subject = subject;
        v.report.loans_taken = r.getLoansTaken();
        v.report.repaid_on_time = r.getRepaidOnTime();
        v.report.late = r.getLate();
        v.report.defaulted = r.getDefaulted();
        v.report.settled = r.getSettled();
        for (auto e : r.getOutstanding()) {
          auto currency = readText(e.getCurrency(), "a review's currency", text_bounded_by_message);
          if (!currency || !validCurrency(*currency)) {
            return makeError(Errc::malformed, "a review names a bad currency");
          }
          v.report.outstanding_minor[*currency] = e.getAmountMinor();
        }
        for (auto e : r.getRepaid()) {
          auto currency = readText(e.getCurrency(), "a review's currency", text_bounded_by_message);
          if (!currency || !validCurrency(*currency)) {
            return makeError(Errc::malformed, "a review names a bad currency");
          }
          v.report.repaid_minor[*currency] = e.getAmountMinor();
        }
        return v;
      });
}

// What this committee member would say to `loan`: whether it is within its
// policy and the borrower's record acceptable.
Review reviewLoan(const FlowServices& svc, const LoanPolicy& policy, const Loan& loan) {
  Review v;
  auto report = creditReportFromVault(*svc.vault, loan.borrower);
  if (!report) {
    v.reason = "no credit report: " + report.error().message;
    return v;
  }
  v.report = *report;
  if (loan.principalMinor > policy.principal_max_minor) {
    v.reason = "a principal of " + std::to_string(loan.principalMinor) + " is above this member's limit of " +
               std::to_string(policy.principal_max_minor);
  } else if (v.report.defaulted > policy.borrower_defaults_max) {
    v.reason = "the borrower has " + std::to_string(v.report.defaulted) + " defaults on record";
  } else {
    v.wouldApprove = true;
  }
  return v;
}

// --- the flows --------------------------------------------------------------------------------

Flow<Bytes> fundCreateFlow(FlowContext& ctx, std::shared_ptr<const Shared> sh, Bytes raw) {
  const FlowServices& svc = *sh->svc;
  const DealArgs args = dealArgsOf(loan_fund_create_deal, raw);
  const Party notary = dealNotary(*sh->svc, sh->config, args);
  std::vector<Key> committee;
  for (const std::string& name : argParties(args, "committee")) {
    committee.push_back(partyNamed(svc, name, "committee").owningKey);
  }
  std::sort(committee.begin(), committee.end());
  if (std::adjacent_find(committee.begin(), committee.end()) != committee.end()) {
    failFlow(Errc::malformed, "argument 'committee' names a member twice");
  }
  if (std::find(committee.begin(), committee.end(), svc.identity.owningKey) == committee.end()) {
    failFlow(Errc::malformed, "argument 'committee' must include this node");
  }
  const int64_t threshold = argAmount(args, "threshold");
  if (threshold > static_cast<int64_t>(committee.size())) {
    failFlow(Errc::malformed, "argument 'threshold' must be 1.." + std::to_string(committee.size()));
  }
  Fund f;
  for (const std::string& name : argParties(args, "members")) {
    const Key k = partyNamed(svc, name, "members").owningKey;
    if (std::find(committee.begin(), committee.end(), k) != committee.end() ||
        std::find(f.members.begin(), f.members.end(), k) != f.members.end()) {
      failFlow(Errc::malformed, "argument 'members' names '" + name + "' twice or a committee member");
    }
    f.members.push_back(k);
  }
  f.fundId = co_await randomId(ctx);
  f.name = args.at("name");
  f.committee = committee;
  f.threshold = static_cast<uint32_t>(threshold);
  f.currency = args.at("currency");
  f.interestMinBp = argBasisPoints(args, "interest_min_bp");
  f.interestMaxBp = argBasisPoints(args, "interest_max_bp");
  f.termMinDays = static_cast<int32_t>(argAmount(args, "term_min_days"));
  f.termMaxDays = static_cast<int32_t>(argAmount(args, "term_max_days"));
  f.principalMaxMinor = argAmount(args, "principal_max");
  TransactionBuilder b(notary);
  b.addOutput(fundState(notary, f));
  b.addCommand(Command{std::string(loan_create_fund_command), {}, committee});
  ctx.step("creating fund '" + f.name + "' with its committee");
  std::vector<std::string> none;
  SignedTransaction stx = co_await signAndFinalise(ctx, svc, std::move(b), std::string(loan_fund_create_deal), none);
  co_return jsonResult({{"tx_id", quote(stx.id().hex())},
                        {"fund_id", quote(f.fundId.hex())},
                        {"fund_key", quote(fundKey(f.committee, f.threshold).value().hash().hex())}});
}

Flow<Bytes> contributeBody(FlowContext& ctx, std::shared_ptr<const Shared> sh, DealArgs args) {
  const FlowServices& svc = *sh->svc;
  const Key me = svc.identity.owningKey;
  StateAndRef fs = co_await findFund(ctx, svc, args.at("fund"));
  const Fund before = decodeFund(fs.state.data).value();
  const int64_t amount = argAmount(args, "amount");
  Fund after = before;
  auto it = std::find_if(after.contributions.begin(), after.contributions.end(),
                         [&](const FundContribution& c) { return c.contributor == me; });
  if (it == after.contributions.end()) {
    after.contributions.push_back({me, amount});
  } else {
    auto sum = addChecked(it->amountMinor, amount);
    if (!sum) failFlow(Errc::malformed, "argument 'amount': the contribution's total overflows");
    it->amountMinor = *sum;
  }
  const Key fkey = fundKey(before.committee, before.threshold).value();
  ctx.step("paying " + std::to_string(amount) + " " + before.currency + " to fund '" + before.name + "'");
  std::vector<StateAndRef> selected = co_await selectOwned(ctx, svc, me, before.currency, amount);
  const Party notary = fs.state.notary;
  TransactionBuilder b(notary);
  b.addInput(fs.ref);
  for (const auto& t : selected) b.addInput(t.ref);
  b.addOutput(fundState(notary, after));
  for (auto& o : payOutputs(selected, me, fkey, before.currency, amount, notary)) b.addOutput(o);
  b.addCommand(Command{std::string(loan_contribute_command), {}, {me}});
  b.addCommand(Command{std::string(token_move_command), {}, {me}});
  std::vector<std::string> none;
  SignedTransaction stx =
      co_await signAndFinalise(ctx, svc, std::move(b), std::string(loan_fund_contribute_deal), none);
  co_return jsonResult({{"tx_id", quote(stx.id().hex())},
                        {"fund_id", quote(before.fundId.hex())},
                        {"contributed", std::to_string(fundContributed(after))}});
}

Flow<Bytes> contributeFlow(FlowContext& ctx, std::shared_ptr<const Shared> sh, Bytes raw) {
  DealArgs args = dealArgsOf(loan_fund_contribute_deal, raw);
  Bytes out = co_await releasingLocks(ctx, *sh->svc, contributeBody(ctx, sh, std::move(args)));
  co_return out;
}

// loan.request's review by one committee member.
Flow<Review> reviewBody(FlowContext& ctx, std::string member, StateRef loan, SecureHash subject) {
  Session s = co_await ctx.initiate(member);
  co_await s.send(encodeReviewRequest(loan));
  auto decode = [subject](ByteView b) { return decodeReview(b, subject); };
  Review v = co_await s.receive<Review>(decode, "loan review");
  co_return v;
}

Flow<Bytes> requestFlow(FlowContext& ctx, std::shared_ptr<const Shared> sh, Bytes raw) {
  const FlowServices& svc = *sh->svc;
  const DealArgs args = dealArgsOf(loan_request_deal, raw);
  const Key me = svc.identity.owningKey;
  StateAndRef fs = co_await findFund(ctx, svc, args.at("fund"));
  const Fund fund = decodeFund(fs.state.data).value();
  const Party notary = fs.state.notary;
  const int64_t now = co_await ctx.now();
  TimeWindow window = nowWindow(*sh, now);

  ctx.step("finding this member's credential");
  const std::string mtype(member_state_type);
  vault::Criteria mc = vault::Criteria::field(mtype, "member", vault::FieldOp::eq, {me.hash()});
  std::vector<StateAndRef> creds = co_await queryStates(ctx, svc, "vault.credentials", mc);
  std::optional<StateAndRef> cred;
  for (const auto& s : creds) {
    auto m = decodeMember(s.state.data);
    if (m && m->validFromMicros <= now && *window.untilMicros <= m->validUntilMicros && s.state.notary == notary) {
      cred = s;
      window.fromMicros = std::max(*window.fromMicros, m->validFromMicros);
      break;
    }
  }
  if (!cred) failFlow(Errc::not_found, "this node holds no valid membership credential to borrow with");

  Loan l;
  l.loanId = co_await randomId(ctx);
  l.fundId = fund.fundId;
  l.borrower = me;
  l.committee = fund.committee;
  l.threshold = fund.threshold;
  l.currency = fund.currency;
  l.principalMinor = argAmount(args, "amount");
  l.interestBp = argBasisPoints(args, "interest_bp");
  l.termDays = static_cast<int32_t>(argAmount(args, "term_days"));
  l.instalments = static_cast<uint32_t>(argAmount(args, "instalments"));
  TransactionBuilder b(notary);
  b.addReference(fs.ref);
  b.addReference(cred->ref);
  b.addOutput(loanState(notary, l));
  b.addCommand(Command{std::string(loan_request_command), {}, {me}});
  b.setTimeWindow(window);
  ctx.step("requesting " + std::to_string(l.principalMinor) + " " + l.currency + " from fund '" + fund.name + "'");
  std::vector<std::string> none;
  SignedTransaction stx = co_await signAndFinalise(ctx, svc, std::move(b), std::string(loan_request_deal), none);
  const StateRef loanRef{stx.id(), 0};

  // Each committee member reviews the request with the credit record its
  // vault holds.
  std::string reviews = "[";
  for (const Key& k : fund.committee) {
    if (k == me) continue;
    auto member = svc.partyByKey ? svc.partyByKey(k) : std::nullopt;
    if (!member) failFlow(Errc::not_found, "no party is known for committee member " + k.describe());
    ctx.step("asking " + member->name + " to review the request");
    Review v = co_await ctx.subFlow(std::string(loan_review_flow), reviewBody(ctx, member->name, loanRef, me.hash()));
    if (reviews.size() > 1) reviews += ",";
    reviews += "{\"member\":" + quote(member->name) + ",\"would_approve\":" + (v.wouldApprove ? "true" : "false") +
               ",\"reason\":" + quote(v.reason) + ",\"credit_report\":" + creditReportJson(v.report) + "}";
  }
  reviews += "]";
  co_return jsonResult({{"tx_id", quote(stx.id().hex())}, {"loan_id", quote(l.loanId.hex())}, {"reviews", reviews}});
}

Flow<Bytes> reviewResponder(FlowContext& ctx, std::shared_ptr<const Shared> sh, Bytes) {
  const FlowServices& svc = *sh->svc;
  Session s = *ctx.counterparty();
  auto decode = [](ByteView b) { return decodeReviewRequest(b); };
  StateRef ref = co_await s.receive<StateRef>(decode, "loan review request");
  vault::Vault* v = svc.vault;
  CallOp op = [v, ref](CallDone done) {
    auto st = v->state(ref);
    if (!st) {
      done(st.error());
      return;
    }
    std::vector<StateAndRef> out;
    if (*st && (*st)->status == vault::StateStatus::unconsumed) out.push_back({(*st)->state, ref});
    done(encodeStates(out));
  };
  auto decodeList = [](ByteView b) { return decodeStates(b); };
  std::vector<StateAndRef> found = co_await ctx.call<std::vector<StateAndRef>>("vault.state", std::move(op), decodeList);
  if (found.empty() || found[0].state.stateType != loan_state_type) {
    failFlow(Errc::not_found, "refused: " + ref.toString() + " is not a live loan in " + svc.identity.name + "'s vault");
  }
  const Loan loan = loanOf(found[0]);
  const Party peer = partyNamed(svc, s.peer(), "initiator");
  if (loan.borrower != peer.owningKey) failFlow(Errc::forbidden, "refused: '" + s.peer() + "' is not the borrower");
  if (std::find(loan.committee.begin(), loan.committee.end(), svc.identity.owningKey) == loan.committee.end()) {
    failFlow(Errc::forbidden, "refused: this node is not on the loan's committee");
  }
  // The report is computed from the vault as of now; journaled through the
  // call so that a replay answers the same.
  const LoanPolicy policy = sh->policy;
  CallOp reviewOp = [&svc, policy, loan](CallDone done) { done(encodeReview(reviewLoan(svc, policy, loan))); };
  const SecureHash subject = loan.borrower.hash();
  auto decodeR = [subject](ByteView b) { return decodeReview(b, subject); };
  Review review = co_await ctx.call<Review>("loan.review", std::move(reviewOp), decodeR);
  ctx.step("credit record of " + s.peer() + ": " + describeCreditReport(review.report) +
           (review.wouldApprove ? "; would approve" : "; would refuse: " + review.reason));
  co_await s.send(encodeReview(review));
  co_return Bytes{};
}

Flow<Bytes> approveFlow(FlowContext& ctx, std::shared_ptr<const Shared> sh, Bytes raw) {
  const FlowServices& svc = *sh->svc;
  const DealArgs args = dealArgsOf(loan_approve_deal, raw);
  const Key me = svc.identity.owningKey;
  StateAndRef ls = co_await findLoan(ctx, svc, argLoanId(args));
  const Loan before = loanOf(ls);
  if (before.status != LoanStatus::requested) {
    failFlow(Errc::conflict, "loan " + before.loanId.hex() + " is " + std::string(loanStatusName(before.status)) +
                                 ", not requested");
  }
  std::vector<Key> approvals{me};
  for (const std::string& name : argParties(args, "approvers")) {
    const Key k = partyNamed(svc, name, "approvers").owningKey;
    if (std::find(approvals.begin(), approvals.end(), k) != approvals.end()) {
      failFlow(Errc::malformed, "argument 'approvers' names '" + name + "' twice or this node");
    }
    approvals.push_back(k);
  }
  StateAndRef cred = co_await loanCredential(ctx, svc, ls, before.borrower);
  const int64_t now = co_await ctx.now();
  Loan after = before;
  after.status = LoanStatus::approved;
  after.approvals = approvals;
  const Party notary = ls.state.notary;
  TransactionBuilder b(notary);
  b.addInput(ls.ref);
  b.addReference(cred.ref);
  b.addOutput(loanState(notary, after));
  b.addCommand(Command{std::string(loan_approve_command), {}, approvals});
  b.setTimeWindow(credentialWindow(*sh, now, cred));
  ctx.step("approving loan " + before.loanId.shortHex() + " with " + std::to_string(approvals.size()) + " of " +
           std::to_string(before.committee.size()) + " (" + std::to_string(before.threshold) + " needed)");
  std::vector<std::string> none;
  SignedTransaction stx = co_await signAndFinalise(ctx, svc, std::move(b), std::string(loan_approve_deal), none);
  co_return jsonResult({{"tx_id", quote(stx.id().hex())}, {"loan_id", quote(before.loanId.hex())}});
}

Flow<Bytes> disburseBody(FlowContext& ctx, std::shared_ptr<const Shared> sh, DealArgs args) {
  const FlowServices& svc = *sh->svc;
  const Key me = svc.identity.owningKey;
  StateAndRef ls = co_await findLoan(ctx, svc, argLoanId(args));
  const Loan before = loanOf(ls);
  if (before.status != LoanStatus::approved) {
    failFlow(Errc::conflict, "loan " + before.loanId.hex() + " is " + std::string(loanStatusName(before.status)) +
                                 ", not approved");
  }
  if (std::find(before.approvals.begin(), before.approvals.end(), me) == before.approvals.end()) {
    failFlow(Errc::forbidden, "this node did not approve loan " + before.loanId.hex());
  }
  StateAndRef cred = co_await loanCredential(ctx, svc, ls, before.borrower);
  const Key fkey = fundKey(before.committee, before.threshold).value();
  ctx.step("selecting " + std::to_string(before.principalMinor) + " " + before.currency + " of the fund's tokens");
  std::vector<StateAndRef> selected =
      co_await selectOwned(ctx, svc, fkey, before.currency, before.principalMinor);
  const int64_t now = co_await ctx.now();
  Loan after = before;
  after.status = LoanStatus::disbursed;
  after.disbursedMicros = now;
  const Party notary = ls.state.notary;
  TransactionBuilder b(notary);
  b.addInput(ls.ref);
  for (const auto& t : selected) b.addInput(t.ref);
  b.addReference(cred.ref);
  b.addOutput(loanState(notary, after));
  for (auto& o : payOutputs(selected, fkey, before.borrower, before.currency, before.principalMinor, notary)) {
    b.addOutput(o);
  }
  b.addCommand(Command{std::string(loan_disburse_command), {}, before.approvals});
  b.addCommand(Command{std::string(token_move_command), {}, {fkey}});
  b.setTimeWindow(credentialWindow(*sh, now, cred));
  std::vector<std::string> none;
  SignedTransaction stx = co_await signAndFinalise(ctx, svc, std::move(b), std::string(loan_disburse_deal), none);
  co_return jsonResult({{"tx_id", quote(stx.id().hex())},
                        {"loan_id", quote(before.loanId.hex())},
                        {"first_due_micros", std::to_string(instalmentDueMicros(after, 1))}});
}

Flow<Bytes> disburseFlow(FlowContext& ctx, std::shared_ptr<const Shared> sh, Bytes raw) {
  DealArgs args = dealArgsOf(loan_disburse_deal, raw);
  Bytes out = co_await releasingLocks(ctx, *sh->svc, disburseBody(ctx, sh, std::move(args)));
  co_return out;
}

Flow<Bytes> repayBody(FlowContext& ctx, std::shared_ptr<const Shared> sh, DealArgs args) {
  const FlowServices& svc = *sh->svc;
  const Key me = svc.identity.owningKey;
  StateAndRef ls = co_await findLoan(ctx, svc, argLoanId(args));
  const Loan before = loanOf(ls);
  if (before.borrower != me) failFlow(Errc::forbidden, "this node is not the borrower of loan " + before.loanId.hex());
  if (before.status != LoanStatus::disbursed) {
    failFlow(Errc::conflict, "loan " + before.loanId.hex() + " is " + std::string(loanStatusName(before.status)) +
                                 ", not disbursed");
  }
  const auto next = nextUnpaidInstalment(before);
  CCAL_ASSERT(next.has_value());  // a disbursed loan has something outstanding
  const int64_t amount =
      args.count("amount") ? argAmount(args, "amount") : cumulativeDue(before, *next) - before.repaidMinor;
  if (amount > loanOutstanding(before)) {
    failFlow(Errc::malformed, "argument 'amount': " + std::to_string(amount) + " is more than the " +
                                  std::to_string(loanOutstanding(before)) + " outstanding");
  }
  const int64_t now = co_await ctx.now();
  const int64_t due = instalmentDueMicros(before, *next);
  // A window wholly by the due date (on time) or wholly after it (late).
  TimeWindow window = nowWindow(*sh, now);
  bool late = false;
  if (*window.fromMicros > due) {
    late = true;
  } else if (*window.untilMicros > due + 1) {
    if (now <= due) {
      window.untilMicros = due + 1;
    } else {
      window.fromMicros = due + 1;
      late = true;
    }
  }
  Loan after = before;
  after.repaidMinor += amount;
  if (after.repaidMinor == loanTotalDue(before).value()) after.status = LoanStatus::repaid;
  const CreditEvent event = late ? CreditEvent::late_payment
                                 : (after.status == LoanStatus::repaid ? CreditEvent::full_settlement
                                                                       : CreditEvent::repayment_on_time);
  const Key fkey = fundKey(before.committee, before.threshold).value();
  ctx.step("repaying " + std::to_string(amount) + " " + before.currency + " (" + std::string(creditEventName(event)) +
           ")");
  std::vector<StateAndRef> selected = co_await selectOwned(ctx, svc, me, before.currency, amount);
  const Party notary = ls.state.notary;
  TransactionBuilder b(notary);
  b.addInput(ls.ref);
  for (const auto& t : selected) b.addInput(t.ref);
  b.addOutput(loanState(notary, after));
  b.addOutput(creditRecordState(
      notary, CreditRecord{me, before.fundId, before.loanId, event, amount, before.currency, now}, before.committee));
  for (auto& o : payOutputs(selected, me, fkey, before.currency, amount, notary)) b.addOutput(o);
  b.addCommand(Command{std::string(loan_repay_command), {}, {me}});
  b.addCommand(Command{std::string(token_move_command), {}, {me}});
  b.setTimeWindow(window);
  std::vector<std::string> none;
  SignedTransaction stx = co_await signAndFinalise(ctx, svc, std::move(b), std::string(loan_repay_deal), none);
  co_return jsonResult({{"tx_id", quote(stx.id().hex())},
                        {"loan_id", quote(before.loanId.hex())},
                        {"event", quote(creditEventName(event))},
                        {"repaid", std::to_string(after.repaidMinor)},
                        {"outstanding", std::to_string(loanOutstanding(after))},
                        {"status", quote(loanStatusName(after.status))}});
}

Flow<Bytes> repayFlow(FlowContext& ctx, std::shared_ptr<const Shared> sh, Bytes raw) {
  DealArgs args = dealArgsOf(loan_repay_deal, raw);
  Bytes out = co_await releasingLocks(ctx, *sh->svc, repayBody(ctx, sh, std::move(args)));
  co_return out;
}

Flow<Bytes> defaultFlow(FlowContext& ctx, std::shared_ptr<const Shared> sh, Bytes raw) {
  const FlowServices& svc = *sh->svc;
  const DealArgs args = dealArgsOf(loan_default_deal, raw);
  const Key me = svc.identity.owningKey;
  StateAndRef ls = co_await findLoan(ctx, svc, argLoanId(args));
  const Loan before = loanOf(ls);
  if (before.status != LoanStatus::disbursed) {
    failFlow(Errc::conflict, "loan " + before.loanId.hex() + " is " + std::string(loanStatusName(before.status)) +
                                 ", not disbursed");
  }
  if (std::find(before.approvals.begin(), before.approvals.end(), me) == before.approvals.end()) {
    failFlow(Errc::forbidden, "this node did not approve loan " + before.loanId.hex());
  }
  const auto next = nextUnpaidInstalment(before);
  CCAL_ASSERT(next.has_value());
  const int64_t due = instalmentDueMicros(before, *next);
  const int64_t now = co_await ctx.now();
  if (now <= due) {
    failFlow(Errc::forbidden, "loan " + before.loanId.hex() + "'s instalment " + std::to_string(*next) +
                                  " is not overdue yet");
  }
  TimeWindow window = nowWindow(*sh, now);
  window.fromMicros = std::max(*window.fromMicros, due + 1);
  Loan after = before;
  after.status = LoanStatus::defaulted;
  const Party notary = ls.state.notary;
  TransactionBuilder b(notary);
  b.addInput(ls.ref);
  b.addOutput(loanState(notary, after));
  b.addOutput(creditRecordState(notary,
                                CreditRecord{before.borrower, before.fundId, before.loanId, CreditEvent::loan_default,
                                             loanOutstanding(before), before.currency, now},
                                before.committee));
  b.addCommand(Command{std::string(loan_default_command), {}, before.approvals});
  b.setTimeWindow(window);
  ctx.step("declaring loan " + before.loanId.shortHex() + " in default");
  std::vector<std::string> none;
  SignedTransaction stx = co_await signAndFinalise(ctx, svc, std::move(b), std::string(loan_default_deal), none);
  co_return jsonResult({{"tx_id", quote(stx.id().hex())},
                        {"loan_id", quote(before.loanId.hex())},
                        {"outstanding", std::to_string(loanOutstanding(before))}});
}

// --- business checks -------------------------------------------------------------------------

bool among(const std::vector<Key>& keys, const Key& k) { return std::find(keys.begin(), keys.end(), k) != keys.end(); }

std::optional<Loan> onlyLoan(const std::vector<const TransactionState*>& states) {
  return onlyOf<Loan>(states, loan_state_type, [](ByteView b) { return decodeLoan(b); });
}

}  // namespace

Result<CreditReport> creditReportFromVault(const vault::Vault& v, const Key& subject) {
  const auto criteria =
      vault::Criteria::field(std::string(credit_record_state_type), "subject", vault::FieldOp::eq, {subject.hash()}) ||
      vault::Criteria::field(std::string(loan_state_type), "borrower", vault::FieldOp::eq, {subject.hash()});
  std::vector<TransactionState> states;
  vault::Query q(criteria, vault::StatusFilter::all, vault::RelevanceFilter::all, {}, 500);
  for (;;) {
    auto page = v.query(q);
    if (!page) return page.error();
    for (auto& s : page->states) states.push_back(std::move(s.state));
    if (states.size() > credit_report_states_max) {
      return makeError(Errc::too_large, "more than " + std::to_string(credit_report_states_max) +
                                            " states to summarise for one credit report");
    }
    if (!page->has_more) break;
    q.cursor = page->next_cursor;
  }
  return creditReport(subject, states);
}

void addLoanChecks(FlowServices& svc, const LoanPolicy& policy) {
  const FlowServices* s = &svc;
  svc.checks[std::string(loan_fund_create_deal)] = [s, policy](const LedgerTransaction& tx,
                                                                const std::string& initiator) -> Status {
    auto who = initiatorKey(*s, initiator);
    if (!who) return who.error();
    auto f = onlyOf<Fund>(tx.outputsOf(loan_contract), fund_state_type, [](ByteView b) { return decodeFund(b); });
    if (!f) return refusal("the transaction creates no single fund");
    if (!std::any_of(f->committee.begin(), f->committee.end(), [&](const Key& k) { return holdsKey(*s, k); })) {
      return refusal("this node is not on the committee of fund '" + f->name + "'");
    }
    if (!among(f->committee, *who)) return refusal("'" + initiator + "' is not on the committee it proposes");
    if (policy.majority_required && f->threshold * 2 <= f->committee.size()) {
      return refusal("fund '" + f->name + "' needs " + std::to_string(f->threshold) + " of " +
                    std::to_string(f->committee.size()) + " approvals; this member serves only where a majority decides");
    }
    if (f->principalMaxMinor > policy.principal_max_minor) {
      return refusal("fund '" + f->name + "''s principal limit is above this member's " +
                    std::to_string(policy.principal_max_minor));
    }
    return {};
  };
  svc.checks[std::string(loan_approve_deal)] = [s, policy](const LedgerTransaction& tx,
                                                            const std::string& initiator) -> Status {
    auto who = initiatorKey(*s, initiator);
    if (!who) return who.error();
    auto before = onlyLoan(tx.inputsOf(loan_contract));
    auto after = onlyLoan(tx.outputsOf(loan_contract));
    if (!before || !after) return refusal("the transaction approves no single loan");
    const bool approver = std::any_of(after->approvals.begin(), after->approvals.end(),
                                      [&](const Key& k) { return holdsKey(*s, k); });
    if (!approver || !among(after->committee, s->identity.owningKey)) {
      return refusal("this node is not an approving committee member of loan " + after->loanId.hex());
    }
    if (!among(after->committee, *who)) return refusal("'" + initiator + "' is not on the loan's committee");
    if (auto cred = checkCredential(tx, after->borrower, "the borrower"); !cred) {
      return refusal("the borrower's credential: " + cred.error().message);
    }
    Review v = reviewLoan(*s, policy, *after);
    if (!v.wouldApprove) return refusal(v.reason + " (" + describeCreditReport(v.report) + ")");
    return {};
  };
  svc.checks[std::string(loan_disburse_deal)] = [s, policy](const LedgerTransaction& tx,
                                                             const std::string& initiator) -> Status {
    auto who = initiatorKey(*s, initiator);
    if (!who) return who.error();
    auto before = onlyLoan(tx.inputsOf(loan_contract));
    auto after = onlyLoan(tx.outputsOf(loan_contract));
    if (!before || !after || before->status != LoanStatus::approved) {
      return refusal("the transaction disburses no single approved loan");
    }
    if (!among(after->approvals, s->identity.owningKey)) return refusal("this node did not approve this loan");
    if (!among(after->approvals, *who)) return refusal("'" + initiator + "' did not approve this loan");
    if (after->principalMinor > policy.principal_max_minor) {
      return refusal("a principal of " + std::to_string(after->principalMinor) + " is above this member's limit");
    }
    auto paid = netTokensTo(tx, after->borrower, after->currency);
    if (!paid || *paid != after->principalMinor) return refusal("the borrower is not paid exactly the principal");
    if (auto cred = checkCredential(tx, after->borrower, "the borrower"); !cred) {
      return refusal("the borrower's credential: " + cred.error().message);
    }
    return {};
  };
  // A disbursement: the fund pays the borrower the principal (the contract
  // checks the fund's net payment is exactly that).
  svc.outflows[std::string(loan_disburse_deal)] = [](const LedgerTransaction& tx) {
    std::vector<TokenOutflow> out;
    auto after = onlyLoan(tx.outputsOf(loan_contract));
    if (!after) return out;
    auto key = fundKey(after->committee, after->threshold);
    if (key) out.push_back({*key, after->currency, after->principalMinor});
    return out;
  };
  svc.checks[std::string(loan_default_deal)] = [s](const LedgerTransaction& tx,
                                                   const std::string& initiator) -> Status {
    auto who = initiatorKey(*s, initiator);
    if (!who) return who.error();
    auto after = onlyLoan(tx.outputsOf(loan_contract));
    if (!after || after->status != LoanStatus::defaulted) return refusal("the transaction defaults no single loan");
    if (!among(after->approvals, s->identity.owningKey)) return refusal("this node did not approve this loan");
    if (!among(after->committee, *who)) return refusal("'" + initiator + "' is not on the loan's committee");
    return {};
  };
}

Status registerLoanFlows(FlowRuntime& runtime, const FlowServices& services, const DealConfig& config,
                         const LoanPolicy& policy) {
  auto sh = std::make_shared<const Shared>(Shared{&services, config, policy});
  using Body = Flow<Bytes> (*)(FlowContext&, std::shared_ptr<const Shared>, Bytes);
  const std::vector<std::pair<std::string_view, Body>> flows = {
      {loan_fund_create_deal, fundCreateFlow}, {loan_fund_contribute_deal, contributeFlow},
      {loan_request_deal, requestFlow},        {loan_review_responder, reviewResponder},
      {loan_approve_deal, approveFlow},        {loan_disburse_deal, disburseFlow},
      {loan_repay_deal, repayFlow},            {loan_default_deal, defaultFlow},
  };
  for (const auto& [name, body] : flows) {
    Body fn = body;
    if (auto s = runtime.registerFlow(std::string(name),
                                      [sh, fn](FlowContext& ctx, Bytes args) { return fn(ctx, sh, std::move(args)); });
        !s) {
      return s;
    }
  }
  return runtime.registerInitiating(std::string(loan_review_flow), std::string(loan_review_responder));
}

}  // namespace ccal::flows
