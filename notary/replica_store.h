#pragma once
// The replica's durable protocol state, in its own sub-databases (names
// prefixed pbft_) of the member's vault::Store: what PBFT's safety needs
// across a restart.
//   pbft_meta    view, whether a view change is under way, the last stable
//                checkpoint (seq, D(seq), its 2f+1 signed checkpoint
//                messages), the last batch timestamp proposed or accepted.
//   pbft_log     per sequence number above the stable checkpoint: the
//                pre-prepares accepted or sent (Q: digest -> latest view),
//                the latest prepared certificate (P: view, digest), under
//                key u64 BE seq; and the batches of Q and P, each under its
//                own key u64 BE seq || digest, written once (not again when
//                the slot's Q or P changes). Slot records of format 1 (before)
//                hold their batches inline; load() reads both. A restarted
//                primary reloads what it proposed and never proposes another
//                batch for the same (view, seq); a backup never prepares two
//                digests for one (view, seq).
//   pbft_replies the reply cache, per executed batch: key 0x01 || u64 BE
//                seq -> each request's client, client_seq and view, and
//                the batch's replies — in the state machine's packed form
//                (Executed::packed_replies: the uniqueness machine keeps two
//                signatures and the reply bytes, ~1/6 of the signed
//                replies; proofs are recomputed on load) or as they are.
//                One put per batch, and one delete when a batch falls
//                `reply_batches_durable_max` behind. (Stores written before
//                hold one record per reply, key 0x00 || client || 0x00 ||
//                u64 BE client_seq, or one per client keyed by the bare name
//                with its whole cache: load() reads them, Replica::start
//                keeps them in memory and deletes them.)
//   pbft_digests D(s) at each checkpoint this replica executed, so a restart
//                recomputes the digest chain from the last one, not from 0.
// One Step is one request to the Store's writer: the replica gathers
// everything an event burst changes and writes it once, then sends the
// messages that depended on it (group commit per batch step).

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "notary/pbft_messages.h"
#include "vault/store.h"

namespace ccal::notary::pbft {

// Q entries kept per sequence number (the newest views'; P's digest always).
constexpr size_t q_digests_per_slot_max = 4;

struct SlotRecord {
  uint64_t seq = 0;
  std::map<SecureHash, uint64_t> pre_prepared;  // Q: digest -> latest view
  // Encoded batches (encodeBatch) by digest. load(): every stored batch of
  // the slot's Q and P. write(): the batches to put (those stored already
  // need not be given again: a slot record leaves stored batches alone).
  std::map<SecureHash, Bytes> batches;
  std::set<SecureHash> batches_dropped;         // write(): stored batches to delete
  bool has_prepared = false;                    // P
  uint64_t prepared_view = 0;
  SecureHash prepared_digest;
};

struct MetaRecord {
  uint64_t view = 0;
  bool view_changing = false;
  uint64_t stable_seq = 0;
  SecureHash stable_digest;
  std::vector<SignedMsg> stable_proof;
  int64_t last_batch_time_micros = 0;
  // Written only by Replica::recordCleanStop(), as the last write of a
  // clean stop: every vote the replica sent is in the store. Any other write
  // clears it. (Absent in records of earlier versions: false.)
  bool clean_stop = false;
};

struct ReplyRecord {
  uint64_t client_seq = 0;
  uint64_t view = 0;
  Bytes body;
};

// One executed batch's replies, as the reply cache keeps them durably.
struct ReplyBatchRecord {
  struct Entry {
    std::string client;
    uint64_t client_seq = 0;
    uint64_t view = 0;
    bool operator==(const Entry&) const = default;
  };
  std::vector<Entry> entries;  // entries[i]: who request i of the batch was
  Bytes packed;                // the state machine's packed replies, or empty and
  std::vector<Bytes> replies;  // the replies as they are, one per entry
};

struct Recovered {
  MetaRecord meta;
  bool has_meta = false;  // false: a fresh store (this replica never wrote)
  std::map<uint64_t, SlotRecord> slots;
  std::map<std::string, std::map<uint64_t, ReplyRecord>> replies;  // records of the formats before
  std::map<uint64_t, ReplyBatchRecord> reply_batches;              // batch seq -> its replies
  std::map<uint64_t, SecureHash> digests;  // checkpoint seq -> D(seq)
  std::set<std::string> legacy_reply_clients;  // whole-cache records (the format before per-reply records)
};

struct Step {
  std::optional<MetaRecord> meta;
  std::map<uint64_t, SlotRecord> slots;      // put
  uint64_t truncate_through = 0;             // delete slots and digests <= this (0: none)
  std::map<uint64_t, ReplyBatchRecord> reply_batches;  // put
  uint64_t reply_batches_through = 0;                  // delete batch replies <= this (0: none)
  std::set<uint64_t> reply_batches_dropped;            // delete these batches' replies (damaged)
  std::map<std::string, std::set<uint64_t>>
      replies_dropped;                           // per-reply records to delete (older format)
  std::set<std::string> legacy_replies_dropped;  // whole-cache records to delete (older still)
  std::map<uint64_t, SecureHash> digests;    // put
  bool empty() const {
    return !meta && slots.empty() && truncate_through == 0 && reply_batches.empty() &&
           reply_batches_through == 0 && reply_batches_dropped.empty() && replies_dropped.empty() &&
           legacy_replies_dropped.empty() && digests.empty();
  }
};

class ReplicaStore {
 public:
  // The sub-databases to open the Store with (beside the state machine's).
  static const std::vector<std::string>& dbNames();
  // The vote log (vote_log.h) beside the store's files: load() merges its
  // records, the replica appends prepared certificates to it.
  static std::string voteLogPath(const vault::Store& store);

  explicit ReplicaStore(vault::Store& store) : store_(store) {}
  // The store's records merged with the vote log's (those above the
  // stable checkpoint).
  Result<Recovered> load() const;
  // One write request; done runs on the writer thread after the commit.
  void write(Step step, std::function<void(const Status&)> done);
  vault::Store& store() { return store_; }

  // Record codecs, public for tests.
  static Bytes encodeSlot(const SlotRecord& r);
  static Result<SlotRecord> decodeSlot(uint64_t seq, ByteView bytes);
  // A vote log record: the slot with its batches inline, and the replica's
  // last batch timestamp when it was made.
  static Bytes encodeLoggedSlot(const SlotRecord& r, int64_t last_batch_time_micros);
  static Result<std::pair<SlotRecord, int64_t>> decodeLoggedSlot(ByteView bytes);
  // Merges a logged slot into the one recovered so far for its seq: each Q
  // digest at its highest view (at most q_digests_per_slot_max, the
  // newest, and P's), P of the higher view, the batches of Q and P.
  static void mergeSlot(SlotRecord& into, SlotRecord from);
  static Bytes encodeMeta(const MetaRecord& r);
  static Result<MetaRecord> decodeMeta(ByteView bytes);

 private:
  vault::Store& store_;
};

}  // namespace ccal::notary::pbft
