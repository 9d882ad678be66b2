@0xa40512cd304902cb;
# The vault's stored records (LMDB values). Stored bytes are canonical, like
# everything hashed or signed, so `capnp decode --flat` reads a dumped value.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("ccal::schema::vault");

struct StateRecord {
  status @0 :UInt8;            # 0 unconsumed, 1 consumed
  relevance @1 :UInt8;         # 0 participant, 1 observed
  recordedMicros @2 :Int64;
  consumedMicros @3 :Int64;    # when consumed
  consumedBy @4 :Data;         # 32-byte id of the consuming transaction, when consumed
  lock @5 :Data;               # 32-byte soft-lock holder, or empty
  state @6 :Data;              # the output component: canonical TransactionState bytes
  stateType @7 :Text;          # the state's type (copied from `state`, so that consuming or
                               # locking needs no decoding of it)
  tokenKey @8 :Data;           # the ix_token key prefix (token | issuer) of a fungible state, or empty
  txId @9 :Data;               # 32-byte id of the transaction that produced it (the record's key is
                               # the vault's sequence number for that transaction, not its id)
}

struct TransactionRecord {
  recordedMicros @0 :Int64;
  signedTransaction @1 :Data;  # canonical SignedTransaction bytes
  txId @2 :Data;               # 32-byte transaction id (the record's key is its sequence number)
}
