#include "ledger/canonical_writer.h"

#include <capnp/message.h>
#include <doctest/doctest.h>

#include "ledger/capnp_io.h"
#include "ledger/signature_codec.h"
#include "ledger/testing.h"

using namespace ccal;

namespace {

Bytes viaBuilder(const DigitalSignature& s) {
  return buildCanonical<schema::DigitalSignature>(
      [&](schema::DigitalSignature::Builder b) { writeSignature(b, s); });
}

Bytes viaWriter(const DigitalSignature& s) {
  CanonicalWriter out;
  writeSignature(out, CanonicalWriter::root, s);
  return out.finish();
}

}  // namespace

TEST_CASE("canonical writer: a signature equals capnp's canonical form, with and without a batch proof") {
  const KeyPair key = testing::testKey(3);
  CHECK(viaWriter(key.sign(asBytes("one message"))) == viaBuilder(key.sign(asBytes("one message"))));
  // Batch signatures of 1 to 9 messages: proofs of 0 to 4 hashes, leaf 0 included.
  for (size_t n = 1; n <= 9; ++n) {
    std::vector<Bytes> messages;
    for (size_t i = 0; i < n; ++i) messages.push_back(Bytes(i + 1, static_cast<uint8_t>(i)));
    const auto sigs = key.signBatch(messages);
    for (const auto& s : sigs) {
      REQUIRE(s.batch().has_value());
      const Bytes written = viaWriter(s);
      CHECK(written == viaBuilder(s));
      // And it reads back, as canonical.
      auto back = decodeMessage<schema::DigitalSignature>(
          written, "signature", Canonical::required,
          [](schema::DigitalSignature::Reader r) { return readSignature(r); });
      REQUIRE(back.ok());
      CHECK(*back == s);
    }
  }
}

TEST_CASE("canonical writer: empty blobs and lists point where the next object starts; an empty struct at -1") {
  CanonicalWriter out;
  // A struct of no data and 3 pointers: an empty blob, an empty list, an empty struct.
  const size_t at = out.structAt(CanonicalWriter::root, 0, 3);
  out.dataAt(at, ByteView());
  out.pointerListAt(at + 1, 0);
  out.structAt(at + 2, 0, 0);
  const Bytes b = out.finish();
  REQUIRE(b.size() == 4 * 8);
  auto word = [&](size_t i) {
    uint64_t w = 0;
    std::memcpy(&w, b.data() + 8 * i, 8);
    return w;
  };
  CHECK(word(0) == 0x0003000000000000ull);  // struct, offset 0, 0 data words, 3 pointers
  CHECK(word(1) == 0x0000000200000009ull);  // bytes, offset 2 (the end), 0 elements
  CHECK(word(2) == 0x0000000600000005ull);  // pointers, offset 1 (the end), 0 elements
  CHECK(word(3) == 0x00000000fffffffcull);  // struct, offset -1, no words
  // Blobs are zero-padded to a whole word.
  CanonicalWriter blob;
  const Bytes three{1, 2, 3};
  blob.dataAt(CanonicalWriter::root, three);
  const Bytes bb = blob.finish();
  REQUIRE(bb.size() == 16);
  CHECK(Bytes(bb.begin() + 8, bb.end()) == Bytes{1, 2, 3, 0, 0, 0, 0, 0});
}
