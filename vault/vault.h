#pragma once
// The vault: a node's store of the transactions and states it is party to
// (or observes), on LMDB, with indexes, queries, soft locks, fungible
// selection and tracking. All writes go through the Store's group-committing
// writer; reads run on any thread.

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "ledger/contract.h"
#include "ledger/signed_transaction.h"
#include "ledger/state_schema.h"
#include "vault/store.h"

namespace ccal::vault {

inline constexpr std::string_view vault_schema_name = "ccal-vault";
// 2: status-free indexes (participant, linear id, field, recorded), a
// consumed-ref index, state type and token key in the state record.
// 3: transactions and states keyed by the vault's recording sequence number
// (seq | output index), a tx id -> seq map, index entries ending with the
// state's seq key instead of its StateRef (consumed-key index likewise).
// 4: declared-field entries begin with an 8-byte id of (type, field)
// instead of the two texts.
inline constexpr uint32_t vault_schema_version = 4;

enum class StateStatus : uint8_t { unconsumed = 0, consumed = 1 };
enum class StatusFilter : uint8_t { unconsumed, consumed, all };
// participant: one of this node's keys is among the state's participants;
// observed: recorded only because this node observes (e.g. a regulator).
enum class Relevance : uint8_t { participant = 0, observed = 1 };
enum class RelevanceFilter : uint8_t { participant, observed, all };
// only_relevant: record outputs with one of our keys among participants;
// all_visible: record every output (observers).
enum class RecordMode : uint8_t { only_relevant, all_visible };

// The holder of a soft lock: a flow's id.
using LockId = SecureHash;

struct VaultState {
  StateRef ref;
  TransactionState state;
  StateStatus status = StateStatus::unconsumed;
  Relevance relevance = Relevance::participant;
  int64_t recordedMicros = 0;
  std::optional<SecureHash> consumedBy;
  std::optional<int64_t> consumedMicros;
  std::optional<LockId> lock;
};

// --- query criteria -----------------------------------------------------------

enum class FieldOp : uint8_t { eq, lt, le, gt, ge, between, in };

// A tree of conditions composed with && and ||.
class Criteria {
 public:
  enum class Kind : uint8_t {
    all,          // every state
    state_type,   // text
    participant,  // key hash
    linear_id,    // hash
    recorded,     // [from, until) in microseconds
    consumed,     // [from, until) in microseconds
    field,        // a declared field of `text` (state type) compared by op with values
    and_,
    or_,
  };

  static Criteria all() { return Criteria(Kind::all); }
  static Criteria stateType(std::string type);
  static Criteria participant(const Key& key);
  static Criteria linearId(const SecureHash& id);
  static Criteria recordedBetween(int64_t from_micros, int64_t until_micros);
  static Criteria consumedBetween(int64_t from_micros, int64_t until_micros);
  // A declared field of `state_type`: eq/lt/le/gt/ge take one value, between
  // two (inclusive), in one or more.
  static Criteria field(std::string state_type, std::string name, FieldOp op,
                        std::vector<FieldValue> values);

  friend Criteria operator&&(Criteria a, Criteria b);
  friend Criteria operator||(Criteria a, Criteria b);

  Kind kind() const { return kind_; }
  const std::string& text() const { return text_; }
  const std::string& fieldName() const { return field_; }
  FieldOp op() const { return op_; }
  const std::vector<FieldValue>& values() const { return values_; }
  const SecureHash& hash() const { return hash_; }
  int64_t from() const { return from_; }
  int64_t until() const { return until_; }
  const std::vector<Criteria>& children() const { return children_; }

 private:
  explicit Criteria(Kind kind) : kind_(kind) {}
  Kind kind_;
  std::string text_;
  std::string field_;
  FieldOp op_ = FieldOp::eq;
  std::vector<FieldValue> values_;
  SecureHash hash_;
  int64_t from_ = 0, until_ = 0;
  std::vector<Criteria> children_;
};

struct Sort {
  // "recorded" (default), "consumed", "ref", or a declared field of the
  // state type the criteria name.
  std::string by = "recorded";
  bool descending = false;
};

// Paging: by page number (1-based; skipping costs O(offset)), or by cursor:
// every page carries `next_cursor` (empty on the last page), an opaque
// string that, passed back in Query::cursor with the same query, gives the
// page after it by seeking, whatever the offset. A cursor names a position
// in the sort order (the sort value and the state ref that ends the page),
// so states recorded meanwhile appear in later pages in their place and
// nothing is repeated or skipped. A malformed cursor, or one made by a
// different query (criteria, status, relevance or sort), is a bad_query.
struct Query {
  Query() = default;
  explicit Query(Criteria c, StatusFilter s = StatusFilter::unconsumed,
                 RelevanceFilter r = RelevanceFilter::all, Sort order = {}, uint32_t size = 200,
                 uint32_t number = 1)
      : criteria(std::move(c)), status(s), relevance(r), sort(std::move(order)),
        page_size(size), page_number(number) {}

  Criteria criteria = Criteria::all();
  StatusFilter status = StatusFilter::unconsumed;
  RelevanceFilter relevance = RelevanceFilter::all;
  Sort sort;
  uint32_t page_size = 200;  // at most VaultConfig::page_size_max
  uint32_t page_number = 1;  // 1-based; leave at 1 when giving a cursor
  std::string cursor;        // from Page::next_cursor; empty: page_number decides
};

struct Page {
  std::vector<VaultState> states;
  uint64_t total = 0;  // matches over all pages
  uint32_t page_number = 1;
  bool has_more = false;
  std::string next_cursor;  // the next page's cursor when has_more, else empty
};

// A signed transaction whose signatures have been checked: every required
// signer is fulfilled. Only verify() makes one, so a flow that has already
// verified a transaction hands it to Vault::record without the vault
// checking the signatures a second time (they are the costly part).
class VerifiedTransaction {
 public:
  static Result<VerifiedTransaction> verify(SignedTransaction stx);
  const SignedTransaction& stx() const { return *stx_; }
  const SecureHash& id() const { return stx_->id(); }

 private:
  explicit VerifiedTransaction(std::shared_ptr<const SignedTransaction> stx)
      : stx_(std::move(stx)) {}
  std::shared_ptr<const SignedTransaction> stx_;
};

// A change a tracker sees: states produced and consumed by one recorded transaction.
struct VaultUpdate {
  SecureHash txId;
  std::vector<VaultState> produced;
  std::vector<VaultState> consumed;
};

struct FungibleSelection {
  std::vector<VaultState> states;  // locked for the requester
  int64_t total = 0;               // >= the amount asked for
};

struct VaultConfig {
  StoreConfig store;
  uint32_t page_size_max = 1000;
  uint32_t query_candidates_max = 2'000'000;  // states one query may examine
  uint32_t lock_states_max = 4096;           // states in one lock or selection
  // The clock for recording times; the system clock when empty.
  std::function<int64_t()> now_micros;
};

class Vault {
 public:
  // Opens the vault in config.store.path. `our_keys` decide relevance.
  static Result<std::unique_ptr<Vault>> open(const VaultConfig& config,
                                             const ContractRegistry& registry,
                                             std::vector<PublicKey> our_keys);
  ~Vault();

  // --- recording ---
  // Checks the signatures (all required signers fulfilled) before anything
  // is written; records the transaction, its relevant (or all) outputs, and
  // marks inputs this vault holds as consumed, in one durable write. Recording
  // the same transaction again is a no-op; spending a state that this vault
  // saw consumed by another transaction is a `conflict` naming both.
  Status record(const SignedTransaction& stx, RecordMode mode);
  void recordAsync(const SignedTransaction& stx, RecordMode mode, DoneFn done);
  // The same for a transaction whose signatures were checked already. The
  // states' data are decoded and every index key is built on the caller's
  // thread; the one writer thread only reads the inputs and writes.
  Status record(const VerifiedTransaction& tx, RecordMode mode);
  void recordAsync(const VerifiedTransaction& tx, RecordMode mode, DoneFn done);

  Result<std::optional<SignedTransaction>> transaction(const SecureHash& id) const;
  bool hasTransaction(const SecureHash& id) const;
  Result<std::optional<VaultState>> state(const StateRef& ref) const;
  // Every recorded transaction in id order, for serving backchains; stop by returning false.
  Status forEachTransaction(const std::function<bool(const SecureHash&, ByteView)>& fn) const;

  // --- queries ---
  // Errors name unknown fields, wrong value types and bad paging.
  Result<Page> query(const Query& query) const;

  // --- soft locks and selection ---
  // Locks all of `refs` for `holder`, or none: fails naming the first state
  // that is unknown, consumed or locked by another holder. Re-locking by the
  // same holder is fine.
  Status lock(const LockId& holder, std::span<const StateRef> refs);
  // Releases the holder's locks on `refs` (all its locks when empty).
  Status release(const LockId& holder, std::span<const StateRef> refs = {});
  // The same without waiting: done() runs on the writer thread once the
  // release is durable (keep it short).
  void releaseAsync(const LockId& holder, std::span<const StateRef> refs, DoneFn done);
  // Crash recovery: releases every lock whose holder is not in `live`.
  Result<uint64_t> releaseAllExcept(std::span<const LockId> live);
  // Picks unlocked, unconsumed states of `token` (from `issuer`, when given)
  // summing to at least `amount`, and locks them for `holder` atomically.
  // insufficient_balance names the amount available.
  Result<FungibleSelection> selectFungible(const LockId& holder, std::string_view token,
                                           const std::optional<SecureHash>& issuer, int64_t amount);
  // The same without waiting (a flow's executor goes on with other work):
  // done() runs on the writer thread once the locks are durable.
  void selectFungibleAsync(const LockId& holder, std::string_view token, const std::optional<SecureHash>& issuer,
                           int64_t amount, std::function<void(Result<FungibleSelection>)> done);

  // --- tracking ---
  using TrackId = uint64_t;
  // The query's first page now, and every later recorded update that
  // touches a state matching the query's criteria (until untrack).
  Result<std::pair<Page, TrackId>> track(const Query& query,
                                         std::function<void(const VaultUpdate&)> on_update);
  void untrack(TrackId id);

  // Checks that the indexes and counts agree exactly with the stored states
  // (every expected index key present, no extra ones) and that every consumed
  // state's consuming transaction is recorded. storage_error names the first
  // disagreement. For tests, tools and recovery checks: it reads everything.
  Status checkConsistency() const;

  Store& store() { return *store_; }
  // Blocks until every write queued through recordAsync, selectFungibleAsync
  // and releaseAsync has run its done() (for tests' quiescence and shutdown).
  void waitForWrites() const;
  const ContractRegistry& registry() const { return registry_; }

 private:
  WriteFn releaseFn(const LockId& holder, std::span<const StateRef> refs);
  WriteFn selectFn(const LockId& holder, std::string_view token, const std::optional<SecureHash>& issuer,
                   int64_t amount, std::shared_ptr<FungibleSelection> selection);
  Vault(const VaultConfig& config, const ContractRegistry& registry, std::vector<PublicKey> keys);
  int64_t now() const;
  bool tracking() const;
  void publish(const VaultUpdate& update);

  friend struct VaultAccess;  // the implementation's helpers

  VaultConfig config_;
  const ContractRegistry& registry_;
  std::set<PublicKey> our_keys_;
  std::unique_ptr<Store> store_;
  // Asynchronous writes whose done() has not returned yet.
  struct Pending {
    mutable std::mutex mutex;
    mutable std::condition_variable idle;
    uint64_t in_flight = 0;
  };
  std::shared_ptr<Pending> pending_ = std::make_shared<Pending>();
  DoneFn tracked(DoneFn done);
  // The sequence number the next recorded transaction gets. Written by the
  // store's writer thread only (set at open before any write).
  uint64_t next_seq_ = 1;

  struct Tracker {
    Query query;
    std::function<void(const VaultUpdate&)> on_update;
  };
  mutable std::mutex trackers_mutex_;  // guards trackers_, next_track_id_
  std::map<TrackId, Tracker> trackers_;
  TrackId next_track_id_ = 1;
};

// Names of the sub-databases in the vault's environment (for tools and tests).
std::vector<std::string> vaultDatabaseNames();

}  // namespace ccal::vault
