#pragma once
// The replica's vote log: a file of fixed size, used as a ring, where a
// prepared certificate (the slot's record: P, Q and the batch) is made
// durable with one write and one flush before the replica's commit leaves
// (safety 2), instead of an LMDB commit (two flushes when the store is idle,
// and a wait behind the execution's commit under load). The slot is written
// to the Store too, later, with its execution; once that write is durable
// the record's space is released. ReplicaStore::load() merges the records
// with the store's slots, so a restart sees every prepared certificate.
//
// Layout: block 0 is the file's header (magic, format, capacity, a random
// 32-byte key made when the file is created); records start on 4 KiB
// boundaries: magic, lsn, payload length, keyed BLAKE2b-256 of (lsn,
// length, payload) under the file's key, then the payload. A record torn by
// a crash fails its MAC and is skipped; the reader then looks for a record
// at every following block, and the key keeps bytes inside a payload (a
// client's request) from passing for a record. Records of an earlier lap
// that are still whole are read too: their content is in the store already
// (or older than it), which the merge tolerates (max view per P, Q union).
//
// Durable (the store's durability): the file is filled with zeros when made,
// so that a write overwrites allocated blocks and its flush is one data
// flush, with no file-system metadata; records are written by the log's own
// thread, which takes every record queued while it flushed into its next
// flush (group commit), and done() runs there. The thread writes with direct,
// synchronous I/O (O_DIRECT | O_DSYNC: consecutive records, padded to their
// blocks, in one write that is durable when it returns), or, where the file
// system has no direct I/O, with pwrite and fdatasync. Not durable (tests and the
// simulator, which restart from the files without losing the page cache):
// written at once on the caller's thread, no flush, done() before append()
// returns — deterministic.

#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "ledger/bytes.h"
#include "ledger/result.h"

namespace ccal::notary::pbft {

struct VoteLogConfig {
  VoteLogConfig() = default;
  VoteLogConfig(std::string path_, uint64_t capacity_bytes_, bool durable_)
      : path(std::move(path_)), capacity_bytes(capacity_bytes_), durable(durable_) {}
  std::string path;
  uint64_t capacity_bytes = 16ull << 20;  // the ring, header block excluded
  bool durable = true;
  // Tests: a write that includes a record for which this returns true fails
  // with EIO, as a failing disk's would.
  std::function<bool(uint64_t lsn)> fail_write_for_testing;
};

class VoteLog {
 public:
  struct Record {
    uint64_t lsn = 0;
    Bytes payload;
  };
  static constexpr uint64_t block_bytes = 4096;
  static constexpr uint64_t capacity_bytes_min = 16 * block_bytes;
  static constexpr uint64_t capacity_bytes_max = 1ull << 30;
  // The largest record (its header included, padded to blocks: one direct
  // write); append refuses a larger payload.
  static constexpr uint64_t record_bytes_max = 1ull << 20;
  static constexpr uint64_t payload_bytes_max = record_bytes_max - 128;

  // The whole records a log file holds, in lsn order; none if the file does
  // not exist. An error if it exists but is not a vote log (or its header is
  // damaged: its records could not be told from garbage).
  static Result<std::vector<Record>> read(const std::string& path);

  // Opens the file (made if missing, with config.capacity_bytes; an existing
  // file keeps its own capacity). Every record the file holds counts as
  // unreleased, after the highest lsn: release them (releaseThrough) once
  // what they record is durable elsewhere.
  static Result<std::unique_ptr<VoteLog>> open(const VoteLogConfig& config);
  ~VoteLog();
  VoteLog(const VoteLog&) = delete;
  VoteLog& operator=(const VoteLog&) = delete;

  // Queues a record; done(status, lsn) runs once it is durable (on the
  // log's thread), or with the error of its write or flush; records are
  // answered in lsn order. Returns its lsn, or nullopt without calling done
  // when the ring has no room for it now or it is over payload_bytes_max
  // (the caller records it another way), or the log failed before. After a
  // failed write or flush every record queued is answered with that error,
  // unwritten: the log stops.
  using Done = std::function<void(const Status&, uint64_t lsn)>;
  std::optional<uint64_t> append(Bytes payload, Done done);
  // The record's space may be reused (what it records is durable elsewhere).
  void release(uint64_t lsn);
  // Every record up to lsn.
  void releaseThrough(uint64_t lsn);

  uint64_t capacityBytes() const { return capacity_; }
  uint64_t lastLsn() const;
  struct Stats {
    uint64_t records = 0, flushes = 0, bytes = 0, refused_full = 0;
    bool direct_io = false;  // written with O_DIRECT | O_DSYNC
    bool failed = false;     // a write or flush failed: the log stopped
  };
  Stats stats() const;

 private:
  struct Entry {
    uint64_t lsn = 0, offset = 0, bytes = 0;  // offset from the ring's start
    bool released = false;
  };
  struct Pending {
    uint64_t lsn = 0, offset = 0;
    Bytes payload;
    Done done;
  };
  struct FreeDeleter {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  VoteLog(const VoteLogConfig& config, int fd, int direct_fd, uint64_t capacity,
          const uint8_t* key);
  std::optional<uint64_t> place(uint64_t bytes) const;  // needs mutex_
  void dropReleased();                                  // needs mutex_
  void seal(Pending& p) const;                          // fills in the record's MAC
  Status injectedFailure(uint64_t lsn) const;
  Status writeRecord(Pending& p) const;
  Status writeGroupDirect(std::vector<Pending>& group);  // the log's thread only
  void run();

  VoteLogConfig config_;
  int fd_ = -1;
  int direct_fd_ = -1;  // durable, where the file system has direct I/O
  std::unique_ptr<uint8_t, FreeDeleter> direct_buffer_;  // direct_write_bytes_max, block-aligned
  uint64_t capacity_ = 0;
  uint8_t key_[32] = {};

  mutable std::mutex mutex_;  // guards everything below
  std::condition_variable wake_;
  std::deque<Entry> entries_;  // unreleased records, in ring order
  std::vector<Pending> queue_;
  uint64_t next_lsn_ = 1;
  bool failed_ = false, stopping_ = false;
  Status failure_;  // the first failed write or flush
  Stats stats_;
  std::thread thread_;
};

}  // namespace ccal::notary::pbft
