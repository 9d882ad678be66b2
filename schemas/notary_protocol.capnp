@0xc4e1a7d35b9f2e61;
# Frames of the BFT replication protocol (PBFT, Castro & Liskov) between the
# replicas of a notary cluster and between clients and replicas, carried by
# a best-effort Link (flows/io.h) whose peers are authenticated (TLS in
# production). notary/README.md explains the protocol message by message.
#
# Decoded from untrusted bytes with the bounded decoder (ledger/capnp_io.h),
# then checked field by field (notary/pbft_messages.cpp): counts, lengths and
# ranges are bounded there. Signed bodies are canonical encodings.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("ccal::schema::pbft");

# A client's request. `authenticator` holds one MAC per replica (index =
# replica index), each over the request's digest with the pairwise key of the
# client and that replica (notary/pbft_crypto.h).
struct Request {
  client @0 :Text;
  clientSeq @1 :UInt64;
  body @2 :Data;
  authenticator @3 :List(Data);
}

# What a batch's digest covers: the primary's timestamp and the requests
# without their authenticators (so a batch fetched from any replica can be
# checked against the digest agreed on).
struct BatchContent {
  timeMicros @0 :Int64;
  requests @1 :List(RequestId);
}

struct RequestId {
  client @0 :Text;
  clientSeq @1 :UInt64;
  bodyDigest @2 :Data;   # SHA-256 of the body
}

struct PrePrepare {
  view @0 :UInt64;
  seq @1 :UInt64;
  timeMicros @2 :Int64;
  requests @3 :List(Request);
}

# Prepare and commit share a layout: (view, seq, batch digest).
struct Vote {
  view @0 :UInt64;
  seq @1 :UInt64;
  digest @2 :Data;
}

struct Reply {
  view @0 :UInt64;
  clientSeq @1 :UInt64;
  replica @2 :UInt32;
  body @3 :Data;
}

# A replica's replies to one client from one executed batch, in one frame
# (each entry as a Reply would carry it).
struct ReplyEntry {
  clientSeq @0 :UInt64;
  body @1 :Data;
}

struct Replies {
  view @0 :UInt64;
  replica @1 :UInt32;
  entries @2 :List(ReplyEntry);
}

# A signed protocol message: `body` is the canonical encoding of the struct
# named by `kind`, `signature` the replica's Ed25519 signature over
# "ccal.pbft.v1" || cluster || kind || body.
struct Signed {
  kind @0 :UInt8;       # 1 checkpoint, 2 view-change, 3 new-view
  replica @1 :UInt32;
  body @2 :Data;
  signature @3 :Data;   # 64 bytes
}

struct Checkpoint {
  seq @0 :UInt64;
  stateDigest @1 :Data; # D(seq), state_machine.h
}

# PBFT's (n, d, v) triple of the P and Q sets.
struct LogEntry {
  seq @0 :UInt64;
  digest @1 :Data;
  view @2 :UInt64;
}

struct ViewChange {
  newView @0 :UInt64;
  stableSeq @1 :UInt64;
  stableDigest @2 :Data;
  stableProof @3 :List(Signed);   # 2f+1 signed checkpoints for (stableSeq, stableDigest); empty at 0
  prepared @4 :List(LogEntry);    # P: for each seq > stableSeq, the latest view it prepared in
  prePrepared @5 :List(LogEntry); # Q: each (seq, digest) pre-prepared, with its latest view
}

struct NewView {
  view @0 :UInt64;
  viewChanges @1 :List(Signed);   # V: 2f+1 signed view-changes for `view`
  startSeq @2 :UInt64;            # the chosen stable checkpoint
  chosen @3 :List(LogEntry);      # O: startSeq+1 .. ; digest empty = the null batch
}

struct FetchBatch {
  seq @0 :UInt64;
  digest @1 :Data;
}

struct BatchData {
  seq @0 :UInt64;
  timeMicros @1 :Int64;
  requests @2 :List(Request);
}

struct Status {
  view @0 :UInt64;
  lastExecuted @1 :UInt64;
  stableSeq @2 :UInt64;
  viewChanging @3 :Bool;
}

struct FetchEffects {
  fromSeq @0 :UInt64;   # first batch wanted
  count @1 :UInt32;
}

struct EffectsData {
  fromSeq @0 :UInt64;
  effects @1 :List(Data);
}

struct Frame {
  union {
    request @0 :Request;
    reply @1 :Reply;
    prePrepare @2 :PrePrepare;
    prepare @3 :Vote;
    commit @4 :Vote;
    signed @5 :Signed;
    fetchBatch @6 :FetchBatch;
    batchData @7 :BatchData;
    status @8 :Status;
    fetchEffects @9 :FetchEffects;
    effectsData @10 :EffectsData;
    replies @11 :Replies;
  }
}
