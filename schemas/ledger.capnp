@0x94211a499126d961;
# CCAL ledger types: the wire form and the hashed/signed form.
#
# Every hashed or signed byte string is the canonical Cap'n Proto encoding
# (single segment, no padding, preorder) of one of these structs, so any node
# and the stock `capnp` tool decode it, and one meaning has one encoding.
# Readers decode untrusted bytes with traversal and nesting limits.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("ccal::schema");

# --- Keys and signatures --------------------------------------------------

struct PublicKey {
  scheme @0 :UInt16;    # 1 = Ed25519 (RFC 8032)
  key @1 :Data;         # 32 bytes for Ed25519
}

# A key tree: a single public key, or a threshold over weighted children.
# The notary cluster's key is "any q of its n replica keys".
# Canonical form: children sorted by their canonical encoding, no duplicates.
struct Key {
  union {
    single @0 :PublicKey;
    threshold @1 :ThresholdNode;
  }
}

struct ThresholdNode {
  threshold @0 :UInt32;   # fulfilled when the weights of fulfilled children sum to >= this
  children @1 :List(WeightedKey);
}

struct WeightedKey {
  weight @0 :UInt32;
  key @1 :Key;
}

# A signature carries its signer's key and the scheme and version of what
# was signed, so that a verifier knows exactly which bytes to check.
struct DigitalSignature {
  by @0 :PublicKey;
  scheme @1 :UInt16;        # 1 = Ed25519
  version @2 :UInt16;       # version of the signed-bytes layout (1)
  signature @3 :Data;       # 64 bytes for Ed25519
  batch @4 :BatchProof;     # set for a batch signature (ledger/crypto.h): the
                            # signature covers the Merkle root of many messages
}

# Where one message sits in the tree a batch signature covers.
struct BatchProof {
  leafIndex @0 :UInt32;
  leafCount @1 :UInt32;
  path @2 :List(Data);      # 32-byte hashes, merkle::prove's order
}

# --- Parties ---------------------------------------------------------------

struct Party {
  name @0 :Text;            # X.500 name, e.g. "O=Haikou Fishing Cooperative, L=Haikou, C=CN"
  owningKey @1 :Key;
}

# --- States and transactions ------------------------------------------------

struct StateRef {
  txId @0 :Data;            # 32-byte SHA-256 transaction id
  index @1 :UInt32;         # output index in that transaction
}

struct TimeWindow {
  # Microseconds since the Unix epoch; a missing bound is open.
  hasFrom @0 :Bool;
  fromMicros @1 :Int64;
  hasUntil @2 :Bool;
  untilMicros @3 :Int64;
}

# The hash of the contract identity and version that states were created
# under; a transaction spending them must run a contract that this accepts.
struct ContractConstraint {
  union {
    hash @0 :Data;          # exactly this contract code identity (32-byte hash)
    alwaysAccept @1 :Void;  # tests only; a network's parameters may forbid it
  }
}

struct TransactionState {
  contract @0 :Text;        # registered contract name, e.g. "ccal.Cash"
  stateType @1 :Text;       # the state's schema type, e.g. "ccal.contracts.CashState"
  data @2 :Data;            # canonical Cap'n Proto bytes of the contract's own state struct
  participants @3 :List(Key);
  notary @4 :Party;
  hasEncumbrance @5 :Bool;
  encumbrance @6 :UInt32;   # output index of the encumbering state, if hasEncumbrance
  constraint @7 :ContractConstraint;
}

struct Command {
  type @0 :Text;            # e.g. "ccal.Cash.Move"
  data @1 :Data;            # canonical bytes of the command's own struct (may be empty)
}

# The required signers of the command at the same index.
struct CommandSigners {
  signers @0 :List(Key);
}

struct AttachmentId {
  hash @0 :Data;
}

struct NetworkParametersHash {
  hash @0 :Data;
}

# Component groups of a transaction; the ordinal is the group index that
# salts each leaf's nonce, and the position of the group in the Merkle tree.
enum ComponentGroupIndex {
  inputs @0;
  references @1;
  outputs @2;
  commands @3;
  attachments @4;
  notary @5;
  timeWindow @6;
  signers @7;
  parameters @8;
}

struct ComponentGroup {
  groupIndex @0 :UInt32;
  components @1 :List(Data);   # each the canonical encoding of the group's struct type
}

# A transaction as hashed and sent: its components, and the random privacy
# salt from which every component's nonce is derived.
struct WireTransaction {
  componentGroups @0 :List(ComponentGroup);
  privacySalt @1 :Data;        # 32 random bytes
}

struct SignedTransaction {
  tx @0 :WireTransaction;
  signatures @1 :List(DigitalSignature);
}

# --- Filtered transactions ---------------------------------------------------

# A revealed subset of one component group, with the proof that the revealed
# components are in the group at the stated indices.
struct FilteredComponentGroup {
  groupIndex @0 :UInt32;
  componentCount @1 :UInt32;   # how many components the whole group has
  indices @2 :List(UInt32);    # revealed component indices, ascending
  components @3 :List(Data);   # the revealed components' bytes
  nonces @4 :List(Data);       # their 32-byte nonces
  proof @5 :List(Data);        # hashes of the hidden subtrees, depth-first
}

struct FilteredTransaction {
  id @0 :Data;                        # the transaction id this proves against
  groupHashes @1 :List(Data);         # the root hash of every component group, in group order
  groups @2 :List(FilteredComponentGroup);
}
