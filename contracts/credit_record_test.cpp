#include "contracts/credit_record.h"

#include <doctest/doctest.h>

#include "contracts/contract_testing.h"

using namespace ccal;
using namespace ccal::contracts;
using namespace ccal::contracts::testing;

TEST_CASE("creditReport summarises a subject's records and loans, once each, ignoring others") {
  Ledger l;
  const Party n = l.notary.party();
  std::vector<Key> committee = {l.coopA.key(), l.coopB.key()};
  std::sort(committee.begin(), committee.end());
  const SecureHash fund = SecureHash::of(Bytes{1});
  Loan loan1{SecureHash::of(Bytes{2}), fund, l.coopC.key(), committee, 1, "CNY", 100'000, 600, 90, 3,
             LoanStatus::disbursed, {l.coopA.key()}, t0_micros, 0};
  Loan loan2 = loan1;
  loan2.loanId = SecureHash::of(Bytes{3});
  loan2.principalMinor = 10'000;
  loan2.instalments = 1;
  Loan requestedOnly = loan1;
  requestedOnly.loanId = SecureHash::of(Bytes{4});
  requestedOnly.status = LoanStatus::requested;
  auto rec = [&](const Loan& x, CreditEvent e, int64_t amount, int64_t at) {
    return creditRecordState(n, CreditRecord{l.coopC.key(), fund, x.loanId, e, amount, "CNY", at}, committee);
  };

  // Nothing known: an empty report.
  CreditReport empty = creditReport(l.coopC.key(), {});
  CHECK(empty.loans_taken == 0);
  CHECK(empty.subject == l.coopC.key().hash());
  CHECK(describeCreditReport(empty) == "loans 0, on time 0, late 0, defaulted 0, settled 0, outstanding none");

  // loan1: two instalments (one late), still outstanding; loan2: settled in
  // one payment; the history of loan1 (its disbursed state before the
  // repayments) does not count twice; a requested loan is not taken.
  Loan loan1Now = loan1;
  loan1Now.repaidMinor = 70'666;
  Loan loan2Now = loan2;
  loan2Now.repaidMinor = 10'600;
  loan2Now.status = LoanStatus::repaid;
  std::vector<TransactionState> states = {
      loanState(n, loan1),
      loanState(n, loan1Now),
      loanState(n, loan2Now),
      loanState(n, requestedOnly),
      rec(loan1, CreditEvent::repayment_on_time, 35'333, t0_micros + 1),
      rec(loan1, CreditEvent::late_payment, 35'333, t0_micros + 61 * day_micros),
      rec(loan2, CreditEvent::full_settlement, 10'600, t0_micros + 2),
      // Someone else's record and loan, and a token: ignored.
      creditRecordState(n, CreditRecord{l.coopA.key(), fund, loan1.loanId, CreditEvent::loan_default, 5, "CNY", 1},
                        committee),
      tokenState(n, Token{l.coopC.key(), l.bank.key(), "CNY", 5}),
  };
  CreditReport r = creditReport(l.coopC.key(), states);
  CHECK(r.loans_taken == 2);
  CHECK(r.repaid_on_time == 2);
  CHECK(r.late == 1);
  CHECK(r.defaulted == 0);
  CHECK(r.settled == 1);
  CHECK(r.outstanding_minor == std::map<std::string, int64_t>{{"CNY", 106'000 - 70'666}});
  CHECK(r.repaid_minor == std::map<std::string, int64_t>{{"CNY", 35'333 * 2 + 10'600}});
  CHECK(describeCreditReport(r) == "loans 2, on time 2, late 1, defaulted 0, settled 1, outstanding 35334 CNY");
  CHECK(creditReportJson(r) == "{\"subject\":\"" + l.coopC.key().hash().hex() +
                                   "\",\"loans_taken\":2,\"repaid_on_time\":2,\"late\":1,\"defaulted\":0,"
                                   "\"settled\":1,\"outstanding_minor\":{\"CNY\":35334},"
                                   "\"repaid_minor\":{\"CNY\":81266}}");
  // The order of states does not matter.
  std::reverse(states.begin(), states.end());
  CHECK(creditReport(l.coopC.key(), states) == r);

  // A default counts, and leaves the outstanding amount owed.
  Loan defaulted = loan1Now;
  defaulted.status = LoanStatus::defaulted;
  states.push_back(loanState(n, defaulted));
  states.push_back(rec(loan1, CreditEvent::loan_default, 35'334, t0_micros + 100 * day_micros));
  CreditReport d = creditReport(l.coopC.key(), states);
  CHECK(d.defaulted == 1);
  CHECK(d.loans_taken == 2);
  CHECK(d.outstanding_minor.at("CNY") == 35'334);
  CHECK(d.repaid_minor.at("CNY") == 81'266);
  // A state that does not decode is skipped.
  TransactionState broken = loanState(n, loan2);
  broken.data = Bytes{1, 2, 3};
  states.push_back(broken);
  CHECK(creditReport(l.coopC.key(), states) == d);
}
