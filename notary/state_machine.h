#pragma once
// The seam between the BFT replication protocol (notary/replica.*, PBFT) and
// what it replicates (notary/uniqueness.*, the notarisation state machine:
// which StateRefs are consumed by which transaction).
//
// The protocol authenticates clients, orders their requests in batches,
// agrees on each batch and a timestamp for it, and hands committed batches to
// the state machine in sequence order. The state machine checks and executes
// them deterministically: every honest replica that executes the same
// batches in the same order reaches the same state and gives the same
// replies.
//
// State transfer. Executing batch s yields, besides the replies, the batch's
// *effects*: a canonical encoding of everything the batch changed in the
// state (for the notary: the StateRefs it consumed and by which transaction).
// The protocol keeps a digest chain over them,
//   D(0) = zero hash,  D(s) = SHA-256("ccal.notary.state.v1" || D(s-1) || SHA-256(effects(s)))
// which is the state digest its checkpoints certify. A replica that is
// behind fetches effects of batches it missed from other replicas, checks
// them against a certified chain (each effects blob against its hash, the
// hashes against the certified D) and applies them with applyEffects(),
// without re-executing the requests. Effects are kept by the state machine
// (they are its state, indexed by batch), so the log of requests can be
// truncated at checkpoints while any replica can still catch up from zero.

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "ledger/bytes.h"
#include "ledger/result.h"
#include "ledger/secure_hash.h"

namespace ccal::notary {

// A client's request, after the protocol has authenticated the client.
struct Request {
  std::string client;       // requester's X.500 name (canonical string), as authenticated
  uint64_t client_seq = 0;  // the client's request number (PBFT's timestamp), > 0
  Bytes body;               // the state machine's encoding (a notarisation request)
};

// A committed batch, as every honest replica sees it.
struct Batch {
  uint64_t seq = 0;         // 1, 2, 3, ... without gaps
  uint64_t view = 0;        // the view in which it committed (information only)
  int64_t time_micros = 0;  // the primary's timestamp, accepted by 2f+1 replicas
                            // as within the allowed drift of their clocks
  std::vector<Request> requests;
  // Empty, or body_hashes[i] = SHA-256 of requests[i].body (the protocol
  // has them already; the state machine need not hash the bodies again).
  std::vector<SecureHash> body_hashes;
};

struct Executed {
  std::vector<Bytes> replies;  // replies[i] answers batch.requests[i]
  Bytes effects;               // canonical; equal on every honest replica
  // Optional: the same replies in the state machine's compact form, which
  // expandReplies() turns back into them; the replica keeps this durably
  // (its reply cache across restarts) instead of the replies themselves.
  Bytes packed_replies;
};

// Implemented by the notarisation state machine; driven by the protocol on
// the replica's executor thread. Completions (done) may run on another
// thread (the store's writer); the protocol posts them back to its executor.
class StateMachine {
 public:
  virtual ~StateMachine() = default;

  // A stateless, deterministic check of a request before it is ordered:
  // decodes, is addressed to this cluster, within size limits, the
  // requester's signature (if the body carries one) is valid. A request
  // that fails is answered with this error and never ordered. Called by the
  // primary before batching and by backups before preparing a batch; must be
  // cheap (results may be cached by request digest).
  virtual Status check(const Request& request) const = 0;
  // check() of a request given by parts, with its body's SHA-256 (which the
  // protocol has computed already): no copy of the body, no second hash.
  virtual Status checkHashed(const std::string& client, uint64_t client_seq, ByteView body,
                             const SecureHash& body_hash) const {
    (void)body_hash;
    return check(Request{client, client_seq, Bytes(body.begin(), body.end())});
  }

  // The answer to a request that check() refused with `error`: each replica
  // that refuses a request it received from its client sends this back
  // directly, unordered and not executed (nothing in the state changes, the
  // reply cache does not keep it: a retransmission is checked again). It
  // lets the client finish with the error once f+1 replicas agree on it,
  // rather than time out. Deterministic in (request, error), as check() is,
  // so honest replicas' refusals match. Empty: no answer is sent.
  virtual Bytes rejection(const Request& request, const Error& error) const {
    (void)request;
    (void)error;
    return {};
  }

  // Executes the batch after the last one given to execute() or
  // applyEffects(), durably (the batch's state changes, its effects and
  // lastExecuted() in one LMDB write) before done. The protocol may hand
  // batch s+1 before s's done has run: the writes are queued, run and
  // become durable in sequence order (each one sees the ones before it),
  // and the done()s run in that order.
  // A request that the state machine refuses (conflict, bad time window) is
  // a reply, not an error; an error means the batch was not executed
  // (storage failure) and is fatal for the replica.
  //
  // decided (optional) runs before done, with what done will carry, as soon
  // as the outcome is settled and the durable write has started: the
  // replies may go out then, for they are final even if the write is lost
  // (a power loss before it is durable): the batch stays committed by the
  // protocol (its prepared certificates are durable at 2f+1 replicas before
  // any commit is sent) and execution is deterministic, so executing it
  // again from the same state gives the same replies, byte for byte.
  // Nothing else may rely on the batch before done: lastExecuted(),
  // effects() and checkpoints wait for it. If the write then fails, done
  // gets the error (fatal, as above).
  virtual void execute(const Batch& batch, std::function<void(Result<Executed>)> done,
                       std::function<void(const Executed&)> decided) = 0;
  void execute(const Batch& batch, std::function<void(Result<Executed>)> done) {
    execute(batch, std::move(done), {});
  }

  // State transfer: applies the effects of batch seq == lastExecuted() + 1
  // that other replicas executed, durably, as execute() would have. Only
  // called with no execute() in flight.
  virtual void applyEffects(uint64_t seq, ByteView effects, std::function<void(Status)> done) = 0;

  // The effects of an executed batch (1 <= seq <= lastExecuted()).
  virtual Result<Bytes> effects(uint64_t seq) const = 0;

  // The last batch executed or applied durably; 0 for a fresh replica.
  virtual uint64_t lastExecuted() const = 0;

  // The replies of batch seq back from Executed::packed_replies, in order,
  // byte for byte as execute() gave them; an error names what is wrong with
  // the packed bytes. Only called with what this state machine packed.
  virtual Result<std::vector<Bytes>> expandReplies(uint64_t seq, ByteView packed) const {
    (void)packed;
    return makeError(Errc::malformed,
                     "batch " + std::to_string(seq) + ": this state machine packs no replies");
  }
};

// The client side of the protocol, as the notary client (notary/notary_client.*)
// sees it: notary/protocol_client.* implements it over a Link; requests are
// authenticated as the protocol defines (the requester's TLS identity, and an
// authenticator that lets every replica check a request relayed to it).
// Executor thread only.
class RequestChannel {
 public:
  virtual ~RequestChannel() = default;
  // Called once per replica that answers (index 0 to 3f in the cluster's
  // replica order), with that replica's reply bytes, as they arrive.
  using ReplyFn = std::function<void(uint32_t replica_index, ByteView reply)>;
  // Sends a request to the cluster and keeps retransmitting it (with bounded
  // backoff, to every replica once the primary seems silent) until finish().
  // Returns the request's client_seq; an error when refused at once (too
  // big, too many requests outstanding). `body_hash` is SecureHash::of(body),
  // which the caller has already computed (the notary client keeps it to
  // match the replies), so the body is hashed once.
  virtual Result<uint64_t> submit(Bytes body, const SecureHash& body_hash, ReplyFn on_reply) = 0;
  Result<uint64_t> submit(Bytes body, ReplyFn on_reply) {
    const SecureHash body_hash = SecureHash::of(body);
    return submit(std::move(body), body_hash, std::move(on_reply));
  }
  // The caller has what it needs: stop retransmitting, drop later replies.
  virtual void finish(uint64_t client_seq) = 0;
  // 3f + 1 and f of the cluster.
  virtual uint32_t replicaCount() const = 0;
  virtual uint32_t faultsTolerated() const = 0;
};

}  // namespace ccal::notary
