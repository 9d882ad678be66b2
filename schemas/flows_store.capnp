@0xf17f27406f95c7c3;
# The flow store's checkpoint record (LMDB value of flow_checkpoint, keyed by
# the flow id). Stored canonical, like the vault's records, so
# `capnp decode --flat` reads a dumped value.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("ccal::schema::flows");

struct FlowCheckpoint {
  flowName @0 :Text;
  args @1 :Data;               # the initiator's arguments; dropped when the flow finishes
  startedMicros @2 :Int64;
  status @3 :UInt8;            # 0 running, 1 parked, 2 finished
  parkReason @4 :Text;         # when parked
  parkedMicros @5 :Int64;      # when parked
  outcome @6 :UInt8;           # when finished: 0 ok, 1 failed, 2 killed
  result @7 :Data;             # when finished: the result or the error
  finishedMicros @8 :Int64;    # when finished
  journalLength @9 :UInt64;    # when finished: events journaled before the journal was deleted
}
