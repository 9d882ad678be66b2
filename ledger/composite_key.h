#pragma once
// Keys that own states and sign commands: a single public key, or a
// composite (threshold) key — a tree of weighted children with a threshold
// at each node. The notary cluster's key is "any q of its n replica keys".
//
// A Key is immutable and cheap to copy. Its canonical form sorts each node's
// children by their canonical encoding, so two keys with the same structure
// compare equal and encode to the same bytes.

#include <cstdint>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "ledger/bytes.h"
#include "ledger/crypto.h"
#include "ledger/result.h"
#include "ledger/secure_hash.h"
#include "schemas/ledger.capnp.h"

namespace ccal {

struct KeyLimits {
  uint32_t depth_max = 4;       // levels of threshold nodes
  uint32_t children_max = 128;  // children of one node
  uint32_t leaves_max = 256;    // public keys in the whole tree
};

inline constexpr KeyLimits default_key_limits{};

class Key {
 public:
  struct Child;
  struct Node;

  // A single Ed25519 key.
  Key(const PublicKey& key);  // NOLINT: implicit, a public key is a key
  Key() = default;            // the all-zero single key; only as a placeholder

  // A threshold node. Errors (bad_key): threshold 0, a weight 0, total weight
  // under the threshold, duplicate children, no children, over the limits.
  static Result<Key> threshold(uint32_t threshold, std::vector<std::pair<uint32_t, Key>> children,
                               const KeyLimits& limits = default_key_limits);
  // "any q of these n keys", each weight 1.
  static Result<Key> anyOf(uint32_t q, const std::vector<PublicKey>& keys,
                           const KeyLimits& limits = default_key_limits);

  bool isSingle() const { return std::holds_alternative<PublicKey>(v_); }
  // The public key of a single key; asserts isSingle().
  const PublicKey& single() const;
  // The node of a composite key; asserts !isSingle().
  const Node& node() const;

  // True when the keys that signed fulfil this key: a single key by being
  // among them, a node when the weights of its fulfilled children reach the threshold.
  bool isFulfilledBy(const std::set<PublicKey>& signers) const;
  bool isFulfilledBy(std::span<const PublicKey> signers) const;

  // Every public key in the tree, in canonical order, without repeats.
  std::vector<PublicKey> leafKeys() const;
  // True if `key` is one of the leaves.
  bool contains(const PublicKey& key) const;

  // Canonical Cap'n Proto encoding (schema Key) and its SHA-256.
  Bytes encode() const;
  SecureHash hash() const { return SecureHash::of(encode()); }
  // Short form for logs and messages: the hex prefix of a single key, or
  // "composite(q of n):<hash prefix>", n being the total weight of the children.
  std::string describe() const;

  // Decodes untrusted bytes; checks scheme ids, lengths, canonical order and limits.
  // Errors: malformed (bytes), not_canonical (encoding or child order),
  // unknown_scheme / bad_length (a leaf), bad_key (threshold, weights,
  // duplicates), too_deep / too_large (over the limits).
  static Result<Key> decode(ByteView bytes, const KeyLimits& limits = default_key_limits);
  // Reads from / writes into a Cap'n Proto message (for keys embedded in other structs).
  // Call within decodeMessage(), which turns Cap'n Proto read errors into Errors.
  // read() refuses (not_canonical) a key that carries data outside the schema;
  // only decode() can also compare the input bytes with the key's encoding.
  static Result<Key> read(schema::Key::Reader reader, const KeyLimits& limits = default_key_limits);
  void write(schema::Key::Builder builder) const;

  bool operator==(const Key& other) const;
  bool operator<(const Key& other) const;  // by canonical encoding

 private:
  static Key fromNode(std::shared_ptr<Node> node);
  // Reads one key of a tree with `depth_above` threshold nodes above it;
  // `leaves` counts the leaves read so far in the whole tree.
  static Result<Key> readTree(schema::Key::Reader reader, const KeyLimits& limits,
                              uint32_t depth_above, uint64_t& leaves);

  std::variant<PublicKey, std::shared_ptr<const Node>> v_;
};

struct Key::Child {
  uint32_t weight;
  Key key;
};

struct Key::Node {
  uint32_t threshold;
  std::vector<Child> children;  // canonical order
  Bytes encoding;               // canonical encoding of the whole node's key, set once
};

}  // namespace ccal
