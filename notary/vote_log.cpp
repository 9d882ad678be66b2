#include "notary/vote_log.h"

#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "ledger/assert.h"
#include "notary/record_reader.h"

namespace ccal::notary::pbft {

namespace {

constexpr char file_magic[8] = {'C', 'C', 'A', 'L', 'V', 'L', 'O', 'G'};
constexpr char record_magic[8] = {'C', 'C', 'A', 'L', 'V', 'R', 'E', 'C'};
constexpr uint32_t file_format = 1;
constexpr size_t mac_bytes = 32;
// magic, format u32, capacity u64, key, BLAKE2b-256 of what precedes it.
constexpr size_t file_header_bytes = 8 + 4 + 8 + 32 + mac_bytes;
static_assert(file_header_bytes <= VoteLog::block_bytes);
// magic, lsn u64, payload length u32, reserved u32 (0), MAC.
constexpr size_t record_header_bytes = 8 + 8 + 4 + 4 + mac_bytes;
constexpr size_t fill_chunk_bytes = 1 << 20;

uint64_t alignedBytes(uint64_t payload_bytes) {
  const uint64_t b = VoteLog::block_bytes;
  return (record_header_bytes + payload_bytes + b - 1) / b * b;
}

// The MAC of a record whose header (without its MAC) and payload are at p.
void recordMac(const uint8_t* key, const uint8_t* p, size_t payload_bytes, uint8_t* out) {
  crypto_generichash_state st;
  crypto_generichash_init(&st, key, 32, mac_bytes);
  crypto_generichash_update(&st, p + 8, 16);  // lsn, length
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
      if (len <= h->capacity - off - record_header_bytes) {
        uint8_t mac[mac_bytes];
        recordMac(h->key, p, len, mac);
        if (sodium_memcmp(mac, p + 24, mac_bytes) == 0) {
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
      if (d >= 0) {
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
  std::unique_ptr<VoteLog> log(
      new VoteLog(config, fd, scanned->first.capacity, scanned->first.key));
  if (!scanned->second.empty()) {
    // Until released, the records read occupy the ring as a whole.
    const uint64_t last = scanned->second.back().lsn;
    log->next_lsn_ = last + 1;
    log->entries_.push_back({last, 0, log->capacity_, false});
  }
  return log;
}

VoteLog::VoteLog(const VoteLogConfig& config, int fd, uint64_t capacity, const uint8_t* key)
    : config_(config), fd_(fd), capacity_(capacity) {
  std::memcpy(key_, key, sizeof key_);
  if (config_.durable) thread_ = std::thread([this] { run(); });
}

VoteLog::~VoteLog() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
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
  CCAL_ASSERT(payload.size() <= UINT32_MAX);
  Pending p;
  {
    std::lock_guard lock(mutex_);
    const uint64_t bytes = alignedBytes(payload.size());
    auto at = failed_ ? std::nullopt : place(bytes);
    if (!at) {
      ++stats_.refused_full;
      return std::nullopt;
    }
    p.lsn = next_lsn_++;
    p.offset = *at;
    entries_.push_back({p.lsn, p.offset, bytes, false});
    ++stats_.records;
    stats_.bytes += bytes;
  }
  p.payload.reserve(record_header_bytes + payload.size());
  ccal::append(p.payload, ByteView(reinterpret_cast<const uint8_t*>(record_magic), 8));
  appendU64(p.payload, p.lsn);
  appendU32(p.payload, static_cast<uint32_t>(payload.size()));
  appendU32(p.payload, 0);
  p.payload.resize(record_header_bytes);  // the MAC, filled in by writeRecord
  ccal::append(p.payload, payload);
  const uint64_t lsn = p.lsn;
  if (!config_.durable) {
    Status st = writeRecord(p);
    if (!st) {
      std::lock_guard lock(mutex_);
      failed_ = true;
    }
    done(st, lsn);
    return lsn;
  }
  p.done = std::move(done);
  {
    std::lock_guard lock(mutex_);
    queue_.push_back(std::move(p));
  }
  wake_.notify_one();
  return lsn;
}

Status VoteLog::writeRecord(const Pending& p) const {
  uint8_t* h = const_cast<uint8_t*>(p.payload.data());
  recordMac(key_, h, p.payload.size() - record_header_bytes, h + 24);
  return writeAll(fd_, p.payload.data(), p.payload.size(), block_bytes + p.offset, config_.path);
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
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;
      group.swap(queue_);
    }
    Status st;
    for (const auto& p : group) {
      st = writeRecord(p);
      if (!st) break;
    }
    if (st && ::fdatasync(fd_) != 0) st = ioError("syncing the vote log " + config_.path, errno);
    {
      std::lock_guard lock(mutex_);
      ++stats_.flushes;
      if (!st) failed_ = true;
    }
    for (auto& p : group) p.done(st, p.lsn);
  }
}

}  // namespace ccal::notary::pbft
