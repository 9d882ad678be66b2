#pragma once
// The node's LMDB environment: named sub-databases, a schema version stamped
// in the file and checked at open, read transactions for any thread, and one
// writer thread that group-commits many callers' writes into one durable
// LMDB commit, telling each caller when its write is durable.
//
// LMDB allows one writer; a durable commit costs an fsync (~3.8k/s here), so
// every hot writer batches: up to write_batch_max requests share one commit.
// Requests run directly in the batch's transaction (a nested transaction per
// request costs about half the writer's time). A request should check what
// it can before it writes: one that fails without having written anything
// costs nothing; one that fails after writing makes the writer abort the
// batch's transaction and run the batch again without it (at most
// batch_reruns_max times, then the batch is split), so every caller still
// sees exactly its own outcome and no failed request leaves a trace.
// Therefore a request may run more than once: it must set its outputs anew
// on every run.
//
// When the map is full the writer grows it (doubling, up to
// map_size_max_bytes) once no read transaction is open, and runs the batch
// again; beyond the maximum the request gets a storage_full error.
//
// Sorted index changes: a request submitted as WriteKind::sorted (a vault
// record) puts and deletes its index entries with putSorted()/delSorted();
// the writer applies the batch's entries sorted by key, page after page,
// instead of each descending the tree to a random page (see putSorted).
//
// Durability (durable = true). LMDB's default commit costs two syncs: an
// fdatasync of the data pages, then the meta page written through an
// O_DSYNC descriptor. The environment is opened with MDB_NOMETASYNC
// instead: a commit fdatasyncs its data pages and then writes its meta page
// with a plain pwrite. LMDB documents this as keeping integrity (ACI) but
// not durability: "a system crash may undo the last committed transaction"
// -- the meta page is synced by "the next non-MDB_RDONLY commit or
// mdb_env_sync()". LMDB keeps the snapshot of the previous meta page intact
// until the commit after next (pages freed by a commit are reused only by
// commits two later), so losing the last meta page falls back to a whole
// earlier state, never a torn one.
// The writer therefore answers a commit's callers only once a later sync
// covered its meta page, without weakening the promise callers get (every
// acknowledged write survives SIGKILL and power loss):
//  - under load, by the next commit: its fdatasync of the data pages (one
//    file) also writes the earlier meta page, before its own meta page is
//    written; the writer sees that a commit wrote a meta page by LMDB's
//    last transaction id moving;
//  - when no request waits (the writer would go idle), or when the next
//    batch wrote nothing (LMDB skips the sync of an empty commit), by an
//    explicit mdb_env_sync(), then answers.
// So a busy writer pays one sync per commit instead of two, and a caller
// waits at most one further commit; an idle one pays the same two syncs
// as before. A SIGKILL loses nothing written either way (the page cache
// holds every pwrite). A failed sync turns the waiting callers' ok into an
// error (the commit is visible but may not survive a power loss).
// With durable = false (MDB_NOSYNC) callers are answered at once.

#include <lmdb.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "ledger/bytes.h"
#include "ledger/result.h"

namespace ccal::vault {

struct StoreConfig {
  std::string path;                          // a directory; created if missing
  uint64_t map_size_bytes = 64ull << 30;     // virtual; the file grows only as used
  uint64_t map_size_max_bytes = 1ull << 40;  // the map grows when full, up to this
  uint32_t write_batch_max = 4096;           // requests per durable commit
  uint32_t write_queue_max = 65536;          // requests waiting; submit() blocks beyond
  bool durable = true;                       // fsync each commit (off only for tests/benchmarks)
};

// A sub-database handle, valid for the Store's lifetime.
struct Db {
  MDB_dbi dbi = 0;
  std::string name;
};

class Cursor;

// A read view. Values returned point into the map and live as long as the
// transaction. Not shared between threads.
class Store;

class ReadTxn {
 public:
  ReadTxn(ReadTxn&&) noexcept;
  ReadTxn& operator=(ReadTxn&&) noexcept;
  virtual ~ReadTxn();

  std::optional<ByteView> get(const Db& db, ByteView key) const;
  Cursor cursor(const Db& db) const;
  uint64_t entries(const Db& db) const;  // number of keys in a sub-database
  MDB_txn* raw() const { return txn_; }

 protected:
  ReadTxn(MDB_txn* txn, const Store* store) : txn_(txn), store_(store) {}
  friend class Store;
  MDB_txn* txn_ = nullptr;
  const Store* store_ = nullptr;  // set for read transactions the Store counts
};

// A write view, handed to a request on the writer thread.
class WriteTxn : public ReadTxn {
 public:
  // Errors (map full, a value too large) come back as Status; the request
  // must return them, which rolls back its changes (and, since it has
  // written, makes the writer run its batch again without it).
  Status put(const Db& db, ByteView key, ByteView value);
  // put() of a key expected to be greater than every key in `db` (a
  // sequence number, a time): LMDB appends it to the last page without a
  // search, and a full last page is split so that it stays full (an
  // ordinary put splits it in halves, leaving appended tables half empty).
  // A key that is not the greatest is put the ordinary way.
  Status append(const Db& db, ByteView key, ByteView value);
  // Fails with not_found-free semantics: deleting a missing key is ok.
  Status del(const Db& db, ByteView key);

  // put() and del() of index entries, applied later in key order: in a
  // request submitted as WriteKind::sorted they are kept in the batch's
  // buffer and applied, sorted by (sub-database, key) with the changes of the
  // batch's other sorted requests, just before the next plain request runs
  // or the batch commits (changes to one key keep their order). Sorted, the
  // batch's entries of an index land page after page under one cursor
  // instead of each descending the tree to a random page. Reads in the
  // batch do not see them until then: use them only for sub-databases that
  // no sorted request reads. In a plain request they are put()/del().
  // The key is checked now; a request that fails drops its own changes.
  Status putSorted(const Db& db, ByteView key, ByteView value);
  Status delSorted(const Db& db, ByteView key);

 private:
  // True once put() or del() reached LMDB: a failure from here on costs a
  // re-run of the batch.
  bool touched() const { return touched_; }

 private:
  friend class Store;
  struct SortedChanges;
  WriteTxn(MDB_txn* txn, std::vector<MDB_cursor*>* cursors, SortedChanges* sorted = nullptr)
      : ReadTxn(txn, nullptr), cursors_(cursors), sorted_(sorted) {}
  Status putFlags(const Db& db, ByteView key, ByteView value, unsigned int flags);
  Status checkKey(const Db& db, ByteView key, const char* what) const;
  // The batch's cursor on `db` (opened on first use), or an LMDB error.
  int writeCursor(const Db& db, MDB_cursor** out);

  // Puts and deletes go through one cursor per sub-database, kept for the
  // whole batch: a key on the page the cursor is on (the next one of a
  // sequence, an entry next to the last) is found without descending the
  // tree, which in a large write transaction means a search of LMDB's
  // dirty-page list per level. Indexed by dbi; owned by the writer.
  std::vector<MDB_cursor*>* cursors_ = nullptr;
  SortedChanges* sorted_ = nullptr;  // the batch's buffer in a sorted request, else null
  bool touched_ = false;
  int failed_rc_ = 0;  // the LMDB error of the last failed put/del
};

// Iterates keys in order. Key and value views are valid until the cursor moves.
class Cursor {
 public:
  Cursor(Cursor&&) noexcept;
  ~Cursor();

  bool seek(ByteView key);   // first key >= key
  bool first();
  bool last();
  bool next();
  bool prev();
  bool valid() const { return valid_; }
  ByteView key() const { return key_; }
  ByteView value() const { return value_; }

 private:
  friend class ReadTxn;
  explicit Cursor(MDB_cursor* cursor) : cursor_(cursor) {}
  bool op(MDB_cursor_op which, ByteView key = {});

  MDB_cursor* cursor_ = nullptr;
  bool valid_ = false;
  ByteView key_, value_;
};

// A write request: runs on the writer thread inside the group's transaction.
using WriteFn = std::function<Status(WriteTxn&)>;
// plain: the batch's sorted changes are applied before the request runs, so
// it reads everything written before it. sorted: the request reads no
// sub-database that sorted changes write, and its own putSorted()/delSorted()
// wait to be applied in key order (see WriteTxn::putSorted).
enum class WriteKind { plain, sorted };
// Called on the writer thread once the request's commit is durable (ok), or
// with the request's own error, or with the commit's error.
using DoneFn = std::function<void(const Status&)>;
// Optional, called on the writer thread at most once, before done, when the
// request's outcome is settled as ok: its run is the one that commits (the
// batch ran without failing and its commit starts). The request's outputs
// are then final, though not yet durable: done follows with ok once they are,
// or with the commit's error (the write may or may not be in the store). For
// a caller whose answer may go out before it is durable because it can
// always be computed again (the notary's deterministic execution).
using DecidedFn = std::function<void()>;

class Store {
 public:
  // Opens (creating if new) the environment at config.path with the given
  // sub-databases, and checks the stamp: a file made by another program or
  // another schema version is refused with an error naming both.
  static Result<std::unique_ptr<Store>> open(const StoreConfig& config,
                                             std::span<const std::string> db_names,
                                             std::string_view schema_name, uint32_t schema_version);
  ~Store();  // drains the queue, stops the writer, closes the environment

  const Db& db(std::string_view name) const;  // asserts the name was opened
  ReadTxn read() const;

  // Queues a write; done() runs after the durable commit (on the writer
  // thread: keep it short). Blocks while the queue is full.
  void submit(WriteFn fn, DoneFn done, WriteKind kind = WriteKind::plain);
  // ... and calls decided() once the outcome is settled, before done().
  void submit(WriteFn fn, DecidedFn decided, DoneFn done, WriteKind kind = WriteKind::plain);
  // Queues a write and waits until it is durable.
  Status write(WriteFn fn);

  // While a Hold lives the writer starts no new group (one under way
  // finishes), so the writes submitted under it share one commit with
  // whatever else is queued: a caller with two dependent writes to make at
  // once pays one durable commit, not two. Hold it only while submitting;
  // submit() does not block on a full queue while any Hold lives (the
  // queue then exceeds write_queue_max by what the holders submit).
  class Hold {
   public:
    Hold(Hold&& other) noexcept : store_(std::exchange(other.store_, nullptr)) {}
    Hold(const Hold&) = delete;
    Hold& operator=(const Hold&) = delete;
    Hold& operator=(Hold&&) = delete;
    ~Hold();

   private:
    friend class Store;
    explicit Hold(Store* store) : store_(store) {}
    Store* store_;
  };
  [[nodiscard]] Hold hold();

  struct Stats {
    uint64_t commits = 0;
    uint64_t requests = 0;
    uint64_t reruns = 0;      // batches run again without a request that failed after writing
    uint64_t syncs = 0;       // explicit syncs when the writer went idle (see the commit note)
    uint64_t sorted_changes = 0;  // index changes applied in key order (WriteTxn::putSorted)
    uint64_t map_grows = 0;   // times the map was grown
    uint64_t map_size_bytes = 0;  // the map's size now
    uint64_t writer_cpu_micros = 0;  // CPU time the writer thread has used
    // Where a request's time goes (wall clock, summed; divide by requests or
    // commits): waiting in the queue (submit() to its batch's start), the
    // batch's requests running, the LMDB commits (page writes and syncs).
    uint64_t queued_micros = 0;      // summed over requests
    uint64_t run_micros = 0;         // summed over batches
    uint64_t commit_micros = 0;      // summed over commits
  };
  Stats stats() const;
  const StoreConfig& config() const { return config_; }

 private:
  friend class ReadTxn;
  Store() = default;
  void writerLoop();
  // Writer thread: doubles the map (up to the maximum) once no read
  // transaction is open; false when it is at the maximum or readers stay.
  bool growMap();
  void readerEnded() const;

  struct Request {
    WriteFn fn;
    DoneFn done;
    int64_t submitted_nanos = 0;  // steady clock, for Stats::queued_micros
    WriteKind kind = WriteKind::plain;
    DecidedFn decided;  // empty, or called once (then emptied)
  };

  StoreConfig config_;
  MDB_env* env_ = nullptr;
  std::map<std::string, Db, std::less<>> dbs_;

  mutable std::mutex mutex_;  // guards queue_, holds_, stopping_, stats_
  std::condition_variable queue_not_empty_, queue_not_full_;
  std::deque<Request> queue_;
  uint32_t holds_ = 0;  // Holds alive: the writer takes no new group
  bool stopping_ = false;
  Stats stats_;
  std::thread writer_;

  // Read transactions open now, so that the writer can grow the map when
  // none is (LMDB remaps the file: a reader would be left pointing at the
  // old mapping). read() waits while a resize is under way.
  mutable std::mutex readers_mutex_;  // guards readers_open_, resizing_
  mutable std::condition_variable readers_changed_;
  mutable uint64_t readers_open_ = 0;
  bool resizing_ = false;
  uint64_t map_size_bytes_ = 0;  // writer thread (and stats(), under mutex_)
};

}  // namespace ccal::vault
