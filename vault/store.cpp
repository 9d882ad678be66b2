#include "vault/store.h"

#include <pthread.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <time.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <stdexcept>
#include <utility>

namespace ccal::vault {
namespace {

// Limits of this module, in one place.
constexpr unsigned int readers_max = 256;             // ReadTxns open at once (one LMDB slot each)
constexpr size_t db_names_max = 64;                   // sub-databases per environment
constexpr uint64_t map_size_min_bytes = 1ull << 20;   // below this LMDB cannot hold its own pages
constexpr uint64_t disk_free_low_bytes = 1ull << 20;  // a failed write with less free: disk full
constexpr uint32_t batch_reruns_max = 8;              // re-runs of one batch before it is split
constexpr int64_t map_grow_wait_micros_max = 2'000'000;  // for open readers to end before a grow

// The stamp: which program made the file, and with which schema version.
constexpr const char* meta_db_name = "meta";
constexpr std::string_view schema_name_key = "schema_name";
constexpr std::string_view schema_version_key = "schema_version";

// Stores open in this process. LMDB forbids opening one environment twice in
// a process (its POSIX file locks are per process, so the second close would
// drop the first one's locks); we refuse it with an error instead.
struct OpenEnvironment {
  dev_t device;
  ino_t inode;
};
std::mutex g_open_mutex;                         // guards g_open
std::map<const Store*, OpenEnvironment> g_open;  // guarded by g_open_mutex

MDB_val toVal(ByteView bytes) {
  static const uint8_t empty = 0;  // LMDB copies from mv_data even for zero bytes
  return MDB_val{bytes.size(), const_cast<uint8_t*>(bytes.empty() ? &empty : bytes.data())};
}

ByteView fromVal(const MDB_val& val) {
  return ByteView(static_cast<const uint8_t*>(val.mv_data), val.mv_size);
}

std::string dataFileOf(std::string_view dir) {
  return std::string(dir) + "/data.mdb";
}

std::string dataFileOf(MDB_env* env) {
  const char* dir = nullptr;
  if (mdb_env_get_path(env, &dir) != 0 || dir == nullptr) return "the store";
  return dataFileOf(dir);
}

uint64_t mapSizeOf(MDB_env* env) {
  MDB_envinfo info{};
  if (mdb_env_info(env, &info) != 0) return 0;
  return info.me_mapsize;
}

Errc errcOf(int rc) {
  switch (rc) {
    case MDB_MAP_FULL:
    case ENOSPC:
    case EFBIG:
    case EDQUOT:
      return Errc::storage_full;
    case MDB_TXN_FULL:
    case MDB_BAD_VALSIZE:
      return Errc::too_large;
    case MDB_INVALID:
    case MDB_VERSION_MISMATCH:
    case MDB_INCOMPATIBLE:
      return Errc::schema_mismatch;
    default:
      return Errc::storage_error;
  }
}

// What a person can do about an LMDB failure.
std::string hintOf(int rc, uint64_t map_size_bytes) {
  switch (rc) {
    case MDB_MAP_FULL:
      return "the store's map of " + std::to_string(map_size_bytes >> 20) +
              " MiB is full and could not grow (it grows up to map_size_max_bytes, while no read "
             "transaction is open): raise map_size_bytes and map_size_max_bytes (node config key "
             "vault.map_size_mb) and restart; everything committed before is intact";
    case ENOSPC:
    case EDQUOT:
      return "the disk is full: free space and retry; nothing of this commit was written";
    case EFBIG:
      return "the file size limit (ulimit -f) was reached: raise it and retry; nothing of this "
             "commit was written";
    case MDB_TXN_FULL:
      return "one request changes too many pages for one LMDB transaction: split it";
    case MDB_READERS_FULL:
      return "more than " + std::to_string(readers_max) +
             " read transactions are open at once: end read transactions sooner";
    case MDB_INVALID:
      return "not an LMDB file, or its header is damaged";
    case MDB_VERSION_MISMATCH:
      return "made by an incompatible version of LMDB";
    case MDB_INCOMPATIBLE:
      return "the file's layout is not the one this program expects";
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND:
      return "the file is damaged: restore it from a backup";
    case MDB_PANIC:
      return "an earlier fatal I/O error: restart the node";
    default:
      return {};
  }
}

Error lmdbError(int rc, const std::string& what, uint64_t map_size_bytes) {
  std::string message = what + ": " + mdb_strerror(rc);
  std::string hint = hintOf(rc, map_size_bytes);
  if (!hint.empty()) message += " (" + hint + ")";
  return makeError(errcOf(rc), std::move(message));
}

// LMDB reports a short write (the disk or a file size limit filled up in the
// middle of a write) as EIO. Tell the user which limit it was, if one is.
Error writeFailure(int rc, const std::string& what, MDB_env* env) {
  if (rc == EIO) {
    const std::string file = dataFileOf(env);
    struct statvfs fs {};
    if (::statvfs(file.c_str(), &fs) == 0 &&
        static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize < disk_free_low_bytes) {
      return lmdbError(ENOSPC, what, mapSizeOf(env));
    }
    struct rlimit limit {};
    struct stat st {};
    if (::getrlimit(RLIMIT_FSIZE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY &&
        ::stat(file.c_str(), &st) == 0 &&
        static_cast<uint64_t>(st.st_size) + (1u << 16) >= limit.rlim_cur) {
      return lmdbError(EFBIG, what, mapSizeOf(env));
    }
  }
  return lmdbError(rc, what, mapSizeOf(env));
}

// Reads fail only on damage or misuse; both are operational failures for the
// caller (a write request that throws is turned into an error by the writer).
[[noreturn]] void throwReadFailure(int rc, MDB_txn* txn, const std::string& what) {
  CCAL_ASSERT_MSG(rc != EINVAL, "an LMDB read on a closed transaction or a foreign Db");
  throw std::runtime_error(
      lmdbError(rc, what + " in " + dataFileOf(mdb_txn_env(txn)), mapSizeOf(mdb_txn_env(txn)))
          .toString());
}

// Read transactions of this process still open on `env`, from LMDB's reader
// table (MDB_NOTLS releases a slot when its transaction ends).
int openReadersOfThisProcess(MDB_env* env) {
  struct Count {
    int pid;
    int open;
  } count{static_cast<int>(::getpid()), 0};
  mdb_reader_list(
      env,
      [](const char* line, void* ctx) -> int {
        auto* c = static_cast<Count*>(ctx);
        int pid = 0;
        size_t thread = 0;
        char txnid[32] = {};
        if (std::sscanf(line, "%d %zx %31s", &pid, &thread, txnid) == 3 && pid == c->pid &&
            std::strcmp(txnid, "-") != 0) {
          ++c->open;
        }
        return 0;
      },
      &count);
  return count.open;
}

int64_t steadyNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void encodeU32(uint8_t out[4], uint32_t v) {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<uint8_t>(v >> (8 * i));
}

uint32_t decodeU32(const uint8_t in[4]) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(in[i]) << (8 * i);
  return v;
}

// Checks the stamp of an existing file, or writes it into a new one, inside
// the opening write transaction.
Status checkOrWriteStamp(MDB_txn* txn, const std::string& file, std::string_view schema_name,
                         uint32_t schema_version, uint64_t map_size) {
  MDB_dbi meta = 0;
  int rc = mdb_dbi_open(txn, meta_db_name, 0, &meta);
  if (rc == MDB_NOTFOUND) {
    // A new file, or an LMDB file some other program made.
    MDB_dbi main_db = 0;
    MDB_stat st{};
    rc = mdb_dbi_open(txn, nullptr, 0, &main_db);
    if (rc == 0) rc = mdb_stat(txn, main_db, &st);
    if (rc != 0) return lmdbError(rc, "read the main database of " + file, map_size);
    if (st.ms_entries != 0) {
      return makeError(Errc::schema_mismatch, file + " was made by another program (it holds " +
                                                  std::to_string(st.ms_entries) +
                                                  " entries and no CCAL stamp), not '" +
                                                  std::string(schema_name) + "'");
    }
    rc = mdb_dbi_open(txn, meta_db_name, MDB_CREATE, &meta);
    if (rc != 0) return lmdbError(rc, "create the meta database in " + file, map_size);
    MDB_val name_key = toVal(asBytes(schema_name_key));
    MDB_val name_val = toVal(asBytes(schema_name));
    uint8_t version_bytes[4];
    encodeU32(version_bytes, schema_version);
    MDB_val version_key = toVal(asBytes(schema_version_key));
    MDB_val version_val = toVal(ByteView(version_bytes, 4));
    rc = mdb_put(txn, meta, &name_key, &name_val, 0);
    if (rc == 0) rc = mdb_put(txn, meta, &version_key, &version_val, 0);
    if (rc != 0) return lmdbError(rc, "write the schema stamp into " + file, map_size);
    return {};
  }
  if (rc == MDB_INCOMPATIBLE) {
    return makeError(Errc::schema_mismatch,
                     file + " was made by another program ('meta' is not a sub-database), not '" +
                         std::string(schema_name) + "'");
  }
  if (rc != 0) return lmdbError(rc, "open the meta database of " + file, map_size);

  MDB_val name_key = toVal(asBytes(schema_name_key)), name_val{};
  rc = mdb_get(txn, meta, &name_key, &name_val);
  if (rc == MDB_NOTFOUND) {
    return makeError(Errc::schema_mismatch, file + " was made by another program (no schema " +
                                                "name in its meta database), not '" +
                                                std::string(schema_name) + "'");
  }
  if (rc != 0) return lmdbError(rc, "read the schema name of " + file, map_size);
  ByteView stored_name_bytes = fromVal(name_val);
  std::string stored_name(stored_name_bytes.begin(), stored_name_bytes.end());
  if (stored_name != schema_name) {
    return makeError(Errc::schema_mismatch, file + " was made by '" + stored_name + "', not '" +
                                                std::string(schema_name) + "'");
  }

  MDB_val version_key = toVal(asBytes(schema_version_key)), version_val{};
  rc = mdb_get(txn, meta, &version_key, &version_val);
  if (rc == 0 && version_val.mv_size != 4) rc = MDB_CORRUPTED;
  if (rc == MDB_NOTFOUND || rc == MDB_CORRUPTED) {
    return makeError(Errc::schema_mismatch,
                     file + " holds schema '" + stored_name + "' with no valid version stamp");
  }
  if (rc != 0) return lmdbError(rc, "read the schema version of " + file, map_size);
  uint32_t stored_version = decodeU32(static_cast<const uint8_t*>(version_val.mv_data));
  if (stored_version != schema_version) {
    return makeError(Errc::schema_mismatch,
                     file + " holds schema '" + stored_name + "' version " +
                         std::to_string(stored_version) + ", but this program reads version " +
                         std::to_string(schema_version) + " (no migration between them exists)");
  }
  return {};
}

}  // namespace

// ---------------------------------------------------------------- ReadTxn

ReadTxn::ReadTxn(ReadTxn&& other) noexcept
    : txn_(std::exchange(other.txn_, nullptr)), store_(std::exchange(other.store_, nullptr)) {}

ReadTxn& ReadTxn::operator=(ReadTxn&& other) noexcept {
  if (this != &other) {
    if (txn_ != nullptr) {
      mdb_txn_abort(txn_);
      if (store_ != nullptr) store_->readerEnded();
    }
    txn_ = std::exchange(other.txn_, nullptr);
    store_ = std::exchange(other.store_, nullptr);
  }
  return *this;
}

ReadTxn::~ReadTxn() {
  // Read transactions are only ever aborted. A WriteTxn's transaction is
  // committed or aborted by the writer, which then clears txn_.
  if (txn_ != nullptr) {
    mdb_txn_abort(txn_);
    if (store_ != nullptr) store_->readerEnded();
  }
}

std::optional<ByteView> ReadTxn::get(const Db& db, ByteView key) const {
  CCAL_ASSERT_MSG(txn_ != nullptr, "get() on a moved-from transaction");
  // Keys LMDB cannot hold are never present.
  if (key.empty() || key.size() > static_cast<size_t>(mdb_env_get_maxkeysize(mdb_txn_env(txn_)))) {
    return std::nullopt;
  }
  MDB_val k = toVal(key), v{};
  int rc = mdb_get(txn_, db.dbi, &k, &v);
  if (rc == MDB_NOTFOUND) return std::nullopt;
  if (rc != 0) throwReadFailure(rc, txn_, "get from '" + db.name + "'");
  return fromVal(v);
}

Cursor ReadTxn::cursor(const Db& db) const {
  CCAL_ASSERT_MSG(txn_ != nullptr, "cursor() on a moved-from transaction");
  MDB_cursor* cursor = nullptr;
  int rc = mdb_cursor_open(txn_, db.dbi, &cursor);
  if (rc != 0) throwReadFailure(rc, txn_, "open a cursor on '" + db.name + "'");
  return Cursor(cursor);
}

uint64_t ReadTxn::entries(const Db& db) const {
  CCAL_ASSERT_MSG(txn_ != nullptr, "entries() on a moved-from transaction");
  MDB_stat st{};
  int rc = mdb_stat(txn_, db.dbi, &st);
  if (rc != 0) throwReadFailure(rc, txn_, "count the entries of '" + db.name + "'");
  return st.ms_entries;
}

// ---------------------------------------------------------------- WriteTxn

Status WriteTxn::put(const Db& db, ByteView key, ByteView value) {
  return putFlags(db, key, value, 0);
}

Status WriteTxn::append(const Db& db, ByteView key, ByteView value) {
  return putFlags(db, key, value, MDB_APPEND);
}

// The batch's sorted changes (WriteTxn::putSorted): keys and values copied
// into one arena, applied in (sub-database, key, order) order.
struct WriteTxn::SortedChanges {
  struct Change {
    const Db* db;
    // The sort key's first bytes, big-endian and zero-padded, so that most
    // comparisons need no look into the arena: dbi, then key bytes 0-7, 8-15.
    MDB_dbi dbi;
    uint64_t head0, head1;
    uint32_t key_offset, key_size, value_offset, value_size;
    uint32_t order;  // submission order: changes to one key keep it
    bool del;
  };
  static uint64_t headOf(ByteView key, size_t from) {
    uint64_t v = 0;
    for (size_t i = from; i < from + 8; ++i) v = v << 8 | (i < key.size() ? key[i] : 0);
    return v;
  }
  std::vector<Change> changes;
  Bytes arena;

  void add(const Db& db, ByteView key, ByteView value, bool del) {
    const auto key_offset = static_cast<uint32_t>(arena.size());
    arena.insert(arena.end(), key.begin(), key.end());
    const auto value_offset = static_cast<uint32_t>(arena.size());
    arena.insert(arena.end(), value.begin(), value.end());
    changes.push_back(Change{&db, db.dbi, headOf(key, 0), headOf(key, 8), key_offset,
                             static_cast<uint32_t>(key.size()), value_offset,
                             static_cast<uint32_t>(value.size()),
                             static_cast<uint32_t>(changes.size()), del});
  }
  ByteView view(uint32_t offset, uint32_t size) const {
    return ByteView(arena.data() + offset, size);
  }
  // Drops the changes made after a request began (it failed).
  void truncate(size_t changes_size, size_t arena_size) {
    changes.resize(changes_size);
    arena.resize(arena_size);
  }
  void clear() { truncate(0, 0); }
  bool empty() const { return changes.empty(); }
  void sort() {
    std::sort(changes.begin(), changes.end(), [this](const Change& a, const Change& b) {
      if (a.dbi != b.dbi) return a.dbi < b.dbi;
      if (a.head0 != b.head0) return a.head0 < b.head0;
      if (a.head1 != b.head1) return a.head1 < b.head1;
      // LMDB's default order: memcmp, then the shorter key first.
      const int c = std::memcmp(arena.data() + a.key_offset, arena.data() + b.key_offset,
                                std::min(a.key_size, b.key_size));
      if (c != 0) return c < 0;
      if (a.key_size != b.key_size) return a.key_size < b.key_size;
      return a.order < b.order;
    });
  }
};

Status WriteTxn::checkKey(const Db& db, ByteView key, const char* what) const {
  const auto key_max = static_cast<size_t>(mdb_env_get_maxkeysize(mdb_txn_env(txn_)));
  if (key.empty()) {
    return makeError(Errc::malformed, std::string(what) + " '" + db.name + "': an empty key");
  }
  if (key.size() > key_max) {
    return makeError(Errc::too_large, std::string(what) + " '" + db.name + "': a key of " +
                                          std::to_string(key.size()) + " bytes, over LMDB's " +
                                          std::to_string(key_max));
  }
  return {};
}

Status WriteTxn::putSorted(const Db& db, ByteView key, ByteView value) {
  if (sorted_ == nullptr) return put(db, key, value);
  CCAL_ASSERT_MSG(txn_ != nullptr, "putSorted() on a moved-from transaction");
  CCAL_TRY(checkKey(db, key, "put into"));
  sorted_->add(db, key, value, false);
  return {};
}

Status WriteTxn::delSorted(const Db& db, ByteView key) {
  if (sorted_ == nullptr) return del(db, key);
  CCAL_ASSERT_MSG(txn_ != nullptr, "delSorted() on a moved-from transaction");
  // Keys LMDB cannot hold are never present: deleting them is a no-op.
  if (key.empty() || key.size() > static_cast<size_t>(mdb_env_get_maxkeysize(mdb_txn_env(txn_)))) {
    return {};
  }
  sorted_->add(db, key, {}, true);
  return {};
}

Status WriteTxn::putFlags(const Db& db, ByteView key, ByteView value, unsigned int flags) {
  CCAL_ASSERT_MSG(txn_ != nullptr, "put() on a moved-from transaction");
  MDB_env* env = mdb_txn_env(txn_);
  CCAL_TRY(checkKey(db, key, "put into"));
  MDB_val k = toVal(key), v = toVal(value);
  MDB_cursor* cursor = nullptr;
  int rc = writeCursor(db, &cursor);
  if (rc != 0) {
    failed_rc_ = rc;
    return writeFailure(rc, "open a write cursor on '" + db.name + "' of " + dataFileOf(env), env);
  }
  touched_ = true;
  rc = mdb_cursor_put(cursor, &k, &v, flags);
  if (rc == MDB_KEYEXIST && (flags & MDB_APPEND) != 0) {
    // Not beyond the last key: LMDB refused it before changing anything.
    k = toVal(key);
    v = toVal(value);
    rc = mdb_cursor_put(cursor, &k, &v, flags & ~MDB_APPEND);
  }
  if (rc != 0) {
    failed_rc_ = rc;
    return writeFailure(rc, "put into '" + db.name + "' of " + dataFileOf(env), env);
  }
  return {};
}

Status WriteTxn::del(const Db& db, ByteView key) {
  CCAL_ASSERT_MSG(txn_ != nullptr, "del() on a moved-from transaction");
  MDB_env* env = mdb_txn_env(txn_);
  // Keys LMDB cannot hold are never present: deleting them is a no-op.
  if (key.empty() || key.size() > static_cast<size_t>(mdb_env_get_maxkeysize(env))) return {};
  MDB_val k = toVal(key), v{};
  MDB_cursor* cursor = nullptr;
  int rc = writeCursor(db, &cursor);
  if (rc != 0) {
    failed_rc_ = rc;
    return writeFailure(rc, "open a write cursor on '" + db.name + "' of " + dataFileOf(env), env);
  }
  touched_ = true;
  rc = mdb_cursor_get(cursor, &k, &v, MDB_SET);
  if (rc == MDB_NOTFOUND) return {};
  if (rc == 0) rc = mdb_cursor_del(cursor, 0);
  if (rc != 0) {
    failed_rc_ = rc;
    return writeFailure(rc, "delete from '" + db.name + "' of " + dataFileOf(env), env);
  }
  return {};
}

int WriteTxn::writeCursor(const Db& db, MDB_cursor** out) {
  CCAL_ASSERT_MSG(cursors_ != nullptr, "a WriteTxn without the writer's cursors");
  if (db.dbi >= cursors_->size()) cursors_->resize(db.dbi + 1, nullptr);
  MDB_cursor*& cursor = (*cursors_)[db.dbi];
  if (cursor == nullptr) {
    int rc = mdb_cursor_open(txn_, db.dbi, &cursor);
    if (rc != 0) {
      cursor = nullptr;
      return rc;
    }
  }
  *out = cursor;
  return 0;
}

// ---------------------------------------------------------------- Cursor

Cursor::Cursor(Cursor&& other) noexcept
    : cursor_(std::exchange(other.cursor_, nullptr)),
      valid_(std::exchange(other.valid_, false)),
      key_(std::exchange(other.key_, {})),
      value_(std::exchange(other.value_, {})) {}

Cursor::~Cursor() {
  // A cursor of a write request must be destroyed before the request
  // returns: LMDB frees a write transaction's cursors when it ends.
  if (cursor_ != nullptr) mdb_cursor_close(cursor_);
}

bool Cursor::op(MDB_cursor_op which, ByteView key) {
  CCAL_ASSERT_MSG(cursor_ != nullptr, "a moved-from Cursor");
  MDB_val k = toVal(key), v{};
  int rc = mdb_cursor_get(cursor_, &k, &v, which);
  if (rc == MDB_NOTFOUND) {
    valid_ = false;
    key_ = {};
    value_ = {};
    return false;
  }
  if (rc != 0) {
    valid_ = false;
    throwReadFailure(rc, mdb_cursor_txn(cursor_), "move a cursor");
  }
  valid_ = true;
  key_ = fromVal(k);
  value_ = fromVal(v);
  return true;
}

bool Cursor::seek(ByteView key) {
  if (key.empty()) return first();  // every key is >= the empty key
  return op(MDB_SET_RANGE, key);
}
bool Cursor::first() {
  return op(MDB_FIRST);
}
bool Cursor::last() {
  return op(MDB_LAST);
}
// Stepping from an invalid position (never placed, or run off an end) stays
// invalid: LMDB would wrap to an end or step from a stale place instead.
bool Cursor::next() {
  return valid_ && op(MDB_NEXT);
}
bool Cursor::prev() {
  return valid_ && op(MDB_PREV);
}

// ---------------------------------------------------------------- Store

Result<std::unique_ptr<Store>> Store::open(const StoreConfig& config,
                                           std::span<const std::string> db_names,
                                           std::string_view schema_name, uint32_t schema_version) {
  // The sub-database names and the schema come from code: a wrong one is a bug.
  CCAL_ASSERT_MSG(!schema_name.empty(), "a store needs a schema name");
  CCAL_ASSERT_MSG(db_names.size() <= db_names_max, "too many sub-databases");
  for (size_t i = 0; i < db_names.size(); ++i) {
    CCAL_ASSERT_MSG(!db_names[i].empty(), "an empty sub-database name");
    CCAL_ASSERT_MSG(db_names[i] != meta_db_name, "'meta' is the store's own sub-database");
    for (size_t j = 0; j < i; ++j) {
      CCAL_ASSERT_MSG(db_names[i] != db_names[j], "a sub-database name given twice");
    }
  }
  // The configuration comes from a person: a wrong one is an error.
  if (config.path.empty()) {
    return makeError(Errc::malformed, "vault store: no directory configured (path is empty)");
  }
  if (config.map_size_bytes < map_size_min_bytes) {
    return makeError(Errc::malformed,
                     "vault store: map_size_bytes of " + std::to_string(config.map_size_bytes) +
                         " is below the minimum of " + std::to_string(map_size_min_bytes));
  }
  if (config.map_size_max_bytes < config.map_size_bytes) {
    return makeError(Errc::malformed,
                     "vault store: map_size_max_bytes of " +
                         std::to_string(config.map_size_max_bytes) +
                         " is below map_size_bytes of " + std::to_string(config.map_size_bytes));
  }
  if (config.write_batch_max == 0 || config.write_queue_max == 0) {
    return makeError(Errc::malformed,
                     "vault store: write_batch_max and write_queue_max must be at least 1");
  }

  // The directory, private to the node's user.
  const std::string& dir = config.path;
  const std::string file = dataFileOf(dir);
  std::filesystem::path parent = std::filesystem::path(dir).parent_path();
  std::error_code ec;
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return makeError(Errc::storage_error,
                     "vault store: cannot create directory " + dir + ": " + std::strerror(errno));
  }
  struct stat dir_stat {};
  if (::stat(dir.c_str(), &dir_stat) != 0) {
    return makeError(Errc::storage_error,
                     "vault store: cannot read directory " + dir + ": " + std::strerror(errno));
  }
  if (!S_ISDIR(dir_stat.st_mode)) {
    return makeError(Errc::storage_error, "vault store: " + dir + " is not a directory");
  }

  auto store = std::unique_ptr<Store>(new Store());
  store->config_ = config;
  {
    std::lock_guard lock(g_open_mutex);
    for (const auto& [other, where] : g_open) {
      if (where.device == dir_stat.st_dev && where.inode == dir_stat.st_ino) {
        return makeError(Errc::storage_error,
                         "vault store: " + dir + " is already open in this process");
      }
    }
    g_open.emplace(store.get(), OpenEnvironment{dir_stat.st_dev, dir_stat.st_ino});
  }
  // From here on, ~Store undoes whatever was done.

  const uint64_t map_size = config.map_size_bytes;
  int rc = mdb_env_create(&store->env_);
  if (rc != 0) {
    store->env_ = nullptr;
    return lmdbError(rc, "create an LMDB environment for " + file, map_size);
  }
  rc = mdb_env_set_mapsize(store->env_, config.map_size_bytes);
  if (rc == 0) rc = mdb_env_set_maxdbs(store->env_, static_cast<MDB_dbi>(db_names.size() + 1));
  if (rc == 0) rc = mdb_env_set_maxreaders(store->env_, readers_max);
  if (rc != 0) return lmdbError(rc, "configure the LMDB environment for " + file, map_size);

  // MDB_NOTLS: a read transaction belongs to its ReadTxn, not to a thread.
  // MDB_NOMETASYNC: a commit syncs its data pages and writes its meta page
  // without a sync; the writer answers a commit's callers only once a later
  // sync covered that meta page (see store.h, "Durability").
  unsigned int flags = MDB_NOTLS | (config.durable ? MDB_NOMETASYNC : MDB_NOSYNC);
  rc = mdb_env_open(store->env_, dir.c_str(), flags, 0600);
  if (rc != 0) {
    // LMDB: after a failed open the handle must be closed, and nothing else.
    mdb_env_close(store->env_);
    store->env_ = nullptr;
    return lmdbError(rc, "open " + file, map_size);
  }

  // Free the reader slots of processes that died holding them (kill -9):
  // they would otherwise keep old pages from being reused.
  int stale_readers = 0;
  rc = mdb_reader_check(store->env_, &stale_readers);
  if (rc != 0) return lmdbError(rc, "clear stale readers of " + file, map_size);

  MDB_txn* txn = nullptr;
  rc = mdb_txn_begin(store->env_, nullptr, 0, &txn);
  if (rc != 0) return lmdbError(rc, "begin the opening transaction on " + file, map_size);
  Status stamped = checkOrWriteStamp(txn, file, schema_name, schema_version, map_size);
  if (!stamped.ok()) {
    mdb_txn_abort(txn);
    return stamped.error();
  }
  for (const std::string& name : db_names) {
    MDB_dbi dbi = 0;
    rc = mdb_dbi_open(txn, name.c_str(), MDB_CREATE, &dbi);
    if (rc != 0) {
      mdb_txn_abort(txn);
      if (rc == MDB_INCOMPATIBLE) {
        return makeError(Errc::schema_mismatch,
                         file + ": '" + name + "' exists but is not a sub-database");
      }
      return lmdbError(rc, "open sub-database '" + name + "' of " + file, map_size);
    }
    store->dbs_.emplace(name, Db{dbi, name});
  }
  // The handles stay valid for the environment's lifetime once this commits.
  rc = mdb_txn_commit(txn);
  // Its meta page too: the stamp is on disk before open() returns.
  if (rc == 0 && config.durable) rc = mdb_env_sync(store->env_, 1);
  if (rc != 0) return writeFailure(rc, "commit the opening transaction on " + file, store->env_);

  store->map_size_bytes_ = mapSizeOf(store->env_);
  store->stats_.map_size_bytes = store->map_size_bytes_;
  store->writer_ = std::thread([s = store.get()] { s->writerLoop(); });
  return store;
}

Store::~Store() {
  if (writer_.joinable()) {
    {
      std::lock_guard lock(mutex_);
      CCAL_ASSERT_MSG(holds_ == 0, "a Store::Hold outlived its Store");
      stopping_ = true;
    }
    queue_not_empty_.notify_all();
    writer_.join();
    CCAL_ASSERT_MSG(queue_.empty(), "the writer stopped with requests still queued");
  }
  if (env_ != nullptr) {
    // A ReadTxn (or the views it handed out) must not outlive its Store.
    CCAL_ASSERT_MSG(openReadersOfThisProcess(env_) == 0, "a ReadTxn outlived its Store");
    mdb_env_close(env_);
  }
  std::lock_guard lock(g_open_mutex);
  g_open.erase(this);
}

const Db& Store::db(std::string_view name) const {
  auto it = dbs_.find(name);
  CCAL_ASSERT_MSG(it != dbs_.end(), "a sub-database this store was not opened with");
  return it->second;
}

ReadTxn Store::read() const {
  {
    std::unique_lock lock(readers_mutex_);
    readers_changed_.wait(lock, [&] { return !resizing_; });
    ++readers_open_;
  }
  MDB_txn* txn = nullptr;
  int rc = mdb_txn_begin(env_, nullptr, MDB_RDONLY, &txn);
  if (rc != 0) {
    readerEnded();
    throw std::runtime_error(lmdbError(rc,
                                       "begin a read transaction on " + dataFileOf(config_.path),
                                       config_.map_size_bytes)
                                 .toString());
  }
  return ReadTxn(txn, this);
}

void Store::readerEnded() const {
  {
    std::lock_guard lock(readers_mutex_);
    CCAL_ASSERT(readers_open_ > 0);
    --readers_open_;
  }
  readers_changed_.notify_all();
}

bool Store::growMap() {
  if (map_size_bytes_ >= config_.map_size_max_bytes) return false;
  const uint64_t grown = std::min(config_.map_size_max_bytes, map_size_bytes_ * 2);
  std::unique_lock lock(readers_mutex_);
  resizing_ = true;
  // New readers wait; open ones get a bounded time to end.
  bool idle = readers_changed_.wait_for(lock, std::chrono::microseconds(map_grow_wait_micros_max),
                                        [&] { return readers_open_ == 0; });
  int rc = idle ? mdb_env_set_mapsize(env_, grown) : -1;
  resizing_ = false;
  lock.unlock();
  readers_changed_.notify_all();
  if (rc != 0) return false;
  map_size_bytes_ = mapSizeOf(env_);
  std::lock_guard stats_lock(mutex_);
  ++stats_.map_grows;
  stats_.map_size_bytes = map_size_bytes_;
  return true;
}

void Store::submit(WriteFn fn, DoneFn done, WriteKind kind) {
  submit(std::move(fn), DecidedFn(), std::move(done), kind);
}

void Store::submit(WriteFn fn, DecidedFn decided, DoneFn done, WriteKind kind) {
  CCAL_ASSERT_MSG(fn != nullptr && done != nullptr, "submit() needs a request and a done()");
  // The writer would wait for itself: a request or a done() must not submit.
  CCAL_ASSERT_MSG(std::this_thread::get_id() != writer_.get_id(),
                  "submit() or write() on the store's writer thread");
  {
    std::unique_lock lock(mutex_);
    CCAL_ASSERT_MSG(!stopping_, "submit() on a store being closed");
    queue_not_full_.wait(lock,
                         [&] { return queue_.size() < config_.write_queue_max || holds_ > 0; });
    queue_.push_back(
        Request{std::move(fn), std::move(done), steadyNanos(), kind, std::move(decided)});
  }
  queue_not_empty_.notify_one();
}

Store::Hold Store::hold() {
  CCAL_ASSERT_MSG(std::this_thread::get_id() != writer_.get_id(),
                  "hold() on the store's writer thread");
  std::lock_guard lock(mutex_);
  CCAL_ASSERT_MSG(!stopping_, "hold() on a store being closed");
  ++holds_;
  return Hold(this);
}

Store::Hold::~Hold() {
  if (store_ == nullptr) return;
  bool released = false;
  {
    std::lock_guard lock(store_->mutex_);
    CCAL_ASSERT(store_->holds_ > 0);
    released = --store_->holds_ == 0;
  }
  if (released) {
    store_->queue_not_empty_.notify_one();
    store_->queue_not_full_.notify_all();
  }
}

Status Store::write(WriteFn fn) {
  // Shared, so that the writer's set_value never touches a promise this
  // thread has already destroyed after waking.
  auto promise = std::make_shared<std::promise<Status>>();
  std::future<Status> result = promise->get_future();
  submit(std::move(fn), [promise](const Status& status) { promise->set_value(status); });
  return result.get();
}

Store::Stats Store::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

void Store::writerLoop() {
  // Named, so that top, perf and debuggers show which thread is the writer.
  ::pthread_setname_np(::pthread_self(), "ccal-writer");
  const std::string file = dataFileOf(config_.path);
  std::vector<Request> batch;
  std::vector<Status> results;
  // Requests with a final outcome before the batch commits: they failed
  // after writing, so the batch runs again without them.
  std::vector<bool> settled;
  // Requests taken but not run because their batch outgrew one LMDB
  // transaction or was split; they go first into the next batch. Writer
  // thread only.
  std::deque<Request> carried;
  // The batch transaction's write cursors (see WriteTxn::cursors_), closed
  // before the transaction ends.
  std::vector<MDB_cursor*> cursors;
  auto close_cursors = [&cursors] {
    for (MDB_cursor*& c : cursors) {
      if (c != nullptr) mdb_cursor_close(c);
      c = nullptr;
    }
  };
  // The batch's sorted changes (WriteTxn::putSorted), applied before a
  // plain request runs and before the commit.
  WriteTxn::SortedChanges sorted;
  // Answers not yet given, in order, and whether a commit's meta page among
  // them is not yet covered by a sync (see store.h, "Durability").
  std::vector<std::pair<DoneFn, Status>> unanswered;
  bool meta_unsynced = false;
  batch.reserve(config_.write_batch_max);
  results.reserve(config_.write_batch_max);

  auto callBack = [](const char* what, const auto& fn, const auto&... args) {
    try {
      fn(args...);
    } catch (const std::exception& e) {
      ::ccal::detail::assertionFailed((std::string(what) + " threw").c_str(), __FILE__, __LINE__,
                                      e.what());
    } catch (...) {
      ::ccal::detail::assertionFailed((std::string(what) + " threw").c_str(), __FILE__, __LINE__,
                                      "non-standard");
    }
  };
  auto answer = [&] {
    for (auto& [done, status] : unanswered) callBack("done()", done, status);
    unanswered.clear();
  };
  // Syncs the file (the meta pages written since the last sync with it),
  // then answers everyone waiting. Callers of a commit that could not be
  // made durable are told so: it is visible, and may or may not survive a
  // power loss.
  auto sync_and_answer = [&] {
    if (meta_unsynced) {
      const int64_t sync_start_nanos = steadyNanos();
      const int rc = mdb_env_sync(env_, 1);
      const int64_t sync_nanos = steadyNanos() - sync_start_nanos;
      meta_unsynced = false;
      if (rc != 0) {
        const Error error = writeFailure(
            rc, "sync of committed writes to " + file +
                    " (they are visible but may not survive a power loss; restart the node)",
            env_);
        for (auto& entry : unanswered) {
          if (entry.second.ok()) entry.second = error;
        }
      }
      std::lock_guard lock(mutex_);
      ++stats_.syncs;
      stats_.commit_micros += static_cast<uint64_t>(sync_nanos / 1000);
    }
    answer();
  };
  auto last_txnid = [this]() -> size_t {
    MDB_envinfo info{};
    return mdb_env_info(env_, &info) == 0 ? info.me_last_txnid : 0;
  };

  // Runs one request directly in `txn`. `touched` tells whether it reached
  // LMDB with a change, `lmdb_rc` the LMDB failure of a change, if any.
  auto run_request = [&](MDB_txn* txn, Request& request, WriteTxn::SortedChanges* buffer,
                         bool& touched, int& lmdb_rc) -> Status {
    WriteTxn w(txn, &cursors, buffer);
    Status status;
    try {
      status = request.fn(w);
    } catch (const std::exception& e) {
      status = makeError(Errc::storage_error, std::string("a write request threw: ") + e.what() +
                                                  " (its changes were rolled back)");
    } catch (...) {
      status = makeError(Errc::storage_error,
                         "a write request threw a non-standard exception (its changes were "
                         "rolled back)");
    }
    CCAL_ASSERT_MSG(w.txn_ == txn, "a write request moved its WriteTxn away");
    w.txn_ = nullptr;  // ended by the writer, not by ~ReadTxn
    touched = w.touched_;
    lmdb_rc = w.failed_rc_;
    if (status.ok() && lmdb_rc != 0) {
      // LMDB refuses to commit a transaction with a failed change.
      return makeError(Errc::storage_error,
                       "a write request returned ok after a failed change; LMDB refused it: " +
                           std::string(mdb_strerror(lmdb_rc)));
    }
    return status;
  };
  // Applies the sorted changes in key order; 0, or the LMDB error that
  // stopped them (the transaction must then be aborted).
  auto apply_sorted = [&](MDB_txn* txn) -> int {
    if (sorted.empty()) return 0;
    sorted.sort();
    WriteTxn w(txn, &cursors);
    int rc = 0;
    for (const auto& c : sorted.changes) {
      const ByteView key = sorted.view(c.key_offset, c.key_size);
      Status status =
          c.del ? w.del(*c.db, key) : w.put(*c.db, key, sorted.view(c.value_offset, c.value_size));
      if (!status.ok()) {
        rc = w.failed_rc_ != 0 ? w.failed_rc_ : MDB_BAD_VALSIZE;
        break;
      }
    }
    w.txn_ = nullptr;
    if (rc == 0) {
      std::lock_guard lock(mutex_);
      stats_.sorted_changes += sorted.changes.size();
    }
    sorted.clear();
    return rc;
  };

  for (;;) {
    batch.clear();
    {
      std::unique_lock lock(mutex_);
      queue_not_empty_.wait(
          lock, [&] { return holds_ == 0 && (stopping_ || !queue_.empty() || !carried.empty()); });
      if (queue_.empty() && carried.empty()) {
        CCAL_ASSERT(stopping_);
        CCAL_ASSERT_MSG(unanswered.empty(), "the writer stopped with callers unanswered");
        return;  // drained
      }
      while (batch.size() < config_.write_batch_max && !carried.empty()) {
        batch.push_back(std::move(carried.front()));
        carried.pop_front();
      }
      while (batch.size() < config_.write_batch_max && !queue_.empty()) {
        batch.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    queue_not_full_.notify_all();
    CCAL_ASSERT(!batch.empty() && batch.size() <= config_.write_batch_max);
    const int64_t started_nanos = steadyNanos();
    int64_t queued_nanos = 0, commit_nanos = 0;
    for (Request& r : batch) {
      if (r.submitted_nanos == 0) continue;  // carried: counted when first taken
      queued_nanos += std::max<int64_t>(0, started_nanos - r.submitted_nanos);
      r.submitted_nanos = 0;
    }

    results.assign(batch.size(), Status());
    settled.assign(batch.size(), false);
    // Requests [0, processed) belong to this commit; the rest are carried.
    size_t processed = batch.size();
    bool committed = false;
    // Whether the commit wrote a meta page (LMDB skips a commit that
    // changed nothing, without a sync).
    bool wrote_meta = false;
    uint32_t reruns = 0;
    uint64_t reruns_counted = 0;
    // Sorted changes are kept for the batch's end unless applying them
    // failed once: the batch then runs again with every change applied at
    // once, so that the failure lands on the request that caused it.
    bool sorting = true;
    for (;;) {
      sorted.clear();
      MDB_txn* txn = nullptr;
      int rc = mdb_txn_begin(env_, nullptr, 0, &txn);
      if (rc != 0) {
        Error error = lmdbError(rc, "begin a write transaction on " + file, map_size_bytes_);
        for (size_t i = 0; i < processed; ++i)
          if (!settled[i]) results[i] = error;
        break;
      }
      bool any_ok = false;
      bool again = false;
      int sorted_rc = 0;
      for (size_t i = 0; i < processed; ++i) {
        if (settled[i]) continue;
        const bool sorted_kind = sorting && batch[i].kind == WriteKind::sorted;
        if (!sorted_kind && (sorted_rc = apply_sorted(txn)) != 0) break;
        const size_t changes_before = sorted.changes.size(), arena_before = sorted.arena.size();
        bool touched = false;
        int lmdb_rc = 0;
        results[i] = run_request(txn, batch[i], sorted_kind ? &sorted : nullptr, touched, lmdb_rc);
        if (results[i].ok()) {
          any_ok = true;
          continue;
        }
        sorted.truncate(changes_before, arena_before);  // its own sorted changes go with it
        if (!touched) continue;  // failed before writing: the transaction is clean
        // It wrote, then failed: its changes are mixed into the batch's.
        close_cursors();
        mdb_txn_abort(txn);
        txn = nullptr;
        again = true;
        if (lmdb_rc == MDB_MAP_FULL && growMap()) break;  // all of it again, with room
        if (lmdb_rc == MDB_TXN_FULL && any_ok) {
          // Not the request's fault: commit the ones before, carry it on.
          processed = i;
          break;
        }
        settled[i] = true;  // its own failure is its outcome
        if (++reruns > batch_reruns_max) {
          // Bounded: commit the ones before it, carry the rest to a new batch.
          processed = i;
        }
        break;
      }
      if (!again && sorted_rc == 0) sorted_rc = apply_sorted(txn);
      if (sorted_rc != 0) {
        // Sorted changes failed: nobody's outcome yet. Again, with room if
        // the map was full, else with every change applied at once.
        close_cursors();
        mdb_txn_abort(txn);
        txn = nullptr;
        again = true;
        if (!(sorted_rc == MDB_MAP_FULL && growMap())) sorting = false;
      }
      if (again) {
        ++reruns_counted;
        continue;
      }
      close_cursors();
      if (!any_ok) {
        mdb_txn_abort(txn);  // nothing to write: spare the fsync
        break;
      }
      // The outcomes are settled: whoever asked is told before the commit
      // (once: a commit that finds the map full runs the batch again).
      for (size_t i = 0; i < processed; ++i) {
        if (settled[i] || !results[i].ok() || !batch[i].decided) continue;
        callBack("decided()", std::exchange(batch[i].decided, DecidedFn()));
      }
      const size_t txnid_before = last_txnid();
      const int64_t commit_start_nanos = steadyNanos();
      rc = mdb_txn_commit(txn);  // data pages synced, meta page written (unless MDB_NOSYNC)
      commit_nanos += steadyNanos() - commit_start_nanos;
      if (rc == MDB_MAP_FULL && growMap()) {
        ++reruns_counted;
        continue;
      }
      if (rc != 0) {
        // Nothing of the batch is visible. Requests that failed on their own
        // keep their own error; the others get the commit's.
        Error error = writeFailure(
            rc,
            "commit of " + std::to_string(processed) +
                (processed == 1 ? " write request to " : " write requests to ") + file,
            env_);
        for (size_t i = 0; i < processed; ++i) {
          if (results[i].ok()) results[i] = error;
        }
      } else {
        committed = true;
        wrote_meta = last_txnid() != txnid_before;
      }
      break;
    }
    for (size_t i = batch.size(); i-- > processed;) {
      if (!settled[i]) carried.push_front(std::move(batch[i]));
    }

    struct timespec cpu {};
    ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu);
    size_t answered = processed;
    for (size_t i = processed; i < batch.size(); ++i) answered += settled[i] ? 1 : 0;
    bool more_waiting = false;
    {
      std::lock_guard lock(mutex_);
      stats_.requests += answered;
      stats_.reruns += reruns_counted;
      stats_.writer_cpu_micros = static_cast<uint64_t>(cpu.tv_sec) * 1'000'000 +
                                 static_cast<uint64_t>(cpu.tv_nsec) / 1000;
      stats_.queued_micros += static_cast<uint64_t>(queued_nanos / 1000);
      stats_.commit_micros += static_cast<uint64_t>(commit_nanos / 1000);
      stats_.run_micros +=
          static_cast<uint64_t>(std::max<int64_t>(0, steadyNanos() - started_nanos - commit_nanos) / 1000);
      if (committed) ++stats_.commits;
      more_waiting = !queue_.empty() || !carried.empty();
    }

    // Durability: a commit that wrote a meta page synced the data pages
    // first, and with them every meta page written before: the answers
    // waiting for those are now durable.
    if (wrote_meta) answer();
    for (size_t i = 0; i < batch.size(); ++i) {
      if (i >= processed && !settled[i]) continue;  // carried
      unanswered.emplace_back(std::move(batch[i].done), std::move(results[i]));
    }
    if (wrote_meta) meta_unsynced = config_.durable;
    // Answer now unless a meta page waits for a sync and the next commit
    // (which would cover it) follows at once; a commit that wrote nothing
    // covers nothing, so then the writer syncs rather than wait longer.
    if (!meta_unsynced) {
      answer();
    } else if (!more_waiting || !wrote_meta) {
      sync_and_answer();
    }
  }
}

}  // namespace ccal::vault
