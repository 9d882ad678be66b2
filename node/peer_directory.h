#pragma once
// What the TLS link asks of the network map: who a connecting peer is, and
// where to reach a member. NetworkMap (node/network_map.h) implements it;
// tests may implement it over certificates they make.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "ledger/bytes.h"
#include "ledger/result.h"

namespace ccal::node {

struct Endpoint {
  std::string host;
  uint16_t port = 0;
};

class PeerDirectory {
 public:
  virtual ~PeerDirectory() = default;
  // The member a TLS peer is, from its certificate chain (DER, leaf first, as
  // presented in the handshake): the member's X.500 name in canonical string
  // form, or an error naming why it is refused (does not chain to the network
  // root, revoked, expired, not a TLS certificate of a member in the map).
  virtual Result<std::string> identifyPeer(const std::vector<Bytes>& chain_der) const = 0;
  // Where to connect to a member (its advertised p2p address), or not_found.
  virtual Result<Endpoint> endpointOf(std::string_view member) const = 0;
};

}  // namespace ccal::node
