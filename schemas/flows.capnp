@0xc80d56710dcb1fb2;
# The flow runtime's session messages (flows/flow_runtime.h), carried as
# payloads of the exactly-once messaging layer (flows/io.h Messaging), and
# the events it journals in the flow store (vault/flow_store.h). Decoded from
# untrusted bytes with the bounded decoder (ledger/capnp_io.h); written in
# canonical form.
#
# A session is named by the flow that opened it (`initiatorFlow`, 32 bytes)
# and its index among that flow's sessions. Each direction numbers its
# messages 0, 1, 2, ... (`seq`); the initiator's seq 0 is the init. A
# message's id in the messaging layer is SHA-256 of ("ccal-flow-message",
# initiatorFlow, sessionIndex, toResponder, seq), so a flow that replays
# after a crash sends the same ids, and a receiver recognises a message it
# has handled already by its seq.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("ccal::schema::flows");

struct SessionMessage {
  initiatorFlow @0 :Data;
  sessionIndex @1 :UInt32;
  toResponder @2 :Bool;        # sent by the initiator's side
  seq @3 :UInt64;
  union {
    init @4 :SessionInit;      # seq 0 from the initiator
    data @5 :Data;             # a payload for receive()
    end @6 :SessionEnd;        # the sender's flow finished (the last message)
  }
}

struct SessionInit {
  flowName @0 :Text;           # the flow the initiator asks the peer to run
  initiatorFlowName @1 :Text;  # the initiating flow, for the peer's errors and status
  payload @2 :Data;            # the first payload (the responder's first receive())
}

struct SessionEnd {
  ok @0 :Bool;
  code @1 :UInt16;             # an Errc when not ok
  message @2 :Text;
}

# The arguments of a responder flow (its FlowStore start record).
struct ResponderStart {
  peer @0 :Text;               # the initiator's node
  initiatorFlow @1 :Data;
  sessionIndex @2 :UInt32;
  initiatorFlowName @3 :Text;
  firstPayload @4 :Data;
}

# One journaled event: what a flow consumed, in the order it consumed it.
struct FlowEvent {
  union {
    received @0 :Received;
    timerFired @1 :Int64;      # the delay asked for, in microseconds
    now @2 :Int64;             # the clock's answer, microseconds since the epoch
    random @3 :UInt64;
    subFlowEnded @4 :SubFlowEnded;
    aborted @5 :SessionEnd;    # killed or timed out: the flow stops here
    called @6 :Called;         # a service call's outcome (FlowContext::call)
  }
}

struct Called {
  name @0 :Text;
  ok @1 :Bool;
  code @2 :UInt16;             # an Errc when not ok
  message @3 :Text;            # when not ok
  data @4 :Data;               # when ok
}

struct Received {
  sessionIndex @0 :UInt32;     # the flow's local session number
  seq @1 :UInt64;              # the message's seq in its direction
  union {
    data @2 :Data;
    end @3 :SessionEnd;
  }
}

struct SubFlowEnded {
  name @0 :Text;
  ok @1 :Bool;
  code @2 :UInt16;
  message @3 :Text;
}

# A failed or killed flow's result in the flow store.
struct FlowError {
  code @0 :UInt16;
  message @1 :Text;
}
