#pragma once
// Writes a canonical Cap'n Proto message directly, word by word: one
// segment without a segment table, objects in pre-order (a struct, then
// what each of its pointers points to, in pointer order), struct sections
// as the caller sizes them (canonical form truncates trailing zero data
// words and null pointers; the caller passes the truncated sizes).
//
// For the few hot messages whose layout is fixed and small (a notary's
// signed reply, one per request per replica): capnp::canonicalize() walks
// and copies a built message a second time. Each user has a test comparing
// its bytes with capnp::canonicalize() of the same message built the usual
// way. The host is little-endian (as Cap'n Proto's wire format).

#include <bit>
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>
#include <vector>

#include "ledger/assert.h"
#include "ledger/bytes.h"
#include "ledger/secure_hash.h"

namespace ccal {

static_assert(std::endian::native == std::endian::little, "CanonicalWriter writes words in host order");

class CanonicalWriter {
 public:
  // `words_hint`: the expected size, reserved up front.
  explicit CanonicalWriter(size_t words_hint = 16) {
    words_.reserve(words_hint);
    words_.push_back(0);  // the root pointer
  }

  static constexpr size_t root = 0;  // the root pointer's word

  // A struct of the given section sizes, pointed to from `pointer_word`;
  // returns its first word (data section, then pointer section). A struct
  // of no words is pointed to with offset -1, as canonical form has it.
  size_t structAt(size_t pointer_word, uint16_t data_words, uint16_t pointers) {
    const size_t at = words_.size();
    const size_t size = size_t{data_words} + pointers;
    const int64_t offset = size == 0 ? -1 : static_cast<int64_t>(at) - static_cast<int64_t>(pointer_word) - 1;
    setPointer(pointer_word, offset, 0, uint64_t{data_words} | uint64_t{pointers} << 16);
    words_.resize(at + size, 0);
    return at;
  }
  // A Data blob (a list of bytes, zero-padded to a whole word).
  void dataAt(size_t pointer_word, ByteView bytes) {
    primitiveListAt(pointer_word, 2, bytes.size(), bytes.data(), bytes.size());
  }
  // A Text blob: the bytes and a NUL, zero-padded to a whole word.
  void textAt(size_t pointer_word, std::string_view text) {
    primitiveListAt(pointer_word, 2, text.size() + 1, text.data(), text.size());
  }
  // A List(UInt32), zero-padded to a whole word.
  void u32ListAt(size_t pointer_word, std::span<const uint32_t> values) {
    primitiveListAt(pointer_word, 4, values.size(), values.data(), values.size() * 4);
  }
  // A list of `count` pointers (List(Data), List(Text), ...); returns the
  // word of its first element.
  size_t pointerListAt(size_t pointer_word, uint32_t count) {
    CCAL_ASSERT(count < (uint32_t{1} << 29));
    const size_t at = words_.size();
    setPointer(pointer_word, static_cast<int64_t>(at) - static_cast<int64_t>(pointer_word) - 1, 1,
               6 | uint64_t{count} << 3);
    words_.resize(at + count, 0);
    return at;
  }
  // A List(Data) of the given blobs, or of 32-byte hashes.
  void dataListAt(size_t pointer_word, std::span<const Bytes> items) {
    const size_t at = pointerListAt(pointer_word, static_cast<uint32_t>(items.size()));
    for (size_t i = 0; i < items.size(); ++i) dataAt(at + i, items[i]);
  }
  void hashListAt(size_t pointer_word, std::span<const SecureHash> hashes) {
    const size_t at = pointerListAt(pointer_word, static_cast<uint32_t>(hashes.size()));
    for (size_t i = 0; i < hashes.size(); ++i) dataAt(at + i, hashes[i].view());
  }
  // A list of `count` structs of the given section sizes (each element the
  // same size, as canonical form has it: the largest element's); returns the
  // first element's first word, each element data section then pointers.
  size_t structListAt(size_t pointer_word, uint32_t count, uint16_t data_words, uint16_t pointers) {
    const size_t element = size_t{data_words} + pointers;
    CCAL_ASSERT(count < (uint32_t{1} << 29) && element * count < (size_t{1} << 29));
    const size_t tag = words_.size();
    setPointer(pointer_word, static_cast<int64_t>(tag) - static_cast<int64_t>(pointer_word) - 1, 1,
               7 | static_cast<uint64_t>(element * count) << 3);
    words_.resize(tag + 1 + element * count, 0);
    // (No elements: no largest one, the tag's sizes are 0.)
    const uint64_t sizes = count > 0 ? uint64_t{data_words} | uint64_t{pointers} << 16 : 0;
    words_[tag] = uint64_t{count} << 2 | sizes << 32;
    return tag + 1;
  }
  // A field in a data section: `bits` wide at bit `offset` of the word.
  void setBits(size_t word, unsigned offset, unsigned bits, uint64_t value) {
    CCAL_ASSERT(word < words_.size() && offset + bits <= 64 && bits > 0);
    const uint64_t mask = bits == 64 ? ~uint64_t{0} : ((uint64_t{1} << bits) - 1);
    words_[word] = (words_[word] & ~(mask << offset)) | ((value & mask) << offset);
  }

  Bytes finish() const {
    Bytes out(words_.size() * 8);
    std::memcpy(out.data(), words_.data(), out.size());
    return out;
  }

 private:
  // A list of `count` elements of element-size code `size_code` (2: bytes,
  // 4: 4 bytes), whose content is `bytes` from `data`, zero-padded to a
  // whole word (a Text's NUL is that padding).
  void primitiveListAt(size_t pointer_word, uint64_t size_code, size_t count, const void* data,
                       size_t bytes) {
    CCAL_ASSERT(count < (size_t{1} << 29));
    const size_t at = words_.size();
    setPointer(pointer_word, static_cast<int64_t>(at) - static_cast<int64_t>(pointer_word) - 1, 1,
               size_code | static_cast<uint64_t>(count) << 3);
    const size_t element_bytes = size_code == 4 ? 4 : 1;
    words_.resize(at + (count * element_bytes + 7) / 8, 0);
    if (bytes > 0) std::memcpy(&words_[at], data, bytes);
  }
  // kind: 0 struct, 1 list; `upper`: the pointer's upper 32 bits.
  void setPointer(size_t pointer_word, int64_t offset, uint64_t kind, uint64_t upper) {
    CCAL_ASSERT(pointer_word < words_.size() && words_[pointer_word] == 0);
    CCAL_ASSERT(offset >= -(int64_t{1} << 29) && offset < (int64_t{1} << 29));
    const auto lower = static_cast<uint32_t>(static_cast<uint32_t>(offset) << 2 | kind);
    words_[pointer_word] = uint64_t{lower} | upper << 32;
  }

  std::vector<uint64_t> words_;
};

}  // namespace ccal
