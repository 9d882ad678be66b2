@0x883d9d1aee98c91f;
# Notarisation: what a client asks a notary cluster, what each replica
# answers, and what a replica stores (the effects of each executed batch).
#
# Every byte string here is the canonical Cap'n Proto encoding (one segment,
# no segment table), decoded with size, traversal and nesting limits; a
# request, a reply and a batch's effects each have exactly one encoding, so
# honest replicas produce byte-identical replies and effects.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("ccal::schema::notary");

using Ledger = import "ledger.capnp";

# --- Requests ----------------------------------------------------------------

# A request to notarise one transaction, as the body of a protocol request.
struct NotarisationRequest {
  notary @0 :Text;                                 # X.500 name of the notary service asked
  union {
    # Non-validating (the default): the transaction filtered to its inputs,
    # references, notary and time window, nothing else of the deal.
    nonValidating @1 :Ledger.FilteredTransaction;
    # Validating: the whole signed transaction and every transaction its
    # inputs and references come from, back to issuances.
    validating @2 :ValidatingRequest;
  }
}

struct ValidatingRequest {
  transaction @0 :Ledger.SignedTransaction;
  dependencies @1 :List(Ledger.SignedTransaction);
}

# --- Replies -----------------------------------------------------------------

# One StateRef that is already consumed by another transaction. The consuming
# transaction's id is not revealed: only its SHA-256, which its parties can
# match and nobody else can use.
struct StateConflict {
  ref @0 :Ledger.StateRef;
  consumingTxIdHash @1 :Data;                      # SHA-256 of the consuming transaction's 32-byte id
  isReference @2 :Bool;                            # the ref was a reference input of the request
}

struct NotarisationError {
  code @0 :UInt16;                                 # ccal::Errc
  message @1 :Text;
}

# A replica's answer to one request. Honest replicas that executed the same
# batches give byte-identical replies; this is the leaf of the batch's reply
# tree (leaf = H(0x00 || zero nonce || these canonical bytes)).
struct NotarisationReply {
  requestHash @0 :Data;                            # SHA-256 of the request body it answers
  txId @1 :Data;                                   # the transaction's id (zero if the request did not decode)
  batchSeq @2 :UInt64;                             # the batch that answered it; 0: an error
                                                   # refused before ordering (not executed)
  union {
    success @3 :Void;                              # every input consumed by txId (now or before)
    conflict @4 :List(StateConflict);              # nothing consumed
    error @5 :NotarisationError;                   # nothing consumed
  }
}

# What a replica sends: the reply, the proof that it is leaf `leafIndex` of
# the batch's reply tree, the replica's signature over that tree's root, and
# for a success the replica's ordinary transaction signature over txId (the
# one that goes into the SignedTransaction).
struct SignedNotarisationReply {
  reply @0 :Data;                                  # canonical NotarisationReply
  leafIndex @1 :UInt32;
  leafCount @2 :UInt32;
  proof @3 :List(Data);                            # hidden subtrees, depth-first (ledger Merkle proof)
  rootSignature @4 :Ledger.DigitalSignature;       # over "CCAL notary batch replies" || v || seq || count || root
  txSignature @5 :Ledger.DigitalSignature;         # over signableBytes(txId); only on a success
  hasTxSignature @6 :Bool;
}

# --- Stored effects (state transfer) ------------------------------------------

struct ConsumedState {
  ref @0 :Ledger.StateRef;
  consumingTxId @1 :Data;                          # 32 bytes
}

# Everything a batch changed, in execution order: the states it consumed and
# the transactions without inputs it committed (so that re-notarising them
# gives the same answer).
struct BatchEffects {
  seq @0 :UInt64;
  consumed @1 :List(ConsumedState);
  committedWithoutInputs @2 :List(Data);          # 32-byte transaction ids
}
