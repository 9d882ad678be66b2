#include "ledger/merkle.h"

#include <doctest/doctest.h>

using namespace ccal;

static std::vector<SecureHash> makeLeaves(uint32_t n) {
  std::vector<SecureHash> leaves;
  for (uint32_t i = 0; i < n; ++i) {
    Bytes b;
    appendU32(b, i);
    leaves.push_back(SecureHash::of(b));
  }
  return leaves;
}

TEST_CASE("root shapes: one leaf is itself, two are a node, three split 2+1") {
  auto l = makeLeaves(3);
  CHECK(merkle::root(std::span(l).first(1)) == l[0]);
  CHECK(merkle::root(std::span(l).first(2)) == merkle::node(l[0], l[1]));
  CHECK(merkle::root(l) == merkle::node(merkle::node(l[0], l[1]), l[2]));
  CHECK(merkle::root({}) == SecureHash::zero());
}

TEST_CASE("every subset of every small tree proves and verifies") {
  for (uint32_t n = 1; n <= 9; ++n) {
    auto leaves = makeLeaves(n);
    SecureHash root = merkle::root(leaves);
    for (uint32_t mask = 0; mask < (1u << n); ++mask) {
      std::vector<uint32_t> revealed;
      std::vector<SecureHash> revealed_leaves;
      for (uint32_t i = 0; i < n; ++i) {
        if (mask & (1u << i)) {
          revealed.push_back(i);
          revealed_leaves.push_back(leaves[i]);
        }
      }
      auto proof = merkle::prove(leaves, revealed);
      auto got = merkle::rootFromProof(n, revealed, revealed_leaves, proof);
      REQUIRE(got.ok());
      CHECK(*got == root);
      if (!revealed.empty()) {
        // A changed leaf changes the root.
        auto bad = revealed_leaves;
        bad[0] = SecureHash::of(asBytes("other"));
        CHECK(*merkle::rootFromProof(n, revealed, bad, proof) != root);
      }
      if (!proof.empty()) {
        auto bad = proof;
        bad.back() = SecureHash::of(asBytes("other"));
        CHECK(*merkle::rootFromProof(n, revealed, revealed_leaves, bad) != root);
        bad.pop_back();
        CHECK(merkle::rootFromProof(n, revealed, revealed_leaves, bad).error().code ==
              Errc::merkle_proof_invalid);
      }
      auto longer = proof;
      longer.push_back(root);
      CHECK(merkle::rootFromProof(n, revealed, revealed_leaves, longer).error().code ==
            Errc::merkle_proof_invalid);
    }
  }
}

TEST_CASE("proof inputs out of range or order are refused") {
  auto leaves = makeLeaves(4);
  std::vector<uint32_t> idx{1, 3};
  std::vector<SecureHash> rl{leaves[1], leaves[3]};
  auto proof = merkle::prove(leaves, idx);
  std::vector<uint32_t> unordered{3, 1};
  CHECK(merkle::rootFromProof(4, unordered, rl, proof).error().code == Errc::merkle_proof_invalid);
  std::vector<uint32_t> out_of_range{1, 4};
  CHECK(merkle::rootFromProof(4, out_of_range, rl, proof).error().code ==
        Errc::merkle_proof_invalid);
  CHECK(merkle::rootFromProof(4, idx, std::span(rl).first(1), proof).error().code ==
        Errc::merkle_proof_invalid);
  // The same leaves claimed at other positions lead elsewhere.
  std::vector<uint32_t> moved{0, 3};
  auto other = merkle::rootFromProof(4, moved, rl, proof);
  CHECK((!other.ok() || *other != merkle::root(leaves)));
}

TEST_CASE("domain separation: leaf, node, group and nonce hashes differ on equal input") {
  SecureHash a = SecureHash::of(asBytes("a"));
  Bytes two(a.view().begin(), a.view().end());
  append(two, a.view());
  CHECK(merkle::node(a, a) != SecureHash::of(two));
  CHECK(merkle::leaf(a, a.view()) != merkle::node(a, a));
  CHECK(merkle::group(1, a) != a);
  CHECK(merkle::nonce(a.view(), 0, 0) != merkle::nonce(a.view(), 0, 1));
  CHECK(merkle::nonce(a.view(), 0, 1) != merkle::nonce(a.view(), 1, 0));
}

TEST_CASE("Tree: each leaf's proof equals prove()'s and rebuilds the root, for every size up to 70") {
  for (uint32_t n = 1; n <= 70; ++n) {
    auto leaves = makeLeaves(n);
    merkle::Tree tree(leaves);
    CHECK(tree.size() == n);
    REQUIRE(tree.root() == merkle::root(leaves));
    for (uint32_t i = 0; i < n; ++i) {
      std::vector<uint32_t> at{i};
      auto proof = tree.prove(i);
      CHECK(proof == merkle::prove(leaves, at));
      auto root = merkle::rootFromProof(n, at, std::span(&leaves[i], 1), proof);
      REQUIRE(root.ok());
      CHECK(*root == tree.root());
    }
  }
}

TEST_CASE(
    "NodeMemo: every root, good proof or tampered, is the one computed without it; the memo stays "
    "bounded") {
  merkle::NodeMemo memo(16);
  for (uint32_t n = 1; n <= 40; ++n) {
    auto leaves = makeLeaves(n);
    merkle::Tree tree(leaves);
    for (int pass = 0; pass < 2; ++pass) {  // the second pass finds the nodes remembered
      for (uint32_t i = 0; i < n; ++i) {
        std::vector<uint32_t> at{i};
        auto proof = tree.prove(i);
        auto with = merkle::rootFromProof(n, at, std::span(&leaves[i], 1), proof, &memo);
        REQUIRE(with.ok());
        CHECK(*with == tree.root());
        // Each sibling changed in turn (also one above a remembered node):
        // the memo gives the same wrong root as plain hashing.
        for (size_t k = 0; k < proof.size(); ++k) {
          auto bad = proof;
          bad[k] = SecureHash::of(bad[k].view());
          auto plain = merkle::rootFromProof(n, at, std::span(&leaves[i], 1), bad);
          auto memoised = merkle::rootFromProof(n, at, std::span(&leaves[i], 1), bad, &memo);
          REQUIRE(plain.ok());
          REQUIRE(memoised.ok());
          CHECK(*memoised == *plain);
          CHECK(*memoised != tree.root());
        }
      }
    }
  }
  // One slot (every node evicts the last): still the same roots.
  merkle::NodeMemo one(1);
  for (uint32_t n = 1; n <= 12; ++n) {
    auto leaves = makeLeaves(n);
    merkle::Tree tree(leaves);
    for (uint32_t i = 0; i < n; ++i) {
      std::vector<uint32_t> at{i};
      auto root = merkle::rootFromProof(n, at, std::span(&leaves[i], 1), tree.prove(i), &one);
      REQUIRE(root.ok());
      CHECK(*root == tree.root());
    }
  }
  // A changed leaf, too.
  auto leaves = makeLeaves(9);
  merkle::Tree tree(leaves);
  std::vector<uint32_t> at{4};
  SecureHash other = SecureHash::of(asBytes("other"));
  auto root = merkle::rootFromProof(9, at, std::span(&other, 1), tree.prove(4), &memo);
  REQUIRE(root.ok());
  CHECK(*root != tree.root());
  CHECK(*root == *merkle::rootFromProof(9, at, std::span(&other, 1), tree.prove(4)));
}

TEST_CASE("a batch leaf is domain-separated from the other hashes") {
  SecureHash a = SecureHash::of(asBytes("a"));
  CHECK(merkle::batchLeaf(a.view()) != merkle::leaf(SecureHash::zero(), a.view()));
  CHECK(merkle::batchLeaf(a.view()) != SecureHash::of(a.view()));
  Bytes two(a.view().begin(), a.view().end());
  append(two, a.view());
  CHECK(merkle::batchLeaf(two) != merkle::node(a, a));
}
