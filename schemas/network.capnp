@0xd38f2a2c05bc8056;
# The network map: who is on a CCAL network and under which rules.
#
# NetworkParameters are signed by the network operator's network-map key
# (its certificate is issued directly by the network root); each member's
# NodeInfo is signed by the member's legal identity key. Signed bytes are
# canonical encodings (single segment, no segment table), so `capnp decode
# --flat schemas/network.capnp SignedNodeInfo < node-infos/coop-a` reads a
# file, and one meaning has one encoding. Readers bound size and traversal.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("ccal::schema::network");

using Ledger = import "ledger.capnp";

enum Role {
  node @0;            # a party: cooperative, bank
  notaryReplica @1;   # one replica of a BFT notary cluster
  regulator @2;       # an observer: records transactions it is not party to
}

struct NetworkParameters {
  epoch @0 :UInt32;                 # increases with every change of the parameters
  minPlatformVersion @1 :UInt32;    # node infos below this version are refused
  maxMessageBytes @2 :UInt32;       # largest peer message (frame) a member accepts
  maxTransactionBytes @3 :UInt32;   # largest encoded SignedTransaction
  notaries @4 :List(Notary);
  observers @5 :List(ObserverRule);
  modifiedMicros @6 :Int64;         # when the operator last changed them (Unix micros)
}

# A notary cluster: 3f+1 replicas; its service key is a composite key that a
# quorum of replica signatures fulfils.
struct Notary {
  name @0 :Text;                # X.500 name of the notary service
  serviceKey @1 :Ledger.Key;    # threshold key over the replicas' keys
  validating @2 :Bool;          # sees whole transactions (true) or filtered ones (false)
  f @3 :UInt32;                 # faulty replicas tolerated
  replicas @4 :List(Replica);   # exactly 3f+1
}

struct Replica {
  name @0 :Text;                # X.500 name of the replica's node
  key @1 :Ledger.PublicKey;     # the replica's legal identity key, a leaf of serviceKey
  addresses @2 :List(Text);     # "host:port"
}

# Which transactions an observer (a regulator) receives: all, those with a
# participant among `parties`, or those with a state of one of `contracts`
# that pass the rule's filters: a command of one of `commands` (when given),
# and an amount moved of at least `amountAtLeast` (when hasAmountAtLeast):
# the larger of the totals of the declared int64 field `amountField` over the
# rule's contracts' input states and over their output states
# (flows::ObserverRule). Fields 4-7 came later: parameters written before
# them decode unchanged (unset, they encode to nothing in canonical form).
struct ObserverRule {
  observer @0 :Text;            # X.500 name
  contracts @1 :List(Text);     # contract names, e.g. "ccal.lc"
  parties @2 :List(Text);       # X.500 names
  allTransactions @3 :Bool;
  commands @4 :List(Text);      # command types of the contracts, e.g. "ccal.receivable.Finance"
  hasAmountAtLeast @5 :Bool;    # whether amountAtLeast applies
  amountAtLeast @6 :Int64;      # >= 0; 0 when not hasAmountAtLeast
  amountField @7 :Text;         # the declared int64 field; empty when not hasAmountAtLeast
}

struct SignedNetworkParameters {
  raw @0 :Data;                     # canonical NetworkParameters
  signature @1 :Ledger.DigitalSignature;   # over "CCAL network parameters v1\0" || raw
  signerCertificate @2 :Data;       # DER; issued by the network root to the operator's network-map key
}

struct NodeInfo {
  name @0 :Text;                    # X.500 name, canonical form
  addresses @1 :List(Text);         # "host:port", the advertised p2p addresses, first preferred
  identityChain @2 :List(Data);     # DER, leaf first: legal identity cert, node CA, doorman CA
  tlsChain @3 :List(Data);          # DER, leaf first: TLS cert, node CA, doorman CA
  legalIdentityKey @4 :Ledger.PublicKey;
  role @5 :Role;
  platformVersion @6 :UInt32;
  serial @7 :UInt64;                # a newer node info of the same member has a higher serial
}

struct SignedNodeInfo {
  raw @0 :Data;                     # canonical NodeInfo
  signature @1 :Ledger.DigitalSignature;   # by legalIdentityKey over "CCAL node info v1\0" || raw
}
