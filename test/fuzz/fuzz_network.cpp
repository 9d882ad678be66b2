// Fuzzes the network map's decoders of bytes that come from other members and
// the network operator: NetworkParameters, SignedNetworkParameters, NodeInfo,
// SignedNodeInfo (node/network_map.h). The first input byte (mod
// fuzz::network_kind_count) picks the decoder; the rest is its input.
//
// For every decodable input:
//  - the value encodes to bytes that decode to a value encoding the same
//    bytes again (one value, one encoding);
//  - decoding is exact: the value encodes to the input bytes;
//  - a signed structure's verification against a network root that did
//    not sign it (whatever its raw part holds) fails with an error, never
//    crashes and never succeeds.

#include <algorithm>
#include <chrono>

#include "ledger/pki.h"
#include "ledger/testing.h"
#include "node/network_map.h"
#include "test/fuzz/fuzz_common.h"

using namespace ccal;
using namespace ccal::node;

namespace {

// A root that signed none of the seeds, made once.
const Certificate& foreignRoot() {
  static const Certificate root = [] {
    const auto now = std::chrono::system_clock::now();
    auto name = X500Name::parse("O=Fuzz Root,L=Nowhere,C=GB").value();
    auto ca = CertificateAuthority::createRoot(name, testing::testKey(77),
                                               {now - std::chrono::hours(1),
                                                now + std::chrono::hours(24 * 365)})
                  .value();
    return ca.certificate();
  }();
  return root;
}

template <class T>
void roundTrip(const T& value, ByteView input) {
  Bytes encoded = value.encode();
  FUZZ_CHECK(std::equal(encoded.begin(), encoded.end(), input.begin(), input.end()));
  auto again = T::decode(encoded);
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(again->encode() == encoded);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const auto kind = static_cast<fuzz::NetworkKind>(data[0] % fuzz::network_kind_count);
  const ByteView bytes = fuzz::input(data + 1, size - 1);
  const auto now = std::chrono::system_clock::now();
  switch (kind) {
    case fuzz::NetworkKind::network_parameters:
      if (auto p = NetworkParameters::decode(bytes)) roundTrip(*p, bytes);
      break;
    case fuzz::NetworkKind::signed_network_parameters:
      if (auto s = SignedNetworkParameters::decode(bytes)) {
        roundTrip(*s, bytes);
        FUZZ_CHECK(!s->verify(foreignRoot(), {}, now).ok());
      }
      break;
    case fuzz::NetworkKind::node_info:
      if (auto n = NodeInfo::decode(bytes)) roundTrip(*n, bytes);
      break;
    case fuzz::NetworkKind::signed_node_info:
      if (auto s = SignedNodeInfo::decode(bytes)) {
        roundTrip(*s, bytes);
        FUZZ_CHECK(!s->verify(foreignRoot(), {}, now).ok());
      }
      break;
  }
  return 0;
}
