#pragma once
// Merkle trees for transaction ids and their partial proofs.
//
// Shape: RFC 6962 (a tree of n leaves splits at the largest power of two
// below n), so no padding leaves exist. Domain separation keeps leaf, node,
// group and nonce hashes apart so one can never stand in for another:
//   nonce(salt, g, i) = H(0x03 || salt || u32le g || u32le i)
//   leaf(nonce, c)    = H(0x00 || nonce || c)
//   node(l, r)        = H(0x01 || l || r)
//   group(n, root)    = H(0x02 || u32le n || root)   (root of 0 leaves = zero hash)
//   batch leaf(m)     = H(0x04 || m)   (a message under a batch signature, crypto.h)
// The transaction id is the Merkle root over the group hashes.

#include <cstdint>
#include <span>
#include <vector>

#include "ledger/bytes.h"
#include "ledger/result.h"
#include "ledger/secure_hash.h"

namespace ccal::merkle {

SecureHash nonce(ByteView salt, uint32_t group, uint32_t index);
SecureHash leaf(const SecureHash& nonce, ByteView component);
SecureHash node(const SecureHash& left, const SecureHash& right);
SecureHash group(uint32_t count, const SecureHash& root);
SecureHash batchLeaf(ByteView message);

// Root of the tree over `leaves` (already hashed); the zero hash for none.
SecureHash root(std::span<const SecureHash> leaves);

// The proof that the leaves at `revealed` (strictly ascending, each < size)
// belong to root(leaves): the roots of the maximal subtrees holding no
// revealed leaf, in depth-first left-to-right order.
std::vector<SecureHash> prove(std::span<const SecureHash> leaves,
                              std::span<const uint32_t> revealed);

// node(l, r) remembered by its children: the proofs of many leaves of one
// tree (a batch signature's messages, and the same batch signed by every
// replica of a notary) share their upper nodes, so each of those is hashed
// about once. A memo of a pure function: a root computed with it is the
// root computed without. Direct-mapped: `slots` entries (a power of two),
// a new node replaces the one in its slot, so the memory is fixed and
// children picked by an adversary can at worst evict entries (then nodes
// are hashed as without the memo). Not thread-safe.
class NodeMemo {
 public:
  explicit NodeMemo(size_t slots);
  SecureHash node(const SecureHash& left, const SecureHash& right);

 private:
  struct Slot {
    SecureHash left, right, parent;
    bool used = false;
  };
  std::vector<Slot> slots_;
};

// Recomputes the root of a tree of `count` leaves from the revealed leaves
// (hashes, at the ascending indices `revealed`) and the proof. Fails with
// merkle_proof_invalid when indices are out of order or range, or the proof
// has too few or too many hashes. The caller compares the root. With a
// memo, inner nodes are looked up there first (the same root).
Result<SecureHash> rootFromProof(uint32_t count, std::span<const uint32_t> revealed,
                                 std::span<const SecureHash> revealed_leaves,
                                 std::span<const SecureHash> proof, NodeMemo* memo = nullptr);

// A whole tree kept in memory, so that the proof of each of n leaves costs
// O(log n) (prove() above recomputes hidden subtrees: O(n) per proof).
class Tree {
 public:
  explicit Tree(std::vector<SecureHash> leaves);  // at least one leaf
  const SecureHash& root() const { return nodes_[root_].hash; }
  uint32_t size() const { return static_cast<uint32_t>(leaves_.size()); }
  // The proof of one leaf, the same hashes in the same order as
  // prove(leaves, {leaf}), so rootFromProof() checks it.
  std::vector<SecureHash> prove(uint32_t leaf) const;

 private:
  struct Node {
    uint32_t lo, hi;
    SecureHash hash;
    uint32_t left = 0, right = 0;
  };
  uint32_t build(uint32_t lo, uint32_t hi);
  void proveFrom(uint32_t at, uint32_t leaf, std::vector<SecureHash>& out) const;

  std::vector<SecureHash> leaves_;
  std::vector<Node> nodes_;
  uint32_t root_ = 0;
};

}  // namespace ccal::merkle
