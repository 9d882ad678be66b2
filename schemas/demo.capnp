@0xcdbbdbecafce7946;
# The demonstration IOU that `ccal demo` records until the business contracts
# (settlement tokens, receivables, loans, letters of credit) arrive.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("ccal::schema::demo");

using Ledger = import "ledger.capnp";

struct IouState {
  lender @0 :Ledger.Key;
  borrower @1 :Ledger.Key;
  amountMinor @2 :Int64;    # in minor units (fen)
  currency @3 :Text;        # ISO 4217, e.g. "CNY"
}
