#pragma once
// NotaryClient: asks a notary cluster to notarise a transaction and turns
// the replicas' replies into an answer a flow can trust.
//
// It builds the request (non-validating by default: the transaction filtered
// to inputs, references, notary and time window), submits it through a
// RequestChannel (notary/state_machine.h), verifies each replica's reply
// against that replica's key, and completes with exactly one of:
//  - notarised: replica signatures over the transaction id whose keys fulfil
//    the cluster's composite key (2f+1 of 3f+1): at least f+1 of them are
//    honest replicas that committed the request, so the transaction's inputs
//    are consumed by it in the cluster's agreed order, and no other quorum
//    can ever sign a transaction spending them (two quorums of 2f+1 out of
//    3f+1 share f+1 replicas, one of them honest);
//  - conflict: f+1 replicas (so at least one honest) signed the same
//    conflict answer, naming each conflicting StateRef and the hash of the
//    transaction that consumed it; the signed replies are kept as proof;
//  - an error: f+1 replicas signed the same refusal (malformed, wrong
//    notary, time window outside, ...), or the answer did not come within
//    timeout_micros (Errc::timeout), or the request was refused at once.
// A reply that does not decode, comes from an index outside the cluster,
// answers another request, or carries a bad signature or proof is logged
// and ignored: one Byzantine replica can delay nothing and decide nothing.
//
// Executor thread only (the RequestChannel's, whose callbacks run there).

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "flows/io.h"
#include "ledger/composite_key.h"
#include "ledger/crypto.h"
#include "ledger/signed_transaction.h"
#include "notary/notarisation_messages.h"
#include "notary/state_machine.h"

namespace ccal::notary {

// The cluster as the network map describes it (node::NotaryInfo): its name,
// composite key, mode and replicas' keys in replica index order.
struct NotaryClusterInfo {
  std::string name;
  Key service_key;
  bool validating = false;
  uint32_t f = 0;
  std::vector<PublicKey> replica_keys;  // 3f+1, index order
};

struct NotaryClientConfig {
  int64_t timeout_micros = 30'000'000;  // whole notarisation, from submit to answer
  uint32_t verified_roots_max = 4096;   // (replica, batch root) pairs remembered as verified
  uint32_t pending_requests_max = 4096; // notarisations waiting for answers; more are refused
  NotarisationLimits limits;
  // Where refused replies are reported; stderr when empty.
  std::function<void(std::string_view)> log;
};

struct NotarisationResult {
  enum class Kind { notarised, conflict };
  Kind kind = Kind::notarised;
  SecureHash txId;
  // notarised: the replicas' transaction signatures (fulfilling the service key).
  std::vector<DigitalSignature> signatures;
  // conflict: the agreed answer and the f+1 signed replies that prove it.
  std::vector<StateConflict> conflicts;
  std::vector<Bytes> proof;  // encoded SignedNotarisationReply, each from a different replica
};

class NotaryClient {
 public:
  using Done = std::function<void(Result<NotarisationResult>)>;

  NotaryClient(flows::Executor& executor, RequestChannel& channel, NotaryClusterInfo cluster,
               NotaryClientConfig config = {});
  ~NotaryClient();
  NotaryClient(const NotaryClient&) = delete;
  NotaryClient& operator=(const NotaryClient&) = delete;

  // The request a transaction needs: filtered for a non-validating notary,
  // whole with its dependencies for a validating one.
  Bytes requestFor(const SignedTransaction& stx, const std::vector<SignedTransaction>& dependencies = {}) const;

  // Notarises stx (dependencies only for a validating cluster). done runs
  // once, on the executor.
  void notarise(const SignedTransaction& stx, Done done,
                const std::vector<SignedTransaction>& dependencies = {});
  // Submits a prepared request body for the transaction `tx_id`.
  void submit(const SecureHash& tx_id, Bytes body, Done done);

  // Checks a conflict proof: f+1 distinct replicas of this cluster signed
  // the same conflict answer for tx_id. For anyone handed a conflict.
  Status verifyConflictProof(const SecureHash& tx_id, const std::vector<Bytes>& proof) const;

  struct Counters {
    uint64_t requests = 0;
    uint64_t notarised = 0;
    uint64_t conflicts = 0;
    uint64_t errors = 0;
    uint64_t timeouts = 0;
    uint64_t replies_ignored = 0;  // malformed, badly signed, foreign or duplicate replies
    uint64_t root_verifications = 0;  // Ed25519 verifications of batch roots (cache misses)
  };
  const Counters& counters() const { return counters_; }
  uint32_t successThreshold() const;  // replica signatures needed: 2f+1 for 3f+1
  uint32_t agreementThreshold() const { return cluster_.f + 1; }

 private:
  struct Pending;
  void onReply(const std::shared_ptr<Pending>& pending, uint32_t replica, ByteView bytes);
  void finish(const std::shared_ptr<Pending>& pending, Result<NotarisationResult> result);
  void ignore(const Pending& pending, uint32_t replica, const std::string& why);
  // Verifies a signed reply's proof and root signature by `replica`.
  Status verifyRoot(uint32_t replica, const SignedNotarisationReply& reply);
  Status verifyRootUncached(uint32_t replica, const SignedNotarisationReply& reply) const;

  flows::Executor& executor_;
  RequestChannel& channel_;
  NotaryClusterInfo cluster_;
  NotaryClientConfig config_;
  Counters counters_;
  std::map<uint64_t, std::shared_ptr<Pending>> pending_;  // by client_seq
  // Batch roots already verified, per replica: (replica, root-signed bytes hash).
  std::set<std::pair<uint32_t, SecureHash>> verified_roots_;
  std::vector<std::pair<uint32_t, SecureHash>> verified_order_;  // eviction order (FIFO)
  size_t verified_next_evict_ = 0;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace ccal::notary
