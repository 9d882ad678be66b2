// scripts/bench vault: the vault on LMDB under load.
//
//  1. Transactions recorded per second, durably, with group commit: 2-input,
//     2-output token moves recorded by the one writer that batches many
//     records into one fsync'd commit. Two figures: pre-verified
//     transactions (VerifiedTransaction: a flow that verified them hands
//     them over; the target), and transactions whose signatures the vault
//     checks on the recording threads. Median of trials, each on a fresh
//     vault.
//  2. Query latency p50/p99 for a 200-row page, by state type and by a
//     declared field, at 100k and 1M states (1M in the full run).
//  3. Vault open time at the largest size.
// Targets (2 cores): >= 20,000 recorded tx/s durably; page p99 <= 5 ms at 1M
// states; open <= 1 s.
// With the recording rate: the last pre-verified trial's commits, requests
// per commit, milliseconds per commit (page writes and syncs, idle syncs
// included) and the writer's idle syncs (Store::Stats), and the CPU per
// transaction of the writer thread and of the process.
//
// Knobs for investigation: --record-only skips the 1M-state part;
// CCAL_BENCH_BATCH=N sets the writer's batch size; CCAL_BENCH_NOSYNC=1
// records without fsync (the report says so); CCAL_BENCH_TRIALS=N sets the
// number of recording trials and CCAL_BENCH_PREVERIFIED_ONLY=1 skips the
// trials that check signatures (for profiling; that figure then reads 0).

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <thread>

#include "ledger/testing.h"
#include "test/bench/bench.h"
#include "vault/vault.h"

using namespace ccal;
using namespace ccal::testing;
using namespace ccal::vault;
using Clock = std::chrono::steady_clock;

namespace {

double processCpuSeconds() {
  struct rusage u {};
  ::getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

double secondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

struct Net {
  KeyPair alice = testKey(1), bank = testKey(3), notary_key = testKey(9);
  Party alice_party = testParty("Haikou Fishing Cooperative", alice);
  Party bank_party = testParty("Hainan Rural Bank", bank);
  Party notary = testParty("CCAL Notary", notary_key);
  ContractRegistry registry;
  uint64_t serial = 0;
  std::mt19937_64 rng{42};

  Net() { registry.add(std::make_unique<TestTokenContract>()); }

  TestToken token(int64_t amount) {
    ++serial;
    static const char* currencies[] = {"CNY", "USD", "EUR", "HKD"};
    return TestToken{alice_party.owningKey, bank_party.owningKey, amount,
                     currencies[serial % 4], 1'700'000'000'000'000 + int64_t(rng() % 1'000'000'000),
                     "REF-" + std::to_string(serial),
                     SecureHash::of(asBytes("linear-" + std::to_string(serial)))};
  }

  SignedTransaction issue(size_t outputs) {
    TransactionBuilder b(notary);
    for (size_t i = 0; i < outputs; ++i) b.addOutput(tokenState(notary, token(1 + rng() % 100000)));
    b.addCommand(Command{"ccal.test.Token.Issue", {}, {bank_party.owningKey}});
    SignedTransaction stx(b.build().value());
    stx.signWith(bank);
    return stx;
  }

  SignedTransaction move(const StateRef& a, const StateRef& b) {
    TransactionBuilder tb(notary);
    tb.addInput(a).addInput(b);
    tb.addOutput(tokenState(notary, token(10))).addOutput(tokenState(notary, token(20)));
    tb.addCommand(Command{"ccal.test.Token.Move", {}, {alice_party.owningKey}});
    SignedTransaction stx(tb.build().value());
    stx.signWith(alice).signWith(notary_key);
    return stx;
  }
};

std::unique_ptr<Vault> openVault(Net& net, const std::string& path, bool durable) {
  VaultConfig config;
  config.store.path = path;
  config.store.durable = durable;
  if (const char* batch = std::getenv("CCAL_BENCH_BATCH")) config.store.write_batch_max = std::atoi(batch);
  auto v = Vault::open(config, net.registry, {net.alice.publicKey()});
  if (!v) {
    std::fprintf(stderr, "bench: %s\n", v.error().toString().c_str());
    std::exit(1);
  }
  return std::move(v).value();
}

// Records `txs` with `threads` producers, each keeping up to `window` records
// in flight; returns records per second.
template <class Tx>
double recordAll(Vault& vault, const std::vector<Tx>& txs, int threads, int window) {
  std::atomic<size_t> next{0};
  std::atomic<size_t> failures{0};
  auto start = Clock::now();
  std::vector<std::thread> producers;
  for (int t = 0; t < threads; ++t) {
    producers.emplace_back([&] {
      std::mutex m;
      std::condition_variable cv;
      int in_flight = 0;
      for (size_t i = next++; i < txs.size(); i = next++) {
        {
          std::unique_lock<std::mutex> lock(m);
          cv.wait(lock, [&] { return in_flight < window; });
          ++in_flight;
        }
        vault.recordAsync(txs[i], RecordMode::only_relevant, [&](const Status& s) {
          if (!s.ok()) ++failures;
          std::lock_guard<std::mutex> lock(m);
          --in_flight;
          cv.notify_one();
        });
      }
      std::unique_lock<std::mutex> lock(m);
      cv.wait(lock, [&] { return in_flight == 0; });
    });
  }
  for (auto& p : producers) p.join();
  double rate = static_cast<double>(txs.size()) / secondsSince(start);
  if (failures > 0) {
    std::fprintf(stderr, "bench: %zu records failed\n", failures.load());
    std::exit(1);
  }
  return rate;
}

struct Latency {
  double p50_ms = 0, p99_ms = 0;
  uint64_t total = 0;
};

template <class MakeQuery>
Latency measure(Vault& vault, int runs, MakeQuery&& make) {
  std::vector<double> ms;
  uint64_t total = 0;
  for (int i = 0; i < runs; ++i) {
    Query q = make(i);
    auto start = Clock::now();
    auto page = vault.query(q);
    ms.push_back(secondsSince(start) * 1000);
    if (!page) {
      std::fprintf(stderr, "bench: query failed: %s\n", page.error().toString().c_str());
      std::exit(1);
    }
    total = page->total;
  }
  std::sort(ms.begin(), ms.end());
  return Latency{ms[ms.size() / 2], ms[std::min(ms.size() - 1, ms.size() * 99 / 100)], total};
}

}  // namespace

int main(int argc, char** argv) {
  auto options = bench::Options::fromArgs(argc, argv);
  bool quick = options.trials < 7;
  bool record_only = argc > 1 && std::string(argv[argc - 1]) == "--record-only";
  std::string base = "/tmp/ccal-bench-vault-" + std::to_string(::getpid());
  std::filesystem::remove_all(base);
  Net net;

  // 1. Durable recording of 2-in/2-out moves.
  const size_t moves = quick ? 500 : 20000;
  int trials = quick ? 1 : 5;
  if (const char* t = std::getenv("CCAL_BENCH_TRIALS")) trials = std::max(1, std::atoi(t));
  const bool durable = std::getenv("CCAL_BENCH_NOSYNC") == nullptr;
  std::vector<SignedTransaction> issues;
  for (size_t i = 0; i < moves * 2 / 100 + 1; ++i) issues.push_back(net.issue(100));
  std::vector<SignedTransaction> txs;
  for (size_t i = 0; i < moves; ++i) {
    const auto& src = issues[(2 * i) / 100];
    txs.push_back(net.move({src.id(), uint32_t((2 * i) % 100)}, {src.id(), uint32_t((2 * i + 1) % 100)}));
  }
  std::vector<VerifiedTransaction> verified;
  verified.reserve(txs.size());
  auto verify_start = Clock::now();
  for (const auto& t : txs) {
    auto v = VerifiedTransaction::verify(t);
    if (!v) return 1;
    verified.push_back(std::move(v).value());
  }
  double verify_only_rate = static_cast<double>(txs.size()) / secondsSince(verify_start);
  const bool skip_verifying = std::getenv("CCAL_BENCH_PREVERIFIED_ONLY") != nullptr;
  std::vector<double> preverified_rates, verifying_rates;
  // CPU per transaction, which load from elsewhere on the machine barely
  // moves: the writer thread's, and the whole process's.
  std::vector<double> writer_cpu_us, process_cpu_us;
  Store::Stats last_stats, last_before;  // the last pre-verified trial's moves: after - before
  double file_mib = 0;  // the data file after a trial: pages written, deterministic
  for (int t = 0; t < trials; ++t) {
    for (int verifying = 0; verifying < 2; ++verifying) {
      if (verifying && t >= (trials + 1) / 2) continue;  // fewer trials of the slower path
      if (verifying && skip_verifying) continue;
      std::string path = base + "/record-" + std::to_string(t) + "-" + std::to_string(verifying);
      auto vault = openVault(net, path, durable);
      recordAll(*vault, issues, 2, 64);
      const Store::Stats before = vault->store().stats();
      const double cpu_before = processCpuSeconds();
      double rate = verifying ? recordAll(*vault, txs, 2, 4096) : recordAll(*vault, verified, 2, 4096);
      (verifying ? verifying_rates : preverified_rates).push_back(rate);
      if (!verifying) {
        last_stats = vault->store().stats();
        last_before = before;
        writer_cpu_us.push_back(double(last_stats.writer_cpu_micros - before.writer_cpu_micros) /
                                double(moves));
        process_cpu_us.push_back((processCpuSeconds() - cpu_before) * 1e6 / double(moves));
      }
      if (!vault->checkConsistency().ok()) {
        std::fprintf(stderr, "bench: the vault is inconsistent after recording\n");
        return 1;
      }
      vault.reset();
      if (!verifying) file_mib = double(std::filesystem::file_size(path + "/data.mdb")) / (1 << 20);
      std::filesystem::remove_all(path);
    }
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  double record_rate = median(preverified_rates);
  double verifying_rate = verifying_rates.empty() ? 0 : median(verifying_rates);
  const double writer_us = median(writer_cpu_us), process_us = median(process_cpu_us);
  const uint64_t move_commits = last_stats.commits - last_before.commits;
  const uint64_t move_requests = last_stats.requests - last_before.requests;
  const uint64_t move_syncs = last_stats.syncs - last_before.syncs;
  const double commit_ms =
      double(last_stats.commit_micros - last_before.commit_micros) / 1000.0 /
      double(std::max<uint64_t>(1, move_commits));
  char store_stats_note[256];
  std::snprintf(store_stats_note, sizeof store_stats_note,
                "group commit, last trial's moves: %llu commits for %llu requests (%.0f per "
                "commit, %.2f ms per commit), %llu idle syncs, %llu re-runs",
                (unsigned long long)move_commits, (unsigned long long)move_requests,
                double(move_requests) / double(std::max<uint64_t>(1, move_commits)), commit_ms,
                (unsigned long long)move_syncs,
                (unsigned long long)(last_stats.reruns - last_before.reruns));

  // 2 and 3. Queries at growing sizes.
  std::vector<size_t> sizes = quick || record_only ? std::vector<size_t>{2000}
                                                  : std::vector<size_t>{100000, 1000000};
  std::string q_path = base + "/query";
  std::vector<std::pair<size_t, std::array<Latency, 3>>> results;
  double open_seconds = 0;
  {
    auto vault = openVault(net, q_path, /*durable=*/false);  // setup speed; reads are the same
    size_t have = 0;
    for (size_t target : sizes) {
      std::vector<SignedTransaction> batch;
      while (have < target) {
        batch.push_back(net.issue(200));
        have += 200;
      }
      recordAll(*vault, batch, 2, 256);
      const int runs = quick ? 50 : 300;
      std::mt19937_64 rng(7);
      auto by_type = measure(*vault, runs, [&](int i) {
        return Query(Criteria::stateType(std::string(token_state_type)), StatusFilter::unconsumed,
                     RelevanceFilter::all, Sort{"recorded", i % 2 == 0}, 200, 1 + i % 5);
      });
      auto by_field_eq = measure(*vault, runs, [&](int) {
        int64_t amount = 1 + int64_t(rng() % 100000);
        return Query(Criteria::field(std::string(token_state_type), "amount", FieldOp::ge,
                                     {amount}) &&
                         Criteria::field(std::string(token_state_type), "amount", FieldOp::le,
                                         {amount + 500}),
                     StatusFilter::unconsumed, RelevanceFilter::all, Sort{"amount", false}, 200);
      });
      auto by_field_stream = measure(*vault, runs, [&](int) {
        int64_t amount = 1 + int64_t(rng() % 99000);
        return Query(Criteria::field(std::string(token_state_type), "amount", FieldOp::between,
                                     {amount, amount + 1000}),
                     StatusFilter::unconsumed, RelevanceFilter::all, Sort{"amount", false}, 200);
      });
      results.push_back({target, {by_type, by_field_eq, by_field_stream}});
    }
    vault.reset();
    auto start = Clock::now();
    auto reopened = openVault(net, q_path, false);
    auto first = reopened->query(Query(Criteria::stateType(std::string(token_state_type))));
    open_seconds = secondsSince(start);
    if (!first) return 1;
  }
  std::filesystem::remove_all(base);

  std::printf("CCAL vault benchmark (%s)\n", quick ? "quick smoke run" : "full run");
  std::printf("  %s recording, 2-in/2-out moves, %zu transactions, median of %d trials (%s)\n",
              durable ? "durable" : "NOT durable (CCAL_BENCH_NOSYNC)", moves, trials,
              store_stats_note);
  std::printf("    recorded, pre-verified (VerifiedTransaction)  %10.0f tx/s   target >= 20000\n",
              record_rate);
  std::printf("    recorded, signatures checked by the vault     %10.0f tx/s\n", verifying_rate);
  std::printf("    CPU per pre-verified tx: writer thread %.1f us, whole process %.1f us\n"
              "      (so one idle writer core allows %.0f tx/s, two idle cores %.0f tx/s)\n",
              writer_us, process_us, 1e6 / writer_us, std::min(1e6 / writer_us, 2e6 / process_us));
  std::printf("    signature checks alone, one thread            %10.0f tx/s\n", verify_only_rate);
  std::printf("    data file after a trial                       %10.1f MiB\n", file_mib);
  for (const auto& [n, l] : results) {
    std::printf("  200-row page at %zu states:\n", n);
    std::printf("    by type (newest/oldest first, pages 1-5)      p50 %6.2f ms  p99 %6.2f ms  (total %llu)\n",
                l[0].p50_ms, l[0].p99_ms, (unsigned long long)l[0].total);
    std::printf("    by field, amount >= a && amount <= a+500      p50 %6.2f ms  p99 %6.2f ms\n",
                l[1].p50_ms, l[1].p99_ms);
    std::printf("    by field, amount between a and a+1000         p50 %6.2f ms  p99 %6.2f ms\n",
                l[2].p50_ms, l[2].p99_ms);
  }
  std::printf("  open + first query at %zu states                 %6.3f s      target <= 1 s\n",
              sizes.back(), open_seconds);
  const auto& last = results.back();
  std::printf(
      "{\"bench\":\"vault\",\"record_tx_per_s\":%.0f,\"record_verifying_tx_per_s\":%.0f,"
      "\"verify_tx_per_s\":%.0f,\"writer_cpu_us_per_tx\":%.1f,\"process_cpu_us_per_tx\":%.1f,"
      "\"file_mib\":%.1f,\"commits\":%llu,\"requests_per_commit\":%.0f,"
      "\"states\":%zu,"
      "\"type_p50_ms\":%.3f,\"type_p99_ms\":%.3f,\"field_and_p50_ms\":%.3f,\"field_and_p99_ms\":%.3f,"
      "\"field_between_p50_ms\":%.3f,\"field_between_p99_ms\":%.3f,\"open_s\":%.3f}\n",
      record_rate, verifying_rate, verify_only_rate, writer_us, process_us, file_mib,
      (unsigned long long)move_commits, double(move_requests) / double(std::max<uint64_t>(1, move_commits)),
      last.first, last.second[0].p50_ms, last.second[0].p99_ms,
      last.second[1].p50_ms, last.second[1].p99_ms, last.second[2].p50_ms, last.second[2].p99_ms,
      open_seconds);
  return 0;
}
