#include "notary/pbft_crypto.h"

#include <sodium.h>

#include <algorithm>

namespace ccal::notary::pbft {

Result<MacKey> derivePairwiseKey(const KeyPair& self, std::string_view self_name,
                                 const PublicKey& peer, std::string_view peer_name) {
  ensureSodiumInitialised();
  unsigned char ed_pk[crypto_sign_PUBLICKEYBYTES], ed_sk[crypto_sign_SECRETKEYBYTES];
  crypto_sign_seed_keypair(ed_pk, ed_sk, self.seed().data());
  unsigned char my_sk[crypto_scalarmult_curve25519_BYTES];
  unsigned char their_pk[crypto_scalarmult_curve25519_BYTES];
  const int sk_rc = crypto_sign_ed25519_sk_to_curve25519(my_sk, ed_sk);
  sodium_memzero(ed_sk, sizeof ed_sk);
  CCAL_ASSERT(sk_rc == 0);
  if (crypto_sign_ed25519_pk_to_curve25519(their_pk, peer.bytes().data()) != 0) {
    sodium_memzero(my_sk, sizeof my_sk);
    return makeError(Errc::bad_key, "the identity key of '" + std::string(peer_name) +
                                        "' is not a valid Ed25519 public key");
  }
  unsigned char shared[crypto_scalarmult_BYTES];
  const int rc = crypto_scalarmult(shared, my_sk, their_pk);
  sodium_memzero(my_sk, sizeof my_sk);
  if (rc != 0) {
    return makeError(Errc::bad_key, "no shared key with '" + std::string(peer_name) +
                                        "': its identity key is a low-order point");
  }
  const bool self_first = self_name < peer_name;
  const std::string_view lo = self_first ? self_name : peer_name;
  const std::string_view hi = self_first ? peer_name : self_name;
  const PublicKey& lo_key = self_first ? self.publicKey() : peer;
  const PublicKey& hi_key = self_first ? peer : self.publicKey();
  Bytes info;
  append(info, asBytes("ccal.pbft.pairwise.v1"));
  appendU32(info, static_cast<uint32_t>(lo.size()));
  append(info, asBytes(lo));
  appendU32(info, static_cast<uint32_t>(hi.size()));
  append(info, asBytes(hi));
  append(info, lo_key.view());
  append(info, hi_key.view());
  MacKey key;
  crypto_generichash(key.data(), key.size(), info.data(), info.size(), shared, sizeof shared);
  sodium_memzero(shared, sizeof shared);
  return key;
}

Bytes mac(const MacKey& key, const SecureHash& digest) {
  Bytes out(mac_bytes);
  crypto_generichash(out.data(), out.size(), digest.bytes().data(), SecureHash::size_bytes,
                     key.data(), key.size());
  return out;
}

bool macMatches(const MacKey& key, const SecureHash& digest, ByteView tag) {
  if (tag.size() != mac_bytes) return false;
  const Bytes expected = mac(key, digest);
  return sodium_memcmp(expected.data(), tag.data(), mac_bytes) == 0;
}

Result<MacKey> KeyRing::keyFor(const std::string& peer, const PublicKey& peer_key) {
  auto it = keys_.find(peer);
  if (it != keys_.end() && it->second.first == peer_key) return it->second.second;
  auto key = derivePairwiseKey(self_, self_name_, peer_key, peer);
  if (!key) return key.error();
  keys_[peer] = {peer_key, *key};
  return *key;
}

}  // namespace ccal::notary::pbft
