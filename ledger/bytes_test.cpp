#include "ledger/bytes.h"

#include <doctest/doctest.h>

#include "ledger/secure_hash.h"

using namespace ccal;

TEST_CASE("hex round trip and rejection") {
  Bytes b{0x00, 0x01, 0xab, 0xff};
  CHECK(toHex(b) == "0001abff");
  CHECK(fromHex("0001ABff") == b);
  CHECK_FALSE(fromHex("abc").has_value());
  CHECK_FALSE(fromHex("zz").has_value());
}

TEST_CASE("SHA-256 known answers (FIPS 180-2)") {
  CHECK(SecureHash::of(asBytes("abc")).hex() ==
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(SecureHash::of(asBytes("")).hex() ==
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  Sha256 h;
  h.update(asBytes("a")).update(asBytes("bc"));
  CHECK(h.finish() == SecureHash::of(asBytes("abc")));
  CHECK(SecureHash::fromBytes(Bytes(31)).error().code == Errc::bad_length);
  CHECK(SecureHash::zero().isZero());
}
