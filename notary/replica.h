#pragma once
// A PBFT replica (Castro & Liskov, OSDI'99 / TOCS'02) of a notary cluster:
// orders authenticated client requests in batches, agrees on them in three
// phases (pre-prepare, prepare, commit), executes committed batches in order
// on a StateMachine (notary/state_machine.h), answers clients, takes signed
// checkpoints every checkpoint_interval_batches, truncates its log below the
// stable one, changes view when the primary is faulty or slow (timeouts that
// double, bounded), and brings itself up to date by state transfer.
// notary/README.md walks through the protocol, message by message, and maps
// the safety and liveness argument to the functions here.
//
// Threading: everything runs on the executor; store and state-machine
// completions are posted back to it. The Replica sets itself as the link's
// handler. quiesceStore() is for the simulator (see test/sim/sim.h).

#include <array>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "flows/io.h"
#include "ledger/crypto.h"
#include "notary/pbft_crypto.h"
#include "notary/pbft_messages.h"
#include "notary/pbft_view_change.h"
#include "notary/replica_store.h"
#include "notary/state_machine.h"
#include "notary/vote_log.h"

namespace ccal::notary {

struct ReplicaIdentity {
  std::string name;  // X.500 name, the Link's peer name
  PublicKey key;     // Ed25519 identity key
};

// A replica's configuration. The node fills it from node.toml's [notary]
// keys (mirrored here) and the network map's replica order.
struct ReplicaConfig {
  std::string cluster;                    // notary.cluster
  std::vector<ReplicaIdentity> replicas;  // 3f+1 in the cluster's fixed order
  uint32_t self_index = 0;                // notary.replica_index
  // The key of a client (a node that may request notarisation); nullopt: not
  // a known client, its requests are refused.
  std::function<std::optional<PublicKey>(std::string_view client)> client_key;

  uint32_t batch_size_max = 1024;                // notary.batch_size_max
  int64_t batch_delay_micros = 2'000;            // notary.batch_delay_micros
  int64_t view_change_timeout_micros = 2'000'000;  // notary.view_change_timeout_micros
  int64_t view_change_timeout_micros_max = 64'000'000;  // doubling stops here
  int64_t time_drift_micros_max = 5'000'000;     // a batch timestamp vs the backup's clock
  uint32_t checkpoint_interval_batches = 32;     // K
  uint32_t window_batches_max = 128;             // high watermark - low watermark (>= 2K)
  // Proposed by the primary, not yet executed (notary.batches_in_flight_max).
  // While this many are in flight, requests gather into the next batch: a
  // few in flight keep the stages (durable write, network, execution)
  // overlapped, and the batches grow with the load instead of the pipeline.
  uint32_t batches_in_flight_max = 4;
  // While at most this many batches are in flight, a new request is
  // proposed at once (after the burst of frames it came with) instead of
  // gathering for batch_delay_micros (notary.batches_in_flight_at_once_max).
  // 0: only an idle pipeline proposes at once; 1 (default): a request that
  // comes while one batch is in flight need not wait for that batch's
  // durable execution, which at a light load was most of its wait.
  uint32_t batches_in_flight_at_once_max = 1;
  // Committed batches handed to the state machine, not yet durable: batch
  // s+1 is handed before s's write commits (the Store's writer runs them in
  // order, in one transaction when they meet), so the execution of a
  // batch does not wait for the previous one's fsync.
  uint32_t executing_batches_max = 4;
  // The vote log's ring (notary.vote_log_bytes; vote_log.h, the file
  // pbft_votes.log beside the store's): with f >= 1 a prepared certificate
  // is made durable there, one write and one flush, before the commit
  // leaves, and goes to the store with its batch's execution. 0: P goes to
  // the store, as does a record the ring has no room for at the time.
  uint64_t vote_log_bytes = 16ull << 20;
  // Only a record (its batches) up to this size goes to the vote log
  // (notary.vote_log_record_bytes_max): a large batch comes with a load at
  // which the writes queue anyway, and writing its bytes twice costs more
  // CPU than the earlier commit saves (measured: +2 us per request per
  // replica at the peak, batches of ~260 requests).
  uint32_t vote_log_record_bytes_max = 16u << 10;
  uint32_t pending_requests_max = 65'536;        // known, not yet ordered, per replica
  uint32_t pending_requests_per_client_max = 4096;
  uint32_t reply_cache_per_client_max = 4096;  // replies kept per client (in memory)
  // The reply cache survives a restart for this many of the latest executed
  // batches (one record per batch, ReplicaStore): a client still waiting for
  // an answer when a replica restarts gets it from the cache.
  uint32_t reply_batches_durable_max = 256;
  int64_t status_interval_micros = 100'000;      // status broadcast (drives retransmission)
  uint32_t retransmit_batches_max = 32;          // batches resent per status answered
  uint32_t state_transfer_batches_max = 1u << 20;  // effects buffered in one transfer
  pbft::PbftLimits limits;
  std::function<void(std::string_view)> log;     // reasons for dropped messages; empty: stderr

  uint32_t faults() const { return static_cast<uint32_t>((replicas.size() - 1) / 3); }
};

class Replica final : public flows::LinkHandler {
 public:
  struct Stats {
    uint64_t batches_proposed = 0, batches_executed = 0, requests_executed = 0;
    uint64_t replies_from_cache = 0, view_changes = 0, new_views = 0, checkpoints_stable = 0;
    uint64_t state_transfers = 0, effects_applied = 0, frames_rejected = 0, store_writes = 0;
    uint64_t batches_fetched = 0;
    // Not prepared here, decided by 2f+1 commits of the view (decideOnCommits).
    uint64_t batches_decided_by_commits = 0;
    // Handed to the state machine while an earlier batch's execution was not
    // yet durable (pipelined execution, executing_batches_max).
    uint64_t batches_overlapped = 0;
    uint64_t requests_refused = 0;  // failed StateMachine::check, answered with its rejection
    uint64_t pre_prepares_held = 0;      // waiting for requests this replica could not authenticate
    uint64_t held_accepted_by_prepares = 0;  // accepted on f+1 backups' prepares
    // Prepares (a backup) and pre-prepares (the primary) sent as the slot's
    // write was queued, not after it was durable (notary/README.md, safety 3).
    uint64_t votes_early = 0;
    // Pre-prepares accepted without a prepare: restarted in the view without
    // a clean stop.
    uint64_t votes_abstained = 0;
    // Batches whose replies went out once their execution was settled,
    // before it was durable (StateMachine::execute's decided; f >= 1).
    uint64_t batches_replied_early = 0;
    // Summed over those batches: how long before their write was durable
    // (done) the replies went out.
    uint64_t replied_early_lead_micros = 0;
    // Where a batch's time goes here, summed over the batches replied to
    // early that went through every phase in one view (batches_timed): its
    // pre-prepare accepted -> prepared (the prepares) -> commit sent (its P
    // durable) -> committed (the commits) -> replies sent (execution settled
    // and signed).
    uint64_t batches_timed = 0;
    uint64_t phase_prepare_micros = 0, phase_prepared_durable_micros = 0, phase_commit_micros = 0,
             phase_execute_micros = 0;
    // The primary: requests proposed, and their wait from arrival here to
    // their batch's proposal, summed.
    uint64_t requests_proposed = 0, request_wait_micros = 0;
    // Prepared certificates made durable in the vote log (vote_log_bytes),
    // and those the ring had no room for (written to the store instead).
    uint64_t prepared_logged = 0, prepared_log_full = 0;
  };

  // Opens from the store's recovered state (view, log, checkpoint, replies)
  // and starts: call start() once, after construction.
  Replica(ReplicaConfig config, KeyPair identity, flows::Link& link, flows::Executor& executor,
          const flows::Clock& clock, vault::Store& store, StateMachine& machine);
  ~Replica() override;
  Replica(const Replica&) = delete;
  Replica& operator=(const Replica&) = delete;

  Status start();

  // --- LinkHandler --------------------------------------------------------------
  void onFrame(std::string_view peer, ByteView frame) override;
  void onPeerUp(std::string_view peer) override;
  void onPeerDown(std::string_view peer) override {}

  uint64_t view() const { return view_; }
  bool viewChanging() const { return view_changing_; }
  bool isPrimary() const { return primaryOf(view_) == config_.self_index && !view_changing_; }
  uint64_t lastExecuted() const { return machine_.lastExecuted(); }
  uint64_t stableSeq() const { return stable_seq_; }
  // D(lastExecuted()).
  const SecureHash& stateDigest() const { return state_digest_; }
  uint64_t stateDigestSeq() const { return state_digest_seq_; }
  const Stats& stats() const { return stats_; }
  // The vote log's counters (zeros without one).
  pbft::VoteLog::Stats voteLogStats() const {
    return vote_log_ ? vote_log_->stats() : pbft::VoteLog::Stats{};
  }
  // Blocks until every store request queued so far has completed (posted).
  void quiesceStore();
  // A clean stop, once the executor no longer runs: writes what is queued,
  // waits for it, and then records that every vote sent is durable, so the
  // next start need not abstain (safety 3). Not called (or a write failed):
  // the next start abstains from voting in the view it stopped in.
  void recordCleanStop();

 private:
  // A batch's hashes, computed once per batch: each request body's SHA-256
  // and each request's digest (WireRequest::digest).
  struct BatchHashes {
    std::vector<SecureHash> bodies, requests;
  };
  static BatchHashes hashBatch(const pbft::BatchBody& batch);

  struct Slot {
    uint64_t seq = 0;
    // Pre-prepared in the current view: the digest and whether the batch is here.
    bool has_pp = false;
    SecureHash digest;
    // This replica's vote in the view is out (a backup's prepare, the
    // primary's pre-prepare), or it abstains: prepared may follow.
    bool pp_durable = false;
    std::map<SecureHash, uint64_t> q;                   // Q entries (durable)
    std::map<SecureHash, pbft::BatchBody> batches;      // bodies by digest
    // Hashes of batches accepted here, by batch digest (which binds them);
    // a batch without an entry is hashed when it executes.
    std::map<SecureHash, BatchHashes> hashes;
    // Digests of the batches written (or queued) under their own log keys
    // since this replica started: a slot write adds only the others.
    std::set<SecureHash> stored;
    // A batch's frame as it came (the pre-prepare: decodeBatch() reads it),
    // until the slot's write takes it: the log keeps those bytes instead of
    // encoding the batch again. The primary's pre-prepare goes out from here
    // once durable.
    std::map<SecureHash, Bytes> frames;
    std::map<uint32_t, SecureHash> prepares, commits;   // current view's votes, by replica
    bool prepared = false, commit_sent = false, committed = false;
    // When (this replica's clock) each step above was reached (Stats' phases).
    int64_t accepted_at = 0, prepared_at = 0, commit_sent_at = 0, committed_at = 0;
    bool has_p = false;  // P entry (durable once prepared)
    uint64_t p_view = 0;
    SecureHash p_digest;
    bool prepare_sent = false;
    // Accepted with an early vote, its record not yet queued: it goes with
    // the prepared certificate's write (or a view change's, or a clean
    // stop's: recordUnrecorded), one write per batch rather than two.
    bool unrecorded = false;
    bool fetch_wanted = false;
    // Commits seen from views this replica has left (it is ahead, alone,
    // in a view change): 2f+1 for one (view, digest) decide the batch, which
    // it may then execute without taking part (observer catch-up).
    std::map<std::pair<uint64_t, SecureHash>, std::set<uint32_t>> observed;
    bool decided = false;
    SecureHash decided_digest;
    // A pre-prepare of the current view that passed every check but the
    // authentication of some of its requests here (a faulty client's MAC
    // for this replica, not received from the client directly): accepted
    // once each request is authenticated here or f+1 backups prepared it.
    struct Held {
      uint64_t view = 0;
      SecureHash digest;
      pbft::BatchBody batch;
      Bytes frame;
    };
    std::optional<Held> held;
  };
  struct Pending {
    pbft::WireRequest request;
    SecureHash body_hash;
    int64_t since_micros = 0;
  };

  uint32_t n() const { return static_cast<uint32_t>(config_.replicas.size()); }
  uint32_t f() const { return config_.faults(); }
  uint32_t primaryOf(uint64_t view) const { return static_cast<uint32_t>(view % n()); }
  std::optional<uint32_t> replicaIndex(std::string_view name) const;
  void log(const std::string& line) const;
  void reject(std::string_view peer, const std::string& why);
  void postBack(std::function<void()> fn);

  void send(uint32_t replica, const pbft::Message& m);
  void sendToPeer(std::string_view peer, const pbft::Message& m);
  void broadcast(const pbft::Message& m);
  void broadcastFrame(const Bytes& frame, const char* what);

  // Durability: changes gather in step_; flush() writes them in one store
  // request and sends the messages that waited for them.
  pbft::Step& step();
  void afterDurable(std::function<void()> fn);
  void scheduleFlush();
  void flush();
  pbft::MetaRecord meta() const;
  pbft::SlotRecord slotRecord(Slot& s) const;  // updates s.stored
  void persistSlot(Slot& s);
  // Appends the slot's prepared certificate (its record, batches inline) to
  // the vote log and sends the commit once it is durable; false: not logged
  // (no log, or no room), the caller writes it to the store.
  bool logPrepared(Slot& s);
  void sendCommit(uint64_t view, uint64_t seq, const SecureHash& digest);
  void onLogged(uint64_t lsn);  // a vote log record durable (executor)

  // Requests.
  void onRequest(std::string_view peer, pbft::WireRequest r);
  bool authenticated(const pbft::WireRequest& r);
  bool authenticated(const pbft::WireRequest& r, const SecureHash& digest);
  void sendReply(const std::string& client, uint64_t client_seq, const pbft::ReplyRecord& r);
  void sendBatchReplies(const Batch& batch, const std::vector<Bytes>& replies);
  void scheduleBatch();
  void proposeNow();  // cancels the batch timer, proposes what is pending
  void proposeBatches();

  // Normal case.
  void onPrePrepare(uint32_t from, pbft::PrePrepareMsg m, ByteView frame);
  // Every check of a pre-prepared batch; `unauthenticated` counts its
  // requests that this replica cannot authenticate (not an error here).
  Status checkBatch(const pbft::BatchBody& batch, const BatchHashes& hashes, uint64_t seq,
                    size_t& unauthenticated);
  void tryAcceptHeld(Slot& s);
  void tryAcceptAllHeld();
  // `frame`: the batch's pre-prepare frame as received or sent (empty: the
  // log encodes the batch).
  void acceptPrePrepare(uint64_t seq, const SecureHash& digest, pbft::BatchBody batch, bool mine,
                        BatchHashes hashes, Bytes frame);
  void onPrepare(uint32_t from, const pbft::VoteMsg& m);
  void onCommit(uint32_t from, const pbft::VoteMsg& m);
  void checkPrepared(Slot& s);
  void checkCommitted(Slot& s);
  void decideOnCommits(Slot& s, const SecureHash& digest);
  void observeCommit(uint32_t from, const pbft::VoteMsg& m);
  bool inWindow(uint64_t seq) const;
  // Votes are taken inside the window and for batches kept past a stable
  // checkpoint because they are not executed here yet.
  bool takesVotes(uint64_t seq) const;
  void truncateLog(uint64_t through);
  void eraseSlotsThrough(uint64_t seq);  // the in-memory log
  Slot& slot(uint64_t seq);

  // Execution and checkpoints.
  void tryExecute();
  // A batch's execution is settled (f >= 1): its replies go out; `at` its
  // phases' times (Slot::accepted_at...committed_at), or zeros.
  void onSettled(uint64_t seq, const Batch& batch, const std::array<int64_t, 4>& at,
                 const std::vector<Bytes>& replies);
  void onExecuted(uint64_t seq, const Batch& batch, const std::vector<SecureHash>& request_digests,
                  Result<Executed> result);
  void afterBatchApplied(uint64_t seq, ByteView effects);
  void onCheckpoint(const pbft::SignedMsg& sm, const pbft::CheckpointMsg& c);
  void makeStable(uint64_t seq, const SecureHash& digest, std::vector<pbft::SignedMsg> proof);
  Status verifySigned(const pbft::SignedMsg& sm) const;
  pbft::SignedMsg sign(pbft::SignedKind kind, Bytes body) const;
  Status verifyCheckpointProof(uint64_t seq, const SecureHash& digest,
                               const std::vector<pbft::SignedMsg>& proof) const;

  // View change.
  void armViewTimer();
  void onViewTimer();
  void startViewChange(uint64_t new_view);
  void armNewViewTimer();
  void onViewChange(const pbft::SignedMsg& sm, pbft::ViewChangeMsg vc);
  void tryNewView();
  void onNewView(const pbft::SignedMsg& sm, pbft::NewViewMsg nv);
  Status checkViewChange(const pbft::SignedMsg& sm, const pbft::ViewChangeMsg& vc) const;
  void installNewView(const pbft::NewViewMsg& nv, const pbft::Decision& d);

  // Retransmission and state transfer.
  void onStatusTimer();
  void onStatus(uint32_t from, const pbft::StatusMsg& s);
  void onFetchBatch(uint32_t from, const pbft::FetchBatchMsg& m);
  void onBatchData(uint32_t from, pbft::BatchDataMsg m);
  void requestMissingBatches();
  void maybeStartStateTransfer();
  void onFetchEffects(uint32_t from, const pbft::FetchEffectsMsg& m);
  void onEffectsData(uint32_t from, pbft::EffectsDataMsg m);
  void applyTransferred();

  ReplicaConfig config_;
  pbft::KeyRing keys_;
  flows::Link& link_;
  flows::Executor& executor_;
  const flows::Clock& clock_;
  pbft::ReplicaStore store_;
  StateMachine& machine_;
  Stats stats_;
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);
  struct StoreRequests;
  struct StoreRequestDone;
  std::shared_ptr<StoreRequests> store_requests_;

  // Protocol state (durable parts mirrored in the store).
  uint64_t view_ = 0;
  bool view_changing_ = false;
  uint64_t stable_seq_ = 0;
  SecureHash stable_digest_;
  std::vector<pbft::SignedMsg> stable_proof_;
  int64_t last_batch_time_micros_ = 0;
  std::map<uint64_t, Slot> slots_;
  uint64_t next_seq_ = 1;  // the primary's next sequence number to propose
  // Per replica: last_executed in its previous status (UINT64_MAX: none yet).
  std::vector<uint64_t> peer_executed_at_status_;
  // Per replica: consecutive statuses in which it executed nothing, or no
  // more batches than it was resent at the status before.
  std::vector<uint32_t> peer_stalled_statuses_;
  // Per replica: batches resent to it at its previous status.
  std::vector<uint32_t> peer_resent_batches_;

  // Execution. Batches (lastExecuted(), executing_through_] are handed to
  // the state machine and not yet answered (executing_batches_ of them).
  uint32_t executing_batches_ = 0;
  uint64_t executing_through_ = 0;
  bool execution_failed_ = false;  // a batch failed to execute: this replica stops executing
  SecureHash state_digest_;  // D(state_digest_seq_)
  uint64_t state_digest_seq_ = 0;  // lastExecuted() once its completion has run
  std::map<uint64_t, SecureHash> own_checkpoints_;  // seq -> D(seq), executed here, above stable
  std::map<uint64_t, std::map<uint32_t, pbft::SignedMsg>> checkpoint_votes_;  // seq -> replica -> msg
  int64_t last_executed_time_micros_ = 0;  // of the last batch handed to execution

  // Requests: pending (authenticated, not ordered), directly received digests, reply cache.
  std::unordered_map<SecureHash, Pending, SecureHashHasher> pending_;
  std::map<std::string, uint32_t> pending_per_client_;
  // digests of requests received directly from their client
  std::unordered_set<SecureHash, SecureHashHasher> direct_;
  // The reply cache: client -> client_seq -> reply; durable per batch (ReplicaStore),
  // the batches executed since the last write going with the next one.
  std::map<std::string, std::map<uint64_t, pbft::ReplyRecord>> replies_;
  struct {
    std::map<uint64_t, pbft::ReplyBatchRecord> reply_batches;
    uint64_t reply_batches_through = 0;
  } replies_unwritten_;
  // When nothing is executing, unwritten replies wait this long for another write to go with.
  static constexpr int64_t replies_idle_write_delay_micros = 20'000;
  static constexpr size_t replies_unwritten_batches_max = 16;
  flows::Executor::TimerId reply_write_timer_ = 0;
  std::unordered_set<SecureHash, SecureHashHasher> in_batches_;  // digests of requests in batches not yet executed
  size_t held_slots_ = 0;            // slots with a held pre-prepare
  flows::Executor::TimerId batch_timer_ = 0;
  bool propose_posted_ = false;  // a proposal for an idle pipeline is posted

  // View change.
  int64_t view_timeout_micros_ = 0;
  flows::Executor::TimerId view_timer_ = 0;
  std::map<uint64_t, std::map<uint32_t, std::pair<pbft::SignedMsg, pbft::ViewChangeMsg>>>
      view_changes_;  // view -> replica -> message
  std::optional<pbft::SignedMsg> my_view_change_;
  std::optional<pbft::SignedMsg> new_view_msg_;  // of the current view

  // Durability. Votes go out as their slot's write is queued once a durable
  // meta record says this replica is in view_, not view-changing
  // (durable_view_); a replica restarted without a clean stop abstains in
  // the view it stopped in (abstain_view_), where a vote it sent may not
  // have reached the store (notary/README.md, safety 3).
  bool votesEarly() const;
  void recordUnrecorded();  // queues the record of every slot accepted without one
  // This replica's vote on the slot's pre-prepare in the current view: the
  // pre-prepare (the primary, `mine`) or a prepare (a backup).
  void sendVote(Slot& s, bool mine);
  std::optional<uint64_t> durable_view_;
  std::optional<uint64_t> abstain_view_;
  bool started_ = false;  // start() succeeded: recordCleanStop() may record one
  std::optional<pbft::Step> step_;
  std::vector<std::function<void()>> after_durable_;
  // The vote log (f >= 1, vote_log_bytes > 0; opened by start()).
  std::unique_ptr<pbft::VoteLog> vote_log_;
  // Slots whose prepared certificate is in the vote log only (seq -> lsn):
  // every store write takes their records and releases the log's space
  // once durable (the replies' write takes them along, at the latest).
  std::vector<std::pair<uint64_t, uint64_t>> logged_;
  // Records appended, and durable (in order: the log's thread answers its
  // groups in order). A store write's dependents wait for the records
  // appended before it, so that the vote log is durable in the order of the
  // store's writes (a view-change reports only what is durable).
  uint64_t log_appended_lsn_ = 0, log_durable_lsn_ = 0;
  bool log_failed_ = false;  // a record's write failed: nothing more waits for the log
  std::deque<std::pair<uint64_t, std::shared_ptr<std::vector<std::function<void()>>>>>
      waiting_for_log_;
  // Batches whose replies went out when their execution was settled
  // (StateMachine::execute's decided), not yet durable, in order (at most
  // executing_batches_max), and when: onExecuted does not send them again
  // (Stats::replied_early_lead_micros).
  std::deque<std::pair<uint64_t, int64_t>> replied_early_at_;
  bool flush_posted_ = false;

  // State transfer.
  struct Transfer {
    uint64_t target_seq = 0;
    SecureHash target_digest;
    uint64_t from_seq = 0;
    std::vector<Bytes> effects;  // from_seq, from_seq+1, ...
    uint32_t source = 0;
    int64_t last_progress_micros = 0;
    bool applying = false;
  };
  std::optional<Transfer> transfer_;
  int64_t stalled_since_micros_ = 0;  // behind a stable checkpoint, waiting to execute from the log
  flows::Executor::TimerId status_timer_ = 0;
};

}  // namespace ccal::notary
