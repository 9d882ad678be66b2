#pragma once
// A party's credit history from the ccal.loan states a node may see (its
// credit records and loan states, contracts/loan.h): creditReport() is pure,
// so `ccal credit report` and the loan.request responders compute the same
// summary from the same states.

#include <map>
#include <string>
#include <vector>

#include "contracts/loan.h"

namespace ccal::contracts {

struct CreditReport {
  SecureHash subject;         // the subject's key hash
  int64_t loans_taken = 0;    // loans disbursed to the subject (whatever happened since)
  int64_t repaid_on_time = 0; // repayment_on_time and full_settlement records
  int64_t late = 0;           // late_payment records
  int64_t defaulted = 0;      // default records
  int64_t settled = 0;        // loans repaid in full
  // Per currency: what the subject still owes on its disbursed loans.
  std::map<std::string, int64_t> outstanding_minor;
  // Per currency: what it repaid in all.
  std::map<std::string, int64_t> repaid_minor;

  bool operator==(const CreditReport&) const = default;
};

// Summarises `subject`'s history from `states`: credit records of the
// subject (each counted once per distinct record) and loan states of the
// subject (each loan counted once, by its most advanced state: the one with
// the latest status, then the most repaid, so a vault's consumed history of
// a loan does not count twice). Other states are ignored; so are states that
// do not decode.
CreditReport creditReport(const Key& subject, const std::vector<TransactionState>& states);

// One line for logs and the CLI, e.g. "loans 2, on time 3, late 1,
// defaulted 0, settled 1, outstanding 1500 CNY".
std::string describeCreditReport(const CreditReport& r);
// A JSON object with the fields above (subject as hex).
std::string creditReportJson(const CreditReport& r);

}  // namespace ccal::contracts
