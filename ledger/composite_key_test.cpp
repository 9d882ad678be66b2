#include "ledger/composite_key.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <bit>
#include <limits>

#include <capnp/any.h>

#include "ledger/capnp_io.h"

using namespace ccal;

namespace {

// Deterministic, real Ed25519 keys: key(i) is the public key of seed i,i,...,i.
PublicKey key(uint8_t i) {
  return KeyPair::fromSeed(Bytes(32, i))->publicKey();
}

Key threshold(uint32_t q, std::vector<std::pair<uint32_t, Key>> children,
              const KeyLimits& limits = default_key_limits) {
  auto k = Key::threshold(q, std::move(children), limits);
  REQUIRE_MESSAGE(k.ok(), k.error().toString());
  return *k;
}

// The signers picked by the bits of `mask` from `keys`.
std::vector<PublicKey> pick(const std::vector<PublicKey>& keys, unsigned mask) {
  std::vector<PublicKey> out;
  for (size_t i = 0; i < keys.size(); ++i) {
    if (mask & (1u << i)) out.push_back(keys[i]);
  }
  return out;
}

// Checks both forms of isFulfilledBy, which must agree.
bool fulfilledBy(const Key& k, const std::vector<PublicKey>& signers) {
  bool by_span = k.isFulfilledBy(std::span<const PublicKey>(signers));
  bool by_set = k.isFulfilledBy(std::set<PublicKey>(signers.begin(), signers.end()));
  CHECK(by_span == by_set);
  return by_set;
}

// A chain of `depth` threshold nodes: each is 1-of-{the one below, a fresh key}.
Key chain(uint32_t depth, const KeyLimits& limits) {
  Key k = key(100);
  for (uint32_t i = 0; i < depth; ++i) {
    k = threshold(1, {{1, k}, {1, key(static_cast<uint8_t>(101 + i))}}, limits);
  }
  return k;
}

void fillPublicKey(schema::PublicKey::Builder b, uint16_t scheme, ByteView bytes) {
  b.setScheme(scheme);
  b.setKey(capnp::Data::Reader(bytes.data(), bytes.size()));
}

// A hand-built threshold node whose children are written in the given order,
// weights and keys as given, with no validation: for testing the decoder.
Bytes handBuiltNode(uint32_t q, const std::vector<std::pair<uint32_t, PublicKey>>& children) {
  return buildCanonical<schema::Key>([&](schema::Key::Builder root) {
    auto node = root.initThreshold();
    node.setThreshold(q);
    auto list = node.initChildren(static_cast<unsigned>(children.size()));
    for (unsigned i = 0; i < list.size(); ++i) {
      list[i].setWeight(children[i].first);
      fillPublicKey(list[i].initKey().initSingle(), 1, children[i].second.view());
    }
  });
}

void checkError(const Result<Key>& r, Errc code, const std::string& words) {
  REQUIRE_FALSE(r.ok());
  CHECK_MESSAGE(r.error().code == code, r.error().toString());
  CHECK_MESSAGE(r.error().message.find(words) != std::string::npos, r.error().toString());
}

}  // namespace

TEST_CASE("single key: fulfilled by its own signature only") {
  PublicKey a = key(1), b = key(2);
  Key k = a;
  CHECK(k.isSingle());
  CHECK(k.single() == a);
  CHECK_FALSE(fulfilledBy(k, {}));
  CHECK(fulfilledBy(k, {a}));
  CHECK_FALSE(fulfilledBy(k, {b}));
  CHECK(fulfilledBy(k, {b, a}));
  CHECK(k.leafKeys() == std::vector<PublicKey>{a});
  CHECK(k.contains(a));
  CHECK_FALSE(k.contains(b));
  CHECK(k.describe() == a.shortHex());
}

TEST_CASE("2-of-3: every subset of signers") {
  std::vector<PublicKey> keys{key(1), key(2), key(3)};
  Key k = *Key::anyOf(2, keys);
  CHECK_FALSE(k.isSingle());
  CHECK(k.node().threshold == 2);
  CHECK(k.node().children.size() == 3);
  for (unsigned mask = 0; mask < 8; ++mask) {
    CAPTURE(mask);
    CHECK(fulfilledBy(k, pick(keys, mask)) == (std::popcount(mask) >= 2));
  }
  // A repeated signature counts once; an outsider counts nothing.
  CHECK_FALSE(fulfilledBy(k, {keys[0], keys[0]}));
  CHECK_FALSE(fulfilledBy(k, {keys[0], key(9)}));
  CHECK(k.describe().rfind("composite(2 of 3):", 0) == 0);
}

TEST_CASE("weighted: weights {2,1,1}, threshold 3") {
  PublicKey a = key(1), b = key(2), c = key(3);
  Key k = threshold(3, {{2, a}, {1, b}, {1, c}});
  struct Row {
    std::vector<PublicKey> signers;
    bool fulfilled;
  };
  const Row table[] = {
      {{}, false},    {{a}, false},   {{b}, false},      {{c}, false},   {{b, c}, false},
      {{a, b}, true}, {{a, c}, true}, {{a, b, c}, true}, {{c, a}, true},
  };
  for (const auto& row : table) {
    CAPTURE(row.signers.size());
    CHECK(fulfilledBy(k, row.signers) == row.fulfilled);
  }
  CHECK(k.describe().rfind("composite(3 of 4):", 0) == 0);
}

TEST_CASE("nested: 2-of-{A, 1-of-{B, C}}") {
  PublicKey a = key(1), b = key(2), c = key(3);
  Key inner = threshold(1, {{1, b}, {1, c}});
  Key k = threshold(2, {{1, a}, {1, inner}});
  struct Row {
    std::vector<PublicKey> signers;
    bool fulfilled;
  };
  const Row table[] = {
      {{}, false},     {{a}, false},   {{b}, false},   {{c}, false},
      {{b, c}, false}, {{a, b}, true}, {{a, c}, true}, {{a, b, c}, true},
  };
  for (const auto& row : table) {
    CAPTURE(row.signers.size());
    CHECK(fulfilledBy(k, row.signers) == row.fulfilled);
  }
  std::vector<PublicKey> leaves{a, b, c};
  std::sort(leaves.begin(), leaves.end());
  CHECK(k.leafKeys() == leaves);
  CHECK(k.contains(c));
  CHECK_FALSE(k.contains(key(4)));
}

TEST_CASE("notary cluster: any 3 of 4 replicas, 0 to 4 signers") {
  std::vector<PublicKey> replicas{key(11), key(12), key(13), key(14)};
  Key notary = *Key::anyOf(3, replicas);
  for (unsigned mask = 0; mask < 16; ++mask) {
    CAPTURE(mask);
    CHECK(fulfilledBy(notary, pick(replicas, mask)) == (std::popcount(mask) >= 3));
  }
  // In signing order: 0, 1, 2, 3 and 4 replicas.
  for (unsigned n = 0; n <= 4; ++n) {
    CAPTURE(n);
    CHECK(fulfilledBy(notary, pick(replicas, (1u << n) - 1)) == (n >= 3));
  }
}

TEST_CASE("leafKeys is sorted and without repeats; contains looks into every subtree") {
  PublicKey a = key(1), b = key(2), c = key(3);
  // The same key under two different nodes is allowed: it is not a duplicate child.
  Key k = threshold(2, {{1, c}, {1, threshold(1, {{1, a}, {1, c}})}, {1, b}});
  std::vector<PublicKey> expected{a, b, c};
  std::sort(expected.begin(), expected.end());
  CHECK(k.leafKeys() == expected);
  for (const auto& leaf : expected) CHECK(k.contains(leaf));
  CHECK(fulfilledBy(k, {c}));  // c fulfils two children
}

TEST_CASE("weights are summed without 32-bit overflow") {
  PublicKey a = key(1), b = key(2);
  constexpr uint32_t max = std::numeric_limits<uint32_t>::max();
  // 2^31 + 2^31 wraps to 0 in 32 bits; it must still reach the threshold.
  Key halves = threshold(max, {{0x80000000u, a}, {0x80000000u, b}});
  CHECK(fulfilledBy(halves, {a, b}));
  CHECK_FALSE(fulfilledBy(halves, {a}));
  // max + 1 wraps to 0, which would be under the threshold 5.
  Key big = threshold(5, {{max, a}, {1, b}});
  CHECK(fulfilledBy(big, {a}));
  CHECK_FALSE(fulfilledBy(big, {b}));
}

TEST_CASE("canonical encoding does not depend on the order of children") {
  PublicKey a = key(1), b = key(2), c = key(3), d = key(4);
  Key inner = threshold(1, {{1, c}, {1, d}});
  std::vector<std::pair<uint32_t, Key>> children{{2, a}, {1, b}, {1, inner}};
  Key first = threshold(3, children);
  std::sort(children.begin(), children.end(),
            [](const auto& x, const auto& y) { return x.second.describe() < y.second.describe(); });
  do {
    // The inner node is also built in both orders.
    for (bool swap_inner : {false, true}) {
      auto copy = children;
      for (auto& [w, k] : copy) {
        if (!k.isSingle() && swap_inner) k = threshold(1, {{1, d}, {1, c}});
      }
      Key other = threshold(3, copy);
      CHECK(other == first);
      CHECK_FALSE(other < first);
      CHECK_FALSE(first < other);
      CHECK(other.encode() == first.encode());
      CHECK(other.hash() == first.hash());
      CHECK(other.describe() == first.describe());
    }
  } while (std::next_permutation(
      children.begin(), children.end(),
      [](const auto& x, const auto& y) { return x.second.describe() < y.second.describe(); }));

  // Children are stored in canonical order.
  const auto& stored = first.node().children;
  for (size_t i = 1; i < stored.size(); ++i) CHECK(stored[i - 1].key < stored[i].key);

  // A different weight or threshold is a different key.
  CHECK_FALSE(threshold(2, children) == first);
  CHECK_FALSE(threshold(3, {{1, a}, {2, b}, {1, inner}}) == first);
}

TEST_CASE("ordering of single keys agrees with their canonical encodings") {
  std::vector<Key> keys;
  for (uint8_t i = 1; i <= 12; ++i) keys.emplace_back(key(i));
  keys.push_back(*Key::anyOf(1, {key(1), key(2)}));
  keys.push_back(*Key::anyOf(2, {key(1), key(2)}));
  for (const auto& x : keys) {
    for (const auto& y : keys) {
      CHECK((x < y) == (x.encode() < y.encode()));
      CHECK((x == y) == (x.encode() == y.encode()));
    }
  }
}

TEST_CASE("encode/decode round trip") {
  PublicKey a = key(1), b = key(2), c = key(3);
  const Key keys[] = {
      Key(a),
      *Key::anyOf(2, {a, b, c}),
      threshold(3, {{2, a}, {1, b}, {1, c}}),
      threshold(2, {{1, a}, {1, threshold(1, {{1, b}, {1, c}})}}),
      chain(default_key_limits.depth_max, default_key_limits),
  };
  for (const auto& k : keys) {
    CAPTURE(k.describe());
    Bytes bytes = k.encode();
    auto back = Key::decode(bytes);
    REQUIRE_MESSAGE(back.ok(), back.error().toString());
    CHECK(*back == k);
    CHECK(back->encode() == bytes);
    CHECK(back->leafKeys() == k.leafKeys());
  }
}

TEST_CASE("decode: bytes that are not a key") {
  Bytes good = Key(*Key::anyOf(2, {key(1), key(2), key(3)})).encode();

  checkError(Key::decode({}), Errc::malformed, "key: empty");
  Bytes truncated(good.begin(), good.end() - 8);
  checkError(Key::decode(truncated), Errc::malformed, "key:");
  Bytes ragged(good.begin(), good.end() - 3);
  checkError(Key::decode(ragged), Errc::malformed, "8-byte words");
  Bytes trailing = good;
  trailing.insert(trailing.end(), 8, 0);
  checkError(Key::decode(trailing), Errc::not_canonical, "not the canonical encoding");
}

TEST_CASE("decode: bad leaf keys") {
  for (size_t length : {0u, 31u, 33u, 64u}) {
    CAPTURE(length);
    Bytes bytes = buildCanonical<schema::Key>([&](schema::Key::Builder root) {
      fillPublicKey(root.initSingle(), 1, Bytes(length, 0x42));
    });
    checkError(Key::decode(bytes), Errc::bad_length, "32 bytes, got " + std::to_string(length));
  }
  for (uint16_t scheme : {0, 2, 7}) {
    CAPTURE(scheme);
    Bytes bytes = buildCanonical<schema::Key>([&](schema::Key::Builder root) {
      fillPublicKey(root.initSingle(), scheme, key(1).view());
    });
    checkError(Key::decode(bytes), Errc::unknown_scheme,
               "scheme id " + std::to_string(scheme) + " is not known");
  }
  // A bad leaf deep in a tree is found too.
  Bytes nested = buildCanonical<schema::Key>([&](schema::Key::Builder root) {
    auto node = root.initThreshold();
    node.setThreshold(1);
    auto list = node.initChildren(1);
    list[0].setWeight(1);
    fillPublicKey(list[0].initKey().initSingle(), 7, key(1).view());
  });
  checkError(Key::decode(nested), Errc::unknown_scheme, "scheme id 7");
}

TEST_CASE("decode: invalid threshold nodes") {
  PublicKey a = key(1), b = key(2), c = key(3);
  // Children in canonical order, so that only the fault under test is wrong.
  std::vector<PublicKey> sorted{a, b, c};
  std::sort(sorted.begin(), sorted.end());
  const PublicKey &x = sorted[0], &y = sorted[1], &z = sorted[2];

  REQUIRE(Key::decode(handBuiltNode(2, {{1, x}, {1, y}, {1, z}})).ok());
  checkError(Key::decode(handBuiltNode(0, {{1, x}, {1, y}})), Errc::bad_key, "threshold 0");
  checkError(Key::decode(handBuiltNode(1, {{1, x}, {0, y}})), Errc::bad_key, "weight 0");
  checkError(Key::decode(handBuiltNode(3, {{1, x}, {1, y}})), Errc::bad_key,
             "total weight 2 of the children is under the threshold 3");
  checkError(Key::decode(handBuiltNode(1, {})), Errc::bad_key, "no children");
  checkError(Key::decode(handBuiltNode(1, {{1, x}, {1, x}})), Errc::bad_key, "duplicate");
  // The same key twice with different weights is still a duplicate.
  checkError(Key::decode(handBuiltNode(1, {{1, x}, {2, x}})), Errc::bad_key, "duplicate");
  checkError(Key::decode(handBuiltNode(2, {{1, y}, {1, x}, {1, z}})), Errc::not_canonical,
             "not sorted");
  checkError(Key::decode(handBuiltNode(2, {{1, x}, {1, z}, {1, y}})), Errc::not_canonical,
             "not sorted");
}

TEST_CASE("decode: data outside the schema is not canonical") {
  // Canonical Cap'n Proto keeps unused bits of a data word; the key must not.
  std::vector<PublicKey> keys{key(1), key(2), key(3)};
  std::sort(keys.begin(), keys.end());
  Bytes bytes = buildCanonical<schema::Key>([&](schema::Key::Builder root) {
    auto node = root.initThreshold();
    node.setThreshold(2);
    auto list = node.initChildren(3);
    for (unsigned i = 0; i < 3; ++i) {
      list[i].setWeight(1);
      fillPublicKey(list[i].initKey().initSingle(), 1, keys[i].view());
    }
    // The upper half of the weight's data word belongs to no field.
    capnp::AnyStruct::Builder child = list[1];
    REQUIRE(child.getDataSection().size() == 8);
    child.getDataSection()[5] = 0x08;
  });
  checkError(Key::decode(bytes), Errc::not_canonical, "data outside the key schema");

  // Cap'n Proto ignores the top bit of an inline composite list's element
  // count (word 5 here: the tag of the children list), and so does its
  // isCanonical(); the key decoder must not.
  Bytes good = Key(*Key::anyOf(2, keys)).encode();
  REQUIRE(Key::decode(good).ok());
  Bytes tagged = good;
  REQUIRE(tagged.size() > 5 * 8 + 3);
  REQUIRE(tagged[5 * 8] == 3 << 2);
  tagged[5 * 8 + 3] |= 0x80;
  checkError(Key::decode(tagged), Errc::not_canonical,
             "not the canonical encoding of composite(2 of 3)");
}

TEST_CASE("decode: over the limits") {
  KeyLimits roomy;
  roomy.depth_max = 40;
  roomy.children_max = 1000;
  roomy.leaves_max = 10000;

  SUBCASE("one level too deep") {
    Key deep = chain(default_key_limits.depth_max + 1, roomy);
    checkError(Key::decode(deep.encode()), Errc::too_deep,
               "nested too deep: over the limit of 4 levels");
    KeyLimits shallow;
    shallow.depth_max = 2;
    checkError(Key::decode(chain(3, roomy).encode(), shallow), Errc::too_deep, "limit of 2 levels");
    CHECK(Key::decode(chain(2, roomy).encode(), shallow).ok());
  }
  SUBCASE("far too deep: Cap'n Proto's nesting limit also stops it") {
    checkError(Key::decode(chain(roomy.depth_max, roomy).encode()), Errc::too_deep,
               "deeply-nested");
  }
  SUBCASE("too many children") {
    std::vector<PublicKey> many;
    for (int i = 0; i <= 128; ++i) many.push_back(key(static_cast<uint8_t>(i)));
    Key wide = *Key::anyOf(1, many, roomy);
    checkError(Key::decode(wide.encode()), Errc::too_large, "129 children, over the limit of 128");
    many.pop_back();
    CHECK(Key::decode(Key(*Key::anyOf(1, many)).encode()).ok());
  }
  SUBCASE("too many leaves") {
    KeyLimits few;
    few.leaves_max = 4;
    Key five = *Key::anyOf(1, {key(1), key(2), key(3), key(4), key(5)});
    checkError(Key::decode(five.encode(), few), Errc::too_large, "limit");
    Key four = *Key::anyOf(1, {key(1), key(2), key(3), key(4)});
    CHECK(Key::decode(four.encode(), few).ok());
  }
}

TEST_CASE("Key::threshold rejects invalid nodes, naming the problem") {
  PublicKey a = key(1), b = key(2), c = key(3);
  checkError(Key::threshold(0, {{1, a}, {1, b}}), Errc::bad_key, "threshold 0");
  checkError(Key::threshold(1, {{1, a}, {0, b}}), Errc::bad_key, "child 1 has weight 0");
  checkError(Key::threshold(1, {}), Errc::bad_key, "no children");
  checkError(Key::threshold(4, {{2, a}, {1, b}}), Errc::bad_key,
             "total weight 3 of the children is under the threshold 4");
  checkError(Key::threshold(1, {{1, a}, {1, b}, {2, a}}), Errc::bad_key,
             "duplicate child " + a.shortHex());
  checkError(Key::anyOf(1, {a, b, b}), Errc::bad_key, "duplicate");
  // Equal subtrees are duplicates however they were built.
  checkError(Key::threshold(1, {{1, *Key::anyOf(1, {b, c})}, {1, *Key::anyOf(1, {c, b})}}),
             Errc::bad_key, "duplicate child composite(1 of 2)");

  // A node with one child that alone fulfils it is allowed as it is.
  Key lone = threshold(1, {{1, a}});
  CHECK(fulfilledBy(lone, {a}));
  CHECK_FALSE(lone == Key(a));
}

TEST_CASE("Key::threshold enforces the limits") {
  KeyLimits limits;
  limits.depth_max = 2;
  limits.children_max = 3;
  limits.leaves_max = 5;
  PublicKey a = key(1), b = key(2), c = key(3), d = key(4);

  checkError(Key::anyOf(1, {a, b, c, d}, limits), Errc::bad_key,
             "4 children is over the limit of 3");
  CHECK(Key::anyOf(1, {a, b, c}, limits).ok());

  Key two = chain(2, limits);
  checkError(Key::threshold(1, {{1, two}, {1, d}}, limits), Errc::bad_key,
             "depth 3 is over the limit of 2");

  Key three = *Key::anyOf(1, {a, b, c}, limits);
  checkError(Key::threshold(1, {{1, three}, {1, *Key::anyOf(1, {b, c, d}, limits)}}, limits),
             Errc::bad_key, "6 leaf keys is over the limit of 5");
  CHECK(Key::threshold(1, {{1, three}, {1, *Key::anyOf(1, {c, d}, limits)}}, limits).ok());

  // The default children limit.
  std::vector<PublicKey> many;
  for (int i = 0; i <= 128; ++i) many.push_back(key(static_cast<uint8_t>(i)));
  checkError(Key::anyOf(1, many), Errc::bad_key, "129 children is over the limit of 128");
}

TEST_CASE("keys embedded in another message are read with Key::read") {
  Key owner = *Key::anyOf(2, {key(1), key(2), key(3)});
  Bytes party = buildCanonical<schema::Party>([&](schema::Party::Builder b) {
    b.setName("O=Haikou Fishing Cooperative, L=Haikou, C=CN");
    owner.write(b.initOwningKey());
  });
  auto back = decodeMessage<schema::Party>(
      party, "party", Canonical::required,
      [](schema::Party::Reader r) { return Key::read(r.getOwningKey()); });
  REQUIRE_MESSAGE(back.ok(), back.error().toString());
  CHECK(*back == owner);
}
