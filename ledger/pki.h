#pragma once
// The network's X.509 certificate hierarchy, issued and checked with Botan:
//
//   network root CA -> doorman CA -> node CA (one per node, name-constrained to the node's name)
//                                      -> legal identity certificate (the node's signing key)
//                                      -> TLS certificate (serverAuth + clientAuth, for mutual TLS)
//
// All keys are Ed25519. No Botan type or exception crosses this interface: failures come back
// as Error values, so a malformed certificate from a peer can never throw into a flow.
// Nothing here reads the clock: every time (issue, validity, validation) is a parameter.

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ledger/bytes.h"
#include "ledger/crypto.h"
#include "ledger/result.h"
#include "ledger/secure_hash.h"

namespace ccal {

using TimePoint = std::chrono::system_clock::time_point;

// A validity period, inclusive at both ends (as in X.509). Certificates carry whole seconds;
// finer parts are dropped when a certificate is issued.
struct Validity {
  TimePoint not_before;
  TimePoint not_after;
};

namespace detail {
struct CertificateData;
struct CrlData;
struct CaData;
struct PkiAccess;  // pki.cpp's way to the internals of these classes
}  // namespace detail

// The X.500 name of a party, e.g. "O=Haikou Fishing Cooperative, L=Haikou, C=CN".
// O (organisation), L (locality) and C (ISO 3166 two-letter country) are required;
// CN (common name), OU (organisation unit) and ST (state) are optional.
class X500Name {
 public:
  static constexpr size_t text_bytes_max = 1024;
  static constexpr size_t value_chars_max = 64;  // X.520 upper bound for these attributes

  // Attribute keys are case-insensitive and may come in any order; whitespace around keys
  // and values is dropped and the country is upper-cased. A value must be valid UTF-8, must
  // not contain control characters, any of , = + " \ < > ; # or two spaces in a row:
  // names are compared byte for byte, so there is one spelling of each name.
  static Result<X500Name> parse(std::string_view text);

  const std::string& commonName() const { return common_name_; }              // empty if absent
  const std::string& organisationUnit() const { return organisation_unit_; }  // empty if absent
  const std::string& organisation() const { return organisation_; }
  const std::string& locality() const { return locality_; }
  const std::string& state() const { return state_; }  // empty if absent
  const std::string& country() const { return country_; }

  // The canonical text form "CN=.., OU=.., O=.., L=.., ST=.., C=..", absent parts left out.
  // parse(toString()) gives back an equal name.
  std::string toString() const;

  auto operator<=>(const X500Name&) const = default;
  bool operator==(const X500Name&) const = default;

 private:
  friend struct detail::PkiAccess;
  X500Name() = default;

  std::string common_name_;
  std::string organisation_unit_;
  std::string organisation_;
  std::string locality_;
  std::string state_;
  std::string country_;
};

// An immutable, decoded X.509 certificate whose subject and issuer are CCAL X.500 names.
// Copies share the decoded form.
class Certificate {
 public:
  static constexpr size_t encoded_bytes_max = 64 * 1024;

  // Decoding never throws: bytes that are not exactly one DER certificate, or a certificate
  // whose subject or issuer is not a valid X500Name, give Errc::malformed.
  static Result<Certificate> fromDer(ByteView der);
  // One "-----BEGIN CERTIFICATE-----" block, optionally surrounded by whitespace.
  static Result<Certificate> fromPem(std::string_view pem);

  Bytes der() const;
  std::string pem() const;

  const X500Name& subject() const;
  const X500Name& issuer() const;
  std::string serialHex() const;  // big-endian magnitude, lower-case hex
  Validity validity() const;
  bool isCa() const;
  // SHA-256 of the DER encoding.
  SecureHash fingerprint() const;

  // The subject's Ed25519 public key; Errc::unknown_scheme names the algorithm otherwise.
  Result<PublicKey> publicKey() const;

  // Same DER bytes.
  bool operator==(const Certificate& other) const;

 private:
  friend struct detail::PkiAccess;
  explicit Certificate(std::shared_ptr<const detail::CertificateData> data)
      : data_(std::move(data)) {}

  std::shared_ptr<const detail::CertificateData> data_;
};

// Encodes certificates as consecutive PEM blocks (leaf first, for a TLS chain file).
std::string toPem(std::span<const Certificate> certificates);
// Decodes consecutive PEM certificate blocks separated by whitespace; at least one.
Result<std::vector<Certificate>> certificatesFromPem(std::string_view pem);

// A certificate revocation list, signed by the CA that issued the revoked certificates.
class Crl {
 public:
  static constexpr size_t encoded_bytes_max = 4 * 1024 * 1024;

  static Result<Crl> fromDer(ByteView der);
  static Result<Crl> fromPem(std::string_view pem);  // one "-----BEGIN X509 CRL-----" block

  Bytes der() const;
  std::string pem() const;

  const X500Name& issuer() const;
  uint32_t number() const;  // increases with every list the CA issues
  TimePoint thisUpdate() const;
  TimePoint nextUpdate() const;
  size_t revokedCount() const;
  // Whether the list names this certificate (same issuer name and serial number). Does not
  // check the list's signature: validatePath does.
  bool lists(const Certificate& certificate) const;

 private:
  friend struct detail::PkiAccess;
  explicit Crl(std::shared_ptr<const detail::CrlData> data) : data_(std::move(data)) {}

  std::shared_ptr<const detail::CrlData> data_;
};

// A certificate authority: its certificate and its Ed25519 private key. Move-only, since it
// holds the private key (wiped when destroyed).
//
// Path lengths are fixed by the hierarchy: the root may have two CAs below it (doorman and
// node CA), an intermediate one less, and a node CA none, so a node CA can issue only
// end-entity certificates. A node CA carries a critical X.509 Name Constraints extension that
// permits only its own X.500 name (a directoryName subtree): it issues only for itself, and
// validatePath rejects any other name it signs. (OpenSSL, following RFC 5280, rejects other
// names too but accepts names below it, such as the node's name with a CN added.)
class CertificateAuthority {
 public:
  // A self-signed network root.
  static Result<CertificateAuthority> createRoot(const X500Name& name, const KeyPair& key,
                                                 const Validity& validity);
  // An existing CA, e.g. loaded from disk. Errc::certificate_invalid if the certificate is not
  // a CA certificate or its public key is not `key`'s.
  static Result<CertificateAuthority> fromCertificate(const Certificate& certificate,
                                                      const KeyPair& key);

  CertificateAuthority(CertificateAuthority&&) noexcept;
  CertificateAuthority& operator=(CertificateAuthority&&) noexcept;
  ~CertificateAuthority();

  const Certificate& certificate() const;

  // Every issue* call returns Errc::certificate_invalid when the validity is empty or reaches
  // outside this CA's own validity, or when this CA may not issue that kind of certificate
  // (path length), and Errc::name_constraint when `subject` is outside this CA's name
  // constraints.

  // A CA certificate (e.g. the doorman), allowed one CA fewer below it than this CA.
  Result<Certificate> issueIntermediate(const X500Name& subject, const PublicKey& subject_key,
                                        const Validity& validity) const;
  // A node CA that may only issue end-entity certificates for `node`.
  Result<Certificate> issueNodeCa(const X500Name& node, const PublicKey& node_ca_key,
                                  const Validity& validity) const;
  // An end-entity certificate binding `node` to its legal identity (transaction signing) key:
  // key usage digitalSignature + nonRepudiation.
  Result<Certificate> issueLegalIdentity(const X500Name& node, const PublicKey& identity_key,
                                         const Validity& validity) const;
  // An end-entity TLS certificate: key usage digitalSignature, extended key usages serverAuth
  // and clientAuth, so the same certificate serves both ends of a mutual-TLS session.
  Result<Certificate> issueTls(const X500Name& node, const PublicKey& tls_key,
                               const Validity& validity) const;

  // A revocation list of this CA. With `previous` (a list of this CA), keeps its entries and
  // numbers the new list one higher. Each certificate in `revoke` must have been issued by
  // this CA; its revocation date is `this_update`.
  Result<Crl> issueCrl(std::span<const Certificate> revoke, TimePoint this_update,
                       TimePoint next_update, const Crl* previous = nullptr) const;

 private:
  explicit CertificateAuthority(std::unique_ptr<detail::CaData> data);

  std::unique_ptr<detail::CaData> data_;
};

enum class RevocationCheck : uint8_t {
  // A CA with no list among `crls` is not checked. For tests and bootstrapping only.
  if_listed,
  // Every CA on the path needs a current list among `crls`, else Errc::certificate_invalid.
  required,
};

// Validates the path from `leaf` through some of `intermediates` to `trusted_root` at time
// `at`. Errors name the certificate at fault:
//   certificate_invalid  no path to the root (foreign issuer or root, bad signature, issuer
//                        not a CA, path too long, a non-Ed25519 key), or a missing, expired
//                        or badly signed revocation list
//   certificate_expired  a certificate on the path is outside its validity period at `at`
//   certificate_revoked  a certificate is listed by its issuer's revocation list
//   name_constraint      a certificate's subject is outside an issuer's name constraints;
//                        a permitted directoryName must be matched exactly, not by prefix
// When several apply, the first in this order wins: invalid, revoked, name_constraint,
// expired.
Status validatePath(const Certificate& leaf, std::span<const Certificate> intermediates,
                    const Certificate& trusted_root, std::span<const Crl> crls, TimePoint at,
                    RevocationCheck revocation);

// The key pair as unencrypted PKCS#8 PEM ("-----BEGIN PRIVATE KEY-----", RFC 8410), the form
// OpenSSL (and so Asio's SSL context) loads. It is the private key: write it with care.
std::string privateKeyPem(const KeyPair& key);
// Reads an unencrypted PKCS#8 Ed25519 private key; Errc::malformed or unknown_scheme.
Result<KeyPair> keyPairFromPem(std::string_view pem);

}  // namespace ccal
