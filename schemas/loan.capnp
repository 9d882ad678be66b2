@0xb7c2e94a1d3f6085;
# States of the mutual-aid loan contract ccal.loan (contracts/loan.h): the
# fund, a loan from it, and the credit records its repayments and defaults
# leave. Amounts are exact integer minor units; times are microseconds
# since the Unix epoch; interest is in basis points (1/100 of a percent).

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("ccal::schema::loan");

using Ledger = import "ledger.capnp";

struct Contribution {
  contributor @0 :Ledger.Key;
  amountMinor @1 :Int64;        # the contributor's total so far
}

# ccal.loan: a mutual-aid fund. Its tokens are ccal.token states owned by
# the fund key: any `threshold` of the committee keys (contracts/loan.h).
struct FundState {
  fundId @0 :Data;              # 32 bytes, the linear id
  name @1 :Text;
  committee @2 :List(Ledger.Key);
  threshold @3 :UInt32;
  currency @4 :Text;
  interestMinBp @5 :Int32;
  interestMaxBp @6 :Int32;
  termMinDays @7 :Int32;
  termMaxDays @8 :Int32;
  principalMaxMinor @9 :Int64;
  contributions @10 :List(Contribution);
  members @11 :List(Ledger.Key);  # besides the committee: who may contribute and borrow
}

enum LoanStatus {
  requested @0;
  approved @1;
  disbursed @2;
  repaid @3;
  defaulted @4;
}

# ccal.loan: a loan from a fund; the committee and threshold are the
# fund's at the request.
struct LoanState {
  loanId @0 :Data;              # 32 bytes, the linear id
  fundId @1 :Data;
  borrower @2 :Ledger.Key;
  committee @3 :List(Ledger.Key);
  threshold @4 :UInt32;
  currency @5 :Text;
  principalMinor @6 :Int64;
  interestBp @7 :Int32;
  termDays @8 :Int32;
  instalments @9 :UInt32;
  status @10 :LoanStatus;
  approvals @11 :List(Ledger.Key);
  disbursedMicros @12 :Int64;
  repaidMinor @13 :Int64;
}

enum CreditEvent {
  repaymentOnTime @0;
  latePayment @1;
  fullSettlement @2;
  default @3;
}

# ccal.loan: one event of a borrower's credit history.
struct CreditRecord {
  subject @0 :Ledger.Key;
  fundId @1 :Data;
  loanId @2 :Data;
  event @3 :CreditEvent;
  amountMinor @4 :Int64;
  currency @5 :Text;
  atMicros @6 :Int64;
}

# --- loan flows' messages (flows/loan_flows.h) ---

struct CurrencyAmount {
  currency @0 :Text;
  amountMinor @1 :Int64;
}

# loan.request -> a committee member: review this requested loan.
struct ReviewRequest {
  loan @0 :Ledger.StateRef;
}

# A committee member's answer: the borrower's credit report from its vault
# (contracts/credit_record.h) and whether it would approve, with why not.
struct LoanReview {
  wouldApprove @0 :Bool;
  reason @1 :Text;
  loansTaken @2 :Int64;
  repaidOnTime @3 :Int64;
  late @4 :Int64;
  defaulted @5 :Int64;
  settled @6 :Int64;
  outstanding @7 :List(CurrencyAmount);
  repaid @8 :List(CurrencyAmount);
}
