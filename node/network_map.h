#pragma once
// The network map: the signed network parameters and the members' signed node infos, each
// verified against the network root before anything is believed.
//
// Trust rules:
//  - Network parameters are signed by the operator's network-map key, whose certificate is
//    an end-entity certificate issued directly by the network root (no intermediates: a
//    member's certificates, issued under the doorman, can never sign parameters).
//  - A node info is signed by the member's legal identity key; its identity and TLS
//    certificates are issued for the member's X.500 name by the member's own node CA
//    (name-constrained to that name), under the doorman, under the root. The identity
//    certificate is a legal-identity certificate (non-repudiation); the TLS certificate
//    carries serverAuth and clientAuth.
//  - Revocation lists given to the map are checked on every path (RevocationCheck::if_listed:
//    a CA without a list is not checked).
// Each refusal is an Error naming the member (or the parameters) and the reason.

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <vector>

#include "ledger/bytes.h"
#include "ledger/composite_key.h"
#include "ledger/crypto.h"
#include "ledger/pki.h"
#include "ledger/result.h"
#include "node/config.h"
#include "node/peer_directory.h"

namespace ccal::node {

// Bounds on what a map accepts, in one place.
struct NetworkMapLimits {
  static constexpr size_t parameters_bytes_max = 1u << 20;
  static constexpr size_t node_info_bytes_max = 64u << 10;
  static constexpr size_t notaries_max = 64;
  static constexpr size_t replicas_max = 64;
  static constexpr size_t observer_rules_max = 256;
  static constexpr size_t rule_entries_max = 1024;  // contracts or parties in one rule
  static constexpr size_t addresses_max = 8;
  static constexpr size_t chain_certificates_max = 4;
  static constexpr size_t text_bytes_max = 1024;
  static constexpr size_t members_max = 10'000;
};

struct NotaryReplicaInfo {
  std::string name;  // X.500, canonical
  PublicKey key;     // the replica's legal identity key
  std::vector<HostPort> addresses;
};

struct NotaryInfo {
  std::string name;  // X.500 name of the notary service, canonical
  Key service_key;   // threshold key over the replicas' keys
  bool validating = false;
  uint32_t f = 0;
  std::vector<NotaryReplicaInfo> replicas;  // 3f+1
};

// See flows::ObserverRule for what a rule matches. Decoding checks that the filters
// (commands, amount_at_least) come with contracts, that each command is named
// "<one of the rule's contracts>.<Name>", and that the threshold is not negative.
struct ObserverRule {
  std::string observer;                // X.500
  std::vector<std::string> contracts;  // contract names
  std::vector<std::string> parties;    // X.500 names
  bool all_transactions = false;
  std::vector<std::string> commands;       // command types; empty: any
  std::optional<int64_t> amount_at_least;  // none: any amount
  std::string amount_field;                // the declared int64 field, with amount_at_least
};

struct NetworkParameters {
  uint32_t epoch = 1;
  uint32_t min_platform_version = 1;
  uint32_t max_message_bytes = 10u << 20;
  uint32_t max_transaction_bytes = 5u << 20;
  std::vector<NotaryInfo> notaries;
  std::vector<ObserverRule> observers;
  int64_t modified_micros = 0;

  Bytes encode() const;
  // Canonical bytes only; checks names, addresses, 3f+1 replicas and that the service key is
  // made of the replicas' keys.
  static Result<NetworkParameters> decode(ByteView bytes);
};

struct SignedNetworkParameters {
  Bytes raw;  // canonical NetworkParameters
  DigitalSignature signature;
  Bytes signer_certificate_der;

  static SignedNetworkParameters sign(const NetworkParameters& parameters, const KeyPair& key,
                                      const Certificate& certificate);
  Bytes encode() const;
  static Result<SignedNetworkParameters> decode(ByteView bytes);
  // Checks the signer's certificate (issued directly by `root`, valid at `at`, not revoked,
  // a signing certificate for the signature's key) and the signature; returns the parameters.
  Result<NetworkParameters> verify(const Certificate& root, std::span<const Crl> crls,
                                   TimePoint at) const;
};

struct NodeInfo {
  std::string name;  // X.500, canonical
  std::vector<HostPort> addresses;
  std::vector<Certificate> identity_chain;  // identity, node CA, doorman
  std::vector<Certificate> tls_chain;       // TLS, node CA, doorman
  PublicKey legal_identity_key;
  Role role = Role::node;
  uint32_t platform_version = 1;
  uint64_t serial = 1;

  Bytes encode() const;
  static Result<NodeInfo> decode(ByteView bytes);
};

struct SignedNodeInfo {
  Bytes raw;  // canonical NodeInfo
  DigitalSignature signature;

  static SignedNodeInfo sign(const NodeInfo& info, const KeyPair& identity_key);
  Bytes encode() const;
  static Result<SignedNodeInfo> decode(ByteView bytes);
  // Checks both certificate chains and the signature; returns the node info.
  Result<NodeInfo> verify(const Certificate& root, std::span<const Crl> crls, TimePoint at) const;
};

// This member's own node info, from the files its config names (identity key, identity and
// TLS chains) and its advertised address, role and platform version, signed with its
// identity key. A node whose address changed publishes one with a serial above its last.
Result<SignedNodeInfo> signOwnNodeInfo(const NodeConfig& config, uint64_t serial);

class NetworkMap final : public PeerDirectory {
 public:
  using Clock = std::function<TimePoint()>;
  static TimePoint systemNow() { return std::chrono::system_clock::now(); }

  // Verifies the parameters and every node info at clock(); the first that does not verify
  // fails the load with an error naming it. Also refused: two node infos of one name or one
  // identity key, a notary replica whose node info's key is not the key in the parameters,
  // a platform version below the parameters' minimum.
  static Result<std::unique_ptr<NetworkMap>> load(const Certificate& root, std::vector<Crl> crls,
                                                  ByteView signed_parameters,
                                                  const std::vector<Bytes>& signed_node_infos,
                                                  Clock clock = systemNow);
  // From the files a node's config names: network root, CRLs (if any), parameters, and every
  // regular file in the node-infos folder.
  static Result<std::unique_ptr<NetworkMap>> loadFiles(const NodeConfig& config,
                                                       Clock clock = systemNow);

  const NetworkParameters& parameters() const { return parameters_; }
  const Certificate& root() const { return root_; }

  // A member by X.500 name (any spelling X500Name::parse accepts), or nullptr.
  std::shared_ptr<const NodeInfo> memberByName(std::string_view x500) const;
  std::shared_ptr<const NodeInfo> memberByKey(const PublicKey& legal_identity_key) const;
  std::vector<std::shared_ptr<const NodeInfo>> members() const;
  // The notary cluster with that X.500 name, or nullptr.
  const NotaryInfo* notary(std::string_view x500) const;

  // A newer node info (address change, renewed certificates): verified like at load, and
  // accepted only with a serial above the current one and the same legal identity key. A
  // node info of a name not yet in the map is a new member. Returns the accepted node info.
  Result<std::shared_ptr<const NodeInfo>> update(ByteView signed_node_info);

  // Replaces the revocation lists (say, a re-read crls file) and removes the members whose
  // certificates the new lists revoke; returns their names. Refused, naming the list or the
  // member, with nothing changed: a list older (a lower number) than the list of the same
  // issuer held now (a rollback), and a set under which a member's identity or TLS chain
  // fails for another reason than revocation (a list badly signed, expired, or missing).
  // Connections already open are the link's to re-check (identifyPeer).
  Result<std::vector<std::string>> replaceCrls(std::vector<Crl> crls);
  // The revocation lists of a PEM file (one or more "X509 CRL" blocks, the file at most
  // crls_file_bytes_max), or of its text; errors name the file (`what`).
  static constexpr size_t crls_file_bytes_max = 4 * Crl::encoded_bytes_max;
  static Result<std::vector<Crl>> readCrlsFile(const std::filesystem::path& file);
  static Result<std::vector<Crl>> parseCrls(std::string_view pem, const std::string& what);
  std::vector<Crl> crls() const;

  // PeerDirectory. identifyPeer accepts a chain whose leaf chains to the root at clock(), is
  // not revoked, carries the TLS usages, and whose subject is a member and key is that
  // member's TLS key.
  Result<std::string> identifyPeer(const std::vector<Bytes>& chain_der) const override;
  Result<Endpoint> endpointOf(std::string_view member) const override;

 private:
  NetworkMap(Certificate root, std::vector<Crl> crls, NetworkParameters parameters, Clock clock)
      : root_(std::move(root)),
        parameters_(std::move(parameters)),
        clock_(std::move(clock)),
        crls_(std::move(crls)) {}
  Result<NodeInfo> verifyMember(const SignedNodeInfo& signed_info, std::span<const Crl> crls,
                                TimePoint at) const;
  // Caller holds mutex_ exclusively.
  Status insert(std::shared_ptr<const NodeInfo> info);

  const Certificate root_;
  const NetworkParameters parameters_;
  const Clock clock_;

  mutable std::shared_mutex mutex_;  // guards crls_, by_name_ and by_key_
  std::vector<Crl> crls_;
  std::map<std::string, std::shared_ptr<const NodeInfo>, std::less<>> by_name_;
  std::map<PublicKey, std::shared_ptr<const NodeInfo>> by_key_;
};

// The usages CCAL gives its end-entity certificates, read from the DER with OpenSSL.
bool isLegalIdentityCertificate(const Certificate& certificate);  // nonRepudiation, not a CA
bool isTlsCertificate(const Certificate& certificate);  // serverAuth + clientAuth, not a CA

}  // namespace ccal::node
