@0xb1f4abf8cdb9d9f4;
# A token state used by tests and benchmarks (see ledger/testing.h).

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("ccal::schema::testing");

using Ledger = import "ledger.capnp";

struct TestToken {
  owner @0 :Ledger.Key;
  issuer @1 :Ledger.Key;
  amountMinor @2 :Int64;
  currency @3 :Text;
  dueMicros @4 :Int64;
  reference @5 :Text;
  linearId @6 :Data;     # 32 bytes
}
