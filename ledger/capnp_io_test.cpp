#include "ledger/capnp_io.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <string>

#include "schemas/testing.capnp.h"

using namespace ccal;
namespace st = ccal::schema::testing;

namespace {

Bytes token(const std::string& reference, size_t first_segment_words) {
  return buildFlat<st::TestToken>(
      [&](st::TestToken::Builder b) {
        b.setAmountMinor(42);
        b.setCurrency("EUR");
        b.setReference(reference);
      },
      first_segment_words);
}

std::string referenceOf(ByteView bytes) {
  auto r = decodeMessage<st::TestToken>(bytes, "token", Canonical::not_required,
                                        [](st::TestToken::Reader t) -> Result<std::string> {
                                          return std::string(t.getReference().cStr());
                                        });
  REQUIRE(r.ok());
  return *r;
}

}  // namespace

TEST_CASE(
    "buildFlat: small, large-scratch, grown, nested and heap segments all give the message built") {
  const Bytes small = token("small", 0);
  const Bytes medium = token(std::string(3000, 'm'), 2000);  // the large scratch segment
  CHECK(referenceOf(small) == "small");
  CHECK(referenceOf(medium) == std::string(3000, 'm'));

  // The large scratch segment grows for a bigger message, then serves a
  // smaller one again: the words the big one used were zeroed, so the
  // smaller one's bytes are those of its first build.
  const std::string big(200'000, 'b');
  const Bytes large = token(big, 30'000);
  CHECK(referenceOf(large) == big);
  CHECK(token(std::string(3000, 'm'), 2000) == medium);
  CHECK(token("small", 0) == small);

  // Over the large scratch bound: a heap segment, the same message.
  const size_t over = detail::large_scratch_words_max + 1;
  CHECK(token("small", over) == small);

  // Nested: a message built while both scratch segments are held.
  Bytes inner_small, inner_large, outer;
  outer = buildFlat<st::TestToken>(
      [&](st::TestToken::Builder b) {
        inner_large = buildFlat<st::TestToken>(
            [&](st::TestToken::Builder c) {
              inner_small = token("small", 0);  // both held: a heap segment
              c.setAmountMinor(42);
              c.setCurrency("EUR");
              c.setReference(std::string(3000, 'm'));
            },
            2000);
        b.setAmountMinor(42);
        b.setCurrency("EUR");
        b.setReference("small");
      },
      0);
  CHECK(outer == small);
  CHECK(inner_large == medium);
  CHECK(inner_small == small);
  CHECK_FALSE(detail::scratchSegment().in_use);
  CHECK_FALSE(detail::largeScratchSegment().in_use);
}

TEST_CASE(
    "readText: a text within its bound and without a NUL is read; otherwise refused, naming the "
    "field") {
  auto read = [](ByteView bytes, size_t max_bytes) {
    return decodeMessage<st::TestToken>(bytes, "token", Canonical::not_required,
                                        [&](st::TestToken::Reader t) -> Result<std::string> {
                                          return readText(t.getReference(), "token reference",
                                                          max_bytes);
                                        });
  };
  const Bytes plain = token("INV-1-QQQ", 0);
  CHECK(read(plain, 9).value() == "INV-1-QQQ");
  CHECK(read(plain, text_bounded_by_message).value() == "INV-1-QQQ");
  CHECK(read(token("", 0), 0).value().empty());

  auto over = read(plain, 8);
  REQUIRE_FALSE(over);
  CHECK(over.error().code == Errc::too_large);
  CHECK(over.error().message.find("token reference is 9 bytes, over the limit of 8") !=
        std::string::npos);

  // A NUL inside the text (the bytes, not the encoder, put it there): refused,
  // where cStr() would have read "INV-1-" and lost what follows.
  Bytes nul = plain;
  const std::string marker = "QQQ";
  auto at = std::search(nul.begin(), nul.end(), marker.begin(), marker.end());
  REQUIRE(at != nul.end());
  *at = 0;
  auto refused = read(nul, text_bounded_by_message);
  REQUIRE_FALSE(refused);
  CHECK(refused.error().code == Errc::malformed);
  CHECK(refused.error().message.find("token reference contains a NUL byte") != std::string::npos);
}
