// scripts/bench store: durable, group-committed writes per second.
//
// 1, 4 and 16 writer threads each call Store::write() in a loop, as flows
// recording transactions would. One request is what recording a 2-input,
// 2-output transaction costs the vault: the transaction (~1.5 KB) under its
// id, its 2 inputs marked consumed, its 2 outputs stored, and 8 index entries.
// Every commit is durable (an fsync), so with one writer the rate is the
// disk's commit rate; with more, the writer puts many requests in one commit.
// Reported: requests/s and commits/s, each trial's pair taken from the trial
// with the median request rate. A 16-writer run without fsync is a reference
// for the CPU side, and raw LMDB durable commits of one small put, measured
// in the same run, are the disk's own commit rate (shared machines vary).

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <lmdb.h>
#include <sys/stat.h>

#include "test/bench/bench.h"
#include "vault/store.h"

using namespace ccal;
using namespace ccal::vault;

namespace {

constexpr size_t transaction_bytes = 1500;
constexpr size_t state_bytes = 300;
constexpr int index_entries = 8;
constexpr int puts_per_request = 1 + 2 + 2 + index_entries;

const std::vector<std::string> db_names = {"transactions", "states", "indexes"};

uint64_t splitmix(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

Bytes randomBytes(uint64_t& state, size_t size) {
  Bytes out(size);
  for (size_t i = 0; i < size; i += 8) {
    uint64_t x = splitmix(state);
    for (size_t j = 0; j < 8 && i + j < size; ++j) out[i + j] = static_cast<uint8_t>(x >> (8 * j));
  }
  return out;
}

// One writer's view of "its" ledger: the outputs it may spend next.
struct Writer {
  uint64_t rng;
  std::vector<Bytes> unspent;  // state refs: 32-byte tx id + 4-byte index

  explicit Writer(uint64_t seed) : rng(seed) {}

  Status record(Store& store, WriteTxn& txn) {
    const Db& transactions = store.db("transactions");
    const Db& states = store.db("states");
    const Db& indexes = store.db("indexes");
    Bytes tx_id = randomBytes(rng, 32);
    CCAL_TRY(txn.put(transactions, tx_id, randomBytes(rng, transaction_bytes)));
    // Two inputs: earlier outputs, marked consumed (or fresh refs at the start).
    for (int i = 0; i < 2; ++i) {
      Bytes input;
      if (unspent.empty()) {
        input = randomBytes(rng, 36);
      } else {
        input = std::move(unspent.back());
        unspent.pop_back();
      }
      CCAL_TRY(txn.put(states, input, randomBytes(rng, state_bytes)));
    }
    // Two outputs.
    for (uint32_t i = 0; i < 2; ++i) {
      Bytes ref = tx_id;
      appendU32(ref, i);
      CCAL_TRY(txn.put(states, ref, randomBytes(rng, state_bytes)));
      if (unspent.size() < 64) unspent.push_back(std::move(ref));
    }
    // Index entries: (kind, party or contract hash, state ref) -> nothing.
    for (int i = 0; i < index_entries; ++i) {
      Bytes key = {static_cast<uint8_t>('a' + i)};
      append(key, randomBytes(rng, 32));
      append(key, tx_id);
      CCAL_TRY(txn.put(indexes, key, ByteView()));
    }
    return {};
  }
};

struct Figures {
  double requests_per_s = 0;
  double commits_per_s = 0;
};

// A fresh store, `threads` writers, the trial with the median request rate.
Figures measure(const bench::Options& options, int threads, bool durable) {
  std::string pattern = "/tmp/ccal-bench-store-XXXXXX";
  if (::mkdtemp(pattern.data()) == nullptr) {
    std::perror("bench: mkdtemp");
    std::exit(1);
  }
  std::vector<Figures> trials;
  {
    StoreConfig config;
    config.path = pattern + "/store";
    config.map_size_bytes = 16ull << 30;
    config.durable = durable;
    auto opened = Store::open(config, db_names, "ccal.bench.store", 1);
    if (!opened.ok()) {
      std::fprintf(stderr, "bench: %s\n", opened.error().toString().c_str());
      std::exit(1);
    }
    Store& store = *opened.value();
    std::vector<Writer> writers;
    for (int t = 0; t < threads; ++t) writers.emplace_back(static_cast<uint64_t>(t) * 7919 + 1);

    using Clock = std::chrono::steady_clock;
    auto run = [&](double seconds) {
      std::atomic<bool> failed{false};
      auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
      std::vector<std::thread> running;
      for (int t = 0; t < threads; ++t) {
        running.emplace_back([&, t] {
          while (Clock::now() < deadline) {
            Status status =
                store.write([&](WriteTxn& txn) { return writers[t].record(store, txn); });
            if (!status.ok()) {
              std::fprintf(stderr, "bench: %s\n", status.error().toString().c_str());
              failed = true;
              return;
            }
          }
        });
      }
      for (auto& thread : running) thread.join();
      if (failed) std::exit(1);
    };

    run(options.trial_seconds / 4);  // warm up: first pages, first fsyncs
    for (int trial = 0; trial < options.trials; ++trial) {
      Store::Stats before = store.stats();
      auto start = Clock::now();
      run(options.trial_seconds);
      double seconds = std::chrono::duration<double>(Clock::now() - start).count();
      Store::Stats after = store.stats();
      trials.push_back({static_cast<double>(after.requests - before.requests) / seconds,
                        static_cast<double>(after.commits - before.commits) / seconds});
    }
  }
  std::error_code ec;
  std::filesystem::remove_all(pattern, ec);
  std::sort(trials.begin(), trials.end(),
            [](const Figures& a, const Figures& b) { return a.requests_per_s < b.requests_per_s; });
  return trials[trials.size() / 2];
}

// Durable commits per second of raw LMDB, one 8-byte key and 300-byte value
// each: the floor that one writer without group commit cannot beat.
double rawCommitRate(const bench::Options& options) {
  std::string pattern = "/tmp/ccal-bench-lmdb-XXXXXX";
  if (::mkdtemp(pattern.data()) == nullptr) {
    std::perror("bench: mkdtemp");
    std::exit(1);
  }
  MDB_env* env = nullptr;
  MDB_txn* txn = nullptr;
  MDB_dbi dbi = 0;
  bool ok = mdb_env_create(&env) == 0 && mdb_env_set_mapsize(env, 1ull << 30) == 0 &&
            mdb_env_open(env, pattern.c_str(), 0, 0600) == 0 &&
            mdb_txn_begin(env, nullptr, 0, &txn) == 0 && mdb_dbi_open(txn, nullptr, 0, &dbi) == 0 &&
            mdb_txn_commit(txn) == 0;
  if (!ok) {
    std::fprintf(stderr, "bench: raw LMDB setup failed\n");
    std::exit(1);
  }
  uint64_t rng = 1;
  Bytes value(state_bytes, 0x5a);
  bench::Options fewer = options;
  fewer.trial_seconds = options.trial_seconds / 2;
  double rate = bench::medianRate(fewer, [&] {
    uint64_t key = splitmix(rng);
    MDB_val k{sizeof key, &key}, v{value.size(), value.data()};
    if (mdb_txn_begin(env, nullptr, 0, &txn) != 0 || mdb_put(txn, dbi, &k, &v, 0) != 0 ||
        mdb_txn_commit(txn) != 0) {
      std::fprintf(stderr, "bench: raw LMDB commit failed\n");
      std::exit(1);
    }
  });
  mdb_env_close(env);
  std::error_code ec;
  std::filesystem::remove_all(pattern, ec);
  return rate;
}

}  // namespace

int main(int argc, char** argv) {
  auto options = bench::Options::fromArgs(argc, argv);
  const int thread_counts[] = {1, 4, 16};
  Figures durable[3];
  for (int i = 0; i < 3; ++i) durable[i] = measure(options, thread_counts[i], true);
  Figures no_fsync = measure(options, 16, false);
  double raw_commits = rawCommitRate(options);

  std::printf("CCAL store benchmark (LMDB, median of %d trials of %.2fs)\n", options.trials,
              options.trial_seconds);
  std::printf("  one request = a 2-in 2-out transaction recorded: %d puts, ~%zu bytes\n",
              puts_per_request,
              transaction_bytes + 4 * state_bytes + index_entries * (1 + 32 + 32));
  std::printf("  raw LMDB durable commits (1 put each), same run: %.0f /s\n", raw_commits);
  std::printf("  writers   requests/s    commits/s   requests/commit\n");
  for (int i = 0; i < 3; ++i) {
    std::printf("  %7d   %10.0f   %10.0f   %15.1f   durable\n", thread_counts[i],
                durable[i].requests_per_s, durable[i].commits_per_s,
                durable[i].requests_per_s / std::max(durable[i].commits_per_s, 1e-9));
  }
  std::printf("  %7d   %10.0f   %10.0f   %15.1f   no fsync (reference)\n", 16,
              no_fsync.requests_per_s, no_fsync.commits_per_s,
              no_fsync.requests_per_s / std::max(no_fsync.commits_per_s, 1e-9));
  std::printf(
      "{\"bench\":\"store\",\"puts_per_request\":%d,"
      "\"w1_requests_per_s\":%.0f,\"w1_commits_per_s\":%.0f,"
      "\"w4_requests_per_s\":%.0f,\"w4_commits_per_s\":%.0f,"
      "\"w16_requests_per_s\":%.0f,\"w16_commits_per_s\":%.0f,"
      "\"w16_nosync_requests_per_s\":%.0f,\"w16_nosync_commits_per_s\":%.0f,"
      "\"raw_lmdb_commits_per_s\":%.0f}\n",
      puts_per_request, durable[0].requests_per_s, durable[0].commits_per_s,
      durable[1].requests_per_s, durable[1].commits_per_s, durable[2].requests_per_s,
      durable[2].commits_per_s, no_fsync.requests_per_s, no_fsync.commits_per_s, raw_commits);
  return 0;
}
