#include "contracts/loan.h"

#include <doctest/doctest.h>

#include <algorithm>

#include "contracts/contract_testing.h"

using namespace ccal;
using namespace ccal::contracts;
using namespace ccal::contracts::testing;

namespace {

// A loan-contract deal in the style of contract_testing.h: states in and
// out, references, commands with signers (keys, so the fund's composite key
// can sign a token move), then verifies() / fails(code).
class LoanDeal {
 public:
  explicit LoanDeal(Ledger& l) : l_(l), notary_(l.notary.party()), b_(notary_) {}

  LoanDeal& in(TransactionState s) {
    const uint64_t n = l_.nextRef++;
    b_.addInput(StateRef{SecureHash::of(ByteView(reinterpret_cast<const uint8_t*>(&n), sizeof n)), 0});
    inputs_.push_back(std::move(s));
    return *this;
  }
  LoanDeal& out(TransactionState s) {
    b_.addOutput(std::move(s));
    return *this;
  }
  LoanDeal& ref(TransactionState s) {
    refs_.push_back(std::move(s));
    return *this;
  }
  LoanDeal& credential(const Member& m) { return ref(memberState(notary_, m)); }
  LoanDeal& fundIn(const Fund& f) { return in(fundState(notary_, f)); }
  LoanDeal& fundOut(const Fund& f) { return out(fundState(notary_, f)); }
  LoanDeal& loanIn(const Loan& x) { return in(loanState(notary_, x)); }
  LoanDeal& loanOut(const Loan& x) { return out(loanState(notary_, x)); }
  LoanDeal& record(const CreditRecord& r, const std::vector<Key>& committee) {
    return out(creditRecordState(notary_, r, committee));
  }
  LoanDeal& tokenIn(const Key& owner, int64_t minor, const std::string& currency = "CNY") {
    return in(tokenState(notary_, Token{owner, l_.bank.key(), currency, minor}));
  }
  LoanDeal& tokenOut(const Key& owner, int64_t minor, const std::string& currency = "CNY") {
    return out(tokenState(notary_, Token{owner, l_.bank.key(), currency, minor}));
  }
  // A token move of `minor` from `from` to `to`, signed by `from`.
  LoanDeal& pays(const Key& from, const Key& to, int64_t minor, const std::string& currency = "CNY") {
    tokenIn(from, minor, currency).tokenOut(to, minor, currency);
    commands_.push_back(Command{std::string(token_move_command), {}, {from}});
    return *this;
  }
  LoanDeal& command(std::string_view type, std::vector<Key> signers) {
    commands_.push_back(Command{std::string(type), {}, std::move(signers)});
    return *this;
  }
  LoanDeal& window(std::optional<int64_t> from, std::optional<int64_t> until) {
    b_.setTimeWindow(TimeWindow{from, until});
    return *this;
  }

  Status verify() {
    TransactionBuilder b = b_;
    for (size_t i = 0; i < refs_.size(); ++i) {
      const uint64_t n = 2'000'000 + i;
      b.addReference(StateRef{SecureHash::of(ByteView(reinterpret_cast<const uint8_t*>(&n), sizeof n)), 0});
    }
    for (const auto& c : commands_) b.addCommand(c);
    auto wtx = b.build();
    if (!wtx) return wtx.error();
    auto ltx = LedgerTransaction::resolve(*wtx, inputs_, refs_);
    if (!ltx) return ltx.error();
    return l_.registry.verify(*ltx);
  }
  void verifies() {
    auto s = verify();
    CHECK_MESSAGE(s.ok(), (s ? std::string() : s.error().message));
  }
  void fails(const std::string& code) {
    auto s = verify();
    REQUIRE_MESSAGE(!s.ok(), "expected rejection [" << code << "], but the deal verifies");
    CHECK_MESSAGE(s.error().message.find("[" + code + "]") != std::string::npos,
                  "expected [" << code << "], got: " << s.error().message);
  }

 private:
  Ledger& l_;
  Party notary_;
  TransactionBuilder b_;
  std::vector<TransactionState> inputs_, refs_;
  std::vector<Command> commands_;
};

// The fund of coopA, coopB and coopC, any 2 of 3; coopC borrows.
struct Fixture {
  Ledger l;
  std::vector<Key> committee;
  Fund fund;
  Key fkey;
  Member card;
  Loan requested;

  Fixture() {
    committee = {l.coopA.key(), l.coopB.key(), l.bank.key()};
    std::sort(committee.begin(), committee.end());
    fund = Fund{SecureHash::of(Bytes{1}), "Hainan Mutual Aid", committee, 2, "CNY", 100, 1200, 30, 720,
                1'000'000, {}, {}};
    fkey = fundKey(committee, 2).value();
    card = l.credential(l.coopA, l.coopC);
    requested = Loan{SecureHash::of(Bytes{2}), fund.fundId, l.coopC.key(), committee, 2, "CNY", 100'000, 600, 90, 3,
                     LoanStatus::requested, {}, 0, 0};
  }
  LoanDeal deal() { return LoanDeal(l); }
  Loan approved() const {
    Loan x = requested;
    x.status = LoanStatus::approved;
    x.approvals = {l.coopA.key(), l.coopB.key()};
    return x;
  }
  Loan disbursed() const {
    Loan x = approved();
    x.status = LoanStatus::disbursed;
    x.disbursedMicros = t0_micros;
    return x;
  }
  Fund funded() const {
    Fund f = fund;
    f.contributions = {{l.coopA.key(), 500'000}};
    return f;
  }
  CreditRecord rec(CreditEvent e, int64_t amount, int64_t at) const {
    return CreditRecord{l.coopC.key(), fund.fundId, requested.loanId, e, amount, "CNY", at};
  }
};

}  // namespace

TEST_CASE("loan states round-trip, declare their fields, and compute the schedule") {
  Fixture f;
  const Party n = f.l.notary.party();
  CHECK(decodeFund(encodeFund(f.funded())).value() == f.funded());
  CHECK(decodeLoan(encodeLoan(f.disbursed())).value() == f.disbursed());
  const CreditRecord r = f.rec(CreditEvent::late_payment, 5, t0_micros);
  CHECK(decodeCreditRecord(encodeCreditRecord(r)).value() == r);
  auto fv = FundSchema().view(fundState(n, f.funded())).value();
  CHECK(fv.linearId == f.fund.fundId);
  CHECK(fv.fields.size() == FundSchema().fields().size());
  auto lv = LoanSchema().view(loanState(n, f.disbursed())).value();
  CHECK(lv.linearId == f.requested.loanId);
  CHECK(lv.fields.size() == LoanSchema().fields().size());
  CHECK(CreditRecordSchema().view(creditRecordState(n, r, f.committee)).value().fields.size() == 7);
  // 100000 at 6% over 90 days in 3 instalments: 106000, due every 30 days.
  const Loan d = f.disbursed();
  CHECK(loanTotalDue(d).value() == 106'000);
  CHECK(cumulativeDue(d, 1) == 35'333);
  CHECK(cumulativeDue(d, 3) == 106'000);
  CHECK(instalmentDueMicros(d, 2) == t0_micros + 60 * day_micros);
  CHECK(nextUnpaidInstalment(d).value() == 1);
  Loan part = d;
  part.repaidMinor = 35'333;
  CHECK(nextUnpaidInstalment(part).value() == 2);
  part.repaidMinor = 106'000;
  CHECK_FALSE(nextUnpaidInstalment(part).has_value());
  CHECK(loanOutstanding(d) == 106'000);
  // The fund key is k of n of the committee.
  CHECK(f.fkey.isFulfilledBy(std::vector<PublicKey>{f.l.coopA.key().single(), f.l.bank.key().single()}));
  CHECK_FALSE(f.fkey.isFulfilledBy(std::vector<PublicKey>{f.l.coopA.key().single()}));
  CHECK_FALSE(fundKey(f.committee, 4).ok());
  CHECK_FALSE(fundKey({f.fkey}, 1).ok());
}

TEST_CASE("loan CreateFund: every committee member signs; sound committee and limits") {
  Fixture f;
  const auto& c = f.committee;
  f.deal().fundOut(f.fund).command(loan_create_fund_command, c).verifies();
  f.deal().fundOut(f.fund).command(loan_create_fund_command, {c[0], c[1]}).fails("missing_signature");
  auto with = [&](auto change) {
    Fund x = f.fund;
    change(x);
    return x;
  };
  f.deal().fundOut(with([](Fund& x) { x.name = ""; })).command(loan_create_fund_command, c).fails("missing_field");
  f.deal().fundOut(with([](Fund& x) { x.threshold = 0; })).command(loan_create_fund_command, c).fails("bad_threshold");
  f.deal().fundOut(with([](Fund& x) { x.threshold = 4; })).command(loan_create_fund_command, c).fails("bad_threshold");
  f.deal().fundOut(with([](Fund& x) { x.committee = {}; })).command(loan_create_fund_command, c).fails("bad_committee");
  f.deal().fundOut(with([](Fund& x) { std::swap(x.committee[0], x.committee[1]); }))
      .command(loan_create_fund_command, c).fails("bad_committee");
  f.deal().fundOut(with([](Fund& x) { x.committee[1] = x.committee[0]; }))
      .command(loan_create_fund_command, c).fails("bad_committee");
  f.deal().fundOut(with([](Fund& x) { x.currency = "cny"; })).command(loan_create_fund_command, c).fails("bad_currency");
  f.deal().fundOut(with([](Fund& x) { x.interestMinBp = 2000; })).command(loan_create_fund_command, c).fails("bad_limits");
  f.deal().fundOut(with([](Fund& x) { x.interestMaxBp = 20000; })).command(loan_create_fund_command, c).fails("bad_limits");
  f.deal().fundOut(with([](Fund& x) { x.termMinDays = 0; })).command(loan_create_fund_command, c).fails("bad_limits");
  f.deal().fundOut(with([](Fund& x) { x.termMaxDays = 10; })).command(loan_create_fund_command, c).fails("bad_limits");
  f.deal().fundOut(with([](Fund& x) { x.principalMaxMinor = 0; })).command(loan_create_fund_command, c).fails("non_positive");
  f.deal().fundOut(f.funded()).command(loan_create_fund_command, c).fails("has_contributions");
  f.deal().fundOut(f.fund).fundOut(f.fund).command(loan_create_fund_command, c).fails("one_output");
  f.deal().fundIn(f.fund).fundOut(f.fund).command(loan_create_fund_command, c).fails("illegal_step");
  f.deal().fundOut(f.fund).command(member_issue_command, c).fails("one_command");
  f.deal().fundOut(f.fund).command(loan_create_fund_command, c).command(loan_approve_command, c).fails("one_command");
  f.deal().fundOut(f.fund).command("ccal.loan.Dissolve", c).fails("unknown_command");
  // Members besides the committee hold the fund too.
  {
    Fund withMembers = f.fund;
    withMembers.members = {f.l.coopC.key()};
    f.deal().fundOut(withMembers).command(loan_create_fund_command, c).verifies();
    CHECK(fundState(f.l.notary.party(), withMembers).participants.size() == 4);
    withMembers.members.assign(members_max + 1, f.l.coopC.key());
    f.deal().fundOut(withMembers).command(loan_create_fund_command, c).fails("bad_committee");
  }
  // Shared with exactly the committee (and members).
  {
    TransactionState s = fundState(f.l.notary.party(), f.fund);
    s.participants.pop_back();
    f.deal().out(s).command(loan_create_fund_command, c).fails("wrong_participants");
  }
}

TEST_CASE("loan Contribute: the fund key receives exactly the contribution, the contributor signs") {
  Fixture f;
  const Key a = f.l.coopA.key(), cc = f.l.coopC.key();
  f.deal().fundIn(f.fund).fundOut(f.funded()).command(loan_contribute_command, {a}).pays(a, f.fkey, 500'000).verifies();
  // A second contributor, then a second contribution of the first.
  Fund two = f.funded();
  two.contributions.push_back({cc, 200'000});
  f.deal().fundIn(f.funded()).fundOut(two).command(loan_contribute_command, {cc}).pays(cc, f.fkey, 200'000).verifies();
  Fund more = two;
  more.contributions[0].amountMinor += 1;
  f.deal().fundIn(two).fundOut(more).command(loan_contribute_command, {a}).pays(a, f.fkey, 1).verifies();
  // Rejections.
  f.deal().fundIn(f.fund).fundOut(f.funded()).command(loan_contribute_command, {cc}).pays(a, f.fkey, 500'000)
      .fails("missing_signature");
  f.deal().fundIn(f.fund).fundOut(f.funded()).command(loan_contribute_command, {a}).pays(a, f.fkey, 499'999)
      .fails("payment_mismatch");
  f.deal().fundIn(f.fund).fundOut(f.funded()).command(loan_contribute_command, {a}).pays(a, f.l.coopB.key(), 500'000)
      .fails("payment_mismatch");
  f.deal().fundIn(f.fund).fundOut(f.funded()).command(loan_contribute_command, {a})
      .pays(a, f.fkey, 500'000, "EUR").fails("payment_mismatch");
  f.deal().fundIn(f.funded()).fundOut(f.funded()).command(loan_contribute_command, {a}).fails("non_positive");
  {
    Fund less = f.funded();
    less.contributions[0].amountMinor -= 1;
    f.deal().fundIn(f.funded()).fundOut(less).command(loan_contribute_command, {a}).fails("bad_contribution");
    Fund both = two;
    both.contributions[0].amountMinor += 1;
    both.contributions[1].amountMinor += 1;
    f.deal().fundIn(two).fundOut(both).command(loan_contribute_command, {a, cc}).pays(a, f.fkey, 2)
        .fails("bad_contribution");
    Fund dup = f.funded();
    dup.contributions.push_back({a, 1});
    f.deal().fundIn(f.funded()).fundOut(dup).command(loan_contribute_command, {a}).pays(a, f.fkey, 1)
        .fails("bad_contribution");
    Fund dropped = f.fund;
    f.deal().fundIn(two).fundOut(dropped).command(loan_contribute_command, {a}).fails("bad_contribution");
    // Nobody joins with nothing (a participant of every later fund transaction).
    Fund outsider = more;
    outsider.contributions.push_back({f.l.coopB.key(), 0});
    f.deal()
        .fundIn(two)
        .fundOut(outsider)
        .command(loan_contribute_command, {a})
        .pays(a, f.fkey, 1)
        .fails("bad_contribution");
  }
  {
    Fund joined = f.funded();
    joined.members = {cc};
    f.deal().fundIn(f.fund).fundOut(joined).command(loan_contribute_command, {a}).pays(a, f.fkey, 500'000)
        .fails("changed_terms");
    Fund renamed = f.funded();
    renamed.name = "Mine";
    f.deal().fundIn(f.fund).fundOut(renamed).command(loan_contribute_command, {a}).pays(a, f.fkey, 500'000)
        .fails("changed_terms");
  }
  f.deal().fundOut(f.funded()).command(loan_contribute_command, {a}).pays(a, f.fkey, 500'000).fails("illegal_step");
  f.deal().fundIn(f.fund).fundOut(f.funded()).loanOut(f.requested).command(loan_contribute_command, {a})
      .pays(a, f.fkey, 500'000).fails("illegal_step");
}

TEST_CASE("loan Request: a member borrower within the fund's limits, referencing the fund") {
  Fixture f;
  const Key cc = f.l.coopC.key();
  auto request = [&](const Loan& x) {
    return std::move(f.deal().loanOut(x).ref(fundState(f.l.notary.party(), f.funded())).credential(f.card)
                         .window(t0_micros, t0_micros + day_micros).command(loan_request_command, {cc}));
  };
  request(f.requested).verifies();
  f.deal().loanOut(f.requested).ref(fundState(f.l.notary.party(), f.funded())).credential(f.card)
      .window(t0_micros, t0_micros + day_micros).command(loan_request_command, {f.l.coopA.key()})
      .fails("missing_signature");
  auto with = [&](auto change) {
    Loan x = f.requested;
    change(x);
    return x;
  };
  request(with([](Loan& x) { x.principalMinor = 0; })).fails("non_positive");
  request(with([](Loan& x) { x.principalMinor = 1'000'001; })).fails("outside_limits");
  request(with([](Loan& x) { x.interestBp = 99; })).fails("outside_limits");
  request(with([](Loan& x) { x.interestBp = 1201; })).fails("outside_limits");
  request(with([](Loan& x) { x.termDays = 29; })).fails("outside_limits");
  request(with([](Loan& x) { x.termDays = 721; })).fails("outside_limits");
  request(with([](Loan& x) { x.instalments = 0; })).fails("bad_schedule");
  request(with([](Loan& x) { x.instalments = 121; })).fails("bad_schedule");
  request(with([](Loan& x) { x.threshold = 1; })).fails("fund_mismatch");
  request(with([](Loan& x) { x.currency = "EUR"; })).fails("fund_mismatch");
  request(with([](Loan& x) { x.fundId = SecureHash::of(Bytes{9}); })).fails("fund_missing");
  request(with([](Loan& x) { x.status = LoanStatus::approved; })).fails("illegal_step");
  request(with([](Loan& x) { x.repaidMinor = 1; })).fails("illegal_step");
  // The borrower's credential, by reference, valid over the window.
  f.deal().loanOut(f.requested).ref(fundState(f.l.notary.party(), f.funded()))
      .window(t0_micros, t0_micros + day_micros).command(loan_request_command, {cc}).fails("not_member");
  f.deal().loanOut(f.requested).ref(fundState(f.l.notary.party(), f.funded()))
      .credential(f.l.credential(f.l.coopA, f.l.coopC, t0_micros - day_micros, t0_micros + 10))
      .window(t0_micros, t0_micros + day_micros).command(loan_request_command, {cc}).fails("not_member");
  f.deal().loanOut(f.requested).ref(fundState(f.l.notary.party(), f.funded())).credential(f.card)
      .window(t0_micros, std::nullopt).command(loan_request_command, {cc}).fails("time_window_missing");
  request(f.requested).loanIn(f.requested).fails("illegal_step");
  request(f.requested).loanOut(f.requested).fails("one_output");
  request(f.requested).record(f.rec(CreditEvent::repayment_on_time, 1, t0_micros), f.committee).fails("illegal_step");
  {
    TransactionState s = loanState(f.l.notary.party(), f.requested);
    s.participants = {cc};
    f.deal().out(s).ref(fundState(f.l.notary.party(), f.funded())).credential(f.card)
        .window(t0_micros, t0_micros + day_micros).command(loan_request_command, {cc}).fails("wrong_participants");
  }
}

TEST_CASE("loan Approve: k of n committee members, each signing") {
  Fixture f;
  const Key a = f.l.coopA.key(), b = f.l.coopB.key(), bank = f.l.bank.key(), cc = f.l.coopC.key();
  f.deal().loanIn(f.requested).loanOut(f.approved()).command(loan_approve_command, {a, b}).verifies();
  Loan all = f.approved();
  all.approvals = {a, b, bank};
  f.deal().loanIn(f.requested).loanOut(all).command(loan_approve_command, {a, b, bank}).verifies();
  // Fewer than k: refused.
  Loan one = f.approved();
  one.approvals = {a};
  f.deal().loanIn(f.requested).loanOut(one).command(loan_approve_command, {a}).fails("approvals_below_threshold");
  Loan twice = f.approved();
  twice.approvals = {a, a};
  f.deal().loanIn(f.requested).loanOut(twice).command(loan_approve_command, {a}).fails("not_committee");
  Loan outsider = f.approved();
  outsider.approvals = {a, cc};
  f.deal().loanIn(f.requested).loanOut(outsider).command(loan_approve_command, {a, cc}).fails("not_committee");
  f.deal().loanIn(f.requested).loanOut(f.approved()).command(loan_approve_command, {a}).fails("missing_signature");
  // Lifecycle and terms.
  f.deal().loanIn(f.approved()).loanOut(f.approved()).command(loan_approve_command, {a, b}).fails("illegal_step");
  Loan bigger = f.approved();
  bigger.principalMinor += 1;
  f.deal().loanIn(f.requested).loanOut(bigger).command(loan_approve_command, {a, b}).fails("changed_terms");
  Loan disbursed = f.approved();
  disbursed.status = LoanStatus::disbursed;
  f.deal().loanIn(f.requested).loanOut(disbursed).command(loan_approve_command, {a, b}).fails("illegal_step");
  f.deal().loanOut(f.approved()).command(loan_approve_command, {a, b}).fails("illegal_step");
}

TEST_CASE("loan Disburse: the fund key pays the principal to the borrower, k of n sign") {
  Fixture f;
  const Key a = f.l.coopA.key(), b = f.l.coopB.key(), cc = f.l.coopC.key();
  auto disburse = [&](const Loan& out) {
    return std::move(f.deal()
                         .loanIn(f.approved())
                         .loanOut(out)
                         .window(t0_micros - 10, t0_micros + day_micros - 10)
                         .command(loan_disburse_command, {a, b}));
  };
  // Exact principal from the fund key, and with change back to the fund.
  disburse(f.disbursed()).pays(f.fkey, cc, 100'000).verifies();
  disburse(f.disbursed()).tokenIn(f.fkey, 700'000).tokenOut(cc, 100'000).tokenOut(f.fkey, 600'000)
      .command(token_move_command, {f.fkey}).verifies();
  // Only k-1 committee members on the loan command.
  f.deal()
      .loanIn(f.approved())
      .loanOut(f.disbursed())
      .window(t0_micros - 10, t0_micros + day_micros - 10)
      .command(loan_disburse_command, {a, cc})
      .pays(f.fkey, cc, 100'000)
      .fails("approvals_below_threshold");
  // Not from the fund, not the principal.
  disburse(f.disbursed()).pays(a, cc, 100'000).fails("payment_mismatch");
  disburse(f.disbursed()).pays(f.fkey, cc, 99'999).fails("payment_mismatch");
  disburse(f.disbursed()).pays(f.fkey, cc, 100'000, "EUR").fails("payment_mismatch");
  disburse(f.disbursed()).fails("payment_mismatch");
  // The token contract refuses fund tokens moved without the fund key.
  disburse(f.disbursed()).tokenIn(f.fkey, 100'000).tokenOut(cc, 100'000).command(token_move_command, {a})
      .fails("missing_signature");
  // Time.
  Loan late = f.disbursed();
  late.disbursedMicros = t0_micros + 2 * day_micros;
  disburse(late).pays(f.fkey, cc, 100'000).fails("not_disbursed_in_window");
  f.deal().loanIn(f.approved()).loanOut(f.disbursed()).window(t0_micros, std::nullopt)
      .command(loan_disburse_command, {a, b}).pays(f.fkey, cc, 100'000).fails("time_window_missing");
  // Dated anywhere in a window of decades: refused (a default could follow at once).
  Loan ancient = f.disbursed();
  ancient.disbursedMicros = 0;
  f.deal()
      .loanIn(f.approved())
      .loanOut(ancient)
      .window(0, INT64_MAX)
      .command(loan_disburse_command, {a, b})
      .pays(f.fkey, cc, 100'000)
      .fails("time_window_too_wide");
  f.deal()
      .loanIn(f.approved())
      .loanOut(f.disbursed())
      .window(t0_micros - 10, t0_micros + day_micros - 9)
      .command(loan_disburse_command, {a, b})
      .pays(f.fkey, cc, 100'000)
      .fails("time_window_too_wide");
  // Lifecycle.
  f.deal()
      .loanIn(f.requested)
      .loanOut(f.disbursed())
      .window(t0_micros - 10, t0_micros + day_micros - 10)
      .command(loan_disburse_command, {a, b})
      .pays(f.fkey, cc, 100'000)
      .fails("illegal_step");
  Loan paid = f.disbursed();
  paid.repaidMinor = 1;
  disburse(paid).pays(f.fkey, cc, 100'000).fails("illegal_step");
}

TEST_CASE("loan Repay: instalments with interest, each leaving a credit record; late after the due date") {
  Fixture f;
  const Key a = f.l.coopA.key(), cc = f.l.coopC.key();
  const Loan d = f.disbursed();
  const int64_t due1 = instalmentDueMicros(d, 1);
  Loan after1 = d;
  after1.repaidMinor = 35'333;
  const int64_t at = t0_micros + day_micros;
  auto repay = [&](const Loan& before, const Loan& out, int64_t from, int64_t until) {
    return std::move(f.deal().loanIn(before).loanOut(out).window(from, until).command(loan_repay_command, {cc}));
  };
  // On time: the window ends by the due date.
  repay(d, after1, at - 10, at + 10).pays(cc, f.fkey, 35'333)
      .record(f.rec(CreditEvent::repayment_on_time, 35'333, at), f.committee).verifies();
  repay(d, after1, due1 - 10, due1 + 1).pays(cc, f.fkey, 35'333)
      .record(f.rec(CreditEvent::repayment_on_time, 35'333, due1), f.committee).verifies();
  // Late: the window starts after it.
  repay(d, after1, due1 + 1, due1 + 100).pays(cc, f.fkey, 35'333)
      .record(f.rec(CreditEvent::late_payment, 35'333, due1 + 50), f.committee).verifies();
  repay(d, after1, due1 + 1, due1 + 100).pays(cc, f.fkey, 35'333)
      .record(f.rec(CreditEvent::repayment_on_time, 35'333, due1 + 50), f.committee).fails("record_mismatch");
  repay(d, after1, due1 - 10, due1 + 10).pays(cc, f.fkey, 35'333)
      .record(f.rec(CreditEvent::repayment_on_time, 35'333, due1), f.committee).fails("time_window_straddles_due");
  // The last instalment settles the loan.
  Loan last = d;
  last.repaidMinor = 70'666;
  Loan settled = d;
  settled.repaidMinor = 106'000;
  settled.status = LoanStatus::repaid;
  repay(last, settled, at - 10, at + 10).pays(cc, f.fkey, 35'334)
      .record(f.rec(CreditEvent::full_settlement, 35'334, at), f.committee).verifies();
  Loan notClosed = settled;
  notClosed.status = LoanStatus::disbursed;
  repay(last, notClosed, at - 10, at + 10).pays(cc, f.fkey, 35'334)
      .record(f.rec(CreditEvent::full_settlement, 35'334, at), f.committee).fails("illegal_step");
  Loan over = settled;
  over.repaidMinor = 106'001;
  repay(last, over, at - 10, at + 10).pays(cc, f.fkey, 35'335)
      .record(f.rec(CreditEvent::full_settlement, 35'335, at), f.committee).fails("overpaid");
  // Payment, signature, record rules.
  repay(d, after1, at - 10, at + 10).pays(cc, f.fkey, 35'332)
      .record(f.rec(CreditEvent::repayment_on_time, 35'333, at), f.committee).fails("payment_mismatch");
  repay(d, after1, at - 10, at + 10).pays(cc, a, 35'333)
      .record(f.rec(CreditEvent::repayment_on_time, 35'333, at), f.committee).fails("payment_mismatch");
  f.deal().loanIn(d).loanOut(after1).window(at - 10, at + 10).command(loan_repay_command, {a})
      .pays(cc, f.fkey, 35'333).record(f.rec(CreditEvent::repayment_on_time, 35'333, at), f.committee)
      .fails("missing_signature");
  repay(d, after1, at - 10, at + 10).pays(cc, f.fkey, 35'333).fails("record_missing");
  repay(d, after1, at - 10, at + 10).pays(cc, f.fkey, 35'333)
      .record(f.rec(CreditEvent::repayment_on_time, 35'000, at), f.committee).fails("record_mismatch");
  repay(d, after1, at - 10, at + 10).pays(cc, f.fkey, 35'333)
      .record(f.rec(CreditEvent::repayment_on_time, 35'333, at + 20), f.committee).fails("record_mismatch");
  {
    CreditRecord other = f.rec(CreditEvent::repayment_on_time, 35'333, at);
    other.subject = a;
    repay(d, after1, at - 10, at + 10).pays(cc, f.fkey, 35'333).record(other, f.committee).fails("record_mismatch");
  }
  repay(d, after1, at - 10, at + 10).pays(cc, f.fkey, 35'333)
      .record(f.rec(CreditEvent::repayment_on_time, 35'333, at), {a}).fails("wrong_participants");
  repay(d, d, at - 10, at + 10).fails("non_positive");
  f.deal().loanIn(d).loanOut(after1).window(at - 10, std::nullopt).command(loan_repay_command, {cc})
      .pays(cc, f.fkey, 35'333).record(f.rec(CreditEvent::repayment_on_time, 35'333, at), f.committee)
      .fails("time_window_missing");
  // Lifecycle: only a disbursed loan is repaid; records are never consumed.
  repay(f.approved(), after1, at - 10, at + 10).pays(cc, f.fkey, 35'333)
      .record(f.rec(CreditEvent::repayment_on_time, 35'333, at), f.committee).fails("illegal_step");
  repay(d, after1, at - 10, at + 10).pays(cc, f.fkey, 35'333)
      .record(f.rec(CreditEvent::repayment_on_time, 35'333, at), f.committee)
      .in(creditRecordState(f.l.notary.party(), f.rec(CreditEvent::late_payment, 1, at), f.committee))
      .fails("record_consumed");
  Loan changed = after1;
  changed.interestBp = 100;
  repay(d, changed, at - 10, at + 10).pays(cc, f.fkey, 35'333)
      .record(f.rec(CreditEvent::repayment_on_time, 35'333, at), f.committee).fails("changed_terms");
}

TEST_CASE("loan Default: after the due date, by k of n of the committee, with a credit record") {
  Fixture f;
  const Key a = f.l.coopA.key(), b = f.l.coopB.key(), cc = f.l.coopC.key();
  Loan d = f.disbursed();
  d.repaidMinor = 35'333;
  Loan def = d;
  def.status = LoanStatus::defaulted;
  const int64_t due2 = instalmentDueMicros(d, 2);
  const int64_t at = due2 + day_micros;
  f.deal().loanIn(d).loanOut(def).window(at - 10, at + 10).command(loan_default_command, {a, b})
      .record(f.rec(CreditEvent::loan_default, 70'667, at), f.committee).verifies();
  f.deal().loanIn(d).loanOut(def).window(due2 - 10, due2 + 10).command(loan_default_command, {a, b})
      .record(f.rec(CreditEvent::loan_default, 70'667, due2), f.committee).fails("not_overdue");
  f.deal()
      .loanIn(d)
      .loanOut(def)
      .window(at - 10, at + 2 * day_micros)
      .command(loan_default_command, {a, b})
      .record(f.rec(CreditEvent::loan_default, 70'667, at), f.committee)
      .fails("time_window_too_wide");
  f.deal().loanIn(d).loanOut(def).window(at - 10, at + 10).command(loan_default_command, {a, cc})
      .record(f.rec(CreditEvent::loan_default, 70'667, at), f.committee).fails("approvals_below_threshold");
  f.deal().loanIn(d).loanOut(def).window(at - 10, at + 10).command(loan_default_command, {a, b})
      .record(f.rec(CreditEvent::loan_default, 1, at), f.committee).fails("record_mismatch");
  f.deal().loanIn(d).loanOut(def).window(at - 10, at + 10).command(loan_default_command, {a, b})
      .fails("record_missing");
  f.deal().loanIn(d).loanOut(d).window(at - 10, at + 10).command(loan_default_command, {a, b})
      .record(f.rec(CreditEvent::loan_default, 70'667, at), f.committee).fails("illegal_step");
  Loan settled = d;
  settled.status = LoanStatus::repaid;
  Loan settledDef = settled;
  settledDef.status = LoanStatus::defaulted;
  f.deal().loanIn(settled).loanOut(settledDef).window(at - 10, at + 10).command(loan_default_command, {a, b})
      .record(f.rec(CreditEvent::loan_default, 70'667, at), f.committee).fails("illegal_step");
}
