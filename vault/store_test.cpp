#include "vault/store.h"

#include <doctest/doctest.h>
#include <lmdb.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace ccal;
using namespace ccal::vault;
using namespace std::chrono_literals;

namespace {

// A fresh directory under /tmp, removed with everything in it.
struct TempDir {
  std::string root;
  TempDir() {
    std::string pattern = "/tmp/ccal-store-test-XXXXXX";
    CCAL_ASSERT(::mkdtemp(pattern.data()) != nullptr);
    root = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(root, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string store() const { return root + "/store"; }
};

const std::vector<std::string> db_names = {"records", "index", "byhash"};
constexpr std::string_view schema = "ccal.vault.test";

StoreConfig testConfig(const std::string& path, bool durable = false) {
  StoreConfig config;
  config.path = path;
  config.map_size_bytes = 256ull << 20;
  config.durable = durable;
  return config;
}

std::unique_ptr<Store> openStore(const StoreConfig& config, uint32_t version = 1) {
  auto opened = Store::open(config, db_names, schema, version);
  if (!opened.ok()) FAIL(opened.error().toString());
  return std::move(opened).value();
}

// Big-endian, so that keys sort as numbers.
Bytes be64(uint64_t n) {
  Bytes out(8);
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(n >> (56 - 8 * i));
  return out;
}

uint64_t fromBe64(ByteView b) {
  CCAL_ASSERT(b.size() == 8);
  uint64_t n = 0;
  for (uint8_t byte : b) n = (n << 8) | byte;
  return n;
}

std::string str(ByteView b) {
  return std::string(b.begin(), b.end());
}
std::string str(const std::optional<ByteView>& b) {
  return b ? str(*b) : "<none>";
}
bool same(const std::optional<ByteView>& a, const Bytes& b) {
  return a && std::equal(a->begin(), a->end(), b.begin(), b.end());
}

// A value derived from n, so that a reader can tell a right one from a wrong one.
Bytes payload(uint64_t n, size_t size) {
  Bytes out(size);
  uint64_t x = n * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < size; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    out[i] = static_cast<uint8_t>(x);
  }
  return out;
}

Bytes indexKey(uint64_t n) {
  Bytes key = {'r'};
  append(key, be64(n));
  return key;
}

// Record n: a payload in "records" and a back-reference in "index".
Status putRecord(Store& store, WriteTxn& txn, uint64_t n, size_t size) {
  CCAL_TRY(txn.put(store.db("records"), be64(n), payload(n, size)));
  return txn.put(store.db("index"), indexKey(n), be64(n));
}

// Every record n in [0, count) is present and whole, and there is nothing else.
void checkRecords(Store& store, uint64_t count, size_t size) {
  ReadTxn txn = store.read();
  CHECK(txn.entries(store.db("records")) == count);
  CHECK(txn.entries(store.db("index")) == count);
  uint64_t bad = 0;
  for (uint64_t n = 0; n < count; ++n) {
    if (!same(txn.get(store.db("records"), be64(n)), payload(n, size)) ||
        !same(txn.get(store.db("index"), indexKey(n)), be64(n))) {
      ++bad;
    }
  }
  CHECK(bad == 0);
}

// Holds the writer thread inside a request until released, so that the
// requests submitted meanwhile queue up and go into one batch.
struct WriterGate {
  std::promise<void> entered, release;
  std::shared_future<void> released = release.get_future().share();

  void close(Store& store, std::atomic<int>& finished) {
    store.submit(
        [this](WriteTxn&) {
          entered.set_value();
          released.wait();
          return Status();
        },
        [&finished](const Status& status) {
          CHECK(status.ok());
          ++finished;
        });
    entered.get_future().wait();
  }
  void open() { release.set_value(); }
};

void waitFor(const std::atomic<int>& counter, int target) {
  auto deadline = std::chrono::steady_clock::now() + 60s;
  while (counter.load() < target && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(1ms);
  }
  REQUIRE(counter.load() == target);
}

void writeFile(const std::string& path, const Bytes& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

}  // namespace

TEST_CASE("Store: put, get, del and entries") {
  TempDir dir;
  auto store = openStore(testConfig(dir.store()));
  const Db& records = store->db("records");
  Status written = store->write([&](WriteTxn& txn) -> Status {
    CCAL_TRY(txn.put(records, asBytes("alpha"), asBytes("1")));
    CCAL_TRY(txn.put(records, asBytes("beta"), asBytes("2")));
    CCAL_TRY(txn.put(records, asBytes("gamma"), asBytes("3")));
    CCAL_TRY(txn.put(records, asBytes("empty"), ByteView()));
    CHECK(str(txn.get(records, asBytes("beta"))) == "2");      // a request reads its own writes
    return txn.put(records, asBytes("beta"), asBytes("two"));  // overwrites
  });
  REQUIRE(written.ok());
  {
    ReadTxn txn = store->read();
    CHECK(str(txn.get(records, asBytes("alpha"))) == "1");
    CHECK(str(txn.get(records, asBytes("beta"))) == "two");
    CHECK(txn.get(records, asBytes("empty")).has_value());
    CHECK(txn.get(records, asBytes("empty"))->empty());
    CHECK_FALSE(txn.get(records, asBytes("delta")).has_value());
    CHECK_FALSE(txn.get(records, ByteView()).has_value());
    CHECK_FALSE(txn.get(records, Bytes(600, 'k')).has_value());
    CHECK(txn.entries(records) == 4);
    CHECK(txn.entries(store->db("index")) == 0);
  }
  Status deleted = store->write([&](WriteTxn& txn) -> Status {
    CCAL_TRY(txn.del(records, asBytes("alpha")));
    CCAL_TRY(txn.del(records, asBytes("no such key")));  // deleting a missing key is ok
    return txn.del(records, ByteView());
  });
  REQUIRE(deleted.ok());
  ReadTxn txn = store->read();
  CHECK_FALSE(txn.get(records, asBytes("alpha")).has_value());
  CHECK(txn.entries(records) == 3);
  CHECK(store->stats().requests == 2);
  CHECK(store->stats().commits == 2);
}

TEST_CASE("Store: append() adds the greatest key, and puts any other key the ordinary way") {
  TempDir dir;
  auto store = openStore(testConfig(dir.store()));
  const Db& records = store->db("records");
  auto seq = [](uint64_t n) {
    Bytes k;
    for (int i = 7; i >= 0; --i) k.push_back(static_cast<uint8_t>(n >> (8 * i)));
    return k;
  };
  // Enough to fill many pages: appended pages are split so they stay full.
  constexpr uint64_t n = 3000;
  REQUIRE(store->write([&](WriteTxn& txn) -> Status {
    for (uint64_t i = 10; i < n; ++i) CCAL_TRY(txn.append(records, seq(i), Bytes(100, uint8_t(i))));
    return {};
  }).ok());
  // Keys that are not the greatest: smaller, and one already there.
  Status mixed = store->write([&](WriteTxn& txn) -> Status {
    CCAL_TRY(txn.append(records, seq(5), asBytes("five")));
    CCAL_TRY(txn.append(records, seq(100), asBytes("replaced")));
    CCAL_TRY(txn.append(records, seq(n + 7), asBytes("last")));
    CHECK(str(txn.get(records, seq(5))) == "five");
    return txn.append(records, ByteView(), asBytes("x"));  // an empty key fails as in put()
  });
  CHECK(mixed.error().code == Errc::malformed);  // and rolled back the request's changes
  REQUIRE(store->write([&](WriteTxn& txn) -> Status {
    CCAL_TRY(txn.append(records, seq(5), asBytes("five")));
    CCAL_TRY(txn.append(records, seq(100), asBytes("replaced")));
    return txn.append(records, seq(n + 7), asBytes("last"));
  }).ok());
  ReadTxn txn = store->read();
  CHECK(txn.entries(records) == n - 10 + 2);
  CHECK(str(txn.get(records, seq(5))) == "five");
  CHECK(str(txn.get(records, seq(100))) == "replaced");
  CHECK(str(txn.get(records, seq(n + 7))) == "last");
  CHECK(txn.get(records, seq(n - 1))->size() == 100);
  Cursor c = txn.cursor(records);
  uint64_t count = 0;
  Bytes previous;
  for (bool ok = c.first(); ok; ok = c.next(), ++count) {
    Bytes key(c.key().begin(), c.key().end());
    CHECK(previous < key);
    previous = key;
  }
  CHECK(count == n - 10 + 2);
}

TEST_CASE("Store: a cursor walks keys in order, seeks and steps back") {
  TempDir dir;
  auto store = openStore(testConfig(dir.store()));
  const Db& records = store->db("records");
  REQUIRE(store
              ->write([&](WriteTxn& txn) -> Status {
                for (uint64_t n : {50, 10, 90, 30, 70}) {
                  CCAL_TRY(txn.put(records, be64(n), asBytes("v" + std::to_string(n))));
                }
                return {};
              })
              .ok());
  ReadTxn txn = store->read();
  Cursor cursor = txn.cursor(records);
  CHECK_FALSE(cursor.valid());
  CHECK_FALSE(cursor.next());  // not placed yet: stays invalid
  CHECK_FALSE(cursor.prev());

  std::vector<uint64_t> forward;
  for (bool ok = cursor.first(); ok; ok = cursor.next()) forward.push_back(fromBe64(cursor.key()));
  CHECK(forward == std::vector<uint64_t>{10, 30, 50, 70, 90});
  CHECK_FALSE(cursor.valid());
  CHECK_FALSE(cursor.next());  // run off the end: stays invalid

  std::vector<uint64_t> backward;
  for (bool ok = cursor.last(); ok; ok = cursor.prev()) backward.push_back(fromBe64(cursor.key()));
  CHECK(backward == std::vector<uint64_t>{90, 70, 50, 30, 10});

  REQUIRE(cursor.seek(be64(40)));  // between keys: the next one
  CHECK(fromBe64(cursor.key()) == 50);
  CHECK(str(cursor.value()) == "v50");
  REQUIRE(cursor.prev());
  CHECK(fromBe64(cursor.key()) == 30);
  REQUIRE(cursor.seek(be64(70)));  // exact
  CHECK(fromBe64(cursor.key()) == 70);
  REQUIRE(cursor.next());
  CHECK(fromBe64(cursor.key()) == 90);
  CHECK_FALSE(cursor.seek(be64(91)));  // past the end
  CHECK_FALSE(cursor.valid());
  REQUIRE(cursor.seek(ByteView()));  // the empty key: the first
  CHECK(fromBe64(cursor.key()) == 10);

  Cursor moved(std::move(cursor));
  CHECK(moved.valid());
  CHECK(fromBe64(moved.key()) == 10);
  REQUIRE(moved.next());
  CHECK(fromBe64(moved.key()) == 30);

  Cursor empty = txn.cursor(store->db("index"));
  CHECK_FALSE(empty.first());
  CHECK_FALSE(empty.last());
  CHECK_FALSE(empty.seek(be64(1)));
}

TEST_CASE("Store: a cursor inside a write request sees the request's changes") {
  TempDir dir;
  auto store = openStore(testConfig(dir.store()));
  const Db& index = store->db("index");
  std::vector<std::string> seen;
  REQUIRE(store
              ->write([&](WriteTxn& txn) -> Status {
                CCAL_TRY(txn.put(index, asBytes("b"), asBytes("2")));
                CCAL_TRY(txn.put(index, asBytes("a"), asBytes("1")));
                Cursor cursor = txn.cursor(index);
                for (bool ok = cursor.first(); ok; ok = cursor.next())
                  seen.push_back(str(cursor.key()));
                return {};
              })
              .ok());
  CHECK(seen == std::vector<std::string>{"a", "b"});
}

TEST_CASE("Store: a read transaction is a snapshot, usable from another thread") {
  TempDir dir;
  auto store = openStore(testConfig(dir.store()));
  const Db& records = store->db("records");
  REQUIRE(
      store->write([&](WriteTxn& txn) { return txn.put(records, asBytes("k"), asBytes("old")); })
          .ok());
  ReadTxn before = store->read();
  REQUIRE(
      store->write([&](WriteTxn& txn) { return txn.put(records, asBytes("k"), asBytes("new")); })
          .ok());
  CHECK(str(before.get(records, asBytes("k"))) == "old");
  CHECK(str(store->read().get(records, asBytes("k"))) == "new");

  // MDB_NOTLS: a read transaction begun on one thread is used and ended on another.
  std::string seen_elsewhere;
  std::thread other([&seen_elsewhere, &records, txn = std::move(before)]() mutable {
    seen_elsewhere = str(txn.get(records, asBytes("k")));
    ReadTxn ended = std::move(txn);
  });
  other.join();
  CHECK(seen_elsewhere == "old");

  ReadTxn a = store->read();
  ReadTxn b = store->read();
  a = std::move(b);  // a's old transaction ends here
  CHECK(str(a.get(records, asBytes("k"))) == "new");
}

TEST_CASE("Store: data survives close and reopen") {
  TempDir dir;
  {
    auto store = openStore(testConfig(dir.store(), /*durable=*/true));
    for (uint64_t n = 0; n < 20; ++n) {
      REQUIRE(store->write([&](WriteTxn& txn) { return putRecord(*store, txn, n, 300); }).ok());
    }
  }
  CHECK((std::filesystem::status(dir.store()).permissions() & std::filesystem::perms::all) ==
        std::filesystem::perms::owner_all);
  auto store = openStore(testConfig(dir.store(), /*durable=*/true));
  checkRecords(*store, 20, 300);
}

TEST_CASE("Store: concurrent writers are all durable, in far fewer commits than requests") {
  TempDir dir;
  constexpr int threads = 16, writes_per_thread = 60;
  {
    auto store = openStore(testConfig(dir.store(), /*durable=*/true));
    std::atomic<int> failures{0};
    std::vector<std::thread> writers;
    for (int t = 0; t < threads; ++t) {
      writers.emplace_back([&, t] {
        for (int i = 0; i < writes_per_thread; ++i) {
          uint64_t n = static_cast<uint64_t>(t) * writes_per_thread + static_cast<uint64_t>(i);
          if (!store->write([&](WriteTxn& txn) { return putRecord(*store, txn, n, 200); }).ok()) {
            ++failures;
          }
        }
      });
    }
    for (auto& w : writers) w.join();
    CHECK(failures.load() == 0);
    Store::Stats stats = store->stats();
    MESSAGE("group commit: " << stats.requests << " requests in " << stats.commits << " commits");
    CHECK(stats.requests == threads * writes_per_thread);
    CHECK(stats.commits * 3 <= stats.requests);
  }
  auto store = openStore(testConfig(dir.store(), /*durable=*/true));
  checkRecords(*store, threads * writes_per_thread, 200);
}

TEST_CASE("Store: a durable commit's callers are answered once a later sync covered it") {
  // One request per batch, so that every request has its own commit.
  TempDir dir;
  StoreConfig config = testConfig(dir.store(), /*durable=*/true);
  config.write_batch_max = 1;
  auto store = openStore(config);
  const Db& records = store->db("records");
  std::atomic<int> finished{0};
  WriterGate gate;
  gate.close(*store, finished);

  // What each caller saw when answered: the commits and idle syncs so far.
  struct Seen {
    bool ok = false;
    uint64_t commits = 0, syncs = 0;
  };
  std::vector<Seen> seen(4);
  auto answer = [&](size_t i) {
    return [&, i](const Status& status) {
      Store::Stats stats = store->stats();
      seen[i] = Seen{status.ok(), stats.commits, stats.syncs};
      ++finished;
    };
  };
  auto put = [&](const char* key) {
    return [&records, key](WriteTxn& txn) { return txn.put(records, asBytes(key), asBytes(key)); };
  };
  store->submit(put("r1"), answer(0));
  store->submit([](WriteTxn&) { return Status(); }, answer(1));  // writes nothing
  store->submit(put("r3"), answer(2));
  store->submit(put("r4"), answer(3));
  const uint64_t commits_before = store->stats().commits;  // the gate's is counted after it
  gate.open();
  waitFor(finished, 5);

  for (const Seen& s : seen) CHECK(s.ok);
  // r1 waits for a sync: r2's commit wrote nothing (LMDB skips its sync),
  // so the writer syncs, then answers both.
  CHECK(seen[0].syncs == 1);
  CHECK(seen[1].syncs == 1);
  // r3 is covered by r4's commit (its data sync comes before its meta page).
  CHECK(seen[2].syncs == 1);
  CHECK(seen[2].commits == commits_before + 5);
  // r4 is the last: the writer syncs before going idle.
  CHECK(seen[3].syncs == 2);
  CHECK(store->stats().syncs == 2);
  ReadTxn txn = store->read();
  for (const char* key : {"r1", "r3", "r4"}) CHECK(str(txn.get(records, asBytes(key))) == key);
}

TEST_CASE("Store: without durability callers are answered at once, with no syncs") {
  TempDir dir;
  auto store = openStore(testConfig(dir.store(), /*durable=*/false));
  for (int i = 0; i < 3; ++i) {
    CHECK(store->write([&](WriteTxn& txn) { return putRecord(*store, txn, i, 10); }).ok());
  }
  CHECK(store->stats().syncs == 0);
  checkRecords(*store, 3, 10);
}

TEST_CASE("Store: sorted changes apply in key order before a plain request and the commit") {
  TempDir dir;
  auto store = openStore(testConfig(dir.store(), /*durable=*/true));
  const Db& records = store->db("records");
  const Db& index = store->db("index");
  CHECK(store->write([&](WriteTxn& txn) { return txn.put(index, asBytes("k5"), asBytes("old")); }).ok());
  std::atomic<int> finished{0};
  WriterGate gate;
  gate.close(*store, finished);

  std::vector<Status> results(5);
  auto record = [&](size_t i) {
    return [&results, &finished, i](const Status& status) {
      results[i] = status;
      ++finished;
    };
  };
  std::string seen_by_a, seen_by_c, seen_by_e;
  // a: sorted changes wait, so a does not read its own; its plain put is at once.
  store->submit(
      [&](WriteTxn& txn) -> Status {
        CCAL_TRY(txn.putSorted(index, asBytes("k3"), asBytes("a3")));
        CCAL_TRY(txn.putSorted(index, asBytes("k1"), asBytes("a1")));
        CCAL_TRY(txn.delSorted(index, asBytes("k5")));
        CCAL_TRY(txn.put(records, asBytes("a"), asBytes("A")));
        seen_by_a = str(txn.get(index, asBytes("k1"))) + str(txn.get(records, asBytes("a")));
        return {};
      },
      record(0), WriteKind::sorted);
  // b: fails after a sorted change and no plain one: its change is dropped,
  // and the batch runs on without a re-run.
  store->submit(
      [&](WriteTxn& txn) -> Status {
        CCAL_TRY(txn.putSorted(index, asBytes("k2"), asBytes("b2")));
        return makeError(Errc::conflict, "b refuses");
      },
      record(1), WriteKind::sorted);
  // c: plain, so the sorted changes before it are applied before it runs.
  store->submit(
      [&](WriteTxn& txn) -> Status {
        seen_by_c = str(txn.get(index, asBytes("k1"))) + str(txn.get(index, asBytes("k2"))) +
                    str(txn.get(index, asBytes("k5")));
        return {};
      },
      record(2));
  // d: puts k3 again after a's put; then deletes k1 and puts it back: the
  // changes to one key keep their order.
  store->submit(
      [&](WriteTxn& txn) -> Status {
        CCAL_TRY(txn.putSorted(index, asBytes("k3"), asBytes("d3")));
        CCAL_TRY(txn.delSorted(index, asBytes("k1")));
        CCAL_TRY(txn.putSorted(index, asBytes("k1"), asBytes("d1")));
        CCAL_TRY(txn.putSorted(index, asBytes("k0"), asBytes("d0")));
        return {};
      },
      record(3), WriteKind::sorted);
  // e: a key LMDB cannot hold fails at once, before anything is written.
  store->submit(
      [&](WriteTxn& txn) -> Status {
        Status empty = txn.putSorted(index, {}, asBytes("x"));
        seen_by_e = empty.ok() ? "ok" : empty.error().message;
        return empty;
      },
      record(4), WriteKind::sorted);
  gate.open();
  waitFor(finished, 6);

  CHECK(results[0].ok());
  REQUIRE_FALSE(results[1].ok());
  CHECK(results[1].error().message == "b refuses");
  CHECK(results[2].ok());
  CHECK(results[3].ok());
  REQUIRE_FALSE(results[4].ok());
  CHECK(results[4].error().code == Errc::malformed);
  CHECK(seen_by_a == "<none>A");
  CHECK(seen_by_c == "a1<none><none>");
  CHECK(seen_by_e.find("empty key") != std::string::npos);
  Store::Stats stats = store->stats();
  CHECK(stats.reruns == 0);
  CHECK(stats.sorted_changes == 7);  // a's three, d's four; b's and e's none

  ReadTxn txn = store->read();
  CHECK(str(txn.get(index, asBytes("k0"))) == "d0");
  CHECK(str(txn.get(index, asBytes("k1"))) == "d1");
  CHECK_FALSE(txn.get(index, asBytes("k2")).has_value());
  CHECK(str(txn.get(index, asBytes("k3"))) == "d3");
  CHECK_FALSE(txn.get(index, asBytes("k5")).has_value());
  CHECK(txn.entries(index) == 3);
}

TEST_CASE("Store: a sorted change that fails makes the batch run again, blaming its request") {
  // A map too small to grow: the sorted changes fail when applied, and the
  // batch runs again with every change applied at once, so the failure is
  // the request's own (the other request commits).
  TempDir dir;
  StoreConfig config = testConfig(dir.store());
  config.map_size_bytes = 1ull << 20;
  config.map_size_max_bytes = 1ull << 20;
  auto store = openStore(config);
  const Db& index = store->db("index");
  std::atomic<int> finished{0};
  WriterGate gate;
  gate.close(*store, finished);
  std::vector<Status> results(2);
  store->submit([&](WriteTxn& txn) { return txn.putSorted(index, asBytes("small"), asBytes("s")); },
                [&](const Status& status) {
                  results[0] = status;
                  ++finished;
                },
                WriteKind::sorted);
  store->submit(
      [&](WriteTxn& txn) -> Status {
        for (uint64_t n = 0; n < 4000; ++n) CCAL_TRY(txn.putSorted(index, indexKey(n), payload(n, 400)));
        return {};
      },
      [&](const Status& status) {
        results[1] = status;
        ++finished;
      },
      WriteKind::sorted);
  gate.open();
  waitFor(finished, 3);
  CHECK(results[0].ok());
  REQUIRE_FALSE(results[1].ok());
  CHECK(results[1].error().code == Errc::storage_full);
  CHECK(store->stats().reruns >= 1);
  ReadTxn txn = store->read();
  CHECK(str(txn.get(index, asBytes("small"))) == "s");
  CHECK(txn.entries(index) == 1);
}

TEST_CASE("Store: a failing request rolls back its own changes, not its batch's") {
  TempDir dir;
  auto store = openStore(testConfig(dir.store()));
  const Db& records = store->db("records");
  std::atomic<int> finished{0};
  WriterGate gate;
  gate.close(*store, finished);

  // Queued behind the gate, these four share one batch and one commit.
  std::vector<Status> results(4);
  auto record = [&](size_t i) {
    return [&results, &finished, i](const Status& status) {
      results[i] = status;
      ++finished;
    };
  };
  std::string seen_by_d;
  store->submit([&](WriteTxn& txn) { return txn.put(records, asBytes("a"), asBytes("A")); },
                record(0));
  store->submit(
      [&](WriteTxn& txn) -> Status {
        CCAL_TRY(txn.put(records, asBytes("b"), asBytes("B")));
        CCAL_TRY(txn.del(records, asBytes("a")));
        return makeError(Errc::invalid_transaction, "b refuses");
      },
      record(1));
  store->submit(
      [&](WriteTxn& txn) -> Status {
        CCAL_TRY(txn.put(records, asBytes("c"), asBytes("C")));
        throw std::runtime_error("c blew up");
      },
      record(2));
  store->submit(
      [&](WriteTxn& txn) -> Status {
        seen_by_d = str(txn.get(records, asBytes("a"))) + str(txn.get(records, asBytes("b")));
        return txn.put(records, asBytes("d"), asBytes("D"));
      },
      record(3));
  gate.open();
  waitFor(finished, 5);

  CHECK(results[0].ok());
  REQUIRE_FALSE(results[1].ok());
  CHECK(results[1].error().code == Errc::invalid_transaction);
  CHECK(results[1].error().message == "b refuses");
  REQUIRE_FALSE(results[2].ok());
  CHECK(results[2].error().code == Errc::storage_error);
  CHECK(results[2].error().message.find("c blew up") != std::string::npos);
  CHECK(results[3].ok());
  CHECK(seen_by_d == "A<none>");  // a's write is visible to later requests; b's is gone

  ReadTxn txn = store->read();
  CHECK(str(txn.get(records, asBytes("a"))) == "A");
  CHECK_FALSE(txn.get(records, asBytes("b")).has_value());
  CHECK_FALSE(txn.get(records, asBytes("c")).has_value());
  CHECK(str(txn.get(records, asBytes("d"))) == "D");
  CHECK(store->stats().requests == 5);
  CHECK(store->stats().commits == 2);  // the gate's, then one for the four
  CHECK(store->stats().reruns == 2);   // without b, then without b and c
}

TEST_CASE("Store: decided() runs once per request that commits, before the commit and its done()") {
  TempDir dir;
  auto store = openStore(testConfig(dir.store(), true));
  const Db& records = store->db("records");
  std::atomic<int> finished{0};
  WriterGate gate;
  gate.close(*store, finished);
  // Every callback runs on the writer thread, one at a time.
  std::vector<std::string> events;
  auto request = [&](std::string name, bool fail) {
    store->submit(
        [&records, name, fail](WriteTxn& txn) -> Status {
          CCAL_TRY(txn.put(records, asBytes(name), asBytes(name)));
          if (fail) return makeError(Errc::invalid_transaction, name + " refuses");
          return {};
        },
        [&events, &store, name] {
          // Before the commit: only the gate's is counted, the write is not yet visible elsewhere.
          events.push_back("decided " + name + " after " + std::to_string(store->stats().commits) +
                           " commit(s)");
        },
        [&events, &finished, name](const Status& status) {
          events.push_back("done " + name + (status.ok() ? " ok" : " " + status.error().message));
          ++finished;
        });
  };
  request("a", false);
  request("b", true);  // writes, then fails: the batch runs again without it
  request("c", false);
  gate.open();
  waitFor(finished, 4);
  CHECK(store->stats().reruns == 1);
  CHECK(store->stats().commits == 2);
  const std::vector<std::string> expected = {"decided a after 1 commit(s)",
                                             "decided c after 1 commit(s)", "done a ok",
                                             "done b b refuses", "done c ok"};
  CHECK(events == expected);
  // write() and the two-argument submit() have no decided(): unchanged.
  CHECK(store->write([&](WriteTxn& txn) { return txn.put(records, asBytes("d"), asBytes("D")); })
            .ok());
  CHECK(str(store->read().get(records, asBytes("c"))) == "c");
  CHECK_FALSE(store->read().get(records, asBytes("b")).has_value());
}

TEST_CASE("Store: a request refused before it writes costs its batch no re-run") {
  TempDir dir;
  auto store = openStore(testConfig(dir.store()));
  const Db& records = store->db("records");
  std::atomic<int> finished{0};
  WriterGate gate;
  gate.close(*store, finished);
  std::vector<Status> results(3);
  auto record = [&](size_t i) {
    return [&results, &finished, i](const Status& status) {
      results[i] = status;
      ++finished;
    };
  };
  store->submit([&](WriteTxn& txn) { return txn.put(records, asBytes("a"), asBytes("A")); },
                record(0));
  store->submit(
      [&](WriteTxn& txn) -> Status {
        if (txn.get(records, asBytes("a"))) return makeError(Errc::conflict, "a is taken");
        return txn.put(records, asBytes("a"), asBytes("other"));
      },
      record(1));
  store->submit([&](WriteTxn& txn) { return txn.put(records, asBytes("b"), asBytes("B")); },
                record(2));
  gate.open();
  waitFor(finished, 4);
  CHECK(results[0].ok());
  CHECK(results[1].error().code == Errc::conflict);
  CHECK(results[2].ok());
  CHECK(store->stats().reruns == 0);
  CHECK(store->stats().commits == 2);
  CHECK(str(store->read().get(records, asBytes("a"))) == "A");
}

TEST_CASE("Store: many requests failing after writing: bounded re-runs, each its own outcome") {
  TempDir dir;
  auto store = openStore(testConfig(dir.store()));
  const Db& records = store->db("records");
  std::atomic<int> finished{0};
  WriterGate gate;
  gate.close(*store, finished);
  constexpr int n = 40;  // every third fails after writing: more than the re-run bound
  std::vector<Status> results(n);
  std::vector<int> runs(n, 0);
  for (int i = 0; i < n; ++i) {
    store->submit(
        [&, i](WriteTxn& txn) -> Status {
          ++runs[i];
          CCAL_TRY(txn.put(records, be64(i), asBytes("v")));
          if (i % 3 == 1) return makeError(Errc::invalid_transaction, "request " + std::to_string(i));
          return {};
        },
        [&, i](const Status& status) {
          results[i] = status;
          ++finished;
        });
  }
  gate.open();
  waitFor(finished, n + 1);
  ReadTxn txn = store->read();
  for (int i = 0; i < n; ++i) {
    if (i % 3 == 1) {
      CHECK(results[i].error().message == "request " + std::to_string(i));
      CHECK_FALSE(txn.get(records, be64(i)).has_value());
    } else {
      CHECK(results[i].ok());
      CHECK(txn.get(records, be64(i)).has_value());
    }
    CHECK(runs[i] <= 9 + 2);  // at most the re-run bound plus a split and its batch
  }
  CHECK(txn.entries(records) == n - (n + 1) / 3);
  CHECK(store->stats().requests == n + 1);
  CHECK(store->stats().reruns >= 8);
}

TEST_CASE("Store: an exception thrown by a request is its error, and the writer carries on") {
  TempDir dir;
  auto store = openStore(testConfig(dir.store()));
  const Db& records = store->db("records");
  Status thrown = store->write([&](WriteTxn& txn) -> Status {
    CCAL_TRY(txn.put(records, asBytes("x"), asBytes("X")));
    throw std::runtime_error("boom");
  });
  REQUIRE_FALSE(thrown.ok());
  CHECK(thrown.error().code == Errc::storage_error);
  CHECK(thrown.error().message.find("boom") != std::string::npos);
  CHECK(thrown.error().message.find("rolled back") != std::string::npos);

  Status odd = store->write([](WriteTxn&) -> Status { throw 42; });
  REQUIRE_FALSE(odd.ok());
  CHECK(odd.error().message.find("non-standard") != std::string::npos);

  REQUIRE(store->write([&](WriteTxn& txn) { return txn.put(records, asBytes("y"), asBytes("Y")); })
              .ok());
  ReadTxn txn = store->read();
  CHECK_FALSE(txn.get(records, asBytes("x")).has_value());
  CHECK(str(txn.get(records, asBytes("y"))) == "Y");
  CHECK(store->stats().commits == 1);  // failed-only batches cost no commit
}

TEST_CASE("Store: keys LMDB cannot hold fail their own request only") {
  TempDir dir;
  auto store = openStore(testConfig(dir.store()));
  const Db& records = store->db("records");
  Status too_long =
      store->write([&](WriteTxn& txn) { return txn.put(records, Bytes(600, 'k'), asBytes("v")); });
  REQUIRE_FALSE(too_long.ok());
  CHECK(too_long.error().code == Errc::too_large);
  CHECK(too_long.error().message.find("600 bytes") != std::string::npos);
  Status empty =
      store->write([&](WriteTxn& txn) { return txn.put(records, ByteView(), asBytes("v")); });
  REQUIRE_FALSE(empty.ok());
  CHECK(empty.error().code == Errc::malformed);
  // A large value is fine (LMDB stores it in overflow pages).
  Bytes big = payload(7, 1 << 20);
  REQUIRE(store->write([&](WriteTxn& txn) { return txn.put(records, asBytes("big"), big); }).ok());
  CHECK(same(store->read().get(records, asBytes("big")), big));
}

TEST_CASE("Store: submit() blocks while the queue is full") {
  TempDir dir;
  StoreConfig config = testConfig(dir.store());
  config.write_queue_max = 2;
  config.write_batch_max = 1;
  auto store = openStore(config);
  const Db& records = store->db("records");
  std::atomic<int> finished{0};
  WriterGate gate;
  gate.close(*store, finished);  // the writer holds this one; the queue is empty
  auto put = [&](std::string key) {
    return [&records, key](WriteTxn& txn) { return txn.put(records, asBytes(key), asBytes("v")); };
  };
  auto count = [&](const Status& status) {
    CHECK(status.ok());
    ++finished;
  };
  store->submit(put("1"), count);
  store->submit(put("2"), count);  // the queue is now full
  std::atomic<bool> third_queued{false};
  std::thread third([&] {
    store->submit(put("3"), count);
    third_queued = true;
  });
  std::this_thread::sleep_for(100ms);
  CHECK_FALSE(third_queued.load());
  gate.open();
  third.join();
  CHECK(third_queued.load());
  waitFor(finished, 4);
  CHECK(store->read().entries(records) == 3);
  CHECK(store->stats().commits == 4);  // write_batch_max = 1: one commit per request
}

TEST_CASE(
    "Store: writes submitted under a Hold share one commit, and a full queue does not block them") {
  TempDir dir;
  StoreConfig config = testConfig(dir.store(), /*durable=*/true);
  config.write_queue_max = 2;
  auto store = openStore(config);
  const Db& records = store->db("records");
  auto put = [&](std::string key) {
    return [&records, key](WriteTxn& txn) { return txn.put(records, asBytes(key), asBytes("v")); };
  };
  std::atomic<int> finished{0};
  auto count = [&](const Status& status) {
    CHECK(status.ok());
    ++finished;
  };
  const uint64_t commits_before = store->stats().commits;
  WriterGate gate;
  gate.close(*store, finished);  // a group under way
  {
    Store::Hold hold = store->hold();
    gate.open();
    waitFor(finished, 1);  // the group under way finishes while held
    for (int i = 0; i < 5; ++i)
      store->submit(put("k" + std::to_string(i)), count);  // over write_queue_max
    std::this_thread::sleep_for(50ms);
    CHECK(finished.load() == 1);  // no new group starts while held
    Store::Hold moved = std::move(hold);
    std::this_thread::sleep_for(10ms);
    CHECK(finished.load() == 1);
  }
  waitFor(finished, 6);
  CHECK(store->read().entries(records) == 5);
  CHECK(store->stats().commits == commits_before + 2);
}

TEST_CASE("Store: closing drains the queued writes") {
  TempDir dir;
  constexpr int count = 300;
  std::atomic<int> ok{0};
  {
    auto store = openStore(testConfig(dir.store()));
    for (int n = 0; n < count; ++n) {
      Store* s = store.get();
      store->submit(
          [s, n](WriteTxn& txn) { return putRecord(*s, txn, static_cast<uint64_t>(n), 64); },
          [&ok](const Status& status) { ok += status.ok() ? 1 : 0; });
    }
  }  // ~Store: every queued request runs and is told before the writer stops
  CHECK(ok.load() == count);
  auto store = openStore(testConfig(dir.store()));
  checkRecords(*store, count, 64);
}

TEST_CASE("Store: another program's or another version's file is refused with both names") {
  TempDir dir;
  { auto store = openStore(testConfig(dir.store())); }
  const std::string file = dir.store() + "/data.mdb";

  auto other_name = Store::open(testConfig(dir.store()), db_names, "ccal.notary", 1);
  REQUIRE_FALSE(other_name.ok());
  CHECK(other_name.error().code == Errc::schema_mismatch);
  CHECK(other_name.error().message == file + " was made by 'ccal.vault.test', not 'ccal.notary'");

  auto other_version = Store::open(testConfig(dir.store()), db_names, schema, 2);
  REQUIRE_FALSE(other_version.ok());
  CHECK(other_version.error().code == Errc::schema_mismatch);
  const std::string& message = other_version.error().message;
  CHECK(message.find(file) != std::string::npos);
  CHECK(message.find("version 1") != std::string::npos);
  CHECK(message.find("version 2") != std::string::npos);

  auto same_again = Store::open(testConfig(dir.store()), db_names, schema, 1);
  CHECK(same_again.ok());
}

TEST_CASE("Store: an LMDB file without the stamp is refused") {
  TempDir dir;
  std::filesystem::create_directory(dir.store());
  // Another program's LMDB file: keys in the main database, no meta.
  MDB_env* env = nullptr;
  REQUIRE(mdb_env_create(&env) == 0);
  REQUIRE(mdb_env_open(env, dir.store().c_str(), 0, 0600) == 0);
  MDB_txn* txn = nullptr;
  REQUIRE(mdb_txn_begin(env, nullptr, 0, &txn) == 0);
  MDB_dbi main_db = 0;
  REQUIRE(mdb_dbi_open(txn, nullptr, 0, &main_db) == 0);
  std::string k = "config", v = "whatever";
  MDB_val key{k.size(), k.data()}, value{v.size(), v.data()};
  REQUIRE(mdb_put(txn, main_db, &key, &value, 0) == 0);
  REQUIRE(mdb_txn_commit(txn) == 0);
  mdb_env_close(env);

  auto opened = Store::open(testConfig(dir.store()), db_names, schema, 1);
  REQUIRE_FALSE(opened.ok());
  CHECK(opened.error().code == Errc::schema_mismatch);
  CHECK(opened.error().message.find("made by another program") != std::string::npos);
}

TEST_CASE("Store: a data.mdb that is not LMDB gives an error, not a crash") {
  TempDir dir;
  std::filesystem::create_directory(dir.store());
  const std::string file = dir.store() + "/data.mdb";
  std::mt19937_64 rng(7);
  for (size_t size : {size_t{100}, size_t{4096}, size_t{64 * 1024}}) {
    CAPTURE(size);
    Bytes garbage(size);
    for (auto& b : garbage) b = static_cast<uint8_t>(rng());
    writeFile(file, garbage);
    auto opened = Store::open(testConfig(dir.store()), db_names, schema, 1);
    REQUIRE_FALSE(opened.ok());
    CHECK(opened.error().code == Errc::schema_mismatch);
    CHECK(opened.error().message.find(file) != std::string::npos);
    CHECK(opened.error().message.find("not an LMDB file") != std::string::npos);
  }
  std::string text = "# not a database\n";
  writeFile(file, Bytes(text.begin(), text.end()));
  CHECK_FALSE(Store::open(testConfig(dir.store()), db_names, schema, 1).ok());
}

TEST_CASE("Store: bad paths and settings are errors") {
  TempDir dir;
  const std::string plain_file = dir.root + "/a-file";
  writeFile(plain_file, Bytes{1, 2, 3});
  auto on_file = Store::open(testConfig(plain_file), db_names, schema, 1);
  REQUIRE_FALSE(on_file.ok());
  CHECK(on_file.error().message.find("not a directory") != std::string::npos);

  StoreConfig no_path = testConfig("");
  CHECK(Store::open(no_path, db_names, schema, 1).error().code == Errc::malformed);
  StoreConfig tiny = testConfig(dir.store());
  tiny.map_size_bytes = 4096;
  CHECK(Store::open(tiny, db_names, schema, 1).error().code == Errc::malformed);
  StoreConfig low_max = testConfig(dir.store());
  low_max.map_size_max_bytes = low_max.map_size_bytes / 2;
  auto refused = Store::open(low_max, db_names, schema, 1);
  CHECK(refused.error().code == Errc::malformed);
  CHECK(refused.error().message.find("map_size_max_bytes") != std::string::npos);
  StoreConfig no_batch = testConfig(dir.store());
  no_batch.write_batch_max = 0;
  CHECK(Store::open(no_batch, db_names, schema, 1).error().code == Errc::malformed);

  // A nested path is created, parents included.
  auto nested = Store::open(testConfig(dir.root + "/x/y/store"), db_names, schema, 1);
  CHECK(nested.ok());
}

TEST_CASE("Store: one directory is opened once per process") {
  TempDir dir;
  auto first = openStore(testConfig(dir.store()));
  auto second = Store::open(testConfig(dir.store()), db_names, schema, 1);
  REQUIRE_FALSE(second.ok());
  CHECK(second.error().message.find("already open in this process") != std::string::npos);
  first.reset();
  CHECK(Store::open(testConfig(dir.store()), db_names, schema, 1).ok());
}

TEST_CASE("Store: a full map grows, up to its maximum, and keeps everything") {
  TempDir dir;
  StoreConfig config = testConfig(dir.store());
  config.map_size_bytes = 1ull << 20;
  config.map_size_max_bytes = 4ull << 20;
  constexpr size_t value_size = 3000;
  auto store = openStore(config);
  uint64_t acked = 0;
  Status failure;
  for (uint64_t n = 0; n < 5000; ++n) {
    Status status =
        store->write([&](WriteTxn& txn) { return putRecord(*store, txn, n, value_size); });
    if (!status.ok()) {
      failure = status;
      break;
    }
    ++acked;
  }
  // Far more than 1 MiB holds, then the maximum is reached with a clear error.
  CHECK(acked * value_size > (2ull << 20));
  CHECK(store->stats().map_grows == 2);
  CHECK(store->stats().map_size_bytes == (4ull << 20));
  REQUIRE_FALSE(failure.ok());
  CHECK(failure.error().code == Errc::storage_full);
  CHECK(failure.error().message.find("map_size_max_bytes") != std::string::npos);
  checkRecords(*store, acked, value_size);
}

TEST_CASE("Store: the map does not grow under an open read transaction; it says why") {
  TempDir dir;
  StoreConfig config = testConfig(dir.store());
  config.map_size_bytes = 1ull << 20;
  config.map_size_max_bytes = 4ull << 20;
  constexpr size_t value_size = 3000;
  auto store = openStore(config);
  uint64_t acked = 0;
  Status failure;
  {
    ReadTxn held = store->read();  // e.g. a long query
    for (uint64_t n = 0; n < 5000; ++n) {
      Status status =
          store->write([&](WriteTxn& txn) { return putRecord(*store, txn, n, value_size); });
      if (!status.ok()) {
        failure = status;
        break;
      }
      ++acked;
    }
  }
  REQUIRE_FALSE(failure.ok());
  CHECK(failure.error().code == Errc::storage_full);
  CHECK(failure.error().message.find("while no read transaction is open") != std::string::npos);
  CHECK(store->stats().map_grows == 0);
  // Once the reader is gone, the pages it kept are free again, and when
  // they are used up the map grows: the writes go on succeeding.
  uint64_t n = acked;
  for (; n < acked + 5000 && store->stats().map_grows == 0; ++n) {
    REQUIRE(store->write([&](WriteTxn& txn) { return putRecord(*store, txn, n, value_size); })
                .ok());
  }
  CHECK(store->stats().map_grows == 1);
  checkRecords(*store, n, value_size);
}

TEST_CASE("Store: a full map gives an error naming the setting, and loses nothing") {
  TempDir dir;
  StoreConfig config = testConfig(dir.store());
  config.map_size_bytes = 1ull << 20;
  config.map_size_max_bytes = 1ull << 20;  // no growth
  constexpr size_t value_size = 3000;
  uint64_t acked = 0;
  Status failure;
  {
    auto store = openStore(config);
    for (uint64_t n = 0; n < 1000; ++n) {
      Status status =
          store->write([&](WriteTxn& txn) { return putRecord(*store, txn, n, value_size); });
      if (!status.ok()) {
        failure = status;
        break;
      }
      ++acked;
    }
    REQUIRE_FALSE(failure.ok());
    MESSAGE("after " << acked << " records: " << failure.error().toString());
    CHECK(acked > 10);
    CHECK(failure.error().code == Errc::storage_full);
    CHECK(failure.error().message.find("map_size_bytes") != std::string::npos);
    CHECK(failure.error().message.find("vault.map_size_mb") != std::string::npos);
    // Reads still work, everything acknowledged is there, and the store keeps
    // answering writes (with the same error) rather than dying.
    checkRecords(*store, acked, value_size);
    Status again =
        store->write([&](WriteTxn& txn) { return putRecord(*store, txn, acked, value_size); });
    CHECK(again.error().code == Errc::storage_full);
    checkRecords(*store, acked, value_size);
  }
  // With a bigger map the same file takes more.
  config.map_size_bytes = 8ull << 20;
  config.map_size_max_bytes = 8ull << 20;
  auto store = openStore(config);
  checkRecords(*store, acked, value_size);
  REQUIRE(
      store->write([&](WriteTxn& txn) { return putRecord(*store, txn, acked, value_size); }).ok());
  checkRecords(*store, acked + 1, value_size);
}

// The child of the disk-full test: fills the store under a small file size
// limit and reports, through `fd`, how many records were acknowledged and the
// error that stopped it. No doctest here: it runs in a forked process.
// Sends the child's outcome to the parent and ends the child.
[[noreturn]] void reportAndExit(int fd, uint64_t acked, const Error& error) {
  const std::string& message = error.message;
  auto code = static_cast<uint16_t>(error.code);
  Bytes out;
  appendU64(out, acked);
  out.push_back(static_cast<uint8_t>(code));
  out.push_back(static_cast<uint8_t>(code >> 8));
  appendU32(out, static_cast<uint32_t>(message.size()));
  append(out, asBytes(message));
  ssize_t written = ::write(fd, out.data(), out.size());
  ::_exit(written == static_cast<ssize_t>(out.size()) ? 0 : 3);
}

[[noreturn]] void fillUnderFileSizeLimit(const std::string& path, int fd, size_t value_size) {
  auto opened = Store::open(testConfig(path, /*durable=*/true), db_names, schema, 1);
  if (!opened.ok()) reportAndExit(fd, 0, opened.error());
  auto store = std::move(opened).value();
  ::signal(SIGXFSZ, SIG_IGN);  // a write past the limit fails with EFBIG instead of killing us
  struct rlimit limit {};
  limit.rlim_cur = limit.rlim_max = 512 * 1024;
  if (::setrlimit(RLIMIT_FSIZE, &limit) != 0)
    reportAndExit(fd, 0, makeError(Errc::storage_error, "setrlimit"));
  for (uint64_t n = 0; n < 10000; ++n) {
    Status status =
        store->write([&](WriteTxn& txn) { return putRecord(*store, txn, n, value_size); });
    if (!status.ok()) {
      // The store stays usable for reads after a failed commit.
      if (store->read().entries(store->db("records")) != n) {
        reportAndExit(fd, n, makeError(Errc::storage_error, "reads after the failure are wrong"));
      }
      reportAndExit(fd, n, status.error());
    }
  }
  reportAndExit(fd, 10000, makeError(Errc::storage_error, "the file size limit was never reached"));
}

TEST_CASE("Store: a full disk (a file size limit, in a child) loses nothing acknowledged") {
  TempDir dir;
  constexpr size_t value_size = 3000;
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  // This process has no other threads here: every earlier Store is closed.
  pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::close(fds[0]);
    fillUnderFileSizeLimit(dir.store(), fds[1], value_size);
  }
  ::close(fds[1]);
  Bytes got;
  uint8_t buffer[4096];
  for (ssize_t n; (n = ::read(fds[0], buffer, sizeof buffer)) > 0;)
    got.insert(got.end(), buffer, buffer + n);
  ::close(fds[0]);
  int wstatus = 0;
  REQUIRE(::waitpid(child, &wstatus, 0) == child);
  REQUIRE(WIFEXITED(wstatus));
  REQUIRE(WEXITSTATUS(wstatus) == 0);
  REQUIRE(got.size() >= 14);
  uint64_t acked = 0;
  for (int i = 7; i >= 0; --i) acked = (acked << 8) | got[i];
  auto code = static_cast<Errc>(got[8] | (got[9] << 8));
  std::string message(got.begin() + 14, got.end());
  MESSAGE("child: " << acked << " records acknowledged, then " << std::string(errcName(code))
                    << ": " << message);
  CHECK(acked > 10);
  CHECK(code == Errc::storage_full);
  CHECK(message.find("file size limit") != std::string::npos);
  CHECK(message.find(dir.store() + "/data.mdb") != std::string::npos);

  auto store = openStore(testConfig(dir.store(), /*durable=*/true));
  checkRecords(*store, acked, value_size);
}

namespace {
// Runs `misuse` in a forked child, whose stderr is silenced, and tells
// whether it died of an assertion (SIGABRT).
template <class Fn>
bool abortsInChild(Fn misuse) {
  pid_t child = ::fork();
  CCAL_ASSERT(child >= 0);
  if (child == 0) {
    std::freopen("/dev/null", "w", stderr);
    misuse();
    ::_exit(0);
  }
  int wstatus = 0;
  CCAL_ASSERT(::waitpid(child, &wstatus, 0) == child);
  return WIFSIGNALED(wstatus) && WTERMSIG(wstatus) == SIGABRT;
}
}  // namespace

TEST_CASE("Store: misuse that would corrupt memory or deadlock is an assertion") {
  TempDir dir;
  // A read transaction still open when its Store closes.
  CHECK(abortsInChild([&] {
    auto store = std::move(Store::open(testConfig(dir.store()), db_names, schema, 1)).value();
    auto* leaked = new ReadTxn(store->read());
    (void)leaked;
    store.reset();
  }));
  // write() from inside a write request: the writer would wait for itself.
  CHECK(abortsInChild([&] {
    auto store = std::move(Store::open(testConfig(dir.store()), db_names, schema, 1)).value();
    Store* s = store.get();
    (void)store->write([s](WriteTxn&) { return s->write([](WriteTxn&) { return Status(); }); });
  }));
  // A sub-database the store was not opened with.
  CHECK(abortsInChild([&] {
    auto store = std::move(Store::open(testConfig(dir.store()), db_names, schema, 1)).value();
    (void)store->db("no such db");
  }));
  // The control: proper use does not abort.
  CHECK_FALSE(abortsInChild([&] {
    auto store = std::move(Store::open(testConfig(dir.store()), db_names, schema, 1)).value();
    ReadTxn txn = store->read();
  }));
}
