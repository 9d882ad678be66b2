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

// Root of the tree over `leaves` (already hashed); the zero hash for none.
SecureHash root(std::span<const SecureHash> leaves);

// The proof that the leaves at `revealed` (strictly ascending, each < size)
// belong to root(leaves): the roots of the maximal subtrees holding no
// revealed leaf, in depth-first left-to-right order.
std::vector<SecureHash> prove(std::span<const SecureHash> leaves,
                              std::span<const uint32_t> revealed);

// Recomputes the root of a tree of `count` leaves from the revealed leaves
// (hashes, at the ascending indices `revealed`) and the proof. Fails with
// merkle_proof_invalid when indices are out of order or range, or the proof
// has too few or too many hashes. The caller compares the root.
Result<SecureHash> rootFromProof(uint32_t count, std::span<const uint32_t> revealed,
                                 std::span<const SecureHash> revealed_leaves,
                                 std::span<const SecureHash> proof);

}  // namespace ccal::merkle
