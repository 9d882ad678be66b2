#include "ledger/crypto.h"

#include <sodium.h>

#include <mutex>

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
                                                     uint16_t version, ByteView signature) {
  CCAL_TRY(checkScheme(scheme));
  if (version != signature_version_current) {
    return makeError(Errc::unknown_scheme,
                     "signature version " + std::to_string(version) + " is not known");
  }
  if (signature.size() != ed25519_bytes) {
    return makeError(Errc::bad_length, "an Ed25519 signature is 64 bytes, got " +
                                           std::to_string(signature.size()));
  }
  std::array<uint8_t, ed25519_bytes> a;
  std::copy(signature.begin(), signature.end(), a.begin());
  return DigitalSignature(by, a, version);
}

Status DigitalSignature::verify(ByteView message) const {
  ensureSodiumInitialised();
  // libsodium rejects small-order keys and non-canonical S, as RFC 8032 requires.
  if (crypto_sign_verify_detached(bytes_.data(), message.data(), message.size(),
                                  by_.bytes().data()) != 0) {
    return makeError(Errc::bad_signature, "signature by key " + by_.shortHex() + " does not verify");
  }
  return {};
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

DigitalSignature KeyPair::sign(ByteView message) const {
  std::array<uint8_t, DigitalSignature::ed25519_bytes> sig;
  crypto_sign_detached(sig.data(), nullptr, message.data(), message.size(), secret_.data());
  return DigitalSignature(public_, sig);
}

}  // namespace ccal
