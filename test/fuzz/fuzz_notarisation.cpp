// Fuzzes the decoders of the notarisation messages (schemas/notary.capnp,
// notary/notarisation_messages.h): what a replica decodes from any client
// (NotarisationRequest) and what a client decodes from any replica
// (NotarisationReply, SignedNotarisationReply), and the batch effects a
// replica takes from a peer in state transfer (BatchEffects). The first input
// byte (mod fuzz::notarisation_kind_count) picks the decoder; the rest is its
// input.
//
// For every decodable input:
//  - the value encodes to bytes that decode to an equal value encoding the
//    same bytes again (one value, one encoding);
//  - a request's transaction id survives the round trip;
//  - a signed reply's inner reply and proof are either usable or refused
//    with an error (root() and the inner decode never crash).

#include "notary/notarisation_messages.h"
#include "test/fuzz/fuzz_common.h"

using namespace ccal;
using namespace ccal::notary;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const auto kind = static_cast<fuzz::NotarisationKind>(data[0] % fuzz::notarisation_kind_count);
  const ByteView bytes = fuzz::input(data + 1, size - 1);
  switch (kind) {
    case fuzz::NotarisationKind::request:
      if (auto r = NotarisationRequest::decode(bytes)) {
        const Bytes encoded = r->encode();
        auto again = NotarisationRequest::decode(encoded);
        FUZZ_CHECK(again.ok());
        FUZZ_CHECK(again->encode() == encoded);
        FUZZ_CHECK(again->txId() == r->txId());
        FUZZ_CHECK(again->notary() == r->notary());
        FUZZ_CHECK(again->isValidating() == r->isValidating());
      }
      break;
    case fuzz::NotarisationKind::reply:
      if (auto r = NotarisationReply::decode(bytes)) {
        const Bytes encoded = r->encode();
        auto again = NotarisationReply::decode(encoded);
        FUZZ_CHECK(again.ok());
        FUZZ_CHECK(again->encode() == encoded);
        FUZZ_CHECK(again->sameAnswer(*r) && again->batchSeq == r->batchSeq);
        FUZZ_CHECK(!r->describe().empty());
      }
      break;
    case fuzz::NotarisationKind::signed_reply:
      if (auto s = SignedNotarisationReply::decode(bytes)) {
        const Bytes encoded = s->encode();
        // The direct canonical writer agrees with Cap'n Proto's canonicalize().
        FUZZ_CHECK(encoded == s->encodeBuilt());
        auto again = SignedNotarisationReply::decode(encoded);
        FUZZ_CHECK(again.ok());
        FUZZ_CHECK(again->encode() == encoded);
        auto root = s->root();
        auto root_again = again->root();
        FUZZ_CHECK(root.ok() == root_again.ok());
        if (root.ok()) FUZZ_CHECK(*root == *root_again);
        (void)NotarisationReply::decode(s->reply);
      }
      // The client's reading of a success takes what the whole reading takes.
      if (auto light = SignedNotarisationReply::decodeForSuccess(bytes)) {
        if (auto whole = SignedNotarisationReply::decode(bytes)) {
          FUZZ_CHECK(light->reply == whole->reply && light->txSignature == whole->txSignature);
        }
      }
      break;
    case fuzz::NotarisationKind::batch_effects:
      if (auto e = BatchEffects::decode(bytes)) {
        const Bytes encoded = e->encode();
        auto again = BatchEffects::decode(encoded);
        FUZZ_CHECK(again.ok());
        FUZZ_CHECK(*again == *e);
        FUZZ_CHECK(again->encode() == encoded);
      }
      break;
  }
  return 0;
}
