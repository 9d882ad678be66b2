#pragma once
// Ed25519 keys and signatures through libsodium (the hot path: 2.9x faster
// verification than Botan here). Every signature carries its signer's public
// key, the scheme id and the version of the signed-bytes layout.

#include <array>
#include <compare>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "ledger/bytes.h"
#include "ledger/result.h"
#include "ledger/secure_hash.h"

namespace ccal {

enum class SignatureScheme : uint16_t {
  ed25519 = 1,
};

// The version of the bytes a transaction signature covers (see signableBytes).
inline constexpr uint16_t signature_version_current = 1;

class PublicKey {
 public:
  static constexpr size_t ed25519_bytes = 32;

  PublicKey() { bytes_.fill(0); }
  explicit PublicKey(const std::array<uint8_t, ed25519_bytes>& bytes) : bytes_(bytes) {}

  // Checks the scheme id and the key length.
  static Result<PublicKey> fromBytes(uint16_t scheme, ByteView bytes);
  static Result<PublicKey> fromHex(std::string_view hex);  // Ed25519

  SignatureScheme scheme() const { return SignatureScheme::ed25519; }
  const std::array<uint8_t, ed25519_bytes>& bytes() const { return bytes_; }
  ByteView view() const { return {bytes_.data(), bytes_.size()}; }
  std::string hex() const { return toHex(view()); }
  std::string shortHex() const { return hex().substr(0, 12); }

  auto operator<=>(const PublicKey&) const = default;
  bool operator==(const PublicKey&) const = default;

 private:
  std::array<uint8_t, ed25519_bytes> bytes_;
};

struct PublicKeyHasher {
  size_t operator()(const PublicKey& k) const {
    size_t v = 0;
    for (size_t i = 0; i < sizeof(v); ++i) v = v << 8 | k.bytes()[i];
    return v;
  }
};

// A batch signature: one Ed25519 signature over the Merkle root of many
// messages (a notary signs every transaction id of a batch at once, as
// Corda's batch-signing notary does), carried with each message as the
// proof that its leaf is in the signed tree. Leaves are merkle::batchLeaf
// of the message; the tree has the RFC 6962 shape of ledger/merkle.h; the
// signed bytes are batchRootSignableBytes(leafCount, root), under their own
// domain, so a batch signature can never pass for a plain one or the reverse.
struct BatchProof {
  uint32_t leafIndex = 0;
  uint32_t leafCount = 0;
  std::vector<SecureHash> path;  // merkle::prove of the one leaf

  bool operator==(const BatchProof&) const = default;
};
inline constexpr uint32_t batch_signature_leaves_max = 1u << 20;
// A proof of one leaf among at most 2^20 has at most 20 hashes.
inline constexpr uint32_t batch_signature_path_hashes_max = 20;

Bytes batchRootSignableBytes(uint32_t leaf_count, const SecureHash& root);

class DigitalSignature {
 public:
  static constexpr size_t ed25519_bytes = 64;

  DigitalSignature() { bytes_.fill(0); }
  DigitalSignature(const PublicKey& by, const std::array<uint8_t, ed25519_bytes>& bytes,
                   uint16_t version = signature_version_current)
      : by_(by), bytes_(bytes), version_(version) {}
  DigitalSignature(const PublicKey& by, const std::array<uint8_t, ed25519_bytes>& bytes,
                   uint16_t version, std::optional<BatchProof> batch)
      : by_(by), bytes_(bytes), version_(version), batch_(std::move(batch)) {}

  // Checks the scheme id, the version, the signature length and the batch
  // proof's shape (count within batch_signature_leaves_max, index inside it,
  // path no longer than a tree of that count can need).
  static Result<DigitalSignature> fromParts(const PublicKey& by, uint16_t scheme, uint16_t version,
                                            ByteView signature,
                                            std::optional<BatchProof> batch = std::nullopt);

  const PublicKey& by() const { return by_; }
  SignatureScheme scheme() const { return SignatureScheme::ed25519; }
  uint16_t version() const { return version_; }
  const std::array<uint8_t, ed25519_bytes>& bytes() const { return bytes_; }
  ByteView view() const { return {bytes_.data(), bytes_.size()}; }
  // Set for a batch signature.
  const std::optional<BatchProof>& batch() const { return batch_; }

  // Verifies over the exact message bytes; bad_signature names the signer.
  // A batch signature: the message's leaf and the proof give the root, and
  // the Ed25519 signature must verify over it. Signatures that verified, and
  // those this process made (KeyPair::sign), are remembered in a bounded,
  // process-wide set (signatures_verified_max; a plain one with its
  // message, a batch one with its root), so checking one again costs a
  // hash, and the other messages of a batch cost only their proof's hashes,
  // of which the inner nodes are remembered too (merkle::NodeMemo of
  // batch_proof_nodes_remembered_max slots), so the proofs of one
  // batch, from every replica that signed it, hash each inner node once;
  // the outcome is the same as without the memory.
  Status verify(ByteView message) const;

  bool operator==(const DigitalSignature&) const = default;

 private:
  PublicKey by_;
  std::array<uint8_t, ed25519_bytes> bytes_;
  uint16_t version_ = signature_version_current;
  std::optional<BatchProof> batch_;
};

inline constexpr size_t signatures_verified_max = 32768;
inline constexpr size_t batch_proof_nodes_remembered_max = 4096;

// An Ed25519 key pair. The private half is wiped on destruction.
class KeyPair {
 public:
  static constexpr size_t seed_bytes = 32;

  // A fresh key pair from the OS random source (libsodium randombytes).
  static KeyPair generate();
  // Deterministic, from a 32-byte seed (RFC 8032 "private key").
  static Result<KeyPair> fromSeed(ByteView seed);

  KeyPair(const KeyPair&);
  KeyPair& operator=(const KeyPair&);
  ~KeyPair();

  const PublicKey& publicKey() const { return public_; }
  // The 32-byte seed; handle with care (it is the private key).
  ByteView seed() const { return {secret_.data(), seed_bytes}; }

  DigitalSignature sign(ByteView message) const;
  // One batch signature for every message (at least one, at most
  // batch_signature_leaves_max): the i-th result carries messages[i]'s proof.
  std::vector<DigitalSignature> signBatch(std::span<const Bytes> messages) const;

 private:
  KeyPair() = default;
  PublicKey public_;
  std::array<uint8_t, 64> secret_{};  // libsodium layout: seed || public key
};

// How many Ed25519 signatures this process has made and verified (cheap
// relaxed counters, for the benchmarks' crypto bound and the node's status).
struct CryptoCounters {
  uint64_t ed25519_signs = 0;
  uint64_t ed25519_verifies = 0;
};
CryptoCounters cryptoCounters();

// libsodium is initialised once, on first use of anything here.
void ensureSodiumInitialised();

// Random bytes from the OS source, for salts and nonces at the edges. Code
// under flows/ and notary/ takes randomness from its injected source instead.
Bytes randomBytes(size_t count);

}  // namespace ccal
