#include "ledger/crypto.h"

#include <sodium.h>

#include <atomic>
#include <bit>
#include <deque>
#include <mutex>
#include <unordered_set>

#include "ledger/merkle.h"

namespace ccal {

void ensureSodiumInitialised() {
  static std::once_flag once;
  std::call_once(once, [] { CCAL_ASSERT_MSG(sodium_init() >= 0, "libsodium failed to initialise"); });
}

Bytes randomBytes(size_t count) {
  ensureSodiumInitialised();
  Bytes out(count);
  randombytes_buf(out.data(), out.size());
  return out;
}

static Status checkScheme(uint16_t scheme) {
  if (scheme != static_cast<uint16_t>(SignatureScheme::ed25519)) {
    return makeError(Errc::unknown_scheme,
                     "signature scheme id " + std::to_string(scheme) + " is not known (1 = Ed25519)");
  }
  return {};
}

Result<PublicKey> PublicKey::fromBytes(uint16_t scheme, ByteView bytes) {
  CCAL_TRY(checkScheme(scheme));
  if (bytes.size() != ed25519_bytes) {
    return makeError(Errc::bad_length, "an Ed25519 public key is 32 bytes, got " +
                                           std::to_string(bytes.size()));
  }
  std::array<uint8_t, ed25519_bytes> a;
  std::copy(bytes.begin(), bytes.end(), a.begin());
  return PublicKey(a);
}

Result<PublicKey> PublicKey::fromHex(std::string_view hex) {
  auto bytes = ccal::fromHex(hex);
  if (!bytes) return makeError(Errc::malformed, "a public key must be hex");
  return fromBytes(static_cast<uint16_t>(SignatureScheme::ed25519), *bytes);
}

Result<DigitalSignature> DigitalSignature::fromParts(const PublicKey& by, uint16_t scheme,
                                                     uint16_t version, ByteView signature,
                                                     std::optional<BatchProof> batch) {
  CCAL_TRY(checkScheme(scheme));
  if (version != signature_version_current) {
    return makeError(Errc::unknown_scheme,
                     "signature version " + std::to_string(version) + " is not known");
  }
  if (signature.size() != ed25519_bytes) {
    return makeError(Errc::bad_length, "an Ed25519 signature is 64 bytes, got " +
                                           std::to_string(signature.size()));
  }
  if (batch) {
    if (batch->leafCount == 0 || batch->leafCount > batch_signature_leaves_max) {
      return makeError(Errc::malformed, "a batch signature covers 1.." + std::to_string(batch_signature_leaves_max) +
                                            " messages, this one says " + std::to_string(batch->leafCount));
    }
    if (batch->leafIndex >= batch->leafCount) {
      return makeError(Errc::malformed, "batch signature leaf " + std::to_string(batch->leafIndex) +
                                            " is outside a batch of " + std::to_string(batch->leafCount));
    }
    // A leaf's proof holds at most one hash per level.
    auto levels = static_cast<size_t>(std::bit_width(batch->leafCount - 1));
    if (batch->path.size() > levels) {
      return makeError(Errc::malformed, "batch signature proof has " + std::to_string(batch->path.size()) +
                                            " hashes, a batch of " + std::to_string(batch->leafCount) +
                                            " needs at most " + std::to_string(levels));
    }
  }
  std::array<uint8_t, ed25519_bytes> a;
  std::copy(signature.begin(), signature.end(), a.begin());
  return DigitalSignature(by, a, version, std::move(batch));
}

Bytes batchRootSignableBytes(uint32_t leaf_count, const SecureHash& root) {
  static constexpr std::string_view domain = "CCAL batch signature";
  Bytes out(domain.begin(), domain.end());
  out.push_back(static_cast<uint8_t>(signature_version_current));
  out.push_back(static_cast<uint8_t>(signature_version_current >> 8));
  for (int shift = 0; shift < 32; shift += 8) out.push_back(static_cast<uint8_t>(leaf_count >> shift));
  out.insert(out.end(), root.bytes().begin(), root.bytes().end());
  return out;
}

namespace {

std::atomic<uint64_t> ed25519_signs{0}, ed25519_verifies{0};

bool verifyEd25519(const std::array<uint8_t, DigitalSignature::ed25519_bytes>& sig, ByteView message,
                   const PublicKey& by) {
  ensureSodiumInitialised();
  ed25519_verifies.fetch_add(1, std::memory_order_relaxed);
  // libsodium rejects small-order keys and non-canonical S, as RFC 8032 requires.
  return crypto_sign_verify_detached(sig.data(), message.data(), message.size(), by.bytes().data()) == 0;
}

// Signatures that verified: H(domain || key || signature || what was
// signed), the oldest forgotten first. A plain signature is remembered with
// its whole message, a batch signature with its leaf count and root (so the
// other messages of a batch cost only their proof's hashes). Signatures this
// process made are remembered when made (libsodium's Ed25519 signing is
// deterministic and always yields a valid signature), so a node checking
// its own signature on a transaction it just signed costs a hash. Only
// valid signatures are kept, so the memory can only save work, never change
// an outcome.
class VerifiedSignatures {
 public:
  static SecureHash plainKey(const PublicKey& by, const std::array<uint8_t, DigitalSignature::ed25519_bytes>& sig,
                             ByteView message) {
    Sha256 h;
    h.update(asBytes("plain")).update(by.view()).update(ByteView(sig.data(), sig.size()));
    h.updateU32(static_cast<uint32_t>(message.size())).update(message);
    return h.finish();
  }
  static SecureHash batchKey(const PublicKey& by, const std::array<uint8_t, DigitalSignature::ed25519_bytes>& sig,
                             uint32_t count, const SecureHash& root) {
    Sha256 h;
    h.update(asBytes("batch")).update(by.view()).update(ByteView(sig.data(), sig.size()));
    h.updateU32(count).update(root.view());
    return h.finish();
  }
  bool contains(const SecureHash& key) {
    std::lock_guard lock(mutex_);
    return set_.count(key) != 0;
  }
  void insert(const SecureHash& key) {
    std::lock_guard lock(mutex_);
    if (!set_.insert(key).second) return;
    order_.push_back(key);
    if (order_.size() > signatures_verified_max) {
      set_.erase(order_.front());
      order_.pop_front();
    }
  }

 private:
  std::mutex mutex_;
  std::unordered_set<SecureHash, SecureHashHasher> set_;
  std::deque<SecureHash> order_;
};

VerifiedSignatures& verifiedSignatures() {
  static VerifiedSignatures memo;
  return memo;
}

}  // namespace

// The inner nodes of batch proofs, process-wide (DigitalSignature::verify).
class BatchProofNodes {
 public:
  Result<SecureHash> rootFromProof(uint32_t count, uint32_t index, const SecureHash& leaf,
                                   std::span<const SecureHash> path) {
    std::lock_guard lock(mutex_);
    return merkle::rootFromProof(count, std::span<const uint32_t>(&index, 1),
                                 std::span<const SecureHash>(&leaf, 1), path, &memo_);
  }

 private:
  std::mutex mutex_;
  merkle::NodeMemo memo_{batch_proof_nodes_remembered_max};
};

BatchProofNodes& batchProofNodes() {
  static BatchProofNodes nodes;
  return nodes;
}

Status DigitalSignature::verify(ByteView message) const {
  if (!batch_) {
    SecureHash memo = VerifiedSignatures::plainKey(by_, bytes_, message);
    if (verifiedSignatures().contains(memo)) return {};
    if (!verifyEd25519(bytes_, message, by_)) {
      return makeError(Errc::bad_signature, "signature by key " + by_.shortHex() + " does not verify");
    }
    verifiedSignatures().insert(memo);
    return {};
  }
  SecureHash leaf = merkle::batchLeaf(message);
  uint32_t index = batch_->leafIndex;
  auto root = batchProofNodes().rootFromProof(batch_->leafCount, index, leaf, batch_->path);
  if (!root) {
    return makeError(Errc::bad_signature,
                     "batch signature by key " + by_.shortHex() + ": " + root.error().message);
  }
  SecureHash memo = VerifiedSignatures::batchKey(by_, bytes_, batch_->leafCount, *root);
  if (verifiedSignatures().contains(memo)) return {};
  if (!verifyEd25519(bytes_, batchRootSignableBytes(batch_->leafCount, *root), by_)) {
    return makeError(Errc::bad_signature, "batch signature by key " + by_.shortHex() + " does not verify");
  }
  verifiedSignatures().insert(memo);
  return {};
}

CryptoCounters cryptoCounters() {
  return {ed25519_signs.load(std::memory_order_relaxed), ed25519_verifies.load(std::memory_order_relaxed)};
}

KeyPair KeyPair::generate() {
  ensureSodiumInitialised();
  KeyPair kp;
  std::array<uint8_t, PublicKey::ed25519_bytes> pk{};
  crypto_sign_keypair(pk.data(), kp.secret_.data());
  kp.public_ = PublicKey(pk);
  return kp;
}

Result<KeyPair> KeyPair::fromSeed(ByteView seed) {
  if (seed.size() != seed_bytes) {
    return makeError(Errc::bad_length,
                     "an Ed25519 seed is 32 bytes, got " + std::to_string(seed.size()));
  }
  ensureSodiumInitialised();
  KeyPair kp;
  std::array<uint8_t, PublicKey::ed25519_bytes> pk{};
  crypto_sign_seed_keypair(pk.data(), kp.secret_.data(), seed.data());
  kp.public_ = PublicKey(pk);
  return kp;
}

KeyPair::KeyPair(const KeyPair& other) : public_(other.public_), secret_(other.secret_) {}

KeyPair& KeyPair::operator=(const KeyPair& other) {
  public_ = other.public_;
  secret_ = other.secret_;
  return *this;
}

KeyPair::~KeyPair() { sodium_memzero(secret_.data(), secret_.size()); }

namespace {

std::array<uint8_t, DigitalSignature::ed25519_bytes> signDetached(
    const std::array<uint8_t, 64>& secret, ByteView message) {
  std::array<uint8_t, DigitalSignature::ed25519_bytes> sig;
  crypto_sign_detached(sig.data(), nullptr, message.data(), message.size(), secret.data());
  ed25519_signs.fetch_add(1, std::memory_order_relaxed);
  return sig;
}

}  // namespace

DigitalSignature KeyPair::sign(ByteView message) const {
  const auto sig = signDetached(secret_, message);
  verifiedSignatures().insert(VerifiedSignatures::plainKey(public_, sig, message));
  return DigitalSignature(public_, sig);
}

std::vector<DigitalSignature> KeyPair::signBatch(std::span<const Bytes> messages) const {
  CCAL_ASSERT(!messages.empty() && messages.size() <= batch_signature_leaves_max);
  std::vector<SecureHash> leaves;
  leaves.reserve(messages.size());
  for (const auto& m : messages) leaves.push_back(merkle::batchLeaf(m));
  merkle::Tree tree(std::move(leaves));
  auto count = static_cast<uint32_t>(messages.size());
  // Remembered as the batch signature it is (verify looks its root up), not
  // as a plain signature over the root's bytes, which nothing looks up.
  const auto root_signature = signDetached(secret_, batchRootSignableBytes(count, tree.root()));
  verifiedSignatures().insert(
      VerifiedSignatures::batchKey(public_, root_signature, count, tree.root()));
  std::vector<DigitalSignature> out;
  out.reserve(count);
  for (uint32_t i = 0; i < count; ++i) {
    out.emplace_back(public_, root_signature, signature_version_current,
                     BatchProof{i, count, tree.prove(i)});
  }
  return out;
}

}  // namespace ccal
