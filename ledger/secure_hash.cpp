#include "ledger/secure_hash.h"

// OpenSSL's low-level SHA-256 uses the CPU's SHA extensions and, unlike a
// generic hash object, costs almost nothing per call: Merkle ids hash many
// short preimages, so the per-call cost is what counts (bench_ledger: ids
// ~1.2x faster than through Botan's HashFunction). The API is deprecated in
// OpenSSL 3 in favour of EVP, whose per-call cost is higher still.
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/sha.h>

namespace ccal {

struct Sha256::Impl {
  SHA256_CTX ctx;
};

Sha256::Sha256() : impl_(std::make_unique<Impl>()) { SHA256_Init(&impl_->ctx); }
Sha256::~Sha256() = default;

Sha256& Sha256::update(ByteView data) {
  SHA256_Update(&impl_->ctx, data.data(), data.size());
  return *this;
}

Sha256& Sha256::updateU32(uint32_t v) {
  uint8_t le[4] = {static_cast<uint8_t>(v), static_cast<uint8_t>(v >> 8),
                   static_cast<uint8_t>(v >> 16), static_cast<uint8_t>(v >> 24)};
  return update(ByteView(le, 4));
}

SecureHash Sha256::finish() {
  std::array<uint8_t, SecureHash::size_bytes> out;
  SHA256_Final(out.data(), &impl_->ctx);
  SHA256_Init(&impl_->ctx);
  return SecureHash(out);
}

SecureHash SecureHash::of(ByteView data) {
  thread_local Sha256 hasher;
  return hasher.update(data).finish();
}

Result<SecureHash> SecureHash::fromBytes(ByteView bytes) {
  if (bytes.size() != size_bytes) {
    return makeError(Errc::bad_length, "a SHA-256 hash is 32 bytes, got " +
                                           std::to_string(bytes.size()));
  }
  std::array<uint8_t, size_bytes> a;
  std::copy(bytes.begin(), bytes.end(), a.begin());
  return SecureHash(a);
}

Result<SecureHash> SecureHash::fromHex(std::string_view hex) {
  auto bytes = ccal::fromHex(hex);
  if (!bytes) return makeError(Errc::malformed, "a hash must be 64 hex digits");
  return fromBytes(*bytes);
}

bool SecureHash::isZero() const {
  for (uint8_t b : bytes_)
    if (b != 0) return false;
  return true;
}

}  // namespace ccal
