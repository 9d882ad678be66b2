#include "notary/pbft_crypto.h"

#include <doctest/doctest.h>

using namespace ccal;
using namespace ccal::notary::pbft;

namespace {
KeyPair keyOf(const std::string& name) {
  return KeyPair::fromSeed(SecureHash::of(asBytes(name)).view()).value();
}
}  // namespace

TEST_CASE("pbft crypto: both sides derive the same pairwise key; others do not") {
  const KeyPair a = keyOf("a"), b = keyOf("b"), c = keyOf("c");
  auto ab = derivePairwiseKey(a, "A", b.publicKey(), "B");
  auto ba = derivePairwiseKey(b, "B", a.publicKey(), "A");
  auto ac = derivePairwiseKey(a, "A", c.publicKey(), "C");
  REQUIRE(ab.ok());
  REQUIRE(ba.ok());
  REQUIRE(ac.ok());
  CHECK(*ab == *ba);
  CHECK(*ab != *ac);
  // The names are bound in: the same keys under other names give another key.
  CHECK(*derivePairwiseKey(a, "A", b.publicKey(), "B2") != *ab);
}

TEST_CASE("pbft crypto: an authenticator entry checks at its replica only") {
  const KeyPair client = keyOf("client"), r0 = keyOf("r0"), r1 = keyOf("r1");
  KeyRing ring(client, "C");
  const SecureHash d = SecureHash::of(asBytes("request"));
  const Bytes tag0 = mac(*ring.keyFor("R0", r0.publicKey()), d);
  const MacKey at_r0 = *derivePairwiseKey(r0, "R0", client.publicKey(), "C");
  const MacKey at_r1 = *derivePairwiseKey(r1, "R1", client.publicKey(), "C");
  CHECK(macMatches(at_r0, d, tag0));
  CHECK(!macMatches(at_r1, d, tag0));
  CHECK(!macMatches(at_r0, SecureHash::of(asBytes("other")), tag0));
  Bytes flipped = tag0;
  flipped[3] ^= 1;
  CHECK(!macMatches(at_r0, d, flipped));
  CHECK(!macMatches(at_r0, d, ByteView(tag0.data(), 8)));
}

TEST_CASE("pbft crypto: a peer key that is not a valid point is refused") {
  std::array<uint8_t, 32> bad{};
  bad[0] = 1;  // the identity point's encoding is small-order
  auto k = derivePairwiseKey(keyOf("a"), "A", PublicKey(bad), "B");
  CHECK(!k.ok());
}
