#include "ledger/composite_key.h"

#include <algorithm>
#include <limits>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "ledger/capnp_io.h"

#include <capnp/any.h>

namespace ccal {

namespace {

// Levels of threshold nodes in a key: 0 for a single key.
uint32_t depthOf(const Key& key) {
  if (key.isSingle()) return 0;
  uint32_t deepest = 0;
  for (const auto& child : key.node().children) deepest = std::max(deepest, depthOf(child.key));
  return deepest + 1;
}

// Leaf occurrences (a key under two nodes counts twice): this bounds the work
// of every traversal, which is what the limit is for.
uint64_t leafCountOf(const Key& key) {
  if (key.isSingle()) return 1;
  uint64_t count = 0;
  for (const auto& child : key.node().children) count += leafCountOf(child.key);
  return count;
}

// The rules every threshold node obeys, however it was made. Weights are
// summed in 64 bits: up to children_max uint32 weights cannot overflow that.
Status checkWeights(uint32_t threshold, std::span<const uint32_t> weights) {
  if (weights.empty()) {
    return makeError(Errc::bad_key, "a composite key needs at least one child, it has no children");
  }
  if (threshold == 0) {
    return makeError(
        Errc::bad_key,
        "threshold 0 would be fulfilled by no signature at all; it must be at least 1");
  }
  uint64_t total = 0;
  for (size_t i = 0; i < weights.size(); ++i) {
    if (weights[i] == 0) {
      return makeError(
          Errc::bad_key,
          "child " + std::to_string(i) + " has weight 0; every child needs a weight of at least 1");
    }
    total += weights[i];
  }
  if (total < threshold) {
    return makeError(Errc::bad_key, "total weight " + std::to_string(total) +
                                        " of the children is under the threshold " +
                                        std::to_string(threshold) +
                                        ", so the key could never be fulfilled");
  }
  return {};
}

template <class Has>
bool fulfilled(const Key& key, const Has& has) {
  if (key.isSingle()) return has(key.single());
  const Key::Node& node = key.node();
  uint64_t weight = 0;
  for (const auto& child : node.children) {
    if (!fulfilled(child.key, has)) continue;
    weight += child.weight;
    if (weight >= node.threshold) return true;
  }
  return false;
}

void collectLeaves(const Key& key, std::vector<PublicKey>& out) {
  if (key.isSingle()) {
    out.push_back(key.single());
    return;
  }
  for (const auto& child : key.node().children) collectLeaves(child.key, out);
}

// True when a struct has no data beyond its first `data_bytes` bytes and no
// pointers beyond its first `pointers`: nothing a newer schema could have added.
template <class Reader>
bool onlyKnownBits(Reader reader, size_t data_bytes, size_t pointers) {
  capnp::AnyStruct::Reader any(reader);
  auto data = any.getDataSection();
  for (size_t i = data_bytes; i < data.size(); ++i)
    if (data[i] != 0) return false;
  auto pointer_section = any.getPointerSection();
  for (size_t i = pointers; i < pointer_section.size(); ++i)
    if (!pointer_section[i].isNull()) return false;
  return true;
}

// Writes what a composite key's bytes say (every field, with lengths) without
// building an encoding, checking on the way what Key::read checks of a
// single key: no struct carries data outside the key schema. False when the
// bytes need the full reading: unknown data, or a limit reached (the full
// reading names it).
bool describeTree(schema::Key::Reader reader, const KeyLimits& limits, uint32_t depth_above,
                  uint64_t& leaves, std::string& out) {
  if (!onlyKnownBits(reader, 2, 1)) return false;
  auto appendU32 = [&out](uint32_t v) { out.append(reinterpret_cast<const char*>(&v), sizeof v); };
  switch (reader.which()) {
    case schema::Key::SINGLE: {
      auto single = reader.getSingle();
      if (!onlyKnownBits(single, 2, 1) || ++leaves > limits.leaves_max) return false;
      auto bytes = single.getKey();
      out.push_back('s');
      appendU32(single.getScheme());
      appendU32(static_cast<uint32_t>(bytes.size()));
      out.append(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
      return true;
    }
    case schema::Key::THRESHOLD: {
      if (depth_above >= limits.depth_max) return false;
      auto node = reader.getThreshold();
      if (!onlyKnownBits(node, 4, 1)) return false;
      auto list = node.getChildren();
      if (list.size() > limits.children_max) return false;
      out.push_back('t');
      appendU32(node.getThreshold());
      appendU32(list.size());
      for (auto child : list) {
        if (!onlyKnownBits(child, 4, 1)) return false;
        appendU32(child.getWeight());
        if (!describeTree(child.getKey(), limits, depth_above + 1, leaves, out)) return false;
      }
      return true;
    }
  }
  return false;
}

// Composite keys read before, by what their bytes say (describeTree). A
// network has few of them (its notary clusters' keys, funds' committee
// keys), and every state and transaction names its notary: reading one
// again costs a walk over its fields instead of re-encoding it twice.
// Bounded: emptied when full, so any working set stays cheap.
class CompositeKeyCache {
 public:
  static constexpr size_t entries_max = 256;

  std::optional<Key> find(const std::string& description) {
    std::lock_guard lock(mutex_);
    auto it = keys_.find(description);
    if (it == keys_.end()) return std::nullopt;
    return it->second;
  }
  void add(std::string description, const Key& key) {
    std::lock_guard lock(mutex_);
    if (keys_.size() >= entries_max) keys_.clear();
    keys_.emplace(std::move(description), key);
  }

 private:
  std::mutex mutex_;
  std::unordered_map<std::string, Key> keys_;
};

CompositeKeyCache& compositeKeys() {
  static CompositeKeyCache cache;
  return cache;
}

}  // namespace

Key::Key(const PublicKey& key) : v_(key) {}

Key Key::fromNode(std::shared_ptr<Node> node) {
  CCAL_ASSERT(node->encoding.empty());
  Key key;
  key.v_ = node;
  // Encode once: keys are compared and hashed far more often than made.
  node->encoding = buildCanonical<schema::Key>([&](schema::Key::Builder root) { key.write(root); });
  return key;
}

Result<Key> Key::threshold(uint32_t threshold, std::vector<std::pair<uint32_t, Key>> children,
                           const KeyLimits& limits) {
  if (children.size() > limits.children_max) {
    return makeError(Errc::bad_key, "a threshold node of " + std::to_string(children.size()) +
                                        " children is over the limit of " +
                                        std::to_string(limits.children_max) + " children");
  }
  std::vector<uint32_t> weights;
  weights.reserve(children.size());
  for (const auto& child : children) weights.push_back(child.first);
  CCAL_TRY(checkWeights(threshold, weights));

  uint32_t depth = 0;
  uint64_t leaves = 0;
  for (const auto& child : children) {
    depth = std::max(depth, depthOf(child.second) + 1);
    leaves += leafCountOf(child.second);
  }
  if (depth > limits.depth_max) {
    return makeError(Errc::bad_key, "a composite key of depth " + std::to_string(depth) +
                                        " is over the limit of " +
                                        std::to_string(limits.depth_max) +
                                        " levels of threshold nodes");
  }
  if (leaves > limits.leaves_max) {
    return makeError(Errc::bad_key, "a composite key of " + std::to_string(leaves) +
                                        " leaf keys is over the limit of " +
                                        std::to_string(limits.leaves_max) + " leaf keys");
  }

  // Canonical order: by each child's canonical encoding. Equal encodings are
  // the same key, which a node may hold once (weights say how much it counts).
  struct Sorted {
    Bytes encoding;
    Child child;
  };
  std::vector<Sorted> sorted;
  sorted.reserve(children.size());
  for (auto& [weight, key] : children) {
    Bytes encoding = key.encode();
    sorted.push_back(Sorted{std::move(encoding), Child{weight, std::move(key)}});
  }
  std::sort(sorted.begin(), sorted.end(),
            [](const Sorted& a, const Sorted& b) { return a.encoding < b.encoding; });
  for (size_t i = 1; i < sorted.size(); ++i) {
    if (sorted[i].encoding == sorted[i - 1].encoding) {
      return makeError(Errc::bad_key, "duplicate child " + sorted[i].child.key.describe() +
                                          "; each key may appear once in a threshold node");
    }
  }

  auto node = std::make_shared<Node>();
  node->threshold = threshold;
  node->children.reserve(sorted.size());
  for (auto& s : sorted) node->children.push_back(std::move(s.child));
  return fromNode(std::move(node));
}

Result<Key> Key::anyOf(uint32_t q, const std::vector<PublicKey>& keys, const KeyLimits& limits) {
  std::vector<std::pair<uint32_t, Key>> children;
  children.reserve(keys.size());
  for (const auto& key : keys) children.emplace_back(1, Key(key));
  return threshold(q, std::move(children), limits);
}

const PublicKey& Key::single() const {
  CCAL_ASSERT_MSG(isSingle(), "single() of a composite key");
  return std::get<PublicKey>(v_);
}

const Key::Node& Key::node() const {
  CCAL_ASSERT_MSG(!isSingle(), "node() of a single key");
  const auto& node = std::get<std::shared_ptr<const Node>>(v_);
  CCAL_ASSERT(node != nullptr);
  return *node;
}

bool Key::isFulfilledBy(const std::set<PublicKey>& signers) const {
  return fulfilled(*this, [&](const PublicKey& k) { return signers.count(k) > 0; });
}

bool Key::isFulfilledBy(std::span<const PublicKey> signers) const {
  std::vector<PublicKey> sorted(signers.begin(), signers.end());
  std::sort(sorted.begin(), sorted.end());
  return fulfilled(*this, [&](const PublicKey& k) {
    return std::binary_search(sorted.begin(), sorted.end(), k);
  });
}

std::vector<PublicKey> Key::leafKeys() const {
  std::vector<PublicKey> out;
  collectLeaves(*this, out);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

bool Key::contains(const PublicKey& key) const {
  if (isSingle()) return single() == key;
  for (const auto& child : node().children) {
    if (child.key.contains(key)) return true;
  }
  return false;
}

void Key::write(schema::Key::Builder builder) const {
  if (isSingle()) {
    auto out = builder.initSingle();
    out.setScheme(static_cast<uint16_t>(single().scheme()));
    out.setKey(capnp::Data::Reader(single().bytes().data(), single().bytes().size()));
    return;
  }
  const Node& n = node();
  auto out = builder.initThreshold();
  out.setThreshold(n.threshold);
  auto list = out.initChildren(static_cast<unsigned>(n.children.size()));
  for (unsigned i = 0; i < list.size(); ++i) {
    list[i].setWeight(n.children[i].weight);
    n.children[i].key.write(list[i].initKey());
  }
}

Bytes Key::encode() const {
  if (!isSingle()) return node().encoding;
  return buildCanonical<schema::Key>([&](schema::Key::Builder root) { write(root); });
}

std::string Key::describe() const {
  if (isSingle()) return single().shortHex();
  const Node& n = node();
  uint64_t total = 0;
  for (const auto& child : n.children) total += child.weight;
  return "composite(" + std::to_string(n.threshold) + " of " + std::to_string(total) +
         "):" + hash().shortHex();
}

Result<Key> Key::read(schema::Key::Reader reader, const KeyLimits& limits) {
  // A composite key whose bytes say what an earlier, fully checked one said
  // (and nothing outside the schema) is that key.
  std::string description;
  bool described = false;
  if (reader.isThreshold()) {
    uint64_t described_leaves = 0;
    described = describeTree(reader, limits, 0, described_leaves, description);
    if (described) {
      if (auto known = compositeKeys().find(description)) return *std::move(known);
    }
  }
  uint64_t leaves = 0;
  auto key = readTree(reader, limits, 0, leaves);
  if (!key) return key;
  if (key->isSingle()) {
    // The common case, checked without re-encoding: a single key's two
    // structs hold a 16-bit tag or scheme and one pointer each, nothing more.
    if (!onlyKnownBits(reader, 2, 1) || !onlyKnownBits(reader.getSingle(), 2, 1)) {
      return makeError(Errc::not_canonical,
                       "key " + key->describe() + " carries data outside the key schema");
    }
    return key;
  }
  // Cap'n Proto's canonical form knows no schema: it keeps the bits of a data
  // word that no field uses, and the fields of a newer schema. Accept only
  // the bytes this build writes, so that one key has exactly one encoding
  // (and a key's hash, or the id of a transaction naming it, cannot be varied).
  if (canonicalBytes(reader) != key->encode()) {
    return makeError(Errc::not_canonical,
                     "key " + key->describe() + " carries data outside the key schema");
  }
  if (described) compositeKeys().add(std::move(description), *key);
  return key;
}

// Reads one key of a tree. `depth_above` is the number of threshold nodes
// above this key; it is checked before descending, so that recursion is
// bounded by the limits and not by what the bytes claim. `leaves` counts the
// leaves read so far in the whole tree.
Result<Key> Key::readTree(schema::Key::Reader reader, const KeyLimits& limits, uint32_t depth_above,
                          uint64_t& leaves) {
  switch (reader.which()) {
    case schema::Key::SINGLE: {
      auto single = reader.getSingle();
      auto key = PublicKey::fromBytes(single.getScheme(), asByteView(single.getKey()));
      if (!key) return key.error();
      if (++leaves > limits.leaves_max) {
        return makeError(Errc::too_large, "a composite key has more than " +
                                              std::to_string(limits.leaves_max) +
                                              " leaf keys, the limit");
      }
      return Key(*key);
    }
    case schema::Key::THRESHOLD: {
      if (depth_above >= limits.depth_max) {
        return makeError(Errc::too_deep, "composite key nested too deep: over the limit of " +
                                             std::to_string(limits.depth_max) +
                                             " levels of threshold nodes");
      }
      auto node = reader.getThreshold();
      auto list = node.getChildren();
      if (list.size() > limits.children_max) {
        return makeError(Errc::too_large, "a threshold node has " + std::to_string(list.size()) +
                                              " children, over the limit of " +
                                              std::to_string(limits.children_max));
      }
      // Cheap checks first, before any recursion.
      std::vector<uint32_t> weights;
      weights.reserve(list.size());
      for (auto child : list) weights.push_back(child.getWeight());
      CCAL_TRY(checkWeights(node.getThreshold(), weights));

      auto out = std::make_shared<Node>();
      out->threshold = node.getThreshold();
      out->children.reserve(list.size());
      Bytes previous;
      for (uint32_t i = 0; i < list.size(); ++i) {
        auto child = readTree(list[i].getKey(), limits, depth_above + 1, leaves);
        if (!child) return child.error();
        Bytes encoding = child->encode();
        if (i > 0 && encoding == previous) {
          return makeError(Errc::bad_key, "duplicate child " + child->describe() +
                                              " in a threshold node; each key may appear once");
        }
        if (i > 0 && encoding < previous) {
          return makeError(Errc::not_canonical,
                           "children of a threshold node are not sorted by their canonical "
                           "encoding (child " +
                               std::to_string(i) + ")");
        }
        previous = std::move(encoding);
        out->children.push_back(Child{weights[i], std::move(*child)});
      }
      return fromNode(std::move(out));
    }
  }
  return makeError(Errc::malformed, "unknown kind of key (union tag " +
                                        std::to_string(static_cast<unsigned>(reader.which())) +
                                        "); neither a single key nor a threshold node");
}

Result<Key> Key::decode(ByteView bytes, const KeyLimits& limits) {
  // Cap'n Proto 0.9 spends four nesting levels per threshold node (the node,
  // its list of children, the list element, the child's key) and three on the
  // root key and a leaf (key, public key, key bytes); measured, not guessed.
  // Allow one level of threshold nodes more than depth_max, so that our own
  // check, with its clearer message, fires before Cap'n Proto's.
  ReadLimits read_limits;
  uint64_t nesting = 4 * (static_cast<uint64_t>(limits.depth_max) + 1) + 3;
  read_limits.nesting_depth_max =
      static_cast<int>(std::min<uint64_t>(nesting, std::numeric_limits<int>::max()));
  auto key = decodeMessage<schema::Key>(
      bytes, "key", Canonical::required,
      [&](schema::Key::Reader reader) { return read(reader, limits); }, read_limits);
  if (!key) return key;
  // isCanonical() passes a few bits Cap'n Proto itself ignores (such as the
  // top bit of a list's element count), so compare with what we would write.
  Bytes written = key->encode();
  if (!std::equal(bytes.begin(), bytes.end(), written.begin(), written.end())) {
    return makeError(Errc::not_canonical, "key: not the canonical encoding of " + key->describe());
  }
  return key;
}

bool Key::operator==(const Key& other) const {
  if (isSingle() && other.isSingle()) return single() == other.single();
  if (isSingle() != other.isSingle()) return false;
  return node().encoding == other.node().encoding;
}

bool Key::operator<(const Key& other) const {
  // Single keys' encodings differ only in the key bytes, at the same offset,
  // so comparing the keys orders them as their encodings would.
  if (isSingle() && other.isSingle()) return single() < other.single();
  if (!isSingle() && !other.isSingle()) return node().encoding < other.node().encoding;
  return encode() < other.encode();
}

}  // namespace ccal
