// Fuzzes the PKI decoders of untrusted bytes: Certificate::fromDer and
// fromPem (first input byte even: DER, odd: PEM text), and X500Name::parse on
// the subject text.
//
// For every decodable certificate:
//  - its DER re-decodes to a certificate with the same DER and fingerprint;
//  - its subject's text form parses back to an equal name;
//  - publicKey() and validatePath() against itself return a value (never throw or crash).

#include <chrono>
#include <string_view>

#include "ledger/pki.h"
#include "test/fuzz/fuzz_common.h"

using namespace ccal;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  ByteView rest = fuzz::input(data + 1, size - 1);
  auto cert = (data[0] & 1) == 0
                  ? Certificate::fromDer(rest)
                  : Certificate::fromPem(std::string_view(
                        reinterpret_cast<const char*>(rest.data()), rest.size()));
  // X500Name::parse sees the same bytes as text, too.
  (void)X500Name::parse(std::string_view(reinterpret_cast<const char*>(rest.data()), rest.size()));
  if (!cert) return 0;

  Bytes der = cert->der();
  auto again = Certificate::fromDer(der);
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(again->der() == der);
  FUZZ_CHECK(again->fingerprint() == cert->fingerprint());
  auto name = X500Name::parse(cert->subject().toString());
  FUZZ_CHECK(name.ok() && *name == cert->subject());
  (void)cert->publicKey();
  auto at = std::chrono::system_clock::time_point(std::chrono::seconds(1'700'000'000));
  (void)validatePath(*cert, {}, *cert, {}, at, RevocationCheck::if_listed);
  return 0;
}
