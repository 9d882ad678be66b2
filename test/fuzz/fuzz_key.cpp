// Fuzzes Key::decode (single and composite threshold keys).
//
// For every decodable key:
//  - it encodes to exactly the input bytes (Key::decode accepts only the
//    bytes it writes, so one key has one encoding), which decode to an equal
//    key with the same hash;
//  - a composite key is also accepted by Key::threshold() from its own
//    children (decoding and construction enforce the same rules) and equals it;
//  - all its leaf keys together fulfil it, no signer at all does not, and
//    every leaf is contained in it.

#include <algorithm>
#include <set>
#include <utility>
#include <vector>

#include "ledger/composite_key.h"
#include "test/fuzz/fuzz_common.h"

using namespace ccal;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto key = Key::decode(fuzz::input(data, size));
  if (!key) return 0;

  Bytes encoded = key->encode();
  FUZZ_CHECK(ByteView(encoded).size() == size && std::equal(encoded.begin(), encoded.end(), data));
  auto again = Key::decode(encoded);
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(*again == *key);
  FUZZ_CHECK(again->encode() == encoded);
  FUZZ_CHECK(again->hash() == key->hash());
  FUZZ_CHECK(again->isSingle() == key->isSingle());

  if (!key->isSingle()) {
    std::vector<std::pair<uint32_t, Key>> children;
    for (const auto& child : key->node().children) children.emplace_back(child.weight, child.key);
    auto built = Key::threshold(key->node().threshold, std::move(children));
    FUZZ_CHECK(built.ok());
    FUZZ_CHECK(*built == *key);
    FUZZ_CHECK(built->encode() == encoded);
  }

  std::vector<PublicKey> leaves = key->leafKeys();
  FUZZ_CHECK(!leaves.empty());
  if (key->isSingle()) FUZZ_CHECK(leaves.size() == 1 && leaves[0] == key->single());
  FUZZ_CHECK(key->isFulfilledBy(std::set<PublicKey>(leaves.begin(), leaves.end())));
  FUZZ_CHECK(key->isFulfilledBy(std::span<const PublicKey>(leaves)));
  FUZZ_CHECK(!key->isFulfilledBy(std::set<PublicKey>{}));
  for (const auto& leaf : leaves) FUZZ_CHECK(key->contains(leaf));
  FUZZ_CHECK(!key->describe().empty());
  return 0;
}
