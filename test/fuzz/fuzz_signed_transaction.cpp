// Fuzzes SignedTransaction::decode.
//
// For every decodable signed transaction:
//  - checking its signatures (each against the id) returns a verdict and
//    does not crash, whatever the keys and signature bytes;
//  - its encoding decodes to the same id and the same signatures, re-encodes
//    to the same bytes, and gets the same signature verdict;
//  - the verdicts agree: verifyRequiredSignatures() is ok exactly when every
//    signature is valid and no required key is missing, and allowing the
//    missing keys leaves only the validity of the signatures;
//  - no key signed twice.

#include <vector>

#include "ledger/signed_transaction.h"
#include "test/fuzz/fuzz_common.h"

using namespace ccal;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto stx = SignedTransaction::decode(fuzz::input(data, size));
  if (!stx) return 0;

  Status valid = stx->checkSignaturesAreValid();
  std::vector<Key> missing = stx->missingSigningKeys();
  Status required = stx->verifyRequiredSignatures();
  FUZZ_CHECK(required.ok() == (valid.ok() && missing.empty()));
  FUZZ_CHECK(stx->verifySignaturesExcept(missing).ok() == valid.ok());
  if (!valid.ok()) FUZZ_CHECK(valid.error().code == Errc::bad_signature);
  if (valid.ok() && !missing.empty()) FUZZ_CHECK(required.error().code == Errc::missing_signatures);
  FUZZ_CHECK(stx->signers().size() == stx->signatures().size());
  for (const auto& key : missing) FUZZ_CHECK(!key.isFulfilledBy(stx->signers()));

  Bytes encoded = stx->encode();
  auto again = SignedTransaction::decode(encoded);
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(again->id() == stx->id());
  FUZZ_CHECK(again->tx().groups() == stx->tx().groups());
  FUZZ_CHECK(again->signatures() == stx->signatures());
  FUZZ_CHECK(again->encode() == encoded);
  FUZZ_CHECK(again->checkSignaturesAreValid().ok() == valid.ok());
  FUZZ_CHECK(again->missingSigningKeys() == missing);

  auto wire = WireTransaction::decode(stx->tx().encode());
  FUZZ_CHECK(wire.ok());
  FUZZ_CHECK(wire->id() == stx->id());
  return 0;
}
