#include "ledger/states.h"

#include <doctest/doctest.h>

#include "ledger/testing.h"

using namespace ccal;
using namespace ccal::testing;

TEST_CASE("decodeParty: the same bytes give the same party after other parties, bad bytes and tighter limits") {
  const KeyPair ka = KeyPair::generate(), kb = KeyPair::generate();
  const Party a = testParty("Alpha Cooperative", ka), b = testParty("Beta Bank", kb);
  const Bytes ea = encodeParty(a), eb = encodeParty(b);
  CHECK(decodeParty(ea).value() == a);
  CHECK(decodeParty(ea).value() == a);  // again: the remembered decode
  CHECK(decodeParty(eb).value() == b);
  CHECK(decodeParty(ea).value() == a);
  // A name over tighter limits is refused, even right after the same bytes decoded.
  ComponentLimits tight;
  tight.name_bytes_max = 4;
  CHECK(!decodeParty(ea, tight).ok());
  CHECK(decodeParty(ea).value() == a);
  // A prefix of the remembered bytes, or one changed byte, is decoded (and refused) as itself.
  CHECK(!decodeParty(ByteView(ea).first(ea.size() - 8)).ok());
  Bytes changed = ea;
  changed[changed.size() / 2] ^= 0x01;
  auto other = decodeParty(changed);
  CHECK((!other.ok() || !(*other == a)));
  CHECK(decodeParty(ea).value() == a);
}
