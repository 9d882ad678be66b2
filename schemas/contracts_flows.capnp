@0xe7c0b25a9d4f6318;
# Messages and journaled call outcomes of the deal flows (flows/deal_flows.h).

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("ccal::schema::dealflows");

using Ledger = import "ledger.capnp";

struct StateAndRef {
  ref @0 :Ledger.StateRef;
  state @1 :Ledger.TransactionState;
}

# A vault read or selection's outcome.
struct StateList {
  states @0 :List(StateAndRef);
}

# receivable.finance: the holder's offer to a financier.
struct FinanceProposal {
  receivable @0 :Ledger.StateRef;
  advanceMinor @1 :Int64;
}

# The financier's answer: the financing transaction's id.
struct FinanceDone {
  txId @0 :Data;
}
