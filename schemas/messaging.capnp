@0x8772ec1b9effb4be;
# Frames of the exactly-once messaging layer (flows/delivery.h), carried by a
# best-effort Link between two members. Decoded from untrusted bytes with the
# bounded decoder (ledger/capnp_io.h); sent and stored in canonical form.
#
# Sequence numbers: `seq` is the sender's durable outbox sequence of the
# message plus one, so it is never 0, increases in send order and is never
# reused, across restarts (the outbox counter is persisted). Sequences of the
# messages to one receiver have gaps (the counter is shared by all peers), so
# each message also names `prevSeq`: the message to this receiver sent just
# before it that the sender has not yet seen acknowledged, or 0 when every
# earlier message to this receiver has been acknowledged (is stored there).
# The receiver hands a message to its handler only after the one it names
# (and, by induction, every earlier one), which makes delivery ordered per
# (sender, receiver) without a per-peer counter.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("ccal::schema::messaging");

struct Frame {
  union {
    message @0 :Message;
    ack @1 :Ack;
  }
}

struct Message {
  seq @0 :UInt64;       # >= 1
  prevSeq @1 :UInt64;   # < seq; 0: no earlier message is outstanding
  prevId @2 :Data;      # 32 bytes: the id of message prevSeq (empty when prevSeq is 0)
  id @3 :Data;          # 32 bytes: the sender's message id
  payload @4 :Data;
}

# The receiver has durably stored these messages (or had stored them before).
struct Ack {
  ids @0 :List(Data);   # 32 bytes each
}
