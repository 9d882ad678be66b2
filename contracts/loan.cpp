#include "contracts/loan.h"

#include <algorithm>
#include <set>

#include "contracts/member.h"
#include "contracts/token.h"
#include "ledger/capnp_io.h"
#include "schemas/loan.capnp.h"

namespace ccal::contracts {

namespace sl = schema::loan;

std::string_view loanStatusName(LoanStatus s) {
  switch (s) {
    case LoanStatus::requested: return "requested";
    case LoanStatus::approved: return "approved";
    case LoanStatus::disbursed: return "disbursed";
    case LoanStatus::repaid: return "repaid";
    case LoanStatus::defaulted: return "defaulted";
  }
  return "unknown";
}

std::string_view creditEventName(CreditEvent e) {
  switch (e) {
    case CreditEvent::repayment_on_time: return "repayment_on_time";
    case CreditEvent::late_payment: return "late_payment";
    case CreditEvent::full_settlement: return "full_settlement";
    case CreditEvent::loan_default: return "default";
  }
  return "unknown";
}

// --- encoding -----------------------------------------------------------------------------

namespace {

template <class ListBuilder>
void writeKeys(ListBuilder l, const std::vector<Key>& keys) {
  for (uint32_t i = 0; i < keys.size(); ++i) keys[i].write(l[i]);
}

template <class ListReader>
Result<std::vector<Key>> readKeys(ListReader l) {
  std::vector<Key> out;
  for (auto k : l) {
    auto key = Key::read(k);
    if (!key) return key.error();
    out.push_back(*key);
  }
  return out;
}

Result<SecureHash> readId(capnp::Data::Reader d) { return SecureHash::fromBytes(asByteView(d)); }

}  // namespace

Bytes encodeFund(const Fund& f) {
  return buildCanonical<sl::FundState>([&](auto b) {
    b.setFundId(asData(f.fundId.view()));
    b.setName(f.name);
    writeKeys(b.initCommittee(static_cast<uint32_t>(f.committee.size())), f.committee);
    b.setThreshold(f.threshold);
    b.setCurrency(f.currency);
    b.setInterestMinBp(f.interestMinBp);
    b.setInterestMaxBp(f.interestMaxBp);
    b.setTermMinDays(f.termMinDays);
    b.setTermMaxDays(f.termMaxDays);
    b.setPrincipalMaxMinor(f.principalMaxMinor);
    auto cs = b.initContributions(static_cast<uint32_t>(f.contributions.size()));
    for (uint32_t i = 0; i < f.contributions.size(); ++i) {
      f.contributions[i].contributor.write(cs[i].initContributor());
      cs[i].setAmountMinor(f.contributions[i].amountMinor);
    }
    writeKeys(b.initMembers(static_cast<uint32_t>(f.members.size())), f.members);
  });
}

Result<Fund> decodeFund(ByteView bytes) {
  return decodeMessage<sl::FundState>(bytes, "fund state", Canonical::required, [](auto r) -> Result<Fund> {
    Fund f;
    auto id = readId(r.getFundId());
    if (!id) return id.error();
    f.fundId = *id;
    CCAL_TRY_ASSIGN(f.name, readText(r.getName(), "fund state: name", text_bounded_by_message));
    auto committee = readKeys(r.getCommittee());
    if (!committee) return committee.error();
    f.committee = std::move(committee).value();
    f.threshold = r.getThreshold();
    CCAL_TRY_ASSIGN(f.currency,
                    readText(r.getCurrency(), "fund state: currency", text_bounded_by_message));
    f.interestMinBp = r.getInterestMinBp();
    f.interestMaxBp = r.getInterestMaxBp();
    f.termMinDays = r.getTermMinDays();
    f.termMaxDays = r.getTermMaxDays();
    f.principalMaxMinor = r.getPrincipalMaxMinor();
    for (auto c : r.getContributions()) {
      auto k = Key::read(c.getContributor());
      if (!k) return k.error();
      f.contributions.push_back({*k, c.getAmountMinor()});
    }
    auto members = readKeys(r.getMembers());
    if (!members) return members.error();
    f.members = std::move(members).value();
    return f;
  });
}

Bytes encodeLoan(const Loan& l) {
  return buildCanonical<sl::LoanState>([&](auto b) {
    b.setLoanId(asData(l.loanId.view()));
    b.setFundId(asData(l.fundId.view()));
    l.borrower.write(b.initBorrower());
    writeKeys(b.initCommittee(static_cast<uint32_t>(l.committee.size())), l.committee);
    b.setThreshold(l.threshold);
    b.setCurrency(l.currency);
    b.setPrincipalMinor(l.principalMinor);
    b.setInterestBp(l.interestBp);
    b.setTermDays(l.termDays);
    b.setInstalments(l.instalments);
    b.setStatus(static_cast<sl::LoanStatus>(l.status));
    writeKeys(b.initApprovals(static_cast<uint32_t>(l.approvals.size())), l.approvals);
    b.setDisbursedMicros(l.disbursedMicros);
    b.setRepaidMinor(l.repaidMinor);
  });
}

Result<Loan> decodeLoan(ByteView bytes) {
  return decodeMessage<sl::LoanState>(bytes, "loan state", Canonical::required, [](auto r) -> Result<Loan> {
    Loan l;
    auto id = readId(r.getLoanId());
    if (!id) return id.error();
    l.loanId = *id;
    auto fund = readId(r.getFundId());
    if (!fund) return fund.error();
    l.fundId = *fund;
    auto borrower = Key::read(r.getBorrower());
    if (!borrower) return borrower.error();
    l.borrower = *borrower;
    auto committee = readKeys(r.getCommittee());
    if (!committee) return committee.error();
    l.committee = std::move(committee).value();
    l.threshold = r.getThreshold();
    CCAL_TRY_ASSIGN(l.currency,
                    readText(r.getCurrency(), "loan state: currency", text_bounded_by_message));
    l.principalMinor = r.getPrincipalMinor();
    l.interestBp = r.getInterestBp();
    l.termDays = r.getTermDays();
    l.instalments = r.getInstalments();
    const auto status = static_cast<uint16_t>(r.getStatus());
    if (status > static_cast<uint16_t>(LoanStatus::defaulted)) {
      return makeError(Errc::malformed, "loan state: unknown status " + std::to_string(status));
    }
    l.status = static_cast<LoanStatus>(status);
    auto approvals = readKeys(r.getApprovals());
    if (!approvals) return approvals.error();
    l.approvals = std::move(approvals).value();
    l.disbursedMicros = r.getDisbursedMicros();
    l.repaidMinor = r.getRepaidMinor();
    return l;
  });
}

Bytes encodeCreditRecord(const CreditRecord& c) {
  return buildCanonical<sl::CreditRecord>([&](auto b) {
    c.subject.write(b.initSubject());
    b.setFundId(asData(c.fundId.view()));
    b.setLoanId(asData(c.loanId.view()));
    b.setEvent(static_cast<sl::CreditEvent>(c.event));
    b.setAmountMinor(c.amountMinor);
    b.setCurrency(c.currency);
    b.setAtMicros(c.atMicros);
  });
}

Result<CreditRecord> decodeCreditRecord(ByteView bytes) {
  return decodeMessage<sl::CreditRecord>(
      bytes, "credit record", Canonical::required, [](auto r) -> Result<CreditRecord> {
        CreditRecord c;
        auto subject = Key::read(r.getSubject());
        if (!subject) return subject.error();
        c.subject = *subject;
        auto fund = readId(r.getFundId());
        if (!fund) return fund.error();
        c.fundId = *fund;
        auto loan = readId(r.getLoanId());
        if (!loan) return loan.error();
        c.loanId = *loan;
        const auto event = static_cast<uint16_t>(r.getEvent());
        if (event > static_cast<uint16_t>(CreditEvent::loan_default)) {
          return makeError(Errc::malformed, "credit record: unknown event " + std::to_string(event));
        }
        c.event = static_cast<CreditEvent>(event);
        c.amountMinor = r.getAmountMinor();
        CCAL_TRY_ASSIGN(c.currency, readText(r.getCurrency(), "credit record: currency",
                                             text_bounded_by_message));
        c.atMicros = r.getAtMicros();
        return c;
      });
}

// --- helpers --------------------------------------------------------------------------------

Result<Key> fundKey(const std::vector<Key>& committee, uint32_t threshold) {
  std::vector<PublicKey> keys;
  for (const Key& k : committee) {
    if (!k.isSingle()) return makeError(Errc::bad_key, "a committee member's key must be a single key");
    keys.push_back(k.single());
  }
  if (threshold < 1 || threshold > keys.size()) {
    return makeError(Errc::bad_key, "the threshold must be 1.." + std::to_string(keys.size()));
  }
  return Key::anyOf(threshold, keys);
}

int64_t fundContributed(const Fund& f) {
  int64_t sum = 0;
  for (const auto& c : f.contributions) sum = addChecked(sum, c.amountMinor).value_or(sum);
  return sum;
}

namespace {

TransactionState loanContractState(std::string_view type, Bytes data, std::vector<Key> participants,
                                   const Party& notary) {
  TransactionState s;
  s.contract = std::string(loan_contract);
  s.stateType = std::string(type);
  s.data = std::move(data);
  s.participants = std::move(participants);
  s.notary = notary;
  s.constraint.codeHash = Contract::codeIdentity(loan_contract, 1);
  return s;
}

// `first` then the committee members not among it, in order.
std::vector<Key> withCommittee(std::vector<Key> first, const std::vector<Key>& committee) {
  for (const Key& k : committee) {
    if (std::find(first.begin(), first.end(), k) == first.end()) first.push_back(k);
  }
  return first;
}

}  // namespace

TransactionState fundState(const Party& notary, const Fund& f) {
  std::vector<Key> parts = withCommittee({}, f.committee);
  for (const Key& m : f.members) {
    if (std::find(parts.begin(), parts.end(), m) == parts.end()) parts.push_back(m);
  }
  for (const auto& c : f.contributions) {
    if (std::find(parts.begin(), parts.end(), c.contributor) == parts.end()) parts.push_back(c.contributor);
  }
  return loanContractState(fund_state_type, encodeFund(f), std::move(parts), notary);
}

TransactionState loanState(const Party& notary, const Loan& l) {
  return loanContractState(loan_state_type, encodeLoan(l), withCommittee({l.borrower}, l.committee), notary);
}

TransactionState creditRecordState(const Party& notary, const CreditRecord& r, const std::vector<Key>& committee) {
  return loanContractState(credit_record_state_type, encodeCreditRecord(r), withCommittee({r.subject}, committee),
                           notary);
}

std::optional<int64_t> loanTotalDue(const Loan& l) {
  const __int128 total = static_cast<__int128>(l.principalMinor) +
                         static_cast<__int128>(l.principalMinor) * l.interestBp / 10'000;
  if (total > INT64_MAX || total < 0) return std::nullopt;
  return static_cast<int64_t>(total);
}

int64_t cumulativeDue(const Loan& l, uint32_t i) {
  const int64_t total = loanTotalDue(l).value_or(0);
  if (l.instalments == 0) return total;
  return static_cast<int64_t>(static_cast<__int128>(total) * i / l.instalments);
}

// The times a disbursement or a credit record states are those of its
// window, which the notary checks against its clock: a window of at most a
// day keeps them near the truth (a committee could otherwise date a
// disbursement decades back and declare a default at once).
Verdict windowAtMostADay(const TimeWindow& tw, const std::string& what) {
  const uint64_t width =
      static_cast<uint64_t>(*tw.untilMicros) - static_cast<uint64_t>(*tw.fromMicros);
  if (*tw.untilMicros > *tw.fromMicros && width > static_cast<uint64_t>(loan_window_micros_max)) {
    return Verdict::reject("time_window_too_wide", what + "'s time window spans " +
                                                       std::to_string(width) + " us, over one day");
  }
  return Verdict::accept();
}

int64_t instalmentDueMicros(const Loan& l, uint32_t i) {
  if (l.instalments == 0) return l.disbursedMicros;
  const __int128 offset = static_cast<__int128>(l.termDays) * loan_day_micros * i / l.instalments;
  // (Bounded below the largest int64, so that due + 1 is defined whatever a
  // hand-built state says.)
  const __int128 due = static_cast<__int128>(l.disbursedMicros) + offset;
  return static_cast<int64_t>(std::clamp<__int128>(due, INT64_MIN, INT64_MAX - 1));
}

std::optional<uint32_t> nextUnpaidInstalment(const Loan& l) {
  for (uint32_t i = 1; i <= l.instalments; ++i) {
    if (cumulativeDue(l, i) > l.repaidMinor) return i;
  }
  return std::nullopt;
}

int64_t loanOutstanding(const Loan& l) {
  auto total = loanTotalDue(l);
  if (!total || *total < l.repaidMinor) return 0;
  return *total - l.repaidMinor;
}

// --- schemas --------------------------------------------------------------------------------

std::vector<FieldDecl> FundSchema::fields() const {
  return {{"name", FieldType::text},
          {"currency", FieldType::text},
          {"fund_key", FieldType::hash},
          {"contributed", FieldType::int64}};
}

Result<StateView> FundSchema::view(const TransactionState& state) const {
  auto f = decodeFund(state.data);
  if (!f) return f.error();
  auto key = fundKey(f->committee, f->threshold);
  if (!key) return key.error();
  StateView v;
  v.linearId = f->fundId;
  v.fields = {{"name", f->name},
              {"currency", f->currency},
              {"fund_key", key->hash()},
              {"contributed", fundContributed(*f)}};
  return v;
}

std::vector<FieldDecl> LoanSchema::fields() const {
  return {{"fund", FieldType::hash},     {"borrower", FieldType::hash}, {"status", FieldType::text},
          {"amount", FieldType::int64},  {"currency", FieldType::text}, {"due", FieldType::time}};
}

Result<StateView> LoanSchema::view(const TransactionState& state) const {
  auto l = decodeLoan(state.data);
  if (!l) return l.error();
  int64_t due = 0;
  if (l->status == LoanStatus::disbursed) {
    if (auto i = nextUnpaidInstalment(*l)) due = instalmentDueMicros(*l, *i);
  }
  StateView v;
  v.linearId = l->loanId;
  v.fields = {{"fund", l->fundId},
              {"borrower", l->borrower.hash()},
              {"status", std::string(loanStatusName(l->status))},
              {"amount", l->principalMinor},
              {"currency", l->currency},
              {"due", due}};
  return v;
}

std::vector<FieldDecl> CreditRecordSchema::fields() const {
  return {{"subject", FieldType::hash}, {"event", FieldType::text},    {"fund", FieldType::hash},
          {"loan", FieldType::hash},    {"amount", FieldType::int64},  {"currency", FieldType::text},
          {"at", FieldType::time}};
}

Result<StateView> CreditRecordSchema::view(const TransactionState& state) const {
  auto c = decodeCreditRecord(state.data);
  if (!c) return c.error();
  StateView v;
  v.fields = {{"subject", c->subject.hash()},
              {"event", std::string(creditEventName(c->event))},
              {"fund", c->fundId},
              {"loan", c->loanId},
              {"amount", c->amountMinor},
              {"currency", c->currency},
              {"at", c->atMicros}};
  return v;
}

// --- verification ---------------------------------------------------------------------------

namespace {

struct Decoded {
  std::vector<Fund> fundIn, fundOut;
  std::vector<Loan> loanIn, loanOut;
  std::vector<CreditRecord> recordOut;
  std::vector<const TransactionState*> fundOutStates, loanOutStates, recordOutStates;
  size_t recordIn = 0;
};

Verdict reject(std::string code, std::string message) { return Verdict::reject(std::move(code), std::move(message)); }
Verdict illegal(const std::string& what) { return reject("illegal_step", what); }

Verdict decodeOne(const TransactionState& s, Decoded& d, bool input) {
  if (s.stateType == fund_state_type) {
    auto f = decodeFund(s.data);
    if (!f) return reject("bad_state", "a fund state does not decode: " + f.error().message);
    (input ? d.fundIn : d.fundOut).push_back(*f);
    if (!input) d.fundOutStates.push_back(&s);
  } else if (s.stateType == loan_state_type) {
    auto l = decodeLoan(s.data);
    if (!l) return reject("bad_state", "a loan state does not decode: " + l.error().message);
    (input ? d.loanIn : d.loanOut).push_back(*l);
    if (!input) d.loanOutStates.push_back(&s);
  } else if (s.stateType == credit_record_state_type) {
    auto c = decodeCreditRecord(s.data);
    if (!c) return reject("bad_state", "a credit record does not decode: " + c.error().message);
    if (input) {
      ++d.recordIn;
    } else {
      d.recordOut.push_back(*c);
      d.recordOutStates.push_back(&s);
    }
  } else {
    return reject("bad_state", "a ccal.loan state has type '" + s.stateType + "'");
  }
  return Verdict::accept();
}

bool isCommittee(const std::vector<Key>& committee, const Key& k) {
  return std::find(committee.begin(), committee.end(), k) != committee.end();
}

// The distinct committee members among the command's signers.
size_t committeeSigners(const Command& cmd, const std::vector<Key>& committee) {
  std::set<Key> seen;
  for (const Key& k : cmd.signers) {
    if (isCommittee(committee, k)) seen.insert(k);
  }
  return seen.size();
}

Verdict checkCommittee(const std::vector<Key>& committee, uint32_t threshold) {
  if (committee.empty() || committee.size() > committee_members_max) {
    return reject("bad_committee", "a committee has 1.." + std::to_string(committee_members_max) + " members, not " +
                                       std::to_string(committee.size()));
  }
  for (size_t i = 0; i < committee.size(); ++i) {
    if (!committee[i].isSingle()) return reject("bad_committee", "a committee member's key must be a single key");
    if (i > 0 && !(committee[i - 1] < committee[i])) {
      return reject("bad_committee", "the committee's keys must be distinct and in canonical order");
    }
  }
  if (threshold < 1 || threshold > committee.size()) {
    return reject("bad_threshold", "the approval threshold must be 1.." + std::to_string(committee.size()) +
                                       ", not " + std::to_string(threshold));
  }
  return Verdict::accept();
}

// The same loan but for status, approvals, disbursement time and repaid amount.
bool sameTerms(Loan a, const Loan& b) {
  a.status = b.status;
  a.approvals = b.approvals;
  a.disbursedMicros = b.disbursedMicros;
  a.repaidMinor = b.repaidMinor;
  return a == b;
}

Verdict participantsAre(const TransactionState& s, const TransactionState& expected, std::string_view what) {
  if (s.participants != expected.participants) {
    return reject("wrong_participants", std::string(what) + " must be shared with exactly its borrower or "
                                                            "contributors and the committee");
  }
  return Verdict::accept();
}

Verdict checkParticipants(const Decoded& d, const Party& notary) {
  for (size_t i = 0; i < d.fundOut.size(); ++i) {
    if (auto v = participantsAre(*d.fundOutStates[i], fundState(notary, d.fundOut[i]), "a fund"); !v.accepted) return v;
  }
  for (size_t i = 0; i < d.loanOut.size(); ++i) {
    if (auto v = participantsAre(*d.loanOutStates[i], loanState(notary, d.loanOut[i]), "a loan"); !v.accepted) return v;
  }
  return Verdict::accept();
}

Verdict fromCredential(const LedgerTransaction& tx, const Key& borrower) {
  auto cred = checkCredential(tx, borrower, "the borrower");
  if (cred) return Verdict::accept();
  const std::string& m = cred.error().message;
  const size_t colon = m.find(':');
  return reject(colon == std::string::npos ? "not_member" : m.substr(0, colon), m);
}

// The one loan in and out, with unchanged terms, from `from` status.
Verdict loanStep(const Decoded& d, LoanStatus from, std::string_view step) {
  if (d.loanIn.size() != 1 || d.loanOut.size() != 1) {
    return illegal(std::string(step) + " consumes one loan and creates it again");
  }
  if (!d.fundIn.empty() || !d.fundOut.empty()) return illegal(std::string(step) + " touches no fund state");
  if (d.loanIn[0].status != from) {
    return illegal(std::string(step) + " needs a " + std::string(loanStatusName(from)) + " loan, not a " +
                   std::string(loanStatusName(d.loanIn[0].status)) + " one");
  }
  if (!sameTerms(d.loanIn[0], d.loanOut[0])) return reject("changed_terms", std::string(step) + " keeps the loan's terms");
  return Verdict::accept();
}

Verdict noRecords(const Decoded& d, std::string_view step) {
  if (!d.recordOut.empty()) return illegal(std::string(step) + " creates no credit record");
  return Verdict::accept();
}

Verdict checkRecord(const Decoded& d, const Loan& loan, CreditEvent event, int64_t amount,
                    const TimeWindow& tw, const Party& notary) {
  if (d.recordOut.size() != 1) {
    return reject("record_missing", "this step creates exactly one credit record, not " +
                                        std::to_string(d.recordOut.size()));
  }
  const CreditRecord& r = d.recordOut[0];
  if (r.subject != loan.borrower || r.fundId != loan.fundId || r.loanId != loan.loanId ||
      r.currency != loan.currency) {
    return reject("record_mismatch", "the credit record must name the loan's borrower, fund, loan and currency");
  }
  if (r.event != event) {
    return reject("record_mismatch", "the credit record's event must be " + std::string(creditEventName(event)) +
                                         ", not " + std::string(creditEventName(r.event)));
  }
  if (r.amountMinor != amount) {
    return reject("record_mismatch", "the credit record's amount must be " + std::to_string(amount) + ", not " +
                                         std::to_string(r.amountMinor));
  }
  if (!tw.contains(r.atMicros)) return reject("record_mismatch", "the credit record's time must be within the time window");
  if (d.recordOutStates[0]->participants != creditRecordState(notary, r, loan.committee).participants) {
    return reject("wrong_participants", "a credit record must be shared with exactly its subject and the committee");
  }
  return Verdict::accept();
}

}  // namespace

Verdict LoanContract::verify(const LedgerTransaction& tx) const {
  auto commands = tx.commandsOf("ccal.loan.");
  if (commands.size() != 1) {
    return reject("one_command", "a transaction with loan-contract states needs exactly one ccal.loan command, not " +
                                     std::to_string(commands.size()));
  }
  const Command& cmd = *commands[0];
  Decoded d;
  for (const StateAndRef& s : tx.inputs()) {
    if (s.state.contract != loan_contract) continue;
    if (auto v = decodeOne(s.state, d, true); !v.accepted) return v;
  }
  for (const TransactionState* s : tx.outputsOf(loan_contract)) {
    if (auto v = decodeOne(*s, d, false); !v.accepted) return v;
  }
  if (d.recordIn > 0) return reject("record_consumed", "credit records are permanent; none may be consumed");
  if (!tx.notary()) return reject("bad_state", "a loan-contract transaction names its notary");
  if (auto v = checkParticipants(d, *tx.notary()); !v.accepted) return v;
  const TimeWindow tw = tx.timeWindow().value_or(TimeWindow{});

  if (cmd.type == loan_create_fund_command) {
    if (!d.fundIn.empty() || !d.loanIn.empty() || !d.loanOut.empty()) {
      return illegal("creating a fund consumes and creates no other fund or loan");
    }
    if (auto v = noRecords(d, "creating a fund"); !v.accepted) return v;
    if (d.fundOut.size() != 1) return reject("one_output", "creating a fund creates exactly one fund state");
    const Fund& f = d.fundOut[0];
    if (f.name.empty()) return reject("missing_field", "a fund has a name");
    if (auto v = checkCommittee(f.committee, f.threshold); !v.accepted) return v;
    if (!validCurrency(f.currency)) return reject("bad_currency", "currency '" + f.currency + "' is not three capital letters");
    if (f.interestMinBp < 0 || f.interestMinBp > f.interestMaxBp || f.interestMaxBp > interest_bp_max) {
      return reject("bad_limits", "interest limits must satisfy 0 <= min <= max <= " + std::to_string(interest_bp_max) +
                                      " basis points");
    }
    if (f.termMinDays < 1 || f.termMinDays > f.termMaxDays || f.termMaxDays > term_days_max) {
      return reject("bad_limits", "term limits must satisfy 1 <= min <= max <= " + std::to_string(term_days_max) + " days");
    }
    if (f.principalMaxMinor <= 0) return reject("non_positive", "a fund's principal limit must be positive");
    if (!f.contributions.empty()) return reject("has_contributions", "a new fund has no contributions yet");
    if (f.members.size() > members_max) {
      return reject("bad_committee", "a fund has at most " + std::to_string(members_max) + " members");
    }
    for (const Key& k : f.committee) {
      if (!signedBy(cmd, k)) return reject("missing_signature", "every committee member must sign the fund's creation");
    }
    return Verdict::accept();
  }

  if (cmd.type == loan_contribute_command) {
    if (d.fundIn.size() != 1 || d.fundOut.size() != 1) {
      return illegal("a contribution consumes one fund and creates it again");
    }
    if (!d.loanIn.empty() || !d.loanOut.empty()) return illegal("a contribution touches no loan");
    if (auto v = noRecords(d, "a contribution"); !v.accepted) return v;
    const Fund& before = d.fundIn[0];
    const Fund& after = d.fundOut[0];
    Fund same = after;
    same.contributions = before.contributions;
    if (!(same == before)) return reject("changed_terms", "a contribution changes only the contributions");
    if (after.contributions.size() > contributors_max) {
      return reject("bad_contribution", "a fund has at most " + std::to_string(contributors_max) + " contributors");
    }
    // Exactly one contributor's total rises; nobody else's changes, nobody disappears.
    std::optional<std::pair<Key, int64_t>> raised;
    for (size_t i = 0; i < after.contributions.size(); ++i) {
      const FundContribution& c = after.contributions[i];
      const int64_t was = i < before.contributions.size() ? before.contributions[i].amountMinor : 0;
      if (i < before.contributions.size() && before.contributions[i].contributor != c.contributor) {
        return reject("bad_contribution", "a contribution keeps the earlier contributors in order");
      }
      if (i >= before.contributions.size() && c.amountMinor <= 0) {
        return reject("bad_contribution", "a new contributor joins with a positive contribution");
      }
      if (c.amountMinor == was) continue;
      if (c.amountMinor < was || raised) {
        return reject("bad_contribution", "a contribution raises exactly one contributor's total");
      }
      raised = std::make_pair(c.contributor, c.amountMinor - was);
    }
    if (after.contributions.size() < before.contributions.size()) {
      return reject("bad_contribution", "a contribution keeps the earlier contributors");
    }
    if (!raised) return reject("non_positive", "a contribution must be positive");
    for (size_t i = 0; i < after.contributions.size(); ++i) {
      for (size_t j = 0; j < i; ++j) {
        if (after.contributions[i].contributor == after.contributions[j].contributor) {
          return reject("bad_contribution", "a contributor appears once in a fund");
        }
      }
    }
    auto key = fundKey(after.committee, after.threshold);
    if (!key) return reject("bad_committee", key.error().message);
    auto paid = netTokensTo(tx, *key, after.currency);
    if (!paid || *paid != raised->second) {
      return reject("payment_mismatch", "the fund key must receive exactly the contribution of " +
                                            std::to_string(raised->second) + " " + after.currency + ", not " +
                                            std::to_string(paid.value_or(0)));
    }
    if (!signedBy(cmd, raised->first)) return reject("missing_signature", "the contributor must sign its contribution");
    return Verdict::accept();
  }

  if (cmd.type == loan_request_command) {
    if (!d.loanIn.empty() || !d.fundIn.empty() || !d.fundOut.empty()) {
      return illegal("a request consumes nothing of the loan contract and creates only the loan");
    }
    if (auto v = noRecords(d, "a request"); !v.accepted) return v;
    if (d.loanOut.size() != 1) return reject("one_output", "a request creates exactly one loan");
    const Loan& l = d.loanOut[0];
    if (l.status != LoanStatus::requested || l.repaidMinor != 0 || !l.approvals.empty() || l.disbursedMicros != 0) {
      return illegal("a new loan is requested, with nothing approved, disbursed or repaid");
    }
    std::optional<Fund> fund;
    for (const StateAndRef& r : tx.references()) {
      if (r.state.contract != loan_contract || r.state.stateType != fund_state_type) continue;
      auto f = decodeFund(r.state.data);
      if (f && f->fundId == l.fundId) fund = *f;
    }
    if (!fund) return reject("fund_missing", "a request references the fund it borrows from");
    if (l.committee != fund->committee || l.threshold != fund->threshold || l.currency != fund->currency) {
      return reject("fund_mismatch", "a loan carries its fund's committee, threshold and currency");
    }
    if (l.principalMinor <= 0) return reject("non_positive", "a loan's principal must be positive");
    if (l.principalMinor > fund->principalMaxMinor) {
      return reject("outside_limits", "a principal of " + std::to_string(l.principalMinor) + " is above the fund's " +
                                          std::to_string(fund->principalMaxMinor));
    }
    if (l.interestBp < fund->interestMinBp || l.interestBp > fund->interestMaxBp) {
      return reject("outside_limits", "an interest of " + std::to_string(l.interestBp) + " bp is outside the fund's " +
                                          std::to_string(fund->interestMinBp) + ".." +
                                          std::to_string(fund->interestMaxBp));
    }
    if (l.termDays < fund->termMinDays || l.termDays > fund->termMaxDays) {
      return reject("outside_limits", "a term of " + std::to_string(l.termDays) + " days is outside the fund's " +
                                          std::to_string(fund->termMinDays) + ".." + std::to_string(fund->termMaxDays));
    }
    if (l.instalments < 1 || l.instalments > instalments_max ||
        l.instalments > static_cast<uint32_t>(l.termDays)) {
      return reject("bad_schedule", "a loan has 1.." + std::to_string(instalments_max) +
                                        " instalments, at most one a day of its term");
    }
    if (!loanTotalDue(l)) return reject("overflow", "the loan's total due overflows int64");
    if (!signedBy(cmd, l.borrower)) return reject("missing_signature", "the borrower must sign the request");
    return fromCredential(tx, l.borrower);
  }

  if (cmd.type == loan_approve_command) {
    if (auto v = loanStep(d, LoanStatus::requested, "an approval"); !v.accepted) return v;
    if (auto v = noRecords(d, "an approval"); !v.accepted) return v;
    const Loan& l = d.loanOut[0];
    if (l.status != LoanStatus::approved || l.repaidMinor != 0 || l.disbursedMicros != 0) {
      return illegal("an approval makes the loan approved, nothing else");
    }
    std::set<Key> distinct;
    for (const Key& k : l.approvals) {
      if (!isCommittee(l.committee, k)) return reject("not_committee", "an approval is by a committee member");
      if (!distinct.insert(k).second) return reject("not_committee", "a committee member approves once");
      if (!signedBy(cmd, k)) return reject("missing_signature", "every approving committee member must sign");
    }
    if (distinct.size() < l.threshold) {
      return reject("approvals_below_threshold", std::to_string(distinct.size()) + " approvals of the " +
                                                     std::to_string(l.threshold) + " of " +
                                                     std::to_string(l.committee.size()) + " the fund requires");
    }
    return Verdict::accept();
  }

  if (cmd.type == loan_disburse_command) {
    if (auto v = loanStep(d, LoanStatus::approved, "a disbursement"); !v.accepted) return v;
    if (auto v = noRecords(d, "a disbursement"); !v.accepted) return v;
    const Loan& before = d.loanIn[0];
    const Loan& l = d.loanOut[0];
    if (l.status != LoanStatus::disbursed || l.repaidMinor != 0 || l.approvals != before.approvals) {
      return illegal("a disbursement makes the loan disbursed, nothing else");
    }
    if (!tw.fromMicros || !tw.untilMicros) {
      return reject("time_window_missing", "a disbursement needs a time window bounded on both sides");
    }
    if (auto v = windowAtMostADay(tw, "a disbursement"); !v.accepted) return v;
    if (!tw.contains(l.disbursedMicros)) {
      return reject("not_disbursed_in_window", "the disbursement time must be within the time window");
    }
    if (committeeSigners(cmd, l.committee) < l.threshold) {
      return reject("approvals_below_threshold", "a disbursement is signed by at least " + std::to_string(l.threshold) +
                                                     " committee members");
    }
    auto key = fundKey(l.committee, l.threshold);
    if (!key) return reject("bad_committee", key.error().message);
    auto toBorrower = netTokensTo(tx, l.borrower, l.currency);
    auto fromFund = netTokensTo(tx, *key, l.currency);
    if (!toBorrower || !fromFund || *toBorrower != l.principalMinor || *fromFund != -l.principalMinor) {
      return reject("payment_mismatch", "the fund must pay the borrower exactly the principal of " +
                                            std::to_string(l.principalMinor) + " " + l.currency);
    }
    return Verdict::accept();
  }

  if (cmd.type == loan_repay_command || cmd.type == loan_default_command) {
    const bool repay = cmd.type == loan_repay_command;
    if (auto v = loanStep(d, LoanStatus::disbursed, repay ? "a repayment" : "a default"); !v.accepted) return v;
    const Loan& before = d.loanIn[0];
    const Loan& l = d.loanOut[0];
    if (l.approvals != before.approvals || l.disbursedMicros != before.disbursedMicros) {
      return reject("changed_terms", "repayments and defaults keep the approvals and disbursement time");
    }
    if (!tw.fromMicros || !tw.untilMicros) {
      return reject("time_window_missing", "repayments and defaults need a time window bounded on both sides");
    }
    if (auto v = windowAtMostADay(tw, repay ? "a repayment" : "a default"); !v.accepted) return v;
    const auto total = loanTotalDue(l);
    if (!total) return reject("overflow", "the loan's total due overflows int64");
    const auto next = nextUnpaidInstalment(before);
    if (!next) return illegal("nothing is outstanding on this loan");
    const int64_t due = instalmentDueMicros(before, *next);
    if (!repay) {
      if (l.status != LoanStatus::defaulted || l.repaidMinor != before.repaidMinor) {
        return illegal("a default makes the loan defaulted, nothing else");
      }
      if (*tw.fromMicros <= due) {
        return reject("not_overdue", "instalment " + std::to_string(*next) + " is not overdue within the time window");
      }
      if (committeeSigners(cmd, l.committee) < l.threshold) {
        return reject("approvals_below_threshold", "a default is declared by at least " + std::to_string(l.threshold) +
                                                       " committee members");
      }
      return checkRecord(d, l, CreditEvent::loan_default, loanOutstanding(before), tw, *tx.notary());
    }
    const int64_t paid = l.repaidMinor - before.repaidMinor;
    if (paid <= 0) return reject("non_positive", "a repayment must be positive");
    if (l.repaidMinor > *total) {
      return reject("overpaid", "the repayments would reach " + std::to_string(l.repaidMinor) + " of a total due of " +
                                    std::to_string(*total));
    }
    const LoanStatus expected = l.repaidMinor == *total ? LoanStatus::repaid : LoanStatus::disbursed;
    if (l.status != expected) {
      return illegal("a repayment leaves the loan " + std::string(loanStatusName(expected)));
    }
    auto key = fundKey(l.committee, l.threshold);
    if (!key) return reject("bad_committee", key.error().message);
    auto toFund = netTokensTo(tx, *key, l.currency);
    if (!toFund || *toFund != paid) {
      return reject("payment_mismatch", "the fund key must receive exactly the repayment of " + std::to_string(paid) +
                                            " " + l.currency + ", not " + std::to_string(toFund.value_or(0)));
    }
    if (!signedBy(cmd, l.borrower)) return reject("missing_signature", "the borrower must sign its repayment");
    CreditEvent event;
    if (*tw.fromMicros > due) {
      event = CreditEvent::late_payment;
    } else if (*tw.untilMicros <= due + 1) {
      event = l.status == LoanStatus::repaid ? CreditEvent::full_settlement : CreditEvent::repayment_on_time;
    } else {
      return reject("time_window_straddles_due", "the time window must end by or start after instalment " +
                                                     std::to_string(*next) + "'s due date");
    }
    return checkRecord(d, l, event, paid, tw, *tx.notary());
  }

  return reject("unknown_command", "unknown loan command '" + cmd.type + "'");
}

}  // namespace ccal::contracts
