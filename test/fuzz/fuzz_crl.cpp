// Fuzzes Crl::fromDer and fromPem (first input byte even: DER, odd: PEM text).
//
// For every decodable list: its DER re-decodes to a list with the same DER,
// issuer, number and entry count.

#include <string_view>

#include "ledger/pki.h"
#include "test/fuzz/fuzz_common.h"

using namespace ccal;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  ByteView rest = fuzz::input(data + 1, size - 1);
  auto crl = (data[0] & 1) == 0 ? Crl::fromDer(rest)
                                : Crl::fromPem(std::string_view(
                                      reinterpret_cast<const char*>(rest.data()), rest.size()));
  if (!crl) return 0;
  Bytes der = crl->der();
  auto again = Crl::fromDer(der);
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(again->der() == der);
  FUZZ_CHECK(again->issuer() == crl->issuer());
  FUZZ_CHECK(again->number() == crl->number());
  FUZZ_CHECK(again->revokedCount() == crl->revokedCount());
  return 0;
}
