#include "ledger/merkle.h"

#include <algorithm>
#include <bit>
#include <cstring>

namespace ccal::merkle {

namespace {

thread_local Sha256 hasher;

// The size of the left subtree of a tree of n > 1 leaves.
uint32_t splitPoint(uint32_t n) {
  CCAL_ASSERT(n > 1);
  return std::bit_floor(n - 1);
}

SecureHash rootOfRange(std::span<const SecureHash> leaves) {
  CCAL_ASSERT(!leaves.empty());
  if (leaves.size() == 1) return leaves[0];
  uint32_t k = splitPoint(static_cast<uint32_t>(leaves.size()));
  return node(rootOfRange(leaves.first(k)), rootOfRange(leaves.subspan(k)));
}

// Revealed indices within [lo, hi), as a subrange of the sorted list.
std::span<const uint32_t> revealedIn(std::span<const uint32_t> revealed, uint32_t lo,
                                     uint32_t hi) {
  auto begin = std::lower_bound(revealed.begin(), revealed.end(), lo);
  auto end = std::lower_bound(begin, revealed.end(), hi);
  return {begin, end};
}

void proveRange(std::span<const SecureHash> leaves, uint32_t lo, uint32_t hi,
                std::span<const uint32_t> revealed, std::vector<SecureHash>& out) {
  auto inside = revealedIn(revealed, lo, hi);
  if (inside.empty()) {
    out.push_back(rootOfRange(leaves.subspan(lo, hi - lo)));
    return;
  }
  if (hi - lo == 1) return;  // a revealed leaf: the verifier hashes it itself
  uint32_t mid = lo + splitPoint(hi - lo);
  proveRange(leaves, lo, mid, inside, out);
  proveRange(leaves, mid, hi, inside, out);
}

struct ProofReader {
  std::span<const uint32_t> revealed;
  std::span<const SecureHash> revealed_leaves;
  std::span<const SecureHash> proof;
  NodeMemo* memo = nullptr;
  size_t next_proof = 0;
  bool ok = true;

  SecureHash rootOf(uint32_t lo, uint32_t hi) {
    auto inside = revealedIn(revealed, lo, hi);
    if (inside.empty()) {
      if (next_proof >= proof.size()) {
        ok = false;
        return SecureHash();
      }
      return proof[next_proof++];
    }
    if (hi - lo == 1) return revealed_leaves[inside.begin() - revealed.begin()];
    uint32_t mid = lo + splitPoint(hi - lo);
    SecureHash left = rootOf(lo, mid);
    SecureHash right = rootOf(mid, hi);
    return memo ? memo->node(left, right) : node(left, right);
  }
};

}  // namespace

SecureHash nonce(ByteView salt, uint32_t group_index, uint32_t index) {
  return hasher.update(uint8_t{0x03}).update(salt).updateU32(group_index).updateU32(index).finish();
}

SecureHash leaf(const SecureHash& leaf_nonce, ByteView component) {
  return hasher.update(uint8_t{0x00}).update(leaf_nonce.view()).update(component).finish();
}

SecureHash node(const SecureHash& left, const SecureHash& right) {
  return hasher.update(uint8_t{0x01}).update(left.view()).update(right.view()).finish();
}

SecureHash group(uint32_t count, const SecureHash& group_root) {
  return hasher.update(uint8_t{0x02}).updateU32(count).update(group_root.view()).finish();
}

SecureHash batchLeaf(ByteView message) { return hasher.update(uint8_t{0x04}).update(message).finish(); }

SecureHash root(std::span<const SecureHash> leaves) {
  if (leaves.empty()) return SecureHash::zero();
  return rootOfRange(leaves);
}

std::vector<SecureHash> prove(std::span<const SecureHash> leaves,
                              std::span<const uint32_t> revealed) {
  CCAL_ASSERT(std::is_sorted(revealed.begin(), revealed.end()));
  CCAL_ASSERT(revealed.empty() || revealed.back() < leaves.size());
  std::vector<SecureHash> out;
  if (leaves.empty()) return out;
  proveRange(leaves, 0, static_cast<uint32_t>(leaves.size()), revealed, out);
  return out;
}

NodeMemo::NodeMemo(size_t slots) : slots_(slots) {
  CCAL_ASSERT(slots > 0 && std::has_single_bit(slots));
}

SecureHash NodeMemo::node(const SecureHash& left, const SecureHash& right) {
  // The children are SHA-256 outputs or hashes from a proof: their first
  // bytes pick the slot (an adversary's choice only evicts).
  uint64_t l = 0, r = 0;
  std::memcpy(&l, left.bytes().data(), sizeof l);
  std::memcpy(&r, right.bytes().data(), sizeof r);
  Slot& slot = slots_[(l ^ std::rotl(r, 17)) & (slots_.size() - 1)];
  if (slot.used && slot.left == left && slot.right == right) return slot.parent;
  slot.left = left;
  slot.right = right;
  slot.parent = merkle::node(left, right);
  slot.used = true;
  return slot.parent;
}

Result<SecureHash> rootFromProof(uint32_t count, std::span<const uint32_t> revealed,
                                 std::span<const SecureHash> revealed_leaves,
                                 std::span<const SecureHash> proof, NodeMemo* memo) {
  auto invalid = [](const std::string& why) { return makeError(Errc::merkle_proof_invalid, why); };
  if (revealed.size() != revealed_leaves.size()) {
    return invalid("revealed index and leaf counts differ");
  }
  for (size_t i = 0; i < revealed.size(); ++i) {
    if (revealed[i] >= count) {
      return invalid("revealed index " + std::to_string(revealed[i]) + " is outside a tree of " +
                     std::to_string(count) + " leaves");
    }
    if (i > 0 && revealed[i] <= revealed[i - 1]) {
      return invalid("revealed indices are not strictly ascending");
    }
  }
  if (count == 0) {
    if (!proof.empty()) return invalid("a proof for an empty tree must be empty");
    return SecureHash::zero();
  }
  ProofReader reader{revealed, revealed_leaves, proof, memo};
  SecureHash result = reader.rootOf(0, count);
  if (!reader.ok) return invalid("the proof has too few hashes");
  if (reader.next_proof != proof.size()) return invalid("the proof has unused hashes");
  return result;
}

Tree::Tree(std::vector<SecureHash> leaves) : leaves_(std::move(leaves)) {
  CCAL_ASSERT(!leaves_.empty());
  CCAL_ASSERT(leaves_.size() <= UINT32_MAX);
  nodes_.reserve(2 * leaves_.size());
  root_ = build(0, static_cast<uint32_t>(leaves_.size()));
}

uint32_t Tree::build(uint32_t lo, uint32_t hi) {
  if (hi - lo == 1) {
    nodes_.push_back(Node{lo, hi, leaves_[lo]});
    return static_cast<uint32_t>(nodes_.size() - 1);
  }
  uint32_t mid = lo + splitPoint(hi - lo);
  uint32_t l = build(lo, mid);
  uint32_t r = build(mid, hi);
  nodes_.push_back(Node{lo, hi, node(nodes_[l].hash, nodes_[r].hash), l, r});
  return static_cast<uint32_t>(nodes_.size() - 1);
}

std::vector<SecureHash> Tree::prove(uint32_t leaf) const {
  CCAL_ASSERT(leaf < leaves_.size());
  std::vector<SecureHash> out;
  proveFrom(root_, leaf, out);
  return out;
}

// Hidden subtrees depth-first, left to right: a left sibling before the
// path below, a right sibling after it.
void Tree::proveFrom(uint32_t at, uint32_t leaf, std::vector<SecureHash>& out) const {
  const Node& n = nodes_[at];
  if (n.hi - n.lo == 1) return;
  const Node& l = nodes_[n.left];
  if (leaf < l.hi) {
    proveFrom(n.left, leaf, out);
    out.push_back(nodes_[n.right].hash);
  } else {
    out.push_back(l.hash);
    proveFrom(n.right, leaf, out);
  }
}

}  // namespace ccal::merkle
