#include "node/network_map.h"

#include <doctest/doctest.h>

#include <map>

using namespace ccal;
using namespace ccal::node;
using namespace std::chrono;

namespace {

const TimePoint t0 = sys_days{year{2026} / 1 / 1};
const Validity cert_validity{t0 - hours(1), t0 + days(3650)};

template <class T>
T must(Result<T> r) {
  REQUIRE_MESSAGE(r.ok(), r.error().message);
  return std::move(r).value();
}

X500Name name(const char* s) {
  return must(X500Name::parse(s));
}

// A member's keys and certificates, issued like bootstrap issues them.
struct TestMember {
  std::string x500;
  Role role = Role::node;
  KeyPair ca_key = KeyPair::generate();
  KeyPair identity_key = KeyPair::generate();
  KeyPair tls_key = KeyPair::generate();
  std::vector<Certificate> identity_chain;
  std::vector<Certificate> tls_chain;

  NodeInfo info(uint64_t serial = 1, uint16_t port = 10001) const {
    NodeInfo i;
    i.name = x500;
    i.addresses = {HostPort{"127.0.0.1", port}};
    i.identity_chain = identity_chain;
    i.tls_chain = tls_chain;
    i.legal_identity_key = identity_key.publicKey();
    i.role = role;
    i.serial = serial;
    return i;
  }
  Bytes signedInfo(uint64_t serial = 1, uint16_t port = 10001) const {
    return SignedNodeInfo::sign(info(serial, port), identity_key).encode();
  }
  std::vector<Bytes> tlsDer() const {
    std::vector<Bytes> out;
    for (const auto& c : tls_chain) out.push_back(c.der());
    return out;
  }
};

// A network PKI: root, doorman, network-map certificate, members.
struct TestNetwork {
  KeyPair root_key = KeyPair::generate();
  KeyPair doorman_key = KeyPair::generate();
  KeyPair map_key = KeyPair::generate();
  CertificateAuthority root;
  Certificate doorman_cert;
  CertificateAuthority doorman;
  Certificate map_cert;
  std::map<std::string, TestMember> members;
  NetworkParameters parameters;

  explicit TestNetwork(const char* root_name = "O=Test Root, L=London, C=GB")
      : root(must(CertificateAuthority::createRoot(name(root_name), root_key, cert_validity))),
        doorman_cert(must(root.issueIntermediate(name("O=Test Doorman, L=London, C=GB"),
                                                 doorman_key.publicKey(), cert_validity))),
        doorman(must(CertificateAuthority::fromCertificate(doorman_cert, doorman_key))),
        map_cert(must(root.issueLegalIdentity(name("O=Test Network Map, L=London, C=GB"),
                                              map_key.publicKey(), cert_validity))) {}

  TestMember& add(const std::string& short_name, const std::string& x500, Role role = Role::node,
                  const Validity& validity = cert_validity) {
    TestMember m;
    m.x500 = name(x500.c_str()).toString();
    m.role = role;
    const auto ca_cert =
        must(doorman.issueNodeCa(name(x500.c_str()), m.ca_key.publicKey(), validity));
    const auto ca = must(CertificateAuthority::fromCertificate(ca_cert, m.ca_key));
    m.identity_chain = {
        must(ca.issueLegalIdentity(name(x500.c_str()), m.identity_key.publicKey(), validity)),
        ca_cert, doorman_cert};
    m.tls_chain = {must(ca.issueTls(name(x500.c_str()), m.tls_key.publicKey(), validity)), ca_cert,
                   doorman_cert};
    return members.insert_or_assign(short_name, std::move(m)).first->second;
  }

  // A notary cluster of the given replicas ("any 2f+1").
  void addNotary(const std::string& x500, uint32_t f, const std::vector<std::string>& replicas) {
    NotaryInfo n;
    n.name = name(x500.c_str()).toString();
    n.f = f;
    std::vector<PublicKey> keys;
    for (const auto& r : replicas) {
      const auto& m = members.at(r);
      keys.push_back(m.identity_key.publicKey());
      n.replicas.push_back({m.x500, m.identity_key.publicKey(), {HostPort{"127.0.0.1", 10010}}});
    }
    n.service_key = must(Key::anyOf(2 * f + 1, keys));
    parameters.notaries.push_back(n);
  }

  Bytes signedParameters() const {
    return SignedNetworkParameters::sign(parameters, map_key, map_cert).encode();
  }
  std::vector<Bytes> signedInfos() const {
    std::vector<Bytes> out;
    for (const auto& [n, m] : members) out.push_back(m.signedInfo());
    return out;
  }
};

struct Clock {
  TimePoint now = t0;
  NetworkMap::Clock fn() {
    return [this] { return now; };
  }
};

TestNetwork standardNetwork() {
  TestNetwork net;
  net.add("coop", "O=Haikou Fishing Cooperative, L=Haikou, C=CN");
  net.add("bank", "O=Harbour Bank, L=Haikou, C=CN");
  net.add("regulator", "O=Fisheries Regulator, L=Beijing, C=CN", Role::regulator);
  for (int i = 1; i <= 4; ++i) {
    net.add("notary-" + std::to_string(i),
            "O=Notary Replica " + std::to_string(i) + ", L=Haikou, C=CN", Role::notary_replica);
  }
  net.addNotary("O=CCAL Notary, L=Haikou, C=CN", 1,
                {"notary-1", "notary-2", "notary-3", "notary-4"});
  ObserverRule rule;
  rule.observer = net.members.at("regulator").x500;
  rule.contracts = {"ccal.demo.Iou"};
  rule.parties = {net.members.at("coop").x500};
  net.parameters.observers.push_back(rule);
  return net;
}

std::unique_ptr<NetworkMap> loaded(const TestNetwork& net, Clock& clock,
                                   std::vector<Crl> crls = {}) {
  return must(NetworkMap::load(net.root.certificate(), std::move(crls), net.signedParameters(),
                               net.signedInfos(), clock.fn()));
}

Error loadError(const TestNetwork& net, const std::vector<Bytes>& infos, Clock& clock,
                const Bytes* parameters = nullptr) {
  auto map = NetworkMap::load(net.root.certificate(), {},
                              parameters ? *parameters : net.signedParameters(), infos, clock.fn());
  REQUIRE_MESSAGE(!map.ok(), "the map was expected to be refused");
  return map.error();
}

bool has(const std::string& message, const std::string& part) {
  return message.find(part) != std::string::npos;
}

}  // namespace

// Checks that a message contains a part, printing the message when not.
#define CHECK_HAS(message, part)      \
  do {                                \
    const std::string m_ = (message); \
    CHECK_MESSAGE(has(m_, part), m_); \
  } while (false)

TEST_CASE("a network map of verified members: lookups by name and key, notaries, observers") {
  auto net = standardNetwork();
  Clock clock;
  auto map = loaded(net, clock);
  CHECK(map->members().size() == 7);
  const auto& coop = net.members.at("coop");
  auto by_name = map->memberByName("c=cn, l=Haikou, o=Haikou Fishing Cooperative");  // any spelling
  REQUIRE(by_name != nullptr);
  CHECK(by_name->name == coop.x500);
  CHECK(by_name->legal_identity_key == coop.identity_key.publicKey());
  CHECK(map->memberByKey(coop.identity_key.publicKey()) == by_name);
  CHECK(map->memberByName("O=Nobody, L=Nowhere, C=GB") == nullptr);
  CHECK(map->memberByName("not a name") == nullptr);
  CHECK(map->memberByKey(KeyPair::generate().publicKey()) == nullptr);

  const auto* notary = map->notary("O=CCAL Notary, L=Haikou, C=CN");
  REQUIRE(notary != nullptr);
  CHECK(notary->replicas.size() == 4);
  // 3 of 4 replica signatures fulfil the service key, 2 do not.
  std::vector<PublicKey> signers;
  for (int i = 1; i <= 3; ++i)
    signers.push_back(net.members.at("notary-" + std::to_string(i)).identity_key.publicKey());
  CHECK(notary->service_key.isFulfilledBy(signers));
  signers.pop_back();
  CHECK_FALSE(notary->service_key.isFulfilledBy(signers));
  REQUIRE(map->parameters().observers.size() == 1);
  CHECK(map->parameters().observers[0].contracts == std::vector<std::string>{"ccal.demo.Iou"});

  auto ep = map->endpointOf(coop.x500);
  REQUIRE(ep.ok());
  CHECK(ep->host == "127.0.0.1");
  CHECK(ep->port == 10001);
  CHECK(map->endpointOf("O=Nobody, L=Nowhere, C=GB").error().code == Errc::not_found);

  // Encodings round-trip and are canonical.
  const auto info = coop.info();
  CHECK(must(NodeInfo::decode(info.encode())).encode() == info.encode());
  CHECK(must(NetworkParameters::decode(net.parameters.encode())).encode() ==
        net.parameters.encode());
}

TEST_CASE("identifyPeer: members' TLS chains pass; foreign, revoked, expired, unknown do not") {
  auto net = standardNetwork();
  Clock clock;
  auto map = loaded(net, clock);
  const auto& bank = net.members.at("bank");

  CHECK(must(map->identifyPeer(bank.tlsDer())) == bank.x500);
  // A peer that also sends the root is fine.
  auto with_root = bank.tlsDer();
  with_root.push_back(net.root.certificate().der());
  CHECK(must(map->identifyPeer(with_root)) == bank.x500);

  auto refused = [&](const std::vector<Bytes>& chain, Errc code, const std::string& part) {
    auto r = map->identifyPeer(chain);
    REQUIRE_MESSAGE(!r.ok(), "peer accepted: " << part);
    CHECK(r.error().code == code);
    CHECK_MESSAGE(has(r.error().message, part), r.error().message);
  };
  refused({}, Errc::certificate_invalid, "no certificate");
  refused({Bytes{1, 2, 3}}, Errc::malformed, "peer certificate 0");

  // The identity certificate is not a TLS certificate.
  std::vector<Bytes> identity;
  for (const auto& c : bank.identity_chain) identity.push_back(c.der());
  refused(identity, Errc::certificate_invalid, "not a TLS certificate");

  // A chain from a foreign network root, with the same member name.
  TestNetwork foreign("O=Other Root, L=Paris, C=FR");
  const auto& impostor = foreign.add("bank", "O=Harbour Bank, L=Haikou, C=CN");
  refused(impostor.tlsDer(), Errc::certificate_invalid, "peer 'O=Harbour Bank, L=Haikou, C=CN'");

  // A self-signed TLS-looking certificate.
  const KeyPair self_key = KeyPair::generate();
  const auto self = must(CertificateAuthority::createRoot(name("O=Harbour Bank, L=Haikou, C=CN"),
                                                          self_key, cert_validity));
  refused({self.certificate().der()}, Errc::certificate_invalid, "");

  // A properly issued member of this PKI without a node info in the map.
  const auto& stranger = net.add("stranger", "O=Stranger Co, L=Haikou, C=CN");
  refused(stranger.tlsDer(), Errc::not_found, "not a member of the network map");

  // A second TLS certificate for the bank from its own node CA, for another key (a stolen
  // node CA key): chains fine, but is not the key in the bank's node info.
  {
    const auto ca = must(CertificateAuthority::fromCertificate(bank.tls_chain[1], bank.ca_key));
    const auto other = must(ca.issueTls(name("O=Harbour Bank, L=Haikou, C=CN"),
                                        KeyPair::generate().publicKey(), cert_validity));
    refused({other.der(), bank.tls_chain[1].der(), bank.tls_chain[2].der()},
            Errc::certificate_invalid, "is not the member's TLS key");
  }

  // Expired: the same chain after the certificates' validity.
  clock.now = t0 + days(3651);
  refused(bank.tlsDer(), Errc::certificate_expired, "expired");
  clock.now = t0;

  // Revoked: the doorman revokes the bank's node CA.
  const auto crl_root = must(net.root.issueCrl({}, t0, t0 + days(30)));
  const std::vector<Certificate> revoke = {bank.tls_chain[1]};
  const auto crl_doorman = must(net.doorman.issueCrl(revoke, t0, t0 + days(30)));
  auto revoked_map =
      NetworkMap::load(net.root.certificate(), {crl_root, crl_doorman}, net.signedParameters(),
                       {net.members.at("coop").signedInfo()}, clock.fn());
  REQUIRE(revoked_map.ok());
  auto r = (*revoked_map)->identifyPeer(bank.tlsDer());
  REQUIRE(!r.ok());
  CHECK(r.error().code == Errc::certificate_revoked);
  // And a map refuses to load a revoked member's node info, naming it.
  auto with_bank = NetworkMap::load(net.root.certificate(), {crl_root, crl_doorman},
                                    net.signedParameters(), {bank.signedInfo()}, clock.fn());
  REQUIRE(!with_bank.ok());
  CHECK(with_bank.error().code == Errc::certificate_revoked);
  CHECK_HAS(with_bank.error().message, "member 'O=Harbour Bank, L=Haikou, C=CN'");
}

TEST_CASE("forged, foreign and tampered node infos are refused, naming the member") {
  auto net = standardNetwork();
  Clock clock;
  auto infos = net.signedInfos();
  const auto& coop = net.members.at("coop");

  // Signed by a key that is not the member's legal identity key.
  auto forged = SignedNodeInfo::sign(coop.info(), KeyPair::generate()).encode();
  auto e = loadError(net, {forged}, clock);
  CHECK(e.code == Errc::bad_signature);
  CHECK_HAS(e.message, "member 'O=Haikou Fishing Cooperative, L=Haikou, C=CN'");

  // Right key, but the bytes changed after signing.
  auto s = SignedNodeInfo::sign(coop.info(), coop.identity_key);
  auto changed = coop.info();
  changed.addresses = {HostPort{"10.6.6.6", 666}};
  s.raw = changed.encode();
  e = loadError(net, {s.encode()}, clock);
  CHECK(e.code == Errc::bad_signature);

  // Certificates from a foreign root.
  TestNetwork foreign("O=Other Root, L=Paris, C=FR");
  const auto& alien = foreign.add("coop", "O=Haikou Fishing Cooperative, L=Haikou, C=CN");
  e = loadError(net, {alien.signedInfo()}, clock);
  CHECK(e.code == Errc::certificate_invalid);
  CHECK_HAS(
      e.message,
      "member 'O=Haikou Fishing Cooperative, L=Haikou, C=CN': legal identity certificate chain");

  // One member's node info claiming another member's name, with its own certificates.
  auto claim = net.members.at("bank").info();
  claim.name = coop.x500;
  e = loadError(net, {SignedNodeInfo::sign(claim, net.members.at("bank").identity_key).encode()},
                clock);
  CHECK(e.code == Errc::certificate_invalid);
  CHECK_HAS(e.message, "is for 'O=Harbour Bank, L=Haikou, C=CN', not for the member");

  // The TLS chain swapped for the identity chain.
  auto swapped = coop.info();
  swapped.tls_chain = coop.identity_chain;
  e = loadError(net, {SignedNodeInfo::sign(swapped, coop.identity_key).encode()}, clock);
  CHECK_HAS(e.message, "TLS certificate does not carry the key usages");

  // Expired certificates.
  clock.now = t0 + days(4000);
  e = loadError(net, {coop.signedInfo()}, clock);
  CHECK(e.code == Errc::certificate_expired);
  clock.now = t0;

  // Two node infos of one member; garbage bytes; a truncated node info.
  e = loadError(net, {coop.signedInfo(), coop.signedInfo(2)}, clock);
  CHECK(e.code == Errc::conflict);
  e = loadError(net, {Bytes(64, 0xab)}, clock);
  CHECK_HAS(e.message, "signed node info");
  auto good = coop.signedInfo();
  good.resize(good.size() - 8);
  CHECK(!NetworkMap::load(net.root.certificate(), {}, net.signedParameters(), {good}, clock.fn())
             .ok());

  // A notary replica whose node info has another key than the parameters list.
  auto& replica = net.members.at("notary-2");
  replica.identity_key = KeyPair::generate();
  auto ca = must(CertificateAuthority::fromCertificate(replica.identity_chain[1], replica.ca_key));
  replica.identity_chain[0] = must(ca.issueLegalIdentity(
      name("O=Notary Replica 2, L=Haikou, C=CN"), replica.identity_key.publicKey(), cert_validity));
  e = loadError(net, {replica.signedInfo()}, clock);
  CHECK(e.code == Errc::conflict);
  CHECK_HAS(e.message, "is a notary replica in the network parameters");

  // A platform version below the network's minimum.
  net.parameters.min_platform_version = 2;
  const auto params = net.signedParameters();
  e = loadError(net, {coop.signedInfo()}, clock, &params);
  CHECK_HAS(e.message, "platform version 1 is below the network's minimum 2");
}

TEST_CASE("network parameters must be signed by the root's network-map certificate") {
  auto net = standardNetwork();
  Clock clock;
  const auto infos = net.signedInfos();
  const auto& coop = net.members.at("coop");

  // Signed by a member's legal identity key with its (valid) identity certificate.
  auto by_member =
      SignedNetworkParameters::sign(net.parameters, coop.identity_key, coop.identity_chain[0])
          .encode();
  auto e = loadError(net, infos, clock, &by_member);
  CHECK(e.code == Errc::certificate_invalid);
  CHECK_HAS(e.message, "not directly by the network root");

  // The doorman (a CA issued by the root) may not sign them either.
  auto by_doorman =
      SignedNetworkParameters::sign(net.parameters, net.doorman_key, net.doorman_cert).encode();
  e = loadError(net, infos, clock, &by_doorman);
  CHECK_HAS(e.message, "is not a signing (non-repudiation) certificate");

  // The network-map certificate with another key's signature.
  auto wrong_key =
      SignedNetworkParameters::sign(net.parameters, KeyPair::generate(), net.map_cert).encode();
  e = loadError(net, infos, clock, &wrong_key);
  CHECK(e.code == Errc::bad_signature);

  // Tampered after signing: more replicas tolerated by a lower threshold.
  auto tampered = SignedNetworkParameters::sign(net.parameters, net.map_key, net.map_cert);
  auto changed = net.parameters;
  changed.max_message_bytes = 1u << 30;
  tampered.raw = changed.encode();
  const auto tampered_bytes = tampered.encode();
  e = loadError(net, infos, clock, &tampered_bytes);
  CHECK(e.code == Errc::bad_signature);
  CHECK_HAS(e.message, "network parameters");

  // A foreign network's parameters.
  TestNetwork foreign("O=Other Root, L=Paris, C=FR");
  const auto foreign_params = foreign.signedParameters();
  e = loadError(net, {}, clock, &foreign_params);
  CHECK(e.code == Errc::certificate_invalid);

  // Properly signed, but a cluster whose replica count is not 3f+1.
  auto bad = net.parameters;
  bad.notaries[0].f = 2;
  const auto bad_bytes = SignedNetworkParameters::sign(bad, net.map_key, net.map_cert).encode();
  e = loadError(net, {}, clock, &bad_bytes);
  CHECK_HAS(e.message, "4 replicas, but f = 2 needs 3f+1 = 7");
}

TEST_CASE("updated node infos with a higher serial replace the old one; others are refused") {
  auto net = standardNetwork();
  Clock clock;
  auto map = loaded(net, clock);
  const auto& coop = net.members.at("coop");

  auto moved = map->update(coop.signedInfo(2, 20001));
  REQUIRE_MESSAGE(moved.ok(), moved.error().message);
  CHECK(must(map->endpointOf(coop.x500)).port == 20001);
  CHECK(map->memberByKey(coop.identity_key.publicKey())->serial == 2);

  auto stale = map->update(coop.signedInfo(2, 30001));
  REQUIRE(!stale.ok());
  CHECK(stale.error().code == Errc::conflict);
  CHECK_HAS(stale.error().message, "serial 2 is not above the current 2");
  CHECK(!map->update(coop.signedInfo(1, 30001)).ok());
  CHECK(must(map->endpointOf(coop.x500)).port == 20001);

  // A higher serial that is not signed by the member.
  auto forged = SignedNodeInfo::sign(coop.info(9, 30001), KeyPair::generate()).encode();
  CHECK(map->update(forged).error().code == Errc::bad_signature);
  CHECK(must(map->endpointOf(coop.x500)).port == 20001);

  // A new member joins.
  const auto& newcomer = net.add("newcomer", "O=New Cooperative, L=Sanya, C=CN");
  REQUIRE(map->update(newcomer.signedInfo()).ok());
  CHECK(must(map->identifyPeer(newcomer.tlsDer())) == newcomer.x500);
}

TEST_CASE("every single-bit corruption of a signed node info or of signed parameters is refused") {
  auto net = standardNetwork();
  Clock clock;
  const auto& coop = net.members.at("coop");
  const Bytes info = coop.signedInfo();
  const Bytes params = net.signedParameters();
  // Canonical encodings and signatures over them: no other byte string means the same, so
  // every corrupted input must be refused (and none may crash the decoder or the verifier).
  // Every byte of the envelopes' ends (struct headers, signature, key); every 7th byte of the
  // long middles (signed bytes, certificates), to keep the test short under the sanitizers.
  auto next = [](size_t i, size_t size) { return i < 64 || i + 320 >= size ? i + 1 : i + 7; };
  for (size_t i = 0; i < info.size(); i = next(i, info.size())) {
    Bytes bad = info;
    bad[i] ^= static_cast<uint8_t>(1u << (i % 8));
    auto sni = SignedNodeInfo::decode(bad);
    if (sni.ok()) CHECK_MESSAGE(!sni->verify(net.root.certificate(), {}, t0).ok(), "byte " << i);
  }
  for (size_t i = 0; i < params.size(); i = next(i, params.size())) {
    Bytes bad = params;
    bad[i] ^= static_cast<uint8_t>(1u << (i % 8));
    auto map = NetworkMap::load(net.root.certificate(), {}, bad, {}, clock.fn());
    CHECK_MESSAGE(!map.ok(), "byte " << i);
  }
}

TEST_CASE("observer rules with a command filter and an amount threshold: round trip and refusals") {
  NetworkParameters p;
  ObserverRule lc;
  lc.observer = "O=Fisheries Regulator, L=Beijing, C=CN";
  lc.contracts = {"ccal.lc", "ccal.loan"};
  ObserverRule financing;
  financing.observer = lc.observer;
  financing.contracts = {"ccal.receivable"};
  financing.commands = {"ccal.receivable.Finance"};
  financing.amount_at_least = 1'000'000;
  financing.amount_field = "amount";
  ObserverRule zero = financing;
  zero.commands = {};
  zero.amount_at_least = 0;  // a threshold of 0 is a threshold, not its absence
  p.observers = {lc, financing, zero};
  auto back = NetworkParameters::decode(p.encode());
  REQUIRE_MESSAGE(back, (back ? "" : back.error().message));
  REQUIRE(back->observers.size() == 3);
  CHECK(back->observers[0].commands.empty());
  CHECK_FALSE(back->observers[0].amount_at_least.has_value());
  CHECK(back->observers[0].amount_field.empty());
  CHECK(back->observers[1].commands == std::vector<std::string>{"ccal.receivable.Finance"});
  CHECK(back->observers[1].amount_at_least == std::optional<int64_t>(1'000'000));
  CHECK(back->observers[1].amount_field == "amount");
  CHECK(back->observers[2].amount_at_least == std::optional<int64_t>(0));
  CHECK(back->encode() == p.encode());
  // A rule without filters encodes as before the filters existed: a filter-less rule's
  // canonical bytes do not grow (unset fields are truncated), so older files still decode.
  NetworkParameters plain;
  plain.observers = {lc};
  NetworkParameters with_empty = plain;
  with_empty.observers[0].commands = {};
  CHECK(plain.encode() == with_empty.encode());

  auto refused = [](ObserverRule rule) {
    NetworkParameters bad;
    bad.observers = {std::move(rule)};
    auto r = NetworkParameters::decode(bad.encode());
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Errc::malformed);
    return r.error().message;
  };
  ObserverRule negative = financing;
  negative.amount_at_least = -1;
  CHECK_HAS(refused(negative), "amountAtLeast -1 is negative");
  ObserverRule no_contract = financing;
  no_contract.contracts = {};
  no_contract.commands = {};
  CHECK_HAS(refused(no_contract), "names none");
  ObserverRule foreign_command = financing;
  foreign_command.commands = {"ccal.lc.Pay"};
  CHECK_HAS(refused(foreign_command), "command 'ccal.lc.Pay' is not a command of its contracts");
  ObserverRule prefix_only = financing;
  prefix_only.commands = {"ccal.receivableFinance"};
  CHECK_HAS(refused(prefix_only), "is not a command of its contracts");
  ObserverRule no_field = financing;
  no_field.amount_field = "";
  CHECK_HAS(refused(no_field), "without an amountField");
}

TEST_CASE(
    "replaceCrls: a newer list revokes a member at once; rollbacks and badly signed lists are "
    "refused") {
  auto net = standardNetwork();
  Clock clock;
  const auto& bank = net.members.at("bank");
  const auto& coop = net.members.at("coop");
  const auto crl_root = must(net.root.issueCrl({}, t0, t0 + days(30)));
  const auto empty = must(net.doorman.issueCrl({}, t0, t0 + days(30)));
  auto map = loaded(net, clock, {crl_root, empty});
  CHECK(must(map->identifyPeer(bank.tlsDer())) == bank.x500);
  const std::vector<Certificate> revoke = {bank.tls_chain[1]};  // the bank's node CA
  const auto revoking = must(net.doorman.issueCrl(revoke, t0, t0 + days(30), &empty));
  REQUIRE(revoking.number() > empty.number());

  // A list under the doorman's name from another network's doorman: badly
  // signed here, so every member's path fails; refused, nothing changed.
  TestNetwork foreign("O=Other Root, L=Paris, C=FR");
  const auto forged = must(foreign.doorman.issueCrl({}, t0, t0 + days(30)));
  REQUIRE(forged.issuer() == empty.issuer());
  auto bad = map->replaceCrls({crl_root, forged});
  REQUIRE(!bad.ok());
  CHECK(bad.error().code == Errc::certificate_invalid);
  CHECK_HAS(bad.error().message, "under the new revocation lists, member");
  CHECK(map->identifyPeer(bank.tlsDer()).ok());

  // The doorman's next list revokes the bank: it leaves the map and its TLS
  // chain is refused from now on; the others stay.
  auto gone = map->replaceCrls({crl_root, revoking});
  REQUIRE(gone.ok());
  CHECK(*gone == std::vector<std::string>{bank.x500});
  CHECK(map->memberByName(bank.x500) == nullptr);
  CHECK(map->identifyPeer(bank.tlsDer()).error().code == Errc::certificate_revoked);
  CHECK(must(map->identifyPeer(coop.tlsDer())) == coop.x500);
  CHECK(map->crls().size() == 2);

  // The older list again (a rollback): refused, the revocation stands; the
  // bank's node info is refused as revoked.
  auto back = map->replaceCrls({crl_root, empty});
  REQUIRE(!back.ok());
  CHECK(back.error().code == Errc::conflict);
  CHECK_HAS(back.error().message, "older than the one held");
  CHECK(map->identifyPeer(bank.tlsDer()).error().code == Errc::certificate_revoked);
  auto again = map->update(bank.signedInfo());
  REQUIRE(!again.ok());
  CHECK(again.error().code == Errc::certificate_revoked);
}
