#include "vault/index_keys.h"

#include <doctest/doctest.h>

#include <algorithm>

using namespace ccal;
using namespace ccal::vault;

TEST_CASE("state keys order by sequence number, then output index, and read back") {
  std::vector<keys::StateKey> in{{0, 0}, {1, 0}, {1, 1}, {1, 0x01000000}, {255, 7}, {256, 0},
                                 {uint64_t{1} << 40, 3}, {~uint64_t{0}, ~uint32_t{0}}};
  std::vector<Bytes> encoded;
  for (const auto& k : in) {
    Bytes b = keys::stateKey(k);
    CHECK(b.size() == keys::state_key_bytes);
    CHECK(keys::stateKeyFromKeyEnd(b) == k);
    encoded.push_back(b);
  }
  // Byte order (LMDB's) is the keys' order.
  CHECK(std::is_sorted(encoded.begin(), encoded.end()));
  CHECK(std::is_sorted(in.begin(), in.end()));
}

TEST_CASE("a state key ends an index key and can be filled in afterwards") {
  Bytes k;
  keys::appendText(k, "ccal.test.Token");
  keys::appendInt(k, -5);
  keys::appendStateKey(k, {0, 9});
  const size_t prefix = k.size() - keys::state_key_bytes;
  keys::setStateKeyAtEnd(k, {42, 9});
  CHECK(keys::stateKeyFromKeyEnd(k) == keys::StateKey{42, 9});
  CHECK(keys::readInt(ByteView(k).subspan(prefix - 8, 8)) == -5);
  CHECK(keys::seqKey(42) == Bytes(k.begin() + prefix, k.begin() + prefix + 8));
}
