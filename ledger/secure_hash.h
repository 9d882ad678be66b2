#pragma once
// SHA-256 hashes: transaction ids, Merkle nodes, state and key fingerprints.

#include <array>
#include <compare>
#include <cstdint>
#include <memory>
#include <string>

#include "ledger/bytes.h"
#include "ledger/result.h"

namespace ccal {

class SecureHash {
 public:
  static constexpr size_t size_bytes = 32;

  SecureHash() { bytes_.fill(0); }  // the zero hash
  explicit SecureHash(const std::array<uint8_t, size_bytes>& bytes) : bytes_(bytes) {}

  static SecureHash of(ByteView data);
  static SecureHash zero() { return SecureHash(); }
  // Exactly 32 bytes, else bad_length.
  static Result<SecureHash> fromBytes(ByteView bytes);
  static Result<SecureHash> fromHex(std::string_view hex);

  const std::array<uint8_t, size_bytes>& bytes() const { return bytes_; }
  ByteView view() const { return {bytes_.data(), bytes_.size()}; }
  std::string hex() const { return toHex(view()); }
  // The first 8 hex digits, for logs.
  std::string shortHex() const { return hex().substr(0, 8); }
  bool isZero() const;

  auto operator<=>(const SecureHash&) const = default;
  bool operator==(const SecureHash&) const = default;

 private:
  std::array<uint8_t, size_bytes> bytes_;
};

// Incremental SHA-256, for hashing a preimage built from several parts
// without copying them together.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  Sha256& update(ByteView data);
  Sha256& update(uint8_t byte) { return update(ByteView(&byte, 1)); }
  Sha256& updateU32(uint32_t v);
  // Returns the hash and resets for reuse.
  SecureHash finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

struct SecureHashHasher {
  size_t operator()(const SecureHash& h) const {
    size_t v = 0;
    for (size_t i = 0; i < sizeof(v); ++i) v = v << 8 | h.bytes()[i];
    return v;
  }
};

}  // namespace ccal
