#pragma once
// Canonical Cap'n Proto encoding and bounded decoding of untrusted bytes.
//
// Every hashed or signed byte string in CCAL is a canonical encoding, so one
// meaning has exactly one byte string. Decoding untrusted bytes goes through
// decodeMessage(), which bounds size, traversal and nesting, optionally
// insists on canonical form (which also rejects trailing bytes), and turns
// every Cap'n Proto exception raised while reading into an Error value.
//
// A canonical encoding is one segment with no segment table in front of it
// (what capnp::canonicalize() returns, `capnp decode --flat` reads), so that
// is the form decodeMessage() reads too.

#include <capnp/blob.h>
#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/array.h>
#include <kj/exception.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "ledger/assert.h"
#include "ledger/bytes.h"
#include "ledger/result.h"

namespace ccal {

struct ReadLimits {
  size_t message_bytes_max = 16u << 20;       // whole message
  uint64_t traversal_words_max = 4u << 20;    // 32 MiB of traversal; amplification bound
  int nesting_depth_max = 24;
};

inline constexpr ReadLimits default_read_limits{};

// The canonical encoding of a struct (single segment, preorder, no padding).
template <class Reader>
Bytes canonicalBytes(Reader reader) {
  kj::Array<capnp::word> words = capnp::canonicalize(reader);
  auto chars = words.asChars();
  return Bytes(reinterpret_cast<const uint8_t*>(chars.begin()),
               reinterpret_cast<const uint8_t*>(chars.end()));
}

// Builds a struct of type Schema with fill(builder) and returns its canonical bytes.
// The first segment is a per-thread scratch buffer, kept zeroed by Cap'n
// Proto, so the many small encodings on hot paths neither allocate nor clear
// a fresh segment each time; a nested call (fill encoding something else)
// falls back to a heap segment.
namespace detail {
inline constexpr size_t scratch_words = 1024;
// A second, large scratch segment per thread for big messages (a batch's
// pre-prepare, a batch's replies): grown to the largest first segment asked
// for, up to this bound (bigger ones take a heap segment). Reused, its
// pages stay mapped and warm; a fresh zeroed heap segment of that size
// costs a page fault per 4 KiB on first touch.
inline constexpr size_t large_scratch_words_max = size_t{1} << 19;  // 4 MiB
struct ScratchSegment {
  explicit ScratchSegment(size_t n) : words(new capnp::word[n]()), size(n) {}
  std::unique_ptr<capnp::word[]> words;
  size_t size;
  bool in_use = false;
};
inline ScratchSegment& scratchSegment() {
  thread_local ScratchSegment scratch(scratch_words);
  return scratch;
}
inline ScratchSegment& largeScratchSegment() {
  thread_local ScratchSegment scratch(0);
  return scratch;
}
// The free scratch segment that can hold `words` (the large one grown if
// needed), or null: a heap segment.
inline ScratchSegment* scratchFor(size_t words) {
  ScratchSegment& small = scratchSegment();
  if (!small.in_use && words <= small.size) return &small;
  ScratchSegment& large = largeScratchSegment();
  const size_t need = std::max(words, scratch_words);
  if (large.in_use || need > large_scratch_words_max) return nullptr;
  if (large.size < need) {
    const size_t grown = std::min(std::max(need, 2 * large.size), large_scratch_words_max);
    large.words.reset(new capnp::word[grown]());
    large.size = grown;
  }
  return &large;
}
}  // namespace detail

// A message builder whose first segment is a per-thread scratch segment
// when one is free and big enough, else a heap segment of at least
// `first_segment_words`. The builder is destroyed (zeroing the scratch words
// it used) before the scratch segment is released.
class ScratchBuilder {
 public:
  explicit ScratchBuilder(size_t first_segment_words = 0)
      : scratch_(detail::scratchFor(first_segment_words)),
        heap_(scratch_.segment ? nullptr
                               : static_cast<capnp::word*>(std::calloc(
                                     heapWords(first_segment_words), sizeof(capnp::word)))),
        message_(
            scratch_.segment
                ? kj::ArrayPtr<capnp::word>(scratch_.segment->words.get(), scratch_.segment->size)
                : kj::ArrayPtr<capnp::word>(heap_.get(), heapWords(first_segment_words))) {
    CCAL_ASSERT_MSG(scratch_.segment || heap_ != nullptr, "out of memory for a message segment");
  }
  ScratchBuilder(const ScratchBuilder&) = delete;
  ScratchBuilder& operator=(const ScratchBuilder&) = delete;
  capnp::MallocMessageBuilder& message() { return message_; }

 private:
  static size_t heapWords(size_t first_segment_words) { return std::max<size_t>(first_segment_words, 256); }
  // Holds the scratch segment while the builder lives; declared before
  // message_, so it is released after the builder (which zeroes the words
  // it used) is destroyed.
  struct ScratchHold {
    explicit ScratchHold(detail::ScratchSegment* s) : segment(s) {
      if (segment) segment->in_use = true;
    }
    ~ScratchHold() {
      if (segment) segment->in_use = false;
    }
    ScratchHold(const ScratchHold&) = delete;
    ScratchHold& operator=(const ScratchHold&) = delete;
    detail::ScratchSegment* const segment;
  };
  struct Free {
    void operator()(capnp::word* w) const { std::free(w); }
  };
  ScratchHold scratch_;
  std::unique_ptr<capnp::word, Free> heap_;
  capnp::MallocMessageBuilder message_;
};

template <class Schema, class Fill>
Bytes buildCanonical(Fill&& fill) {
  ScratchBuilder builder;
  auto root = builder.message().initRoot<Schema>();
  fill(root);
  return canonicalBytes(root.asReader());
}

// Builds a struct of type Schema with fill(builder) and returns it as one
// segment without a segment table, as built: not necessarily canonical (data
// sections are not truncated), for bytes that are neither hashed nor signed
// and whose decoder does not require the canonical form (a frame on a link).
// Saves canonicalize()'s walk and copy; a message that outgrew its first
// segment is canonicalized into one.
template <class Schema, class Fill>
Bytes buildFlat(Fill&& fill, size_t first_segment_words = 0) {
  ScratchBuilder builder(first_segment_words);
  auto root = builder.message().initRoot<Schema>();
  fill(root);
  auto segments = builder.message().getSegmentsForOutput();
  if (segments.size() != 1) return canonicalBytes(root.asReader());
  auto chars = segments[0].asChars();
  return Bytes(reinterpret_cast<const uint8_t*>(chars.begin()),
               reinterpret_cast<const uint8_t*>(chars.end()));
}

inline kj::ArrayPtr<const capnp::word> asWords(ByteView bytes) {
  return {reinterpret_cast<const capnp::word*>(bytes.data()), bytes.size() / sizeof(capnp::word)};
}

inline ByteView asByteView(capnp::Data::Reader data) { return {data.begin(), data.size()}; }
// The reverse: bytes to hand to a Cap'n Proto Data setter.
inline kj::ArrayPtr<const kj::byte> asData(ByteView bytes) { return {bytes.data(), bytes.size()}; }

// For readText: a text field whose only bound is the message it is in
// (decodeMessage's message_bytes_max, a state's state_data_bytes_max, ...).
inline constexpr size_t text_bounded_by_message = SIZE_MAX;

// A text field of decoded, untrusted bytes as a std::string: refused, naming
// `field`, if it is over `max_bytes` or holds a NUL byte. A NUL would survive
// decoding but not encoding (Cap'n Proto writes a std::string up to its first
// NUL), so one value would have two encodings, and "O=Bank\0..." would pass
// for "O=Bank" wherever text is shown as a C string. Every decoder reads text
// through this, never through cStr().
inline Result<std::string> readText(capnp::Text::Reader text, std::string_view field,
                                    size_t max_bytes) {
  const std::string_view view(text.begin(), text.size());
  if (view.size() > max_bytes) {
    return makeError(Errc::too_large, std::string(field) + " is " + std::to_string(view.size()) +
                                          " bytes, over the limit of " + std::to_string(max_bytes));
  }
  if (view.find('\0') != std::string_view::npos) {
    return makeError(Errc::malformed, std::string(field) + " contains a NUL byte");
  }
  return std::string(view);
}

enum class Canonical { required, not_required };

// Decodes `bytes` as a single Cap'n Proto message whose root is Schema and
// passes the root reader to parse(), which returns a Result<T> (or Status).
// `what` names the thing being decoded in error messages.
template <class Schema, class Parse>
auto decodeMessage(ByteView bytes, std::string_view what, Canonical canonical, Parse&& parse,
                   const ReadLimits& limits = default_read_limits)
    -> decltype(parse(std::declval<typename Schema::Reader>())) {
  using Out = decltype(parse(std::declval<typename Schema::Reader>()));
  auto fail = [&](Errc code, const std::string& why) -> Out {
    return makeError(code, std::string(what) + ": " + why);
  };
  if (bytes.empty()) return fail(Errc::malformed, "empty message");
  if (bytes.size() > limits.message_bytes_max) {
    return fail(Errc::too_large, std::to_string(bytes.size()) + " bytes is over the limit of " +
                                     std::to_string(limits.message_bytes_max));
  }
  if (bytes.size() % sizeof(capnp::word) != 0) {
    return fail(Errc::malformed, "length " + std::to_string(bytes.size()) +
                                     " is not a whole number of 8-byte words");
  }
  // The reader needs word-aligned memory; copy only when the caller's is not.
  // (A kj::Array, not a std::vector: under clang capnp::word is not copyable,
  // so std::vector<capnp::word> does not compile.)
  kj::Array<capnp::word> aligned;
  kj::ArrayPtr<const capnp::word> words;
  if (reinterpret_cast<uintptr_t>(bytes.data()) % alignof(capnp::word) == 0) {
    words = asWords(bytes);
  } else {
    aligned = kj::heapArray<capnp::word>(bytes.size() / sizeof(capnp::word));
    std::memcpy(aligned.begin(), bytes.data(), bytes.size());
    words = {aligned.begin(), aligned.size()};
  }
  try {
    capnp::ReaderOptions options;
    options.traversalLimitInWords = limits.traversal_words_max;
    options.nestingLimit = limits.nesting_depth_max;
    // One segment, no segment table. isCanonical() also checks that the root
    // object's content ends exactly at the end of the bytes.
    kj::ArrayPtr<const capnp::word> segments[1] = {words};
    capnp::SegmentArrayMessageReader reader(kj::arrayPtr(segments, 1), options);
    if (canonical == Canonical::required && !reader.isCanonical()) {
      return fail(Errc::not_canonical, "not the canonical encoding");
    }
    return parse(reader.getRoot<Schema>());
  } catch (const kj::Exception& e) {
    std::string why(e.getDescription().cStr());
    if (why.find("traversal limit") != std::string::npos) return fail(Errc::too_large, why);
    // Cap'n Proto says "Message is too deeply-nested or contains cycles".
    if (why.find("deeply-nested") != std::string::npos) return fail(Errc::too_deep, why);
    return fail(Errc::malformed, why);
  }
}

}  // namespace ccal
