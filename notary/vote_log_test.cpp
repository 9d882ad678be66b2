#include "notary/vote_log.h"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <sodium.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>

#include "test/support/temp_dir.h"

using namespace ccal;
using namespace ccal::notary::pbft;

namespace {

Bytes payloadOf(uint64_t i, size_t bytes) {
  Bytes b(bytes);
  for (size_t k = 0; k < bytes; ++k) b[k] = static_cast<uint8_t>(i * 31 + k);
  return b;
}

// Appends and waits until durable; the lsn.
uint64_t appendWait(VoteLog& log, Bytes payload) {
  std::promise<Status> written;
  auto lsn =
      log.append(std::move(payload), [&](const Status& s, uint64_t) { written.set_value(s); });
  REQUIRE(lsn);
  REQUIRE(written.get_future().get().ok());
  return *lsn;
}

// A log's path in a fresh directory (TempDir leaves its directory to be made).
std::string logPath(const ccal::testing::TempDir& dir) {
  std::filesystem::create_directories(dir.path);
  return dir.path + "/votes.log";
}

void overwrite(const std::string& path, uint64_t offset, ByteView bytes) {
  int fd = ::open(path.c_str(), O_WRONLY);
  REQUIRE(fd >= 0);
  REQUIRE(::pwrite(fd, bytes.data(), bytes.size(), static_cast<off_t>(offset)) ==
          ssize_t(bytes.size()));
  ::close(fd);
}

}  // namespace

TEST_CASE("vote log: records are durable, read back in lsn order, and survive a reopen") {
  for (bool durable : {true, false}) {
    CAPTURE(durable);
    ccal::testing::TempDir dir;
    const std::string path = logPath(dir);
    CHECK(VoteLog::read(path).value().empty());  // no file: no records
    {
      auto log = VoteLog::open({path, VoteLog::capacity_bytes_min, durable}).value();
      CHECK(std::filesystem::file_size(path) == VoteLog::block_bytes + VoteLog::capacity_bytes_min);
      CHECK(appendWait(*log, payloadOf(1, 10)) == 1);
      CHECK(appendWait(*log, payloadOf(2, 5000)) == 2);
      CHECK(appendWait(*log, Bytes{}) == 3);
      CHECK(log->stats().records == 3);
    }
    auto records = VoteLog::read(path).value();
    REQUIRE(records.size() == 3);
    CHECK(records[0].lsn == 1);
    CHECK(records[0].payload == payloadOf(1, 10));
    CHECK(records[1].payload == payloadOf(2, 5000));
    CHECK(records[2].payload.empty());
    // Reopened: the records read hold the ring until released; lsns go on.
    auto log = VoteLog::open({path, VoteLog::capacity_bytes_min * 2, durable}).value();
    CHECK(log->capacityBytes() == VoteLog::capacity_bytes_min);  // the file's own capacity
    CHECK(log->lastLsn() == 3);
    CHECK(!log->append(payloadOf(4, 10), [](const Status&, uint64_t) {}));
    log->releaseThrough(3);
    CHECK(appendWait(*log, payloadOf(4, 10)) == 4);
    // The earlier records are still in the file (released, not erased): read
    // again, which the replica's merge tolerates.
    CHECK(VoteLog::read(path).value().back().lsn == 4);
  }
}

TEST_CASE("vote log: a burst of records is written in runs, across the ring's wrap, each whole") {
  ccal::testing::TempDir dir;
  const std::string path = logPath(dir);
  // Where the file system has direct I/O, the durable log uses it.
  bool direct_possible = false;
  {
    const std::string probe = dir.path + "/probe";
    int fd = ::open(probe.c_str(), O_RDWR | O_CREAT | O_DIRECT | O_DSYNC, 0600);
    direct_possible = fd >= 0;
    if (fd >= 0) ::close(fd);
  }
  auto log = VoteLog::open({path, VoteLog::capacity_bytes_min, true}).value();
  CHECK(log->stats().direct_io == direct_possible);
  // Nine one-block records, released but for the last (at block 8): the burst
  // starts at block 9, runs to the ring's end and wraps to its start.
  uint64_t last = 0;
  for (uint64_t i = 1; i <= 9; ++i) last = appendWait(*log, payloadOf(i, 100));
  log->releaseThrough(last - 1);
  std::vector<std::future<Status>> durable;
  std::vector<std::promise<Status>> promises(10);
  std::vector<uint64_t> lsns;
  for (size_t k = 0; k < promises.size(); ++k) {
    durable.push_back(promises[k].get_future());
    // One block, then two (a payload ending inside its second block).
    const size_t bytes = k % 2 == 0 ? 1000 : VoteLog::block_bytes + 7;
    auto lsn = log->append(payloadOf(100 + k, bytes),
                           [&promises, k](const Status& s, uint64_t) { promises[k].set_value(s); });
    REQUIRE(lsn);
    lsns.push_back(*lsn);
  }
  for (auto& d : durable) CHECK(d.get().ok());
  // 5 x 1 + 5 x 2 = 15 blocks from block 9: the ring holds 16 with block 8's record.
  CHECK(!log->append(payloadOf(9, 10), [](const Status&, uint64_t) {}));
  auto records = VoteLog::read(path).value();
  REQUIRE(records.size() == 11);
  CHECK(records[0].lsn == last);
  for (size_t k = 0; k < lsns.size(); ++k) {
    CAPTURE(k);
    CHECK(records[k + 1].lsn == lsns[k]);
    CHECK(records[k + 1].payload ==
          payloadOf(100 + k, k % 2 == 0 ? 1000 : VoteLog::block_bytes + 7));
  }
  CHECK(log->stats().flushes <= 9 + lsns.size());
}

TEST_CASE("vote log: the ring refuses a record it has no room for and reuses released space") {
  ccal::testing::TempDir dir;
  const std::string path = logPath(dir);
  auto log = VoteLog::open({path, VoteLog::capacity_bytes_min, false}).value();
  // 16 blocks; a record of 3 blocks' payload takes 4 with its header.
  const size_t three_blocks = 3 * VoteLog::block_bytes;
  std::vector<uint64_t> lsns;
  for (int i = 0; i < 4; ++i) lsns.push_back(appendWait(*log, payloadOf(i, three_blocks)));
  CHECK(!log->append(payloadOf(9, 10), [](const Status&, uint64_t) {}));  // full
  CHECK(log->stats().refused_full == 1);
  log->release(lsns[1]);  // not the oldest: nothing is free yet
  CHECK(!log->append(payloadOf(9, 10), [](const Status&, uint64_t) {}));
  log->release(lsns[0]);  // the first two records' 8 blocks are free, at the ring's start
  const uint64_t a = appendWait(*log, payloadOf(5, three_blocks));
  const uint64_t b = appendWait(*log, payloadOf(6, 100));
  CHECK(!log->append(payloadOf(9, three_blocks),
                     [](const Status&, uint64_t) {}));  // 3 blocks left, 4 needed
  CHECK(!log->append(payloadOf(9, 20 * VoteLog::block_bytes),
                     [](const Status&, uint64_t) {}));  // never fits
  auto records = VoteLog::read(path).value();
  REQUIRE(records.size() == 4);  // lsns 3, 4 and the two that wrapped over 1 and 2
  CHECK(records[0].lsn == lsns[2]);
  CHECK(records[2].lsn == a);
  CHECK(records[2].payload == payloadOf(5, three_blocks));
  CHECK(records[3].lsn == b);
  log->releaseThrough(b);
  CHECK(appendWait(*log, payloadOf(7, 15 * VoteLog::block_bytes - 100)) ==
        b + 1);  // the whole ring
}

TEST_CASE(
    "vote log: a torn record is skipped, the others are read; bytes inside a payload never pass "
    "for a record") {
  ccal::testing::TempDir dir;
  const std::string path = logPath(dir);
  {
    auto log = VoteLog::open({path, VoteLog::capacity_bytes_min, true}).value();
    appendWait(*log, payloadOf(1, 100));                       // block 0 of the ring
    appendWait(*log, payloadOf(2, 2 * VoteLog::block_bytes));  // blocks 1-3
    appendWait(*log, payloadOf(3, 100));                       // block 4
  }
  // Record 2 torn: its last block never reached the disk.
  overwrite(path, VoteLog::block_bytes * (1 + 3) + 8, Bytes(100, 0));
  auto records = VoteLog::read(path).value();
  REQUIRE(records.size() == 2);
  CHECK(records[0].payload == payloadOf(1, 100));
  CHECK(records[1].payload == payloadOf(3, 100));
  // A payload that carries a record of its own (a client's request could),
  // at a block boundary inside a torn record: its MAC is not under the
  // file's key, so it is not read.
  ccal::testing::TempDir other_dir;
  const std::string other = logPath(other_dir);
  {
    auto log = VoteLog::open({other, VoteLog::capacity_bytes_min, false}).value();
    appendWait(*log, payloadOf(8, 100));
  }
  Bytes forged(VoteLog::block_bytes);
  {
    std::ifstream in(other, std::ios::binary);
    in.seekg(VoteLog::block_bytes);
    in.read(reinterpret_cast<char*>(forged.data()), std::streamsize(forged.size()));
  }
  overwrite(path, VoteLog::block_bytes * (1 + 2), forged);  // inside record 2 (torn already)
  records = VoteLog::read(path).value();
  CHECK(records.size() == 2);
}

TEST_CASE(
    "vote log: a file that is not a vote log, or whose header is damaged, is refused by name") {
  ccal::testing::TempDir dir;
  const std::string path = logPath(dir);
  {
    std::ofstream out(path, std::ios::binary);
    out << std::string(VoteLog::block_bytes + VoteLog::capacity_bytes_min, 'x');
  }
  auto r = VoteLog::read(path);
  REQUIRE(!r);
  CHECK(r.error().message.find("is not a vote log") != std::string::npos);
  CHECK(r.error().message.find(path) != std::string::npos);
  CHECK(!VoteLog::open({path, VoteLog::capacity_bytes_min, false}));
  std::filesystem::remove(path);
  { auto log = VoteLog::open({path, VoteLog::capacity_bytes_min, false}).value(); }
  overwrite(path, 14, Bytes{0xff});  // inside the capacity
  r = VoteLog::read(path);
  REQUIRE(!r);
  CHECK(r.error().message.find("damaged header") != std::string::npos);
  std::filesystem::remove(path);
  { auto log = VoteLog::open({path, VoteLog::capacity_bytes_min, false}).value(); }
  std::filesystem::resize_file(path, VoteLog::block_bytes + 100);
  r = VoteLog::read(path);
  REQUIRE(!r);
  CHECK(r.error().message.find("its header says") != std::string::npos);
  std::filesystem::remove(path);
  auto bad = VoteLog::open({path, 1000, false});
  REQUIRE(!bad);
  CHECK(bad.error().message.find("capacity of 1000") != std::string::npos);
  CHECK(!std::filesystem::exists(path));
}

TEST_CASE("vote log: a file of another format is refused by name") {
  ccal::testing::TempDir dir;
  const std::string path = logPath(dir);
  { auto log = VoteLog::open({path, VoteLog::capacity_bytes_min, false}).value(); }
  // Format 1 (records without a header MAC, a slot's seq big-endian), its
  // header's hash made good: not read as this build's records.
  Bytes head(VoteLog::block_bytes);
  {
    std::ifstream in(path, std::ios::binary);
    in.read(reinterpret_cast<char*>(head.data()), std::streamsize(head.size()));
  }
  head[8] = 1;
  crypto_generichash(head.data() + 52, 32, head.data(), 52, nullptr, 0);
  overwrite(path, 0, head);
  auto r = VoteLog::read(path);
  REQUIRE(!r);
  CHECK(r.error().message.find("has format 1, this build reads 2") != std::string::npos);
  CHECK(r.error().message.find(path) != std::string::npos);
  CHECK(!VoteLog::open({path, VoteLog::capacity_bytes_min, false}));
}

TEST_CASE(
    "vote log: bytes that only look like record headers cost the scan no hashing of what they "
    "claim") {
  ccal::testing::TempDir dir;
  const std::string path = logPath(dir);
  const uint64_t capacity = 16ull << 20;
  {
    auto log = VoteLog::open({path, capacity, false}).value();
    appendWait(*log, payloadOf(1, 100));  // block 0 of the ring
  }
  // Every later block: a record magic, a zero reserved field and a length
  // reaching to the ring's end (a client's request inside a logged batch
  // could carry such bytes). Without a header MAC the scan hashed each
  // claimed length: quadratic (~40 s for this ring here); now ~ms.
  Bytes fake(VoteLog::block_bytes, 0);
  std::memcpy(fake.data(), "CCALVREC", 8);
  {
    int fd = ::open(path.c_str(), O_WRONLY);
    REQUIRE(fd >= 0);
    for (uint64_t off = VoteLog::block_bytes; off < capacity; off += VoteLog::block_bytes) {
      const uint32_t len = static_cast<uint32_t>(capacity - off - 72);
      for (int i = 0; i < 4; ++i) fake[16 + i] = static_cast<uint8_t>(len >> (8 * i));
      REQUIRE(::pwrite(fd, fake.data(), fake.size(),
                       static_cast<off_t>(VoteLog::block_bytes + off)) == ssize_t(fake.size()));
    }
    ::close(fd);
  }
  const auto started = std::chrono::steady_clock::now();
  auto records = VoteLog::read(path).value();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  REQUIRE(records.size() == 1);
  CHECK(records[0].payload == payloadOf(1, 100));
  CHECK(seconds < 5.0);  // (a bound 100x above the linear scan, far below the quadratic one)
}

TEST_CASE(
    "vote log: a failed write stops the log; records queued after it are answered with the error, "
    "unwritten") {
  for (bool durable : {true, false}) {
    CAPTURE(durable);
    ccal::testing::TempDir dir;
    const std::string path = logPath(dir);
    VoteLogConfig config{path, VoteLog::capacity_bytes_min, durable};
    config.fail_write_for_testing = [](uint64_t lsn) { return lsn == 3; };
    auto log = VoteLog::open(config).value();
    appendWait(*log, payloadOf(1, 100));
    appendWait(*log, payloadOf(2, 100));
    std::vector<std::promise<Status>> promises(3);
    std::vector<std::future<Status>> answers;
    for (auto& p : promises) answers.push_back(p.get_future());
    std::vector<uint64_t> lsns;
    for (size_t k = 0; k < promises.size(); ++k) {
      auto lsn = log->append(payloadOf(3 + k, 100), [&promises, k](const Status& s, uint64_t) {
        promises[k].set_value(s);
      });
      // (Once the failure is known — at once when not durable — later
      // records are refused.)
      if (!lsn) {
        CHECK(k > 0);
        promises[k].set_value(makeError(Errc::io_error, "refused"));
        continue;
      }
      lsns.push_back(*lsn);
    }
    for (auto& a : answers) {
      Status st = a.get();
      REQUIRE(!st);
      CHECK(st.error().code == Errc::io_error);
    }
    CHECK(log->stats().failed);
    CHECK(!log->append(payloadOf(9, 100), [](const Status&, uint64_t) {}));
    CHECK(log->stats().refused_full == 0);  // (refused as failed, not as full)
    auto records = VoteLog::read(path).value();
    REQUIRE(records.size() == 2);  // the two before the failure only
    CHECK(records[1].lsn == 2);
  }
}
