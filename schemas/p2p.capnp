@0x8f30a1c97dd1fb1f;
# The payloads that members exchange through exactly-once messaging
# (flows/io.h Messaging): one envelope whose union says what it carries.
# Flow sessions add their messages here as later issues bring them.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("ccal::schema::p2p");

struct P2pMessage {
  union {
    # Operator diagnostics (`ccal peer send`): a numbered text, so that a
    # receiver can show that messages arrived once each and in order.
    diagnostic @0 :DiagnosticMessage;
    # A flow session's message (the flow runtime defines its content).
    flowSession @1 :Data;
    # A member's SignedNodeInfo (schemas/network.capnp): each member sends
    # its own to every peer at start, so a changed address propagates.
    nodeInfo @2 :Data;
  }
}

struct DiagnosticMessage {
  stream @0 :Text;      # the sender's name for this run of messages
  sequence @1 :UInt64;  # 0, 1, 2, ... within the stream
  text @2 :Text;
}
