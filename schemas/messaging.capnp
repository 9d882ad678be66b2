@0x8772ec1b9effb4be;
# Frames of the exactly-once messaging layer (flows/delivery.h), carried by a
# best-effort Link between two members. Decoded from untrusted bytes with the
# bounded decoder (ledger/capnp_io.h); sent in canonical form.
#
# Streams: the messages from one member to one receiver are numbered 1, 2,
# 3, ... without gaps (`seq`, the sender's durable outbox seq for that
# receiver, never reused) under an `incarnation` that the sender's store
# chose when it first wrote to that receiver. A sender whose store was wiped
# starts again at seq 1 under a newer incarnation; the receiver notices,
# logs it and follows the newer stream (vault/message_store.h).
# The receiver hands messages to its handler in seq order and acknowledges
# what it has durably stored: every seq up to a watermark, plus single seqs
# stored above it (out of order).

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("ccal::schema::messaging");

struct Frame {
  union {
    message @0 :Message;
    ack @1 :Ack;
  }
}

struct Message {
  incarnation @0 :UInt64;  # >= 1: the sender's stream to this receiver
  seq @1 :UInt64;          # >= 1
  floor @2 :UInt64;        # 1 <= floor <= seq: every seq below it was acknowledged to the sender
  id @3 :Data;             # 32 bytes: the sender's message id
  payload @4 :Data;
}

# The receiver has durably stored these messages of the stream (or had
# stored them before).
struct Ack {
  incarnation @0 :UInt64;
  upTo @1 :UInt64;          # every seq <= upTo
  seqs @2 :List(UInt64);    # and these, each above upTo
}
