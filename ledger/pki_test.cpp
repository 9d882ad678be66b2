#include "ledger/pki.h"

#include <botan/ed25519.h>
#include <botan/pubkey.h>
#include <botan/system_rng.h>
#include <botan/x509_ca.h>
#include <botan/x509_ext.h>
#include <botan/x509_key.h>
#include <doctest/doctest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

using namespace ccal;
using std::chrono::duration_cast;
using std::chrono::hours;
using std::chrono::seconds;

namespace {

TimePoint date(int y, unsigned m, unsigned d) {
  return std::chrono::sys_days{std::chrono::year{y} / std::chrono::month{m} / d};
}

X500Name name(std::string_view text) {
  auto n = X500Name::parse(text);
  REQUIRE_MESSAGE(n.ok(), n.error().toString());
  return n.value();
}

template <class T>
T ok(Result<T> r) {
  REQUIRE_MESSAGE(r.ok(), r.error().toString());
  return std::move(r).value();
}

KeyPair keyFromByte(uint8_t b) {
  return KeyPair::fromSeed(Bytes(32, b)).value();
}

// The network of the tests: validity 2026..2036 for CAs, 2027..2028 for the node's
// end-entity certificates, checked "now" = 2027-06-01.
const TimePoint now = date(2027, 6, 1);
const Validity ca_validity{date(2026, 1, 1), date(2036, 1, 1)};
const Validity node_validity{date(2027, 1, 1), date(2028, 1, 1)};

struct Network {
  KeyPair root_key = keyFromByte(1);
  KeyPair doorman_key = keyFromByte(2);
  KeyPair node_ca_key = keyFromByte(3);
  KeyPair identity_key = keyFromByte(4);
  KeyPair tls_key = keyFromByte(5);
  X500Name node = name("O=Haikou Fishing Cooperative, L=Haikou, C=CN");

  CertificateAuthority root = ok(CertificateAuthority::createRoot(
      name("CN=CCAL Network Root CA, O=CCAL Alliance, L=London, C=GB"), root_key, ca_validity));
  CertificateAuthority doorman = ok(CertificateAuthority::fromCertificate(
      ok(root.issueIntermediate(name("CN=CCAL Doorman CA, O=CCAL Alliance, L=London, C=GB"),
                                doorman_key.publicKey(), ca_validity)),
      doorman_key));
  CertificateAuthority node_ca = ok(CertificateAuthority::fromCertificate(
      ok(doorman.issueNodeCa(node, node_ca_key.publicKey(), ca_validity)), node_ca_key));
  Certificate identity =
      ok(node_ca.issueLegalIdentity(node, identity_key.publicKey(), node_validity));
  Certificate tls = ok(node_ca.issueTls(node, tls_key.publicKey(), node_validity));

  std::vector<Certificate> chain() const { return {doorman.certificate(), node_ca.certificate()}; }

  // An empty revocation list from every CA, as `RevocationCheck::required` needs.
  std::vector<Crl> emptyCrls() const {
    return {ok(root.issueCrl({}, date(2027, 5, 1), date(2027, 7, 1))),
            ok(doorman.issueCrl({}, date(2027, 5, 1), date(2027, 7, 1))),
            ok(node_ca.issueCrl({}, date(2027, 5, 1), date(2027, 7, 1)))};
  }

  Status validate(const Certificate& leaf, const std::vector<Crl>& crls, TimePoint at = now) const {
    return validatePath(leaf, chain(), root.certificate(), crls, at, RevocationCheck::required);
  }
};

// Signs a certificate with Botan directly, bypassing CertificateAuthority's own checks, to
// make the certificates a misbehaving or compromised CA could make.
Certificate forge(const Certificate& issuer, const KeyPair& issuer_key, std::string_view subject,
                  const KeyPair& subject_key, const Validity& validity) {
  auto& rng = Botan::system_rng();
  const auto seed = issuer_key.seed();
  const Botan::Ed25519_PrivateKey signing_key(
      Botan::secure_vector<uint8_t>(seed.begin(), seed.end()));
  const Botan::Ed25519_PublicKey pub(subject_key.publicKey().bytes().data(), 32);
  Botan::Extensions extensions;
  extensions.add(new Botan::Cert_Extension::Basic_Constraints(false, 0), true);
  extensions.add(new Botan::Cert_Extension::Key_Usage(Botan::DIGITAL_SIGNATURE), true);
  const Botan::X509_Certificate issuer_botan(issuer.der().data(), issuer.der().size());
  extensions.add(new Botan::Cert_Extension::Authority_Key_ID(issuer_botan.subject_key_id()));
  Botan::X509_DN dn;
  const auto n = name(subject);
  // Same encoding order as CCAL's (C, ST, L, O, OU, CN).
  const std::pair<const char*, std::string> parts[] = {
      {"X520.Country", n.country()},
      {"X520.State", n.state()},
      {"X520.Locality", n.locality()},
      {"X520.Organization", n.organisation()},
      {"X520.OrganizationalUnit", n.organisationUnit()},
      {"X520.CommonName", n.commonName()}};
  for (const auto& [key, value] : parts) {
    if (!value.empty()) dn.add_attribute(key, value);
  }
  Botan::AlgorithmIdentifier sig_algo;
  std::unique_ptr<Botan::PK_Signer> signer(
      Botan::choose_sig_format(signing_key, rng, "SHA-512", sig_algo));
  const auto cert = Botan::X509_CA::make_cert(
      signer.get(), rng, sig_algo, Botan::X509::BER_encode(pub),
      Botan::X509_Time(validity.not_before), Botan::X509_Time(validity.not_after),
      issuer_botan.subject_dn(), dn, extensions);
  const auto der = cert.BER_encode();
  return ok(Certificate::fromDer(Bytes(der.begin(), der.end())));
}

// A scratch directory for files handed to the openssl command.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "ccal-pki-XXXXXX").string();
    REQUIRE(mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string write(const std::string& file, const std::string& content) const {
    const auto p = path / file;
    std::ofstream(p, std::ios::binary) << content;
    return p.string();
  }
};

struct CommandResult {
  int exit_code;
  std::string output;
};

// Runs a shell command, capturing stdout and stderr.
CommandResult run(const std::string& command) {
  CommandResult r{-1, {}};
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  REQUIRE(pipe != nullptr);
  char buf[4096];
  size_t n = 0;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) r.output.append(buf, n);
  const int status = pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

std::string crlsPem(const std::vector<Crl>& crls) {
  std::string out;
  for (const auto& c : crls) out += c.pem();
  return out;
}

// `openssl verify` at the tests' "now", with every CA's revocation list checked.
CommandResult opensslVerify(const TempDir& dir, const Certificate& root,
                            const std::vector<Certificate>& chain, const Certificate& leaf,
                            const std::vector<Crl>& crls, const std::string& extra = "") {
  const auto root_file = dir.write("root.pem", root.pem());
  const auto chain_file = dir.write("chain.pem", toPem(chain));
  const auto leaf_file = dir.write("leaf.pem", leaf.pem());
  const auto crl_file = dir.write("crls.pem", crlsPem(crls));
  const auto at = duration_cast<seconds>(now.time_since_epoch()).count();
  return run("openssl verify -attime " + std::to_string(at) + " -CAfile " + root_file +
             " -untrusted " + chain_file + " -crl_check_all -CRLfile " + crl_file + " " + extra +
             " " + leaf_file);
}

}  // namespace

TEST_CASE("X.500 names parse, normalise and print canonically") {
  const auto n = name("O=Haikou Fishing Cooperative, L=Haikou, C=CN");
  CHECK(n.organisation() == "Haikou Fishing Cooperative");
  CHECK(n.locality() == "Haikou");
  CHECK(n.country() == "CN");
  CHECK(n.commonName().empty());
  CHECK(n.toString() == "O=Haikou Fishing Cooperative, L=Haikou, C=CN");

  // Any order, any key case, spaces around parts, a lower-case country: one canonical form.
  const auto m = name("  c=cn ,l = Haikou,o=Haikou Fishing Cooperative ");
  CHECK(m == n);
  CHECK(m.toString() == n.toString());

  const auto full = name("C=GB, ST=England, L=London, O=Bank, OU=Trade, CN=LC Desk");
  CHECK(full.toString() == "CN=LC Desk, OU=Trade, O=Bank, L=London, ST=England, C=GB");
  CHECK(name(full.toString()) == full);
  CHECK(name("O=海口渔业合作社, L=海口, C=CN").organisation() == "海口渔业合作社");
}

TEST_CASE("bad X.500 names are rejected with a reason") {
  auto code = [](std::string_view text) {
    auto r = X500Name::parse(text);
    return r.ok() ? Errc::ok : r.error().code;
  };
  CHECK(code("") == Errc::malformed);
  CHECK(code("O=Bank, C=GB") == Errc::malformed);  // no locality
  CHECK(X500Name::parse("O=Bank, C=GB").error().message.find("L (locality)") != std::string::npos);
  CHECK(code("O=Bank, L=London") == Errc::malformed);         // no country
  CHECK(code("L=London, C=GB") == Errc::malformed);           // no organisation
  CHECK(code("O=Bank, L=London, C=GBR") == Errc::malformed);  // not two letters
  CHECK(code("O=Bank, L=London, C=G1") == Errc::malformed);
  CHECK(code("O=Bank, L=London, C=GB, E=x@y") == Errc::malformed);    // unknown attribute
  CHECK(code("O=Bank, O=Other, L=London, C=GB") == Errc::malformed);  // twice
  CHECK(code("O=Bank, L=London, C=GB,") == Errc::malformed);          // empty part
  CHECK(code("O=Bank, London, C=GB") == Errc::malformed);             // no '='
  CHECK(code("O=, L=London, C=GB") == Errc::malformed);               // empty value
  CHECK(code("O=Bank=Evil, L=London, C=GB") == Errc::malformed);      // reserved character
  CHECK(code("O=Bank+CN=x, L=London, C=GB") == Errc::malformed);
  CHECK(code("O=Big  Bank, L=London, C=GB") == Errc::malformed);  // two spaces
  CHECK(code("O=Bank\x01, L=London, C=GB") == Errc::malformed);   // control character
  CHECK(code("O=Bank\xff, L=London, C=GB") == Errc::malformed);   // not UTF-8
  CHECK(code("O=\xc0\xaf, L=London, C=GB") == Errc::malformed);   // overlong UTF-8
  CHECK(code("O=" + std::string(65, 'a') + ", L=London, C=GB") == Errc::too_large);
  CHECK(code("O=" + std::string(64, 'a') + ", L=London, C=GB") == Errc::ok);
  CHECK(code(std::string(2000, 'a')) == Errc::too_large);
}

TEST_CASE("a full chain root -> doorman -> node CA -> identity and TLS validates") {
  const Network net;
  const auto crls = net.emptyCrls();
  CHECK(net.validate(net.identity, crls).ok());
  CHECK(net.validate(net.tls, crls).ok());
  CHECK(net.validate(net.node_ca.certificate(), crls).ok());

  // Without revocation lists: fine only when they are not required.
  CHECK(validatePath(net.identity, net.chain(), net.root.certificate(), {}, now,
                     RevocationCheck::if_listed)
            .ok());
  const auto missing = validatePath(net.identity, net.chain(), net.root.certificate(), {}, now,
                                    RevocationCheck::required);
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().code == Errc::certificate_invalid);
  CHECK(missing.error().message.find("revocation") != std::string::npos);

  // The certificates say what they are.
  CHECK(net.identity.subject() == net.node);
  CHECK(net.identity.issuer() == net.node);
  CHECK(net.node_ca.certificate().isCa());
  CHECK(net.doorman.certificate().isCa());
  CHECK_FALSE(net.identity.isCa());
  CHECK_FALSE(net.tls.isCa());
  CHECK(net.identity.validity().not_before == node_validity.not_before);
  CHECK(net.identity.validity().not_after == node_validity.not_after);
  CHECK(net.identity.serialHex() != net.tls.serialHex());
  CHECK(net.identity.fingerprint() == SecureHash::of(net.identity.der()));
}

TEST_CASE("the legal identity certificate carries the node's libsodium key") {
  const Network net;
  CHECK(ok(net.identity.publicKey()) == net.identity_key.publicKey());
  CHECK(ok(net.tls.publicKey()) == net.tls_key.publicKey());
  CHECK(ok(net.root.certificate().publicKey()) == net.root_key.publicKey());

  // A signature by the libsodium key verifies against the certificate's key.
  const auto sig = net.identity_key.sign(asBytes("deal"));
  const DigitalSignature by_cert(ok(net.identity.publicKey()), sig.bytes());
  CHECK(by_cert.verify(asBytes("deal")).ok());

  // A CA needs the private key its certificate is for.
  const auto wrong =
      CertificateAuthority::fromCertificate(net.node_ca.certificate(), net.identity_key);
  REQUIRE_FALSE(wrong.ok());
  CHECK(wrong.error().code == Errc::certificate_invalid);
  const auto not_ca = CertificateAuthority::fromCertificate(net.identity, net.identity_key);
  REQUIRE_FALSE(not_ca.ok());
  CHECK(not_ca.error().code == Errc::certificate_invalid);
}

TEST_CASE("expired and not-yet-valid certificates") {
  const Network net;
  const auto crls = net.emptyCrls();
  const TimePoint after = node_validity.not_after + hours(24);
  const auto stale_crls =
      std::vector<Crl>{ok(net.root.issueCrl({}, after - hours(1), after + hours(1))),
                       ok(net.doorman.issueCrl({}, after - hours(1), after + hours(1))),
                       ok(net.node_ca.issueCrl({}, after - hours(1), after + hours(1)))};
  const auto expired = net.validate(net.identity, stale_crls, after);
  REQUIRE_FALSE(expired.ok());
  CHECK(expired.error().code == Errc::certificate_expired);
  CHECK(expired.error().message.find("Haikou Fishing Cooperative") != std::string::npos);
  CHECK(expired.error().message.find("expired at 2028-01-01T00:00:00Z") != std::string::npos);

  // The validity period is inclusive at both ends.
  CHECK(validatePath(net.identity, net.chain(), net.root.certificate(), {}, node_validity.not_after,
                     RevocationCheck::if_listed)
            .ok());
  CHECK(validatePath(net.identity, net.chain(), net.root.certificate(), {},
                     node_validity.not_before, RevocationCheck::if_listed)
            .ok());

  const TimePoint before = node_validity.not_before - seconds(1);
  const auto early = validatePath(net.identity, net.chain(), net.root.certificate(), {}, before,
                                  RevocationCheck::if_listed);
  REQUIRE_FALSE(early.ok());
  CHECK(early.error().code == Errc::certificate_expired);
  CHECK(early.error().message.find("not valid before") != std::string::npos);

  // An out-of-date revocation list is not trusted.
  const auto old_crls = net.validate(net.identity, crls, date(2027, 8, 1));
  REQUIRE_FALSE(old_crls.ok());
  CHECK(old_crls.error().code == Errc::certificate_invalid);
  CHECK(old_crls.error().message.find("revocation list") != std::string::npos);
}

TEST_CASE("a CA does not issue outside its own validity or with an empty validity") {
  const Network net;
  const auto too_long =
      net.node_ca.issueTls(net.node, net.tls_key.publicKey(), {date(2027, 1, 1), date(2040, 1, 1)});
  REQUIRE_FALSE(too_long.ok());
  CHECK(too_long.error().code == Errc::certificate_invalid);
  const auto empty =
      net.node_ca.issueTls(net.node, net.tls_key.publicKey(), {date(2027, 1, 1), date(2027, 1, 1)});
  REQUIRE_FALSE(empty.ok());
  CHECK(empty.error().code == Errc::certificate_invalid);
  const auto root = CertificateAuthority::createRoot(net.node, net.root_key,
                                                     {date(2027, 1, 1), date(2026, 1, 1)});
  REQUIRE_FALSE(root.ok());
}

TEST_CASE("revocation: identity revoked by the node CA, node CA revoked by the doorman") {
  const Network net;
  auto crls = net.emptyCrls();
  const Crl node_crl = ok(net.node_ca.issueCrl(std::vector<Certificate>{net.identity},
                                               date(2027, 5, 2), date(2027, 7, 1), &crls[2]));
  CHECK(node_crl.number() == crls[2].number() + 1);
  CHECK(node_crl.lists(net.identity));
  CHECK_FALSE(node_crl.lists(net.tls));
  CHECK(node_crl.issuer() == net.node);

  const std::vector<Crl> with_identity_revoked{crls[0], crls[1], node_crl};
  const auto revoked = net.validate(net.identity, with_identity_revoked);
  REQUIRE_FALSE(revoked.ok());
  CHECK(revoked.error().code == Errc::certificate_revoked);
  CHECK(revoked.error().message.find(net.identity.serialHex()) != std::string::npos);
  CHECK(revoked.error().message.find("Haikou Fishing Cooperative") != std::string::npos);
  // The TLS certificate of the same node CA is unaffected.
  CHECK(net.validate(net.tls, with_identity_revoked).ok());
  // The older, empty list is superseded by the newer one when both are given.
  auto both = with_identity_revoked;
  both.push_back(crls[2]);
  CHECK(net.validate(net.identity, both).error().code == Errc::certificate_revoked);

  // A later list keeps the earlier entries.
  const Crl later = ok(net.node_ca.issueCrl(std::vector<Certificate>{net.tls}, date(2027, 5, 3),
                                            date(2027, 7, 1), &node_crl));
  CHECK(later.number() == node_crl.number() + 1);
  CHECK(later.revokedCount() == 2);
  CHECK(later.lists(net.identity));
  CHECK(later.lists(net.tls));

  // Revoking the node CA at the doorman revokes everything under it.
  const Crl doorman_crl = ok(net.doorman.issueCrl(
      std::vector<Certificate>{net.node_ca.certificate()}, date(2027, 5, 2), date(2027, 7, 1)));
  const std::vector<Crl> with_node_ca_revoked{crls[0], doorman_crl, crls[2]};
  for (const auto* leaf : {&net.identity, &net.tls}) {
    const auto status = net.validate(*leaf, with_node_ca_revoked);
    REQUIRE_FALSE(status.ok());
    CHECK(status.error().code == Errc::certificate_revoked);
    CHECK(status.error().message.find(net.node_ca.certificate().serialHex()) != std::string::npos);
  }

  // A CA revokes only what it issued, and continues only its own lists.
  const auto foreign = net.node_ca.issueCrl(std::vector<Certificate>{net.node_ca.certificate()},
                                            date(2027, 5, 2), date(2027, 7, 1));
  REQUIRE_FALSE(foreign.ok());
  CHECK(foreign.error().code == Errc::certificate_invalid);
  const auto not_ours = net.doorman.issueCrl({}, date(2027, 5, 2), date(2027, 7, 1), &node_crl);
  REQUIRE_FALSE(not_ours.ok());
  CHECK(not_ours.error().code == Errc::certificate_invalid);
}

TEST_CASE("a revocation list signed by another key is not trusted") {
  const Network net;
  auto crls = net.emptyCrls();
  // A CA with the node CA's name but another key.
  const KeyPair impostor_key = keyFromByte(9);
  const auto impostor = ok(CertificateAuthority::createRoot(net.node, impostor_key, ca_validity));
  crls[2] = ok(impostor.issueCrl({}, date(2027, 5, 1), date(2027, 7, 1)));
  const auto status = net.validate(net.identity, crls);
  REQUIRE_FALSE(status.ok());
  CHECK(status.error().code == Errc::certificate_invalid);
  CHECK(status.error().message.find("not signed") != std::string::npos);
}

TEST_CASE("wrong issuer, missing intermediate and foreign roots are rejected") {
  const Network net;
  const auto crls = net.emptyCrls();

  // The doorman is missing from the intermediates.
  const auto missing =
      validatePath(net.identity, std::vector<Certificate>{net.node_ca.certificate()},
                   net.root.certificate(), crls, now, RevocationCheck::required);
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().code == Errc::certificate_invalid);
  CHECK(missing.error().message.find("no certificate path") != std::string::npos);

  // A foreign root with another name.
  const KeyPair other_root_key = keyFromByte(11);
  const auto other_root = ok(CertificateAuthority::createRoot(
      name("O=Other Network, L=Paris, C=FR"), other_root_key, ca_validity));
  const auto foreign = validatePath(net.identity, net.chain(), other_root.certificate(), crls, now,
                                    RevocationCheck::required);
  REQUIRE_FALSE(foreign.ok());
  CHECK(foreign.error().code == Errc::certificate_invalid);
  CHECK(foreign.error().message.find("O=Other Network") != std::string::npos);

  // A foreign root with the same name as ours but another key.
  const auto lookalike = ok(CertificateAuthority::createRoot(net.root.certificate().subject(),
                                                             other_root_key, ca_validity));
  const auto status = validatePath(net.identity, net.chain(), lookalike.certificate(), crls, now,
                                   RevocationCheck::required);
  REQUIRE_FALSE(status.ok());
  CHECK(status.error().code == Errc::certificate_invalid);

  // A whole foreign hierarchy for the same node name does not validate against our root.
  const KeyPair other_doorman_key = keyFromByte(12);
  const auto other_doorman = ok(CertificateAuthority::fromCertificate(
      ok(lookalike.issueIntermediate(net.doorman.certificate().subject(),
                                     other_doorman_key.publicKey(), ca_validity)),
      other_doorman_key));
  const auto other_node_ca = ok(CertificateAuthority::fromCertificate(
      ok(other_doorman.issueNodeCa(net.node, net.node_ca_key.publicKey(), ca_validity)),
      net.node_ca_key));
  const auto other_identity =
      ok(other_node_ca.issueLegalIdentity(net.node, net.identity_key.publicKey(), node_validity));
  const auto mixed = validatePath(
      other_identity,
      std::vector<Certificate>{other_doorman.certificate(), other_node_ca.certificate()},
      net.root.certificate(), crls, now, RevocationCheck::if_listed);
  REQUIRE_FALSE(mixed.ok());
  CHECK(mixed.error().code == Errc::certificate_invalid);

  // An end-entity certificate cannot act as a CA.
  const auto under_identity =
      forge(net.identity, net.identity_key, "O=Haikou Fishing Cooperative, L=Haikou, C=CN",
            net.tls_key, node_validity);
  const auto not_ca = validatePath(
      under_identity,
      std::vector<Certificate>{net.doorman.certificate(), net.node_ca.certificate(), net.identity},
      net.root.certificate(), crls, now, RevocationCheck::if_listed);
  REQUIRE_FALSE(not_ca.ok());
  CHECK(not_ca.error().code == Errc::certificate_invalid);
  CHECK(not_ca.error().message.find("not a CA") != std::string::npos);
}

TEST_CASE("a node CA may only issue for its own name") {
  const Network net;
  const auto crls = net.emptyCrls();
  const auto a = name("O=A, L=X, C=GB");
  const KeyPair a_key = keyFromByte(21);
  const auto node_ca_a = ok(CertificateAuthority::fromCertificate(
      ok(net.doorman.issueNodeCa(a, a_key.publicKey(), ca_validity)), a_key));

  // CCAL's CA refuses to issue outside its constraints.
  const auto refused = node_ca_a.issueLegalIdentity(name("O=B, L=X, C=GB"),
                                                    net.identity_key.publicKey(), node_validity);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().code == Errc::name_constraint);
  CHECK(
      ok(node_ca_a.issueLegalIdentity(a, net.identity_key.publicKey(), node_validity)).subject() ==
      a);
  // A node CA issues no CAs.
  const auto sub_ca = node_ca_a.issueNodeCa(a, net.tls_key.publicKey(), ca_validity);
  REQUIRE_FALSE(sub_ca.ok());
  CHECK(sub_ca.error().code == Errc::certificate_invalid);

  // A certificate the node CA's key signed for another name anyway fails validation.
  const std::vector<Certificate> chain{net.doorman.certificate(), node_ca_a.certificate()};
  const std::vector<Crl> crls_a{crls[0], crls[1],
                                ok(node_ca_a.issueCrl({}, date(2027, 5, 1), date(2027, 7, 1)))};
  for (const char* other : {"O=B, L=X, C=GB", "O=A, L=Y, C=GB", "CN=Bank, O=A, L=X, C=GB",
                            "O=A, L=X, ST=Kent, C=GB", "O=A, L=X, C=FR"}) {
    CAPTURE(other);
    const auto forged =
        forge(node_ca_a.certificate(), a_key, other, net.identity_key, node_validity);
    const auto status =
        validatePath(forged, chain, net.root.certificate(), crls_a, now, RevocationCheck::required);
    REQUIRE_FALSE(status.ok());
    CHECK(status.error().code == Errc::name_constraint);
    CHECK(status.error().message.find(name(other).toString()) != std::string::npos);
  }
  const auto own =
      forge(node_ca_a.certificate(), a_key, "O=A, L=X, C=GB", net.identity_key, node_validity);
  CHECK(validatePath(own, chain, net.root.certificate(), crls_a, now, RevocationCheck::required)
            .ok());
}

TEST_CASE("certificates and revocation lists round-trip through PEM and DER") {
  const Network net;
  const auto crl = ok(net.node_ca.issueCrl(std::vector<Certificate>{net.identity}, date(2027, 5, 1),
                                           date(2027, 7, 1)));

  const auto from_der = ok(Certificate::fromDer(net.identity.der()));
  CHECK(from_der == net.identity);
  CHECK(from_der.subject() == net.node);
  const auto from_pem = ok(Certificate::fromPem(net.identity.pem()));
  CHECK(from_pem == net.identity);
  CHECK(from_pem.pem() == net.identity.pem());
  CHECK_FALSE(net.identity == net.tls);

  const auto crl_der = ok(Crl::fromDer(crl.der()));
  CHECK(crl_der.der() == crl.der());
  CHECK(crl_der.lists(net.identity));
  CHECK(crl_der.thisUpdate() == date(2027, 5, 1));
  CHECK(crl_der.nextUpdate() == date(2027, 7, 1));
  CHECK(ok(Crl::fromPem(crl.pem())).der() == crl.der());

  const auto bundle = toPem(net.chain());
  const auto certs = ok(certificatesFromPem(bundle));
  REQUIRE(certs.size() == 2);
  CHECK(certs[0] == net.doorman.certificate());
  CHECK(certs[1] == net.node_ca.certificate());
  CHECK_FALSE(Certificate::fromPem(bundle).ok());  // two blocks where one is expected

  const auto key_pem = privateKeyPem(net.tls_key);
  CHECK(key_pem.find("-----BEGIN PRIVATE KEY-----") == 0);
  CHECK(ok(keyPairFromPem(key_pem)).publicKey() == net.tls_key.publicKey());
}

TEST_CASE("malformed certificate, CRL and key bytes give Errc::malformed") {
  const Network net;
  const Bytes der = net.identity.der();
  const auto crl = ok(net.node_ca.issueCrl({}, date(2027, 5, 1), date(2027, 7, 1)));

  auto cert_code = [](ByteView bytes) {
    auto r = Certificate::fromDer(bytes);
    return r.ok() ? Errc::ok : r.error().code;
  };
  CHECK(cert_code(Bytes{}) == Errc::malformed);
  CHECK(cert_code(asBytes("not a certificate")) == Errc::malformed);
  CHECK(cert_code(Bytes{0x30}) == Errc::malformed);
  CHECK(cert_code(Bytes{0x30, 0x82, 0xff, 0xff}) == Errc::malformed);
  CHECK(cert_code(Bytes(der.begin(), der.begin() + der.size() / 2)) == Errc::malformed);
  Bytes trailing = der;
  trailing.push_back(0);
  CHECK(cert_code(trailing) == Errc::malformed);
  CHECK(cert_code(Bytes(Certificate::encoded_bytes_max + 1, 0x30)) == Errc::too_large);
  CHECK(cert_code(crl.der()) == Errc::malformed);  // a CRL is not a certificate
  // A certificate's PEM text is not DER.
  CHECK(cert_code(asBytes(net.identity.pem())) == Errc::malformed);

  // Every single-byte corruption decodes to an error or to a different certificate, never
  // to a crash or an escaped exception; the signature check catches what decodes.
  const auto crls = net.emptyCrls();
  size_t decoded = 0;
  for (size_t i = 0; i < der.size(); ++i) {
    Bytes bad = der;
    bad[i] ^= 0x5a;
    auto r = Certificate::fromDer(bad);
    if (!r.ok()) {
      CHECK((r.error().code == Errc::malformed || r.error().code == Errc::too_large));
      continue;
    }
    ++decoded;
    (void)r->publicKey();
    CHECK_FALSE(net.validate(*r, crls).ok());
  }
  CHECK(decoded > 0);  // so the validation above ran

  auto crl_code = [](ByteView bytes) {
    auto r = Crl::fromDer(bytes);
    return r.ok() ? Errc::ok : r.error().code;
  };
  CHECK(crl_code(Bytes{}) == Errc::malformed);
  CHECK(crl_code(der) == Errc::malformed);  // a certificate is not a CRL
  const Bytes crl_der = crl.der();
  CHECK(crl_code(Bytes(crl_der.begin(), crl_der.end() - 3)) == Errc::malformed);
  for (size_t i = 0; i < crl_der.size(); ++i) {
    Bytes bad = crl_der;
    bad[i] ^= 0xa5;
    (void)Crl::fromDer(bad);
  }

  auto pem_code = [](std::string_view pem) {
    auto r = Certificate::fromPem(pem);
    return r.ok() ? Errc::ok : r.error().code;
  };
  const std::string pem = net.identity.pem();
  CHECK(pem_code("") == Errc::malformed);
  CHECK(pem_code("hello") == Errc::malformed);
  CHECK(pem_code("junk\n" + pem) == Errc::malformed);
  CHECK(pem_code(pem + "junk") == Errc::malformed);
  CHECK(pem_code("\n  " + pem + "\n\n") == Errc::ok);
  CHECK(pem_code(pem.substr(0, pem.size() / 2)) == Errc::malformed);
  std::string bad_base64 = pem;
  bad_base64[40] = '*';
  CHECK(pem_code(bad_base64) == Errc::malformed);
  CHECK(pem_code(crl.pem()) == Errc::malformed);  // wrong label
  CHECK(pem_code("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n") ==
        Errc::malformed);
  CHECK_FALSE(Crl::fromPem(pem).ok());
  CHECK_FALSE(certificatesFromPem("").ok());

  CHECK(keyPairFromPem("").error().code == Errc::malformed);
  CHECK(keyPairFromPem(pem).error().code == Errc::malformed);
  CHECK(keyPairFromPem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
            .error()
            .code == Errc::malformed);
}

TEST_CASE("openssl verify agrees: valid, revoked, foreign and name-constraint-violating chains") {
  REQUIRE(run("openssl version").exit_code == 0);
  const Network net;
  const TempDir dir;
  const auto crls = net.emptyCrls();
  const auto root = net.root.certificate();

  // Valid chains, with every CA's revocation list checked.
  auto r = opensslVerify(dir, root, net.chain(), net.identity, crls);
  CHECK_MESSAGE(r.exit_code == 0, r.output);
  r = opensslVerify(dir, root, net.chain(), net.tls, crls, "-purpose sslserver");
  CHECK_MESSAGE(r.exit_code == 0, r.output);
  r = opensslVerify(dir, root, net.chain(), net.tls, crls, "-purpose sslclient");
  CHECK_MESSAGE(r.exit_code == 0, r.output);
  r = opensslVerify(dir, root, net.chain(), net.tls, crls, "-x509_strict");
  CHECK_MESSAGE(r.exit_code == 0, r.output);

  // Revoked identity, revoked node CA.
  const auto node_crl = ok(net.node_ca.issueCrl(std::vector<Certificate>{net.identity},
                                                date(2027, 5, 2), date(2027, 7, 1)));
  r = opensslVerify(dir, root, net.chain(), net.identity, {crls[0], crls[1], node_crl});
  CHECK(r.exit_code != 0);
  CHECK_MESSAGE(r.output.find("revoked") != std::string::npos, r.output);
  r = opensslVerify(dir, root, net.chain(), net.tls, {crls[0], crls[1], node_crl});
  CHECK_MESSAGE(r.exit_code == 0, r.output);
  const auto doorman_crl = ok(net.doorman.issueCrl(
      std::vector<Certificate>{net.node_ca.certificate()}, date(2027, 5, 2), date(2027, 7, 1)));
  r = opensslVerify(dir, root, net.chain(), net.identity, {crls[0], doorman_crl, crls[2]});
  CHECK(r.exit_code != 0);
  CHECK_MESSAGE(r.output.find("revoked") != std::string::npos, r.output);

  // A foreign root, with another name and with ours.
  const KeyPair other_key = keyFromByte(11);
  const auto other_root = ok(CertificateAuthority::createRoot(
      name("O=Other Network, L=Paris, C=FR"), other_key, ca_validity));
  r = opensslVerify(dir, other_root.certificate(), net.chain(), net.identity, crls);
  CHECK(r.exit_code != 0);
  const auto lookalike =
      ok(CertificateAuthority::createRoot(root.subject(), other_key, ca_validity));
  r = opensslVerify(dir, lookalike.certificate(), net.chain(), net.identity, crls);
  CHECK(r.exit_code != 0);

  // Expired and not yet valid, through -attime (given last, it overrides the default).
  const auto after =
      duration_cast<seconds>((node_validity.not_after + hours(1)).time_since_epoch());
  r = run("openssl verify -CAfile " + dir.write("root.pem", root.pem()) + " -untrusted " +
          dir.write("chain.pem", toPem(net.chain())) + " -attime " + std::to_string(after.count()) +
          " " + dir.write("leaf.pem", net.identity.pem()));
  CHECK(r.exit_code != 0);
  CHECK_MESSAGE(r.output.find("expired") != std::string::npos, r.output);
  const auto before =
      duration_cast<seconds>((node_validity.not_before - hours(1)).time_since_epoch());
  r = run("openssl verify -CAfile " + dir.write("root.pem", root.pem()) + " -untrusted " +
          dir.write("chain.pem", toPem(net.chain())) + " -attime " +
          std::to_string(before.count()) + " " + dir.write("leaf.pem", net.identity.pem()));
  CHECK(r.exit_code != 0);
  CHECK_MESSAGE(r.output.find("not yet valid") != std::string::npos, r.output);

  // The node CA for "O=A, L=X, C=GB" signing for "O=B, L=X, C=GB".
  const KeyPair a_key = keyFromByte(21);
  const auto node_ca_a = ok(CertificateAuthority::fromCertificate(
      ok(net.doorman.issueNodeCa(name("O=A, L=X, C=GB"), a_key.publicKey(), ca_validity)), a_key));
  const std::vector<Certificate> chain_a{net.doorman.certificate(), node_ca_a.certificate()};
  const std::vector<Crl> crls_a{crls[0], crls[1],
                                ok(node_ca_a.issueCrl({}, date(2027, 5, 1), date(2027, 7, 1)))};
  const auto own = ok(node_ca_a.issueLegalIdentity(name("O=A, L=X, C=GB"),
                                                   net.identity_key.publicKey(), node_validity));
  r = opensslVerify(dir, root, chain_a, own, crls_a);
  CHECK_MESSAGE(r.exit_code == 0, r.output);
  const auto violator =
      forge(node_ca_a.certificate(), a_key, "O=B, L=X, C=GB", net.identity_key, node_validity);
  r = opensslVerify(dir, root, chain_a, violator, crls_a);
  CHECK(r.exit_code != 0);
  CHECK_MESSAGE(r.output.find("permitted subtree violation") != std::string::npos, r.output);
  // RFC 5280 lets a directoryName subtree include names below it, and OpenSSL follows it;
  // CCAL's validatePath does not (see the test above).
  const auto below = forge(node_ca_a.certificate(), a_key, "CN=Bank, O=A, L=X, C=GB",
                           net.identity_key, node_validity);
  r = opensslVerify(dir, root, chain_a, below, crls_a);
  CHECK_MESSAGE(r.exit_code == 0, r.output);
}

TEST_CASE("OpenSSL reads the TLS certificate, its key usages and its PKCS#8 key") {
  REQUIRE(run("openssl version").exit_code == 0);
  const Network net;
  const TempDir dir;
  const auto cert_file = dir.write("tls.pem", net.tls.pem());
  const auto key_file = dir.write("tls.key", privateKeyPem(net.tls_key));

  auto r = run("openssl x509 -in " + cert_file + " -noout -text");
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  CHECK(r.output.find("ED25519") != std::string::npos);
  CHECK(r.output.find("TLS Web Server Authentication") != std::string::npos);
  CHECK(r.output.find("TLS Web Client Authentication") != std::string::npos);
  CHECK(r.output.find("Digital Signature") != std::string::npos);
  CHECK(r.output.find("CA:FALSE") != std::string::npos);
  CHECK(r.output.find("O = Haikou Fishing Cooperative") != std::string::npos);

  r = run("openssl pkey -in " + key_file + " -noout -text");
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  CHECK(r.output.find("ED25519 Private-Key") != std::string::npos);

  // The key file holds the certificate's key.
  const auto cert_pub = run("openssl x509 -in " + cert_file + " -noout -pubkey");
  const auto key_pub = run("openssl pkey -in " + key_file + " -pubout");
  REQUIRE(cert_pub.exit_code == 0);
  REQUIRE(key_pub.exit_code == 0);
  CHECK(cert_pub.output == key_pub.output);

  // And what OpenSSL writes, CCAL reads.
  r = run("openssl genpkey -algorithm ed25519 -out " + (dir.path / "gen.key").string());
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  std::ifstream in(dir.path / "gen.key");
  const std::string generated((std::istreambuf_iterator<char>(in)), {});
  const auto pair = ok(keyPairFromPem(generated));
  CHECK(privateKeyPem(pair) == generated);

  // The node CA shows its name constraint.
  r = run("openssl x509 -in " + dir.write("nodeca.pem", net.node_ca.certificate().pem()) +
          " -noout -text");
  REQUIRE(r.exit_code == 0);
  CHECK(r.output.find("X509v3 Name Constraints: critical") != std::string::npos);
  CHECK(r.output.find("DirName:C = CN, L = Haikou, O = Haikou Fishing Cooperative") !=
        std::string::npos);
  CHECK(r.output.find("pathlen:0") != std::string::npos);
}

TEST_CASE("certificates with non-Ed25519 keys are decoded but not accepted") {
  REQUIRE(run("openssl version").exit_code == 0);
  const Network net;
  const TempDir dir;
  const auto key = (dir.path / "ec.key").string();
  const auto cert = (dir.path / "ec.pem").string();
  const auto r =
      run("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
          "-subj '/C=GB/L=London/O=Elliptic Bank' -days 1 -keyout " +
          key + " -out " + cert);
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  std::ifstream in(cert);
  const std::string pem((std::istreambuf_iterator<char>(in)), {});
  const auto ec = ok(Certificate::fromPem(pem));
  CHECK(ec.subject() == name("O=Elliptic Bank, L=London, C=GB"));
  const auto pub = ec.publicKey();
  REQUIRE_FALSE(pub.ok());
  CHECK(pub.error().code == Errc::unknown_scheme);
  CHECK(pub.error().message.find("Ed25519") != std::string::npos);

  const auto status =
      validatePath(ec, {}, ec, {}, TimePoint(ec.validity().not_before), RevocationCheck::if_listed);
  REQUIRE_FALSE(status.ok());
  CHECK(status.error().code == Errc::certificate_invalid);
  CHECK(status.error().message.find("Ed25519") != std::string::npos);

  std::ifstream key_in(key);
  const std::string key_pem((std::istreambuf_iterator<char>(key_in)), {});
  const auto not_ed = keyPairFromPem(key_pem);
  REQUIRE_FALSE(not_ed.ok());
  CHECK(not_ed.error().code == Errc::unknown_scheme);
}
