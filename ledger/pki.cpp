#include "ledger/pki.h"

#include <botan/ber_dec.h>
#include <botan/bigint.h>
#include <botan/data_src.h>
#include <botan/der_enc.h>
#include <botan/ed25519.h>
#include <botan/pem.h>
#include <botan/pk_keys.h>
#include <botan/pkcs8.h>
#include <botan/pubkey.h>
#include <botan/system_rng.h>
#include <botan/x509_ca.h>
#include <botan/x509_crl.h>
#include <botan/x509_ext.h>
#include <botan/x509_key.h>
#include <botan/x509cert.h>
#include <botan/x509path.h>

#include <algorithm>
#include <ctime>
#include <map>
#include <new>
#include <optional>

namespace ccal {

namespace {
// The attributes a CCAL name may carry, in the order they are DER-encoded (most general
// first, as X.500 builders do); toString() lists them the other way round.
enum class Attr : uint8_t { c, st, l, o, ou, cn };

// The values by attribute, before checking.
using AttrValues = std::map<Attr, std::string>;
}  // namespace

namespace detail {

struct CertificateData {
  std::shared_ptr<const Botan::X509_Certificate> botan;
  Bytes der;
  X500Name subject;
  X500Name issuer;
};

struct CrlData {
  std::shared_ptr<const Botan::X509_CRL> botan;
  Bytes der;
  X500Name issuer;
};

struct CaData {
  Certificate certificate;
  PublicKey public_key;
  std::unique_ptr<Botan::Ed25519_PrivateKey> private_key;
};

struct PkiAccess {
  static const CertificateData& data(const Certificate& c) { return *c.data_; }
  static const CrlData& data(const Crl& c) { return *c.data_; }
  static Certificate make(std::shared_ptr<const CertificateData> d) {
    return Certificate(std::move(d));
  }
  static Crl make(std::shared_ptr<const CrlData> d) { return Crl(std::move(d)); }
  // The values must have passed checkValue.
  static X500Name makeName(AttrValues values) {
    X500Name n;
    n.country_ = std::move(values[Attr::c]);
    n.state_ = std::move(values[Attr::st]);
    n.locality_ = std::move(values[Attr::l]);
    n.organisation_ = std::move(values[Attr::o]);
    n.organisation_unit_ = std::move(values[Attr::ou]);
    n.common_name_ = std::move(values[Attr::cn]);
    return n;
  }
};

}  // namespace detail

namespace {

using detail::PkiAccess;

const Botan::X509_Certificate& botanOf(const Certificate& c) {
  return *PkiAccess::data(c).botan;
}
const Botan::X509_CRL& botanOf(const Crl& c) {
  return *PkiAccess::data(c).botan;
}

// ---------------------------------------------------------------------------------------------
// X.500 names

struct AttrInfo {
  Attr attr;
  const char* key;
  const char* oid;
  const char* what;
  bool required;
};

constexpr AttrInfo attr_infos[] = {
    {Attr::c, "C", "2.5.4.6", "country", true},
    {Attr::st, "ST", "2.5.4.8", "state", false},
    {Attr::l, "L", "2.5.4.7", "locality", true},
    {Attr::o, "O", "2.5.4.10", "organisation", true},
    {Attr::ou, "OU", "2.5.4.11", "organisation unit", false},
    {Attr::cn, "CN", "2.5.4.3", "common name", false},
};

const AttrInfo* attrByKey(std::string_view upper_key) {
  for (const auto& info : attr_infos) {
    if (upper_key == info.key) return &info;
  }
  return nullptr;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

std::string upper(std::string_view s) {
  std::string out(s);
  for (char& ch : out) {
    if (ch >= 'a' && ch <= 'z') ch = static_cast<char>(ch - 'a' + 'A');
  }
  return out;
}

// Counts UTF-8 code points; nullopt for invalid UTF-8 (overlong forms, surrogates, > U+10FFFF,
// truncated sequences) or a control character (C0, DEL, C1).
std::optional<size_t> countPrintableCodePoints(std::string_view s) {
  size_t count = 0;
  size_t i = 0;
  while (i < s.size()) {
    const auto b0 = static_cast<uint8_t>(s[i]);
    uint32_t cp = 0;
    size_t len = 0;
    if (b0 < 0x80) {
      cp = b0;
      len = 1;
    } else if ((b0 & 0xe0) == 0xc0) {
      cp = b0 & 0x1f;
      len = 2;
    } else if ((b0 & 0xf0) == 0xe0) {
      cp = b0 & 0x0f;
      len = 3;
    } else if ((b0 & 0xf8) == 0xf0) {
      cp = b0 & 0x07;
      len = 4;
    } else {
      return std::nullopt;
    }
    if (i + len > s.size()) return std::nullopt;
    for (size_t k = 1; k < len; ++k) {
      const auto b = static_cast<uint8_t>(s[i + k]);
      if ((b & 0xc0) != 0x80) return std::nullopt;
      cp = cp << 6 | (b & 0x3f);
    }
    static constexpr uint32_t min_for_len[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_for_len[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
      return std::nullopt;
    }
    if (cp < 0x20 || (cp >= 0x7f && cp <= 0x9f)) return std::nullopt;
    i += len;
    ++count;
  }
  return count;
}

Status checkValue(const AttrInfo& info, std::string_view value) {
  const std::string where = std::string("X.500 attribute ") + info.key + " (" + info.what + ")";
  if (value.empty()) return makeError(Errc::malformed, where + " is empty");
  const auto chars = countPrintableCodePoints(value);
  if (!chars) {
    return makeError(Errc::malformed, where + " is not UTF-8 text without control characters");
  }
  if (*chars > X500Name::value_chars_max) {
    return makeError(Errc::too_large, where + " has " + std::to_string(*chars) +
                                          " characters, over the limit of " +
                                          std::to_string(X500Name::value_chars_max));
  }
  if (value.front() == ' ' || value.back() == ' ') {
    return makeError(Errc::malformed,
                     where + " '" + std::string(value) + "' starts or ends with a space");
  }
  if (value.find("  ") != std::string_view::npos) {
    return makeError(Errc::malformed,
                     where + " '" + std::string(value) + "' has two spaces in a row");
  }
  const auto bad = value.find_first_of(",=+\"\\<>;#");
  if (bad != std::string_view::npos) {
    return makeError(Errc::malformed, where + " '" + std::string(value) +
                                          "' contains the reserved character '" + value[bad] + "'");
  }
  if (info.attr == Attr::c) {
    if (value.size() != 2 || value[0] < 'A' || value[0] > 'Z' || value[1] < 'A' || value[1] > 'Z') {
      return makeError(Errc::malformed, where + " '" + std::string(value) +
                                            "' is not a two-letter ISO 3166 country code");
    }
  }
  return {};
}

std::string toBotanOid(Attr a) {
  for (const auto& info : attr_infos) {
    if (info.attr == a) return info.oid;
  }
  CCAL_ASSERT_MSG(false, "unknown X.500 attribute");
  return {};
}

Botan::X509_DN toBotanDn(const X500Name& name) {
  Botan::X509_DN dn;
  const std::pair<Attr, const std::string*> parts[] = {
      {Attr::c, &name.country()},           {Attr::st, &name.state()},
      {Attr::l, &name.locality()},          {Attr::o, &name.organisation()},
      {Attr::ou, &name.organisationUnit()}, {Attr::cn, &name.commonName()},
  };
  for (const auto& [attr, value] : parts) {
    if (!value->empty()) dn.add_attribute(Botan::OID(toBotanOid(attr)), *value);
  }
  return dn;
}

// ---------------------------------------------------------------------------------------------
// Small helpers

std::string formatTime(TimePoint t) {
  const std::time_t tt = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[32];
  const size_t n = std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return std::string(buf, n);
}

std::string quoted(const X500Name& name) {
  return "'" + name.toString() + "'";
}

const Botan::OID& ed25519Oid() {
  static const Botan::OID oid("1.3.101.112");
  return oid;
}

const Botan::OID& nameConstraintsOid() {
  static const Botan::OID oid("2.5.29.30");
  return oid;
}

std::string oidName(const Botan::OID& oid) {
  try {
    return oid.to_formatted_string();
  } catch (const std::exception&) {
    return oid.to_string();
  }
}

Bytes toBytes(const std::vector<uint8_t>& v) {
  return Bytes(v.begin(), v.end());
}

// Rethrows std::bad_alloc (an operational failure) and turns any other exception from Botan
// into an Error: no Botan exception may leave this file.
template <class F>
auto guarded(Errc code, const std::string& what, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const std::bad_alloc&) {
    throw;
  } catch (const std::exception& e) {
    return makeError(code, what + ": " + e.what());
  }
}

std::unique_ptr<Botan::Ed25519_PrivateKey> botanPrivateKey(const KeyPair& key) {
  const auto seed = key.seed();
  Botan::secure_vector<uint8_t> bytes(seed.begin(), seed.end());
  auto botan = std::make_unique<Botan::Ed25519_PrivateKey>(bytes);
  const auto& pub = botan->get_public_key();
  // libsodium and Botan both implement RFC 8032 key derivation: a mismatch is a bug.
  CCAL_ASSERT_MSG(pub.size() == PublicKey::ed25519_bytes &&
                      std::equal(pub.begin(), pub.end(), key.publicKey().bytes().begin()),
                  "Botan and libsodium derive different Ed25519 public keys from one seed");
  return botan;
}

// ---------------------------------------------------------------------------------------------
// Name constraints

// Botan 2.19 decodes and checks the Name Constraints extension but cannot encode it (its
// GeneralSubtree::encode_into throws Not_Implemented), so CCAL writes the extension itself.
// It holds only permitted directoryName subtrees.
class DirectoryNameConstraints final : public Botan::Certificate_Extension {
 public:
  explicit DirectoryNameConstraints(std::vector<Botan::X509_DN> permitted)
      : permitted_(std::move(permitted)) {}

  Botan::OID oid_of() const override { return nameConstraintsOid(); }
  std::string oid_name() const override { return "X509v3.NameConstraints"; }
  Botan::Certificate_Extension* copy() const override {
    return new DirectoryNameConstraints(permitted_);
  }
  void contents_to(Botan::Data_Store&, Botan::Data_Store&) const override {}

 private:
  // NameConstraints ::= SEQUENCE { permittedSubtrees [0] GeneralSubtrees OPTIONAL, ... }
  // GeneralSubtree ::= SEQUENCE { base GeneralName, minimum [0] DEFAULT 0, ... }
  // GeneralName: directoryName [4] Name, explicitly tagged because Name is a CHOICE.
  std::vector<uint8_t> encode_inner() const override {
    std::vector<uint8_t> out;
    Botan::DER_Encoder der(out);
    der.start_cons(Botan::SEQUENCE).start_cons(Botan::ASN1_Tag(0), Botan::CONTEXT_SPECIFIC);
    for (const auto& dn : permitted_) {
      der.start_cons(Botan::SEQUENCE)
          .start_cons(Botan::ASN1_Tag(4), Botan::CONTEXT_SPECIFIC)
          .encode(dn)
          .end_cons()
          .end_cons();
    }
    der.end_cons().end_cons();
    return out;
  }
  // Never called: certificates are decoded by Botan's own Name_Constraints class.
  void decode_inner(const std::vector<uint8_t>&) override {
    throw Botan::Not_Implemented("DirectoryNameConstraints decoding");
  }

  std::vector<Botan::X509_DN> permitted_;
};

struct DnConstraints {
  std::vector<Botan::X509_DN> permitted;
  std::vector<Botan::X509_DN> excluded;
};

// The directoryName subtrees of a certificate's Name Constraints extension (other name
// forms are left to Botan). Throws Botan::Decoding_Error on a malformed extension.
std::optional<DnConstraints> readDnConstraints(const Botan::X509_Certificate& cert) {
  const auto& extensions = cert.v3_extensions();
  if (!extensions.extension_set(nameConstraintsOid())) return std::nullopt;
  DnConstraints out;
  Botan::BER_Decoder outer(extensions.get_extension_bits(nameConstraintsOid()));
  Botan::BER_Decoder seq = outer.start_cons(Botan::SEQUENCE);
  while (seq.more_items()) {
    Botan::BER_Object subtrees = seq.get_next_object();
    const auto cons = Botan::ASN1_Tag(Botan::CONTEXT_SPECIFIC | Botan::CONSTRUCTED);
    std::vector<Botan::X509_DN>* into = nullptr;
    if (subtrees.is_a(0, cons)) {
      into = &out.permitted;
    } else if (subtrees.is_a(1, cons)) {
      into = &out.excluded;
    } else {
      throw Botan::Decoding_Error("unexpected field in the Name Constraints extension");
    }
    Botan::BER_Decoder list(subtrees);
    while (list.more_items()) {
      Botan::BER_Decoder subtree = list.start_cons(Botan::SEQUENCE);
      Botan::BER_Object base = subtree.get_next_object();
      if (base.is_a(4, cons)) {
        Botan::BER_Decoder name(base);
        Botan::X509_DN dn;
        dn.decode_from(name);
        into->push_back(std::move(dn));
      }
    }
  }
  return out;
}

// RFC 5280 4.2.1.10: a name is within a directoryName subtree when its RDN sequence starts
// with the subtree's. Values compare byte for byte (CCAL names have one spelling), which is
// at least as strict as RFC 4518 matching.
bool dnWithin(const Botan::X509_DN& name, const Botan::X509_DN& subtree) {
  const auto& n = name.dn_info();
  const auto& s = subtree.dn_info();
  if (s.size() > n.size()) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    if (n[i].first != s[i].first || n[i].second.value() != s[i].second.value()) return false;
  }
  return true;
}

// CCAL is stricter than RFC 5280 for permitted subtrees: the name must be the permitted name
// itself, not merely below it. Otherwise a node CA for "O=A, L=X, C=GB" could issue for
// "CN=Bank, O=A, L=X, C=GB", a different party in CCAL (OpenSSL would accept that).
bool dnPermitted(const Botan::X509_DN& name, const DnConstraints& c) {
  for (const auto& ex : c.excluded) {
    if (dnWithin(name, ex)) return false;
  }
  if (c.permitted.empty()) return true;
  return std::any_of(c.permitted.begin(), c.permitted.end(), [&](const Botan::X509_DN& p) {
    return name.dn_info().size() == p.dn_info().size() && dnWithin(name, p);
  });
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// X500Name

namespace {

Result<X500Name> buildName(AttrValues values) {
  for (const auto& info : attr_infos) {
    const auto it = values.find(info.attr);
    if (it == values.end()) {
      if (info.required) {
        return makeError(Errc::malformed,
                         std::string("attribute ") + info.key + " (" + info.what + ") is required");
      }
      continue;
    }
    CCAL_TRY(checkValue(info, it->second));
  }
  return PkiAccess::makeName(std::move(values));
}

// Reads a certificate's or CRL's Botan DN as an X500Name: each attribute once, each one known.
Result<X500Name> fromBotanDn(const Botan::X509_DN& dn) {
  AttrValues values;
  for (const auto& [oid, value] : dn.dn_info()) {
    const AttrInfo* info = nullptr;
    for (const auto& candidate : attr_infos) {
      if (oid == Botan::OID(candidate.oid)) info = &candidate;
    }
    if (info == nullptr) {
      return makeError(Errc::malformed,
                       "X.500 name has an attribute CCAL does not use: " + oidName(oid));
    }
    if (!values.emplace(info->attr, value.value()).second) {
      return makeError(Errc::malformed,
                       std::string("X.500 name has attribute ") + info->key + " twice");
    }
  }
  return buildName(std::move(values));
}

}  // namespace

Result<X500Name> X500Name::parse(std::string_view text) {
  if (text.size() > text_bytes_max) {
    return makeError(Errc::too_large, "an X.500 name is at most " + std::to_string(text_bytes_max) +
                                          " bytes, got " + std::to_string(text.size()));
  }
  const std::string context = "X.500 name '" + std::string(text) + "': ";
  AttrValues values;
  if (!trim(text).empty()) {
    size_t start = 0;
    while (start <= text.size()) {
      size_t end = text.find(',', start);
      if (end == std::string_view::npos) end = text.size();
      const std::string_view part = trim(text.substr(start, end - start));
      start = end + 1;
      const size_t eq = part.find('=');
      if (eq == std::string_view::npos) {
        return makeError(Errc::malformed,
                         context + "part '" + std::string(part) + "' is not KEY=VALUE");
      }
      const std::string key = upper(trim(part.substr(0, eq)));
      const AttrInfo* info = attrByKey(key);
      if (info == nullptr) {
        return makeError(Errc::malformed,
                         context + "unknown attribute '" + key + "' (known: CN, OU, O, L, ST, C)");
      }
      std::string value(trim(part.substr(eq + 1)));
      if (info->attr == Attr::c) value = upper(value);
      if (!values.emplace(info->attr, std::move(value)).second) {
        return makeError(Errc::malformed, context + "attribute " + info->key + " appears twice");
      }
    }
  }
  auto name = buildName(std::move(values));
  if (!name.ok()) return makeError(name.error().code, context + name.error().message);
  return name;
}

std::string X500Name::toString() const {
  std::string out;
  auto add = [&](const char* key, const std::string& value) {
    if (value.empty()) return;
    if (!out.empty()) out += ", ";
    out += key;
    out += '=';
    out += value;
  };
  add("CN", common_name_);
  add("OU", organisation_unit_);
  add("O", organisation_);
  add("L", locality_);
  add("ST", state_);
  add("C", country_);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Certificate

namespace {

// Only whitespace may surround a PEM block: anything else is a sign of a wrong or corrupted
// file, not something to skip.
Result<std::vector<Bytes>> pemBlocks(std::string_view pem, const std::string& label,
                                     size_t bytes_max) {
  if (pem.size() > bytes_max * 2) {
    return makeError(Errc::too_large,
                     "PEM text of " + std::to_string(pem.size()) + " bytes is over the limit");
  }
  const std::string begin = "-----BEGIN " + label + "-----";
  const std::string end = "-----END " + label + "-----";
  std::vector<Bytes> out;
  size_t pos = 0;
  auto onlyWhitespace = [](std::string_view s) {
    return s.find_first_not_of(" \t\r\n") == std::string_view::npos;
  };
  while (true) {
    const size_t b = pem.find(begin, pos);
    if (b == std::string_view::npos) {
      if (!onlyWhitespace(pem.substr(pos))) {
        return makeError(Errc::malformed, "text outside the PEM " + label + " blocks");
      }
      break;
    }
    if (!onlyWhitespace(pem.substr(pos, b - pos))) {
      return makeError(Errc::malformed, "text outside the PEM " + label + " blocks");
    }
    const size_t e = pem.find(end, b);
    if (e == std::string_view::npos) {
      return makeError(Errc::malformed, "PEM " + label + " block has no END line");
    }
    pos = e + end.size();
    const std::string block(pem.substr(b, pos - b));
    auto der =
        guarded(Errc::malformed, "PEM " + label + " block does not decode", [&]() -> Result<Bytes> {
          const auto bytes = Botan::PEM_Code::decode_check_label(block, label);
          return Bytes(bytes.begin(), bytes.end());
        });
    CCAL_TRY(der);
    out.push_back(std::move(der).value());
  }
  if (out.empty()) return makeError(Errc::malformed, "no PEM " + label + " block");
  return out;
}

}  // namespace

Result<Certificate> Certificate::fromDer(ByteView der) {
  if (der.size() > encoded_bytes_max) {
    return makeError(Errc::too_large, "a certificate of " + std::to_string(der.size()) +
                                          " bytes is over the limit of " +
                                          std::to_string(encoded_bytes_max));
  }
  if (der.empty() || der[0] != 0x30) {
    return makeError(Errc::malformed, "not a DER certificate (no leading SEQUENCE)");
  }
  return guarded(Errc::malformed, "not a valid X.509 certificate", [&]() -> Result<Certificate> {
    auto botan = std::make_shared<const Botan::X509_Certificate>(der.data(), der.size());
    Bytes encoded = toBytes(botan->BER_encode());
    if (!std::equal(encoded.begin(), encoded.end(), der.begin(), der.end())) {
      return makeError(Errc::malformed, "certificate is not in DER form or has trailing bytes");
    }
    auto subject = fromBotanDn(botan->subject_dn());
    if (!subject.ok()) {
      return makeError(Errc::malformed, "certificate subject: " + subject.error().message);
    }
    auto issuer = fromBotanDn(botan->issuer_dn());
    if (!issuer.ok()) {
      return makeError(Errc::malformed, "certificate issuer: " + issuer.error().message);
    }
    return PkiAccess::make(std::make_shared<const detail::CertificateData>(
        detail::CertificateData{std::move(botan), std::move(encoded), std::move(subject).value(),
                                std::move(issuer).value()}));
  });
}

Result<Certificate> Certificate::fromPem(std::string_view pem) {
  auto blocks = pemBlocks(pem, "CERTIFICATE", encoded_bytes_max);
  CCAL_TRY(blocks);
  if (blocks->size() != 1) {
    return makeError(Errc::malformed,
                     "expected one PEM certificate, got " + std::to_string(blocks->size()));
  }
  return fromDer(blocks->front());
}

Bytes Certificate::der() const {
  return data_->der;
}

std::string Certificate::pem() const {
  return Botan::PEM_Code::encode(data_->der.data(), data_->der.size(), "CERTIFICATE");
}

const X500Name& Certificate::subject() const {
  return data_->subject;
}
const X500Name& Certificate::issuer() const {
  return data_->issuer;
}

std::string Certificate::serialHex() const {
  return toHex(data_->botan->serial_number());
}

Validity Certificate::validity() const {
  return {data_->botan->not_before().to_std_timepoint(),
          data_->botan->not_after().to_std_timepoint()};
}

bool Certificate::isCa() const {
  return data_->botan->is_CA_cert();
}

SecureHash Certificate::fingerprint() const {
  return SecureHash::of(data_->der);
}

Result<PublicKey> Certificate::publicKey() const {
  const auto& algo = data_->botan->subject_public_key_algo().get_oid();
  if (algo != ed25519Oid()) {
    return makeError(Errc::unknown_scheme, "certificate " + quoted(subject()) + " has a " +
                                               oidName(algo) + " key; CCAL keys are Ed25519");
  }
  return guarded(Errc::malformed, "certificate " + quoted(subject()) + " public key",
                 [&]() -> Result<PublicKey> {
                   auto key = data_->botan->load_subject_public_key();
                   const auto* ed = dynamic_cast<const Botan::Ed25519_PublicKey*>(key.get());
                   CCAL_ASSERT(ed != nullptr);
                   return PublicKey::fromBytes(static_cast<uint16_t>(SignatureScheme::ed25519),
                                               ed->get_public_key());
                 });
}

bool Certificate::operator==(const Certificate& other) const {
  return data_ == other.data_ || data_->der == other.data_->der;
}

std::string toPem(std::span<const Certificate> certificates) {
  std::string out;
  for (const auto& c : certificates) out += c.pem();
  return out;
}

Result<std::vector<Certificate>> certificatesFromPem(std::string_view pem) {
  auto blocks = pemBlocks(pem, "CERTIFICATE", Certificate::encoded_bytes_max * 16);
  CCAL_TRY(blocks);
  std::vector<Certificate> out;
  for (const auto& der : *blocks) {
    auto cert = Certificate::fromDer(der);
    CCAL_TRY(cert);
    out.push_back(std::move(cert).value());
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Crl

Result<Crl> Crl::fromDer(ByteView der) {
  if (der.size() > encoded_bytes_max) {
    return makeError(Errc::too_large, "a revocation list of " + std::to_string(der.size()) +
                                          " bytes is over the limit of " +
                                          std::to_string(encoded_bytes_max));
  }
  if (der.empty() || der[0] != 0x30) {
    return makeError(Errc::malformed, "not a DER revocation list (no leading SEQUENCE)");
  }
  return guarded(Errc::malformed, "not a valid X.509 revocation list", [&]() -> Result<Crl> {
    auto botan =
        std::make_shared<const Botan::X509_CRL>(std::vector<uint8_t>(der.begin(), der.end()));
    Bytes encoded = toBytes(botan->BER_encode());
    if (!std::equal(encoded.begin(), encoded.end(), der.begin(), der.end())) {
      return makeError(Errc::malformed, "revocation list is not in DER form or has trailing bytes");
    }
    auto issuer = fromBotanDn(botan->issuer_dn());
    if (!issuer.ok()) {
      return makeError(Errc::malformed, "revocation list issuer: " + issuer.error().message);
    }
    return PkiAccess::make(std::make_shared<const detail::CrlData>(
        detail::CrlData{std::move(botan), std::move(encoded), std::move(issuer).value()}));
  });
}

Result<Crl> Crl::fromPem(std::string_view pem) {
  auto blocks = pemBlocks(pem, "X509 CRL", encoded_bytes_max);
  CCAL_TRY(blocks);
  if (blocks->size() != 1) {
    return makeError(Errc::malformed,
                     "expected one PEM revocation list, got " + std::to_string(blocks->size()));
  }
  return fromDer(blocks->front());
}

Bytes Crl::der() const {
  return data_->der;
}

std::string Crl::pem() const {
  return Botan::PEM_Code::encode(data_->der.data(), data_->der.size(), "X509 CRL");
}

const X500Name& Crl::issuer() const {
  return data_->issuer;
}
uint32_t Crl::number() const {
  return data_->botan->crl_number();
}
TimePoint Crl::thisUpdate() const {
  return data_->botan->this_update().to_std_timepoint();
}
TimePoint Crl::nextUpdate() const {
  return data_->botan->next_update().to_std_timepoint();
}
size_t Crl::revokedCount() const {
  return data_->botan->get_revoked().size();
}

bool Crl::lists(const Certificate& certificate) const {
  return data_->botan->is_revoked(botanOf(certificate));
}

// ---------------------------------------------------------------------------------------------
// CertificateAuthority

namespace {

enum class Profile : uint8_t { root, intermediate, node_ca, legal_identity, tls };

const char* profileName(Profile p) {
  switch (p) {
    case Profile::root:
      return "root CA";
    case Profile::intermediate:
      return "intermediate CA";
    case Profile::node_ca:
      return "node CA";
    case Profile::legal_identity:
      return "legal identity";
    case Profile::tls:
      return "TLS";
  }
  return "?";
}

// The root may have the doorman and a node CA below it.
constexpr size_t root_path_length = 2;

Status checkValidity(const Validity& v) {
  if (v.not_after <= v.not_before) {
    return makeError(Errc::certificate_invalid, "validity period ends (" + formatTime(v.not_after) +
                                                    ") before it starts (" +
                                                    formatTime(v.not_before) + ")");
  }
  return {};
}

// Signs a certificate for `subject_key`. `issuer_key` == the subject's key for a root.
Result<Certificate> makeCertificate(Profile profile, const X500Name& subject,
                                    const PublicKey& subject_key, const Validity& validity,
                                    const Botan::Private_Key& issuer_key,
                                    const Botan::X509_Certificate* issuer_cert,
                                    size_t path_length) {
  return guarded(
      Errc::certificate_invalid,
      std::string("issuing a ") + profileName(profile) + " certificate for " + quoted(subject),
      [&]() -> Result<Certificate> {
        auto& rng = Botan::system_rng();
        const Botan::Ed25519_PublicKey botan_subject_key(subject_key.bytes().data(),
                                                         subject_key.bytes().size());
        const std::vector<uint8_t> spki = Botan::X509::BER_encode(botan_subject_key);
        const Botan::X509_DN subject_dn = toBotanDn(subject);

        Botan::Extensions extensions;
        const bool is_ca = profile == Profile::root || profile == Profile::intermediate ||
                           profile == Profile::node_ca;
        extensions.add(new Botan::Cert_Extension::Basic_Constraints(is_ca, path_length), true);
        Botan::Key_Constraints usage = Botan::NO_CONSTRAINTS;
        switch (profile) {
          case Profile::root:
          case Profile::intermediate:
          case Profile::node_ca:
            usage = Botan::Key_Constraints(Botan::KEY_CERT_SIGN | Botan::CRL_SIGN);
            break;
          case Profile::legal_identity:
            usage = Botan::Key_Constraints(Botan::DIGITAL_SIGNATURE | Botan::NON_REPUDIATION);
            break;
          case Profile::tls:
            usage = Botan::DIGITAL_SIGNATURE;
            break;
        }
        extensions.add(new Botan::Cert_Extension::Key_Usage(usage), true);
        if (profile == Profile::tls) {
          extensions.add(new Botan::Cert_Extension::Extended_Key_Usage(
              {Botan::OID("1.3.6.1.5.5.7.3.1"), Botan::OID("1.3.6.1.5.5.7.3.2")}));
        }
        // RFC 5280 4.2.1.10: a conforming CA marks name constraints critical.
        if (profile == Profile::node_ca) {
          extensions.add(new DirectoryNameConstraints({subject_dn}), true);
        }
        extensions.add(new Botan::Cert_Extension::Subject_Key_ID(spki, "SHA-256"));
        if (issuer_cert != nullptr) {
          extensions.add(
              new Botan::Cert_Extension::Authority_Key_ID(issuer_cert->subject_key_id()));
        }

        Botan::AlgorithmIdentifier sig_algo;
        std::unique_ptr<Botan::PK_Signer> signer(
            Botan::choose_sig_format(issuer_key, rng, "SHA-512", sig_algo));
        const Botan::X509_DN issuer_dn =
            issuer_cert != nullptr ? issuer_cert->subject_dn() : subject_dn;
        const Botan::X509_Certificate cert = Botan::X509_CA::make_cert(
            signer.get(), rng, sig_algo, spki, Botan::X509_Time(validity.not_before),
            Botan::X509_Time(validity.not_after), issuer_dn, subject_dn, extensions);
        const Bytes der = toBytes(cert.BER_encode());
        auto decoded = Certificate::fromDer(der);
        CCAL_ASSERT_MSG(decoded.ok(), "a certificate CCAL issued does not decode");
        return decoded;
      });
}

}  // namespace

CertificateAuthority::CertificateAuthority(std::unique_ptr<detail::CaData> data)
    : data_(std::move(data)) {}
CertificateAuthority::CertificateAuthority(CertificateAuthority&&) noexcept = default;
CertificateAuthority& CertificateAuthority::operator=(CertificateAuthority&&) noexcept = default;
CertificateAuthority::~CertificateAuthority() = default;

const Certificate& CertificateAuthority::certificate() const {
  return data_->certificate;
}

Result<CertificateAuthority> CertificateAuthority::createRoot(const X500Name& name,
                                                              const KeyPair& key,
                                                              const Validity& validity) {
  CCAL_TRY(checkValidity(validity));
  auto private_key = botanPrivateKey(key);
  auto cert = makeCertificate(Profile::root, name, key.publicKey(), validity, *private_key, nullptr,
                              root_path_length);
  CCAL_TRY(cert);
  return CertificateAuthority(std::make_unique<detail::CaData>(
      detail::CaData{std::move(cert).value(), key.publicKey(), std::move(private_key)}));
}

Result<CertificateAuthority> CertificateAuthority::fromCertificate(const Certificate& certificate,
                                                                   const KeyPair& key) {
  if (!certificate.isCa()) {
    return makeError(Errc::certificate_invalid,
                     "certificate " + quoted(certificate.subject()) + " is not a CA certificate");
  }
  auto cert_key = certificate.publicKey();
  if (!cert_key.ok()) return makeError(Errc::certificate_invalid, cert_key.error().message);
  if (*cert_key != key.publicKey()) {
    return makeError(Errc::certificate_invalid, "CA certificate " + quoted(certificate.subject()) +
                                                    " is for key " + cert_key->shortHex() +
                                                    ", not for key " + key.publicKey().shortHex());
  }
  return CertificateAuthority(std::make_unique<detail::CaData>(
      detail::CaData{certificate, key.publicKey(), botanPrivateKey(key)}));
}

namespace {

Result<Certificate> issueFrom(const detail::CaData& ca, Profile profile, const X500Name& subject,
                              const PublicKey& subject_key, const Validity& validity) {
  const auto& ca_cert = botanOf(ca.certificate);
  const std::string what = std::string("CA ") + quoted(ca.certificate.subject()) +
                           " cannot issue a " + profileName(profile) + " certificate for " +
                           quoted(subject) + ": ";
  auto validity_ok = checkValidity(validity);
  if (!validity_ok.ok()) {
    return makeError(Errc::certificate_invalid, what + validity_ok.error().message);
  }
  const Validity own = ca.certificate.validity();
  if (validity.not_before < own.not_before || validity.not_after > own.not_after) {
    return makeError(Errc::certificate_invalid,
                     what + "validity " + formatTime(validity.not_before) + " to " +
                         formatTime(validity.not_after) + " reaches outside the CA's own " +
                         formatTime(own.not_before) + " to " + formatTime(own.not_after));
  }
  size_t path_length = 0;
  if (profile == Profile::intermediate || profile == Profile::node_ca) {
    const size_t own_limit = ca_cert.path_limit();
    if (own_limit == 0) {
      return makeError(Errc::certificate_invalid,
                       what + "its path length allows no CA certificates below it");
    }
    const bool unlimited = own_limit >= Botan::Cert_Extension::NO_CERT_PATH_LIMIT;
    path_length = profile == Profile::node_ca ? 0 : (unlimited ? 1 : own_limit - 1);
  }
  auto constraints =
      guarded(Errc::certificate_invalid, what + "its name constraints",
              [&]() -> Result<std::optional<DnConstraints>> { return readDnConstraints(ca_cert); });
  CCAL_TRY(constraints);
  if (constraints->has_value() && !dnPermitted(toBotanDn(subject), **constraints)) {
    return makeError(Errc::name_constraint, what + "the name is outside the CA's name constraints");
  }
  return makeCertificate(profile, subject, subject_key, validity, *ca.private_key, &ca_cert,
                         path_length);
}

}  // namespace

Result<Certificate> CertificateAuthority::issueIntermediate(const X500Name& subject,
                                                            const PublicKey& subject_key,
                                                            const Validity& validity) const {
  return issueFrom(*data_, Profile::intermediate, subject, subject_key, validity);
}

Result<Certificate> CertificateAuthority::issueNodeCa(const X500Name& node,
                                                      const PublicKey& node_ca_key,
                                                      const Validity& validity) const {
  return issueFrom(*data_, Profile::node_ca, node, node_ca_key, validity);
}

Result<Certificate> CertificateAuthority::issueLegalIdentity(const X500Name& node,
                                                             const PublicKey& identity_key,
                                                             const Validity& validity) const {
  return issueFrom(*data_, Profile::legal_identity, node, identity_key, validity);
}

Result<Certificate> CertificateAuthority::issueTls(const X500Name& node, const PublicKey& tls_key,
                                                   const Validity& validity) const {
  return issueFrom(*data_, Profile::tls, node, tls_key, validity);
}

Result<Crl> CertificateAuthority::issueCrl(std::span<const Certificate> revoke,
                                           TimePoint this_update, TimePoint next_update,
                                           const Crl* previous) const {
  const auto& ca_cert = botanOf(data_->certificate);
  const std::string what =
      "CA " + quoted(data_->certificate.subject()) + " cannot issue a revocation list: ";
  if (next_update <= this_update) {
    return makeError(Errc::certificate_invalid, what + "next update " + formatTime(next_update) +
                                                    " is not after this update " +
                                                    formatTime(this_update));
  }
  return guarded(Errc::certificate_invalid, what, [&]() -> Result<Crl> {
    auto& rng = Botan::system_rng();
    const auto ca_key = ca_cert.load_subject_public_key();
    if (previous != nullptr) {
      const auto& prev = botanOf(*previous);
      if (prev.issuer_dn() != ca_cert.subject_dn() || !prev.check_signature(*ca_key)) {
        return makeError(Errc::certificate_invalid,
                         what + "the previous list was not issued by this CA");
      }
    }
    std::vector<Botan::CRL_Entry> entries;
    for (const auto& cert : revoke) {
      const auto& c = botanOf(cert);
      if (c.issuer_dn() != ca_cert.subject_dn() || !c.check_signature(*ca_key)) {
        return makeError(Errc::certificate_invalid, what + "certificate " + quoted(cert.subject()) +
                                                        " (serial " + cert.serialHex() +
                                                        ") was not issued by this CA");
      }
      if (previous != nullptr && previous->lists(cert)) continue;
      // Botan's CRL_Entry(cert) stamps the revocation date from the system clock; CCAL takes
      // time as a parameter, so the entry is built from its DER form instead.
      std::vector<uint8_t> entry_der;
      Botan::DER_Encoder(entry_der)
          .start_cons(Botan::SEQUENCE)
          .encode(Botan::BigInt::decode(c.serial_number()))
          .encode(Botan::X509_Time(this_update))
          .end_cons();
      Botan::CRL_Entry entry;
      Botan::BER_Decoder(entry_der).decode(entry);
      entries.push_back(std::move(entry));
    }
    const Botan::X509_CA ca(ca_cert, *data_->private_key, "SHA-512", rng);
    // An unsigned, empty list numbered 0 stands in for "no previous list".
    const Botan::X509_CRL empty(ca_cert.subject_dn(), Botan::X509_Time(this_update),
                                Botan::X509_Time(next_update), {});
    const auto valid_for =
        std::chrono::duration_cast<std::chrono::seconds>(next_update - this_update);
    const Botan::X509_CRL crl = ca.update_crl(previous != nullptr ? botanOf(*previous) : empty,
                                              entries, rng, this_update, valid_for);
    auto decoded = Crl::fromDer(toBytes(crl.BER_encode()));
    CCAL_ASSERT_MSG(decoded.ok(), "a revocation list CCAL issued does not decode");
    return decoded;
  });
}

// ---------------------------------------------------------------------------------------------
// Path validation

namespace {

using Code = Botan::Certificate_Status_Code;
using BotanCertPtr = std::shared_ptr<const Botan::X509_Certificate>;

// A reason to reject the path; the highest rank wins, then the certificate nearest the root.
struct Finding {
  int rank;
  size_t index;  // in the path, 0 = leaf
  Errc code;
  std::string message;
};

int rankOf(Errc code) {
  switch (code) {
    case Errc::certificate_invalid:
      return 4;
    case Errc::certificate_revoked:
      return 3;
    case Errc::name_constraint:
      return 2;
    case Errc::certificate_expired:
      return 1;
    default:
      return 0;
  }
}

// The CRL for certificates issued by `issuer`: the newest one that `issuer` signed, else one
// merely naming it (so that Botan reports its bad signature), else none.
std::shared_ptr<const Botan::X509_CRL> crlFor(const Botan::X509_Certificate& issuer,
                                              std::span<const Crl> crls) {
  std::shared_ptr<const Botan::X509_CRL> best;
  bool best_signed = false;
  const auto key = issuer.load_subject_public_key();
  for (const auto& crl : crls) {
    const auto& botan = PkiAccess::data(crl).botan;
    if (botan->issuer_dn() != issuer.subject_dn()) continue;
    const bool is_signed = botan->check_signature(*key);
    if (best == nullptr || (is_signed && !best_signed) ||
        (is_signed == best_signed && botan->crl_number() > best->crl_number())) {
      best = botan;
      best_signed = is_signed;
    }
  }
  return best;
}

Finding describe(Code code, size_t i, const std::vector<BotanCertPtr>& path,
                 const std::vector<X500Name>& names, TimePoint at,
                 const std::vector<std::shared_ptr<const Botan::X509_CRL>>& crls) {
  const std::string subject = "certificate " + quoted(names[i]);
  const size_t issuer_index = std::min(i + 1, path.size() - 1);
  const std::string issuer = quoted(names[issuer_index]);
  const auto& cert = *path[i];
  auto finding = [&](Errc errc, std::string message) {
    return Finding{rankOf(errc), i, errc, std::move(message)};
  };
  switch (code) {
    case Code::CERT_HAS_EXPIRED:
      return finding(Errc::certificate_expired,
                     subject + " expired at " + formatTime(cert.not_after().to_std_timepoint()) +
                         " (checked at " + formatTime(at) + ")");
    case Code::CERT_NOT_YET_VALID:
      return finding(Errc::certificate_expired,
                     subject + " is not valid before " +
                         formatTime(cert.not_before().to_std_timepoint()) + " (checked at " +
                         formatTime(at) + ")");
    case Code::CERT_IS_REVOKED:
      return finding(Errc::certificate_revoked, subject + " (serial " +
                                                    toHex(cert.serial_number()) +
                                                    ") is revoked by its issuer " + issuer);
    case Code::NAME_CONSTRAINT_ERROR:
      return finding(Errc::name_constraint,
                     subject + " is outside the name constraints of an issuer above it");
    case Code::SIGNATURE_ERROR:
      return finding(Errc::certificate_invalid,
                     subject + " has a signature that does not verify with the key of " + issuer);
    case Code::CA_CERT_NOT_FOR_CERT_ISSUER:
      return finding(Errc::certificate_invalid,
                     subject + " is issued by " + issuer + ", which is not a CA");
    case Code::CERT_CHAIN_TOO_LONG:
      return finding(Errc::certificate_invalid,
                     subject + " is a CA below the path length its issuers allow");
    case Code::NO_REVOCATION_DATA:
      return finding(
          Errc::certificate_invalid,
          subject + " cannot be checked for revocation: no revocation list of " + issuer);
    case Code::CRL_HAS_EXPIRED:
    case Code::CRL_NOT_YET_VALID: {
      const auto& crl = crls[i];
      return finding(Errc::certificate_invalid,
                     "the revocation list of " + issuer + " is valid from " +
                         formatTime(crl->this_update().to_std_timepoint()) + " to " +
                         formatTime(crl->next_update().to_std_timepoint()) + ", not at " +
                         formatTime(at));
    }
    case Code::CRL_BAD_SIGNATURE:
      return finding(Errc::certificate_invalid,
                     "a revocation list naming " + issuer + " as issuer is not signed by it");
    case Code::CA_CERT_NOT_FOR_CRL_ISSUER:
      return finding(Errc::certificate_invalid,
                     issuer + " may not sign revocation lists (key usage)");
    default:
      return finding(Errc::certificate_invalid, subject + ": " + Botan::to_string(code));
  }
}

Status validate(const Certificate& leaf, std::span<const Certificate> intermediates,
                const Certificate& trusted_root, std::span<const Crl> crls, TimePoint at,
                RevocationCheck revocation) {
  // Path building.
  Botan::Certificate_Store_In_Memory trusted;
  trusted.add_certificate(PkiAccess::data(trusted_root).botan);
  std::vector<BotanCertPtr> extra;
  std::map<const Botan::X509_Certificate*, const Certificate*> ours;
  ours[PkiAccess::data(leaf).botan.get()] = &leaf;
  ours[PkiAccess::data(trusted_root).botan.get()] = &trusted_root;
  for (const auto& c : intermediates) {
    extra.push_back(PkiAccess::data(c).botan);
    ours[extra.back().get()] = &c;
  }
  std::vector<BotanCertPtr> path;
  // Botan finds no path from a self-signed certificate to itself; checking the root alone
  // (its validity, its key) is still a fair question.
  const Code built = leaf == trusted_root
                         ? (path.push_back(PkiAccess::data(trusted_root).botan), Code::OK)
                         : Botan::PKIX::build_certificate_path(path, {&trusted},
                                                               PkiAccess::data(leaf).botan, extra);
  if (built != Code::OK) {
    return makeError(Errc::certificate_invalid,
                     "no certificate path from " + quoted(leaf.subject()) +
                         " to the trusted root " + quoted(trusted_root.subject()) + ": " +
                         Botan::to_string(built));
  }
  CCAL_ASSERT(!path.empty());
  std::vector<X500Name> names;
  for (const auto& p : path) {
    const auto it = ours.find(p.get());
    CCAL_ASSERT_MSG(it != ours.end(), "Botan built a path through a certificate not given");
    names.push_back(it->second->subject());
  }
  if (!(*path.back() == botanOf(trusted_root))) {
    return makeError(Errc::certificate_invalid, "the path from " + quoted(leaf.subject()) +
                                                    " ends at " + quoted(names.back()) +
                                                    ", not at the trusted root");
  }

  std::vector<Finding> findings;

  // CCAL's own checks first, so that on a tie their messages are the ones reported.
  for (size_t i = 0; i < path.size(); ++i) {
    const auto& cert = *path[i];
    if (cert.subject_public_key_algo().get_oid() != ed25519Oid() ||
        cert.signature_algorithm().get_oid() != ed25519Oid()) {
      findings.push_back({rankOf(Errc::certificate_invalid), i, Errc::certificate_invalid,
                          "certificate " + quoted(names[i]) + " has a " +
                              oidName(cert.subject_public_key_algo().get_oid()) +
                              " key or signature; CCAL certificates are Ed25519"});
    }
  }
  // Botan 2.19 enforces directoryName constraints only loosely: it compares the attributes
  // that both names have, so a node CA for "O=A, L=X, C=GB" may issue for "O=B, ..." (caught)
  // but also for "CN=Bank, O=A, L=X, C=GB" or "O=A, L=X, ST=Kent, C=GB" (not caught). CCAL
  // checks the constraints itself; see dnPermitted.
  for (size_t j = 1; j < path.size(); ++j) {
    const auto constraints = readDnConstraints(*path[j]);
    if (!constraints) continue;
    for (size_t i = 0; i < j; ++i) {
      if (!dnPermitted(path[i]->subject_dn(), *constraints)) {
        findings.push_back({rankOf(Errc::name_constraint), i, Errc::name_constraint,
                            "certificate " + quoted(names[i]) +
                                " is outside the name constraints of " + quoted(names[j]) +
                                ", which may only issue for the names it permits"});
      }
    }
  }

  // Botan's checks: signatures, validity, CA flags, path lengths, revocation.
  auto status = Botan::PKIX::check_chain(path, at, "", Botan::Usage_Type::UNSPECIFIED,
                                         /*min_signature_algo_strength=*/110,
                                         /*trusted_hashes=*/{});
  std::vector<std::shared_ptr<const Botan::X509_CRL>> path_crls(path.size());
  for (size_t i = 0; i + 1 < path.size(); ++i) path_crls[i] = crlFor(*path[i + 1], crls);
  const auto crl_status = Botan::PKIX::check_crl(path, path_crls, at);
  const bool required = revocation == RevocationCheck::required;
  Botan::PKIX::merge_revocation_status(status, crl_status, {}, required, required);
  for (size_t i = 0; i < status.size(); ++i) {
    for (const Code code : status[i]) {
      if (code < Code::FIRST_ERROR_STATUS) continue;  // confirmations and warnings
      findings.push_back(describe(code, i, path, names, at, path_crls));
    }
  }

  if (findings.empty()) return {};
  const Finding* worst = &findings.front();
  for (const auto& f : findings) {
    if (f.rank > worst->rank || (f.rank == worst->rank && f.index > worst->index)) worst = &f;
  }
  return makeError(worst->code, worst->message);
}

}  // namespace

Status validatePath(const Certificate& leaf, std::span<const Certificate> intermediates,
                    const Certificate& trusted_root, std::span<const Crl> crls, TimePoint at,
                    RevocationCheck revocation) {
  return guarded(Errc::certificate_invalid,
                 "validating the certificate path of " + quoted(leaf.subject()), [&]() -> Status {
                   return validate(leaf, intermediates, trusted_root, crls, at, revocation);
                 });
}

// ---------------------------------------------------------------------------------------------
// Private keys

std::string privateKeyPem(const KeyPair& key) {
  return Botan::PKCS8::PEM_encode(*botanPrivateKey(key));
}

Result<KeyPair> keyPairFromPem(std::string_view pem) {
  auto blocks = pemBlocks(pem, "PRIVATE KEY", 4096);
  CCAL_TRY(blocks);
  if (blocks->size() != 1) {
    return makeError(Errc::malformed,
                     "expected one PEM private key, got " + std::to_string(blocks->size()));
  }
  return guarded(Errc::malformed, "not a PKCS#8 private key", [&]() -> Result<KeyPair> {
    Botan::DataSource_Memory source(blocks->front().data(), blocks->front().size());
    const auto key = Botan::PKCS8::load_key(source);
    const auto* ed = dynamic_cast<const Botan::Ed25519_PrivateKey*>(key.get());
    if (ed == nullptr) {
      return makeError(Errc::unknown_scheme,
                       "private key is " + key->algo_name() + "; CCAL keys are Ed25519");
    }
    // Botan keeps the RFC 8032 secret as seed || public key.
    const auto& secret = ed->get_private_key();
    CCAL_ASSERT(secret.size() == 64);
    auto pair = KeyPair::fromSeed(ByteView(secret.data(), KeyPair::seed_bytes));
    CCAL_TRY(pair);
    const auto& pub = ed->get_public_key();
    CCAL_ASSERT(std::equal(pub.begin(), pub.end(), pair->publicKey().bytes().begin()));
    return pair;
  });
}

}  // namespace ccal
