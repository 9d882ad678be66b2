// scripts/bench notary_sm: the notarisation state machine's execute()
// throughput, durable (fsync per commit), batches of single-input requests.
//
// Each request is a non-validating notarisation of a transaction spending
// one fresh state: execute() decodes and checks it (filtered-transaction
// proofs) on the caller's thread, then one Store write per batch looks up
// and consumes the inputs, stores the batch's effects and lastExecuted, and
// on the durable commit the replica signs the batch's reply root once and
// each success's transaction id. Request bodies are built before timing.
//
// Reported: notarisations/s executing batches one after another (the next
// once the previous is durable, as the protocol does) and pipelined (all
// batches queued), durable commits per batch, the writer's CPU per request,
// and the same with StateRefs whose transaction ids are sequential (LMDB
// appends) to show what random keys cost. Pipelined runs are repeated with
// the signing moved to a replica executor thread (UniquenessConfig::
// complete_on), where the writer's CPU per request is the LMDB work alone.
// Raw Ed25519 sign and verify rates and raw durable LMDB commits are
// measured in the same run, for reference (the machine is shared).
// The replica path runs check() on each request first, as the primary (once)
// and a backup (twice) do, then executes: what a replica's executor spends
// per request on the caller's thread.
// Options: --quick, --batches N, --batch REQUESTS.

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <mutex>
#include <thread>
#include <cstring>
#include <future>
#include <string>
#include <vector>

#include "ledger/filtered_transaction.h"
#include "notary/notarisation_testing.h"
#include "notary/uniqueness.h"

using namespace ccal;
using namespace ccal::notary;
using namespace ccal::notary::testing;
using Clock = std::chrono::steady_clock;

namespace {

struct Options {
  uint32_t batch_requests = 1000;
  uint32_t batches = 40;
  bool quick = false;
};

double seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// Transactions spending one state each; their ids are random (salted Merkle
// roots), the spent states' tx ids either random or a counter.
std::vector<Batch> makeBatches(const TestCluster& cluster, const Options& o, bool sequential_refs,
                               uint64_t first_ref) {
  std::vector<Batch> out;
  uint64_t n = first_ref;
  for (uint32_t b = 0; b < o.batches; ++b) {
    Batch batch;
    batch.seq = b + 1;
    batch.time_micros = 1'000'000;
    for (uint32_t i = 0; i < o.batch_requests; ++i, ++n) {
      StateRef ref;
      if (sequential_refs) {
        std::array<uint8_t, 32> id{};
        for (int k = 0; k < 8; ++k) id[k] = static_cast<uint8_t>(n >> (56 - 8 * k));
        ref = StateRef{SecureHash(id), 0};
      } else {
        ref = stateRef("bench " + std::to_string(n));
      }
      batch.requests.push_back(request(nonValidatingRequest(spend(cluster.party, {ref})), n + 1));
    }
    out.push_back(std::move(batch));
  }
  return out;
}

// The replica's executor: one thread running what is posted to it (the
// signing of each durable batch's replies, with UniquenessConfig::complete_on).
class ThreadExecutor final : public flows::Executor {
 public:
  ThreadExecutor() : thread_([this] { loop(); }) {}
  ~ThreadExecutor() override {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    changed_.notify_all();
    thread_.join();
  }
  void post(std::function<void()> fn) override {
    {
      std::lock_guard lock(mutex_);
      queue_.push_back(std::move(fn));
    }
    changed_.notify_all();
  }
  TimerId runAfter(int64_t, std::function<void()>) override { std::abort(); }
  void cancel(TimerId) override {}

 private:
  void loop() {
    for (;;) {
      std::function<void()> fn;
      {
        std::unique_lock lock(mutex_);
        changed_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;
        fn = std::move(queue_.front());
        queue_.pop_front();
      }
      fn();
    }
  }
  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<std::function<void()>> queue_;
  bool stopping_ = false;
  std::thread thread_;
};

struct RunResult {
  double rate = 0;          // notarisations per second
  double caller_us_per_request = 0;  // replica path: check() calls + the execute() call, caller's thread
  double commits_per_batch = 0;
  double writer_cpu_us_per_request = 0;
  double first_rate = 0, last_rate = 0;  // first and last quarter of the batches
};

RunResult run(const TestCluster& cluster, const std::vector<Batch>& batches, bool pipelined,
              bool sign_off_writer = false) {
  ThreadExecutor executor;
  UniquenessConfig config = cluster.config();
  if (sign_off_writer) config.complete_on = &executor;
  TestReplica replica(config, cluster.replica_keys[0], /*durable*/ true);
  auto before = replica.store->stats();
  size_t requests = 0;
  std::vector<double> batch_seconds;
  auto start = Clock::now();
  if (pipelined) {
    std::vector<std::promise<void>> done(batches.size());
    for (size_t i = 0; i < batches.size(); ++i) {
      replica.sm->execute(batches[i], [&done, i](Result<Executed> r) {
        if (!r.ok()) {
          std::fprintf(stderr, "batch failed: %s\n", r.error().toString().c_str());
          std::abort();
        }
        done[i].set_value();
      });
      requests += batches[i].requests.size();
    }
    for (auto& d : done) d.get_future().get();
  } else {
    for (const auto& b : batches) {
      auto t0 = Clock::now();
      auto executed = replica.execute(b);
      if (!executed.ok()) {
        std::fprintf(stderr, "batch failed: %s\n", executed.error().toString().c_str());
        std::abort();
      }
      batch_seconds.push_back(seconds(t0, Clock::now()));
      requests += b.requests.size();
    }
  }
  double elapsed = seconds(start, Clock::now());
  auto after = replica.store->stats();
  RunResult r;
  r.rate = static_cast<double>(requests) / elapsed;
  r.commits_per_batch = static_cast<double>(after.commits - before.commits) / static_cast<double>(batches.size());
  r.writer_cpu_us_per_request =
      static_cast<double>(after.writer_cpu_micros - before.writer_cpu_micros) / static_cast<double>(requests);
  if (!batch_seconds.empty()) {
    size_t q = std::max<size_t>(1, batch_seconds.size() / 4);
    double first = 0, last = 0;
    for (size_t i = 0; i < q; ++i) first += batch_seconds[i];
    for (size_t i = batch_seconds.size() - q; i < batch_seconds.size(); ++i) last += batch_seconds[i];
    double per_batch = static_cast<double>(batches[0].requests.size());
    r.first_rate = per_batch * static_cast<double>(q) / first;
    r.last_rate = per_batch * static_cast<double>(q) / last;
  }
  return r;
}

// The replica's path: every request check()ed `checks` times before its
// batch executes (the primary checks a request once, on receipt; a backup on
// receipt and again when the pre-prepare carries it), then the batch
// executes once the previous one is durable, signing on a replica executor.
RunResult runReplicaPath(const TestCluster& cluster, const std::vector<Batch>& batches, uint32_t checks) {
  ThreadExecutor executor;
  UniquenessConfig config = cluster.config();
  config.complete_on = &executor;
  TestReplica replica(config, cluster.replica_keys[0], /*durable*/ true);
  size_t requests = 0;
  double caller_seconds = 0;
  auto start = Clock::now();
  for (const auto& b : batches) {
    auto t0 = Clock::now();
    for (const auto& r : b.requests) {
      for (uint32_t k = 0; k < checks; ++k) {
        if (!replica.sm->check(r).ok()) std::abort();
      }
    }
    std::promise<void> done;
    replica.sm->execute(b, [&done](Result<Executed> r) {
      if (!r.ok()) {
        std::fprintf(stderr, "batch failed: %s\n", r.error().toString().c_str());
        std::abort();
      }
      done.set_value();
    });
    caller_seconds += seconds(t0, Clock::now());
    done.get_future().get();
    requests += b.requests.size();
  }
  RunResult r;
  r.rate = static_cast<double>(requests) / seconds(start, Clock::now());
  r.caller_us_per_request = caller_seconds * 1e6 / static_cast<double>(requests);
  return r;
}

double ed25519Rate(bool verify) {
  auto key = ccal::testing::testKey(7);
  Bytes msg(40, 1);
  auto sig = key.sign(msg);
  auto start = Clock::now();
  uint64_t n = 0;
  while (seconds(start, Clock::now()) < 0.3) {
    for (int i = 0; i < 64; ++i) {
      if (verify) {
        (void)sig.verify(msg);
      } else {
        (void)key.sign(msg);
      }
    }
    n += 64;
  }
  return static_cast<double>(n) / seconds(start, Clock::now());
}

// Raw durable commits of one small put each, through the Store, one at a time.
double durableCommitRate() {
  ccal::testing::TempDir dir("ccal-bench-commit");
  auto store = UniquenessStateMachine::openStore(TestReplica::storeConfig(dir.path, true)).value();
  const auto& db = store->db("notary_meta");
  auto start = Clock::now();
  uint64_t n = 0;
  while (seconds(start, Clock::now()) < 0.5) {
    Bytes key = {static_cast<uint8_t>(n), static_cast<uint8_t>(n >> 8)};
    Status s = store->write([&](vault::WriteTxn& txn) { return txn.put(db, key, key); });
    if (!s.ok()) std::abort();
    ++n;
  }
  return static_cast<double>(n) / seconds(start, Clock::now());
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      o.quick = true;
      o.batches = 3;
      o.batch_requests = 200;
    } else if (std::strcmp(argv[i], "--batches") == 0 && i + 1 < argc) {
      o.batches = static_cast<uint32_t>(std::stoul(argv[++i]));
    } else if (std::strcmp(argv[i], "--batch") == 0 && i + 1 < argc) {
      o.batch_requests = static_cast<uint32_t>(std::stoul(argv[++i]));
    } else {
      std::fprintf(stderr, "usage: bench_notary_sm [--quick] [--batches N] [--batch REQUESTS]\n");
      return 2;
    }
  }
  TestCluster cluster;
  std::printf("notarisation state machine: %u batches of %u single-input requests, durable\n", o.batches,
              o.batch_requests);
  std::fflush(stdout);
  auto random_batches = makeBatches(cluster, o, false, 0);
  auto sequential_batches = makeBatches(cluster, o, true, 0);

  // The cost of check() alone (decode, filtered-transaction proofs, rules).
  TestReplica probe(cluster.config(), cluster.replica_keys[0]);
  auto c0 = Clock::now();
  size_t checked = 0;
  for (const auto& b : random_batches) {
    for (const auto& r : b.requests) {
      if (!probe.sm->check(r).ok()) std::abort();
      ++checked;
    }
  }
  double check_rate = static_cast<double>(checked) / seconds(c0, Clock::now());

  RunResult seq_random = run(cluster, random_batches, false);
  RunResult pipe_random = run(cluster, random_batches, true);
  RunResult seq_sequential = run(cluster, sequential_batches, false);
  RunResult pipe_sequential = run(cluster, sequential_batches, true);
  RunResult off_random = run(cluster, random_batches, true, true);
  RunResult off_sequential = run(cluster, sequential_batches, true, true);
  // The request bodies differ per run (the check cache must not carry over).
  auto path_batches = makeBatches(cluster, o, false, 1u << 30);
  RunResult primary_path = runReplicaPath(cluster, path_batches, 1);
  auto backup_batches = makeBatches(cluster, o, false, 1u << 31);
  RunResult backup_path = runReplicaPath(cluster, backup_batches, 2);
  double sign = ed25519Rate(false), verify = ed25519Rate(true);
  double commits = durableCommitRate();

  auto print = [](const char* name, const RunResult& r) {
    std::printf("  %-40s %9.0f notarisations/s  %.2f commits/batch  writer %.1f us/request", name, r.rate,
                r.commits_per_batch, r.writer_cpu_us_per_request);
    if (r.first_rate > 0) std::printf("  (first quarter %.0f/s, last %.0f/s)", r.first_rate, r.last_rate);
    std::printf("\n");
  };
  std::printf("  %-40s %9.0f", "check() alone", check_rate);
  std::printf(" requests/s (caller's thread)\n");
  print("random StateRefs, one by one", seq_random);
  print("random StateRefs, pipelined", pipe_random);
  print("sequential StateRefs, one by one", seq_sequential);
  print("sequential StateRefs, pipelined", pipe_sequential);
  print("random, pipelined, signing off writer", off_random);
  print("sequential, pipelined, signing off wr.", off_sequential);
  std::printf("  %-40s %9.0f notarisations/s  caller's thread %.1f us/request (check + execute call)\n",
              "replica path, primary (1 check)", primary_path.rate, primary_path.caller_us_per_request);
  std::printf("  %-40s %9.0f notarisations/s  caller's thread %.1f us/request (checks + execute call)\n",
              "replica path, backup (2 checks)", backup_path.rate, backup_path.caller_us_per_request);
  std::printf("  reference: Ed25519 sign %.0f/s, verify %.0f/s; durable LMDB commits %.0f/s\n", sign, verify,
              commits);
  std::printf(
      "{\"bench\":\"notary_sm\",\"batch_requests\":%u,\"batches\":%u,\"check_per_s\":%.0f,"
      "\"random_per_s\":%.0f,\"random_pipelined_per_s\":%.0f,\"sequential_per_s\":%.0f,"
      "\"sequential_pipelined_per_s\":%.0f,\"commits_per_batch\":%.2f,\"writer_us_per_request\":%.1f,"
      "\"random_off_writer_per_s\":%.0f,\"writer_lmdb_us_per_request_random\":%.1f,"
      "\"writer_lmdb_us_per_request_sequential\":%.1f,"
      "\"primary_path_per_s\":%.0f,\"primary_path_caller_us_per_request\":%.1f,"
      "\"backup_path_per_s\":%.0f,\"backup_path_caller_us_per_request\":%.1f,"
      "\"ed25519_sign_per_s\":%.0f,\"ed25519_verify_per_s\":%.0f,\"durable_commits_per_s\":%.0f}\n",
      o.batch_requests, o.batches, check_rate, seq_random.rate, pipe_random.rate, seq_sequential.rate,
      pipe_sequential.rate, seq_random.commits_per_batch, seq_random.writer_cpu_us_per_request, off_random.rate,
      off_random.writer_cpu_us_per_request, off_sequential.writer_cpu_us_per_request, primary_path.rate,
      primary_path.caller_us_per_request, backup_path.rate, backup_path.caller_us_per_request, sign, verify,
      commits);
  return 0;
}
