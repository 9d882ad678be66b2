#pragma once
// The notarisation state machine: which StateRefs are consumed, and by
// which transaction. What every replica of a notary cluster executes,
// deterministically and in the order the BFT protocol agreed
// (notary/state_machine.h is the seam).
//
// Rules, per request, in batch order:
//  - the request decodes, is addressed to this notary (request and
//    transaction both name it, with its composite key) and is within limits;
//  - non-validating: a filtered transaction whose proofs check, with every
//    input, reference, the notary and the time window visible and nothing
//    else of the deal revealed; validating: the whole signed transaction
//    (every signature but the notary's present and valid) and its backchain
//    (each dependency fully signed, every contract accepting);
//  - a transaction already committed (its inputs consumed by it, or, without
//    inputs, recorded) is answered success again: re-notarising is idempotent;
//  - otherwise every input must be unconsumed and every reference unconsumed,
//    and the time window must contain the batch's agreed time; then the
//    inputs become consumed by the transaction (references are not);
//  - a conflict names each conflicting StateRef with the SHA-256 of the id of
//    the transaction that consumed it, and consumes nothing.
//
// Storage (sub-databases of a vault::Store, all prefixed notary_):
//   notary_consumed  StateRef (tx id || u32 BE index) -> consuming tx id
//   notary_txs       tx id -> u64 BE batch seq   (committed transactions without inputs)
//   notary_effects   u64 BE batch seq -> canonical BatchEffects (appends)
//   notary_meta      "last_executed" -> u64 BE
// A batch is one write request to the Store: its consumed states, its
// effects and lastExecuted commit together (group-committed with whatever
// else the Store's writer batches).
//
// Replies: the replica signs each batch's replies once, a Merkle root over
// the replies' leaves (ledger/merkle.h), and each reply carries its proof;
// a success also carries the replica's ordinary transaction signature over
// the transaction id, the one that goes into the SignedTransaction.
//
// Threading: check() and the const queries may run on any thread; execute()
// and applyEffects() are called from one thread (the replica's executor);
// their completions run on config.complete_on, or on the Store's writer
// thread when it is null.

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "ledger/composite_key.h"
#include "ledger/contract.h"
#include "flows/io.h"
#include "ledger/crypto.h"
#include "notary/notarisation_messages.h"
#include "notary/state_machine.h"
#include "vault/store.h"

namespace ccal::notary {

struct UniquenessConfig {
  std::string notary_name;  // the notary service's X.500 name (canonical)
  Key service_key;          // its composite key (2f+1 of the 3f+1 replica keys)
  bool validating = false;
  // Validating notaries: the contracts they run (must outlive the state machine).
  const ContractRegistry* registry = nullptr;
  VerificationPolicy policy;
  NotarisationLimits limits;
  // Where a batch's replies are signed (once its outcome is settled) and
  // execute()'s decided and done run: the replica's executor, so that the Store's writer
  // thread only does LMDB work (signing 1000 successes costs ~15 ms). When
  // null, on the Store's writer thread.
  flows::Executor* complete_on = nullptr;
  // check()'s outcome per request body (by its SHA-256), kept until the
  // request executes so that execute() does not decode and check it again;
  // the oldest are dropped beyond this many.
  uint32_t checked_requests_cached_max = 32'768;
  // The consumed-state index (notary_consumed) is written in one sorted
  // pass every this many batches rather than with every batch: a B-tree
  // page then takes the states of many batches in one write. Until then the
  // states a batch consumed are in memory; their durable record is the
  // batch's effects (notary_effects, written with the batch), which open()
  // reads back. 1: every batch writes its own.
  uint32_t consumed_merge_interval_batches = 32;
  // ... or as soon as this many consumed states wait in memory.
  uint32_t consumed_unmerged_states_max = 65'536;
};

inline constexpr std::string_view uniqueness_schema_name = "ccal.notary";
inline constexpr uint32_t uniqueness_schema_version = 1;

class UniquenessStateMachine final : public StateMachine {
 public:
  ~UniquenessStateMachine() override;
  // The sub-databases the state machine needs in the Store it is given.
  static std::vector<std::string> dbNames();
  // A Store of its own (schema "ccal.notary"), for a replica that keeps its
  // notary state apart, tests and benchmarks.
  static Result<std::unique_ptr<vault::Store>> openStore(const vault::StoreConfig& config,
                                                         std::span<const std::string> extra_db_names = {});
  // Reads lastExecuted from the store. `signer` is the replica's key, one of
  // the service key's leaves. Errors name a configuration that cannot work.
  static Result<std::unique_ptr<UniquenessStateMachine>> open(vault::Store& store, UniquenessConfig config,
                                                              KeyPair signer);

  Status check(const Request& request) const override;
  Status checkHashed(const std::string& client, uint64_t client_seq, ByteView body,
                     const SecureHash& body_hash) const override;
  // A signed error reply for a request check() refused: a NotarisationReply
  // naming batch 0 (never executed) and the request's hash, as the one leaf
  // of its own reply tree, whose root the replica signs (so the client
  // verifies it as any other reply, and a conflict proof can never use it).
  Bytes rejection(const Request& request, const Error& error) const override;
  using StateMachine::execute;
  // The replies are signed once the outcome is settled, while the write
  // becomes durable (on complete_on), and go to decided, then to done.
  void execute(const Batch& batch, std::function<void(Result<Executed>)> done,
               std::function<void(const Executed&)> decided) override;
  void applyEffects(uint64_t seq, ByteView effects, std::function<void(Status)> done) override;
  Result<Bytes> effects(uint64_t seq) const override;
  Result<std::vector<Bytes>> expandReplies(uint64_t seq, ByteView packed) const override;
  uint64_t lastExecuted() const override { return last_executed_.load(); }

  // The transaction that consumed `ref`, if any.
  Result<std::optional<SecureHash>> consumedBy(const StateRef& ref) const;
  // A digest of the whole state (every consumed state and committed
  // transaction, and lastExecuted), for comparing replicas in tests and tools.
  Result<SecureHash> stateDigest() const;
  const PublicKey& replicaKey() const { return signer_.publicKey(); }
  const UniquenessConfig& config() const { return config_; }

  struct Checked;  // a request that passed check(), ready to execute

  struct CheckStats {
    uint64_t decoded = 0;      // requests decoded and checked in full
    uint64_t cache_hits = 0;   // check() or execute() answered from the check cache
  };
  CheckStats checkStats() const;

 private:
  UniquenessStateMachine(vault::Store& store, UniquenessConfig config, KeyPair signer, uint64_t last);
  Result<Checked> checkBody(ByteView body) const;
  // checkBody through the cache; `take`: the entry is dropped (execute()).
  std::shared_ptr<const Result<Checked>> checkCached(ByteView body, const SecureHash& body_hash, bool take) const;
  Status checkNonValidating(const NotarisationRequest& request) const;
  Status checkValidating(const NotarisationRequest& request) const;
  Status checkNotary(const std::optional<Party>& notary) const;
  // Signs a batch's replies: one root signature, a proof each, and
  // a transaction signature per success.
  struct BatchRun;
  Executed signReplies(uint64_t seq, BatchRun& run) const;
  static Bytes packReplies(const DigitalSignature& root_signature,
                           const DigitalSignature* tx_signature, const std::vector<Bytes>& replies);

  vault::Store& store_;
  UniquenessConfig config_;
  KeyPair signer_;
  const vault::Db* consumed_db_;
  const vault::Db* txs_db_;
  const vault::Db* effects_db_;
  const vault::Db* meta_db_;
  struct CheckCache;
  std::unique_ptr<CheckCache> check_cache_;
  std::atomic<uint64_t> last_executed_;
  // The last batch handed to the Store: advanced on the caller's thread,
  // wound back from the writer's when a batch fails.
  std::atomic<uint64_t> last_queued_;
  // Completions posted to config_.complete_on that need this object check
  // it first: the machine may be destroyed (its replica stopped) with them queued.
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);
  void rewindQueued(uint64_t failed_seq);

  // States consumed by executed batches and not yet written to
  // notary_consumed (consumed_merge_interval_batches): ref key -> consuming
  // transaction and batch. Changed only on the Store's writer thread (in
  // write requests and their completions), under the mutex; read there
  // without it, and under it elsewhere (consumedBy, stateDigest). A lookup
  // for batch s sees only entries of batches before s (an entry of s itself
  // is from a run of s's write that was rolled back).
  struct Unmerged {
    SecureHash tx;
    uint64_t seq = 0;
  };
  struct RefKeyHasher {
    size_t operator()(const Bytes& key) const;
  };
  mutable std::mutex unmerged_mutex_;
  std::unordered_map<Bytes, Unmerged, RefKeyHasher> unmerged_;
  // The consumer of `key` before batch `seq`, from memory or notary_consumed.
  Result<std::optional<SecureHash>> consumedBefore(const vault::ReadTxn& txn, const Bytes& key,
                                                   uint64_t seq) const;
  Status loadUnmerged();
  // Writes a pass (writer thread): `puts` and every entry in memory of a
  // batch before `seq`, in key order, and records it as through `seq`.
  Status writePass(vault::WriteTxn& txn, uint64_t seq,
                   std::vector<std::pair<const Bytes*, const SecureHash*>> puts);
  // Drops the entries in memory of the batches `which` picks (writer thread).
  void dropUnmerged(const std::function<bool(uint64_t seq)>& which);
  // A commit failed after its write function succeeded (writer thread
  // only): the batch it failed on. Every later write is refused, for the
  // batch may be in the store after all.
  uint64_t failed_seq_ = 0;
  Status refuseAfterFailure(uint64_t seq) const;
};

}  // namespace ccal::notary
