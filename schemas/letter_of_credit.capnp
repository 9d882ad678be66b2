@0xb7e4c2a19f3d5806;
# ccal.lc: the documentary letter of credit (UCP 600 roles), see
# contracts/letter_of_credit.h. Amounts are exact integer minor units; times
# are microseconds since the Unix epoch.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("ccal::schema::lc");

using Ledger = import "ledger.capnp";

enum LcStatus {
  applied @0;
  issued @1;
  advised @2;
  presented @3;
  complying @4;
  discrepant @5;
  waived @6;
  refused @7;
  paid @8;
  closed @9;
}

# The terms an amendment may change (currency and parties never change).
struct LcTerms {
  amountMinor @0 :Int64;
  expiryMicros @1 :Int64;            # presentations strictly before this instant
  latestShipmentMicros @2 :Int64;
  requiredDocuments @3 :List(Text);  # document types, e.g. "commercial_invoice"
}

# One presented document: its type and the SHA-256 of its bytes.
struct LcDocument {
  documentType @0 :Text;
  sha256 @1 :Data;                   # 32 bytes
}

struct LetterOfCreditState {
  linearId @0 :Data;                 # 32 bytes
  lcNumber @1 :Text;
  applicant @2 :Ledger.Key;
  beneficiary @3 :Ledger.Key;
  issuingBank @4 :Ledger.Key;
  advisingBank @5 :Ledger.Key;
  currency @6 :Text;
  terms @7 :LcTerms;
  status @8 :LcStatus;
  discrepancies @9 :List(Text);      # the examiner's reasons (discrepant and after)
  hasAmendment @10 :Bool;
  amendment @11 :LcTerms;            # the pending amendment when hasAmendment
  presentation @12 :List(LcDocument);
  drawingMinor @13 :Int64;           # the amount the current presentation claims
  paidMinor @14 :Int64;              # paid so far, never above terms.amountMinor
}
