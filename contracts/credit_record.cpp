#include "contracts/credit_record.h"

#include <set>

#include "contracts/token.h"

namespace ccal::contracts {

namespace {

int rank(LoanStatus s) { return static_cast<int>(s); }

void add(std::map<std::string, int64_t>& m, const std::string& currency, int64_t amount) {
  int64_t& v = m[currency];
  v = addChecked(v, amount).value_or(v);
}

std::string jsonMap(const std::map<std::string, int64_t>& m) {
  std::string out = "{";
  for (const auto& [currency, amount] : m) {
    if (out.size() > 1) out += ",";
    // Currencies in these maps are three capital letters (contract-checked),
    // so they need no escaping.
    out += "\"" + currency + "\":" + std::to_string(amount);
  }
  return out + "}";
}

}  // namespace

CreditReport creditReport(const Key& subject, const std::vector<TransactionState>& states) {
  CreditReport r;
  r.subject = subject.hash();
  std::set<Bytes> seenRecords;
  std::map<SecureHash, Loan> loans;  // loan id -> most advanced state
  for (const TransactionState& s : states) {
    if (s.contract != loan_contract) continue;
    if (s.stateType == credit_record_state_type) {
      auto c = decodeCreditRecord(s.data);
      if (!c || c->subject != subject || !seenRecords.insert(s.data).second) continue;
      switch (c->event) {
        case CreditEvent::repayment_on_time:
        case CreditEvent::full_settlement: ++r.repaid_on_time; break;
        case CreditEvent::late_payment: ++r.late; break;
        case CreditEvent::loan_default: ++r.defaulted; break;
      }
      if (c->event != CreditEvent::loan_default) add(r.repaid_minor, c->currency, c->amountMinor);
    } else if (s.stateType == loan_state_type) {
      auto l = decodeLoan(s.data);
      if (!l || l->borrower != subject) continue;
      auto it = loans.find(l->loanId);
      if (it == loans.end()) {
        loans.emplace(l->loanId, *l);
      } else if (rank(l->status) > rank(it->second.status) ||
                 (l->status == it->second.status && l->repaidMinor > it->second.repaidMinor)) {
        it->second = *l;
      }
    }
  }
  for (const auto& [id, l] : loans) {
    if (rank(l.status) < rank(LoanStatus::disbursed)) continue;
    ++r.loans_taken;
    if (l.status == LoanStatus::repaid) ++r.settled;
    if (l.status == LoanStatus::disbursed || l.status == LoanStatus::defaulted) {
      add(r.outstanding_minor, l.currency, loanOutstanding(l));
    }
  }
  return r;
}

std::string describeCreditReport(const CreditReport& r) {
  std::string out = "loans " + std::to_string(r.loans_taken) + ", on time " + std::to_string(r.repaid_on_time) +
                    ", late " + std::to_string(r.late) + ", defaulted " + std::to_string(r.defaulted) +
                    ", settled " + std::to_string(r.settled) + ", outstanding";
  if (r.outstanding_minor.empty()) return out + " none";
  bool first = true;
  for (const auto& [currency, amount] : r.outstanding_minor) {
    out += (first ? " " : ", ") + std::to_string(amount) + " " + currency;
    first = false;
  }
  return out;
}

std::string creditReportJson(const CreditReport& r) {
  return "{\"subject\":\"" + r.subject.hex() + "\",\"loans_taken\":" + std::to_string(r.loans_taken) +
         ",\"repaid_on_time\":" + std::to_string(r.repaid_on_time) + ",\"late\":" + std::to_string(r.late) +
         ",\"defaulted\":" + std::to_string(r.defaulted) + ",\"settled\":" + std::to_string(r.settled) +
         ",\"outstanding_minor\":" + jsonMap(r.outstanding_minor) + ",\"repaid_minor\":" + jsonMap(r.repaid_minor) +
         "}";
}

}  // namespace ccal::contracts
