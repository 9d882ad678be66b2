#include "node/network_map.h"

#include "node/file_io.h"

#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>

#include "ledger/capnp_io.h"
#include "ledger/signature_codec.h"
#include "schemas/network.capnp.h"

namespace ccal::node {

namespace {

namespace fs = std::filesystem;
namespace net = schema::network;
using L = NetworkMapLimits;

constexpr std::string_view parameters_domain = "CCAL network parameters v1";
constexpr std::string_view node_info_domain = "CCAL node info v1";

// What a signature covers: a domain string, a NUL, then the canonical bytes, so a signature
// made for one purpose (a transaction, a node info, parameters) is useless for another.
Bytes signedBytes(std::string_view domain, ByteView raw) {
  Bytes out(domain.begin(), domain.end());
  out.push_back(0);
  append(out, raw);
  return out;
}

Error prefixed(const std::string& prefix, const Error& e) {
  return makeError(e.code, prefix + e.message);
}

std::string quote(std::string_view s) {
  return "'" + std::string(s) + "'";
}

// --- reading ------------------------------------------------------------------------------

// An X.500 name in its canonical form (what is signed is what is looked up).
Result<std::string> readName(capnp::Text::Reader t, const std::string& what) {
  auto text = readText(t, what, L::text_bytes_max);
  CCAL_TRY(text);
  auto name = X500Name::parse(*text);
  if (!name) return prefixed(what + ": ", name.error());
  if (name->toString() != *text) {
    return makeError(Errc::not_canonical, what + " " + quote(*text) + " is not in canonical form " +
                                              quote(name->toString()));
  }
  return *text;
}

Result<std::vector<HostPort>> readAddresses(capnp::List<capnp::Text>::Reader list,
                                            const std::string& what) {
  if (list.size() == 0) return makeError(Errc::malformed, what + " has no address");
  if (list.size() > L::addresses_max) {
    return makeError(Errc::too_large, what + " has " + std::to_string(list.size()) +
                                          " addresses, over the limit of " +
                                          std::to_string(L::addresses_max));
  }
  std::vector<HostPort> out;
  for (auto t : list) {
    auto text = readText(t, what + " address", L::text_bytes_max);
    CCAL_TRY(text);
    auto hp = HostPort::parse(*text);
    if (!hp) return prefixed(what + ": ", hp.error());
    out.push_back(*hp);
  }
  return out;
}

Result<PublicKey> readKey(schema::PublicKey::Reader r) {
  return PublicKey::fromBytes(r.getScheme(), asByteView(r.getKey()));
}
void writeKey(schema::PublicKey::Builder b, const PublicKey& key) {
  b.setScheme(static_cast<uint16_t>(key.scheme()));
  b.setKey(asData(key.view()));
}


Result<std::vector<Certificate>> readChain(capnp::List<capnp::Data>::Reader list,
                                           const std::string& what) {
  if (list.size() == 0) return makeError(Errc::malformed, what + " is empty");
  if (list.size() > L::chain_certificates_max) {
    return makeError(Errc::too_large, what + " has " + std::to_string(list.size()) +
                                          " certificates, over the limit of " +
                                          std::to_string(L::chain_certificates_max));
  }
  std::vector<Certificate> out;
  for (size_t i = 0; i < list.size(); ++i) {
    auto c = Certificate::fromDer(asByteView(list[i]));
    if (!c) return prefixed(what + " certificate " + std::to_string(i) + ": ", c.error());
    out.push_back(*c);
  }
  return out;
}

template <class Builder>
void writeTexts(Builder list, const std::vector<std::string>& texts) {
  for (size_t i = 0; i < texts.size(); ++i) list.set(i, texts[i]);
}

std::vector<std::string> addressTexts(const std::vector<HostPort>& addresses) {
  std::vector<std::string> out;
  for (const auto& a : addresses) out.push_back(a.toString());
  return out;
}

Result<std::vector<std::string>> readTexts(capnp::List<capnp::Text>::Reader list,
                                           const std::string& what, bool names) {
  if (list.size() > L::rule_entries_max) {
    return makeError(Errc::too_large, what + " has " + std::to_string(list.size()) +
                                          " entries, over the limit of " +
                                          std::to_string(L::rule_entries_max));
  }
  std::vector<std::string> out;
  for (auto t : list) {
    auto s = names ? readName(t, what) : readText(t, what, L::text_bytes_max);
    CCAL_TRY(s);
    out.push_back(*s);
  }
  return out;
}

ReadLimits limitsOf(size_t bytes_max) {
  ReadLimits l;
  l.message_bytes_max = bytes_max;
  l.traversal_words_max = bytes_max / 8 * 4;
  return l;
}

// Cap'n Proto keeps bits of a struct's data section that the schema does not use, and
// canonical form does not clear them: a decoder that must give one meaning one encoding
// re-encodes what it read and compares.
template <class T>
Result<T> exactly(Result<T> decoded, ByteView bytes, const char* what) {
  CCAL_TRY(decoded);
  const Bytes again = decoded->encode();
  if (!std::equal(again.begin(), again.end(), bytes.begin(), bytes.end())) {
    return makeError(Errc::not_canonical, std::string(what) + ": carries data outside the schema");
  }
  return decoded;
}

// Checks a member's certificate chain: the leaf is `name`'s, issued by `name`'s own node CA,
// with the usages `is_kind` wants, and the path validates at `at`.
Status checkChain(const std::vector<Certificate>& chain, const std::string& name, const char* kind,
                  bool (*is_kind)(const Certificate&), const Certificate& root,
                  std::span<const Crl> crls, TimePoint at) {
  const Certificate& leaf = chain.front();
  const std::string what = std::string(kind) + " certificate ";
  if (leaf.subject().toString() != name) {
    return makeError(Errc::certificate_invalid,
                     what + "is for " + quote(leaf.subject().toString()) + ", not for the member");
  }
  if (leaf.issuer().toString() != name) {
    return makeError(Errc::certificate_invalid, what + "is issued by " +
                                                    quote(leaf.issuer().toString()) +
                                                    ", not by the member's own node CA");
  }
  if (!is_kind(leaf)) {
    return makeError(Errc::certificate_invalid,
                     what + "does not carry the key usages of a " + kind + " certificate");
  }
  auto valid =
      validatePath(leaf, std::span(chain).subspan(1), root, crls, at, RevocationCheck::if_listed);
  if (!valid) return prefixed(what + "chain: ", valid.error());
  return {};
}

Result<std::vector<Crl>> crlsFromPem(std::string_view pem, const std::string& what) {
  constexpr std::string_view end_marker = "-----END X509 CRL-----";
  std::vector<Crl> out;
  size_t pos = 0;
  while (true) {
    const size_t begin = pem.find("-----BEGIN", pos);
    if (begin == std::string_view::npos) break;
    const size_t end = pem.find(end_marker, begin);
    if (end == std::string_view::npos) {
      return makeError(Errc::malformed, what + ": a PEM block has no end");
    }
    auto crl = Crl::fromPem(pem.substr(begin, end + end_marker.size() - begin));
    if (!crl)
      return prefixed(what + ": revocation list " + std::to_string(out.size()) + ": ", crl.error());
    out.push_back(*crl);
    pos = end + end_marker.size();
  }
  return out;
}

}  // namespace

// --- certificate usages ---------------------------------------------------------------------

namespace {
struct Usages {
  bool ok = false;
  bool ca = false;
  uint32_t key_usage = 0;
  uint32_t extended_key_usage = 0;
};
Usages usagesOf(const Certificate& certificate) {
  const Bytes der = certificate.der();
  const unsigned char* p = der.data();
  X509* x = d2i_X509(nullptr, &p, static_cast<long>(der.size()));
  if (x == nullptr) return {};
  Usages u{true, X509_check_ca(x) != 0, X509_get_key_usage(x), X509_get_extended_key_usage(x)};
  X509_free(x);
  return u;
}
}  // namespace

bool isLegalIdentityCertificate(const Certificate& certificate) {
  const auto u = usagesOf(certificate);
  // X509_get_key_usage returns all bits set when the extension is absent: require it present.
  return u.ok && !u.ca && u.key_usage != UINT32_MAX && (u.key_usage & KU_NON_REPUDIATION) != 0;
}

bool isTlsCertificate(const Certificate& certificate) {
  const auto u = usagesOf(certificate);
  return u.ok && !u.ca && u.extended_key_usage != UINT32_MAX &&
         (u.extended_key_usage & XKU_SSL_SERVER) != 0 &&
         (u.extended_key_usage & XKU_SSL_CLIENT) != 0;
}

// --- NetworkParameters ----------------------------------------------------------------------

Bytes NetworkParameters::encode() const {
  return buildCanonical<net::NetworkParameters>([&](net::NetworkParameters::Builder b) {
    b.setEpoch(epoch);
    b.setMinPlatformVersion(min_platform_version);
    b.setMaxMessageBytes(max_message_bytes);
    b.setMaxTransactionBytes(max_transaction_bytes);
    b.setModifiedMicros(modified_micros);
    auto ns = b.initNotaries(static_cast<unsigned>(notaries.size()));
    for (size_t i = 0; i < notaries.size(); ++i) {
      const auto& n = notaries[i];
      auto nb = ns[i];
      nb.setName(n.name);
      n.service_key.write(nb.initServiceKey());
      nb.setValidating(n.validating);
      nb.setF(n.f);
      auto rs = nb.initReplicas(static_cast<unsigned>(n.replicas.size()));
      for (size_t j = 0; j < n.replicas.size(); ++j) {
        rs[j].setName(n.replicas[j].name);
        writeKey(rs[j].initKey(), n.replicas[j].key);
        const auto addrs = addressTexts(n.replicas[j].addresses);
        writeTexts(rs[j].initAddresses(static_cast<unsigned>(addrs.size())), addrs);
      }
    }
    auto os = b.initObservers(static_cast<unsigned>(observers.size()));
    for (size_t i = 0; i < observers.size(); ++i) {
      os[i].setObserver(observers[i].observer);
      writeTexts(os[i].initContracts(static_cast<unsigned>(observers[i].contracts.size())),
                 observers[i].contracts);
      writeTexts(os[i].initParties(static_cast<unsigned>(observers[i].parties.size())),
                 observers[i].parties);
      os[i].setAllTransactions(observers[i].all_transactions);
      writeTexts(os[i].initCommands(static_cast<unsigned>(observers[i].commands.size())),
                 observers[i].commands);
      if (observers[i].amount_at_least) {
        os[i].setHasAmountAtLeast(true);
        os[i].setAmountAtLeast(*observers[i].amount_at_least);
        os[i].setAmountField(observers[i].amount_field);
      }
    }
  });
}

Result<NetworkParameters> NetworkParameters::decode(ByteView bytes) {
  auto decoded = decodeMessage<net::NetworkParameters>(
      bytes, "network parameters", Canonical::required,
      [](net::NetworkParameters::Reader r) -> Result<NetworkParameters> {
        NetworkParameters p;
        p.epoch = r.getEpoch();
        p.min_platform_version = r.getMinPlatformVersion();
        p.max_message_bytes = r.getMaxMessageBytes();
        p.max_transaction_bytes = r.getMaxTransactionBytes();
        p.modified_micros = r.getModifiedMicros();
        if (p.max_message_bytes < 1024 || p.max_transaction_bytes < 1024) {
          return makeError(Errc::malformed,
                           "maximum message and transaction sizes must be at least 1024 bytes");
        }
        if (r.getNotaries().size() > L::notaries_max) {
          return makeError(Errc::too_large, std::to_string(r.getNotaries().size()) +
                                                " notaries, over the limit of " +
                                                std::to_string(L::notaries_max));
        }
        std::set<std::string> notary_names;
        for (auto n : r.getNotaries()) {
          NotaryInfo info;
          auto name = readName(n.getName(), "notary name");
          CCAL_TRY(name);
          info.name = *name;
          const std::string what = "notary " + quote(info.name) + ": ";
          if (!notary_names.insert(info.name).second) {
            return makeError(Errc::malformed, what + "listed twice");
          }
          auto key = Key::read(n.getServiceKey());
          if (!key) return prefixed(what + "service key: ", key.error());
          info.service_key = *key;
          info.validating = n.getValidating();
          info.f = n.getF();
          const auto replicas = n.getReplicas();
          if (replicas.size() > L::replicas_max || replicas.size() != 3ull * info.f + 1) {
            return makeError(Errc::malformed,
                             what + std::to_string(replicas.size()) +
                                 " replicas, but f = " + std::to_string(info.f) +
                                 " needs 3f+1 = " + std::to_string(3ull * info.f + 1));
          }
          std::set<PublicKey> replica_keys;
          std::set<std::string> replica_names;
          for (auto rr : replicas) {
            NotaryReplicaInfo replica;
            auto rname = readName(rr.getName(), "replica name");
            if (!rname) return prefixed(what, rname.error());
            replica.name = *rname;
            auto rkey = readKey(rr.getKey());
            if (!rkey)
              return prefixed(what + "replica " + quote(replica.name) + ": ", rkey.error());
            replica.key = *rkey;
            auto addrs = readAddresses(rr.getAddresses(), "replica " + quote(replica.name));
            if (!addrs) return prefixed(what, addrs.error());
            replica.addresses = *addrs;
            if (!replica_names.insert(replica.name).second ||
                !replica_keys.insert(replica.key).second) {
              return makeError(Errc::malformed,
                               what + "replica " + quote(replica.name) + " is listed twice");
            }
            info.replicas.push_back(std::move(replica));
          }
          const auto leaves = info.service_key.leafKeys();
          if (std::set<PublicKey>(leaves.begin(), leaves.end()) != replica_keys) {
            return makeError(Errc::bad_key,
                             what + "the service key is not made of the replicas' keys");
          }
          p.notaries.push_back(std::move(info));
        }
        if (r.getObservers().size() > L::observer_rules_max) {
          return makeError(Errc::too_large, std::to_string(r.getObservers().size()) +
                                                " observer rules, over the limit of " +
                                                std::to_string(L::observer_rules_max));
        }
        for (auto o : r.getObservers()) {
          ObserverRule rule;
          auto observer = readName(o.getObserver(), "observer");
          CCAL_TRY(observer);
          rule.observer = *observer;
          const std::string what = "observer rule of " + quote(rule.observer);
          auto contracts = readTexts(o.getContracts(), what + " contract", false);
          CCAL_TRY(contracts);
          rule.contracts = *contracts;
          auto parties = readTexts(o.getParties(), what + " party", true);
          CCAL_TRY(parties);
          rule.parties = *parties;
          rule.all_transactions = o.getAllTransactions();
          auto commands = readTexts(o.getCommands(), what + " command", false);
          CCAL_TRY(commands);
          rule.commands = *commands;
          if ((!rule.commands.empty() || o.getHasAmountAtLeast()) && rule.contracts.empty()) {
            return makeError(Errc::malformed,
                             what + ": commands and amountAtLeast filter contracts, but it names none");
          }
          for (const std::string& c : rule.commands) {
            const bool of_a_contract =
                std::any_of(rule.contracts.begin(), rule.contracts.end(), [&](const std::string& k) {
                  return c.size() > k.size() + 1 && c.compare(0, k.size(), k) == 0 && c[k.size()] == '.';
                });
            if (!of_a_contract) {
              return makeError(Errc::malformed, what + ": command " + quote(c) +
                                                    " is not a command of its contracts");
            }
          }
          auto field = readText(o.getAmountField(), what + " amount field", L::text_bytes_max);
          CCAL_TRY(field);
          if (o.getHasAmountAtLeast()) {
            if (o.getAmountAtLeast() < 0) {
              return makeError(Errc::malformed, what + ": amountAtLeast " +
                                                    std::to_string(o.getAmountAtLeast()) +
                                                    " is negative");
            }
            if (field->empty()) {
              return makeError(Errc::malformed, what + ": amountAtLeast without an amountField");
            }
            rule.amount_at_least = o.getAmountAtLeast();
            rule.amount_field = *field;
          } else if (o.getAmountAtLeast() != 0 || !field->empty()) {
            return makeError(Errc::malformed,
                             what + ": amountAtLeast or amountField set without hasAmountAtLeast");
          }
          p.observers.push_back(std::move(rule));
        }
        return p;
      },
      limitsOf(L::parameters_bytes_max));
  return exactly(std::move(decoded), bytes, "network parameters");
}

// --- SignedNetworkParameters ------------------------------------------------------------

SignedNetworkParameters SignedNetworkParameters::sign(const NetworkParameters& parameters,
                                                      const KeyPair& key,
                                                      const Certificate& certificate) {
  SignedNetworkParameters s;
  s.raw = parameters.encode();
  s.signature = key.sign(signedBytes(parameters_domain, s.raw));
  s.signer_certificate_der = certificate.der();
  return s;
}

Bytes SignedNetworkParameters::encode() const {
  return buildCanonical<net::SignedNetworkParameters>([&](net::SignedNetworkParameters::Builder b) {
    b.setRaw(asData(raw));
    writeSignature(b.initSignature(), signature);
    b.setSignerCertificate(asData(signer_certificate_der));
  });
}

Result<SignedNetworkParameters> SignedNetworkParameters::decode(ByteView bytes) {
  auto decoded = decodeMessage<net::SignedNetworkParameters>(
      bytes, "signed network parameters", Canonical::required,
      [](net::SignedNetworkParameters::Reader r) -> Result<SignedNetworkParameters> {
        SignedNetworkParameters s;
        const auto raw_bytes = asByteView(r.getRaw());
        s.raw.assign(raw_bytes.begin(), raw_bytes.end());
        auto sig = readSignature(r.getSignature());
        if (!sig) return prefixed("signature: ", sig.error());
        s.signature = *sig;
        const auto der = asByteView(r.getSignerCertificate());
        s.signer_certificate_der.assign(der.begin(), der.end());
        return s;
      },
      limitsOf(L::parameters_bytes_max + Certificate::encoded_bytes_max + 1024));
  return exactly(std::move(decoded), bytes, "signed network parameters");
}

Result<NetworkParameters> SignedNetworkParameters::verify(const Certificate& root,
                                                          std::span<const Crl> crls,
                                                          TimePoint at) const {
  const std::string what = "network parameters: ";
  auto cert = Certificate::fromDer(signer_certificate_der);
  if (!cert) return prefixed(what + "signer certificate: ", cert.error());
  // The signature first: one verification, before the costlier certificate path.
  auto cert_key = cert->publicKey();
  if (!cert_key) return prefixed(what, cert_key.error());
  if (*cert_key != signature.by()) {
    return makeError(Errc::bad_signature, what + "signed by key " + signature.by().shortHex() +
                                              ", not by the signer certificate's key " +
                                              cert_key->shortHex());
  }
  auto ok = signature.verify(signedBytes(parameters_domain, raw));
  if (!ok) return prefixed(what, ok.error());
  if (cert->issuer() != root.subject()) {
    return makeError(Errc::certificate_invalid,
                     what + "signer certificate " + quote(cert->subject().toString()) +
                         " is issued by " + quote(cert->issuer().toString()) +
                         ", not directly by the network root " + quote(root.subject().toString()));
  }
  auto valid = validatePath(*cert, {}, root, crls, at, RevocationCheck::if_listed);
  if (!valid) return prefixed(what + "signer certificate: ", valid.error());
  if (!isLegalIdentityCertificate(*cert)) {
    return makeError(Errc::certificate_invalid,
                     what + "signer certificate " + quote(cert->subject().toString()) +
                         " is not a signing (non-repudiation) certificate");
  }
  return NetworkParameters::decode(raw);
}

// --- NodeInfo -------------------------------------------------------------------------------

Bytes NodeInfo::encode() const {
  return buildCanonical<net::NodeInfo>([&](net::NodeInfo::Builder b) {
    b.setName(name);
    const auto addrs = addressTexts(addresses);
    writeTexts(b.initAddresses(static_cast<unsigned>(addrs.size())), addrs);
    auto ic = b.initIdentityChain(static_cast<unsigned>(identity_chain.size()));
    for (size_t i = 0; i < identity_chain.size(); ++i) ic.set(i, asData(identity_chain[i].der()));
    auto tc = b.initTlsChain(static_cast<unsigned>(tls_chain.size()));
    for (size_t i = 0; i < tls_chain.size(); ++i) tc.set(i, asData(tls_chain[i].der()));
    writeKey(b.initLegalIdentityKey(), legal_identity_key);
    b.setRole(role == Role::node             ? net::Role::NODE
              : role == Role::notary_replica ? net::Role::NOTARY_REPLICA
                                             : net::Role::REGULATOR);
    b.setPlatformVersion(platform_version);
    b.setSerial(serial);
  });
}

Result<NodeInfo> NodeInfo::decode(ByteView bytes) {
  auto decoded = decodeMessage<net::NodeInfo>(
      bytes, "node info", Canonical::required,
      [](net::NodeInfo::Reader r) -> Result<NodeInfo> {
        NodeInfo info;
        auto member_name = readName(r.getName(), "name");
        CCAL_TRY(member_name);
        info.name = *member_name;
        const std::string what = "member " + quote(info.name) + ": ";
        auto addrs = readAddresses(r.getAddresses(), "node info");
        if (!addrs) return prefixed(what, addrs.error());
        info.addresses = *addrs;
        auto ic = readChain(r.getIdentityChain(), "identity chain");
        if (!ic) return prefixed(what, ic.error());
        info.identity_chain = *ic;
        auto tc = readChain(r.getTlsChain(), "TLS chain");
        if (!tc) return prefixed(what, tc.error());
        info.tls_chain = *tc;
        auto key = readKey(r.getLegalIdentityKey());
        if (!key) return prefixed(what + "legal identity key: ", key.error());
        info.legal_identity_key = *key;
        switch (r.getRole()) {
          case net::Role::NODE:
            info.role = Role::node;
            break;
          case net::Role::NOTARY_REPLICA:
            info.role = Role::notary_replica;
            break;
          case net::Role::REGULATOR:
            info.role = Role::regulator;
            break;
          default:
            return makeError(
                Errc::malformed,
                what + "unknown role " + std::to_string(static_cast<unsigned>(r.getRole())));
        }
        info.platform_version = r.getPlatformVersion();
        info.serial = r.getSerial();
        return info;
      },
      limitsOf(L::node_info_bytes_max));
  return exactly(std::move(decoded), bytes, "node info");
}

SignedNodeInfo SignedNodeInfo::sign(const NodeInfo& info, const KeyPair& identity_key) {
  SignedNodeInfo s;
  s.raw = info.encode();
  s.signature = identity_key.sign(signedBytes(node_info_domain, s.raw));
  return s;
}

Bytes SignedNodeInfo::encode() const {
  return buildCanonical<net::SignedNodeInfo>([&](net::SignedNodeInfo::Builder b) {
    b.setRaw(asData(raw));
    writeSignature(b.initSignature(), signature);
  });
}

Result<SignedNodeInfo> SignedNodeInfo::decode(ByteView bytes) {
  auto decoded = decodeMessage<net::SignedNodeInfo>(
      bytes, "signed node info", Canonical::required,
      [](net::SignedNodeInfo::Reader r) -> Result<SignedNodeInfo> {
        SignedNodeInfo s;
        const auto raw_bytes = asByteView(r.getRaw());
        s.raw.assign(raw_bytes.begin(), raw_bytes.end());
        auto sig = readSignature(r.getSignature());
        if (!sig) return prefixed("signed node info: signature: ", sig.error());
        s.signature = *sig;
        return s;
      },
      limitsOf(L::node_info_bytes_max + 1024));
  return exactly(std::move(decoded), bytes, "signed node info");
}

Result<NodeInfo> SignedNodeInfo::verify(const Certificate& root, std::span<const Crl> crls,
                                        TimePoint at) const {
  auto info = NodeInfo::decode(raw);
  CCAL_TRY(info);
  const std::string what = "member " + quote(info->name) + ": ";
  // The signature first: one verification, before the costlier certificate paths.
  if (signature.by() != info->legal_identity_key) {
    return makeError(Errc::bad_signature, what + "node info signed by key " +
                                              signature.by().shortHex() +
                                              ", not by the member's legal identity key " +
                                              info->legal_identity_key.shortHex());
  }
  auto ok = signature.verify(signedBytes(node_info_domain, raw));
  if (!ok) return prefixed(what + "node info: ", ok.error());
  auto ic = checkChain(info->identity_chain, info->name, "legal identity",
                       isLegalIdentityCertificate, root, crls, at);
  if (!ic) return prefixed(what, ic.error());
  auto id_key = info->identity_chain.front().publicKey();
  if (!id_key) return prefixed(what, id_key.error());
  if (*id_key != info->legal_identity_key) {
    return makeError(Errc::certificate_invalid,
                     what + "legal identity key " + info->legal_identity_key.shortHex() +
                         " is not the identity certificate's key " + id_key->shortHex());
  }
  auto tc = checkChain(info->tls_chain, info->name, "TLS", isTlsCertificate, root, crls, at);
  if (!tc) return prefixed(what, tc.error());
  return info;
}

Result<SignedNodeInfo> signOwnNodeInfo(const NodeConfig& config, uint64_t serial) {
  auto key_pem = readFileBounded(config.identity_key_file, 64 * 1024);
  CCAL_TRY(key_pem);
  auto key = keyPairFromPem(*key_pem);
  if (!key) return prefixed(config.identity_key_file.string() + ": ", key.error());
  NodeInfo info;
  info.name = config.x500;
  info.addresses = {config.p2p_advertised};
  for (auto [file, chain] : {std::pair{&config.identity_chain_file, &info.identity_chain},
                             std::pair{&config.tls_chain_file, &info.tls_chain}}) {
    auto pem =
        readFileBounded(*file, L::chain_certificates_max * Certificate::encoded_bytes_max * 2);
    CCAL_TRY(pem);
    auto certs = certificatesFromPem(*pem);
    if (!certs) return prefixed(file->string() + ": ", certs.error());
    *chain = std::move(certs).value();
  }
  info.legal_identity_key = key->publicKey();
  info.role = config.role;
  info.platform_version = config.platform_version;
  info.serial = serial;
  auto signed_info = SignedNodeInfo::sign(info, *key);
  // What this member signs must pass the checks its peers make (less the network root).
  auto decoded = NodeInfo::decode(signed_info.raw);
  if (!decoded) return prefixed(config.source_file.string() + ": own node info: ", decoded.error());
  return signed_info;
}

// --- NetworkMap -----------------------------------------------------------------------------

Result<std::unique_ptr<NetworkMap>> NetworkMap::load(const Certificate& root, std::vector<Crl> crls,
                                                     ByteView signed_parameters,
                                                     const std::vector<Bytes>& signed_node_infos,
                                                     Clock clock) {
  if (signed_node_infos.size() > L::members_max) {
    return makeError(Errc::too_large, std::to_string(signed_node_infos.size()) +
                                          " node infos, over the limit of " +
                                          std::to_string(L::members_max));
  }
  const TimePoint at = clock();
  auto sp = SignedNetworkParameters::decode(signed_parameters);
  CCAL_TRY(sp);
  auto parameters = sp->verify(root, crls, at);
  CCAL_TRY(parameters);
  std::unique_ptr<NetworkMap> map(
      new NetworkMap(root, std::move(crls), std::move(parameters).value(), std::move(clock)));
  std::unique_lock lock(map->mutex_);
  for (const auto& bytes : signed_node_infos) {
    auto sni = SignedNodeInfo::decode(bytes);
    CCAL_TRY(sni);
    auto info = map->verifyMember(*sni, map->crls_, at);
    CCAL_TRY(info);
    if (map->by_name_.count(info->name)) {
      return makeError(Errc::conflict, "member " + quote(info->name) + ": two node infos");
    }
    CCAL_TRY(map->insert(std::make_shared<const NodeInfo>(std::move(info).value())));
  }
  lock.unlock();
  return map;
}

Result<std::vector<Crl>> NetworkMap::readCrlsFile(const fs::path& file) {
  auto pem = readFileBounded(file, crls_file_bytes_max);
  CCAL_TRY(pem);
  return crlsFromPem(*pem, file.string());
}

Result<std::vector<Crl>> NetworkMap::parseCrls(std::string_view pem, const std::string& what) {
  return crlsFromPem(pem, what);
}

Result<std::unique_ptr<NetworkMap>> NetworkMap::loadFiles(const NodeConfig& config, Clock clock) {
  auto root_pem = readFileBounded(config.network_root_file, Certificate::encoded_bytes_max * 2);
  CCAL_TRY(root_pem);
  auto root = Certificate::fromPem(*root_pem);
  if (!root) return prefixed(config.network_root_file.string() + ": ", root.error());
  std::vector<Crl> crls;
  if (!config.crls_file.empty()) {
    auto parsed = readCrlsFile(config.crls_file);
    CCAL_TRY(parsed);
    crls = std::move(parsed).value();
  }
  auto params = readFileBounded(config.network_parameters_file, L::parameters_bytes_max * 2);
  CCAL_TRY(params);
  std::vector<fs::path> files;
  std::error_code ec;
  for (fs::directory_iterator it(config.node_infos_dir, ec), end; !ec && it != end;
       it.increment(ec)) {
    if (it->is_regular_file()) files.push_back(it->path());
    if (files.size() > L::members_max) {
      return makeError(Errc::too_large, config.node_infos_dir.string() + ": over " +
                                            std::to_string(L::members_max) + " node infos");
    }
  }
  if (ec) return makeError(Errc::not_found, config.node_infos_dir.string() + ": " + ec.message());
  std::sort(files.begin(), files.end());
  std::vector<Bytes> infos;
  for (const auto& f : files) {
    auto bytes = readFileBounded(f, L::node_info_bytes_max * 2);
    CCAL_TRY(bytes);
    infos.emplace_back(bytes->begin(), bytes->end());
  }
  auto map = load(*root, std::move(crls), asBytes(*params), infos, std::move(clock));
  if (!map) {
    return prefixed("network map of " + config.source_file.string() + ": ", map.error());
  }
  return map;
}

Result<NodeInfo> NetworkMap::verifyMember(const SignedNodeInfo& signed_info,
                                          std::span<const Crl> crls, TimePoint at) const {
  auto info = signed_info.verify(root_, crls, at);
  CCAL_TRY(info);
  const std::string what = "member " + quote(info->name) + ": ";
  if (info->platform_version < parameters_.min_platform_version) {
    return makeError(Errc::conflict, what + "platform version " +
                                         std::to_string(info->platform_version) +
                                         " is below the network's minimum " +
                                         std::to_string(parameters_.min_platform_version));
  }
  // A notary replica's key is the key the cluster's service key is made of.
  const NotaryReplicaInfo* listed = nullptr;
  for (const auto& n : parameters_.notaries) {
    for (const auto& r : n.replicas) {
      if (r.name == info->name) listed = &r;
    }
  }
  if (listed != nullptr &&
      (info->role != Role::notary_replica || listed->key != info->legal_identity_key)) {
    return makeError(Errc::conflict, what +
                                         "is a notary replica in the network parameters "
                                         "with key " +
                                         listed->key.shortHex() + ", but its node info has role " +
                                         roleName(info->role) + " and key " +
                                         info->legal_identity_key.shortHex());
  }
  if (listed == nullptr && info->role == Role::notary_replica) {
    return makeError(Errc::conflict,
                     what +
                         "has role notary-replica but no notary in the network parameters "
                         "lists it");
  }
  return info;
}

Status NetworkMap::insert(std::shared_ptr<const NodeInfo> info) {
  const auto key_it = by_key_.find(info->legal_identity_key);
  if (key_it != by_key_.end() && key_it->second->name != info->name) {
    return makeError(Errc::conflict, "member " + quote(info->name) + ": legal identity key " +
                                         info->legal_identity_key.shortHex() +
                                         " is already the key of " + quote(key_it->second->name));
  }
  if (by_name_.size() >= L::members_max && !by_name_.count(info->name)) {
    return makeError(Errc::too_large,
                     "the network map is full (" + std::to_string(L::members_max) + " members)");
  }
  by_key_[info->legal_identity_key] = info;
  by_name_[info->name] = std::move(info);
  return {};
}

std::vector<Crl> NetworkMap::crls() const {
  std::shared_lock lock(mutex_);
  return crls_;
}

Result<std::vector<std::string>> NetworkMap::replaceCrls(std::vector<Crl> crls) {
  const TimePoint at = clock_();
  std::unique_lock lock(mutex_);
  for (const auto& c : crls) {
    for (const auto& held : crls_) {
      if (held.issuer() == c.issuer() && c.number() < held.number()) {
        return makeError(Errc::conflict, "revocation list of " + quote(c.issuer().toString()) +
                                             " number " + std::to_string(c.number()) +
                                             " is older than the one held (number " +
                                             std::to_string(held.number()) + ")");
      }
    }
  }
  std::vector<std::string> revoked;
  for (const auto& [name, info] : by_name_) {
    for (const auto* chain : {&info->identity_chain, &info->tls_chain}) {
      CCAL_ASSERT(!chain->empty());
      auto valid = validatePath(chain->front(), std::span(*chain).subspan(1), root_, crls, at,
                                RevocationCheck::if_listed);
      if (valid) continue;
      if (valid.error().code != Errc::certificate_revoked) {
        return prefixed("under the new revocation lists, member " + quote(name) + ": ",
                        valid.error());
      }
      revoked.push_back(name);
      break;
    }
  }
  for (const auto& name : revoked) {
    auto it = by_name_.find(name);
    by_key_.erase(it->second->legal_identity_key);
    by_name_.erase(it);
  }
  crls_ = std::move(crls);
  return revoked;
}

std::shared_ptr<const NodeInfo> NetworkMap::memberByName(std::string_view x500) const {
  auto name = X500Name::parse(x500);
  if (!name) return nullptr;
  std::shared_lock lock(mutex_);
  const auto it = by_name_.find(name->toString());
  return it == by_name_.end() ? nullptr : it->second;
}

std::shared_ptr<const NodeInfo> NetworkMap::memberByKey(const PublicKey& key) const {
  std::shared_lock lock(mutex_);
  const auto it = by_key_.find(key);
  return it == by_key_.end() ? nullptr : it->second;
}

std::vector<std::shared_ptr<const NodeInfo>> NetworkMap::members() const {
  std::shared_lock lock(mutex_);
  std::vector<std::shared_ptr<const NodeInfo>> out;
  for (const auto& [name, info] : by_name_) out.push_back(info);
  return out;
}

const NotaryInfo* NetworkMap::notary(std::string_view x500) const {
  auto name = X500Name::parse(x500);
  if (!name) return nullptr;
  for (const auto& n : parameters_.notaries) {
    if (n.name == name->toString()) return &n;
  }
  return nullptr;
}

Result<std::shared_ptr<const NodeInfo>> NetworkMap::update(ByteView signed_node_info) {
  auto sni = SignedNodeInfo::decode(signed_node_info);
  CCAL_TRY(sni);
  // Verified under the lock: a revocation list replaced meanwhile cannot let
  // a member it revokes back in.
  std::unique_lock lock(mutex_);
  auto info = verifyMember(*sni, crls_, clock_());
  CCAL_TRY(info);
  const auto it = by_name_.find(info->name);
  if (it != by_name_.end()) {
    const auto& current = *it->second;
    const std::string what = "member " + quote(info->name) + ": ";
    if (info->serial <= current.serial) {
      return makeError(Errc::conflict, what + "node info serial " + std::to_string(info->serial) +
                                           " is not above the current " +
                                           std::to_string(current.serial));
    }
    if (info->legal_identity_key != current.legal_identity_key) {
      return makeError(Errc::conflict, what + "node info changes the legal identity key from " +
                                           current.legal_identity_key.shortHex() + " to " +
                                           info->legal_identity_key.shortHex());
    }
    by_key_.erase(current.legal_identity_key);
  }
  auto shared = std::make_shared<const NodeInfo>(std::move(info).value());
  CCAL_TRY(insert(shared));
  return shared;
}

Result<std::string> NetworkMap::identifyPeer(const std::vector<Bytes>& chain_der) const {
  if (chain_der.empty()) {
    return makeError(Errc::certificate_invalid, "the peer presented no certificate");
  }
  if (chain_der.size() > L::chain_certificates_max + 1) {
    return makeError(Errc::too_large, "the peer presented " + std::to_string(chain_der.size()) +
                                          " certificates, over the limit of " +
                                          std::to_string(L::chain_certificates_max + 1));
  }
  std::vector<Certificate> chain;
  for (size_t i = 0; i < chain_der.size(); ++i) {
    auto c = Certificate::fromDer(chain_der[i]);
    if (!c) return prefixed("peer certificate " + std::to_string(i) + ": ", c.error());
    chain.push_back(*c);
  }
  const Certificate& leaf = chain.front();
  const std::string who = "peer " + quote(leaf.subject().toString()) + ": ";
  auto valid = validatePath(leaf, std::span(chain).subspan(1), root_, crls(), clock_(),
                            RevocationCheck::if_listed);
  if (!valid) return prefixed(who, valid.error());
  if (!isTlsCertificate(leaf)) {
    return makeError(Errc::certificate_invalid, who + "the certificate is not a TLS certificate");
  }
  const auto member = memberByName(leaf.subject().toString());
  if (member == nullptr) {
    return makeError(Errc::not_found, who + "not a member of the network map");
  }
  auto key = leaf.publicKey();
  if (!key) return prefixed(who, key.error());
  auto member_key = member->tls_chain.front().publicKey();
  CCAL_ASSERT_MSG(member_key.ok(), "a verified node info holds a TLS certificate without a key");
  if (*key != *member_key) {
    return makeError(Errc::certificate_invalid, who + "TLS key " + key->shortHex() +
                                                    " is not the member's TLS key " +
                                                    member_key->shortHex() + " in its node info");
  }
  return member->name;
}

Result<Endpoint> NetworkMap::endpointOf(std::string_view member) const {
  if (const auto info = memberByName(member)) {
    const auto& a = info->addresses.front();
    return Endpoint{a.host, a.port};
  }
  auto name = X500Name::parse(member);
  if (name) {
    for (const auto& n : parameters_.notaries) {
      for (const auto& r : n.replicas) {
        if (r.name == name->toString()) return Endpoint{r.addresses[0].host, r.addresses[0].port};
      }
    }
  }
  return makeError(Errc::not_found, "member " + quote(member) + " is not in the network map");
}

}  // namespace ccal::node
