@0xfaed1e169a561f95;
# The messages of the built-in flows (flows/builtin_flows.h), carried as
# session payloads of the flow runtime, and the outcomes of the service
# calls those flows journal (FlowContext::call). Decoded from untrusted
# bytes with the bounded decoder (ledger/capnp_io.h); written canonically.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("ccal::schema::builtin");

using Ledger = import "ledger.capnp";

struct BuiltinMessage {
  union {
    signRequest @0 :SignRequest;          # CollectSignatures -> SignTransaction
    signatures @1 :List(Ledger.DigitalSignature);  # SignTransaction's answer
    fetch @2 :List(Data);                 # backchain: transaction ids wanted (32 bytes each)
    transactions @3 :List(Data);          # their SignedTransactions, in the order asked
    finality @4 :FinalityRequest;         # Finality -> ReceiveFinality
    recorded @5 :Void;                    # ReceiveFinality's answer: recorded (or had it)
  }
}

struct SignRequest {
  check @0 :Text;                         # the business check the signer applies
  transaction @1 :Data;                   # the partly signed SignedTransaction
  observers @2 :List(Text);               # X.500: the observers the initiator's finality sends to
                                          # (its observer rules' and its extra ones); the signer
                                          # refuses when one its own rules require is missing
}

struct FinalityRequest {
  transaction @0 :Data;                   # the notarised SignedTransaction
  observer @1 :Bool;                      # record all visible states (an observer)
  recipients @2 :List(Text);              # X.500: every node this finality sends to, its sender
                                          # included; a participant sends the transaction on to
                                          # the observers its rules require that are not listed
}

# --- journaled service call outcomes ---------------------------------------------

struct IdList {
  ids @0 :List(Data);
}

# One entry per id asked for; empty Data when the vault does not have it.
struct TransactionList {
  transactions @0 :List(Data);
}

struct NotaryConflict {
  ref @0 :Ledger.StateRef;
  consumedBy @1 :Data;                    # the id of the transaction that consumed it
}

struct NotaryAnswer {
  signatures @0 :List(Ledger.DigitalSignature);
  conflicts @1 :List(NotaryConflict);     # non-empty: a conflict, no signatures
}

# The arguments of the startable "ccal.Finality" flow.
struct FinalityArgs {
  transaction @0 :Data;                   # the SignedTransaction (all but the notary's signatures)
  extraObservers @1 :List(Text);          # X.500 names, beyond the observer rules
}
