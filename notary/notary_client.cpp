#include "notary/notary_client.h"

#include <cstdio>

#include "ledger/filtered_transaction.h"

namespace ccal::notary {

namespace {

// One answer other than success, and the replicas that signed it.
struct Agreement {
  NotarisationReply answer;
  std::map<uint32_t, Bytes> signed_replies;  // replica -> encoded SignedNotarisationReply
};

}  // namespace

struct NotaryClient::Pending {
  SecureHash txId;
  SecureHash requestHash;
  std::optional<uint64_t> clientSeq;
  Done done;
  flows::Executor::TimerId timer = 0;
  bool finished = false;
  std::set<uint32_t> answered;                     // replicas whose answer counted
  std::map<uint32_t, DigitalSignature> successes;  // replica -> transaction signature
  std::vector<Agreement> agreements;
};

NotaryClient::NotaryClient(flows::Executor& executor, RequestChannel& channel, NotaryClusterInfo cluster,
                           NotaryClientConfig config)
    : executor_(executor), channel_(channel), cluster_(std::move(cluster)), config_(std::move(config)) {
  CCAL_ASSERT_MSG(cluster_.replica_keys.size() == 3 * size_t{cluster_.f} + 1, "a cluster has 3f+1 replicas");
  CCAL_ASSERT_MSG(channel_.replicaCount() == cluster_.replica_keys.size(),
                  "the channel and the cluster disagree on the number of replicas");
  for (const auto& key : cluster_.replica_keys) {
    CCAL_ASSERT_MSG(cluster_.service_key.contains(key), "a replica key outside the notary's composite key");
  }
  CCAL_ASSERT(config_.timeout_micros > 0 && config_.verified_roots_max > 0 && config_.pending_requests_max > 0);
}

NotaryClient::~NotaryClient() {
  *alive_ = false;
  for (auto& [seq, pending] : pending_) {
    if (pending->timer != 0) executor_.cancel(pending->timer);
    channel_.finish(seq);
  }
}

uint32_t NotaryClient::successThreshold() const { return 2 * cluster_.f + 1; }

Bytes NotaryClient::requestFor(const SignedTransaction& stx,
                               const std::vector<SignedTransaction>& dependencies) const {
  if (cluster_.validating) {
    return NotarisationRequest::validating(cluster_.name, stx, dependencies).encode();
  }
  return NotarisationRequest::nonValidating(cluster_.name, FilteredTransaction::forNotary(stx.tx())).encode();
}

void NotaryClient::notarise(const SignedTransaction& stx, Done done,
                            const std::vector<SignedTransaction>& dependencies) {
  submit(stx.id(), requestFor(stx, dependencies), std::move(done));
}

void NotaryClient::submit(const SecureHash& tx_id, Bytes body, Done done) {
  ++counters_.requests;
  auto pending = std::make_shared<Pending>();
  pending->txId = tx_id;
  pending->requestHash = SecureHash::of(body);
  pending->done = std::move(done);
  std::weak_ptr<bool> alive = alive_;
  if (pending_.size() >= config_.pending_requests_max) {
    ++counters_.errors;
    Error error = makeError(Errc::unavailable, "notarisation of " + tx_id.hex() + " refused: " +
                                                   std::to_string(pending_.size()) +
                                                   " notarisations are waiting, the limit");
    pending->finished = true;
    executor_.post([alive, pending, error]() {
      if (alive.expired() || !*alive.lock()) return;
      pending->done(error);
    });
    return;
  }
  auto submitted = channel_.submit(std::move(body), pending->requestHash,
                                   [this, alive, pending](uint32_t replica, ByteView reply) {
                                     if (alive.expired() || !*alive.lock()) return;
                                     onReply(pending, replica, reply);
                                   });
  if (!submitted) {
    ++counters_.errors;
    Error error = makeError(submitted.error().code, "notarisation of " + tx_id.hex() +
                                                        " not submitted: " + submitted.error().message);
    pending->finished = true;
    executor_.post([alive, pending, error]() {
      if (alive.expired() || !*alive.lock()) return;
      pending->done(error);
    });
    return;
  }
  pending->clientSeq = *submitted;
  if (pending->finished) {  // answered while submitting
    channel_.finish(*submitted);
    return;
  }
  pending_[*submitted] = pending;
  pending->timer = executor_.runAfter(config_.timeout_micros, [this, alive, pending]() {
    if (alive.expired() || !*alive.lock()) return;
    pending->timer = 0;
    ++counters_.timeouts;
    finish(pending, makeError(Errc::timeout, "the notary " + cluster_.name + " did not answer for transaction " +
                                                 pending->txId.hex() + " within " +
                                                 std::to_string(config_.timeout_micros / 1000) + " ms (" +
                                                 std::to_string(pending->successes.size()) + " signatures of " +
                                                 std::to_string(successThreshold()) + " needed)"));
  });
}

void NotaryClient::finish(const std::shared_ptr<Pending>& pending, Result<NotarisationResult> result) {
  if (pending->finished) return;
  pending->finished = true;
  if (pending->timer != 0) {
    executor_.cancel(pending->timer);
    pending->timer = 0;
  }
  if (pending->clientSeq) {
    pending_.erase(*pending->clientSeq);
    channel_.finish(*pending->clientSeq);
  }
  Done done = std::move(pending->done);
  done(std::move(result));
}

void NotaryClient::ignore(const Pending& pending, uint32_t replica, const std::string& why) {
  ++counters_.replies_ignored;
  std::string line = "notary client: ignored a reply from replica " + std::to_string(replica) + " of " +
                     cluster_.name + " for transaction " + pending.txId.hex() + ": " + why;
  if (config_.log) {
    config_.log(line);
  } else {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
}

Status NotaryClient::verifyRootUncached(uint32_t replica, const SignedNotarisationReply& reply) const {
  const PublicKey& key = cluster_.replica_keys[replica];
  CCAL_ASSERT_MSG(reply.rootSignature.has_value(),
                  "callers refuse a reply without its root signature");
  if (!(reply.rootSignature->by() == key)) {
    return makeError(Errc::bad_signature, "the batch root is signed by " +
                                              reply.rootSignature->by().shortHex() +
                                              ", not by the replica's key " + key.shortHex());
  }
  auto decoded = NotarisationReply::decode(reply.reply, config_.limits);
  if (!decoded) return decoded.error();
  auto root = reply.root();
  if (!root) return root.error();
  return reply.rootSignature->verify(
      batchRootSignableBytes(decoded->batchSeq, reply.leafCount, *root));
}

Status NotaryClient::verifyRoot(uint32_t replica, const SignedNotarisationReply& reply) {
  // (Before the cache: a reply without the signature must not pass on another's.)
  if (!reply.rootSignature) return makeError(Errc::missing_signatures, "no batch-root signature");
  auto decoded = NotarisationReply::decode(reply.reply, config_.limits);
  if (!decoded) return decoded.error();
  auto root = reply.root();
  if (!root) return root.error();
  // Cached by what the replica signed, so a batch's root costs one
  // verification however many of its replies reach this client.
  std::pair<uint32_t, SecureHash> cache_key{
      replica, SecureHash::of(batchRootSignableBytes(decoded->batchSeq, reply.leafCount, *root))};
  if (verified_roots_.count(cache_key)) return {};
  ++counters_.root_verifications;
  CCAL_TRY(verifyRootUncached(replica, reply));
  if (verified_order_.size() < config_.verified_roots_max) {
    verified_order_.push_back(cache_key);
  } else {
    verified_roots_.erase(verified_order_[verified_next_evict_]);
    verified_order_[verified_next_evict_] = cache_key;
    verified_next_evict_ = (verified_next_evict_ + 1) % verified_order_.size();
  }
  verified_roots_.insert(cache_key);
  return {};
}

void NotaryClient::onReply(const std::shared_ptr<Pending>& pending, uint32_t replica, ByteView bytes) {
  if (pending->finished) return;
  if (replica >= cluster_.replica_keys.size()) {
    ignore(*pending, replica, "no such replica index");
    return;
  }
  if (pending->answered.count(replica)) {
    ignore(*pending, replica, "the replica has already answered");
    return;
  }
  // A success is proven by its transaction signature alone: read without
  // the batch-root parts (most replies); anything else is read whole, in
  // canonical form, as a conflict proof carries it.
  auto signed_reply = SignedNotarisationReply::decodeForSuccess(bytes, config_.limits);
  if (!signed_reply) {
    ignore(*pending, replica, signed_reply.error().toString());
    return;
  }
  auto reply = NotarisationReply::decode(signed_reply->reply, config_.limits);
  if (!reply) {
    ignore(*pending, replica, reply.error().toString());
    return;
  }
  if (reply->outcome != NotarisationReply::Outcome::success) {
    signed_reply = SignedNotarisationReply::decode(bytes, config_.limits);
    if (!signed_reply) {
      ignore(*pending, replica, signed_reply.error().toString());
      return;
    }
  }
  if (reply->requestHash != pending->requestHash) {
    ignore(*pending, replica, "it answers another request");
    return;
  }
  if (reply->outcome != NotarisationReply::Outcome::error && reply->txId != pending->txId) {
    ignore(*pending, replica, "it names transaction " + reply->txId.hex());
    return;
  }

  if (reply->outcome == NotarisationReply::Outcome::success) {
    // The transaction signature is what the notarised transaction carries;
    // it alone proves this replica's success answer.
    if (!signed_reply->txSignature) {
      ignore(*pending, replica, "a success without the replica's transaction signature");
      return;
    }
    const DigitalSignature& sig = *signed_reply->txSignature;
    if (!(sig.by() == cluster_.replica_keys[replica])) {
      ignore(*pending, replica, "the transaction signature is by " + sig.by().shortHex() +
                                    ", not by the replica's key " + cluster_.replica_keys[replica].shortHex());
      return;
    }
    Status ok = sig.verify(signableBytes(pending->txId));
    if (!ok) {
      ignore(*pending, replica, ok.error().toString());
      return;
    }
    pending->answered.insert(replica);
    pending->successes[replica] = sig;
    std::set<PublicKey> signers;
    for (const auto& [index, s] : pending->successes) signers.insert(s.by());
    if (cluster_.service_key.isFulfilledBy(signers)) {
      NotarisationResult result;
      result.kind = NotarisationResult::Kind::notarised;
      result.txId = pending->txId;
      for (const auto& [index, s] : pending->successes) result.signatures.push_back(s);
      ++counters_.notarised;
      finish(pending, std::move(result));
    }
    return;
  }

  Status root_ok = verifyRoot(replica, *signed_reply);
  if (!root_ok) {
    ignore(*pending, replica, root_ok.error().toString());
    return;
  }
  pending->answered.insert(replica);
  Agreement* agreement = nullptr;
  for (auto& a : pending->agreements) {
    if (a.answer.sameAnswer(*reply)) agreement = &a;
  }
  if (agreement == nullptr) {
    pending->agreements.push_back(Agreement{*reply, {}});
    agreement = &pending->agreements.back();
  }
  agreement->signed_replies[replica] = Bytes(bytes.begin(), bytes.end());
  if (agreement->signed_replies.size() < agreementThreshold()) return;

  if (reply->outcome == NotarisationReply::Outcome::conflict) {
    NotarisationResult result;
    result.kind = NotarisationResult::Kind::conflict;
    result.txId = pending->txId;
    result.conflicts = agreement->answer.conflicts;
    for (auto& [index, b] : agreement->signed_replies) result.proof.push_back(std::move(b));
    ++counters_.conflicts;
    finish(pending, std::move(result));
    return;
  }
  ++counters_.errors;
  finish(pending, makeError(agreement->answer.error.code, "the notary " + cluster_.name + " refused transaction " +
                                                              pending->txId.hex() + ": " +
                                                              agreement->answer.error.message));
}

Status NotaryClient::verifyConflictProof(const SecureHash& tx_id, const std::vector<Bytes>& proof) const {
  std::optional<NotarisationReply> agreed;
  std::set<uint32_t> replicas;
  for (size_t i = 0; i < proof.size(); ++i) {
    auto where = [&](const Error& e) {
      return makeError(e.code, "conflict proof entry " + std::to_string(i) + ": " + e.message);
    };
    auto signed_reply = SignedNotarisationReply::decode(proof[i], config_.limits);
    if (!signed_reply) return where(signed_reply.error());
    auto reply = NotarisationReply::decode(signed_reply->reply, config_.limits);
    if (!reply) return where(reply.error());
    if (reply->outcome != NotarisationReply::Outcome::conflict || reply->txId != tx_id) {
      return where(makeError(Errc::malformed, "not a conflict answer for transaction " + tx_id.hex()));
    }
    if (!signed_reply->rootSignature) {
      return where(makeError(Errc::missing_signatures, "no batch-root signature"));
    }
    uint32_t replica = 0;
    while (replica < cluster_.replica_keys.size() &&
           !(cluster_.replica_keys[replica] == signed_reply->rootSignature->by())) {
      ++replica;
    }
    if (replica == cluster_.replica_keys.size()) {
      return where(makeError(Errc::bad_signature, "signed by " +
                                                      signed_reply->rootSignature->by().shortHex() +
                                                      ", not a replica of " + cluster_.name));
    }
    if (!replicas.insert(replica).second) {
      return where(makeError(Errc::malformed, "replica " + std::to_string(replica) + " counted twice"));
    }
    Status ok = verifyRootUncached(replica, *signed_reply);
    if (!ok) return where(ok.error());
    if (agreed && !agreed->sameAnswer(*reply)) {
      return where(makeError(Errc::malformed, "the replicas' conflict answers differ"));
    }
    agreed = *reply;
  }
  if (replicas.size() < agreementThreshold()) {
    return makeError(Errc::missing_signatures, "a conflict proof needs " + std::to_string(agreementThreshold()) +
                                                   " replicas, it has " + std::to_string(replicas.size()));
  }
  return {};
}

}  // namespace ccal::notary
