#pragma once
// Authentication for the PBFT protocol.
//
// Pairwise MAC keys. Every member (replica or client) has an Ed25519
// identity key. Two members derive the same 32-byte key without talking:
// each converts its own Ed25519 secret key and the other's public key to
// X25519 (crypto_sign_ed25519_{sk,pk}_to_curve25519), computes the shared
// point (crypto_scalarmult) and hashes it with keyed BLAKE2b under a domain
// string and both names (in sorted order, with their lengths):
//   k(a, b) = BLAKE2b-256(key = X25519(a, b),
//                         "ccal.pbft.pairwise.v1" || len(lo) || lo || len(hi) || hi || pk(lo) || pk(hi))
// A MAC is BLAKE2b-128 keyed with k(a, b) over a 32-byte digest.
//
// Cost: deriving a key is one X25519 (~20 us) per pair, done once and
// cached; a MAC is one BLAKE2b of 32 bytes (~0.2 us). A request's
// authenticator (one MAC per replica) costs the client n MACs and each
// replica one check, instead of an Ed25519 verify (~36 us) per replica.

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "ledger/bytes.h"
#include "ledger/crypto.h"
#include "ledger/result.h"
#include "ledger/secure_hash.h"
#include "notary/pbft_messages.h"

namespace ccal::notary::pbft {

using MacKey = std::array<uint8_t, 32>;

// Derives k(self, peer) as above. Fails (bad_key) when the peer's public key
// is not a valid Ed25519 point or the shared point is degenerate.
Result<MacKey> derivePairwiseKey(const KeyPair& self, std::string_view self_name,
                                 const PublicKey& peer, std::string_view peer_name);

// BLAKE2b-128 of the digest, keyed.
Bytes mac(const MacKey& key, const SecureHash& digest);
bool macMatches(const MacKey& key, const SecureHash& digest, ByteView tag);

// A member's cache of pairwise keys with the others (derived on first use).
class KeyRing {
 public:
  KeyRing(KeyPair self, std::string self_name) : self_(std::move(self)), self_name_(std::move(self_name)) {}
  // The key shared with `peer` (whose identity key is `peer_key`).
  Result<MacKey> keyFor(const std::string& peer, const PublicKey& peer_key);
  const KeyPair& self() const { return self_; }
  const std::string& selfName() const { return self_name_; }

 private:
  KeyPair self_;
  std::string self_name_;
  std::map<std::string, std::pair<PublicKey, MacKey>> keys_;
};

}  // namespace ccal::notary::pbft
