#pragma once
// Test helpers for TLS between members: a network PKI made with ledger/pki.h
// (root -> doorman -> node CA -> TLS certificate, all Ed25519, like a
// bootstrapped network) and a small PeerDirectory over it, for tests and
// benchmarks of node/tls_link without the network map.

#include <chrono>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "ledger/assert.h"
#include "ledger/pki.h"
#include "node/peer_directory.h"

namespace ccal::testing {

template <class T>
T mustOk(Result<T> r, const char* what) {
  if (!r) {
    std::fprintf(stderr, "test PKI: %s: %s\n", what, r.error().toString().c_str());
    CCAL_ASSERT_MSG(false, "test PKI setup failed");
  }
  return std::move(r).value();
}

// What a member's TLS link loads: its chain (TLS certificate, node CA,
// doorman) and its TLS private key, as PEM.
struct TlsCredentials {
  std::string name;  // canonical X.500 name
  std::string chain_pem;
  std::string key_pem;
  std::vector<Certificate> chain;  // leaf first
};

class TestPki {
 public:
  explicit TestPki(const std::string& network = "CCAL Test Network")
      : now_(std::chrono::floor<std::chrono::seconds>(std::chrono::system_clock::now())),
        validity_{now_ - std::chrono::hours(1), now_ + std::chrono::hours(24 * 30)},
        root_key_(KeyPair::generate()),
        doorman_key_(KeyPair::generate()),
        root_(mustOk(CertificateAuthority::createRoot(
                         mustOk(X500Name::parse("O=" + network + " Root, L=Haikou, C=CN"), "root name"),
                         root_key_, validity_),
                     "root CA")),
        doorman_(mustOk(CertificateAuthority::fromCertificate(
                            mustOk(root_.issueIntermediate(
                                       mustOk(X500Name::parse("O=" + network + " Doorman, L=Haikou, C=CN"), "name"),
                                       doorman_key_.publicKey(), validity_),
                                   "doorman certificate"),
                            doorman_key_),
                        "doorman CA")) {}

  static std::string nameOf(const std::string& organisation) {
    return mustOk(X500Name::parse("O=" + organisation + ", L=Haikou, C=CN"), "member name").toString();
  }

  const Certificate& root() const { return root_.certificate(); }
  std::string rootPem() const { return root_.certificate().pem(); }

  // A member's node CA and TLS certificate, issued through the doorman.
  TlsCredentials issue(const std::string& organisation) {
    auto name = mustOk(X500Name::parse("O=" + organisation + ", L=Haikou, C=CN"), "member name");
    KeyPair ca_key = KeyPair::generate(), tls_key = KeyPair::generate();
    auto node_ca_cert = mustOk(doorman_.issueNodeCa(name, ca_key.publicKey(), validity_), "node CA");
    auto node_ca = mustOk(CertificateAuthority::fromCertificate(node_ca_cert, ca_key), "node CA");
    auto tls = mustOk(node_ca.issueTls(name, tls_key.publicKey(), validity_), "TLS certificate");
    TlsCredentials c;
    c.name = name.toString();
    c.chain = {tls, node_ca_cert, doorman_.certificate()};
    c.chain_pem = toPem(c.chain);
    c.key_pem = privateKeyPem(tls_key);
    node_cas_.emplace(c.name, std::move(node_ca));
    return c;
  }

  // A revocation list of the member's node CA naming its TLS certificate.
  Crl revoke(const TlsCredentials& member) {
    auto it = node_cas_.find(member.name);
    CCAL_ASSERT(it != node_cas_.end());
    return mustOk(it->second.issueCrl(std::vector<Certificate>{member.chain.front()}, now_,
                                      now_ + std::chrono::hours(24)),
                  "CRL");
  }

  // A self-signed certificate (a CA certificate used as a TLS certificate)
  // under a member's name: chains to nothing the network trusts.
  static TlsCredentials selfSigned(const std::string& organisation) {
    auto now = std::chrono::floor<std::chrono::seconds>(std::chrono::system_clock::now());
    auto name = mustOk(X500Name::parse("O=" + organisation + ", L=Haikou, C=CN"), "name");
    KeyPair key = KeyPair::generate();
    auto ca = mustOk(CertificateAuthority::createRoot(name, key, {now - std::chrono::hours(1), now + std::chrono::hours(24)}),
                     "self-signed");
    TlsCredentials c;
    c.name = name.toString();
    c.chain = {ca.certificate()};
    c.chain_pem = toPem(c.chain);
    c.key_pem = privateKeyPem(key);
    return c;
  }

 private:
  TimePoint now_;
  Validity validity_;
  KeyPair root_key_, doorman_key_;
  CertificateAuthority root_, doorman_;
  std::map<std::string, CertificateAuthority> node_cas_;
};

// A PeerDirectory over a fixed root and a member list: a peer is a member
// when its chain validates to the root (with the given revocation lists) and
// its leaf is an end-entity certificate whose subject is a listed member.
class TestDirectory final : public node::PeerDirectory {
 public:
  explicit TestDirectory(Certificate root) : root_(std::move(root)) {}

  void setMember(const std::string& name, node::Endpoint endpoint) {
    std::lock_guard lock(mutex_);
    members_[name] = std::move(endpoint);
  }
  void removeMember(const std::string& name) {
    std::lock_guard lock(mutex_);
    members_.erase(name);
  }
  void addCrl(Crl crl) {
    std::lock_guard lock(mutex_);
    crls_.push_back(std::move(crl));
  }

  Result<std::string> identifyPeer(const std::vector<Bytes>& chain_der) const override {
    if (chain_der.empty()) return makeError(Errc::certificate_invalid, "no certificate");
    std::vector<Certificate> chain;
    for (const auto& der : chain_der) {
      auto c = Certificate::fromDer(der);
      CCAL_TRY(c);
      chain.push_back(std::move(c.value()));
    }
    std::lock_guard lock(mutex_);
    const Certificate& leaf = chain.front();
    std::vector<Certificate> intermediates(chain.begin() + 1, chain.end());
    CCAL_TRY(validatePath(leaf, intermediates, root_, crls_, std::chrono::system_clock::now(),
                          RevocationCheck::if_listed));
    if (leaf.isCa())
      return makeError(Errc::certificate_invalid, "a CA certificate is not a TLS certificate: " + leaf.subject().toString());
    std::string name = leaf.subject().toString();
    if (members_.count(name) == 0) return makeError(Errc::not_found, name + " is not a member of the network map");
    return name;
  }

  Result<node::Endpoint> endpointOf(std::string_view member) const override {
    std::lock_guard lock(mutex_);
    auto it = members_.find(std::string(member));
    if (it == members_.end()) return makeError(Errc::not_found, std::string(member) + " is not in the network map");
    return it->second;
  }

 private:
  Certificate root_;
  mutable std::mutex mutex_;
  std::map<std::string, node::Endpoint> members_;
  std::vector<Crl> crls_;
};

}  // namespace ccal::testing
