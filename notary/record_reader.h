#pragma once
// A bounds-checked reader over a record this replica stored itself (the
// little-endian integers of appendU32 / appendU64, length-prefixed bytes):
// every read past the end fails, and done() holds only when the whole record
// was read without a failure.

#include <array>
#include <cstdint>

#include "ledger/bytes.h"
#include "ledger/secure_hash.h"

namespace ccal::notary {

class RecordReader {
 public:
  explicit RecordReader(ByteView b) : b_(b) {}
  bool u8(uint8_t& v) {
    if (pos_ + 1 > b_.size()) return fail();
    v = b_[pos_++];
    return true;
  }
  bool u16(uint16_t& v) {
    if (pos_ + 2 > b_.size()) return fail();
    v = static_cast<uint16_t>(b_[pos_] | b_[pos_ + 1] << 8);
    pos_ += 2;
    return true;
  }
  bool u32(uint32_t& v) {
    if (pos_ + 4 > b_.size()) return fail();
    v = 0;
    for (int i = 0; i < 4; ++i) v |= uint32_t(b_[pos_ + i]) << (8 * i);
    pos_ += 4;
    return true;
  }
  bool u64(uint64_t& v) {
    if (pos_ + 8 > b_.size()) return fail();
    v = 0;
    for (int i = 0; i < 8; ++i) v |= uint64_t(b_[pos_ + i]) << (8 * i);
    pos_ += 8;
    return true;
  }
  bool hash(SecureHash& h) {
    if (pos_ + 32 > b_.size()) return fail();
    h = SecureHash::fromBytes(b_.subspan(pos_, 32)).value();
    pos_ += 32;
    return true;
  }
  // Exactly out.size() bytes, no length prefix.
  template <size_t N>
  bool fixed(std::array<uint8_t, N>& out) {
    if (pos_ + N > b_.size()) return fail();
    for (size_t i = 0; i < N; ++i) out[i] = b_[pos_ + i];
    pos_ += N;
    return true;
  }
  // u32 length, then that many bytes.
  bool bytes(Bytes& out) {
    uint32_t n = 0;
    if (!u32(n) || pos_ + n > b_.size()) return fail();
    out.assign(b_.begin() + pos_, b_.begin() + pos_ + n);
    pos_ += n;
    return true;
  }
  bool done() const { return ok_ && pos_ == b_.size(); }

 private:
  bool fail() {
    ok_ = false;
    return false;
  }
  ByteView b_;
  size_t pos_ = 0;
  bool ok_ = true;
};

// The writing side of RecordReader::bytes.
inline void appendBytes(Bytes& out, ByteView b) {
  appendU32(out, static_cast<uint32_t>(b.size()));
  append(out, b);
}

}  // namespace ccal::notary
