#include "notary/vote_log.h"

#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "ledger/assert.h"
#include "notary/record_reader.h"

namespace ccal::notary::pbft {

namespace {

constexpr char file_magic[8] = {'C', 'C', 'A', 'L', 'V', 'L', 'O', 'G'};
constexpr char record_magic[8] = {'C', 'C', 'A', 'L', 'V', 'R', 'E', 'C'};
// 2: each record's header has its own MAC (format 1 had none, and a logged
// slot's seq was big-endian; never released).
constexpr uint32_t file_format = 2;
constexpr size_t mac_bytes = 32;
// magic, format u32, capacity u64, key, BLAKE2b-256 of what precedes it.
constexpr size_t file_header_bytes = 8 + 4 + 8 + 32 + mac_bytes;
static_assert(file_header_bytes <= VoteLog::block_bytes);
// magic, lsn u64, payload length u32, reserved u32 (0), the header's MAC
// (keyed BLAKE2b-128 of lsn, length, reserved: a scan rejects bytes that only
// look like a header at once, without hashing the length they claim), the
// record's MAC (keyed BLAKE2b-256 of lsn, length and payload).
constexpr size_t header_mac_bytes = 16;
constexpr size_t header_mac_at = 24;
constexpr size_t record_mac_at = header_mac_at + header_mac_bytes;
constexpr size_t record_header_bytes = record_mac_at + mac_bytes;
constexpr size_t fill_chunk_bytes = 1 << 20;
// The log thread's write buffer (direct I/O needs aligned memory): a run of
// consecutive records is written in pieces of at most this many bytes.
constexpr size_t direct_write_bytes_max = VoteLog::record_bytes_max;

constexpr uint64_t alignedBytes(uint64_t payload_bytes) {
  const uint64_t b = VoteLog::block_bytes;
  return (record_header_bytes + payload_bytes + b - 1) / b * b;
}

static_assert(alignedBytes(VoteLog::payload_bytes_max) <= VoteLog::record_bytes_max);

// The MACs of a record whose header (without its MACs) and payload are at p.
void headerMac(const uint8_t* key, const uint8_t* p, uint8_t* out) {
  crypto_generichash(out, header_mac_bytes, p + 8, 16, key, 32);  // lsn, length, reserved
}
void recordMac(const uint8_t* key, const uint8_t* p, size_t payload_bytes, uint8_t* out) {
  crypto_generichash_state st;
  crypto_generichash_init(&st, key, 32, mac_bytes);
  crypto_generichash_update(&st, p + 8, 16);  // lsn, length, reserved
  crypto_generichash_update(&st, p + record_header_bytes, payload_bytes);
  crypto_generichash_final(&st, out, mac_bytes);
}

Error ioError(const std::string& what, int err) {
  return makeError(Errc::io_error, what + ": " + std::strerror(err));
}

Status writeAll(int fd, const uint8_t* p, size_t n, uint64_t offset, const std::string& path) {
  while (n > 0) {
    ssize_t w = ::pwrite(fd, p, n, static_cast<off_t>(offset));
    if (w < 0) {
      if (errno == EINTR) continue;
      return ioError("writing the vote log " + path, errno);
    }
    p += w;
    n -= static_cast<size_t>(w);
    offset += static_cast<uint64_t>(w);
  }
  return Status();
}

Status readAll(int fd, uint8_t* p, size_t n, uint64_t offset, const std::string& path) {
  while (n > 0) {
    ssize_t r = ::pread(fd, p, n, static_cast<off_t>(offset));
    if (r < 0) {
      if (errno == EINTR) continue;
      return ioError("reading the vote log " + path, errno);
    }
    if (r == 0) return makeError(Errc::storage_error, "the vote log " + path + " ends early");
    p += r;
    n -= static_cast<size_t>(r);
    offset += static_cast<uint64_t>(r);
  }
  return Status();
}

struct Header {
  uint64_t capacity = 0;
  uint8_t key[32] = {};
};

Bytes encodeHeader(const Header& h) {
  Bytes b(file_magic, file_magic + 8);
  appendU32(b, file_format);
  appendU64(b, h.capacity);
  append(b, ByteView(h.key, sizeof h.key));
  b.resize(VoteLog::block_bytes, 0);
  crypto_generichash(b.data() + 52, mac_bytes, b.data(), 52, nullptr, 0);
  return b;
}

Result<Header> decodeHeader(const uint8_t* b, uint64_t file_bytes, const std::string& path) {
  auto bad = [&](const std::string& why) {
    return makeError(Errc::storage_error, "the vote log " + path + " " + why);
  };
  if (std::memcmp(b, file_magic, 8) != 0) return bad("is not a vote log (no CCALVLOG header)");
  uint8_t mac[mac_bytes];
  crypto_generichash(mac, mac_bytes, b, 52, nullptr, 0);
  if (sodium_memcmp(mac, b + 52, mac_bytes) != 0) return bad("has a damaged header");
  RecordReader rd(ByteView(b + 8, 12));
  uint32_t format = 0;
  Header h;
  rd.u32(format);
  rd.u64(h.capacity);
  if (format != file_format) {
    return bad("has format " + std::to_string(format) + ", this build reads " +
               std::to_string(file_format));
  }
  if (h.capacity < VoteLog::capacity_bytes_min || h.capacity > VoteLog::capacity_bytes_max ||
      h.capacity % VoteLog::block_bytes != 0) {
    return bad("has a capacity of " + std::to_string(h.capacity) + " bytes");
  }
  if (file_bytes != VoteLog::block_bytes + h.capacity) {
    return bad("is " + std::to_string(file_bytes) + " bytes, its header says " +
               std::to_string(VoteLog::block_bytes + h.capacity));
  }
  std::memcpy(h.key, b + 20, 32);
  return h;
}

// The header and every whole record of the open file fd.
Result<std::pair<Header, std::vector<VoteLog::Record>>> scan(int fd, const std::string& path) {
  struct stat stt {};
  if (::fstat(fd, &stt) != 0) return ioError("the vote log " + path, errno);
  const uint64_t file_bytes = static_cast<uint64_t>(stt.st_size);
  if (file_bytes < VoteLog::block_bytes) {
    return makeError(Errc::storage_error, "the vote log " + path + " is " +
                                              std::to_string(file_bytes) +
                                              " bytes, shorter than its header");
  }
  Bytes head(VoteLog::block_bytes);
  CCAL_TRY(readAll(fd, head.data(), head.size(), 0, path));
  auto h = decodeHeader(head.data(), file_bytes, path);
  if (!h) return h.error();
  Bytes ring(h->capacity);
  CCAL_TRY(readAll(fd, ring.data(), ring.size(), VoteLog::block_bytes, path));
  std::vector<VoteLog::Record> out;
  uint64_t off = 0;
  while (off + record_header_bytes <= h->capacity) {
    const uint8_t* p = ring.data() + off;
    RecordReader rd(ByteView(p + 8, 16));
    uint64_t lsn = 0;
    uint32_t len = 0, reserved = 1;
    rd.u64(lsn);
    rd.u32(len);
    rd.u32(reserved);
    if (std::memcmp(p, record_magic, 8) == 0 && reserved == 0) {
      uint8_t hmac[header_mac_bytes];
      headerMac(h->key, p, hmac);
      if (sodium_memcmp(hmac, p + header_mac_at, header_mac_bytes) == 0 &&
          len <= h->capacity - off - record_header_bytes) {
        uint8_t mac[mac_bytes];
        recordMac(h->key, p, len, mac);
        if (sodium_memcmp(mac, p + record_mac_at, mac_bytes) == 0) {
          out.push_back({lsn, Bytes(p + record_header_bytes, p + record_header_bytes + len)});
          off += alignedBytes(len);
          continue;
        }
      }
    }
    off += VoteLog::block_bytes;
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.lsn < b.lsn; });
  return std::make_pair(*h, std::move(out));
}

}  // namespace

Result<std::vector<VoteLog::Record>> VoteLog::read(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return std::vector<Record>{};
    return ioError("opening the vote log " + path, errno);
  }
  auto scanned = scan(fd, path);
  ::close(fd);
  if (!scanned) return scanned.error();
  return std::move(scanned->second);
}

Result<std::unique_ptr<VoteLog>> VoteLog::open(const VoteLogConfig& config) {
  CCAL_ASSERT(sodium_init() >= 0);
  int fd = ::open(config.path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0 && errno != ENOENT) return ioError("opening the vote log " + config.path, errno);
  if (fd < 0) {
    // Made whole under another name, then renamed: a file under the log's
    // name always has its full size and header.
    if (config.capacity_bytes < capacity_bytes_min || config.capacity_bytes > capacity_bytes_max ||
        config.capacity_bytes % block_bytes != 0) {
      return makeError(Errc::malformed, "a vote log capacity of " +
                                            std::to_string(config.capacity_bytes) +
                                            " bytes (a multiple of 4096 from 65536 to 1 GiB)");
    }
    const std::string tmp = config.path + ".new";
    int t = ::open(tmp.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (t < 0) return ioError("making the vote log " + tmp, errno);
    Header h;
    h.capacity = config.capacity_bytes;
    randombytes_buf(h.key, sizeof h.key);
    Status made;
    if (config.durable) {
      // Zeros written, not a hole: later writes overwrite allocated blocks.
      Bytes zeros(fill_chunk_bytes, 0);
      for (uint64_t off = 0; made && off < h.capacity; off += zeros.size()) {
        made = writeAll(t, zeros.data(), std::min<uint64_t>(zeros.size(), h.capacity - off),
                        block_bytes + off, tmp);
      }
    } else if (::ftruncate(t, static_cast<off_t>(block_bytes + h.capacity)) != 0) {
      made = ioError("sizing the vote log " + tmp, errno);
    }
    if (made) {
      Bytes head = encodeHeader(h);
      made = writeAll(t, head.data(), head.size(), 0, tmp);
    }
    if (made && config.durable && ::fsync(t) != 0)
      made = ioError("syncing the vote log " + tmp, errno);
    ::close(t);
    if (made && ::rename(tmp.c_str(), config.path.c_str()) != 0) {
      made = ioError("naming the vote log " + config.path, errno);
    }
    if (made && config.durable) {
      const std::string dir = std::filesystem::path(config.path).parent_path().string();
      int d = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      if (d < 0) {
        made = ioError("opening the directory of " + config.path + " to sync it", errno);
      } else {
        if (::fsync(d) != 0) made = ioError("syncing the directory of " + config.path, errno);
        ::close(d);
      }
    }
    if (!made) {
      ::unlink(tmp.c_str());
      return made.error();
    }
    fd = ::open(config.path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) return ioError("opening the vote log " + config.path, errno);
  }
  auto scanned = scan(fd, config.path);
  if (!scanned) {
    ::close(fd);
    return scanned.error();
  }
  // Durable: records are written through a second descriptor that bypasses
  // the page cache and is synchronous (O_DIRECT | O_DSYNC: one write to the
  // device and its flush, no writeback of cached pages; about half the CPU
  // and two thirds of the wall clock of pwrite + fdatasync here). A file
  // system without direct I/O (tmpfs) keeps pwrite + fdatasync.
  int direct_fd = -1;
  if (config.durable) {
    direct_fd = ::open(config.path.c_str(), O_RDWR | O_CLOEXEC | O_DIRECT | O_DSYNC);
    struct stat a {
    }, b{};
    if (direct_fd >= 0 && (::fstat(fd, &a) != 0 || ::fstat(direct_fd, &b) != 0 ||
                           a.st_dev != b.st_dev || a.st_ino != b.st_ino)) {
      ::close(direct_fd);  // (not the file scanned: renamed meanwhile)
      direct_fd = -1;
    }
  }
  std::unique_ptr<VoteLog> log(
      new VoteLog(config, fd, direct_fd, scanned->first.capacity, scanned->first.key));
  if (!scanned->second.empty()) {
    // Until released, the records read occupy the ring as a whole.
    const uint64_t last = scanned->second.back().lsn;
    log->next_lsn_ = last + 1;
    log->entries_.push_back({last, 0, log->capacity_, false});
  }
  return log;
}

VoteLog::VoteLog(const VoteLogConfig& config, int fd, int direct_fd, uint64_t capacity,
                 const uint8_t* key)
    : config_(config), fd_(fd), direct_fd_(direct_fd), capacity_(capacity) {
  std::memcpy(key_, key, sizeof key_);
  if (direct_fd_ >= 0) {
    direct_buffer_.reset(
        static_cast<uint8_t*>(std::aligned_alloc(block_bytes, direct_write_bytes_max)));
    CCAL_ASSERT(direct_buffer_ != nullptr);
  }
  stats_.direct_io = direct_fd_ >= 0;
  if (config_.durable) thread_ = std::thread([this] { run(); });
}

VoteLog::~VoteLog() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (direct_fd_ >= 0) ::close(direct_fd_);
  ::close(fd_);
}

uint64_t VoteLog::lastLsn() const {
  std::lock_guard lock(mutex_);
  return next_lsn_ - 1;
}

VoteLog::Stats VoteLog::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

std::optional<uint64_t> VoteLog::place(uint64_t bytes) const {
  if (bytes > capacity_) return std::nullopt;
  if (entries_.empty()) return 0;
  const Entry& first = entries_.front();
  const Entry& last = entries_.back();
  const uint64_t end = last.offset + last.bytes;
  if (last.offset >= first.offset) {  // one run, not wrapped
    if (end + bytes <= capacity_) return end;
    if (bytes <= first.offset) return 0;
    return std::nullopt;
  }
  if (end + bytes <= first.offset) return end;
  return std::nullopt;
}

void VoteLog::dropReleased() {
  while (!entries_.empty() && entries_.front().released) entries_.pop_front();
}

std::optional<uint64_t> VoteLog::append(Bytes payload, Done done) {
  if (payload.size() > payload_bytes_max) return std::nullopt;
  Pending p;
  p.payload.reserve(record_header_bytes + payload.size());
  ccal::append(p.payload, ByteView(reinterpret_cast<const uint8_t*>(record_magic), 8));
  appendU64(p.payload, 0);  // the lsn, below
  appendU32(p.payload, static_cast<uint32_t>(payload.size()));
  appendU32(p.payload, 0);
  p.payload.resize(record_header_bytes);  // the MACs, filled in by seal
  ccal::append(p.payload, payload);
  std::unique_lock lock(mutex_);
  if (failed_) return std::nullopt;
  const uint64_t bytes = alignedBytes(payload.size());
  auto at = place(bytes);
  if (!at) {
    ++stats_.refused_full;
    return std::nullopt;
  }
  p.lsn = next_lsn_++;
  p.offset = *at;
  entries_.push_back({p.lsn, p.offset, bytes, false});
  ++stats_.records;
  stats_.bytes += bytes;
  for (int i = 0; i < 8; ++i) p.payload[8 + i] = static_cast<uint8_t>(p.lsn >> (8 * i));
  const uint64_t lsn = p.lsn;
  if (!config_.durable) {
    lock.unlock();
    Status st = writeRecord(p);
    if (!st) {
      lock.lock();
      failed_ = stats_.failed = true;
      failure_ = st;
      lock.unlock();
    }
    done(st, lsn);
    return lsn;
  }
  // (Queued under the lock that gave the lsn: the queue is in lsn order.)
  p.done = std::move(done);
  queue_.push_back(std::move(p));
  lock.unlock();
  wake_.notify_one();
  return lsn;
}

void VoteLog::seal(Pending& p) const {
  uint8_t* h = p.payload.data();
  headerMac(key_, h, h + header_mac_at);
  recordMac(key_, h, p.payload.size() - record_header_bytes, h + record_mac_at);
}

Status VoteLog::injectedFailure(uint64_t lsn) const {
  if (config_.fail_write_for_testing && config_.fail_write_for_testing(lsn)) {
    return ioError("writing the vote log " + config_.path, EIO);
  }
  return Status();
}

Status VoteLog::writeRecord(Pending& p) const {
  seal(p);
  CCAL_TRY(injectedFailure(p.lsn));
  return writeAll(fd_, p.payload.data(), p.payload.size(), block_bytes + p.offset, config_.path);
}

Status VoteLog::writeGroupDirect(std::vector<Pending>& group) {
  // Consecutive records go in one write (a lap's wrap, or a full buffer,
  // starts another); each record padded with zeros to its blocks.
  uint64_t run_offset = 0;
  size_t run_bytes = 0;
  auto flush = [&]() -> Status {
    if (run_bytes == 0) return Status();
    Status st = writeAll(direct_fd_, direct_buffer_.get(), run_bytes, block_bytes + run_offset,
                         config_.path);
    run_bytes = 0;
    return st;
  };
  for (Pending& p : group) {
    seal(p);
    CCAL_TRY(injectedFailure(p.lsn));
    const size_t bytes = alignedBytes(p.payload.size() - record_header_bytes);
    CCAL_ASSERT(bytes <= direct_write_bytes_max);  // (records are bounded far below)
    if (run_bytes > 0 &&
        (p.offset != run_offset + run_bytes || run_bytes + bytes > direct_write_bytes_max)) {
      CCAL_TRY(flush());
    }
    if (run_bytes == 0) run_offset = p.offset;
    uint8_t* at = direct_buffer_.get() + run_bytes;
    std::memcpy(at, p.payload.data(), p.payload.size());
    std::memset(at + p.payload.size(), 0, bytes - p.payload.size());
    run_bytes += bytes;
  }
  return flush();
}

void VoteLog::release(uint64_t lsn) {
  std::lock_guard lock(mutex_);
  for (auto& e : entries_) {
    if (e.lsn == lsn) e.released = true;
  }
  dropReleased();
}

void VoteLog::releaseThrough(uint64_t lsn) {
  std::lock_guard lock(mutex_);
  for (auto& e : entries_) {
    if (e.lsn <= lsn) e.released = true;
  }
  dropReleased();
}

void VoteLog::run() {
  for (;;) {
    std::vector<Pending> group;
    Status st;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;
      group.swap(queue_);
      if (failed_) st = failure_;  // stopped: nothing more is written
    }
    if (!st) {
      // (answered below with the first failure)
    } else if (direct_fd_ >= 0) {
      st = writeGroupDirect(group);  // durable once written (O_DSYNC)
    } else {
      for (auto& p : group) {
        st = writeRecord(p);
        if (!st) break;
      }
      if (st && ::fdatasync(fd_) != 0) st = ioError("syncing the vote log " + config_.path, errno);
    }
    {
      std::lock_guard lock(mutex_);
      if (!failed_) {
        ++stats_.flushes;
        if (!st) {
          failed_ = stats_.failed = true;
          failure_ = st;
        }
      }
    }
    for (auto& p : group) p.done(st, p.lsn);
  }
}

}  // namespace ccal::notary::pbft
