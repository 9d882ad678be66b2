// Notary cluster benchmark (issue 5): notarisations per second and latency
// for single-input requests with per-request authentication, for clusters of
// 1 and 4 replicas run as separate `ccal node run` processes on loopback
// over TLS, each replica durable in its own LMDB environment.
//
// For each cluster size: bootstrap a network (two member nodes + the
// cluster), start it with `ccal network start`, warm up, then
//  1. peak: both members run the load generator closed-loop
//     (POST /api/v1/notary/diagnostic/load, `concurrency` in flight each);
//     the peak is all notarisations over the wall time of the slower member;
//  2. at 80% of peak: both members offer 0.4 x peak each, open loop
//     (`rate_per_second`), and report latency p50/p99 (the worse member).
// Beside them, measured in the same run: the raw Ed25519 verify rate
// (libsodium), the durable LMDB commit rate of one small write at a time on
// the same file system, and, from a replica's status, durable commits and
// requests per executed batch.
//
// The members build and sign every transaction themselves, on the same two
// cores as the replicas. By default they do it before the measured window
// (the load's `prepare`, both starting at one agreed instant), so the
// window holds the notarisation work of both sides — the client's request
// building, MACs and reply checks, the replicas' protocol — but not the
// building and signing of the transactions; `--build-in-window` measures
// with the building inside the window, as before. Since the machine is shared, the
// peak phase also reports the CPU time each process spent per notarisation
// (utime + stime from /proc), which other load hardly changes: the rate two
// idle cores would allow is 2 s / (all processes' CPU per notarisation).
//
//   bench_notary [--quick] [--replicas 1,4] [--count N] [--concurrency C] [--load-share S]
//                [--tick-micros T] [--notary-option key=value ...]
// (C: notarisations in flight per member in the peak phase, default 1024;
// lower depths show what smaller batches cost per notarisation; S: the
// latency run's load as a share of the peak, default the 0.8; T: the
// open-loop generator's tick, the member's default 500 us if not given, 0 a
// timer per transaction; latency counts from each transaction's due time;
// --notary-option sets a key of every replica's [notary] section, e.g.
// batch_delay_micros=4000, to try the cluster's settings.)

#include <sodium.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "node/api_client.h"
#include "test/bench/bench.h"
#include "test/support/network_processes.h"
#include "test/support/ports.h"
#include "test/support/proc_cpu.h"
#include "test/support/test_network.h"
#include "test/support/temp_dir.h"
#include "vault/store.h"

namespace fs = std::filesystem;
using namespace ccal;
using namespace ccal::node;
using nlohmann::json;
using testing::runCcal;

namespace {

constexpr int64_t api_timeout_micros = 600'000'000;  // a load run answers when it is done
constexpr int replicas_max = 7;  // two members and the replicas, p2p and API ports, in one PortBlock

struct Args {
  bool quick = false;
  std::vector<int> replicas = {1, 4};
  uint64_t count = 20'000;  // per member, peak phase
  uint64_t concurrency = 1'024;  // per member, in flight
  bool prepare = true;  // members build their transactions before the clock starts
  // The latency run's offered load, as a share of the peak (the issue's: 0.8).
  double load_share = 0.8;
  // `--notary-option key=value`: set in every replica's [notary] section
  // (config/README.md lists the keys), e.g. batch_delay_micros=4000.
  std::vector<std::string> notary_options;
  // The open-loop generator's tick (`tick_micros`); -1: the member's default.
  int64_t tick_micros = -1;
};

// Each option set in the [notary] section of NAME's node.toml: its line replaced, or added under the header.
bool setNotaryOptions(const fs::path& net, const std::string& name,
                      const std::vector<std::string>& options) {
  if (options.empty()) return true;
  const fs::path file = net / name / "node.toml";
  std::ifstream in(file);
  std::stringstream text;
  text << in.rdbuf();
  std::string s = text.str();
  const std::string header = "[notary]\n";
  const size_t at = s.find(header);
  if (!in || at == std::string::npos) {
    std::fprintf(stderr, "bench_notary: no [notary] section in %s\n", file.c_str());
    return false;
  }
  for (const auto& o : options) {
    const size_t eq = o.find('=');
    const std::string key = o.substr(0, eq), line = key + " = " + o.substr(eq + 1) + "\n";
    // The key's line in the section if bootstrap wrote it, else a new one under the header.
    const size_t next_section = s.find("\n[", at + 1);
    size_t k = s.find("\n" + key + " ", at);
    if (k != std::string::npos && (next_section == std::string::npos || k < next_section)) {
      const size_t end = s.find('\n', k + 1);
      s.replace(k + 1, end == std::string::npos ? std::string::npos : end - k, line);
    } else {
      s.insert(at + header.size(), line);
    }
  }
  std::ofstream out(file, std::ios::trunc);
  out << s;
  return static_cast<bool>(out);
}

// Two members (alpha, beta) and a cluster of n = 3f+1 replicas.
bool bootstrap(const fs::path& dir, int n, const testing::PortBlock& ports) {
  std::vector<testing::SpecMember> members = {{"alpha", "O=alpha Member, L=Haikou, C=CN"},
                                              {"beta", "O=beta Member, L=Haikou, C=CN"}};
  testing::SpecNotary notary{"notary", "O=Bench Notary, L=Haikou, C=CN", static_cast<uint32_t>((n - 1) / 3), false, {}};
  for (int i = 1; i <= n; ++i) {
    const std::string name = "r" + std::to_string(i);
    members.push_back({name, "O=" + name + " Member, L=Haikou, C=CN", "notary-replica"});
    notary.replicas.push_back(name);
  }
  auto made = testing::bootstrapTestNetwork(dir, members, {notary}, ports);
  if (made.exit_code != 0) std::fprintf(stderr, "%s", made.output.c_str());
  return made.exit_code == 0;
}

struct LoadFigures {
  bool ok = false;
  std::string error;
  uint64_t notarised = 0, failed = 0;
  double seconds = 0, per_second = 0;
  double p50_ms = 0, p99_ms = 0;
  double start_late_ms = 0;  // with `prepare`: the later member started this late
};

int64_t unixMicrosNow() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Both members run the load generator at once; figures over both. With
// `prepare`, each member builds and signs all its transactions first and
// both start notarising at the same agreed instant (start_at): the window
// measured is then the notary's, from that instant to the later member's
// last answer, without the members' transaction building; `at_start` runs
// on this thread at that instant (the CPU counters are read there).
LoadFigures loadBoth(ApiClient& a, ApiClient& b, uint64_t count, uint64_t concurrency,
                     uint64_t rate_per_member, bool prepare = false,
                     const std::function<void()>& at_start = {}, int64_t tick_micros = -1) {
  json body = {{"count", count}, {"concurrency", concurrency}, {"rate_per_second", rate_per_member}};
  if (tick_micros >= 0) body["tick_micros"] = tick_micros;
  int64_t start_at = 0;
  if (prepare) {
    // Time to build and sign: generously 200 us per transaction and member, plus a second.
    start_at = unixMicrosNow() + 1'000'000 + static_cast<int64_t>(count) * 200;
    body["prepare"] = true;
    body["start_at_unix_micros"] = start_at;
  }
  auto started = std::chrono::steady_clock::now();
  auto run = [&body](ApiClient& c) { return c.post("/api/v1/notary/diagnostic/load", body); };
  auto fa = std::async(std::launch::async, run, std::ref(a));
  auto fb = std::async(std::launch::async, run, std::ref(b));
  if (start_at > 0) {
    const int64_t wait = start_at - unixMicrosNow();
    if (wait > 0) std::this_thread::sleep_for(std::chrono::microseconds(wait));
  }
  if (at_start) at_start();
  auto ra = fa.get();
  auto rb = fb.get();
  LoadFigures out;
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  double window_seconds = 0;
  for (const auto* r : {&ra, &rb}) {
    if (!*r) {
      out.error = r->error().toString();
      return out;
    }
    const json& j = **r;
    out.notarised += j.value("notarised", uint64_t{0});
    out.failed += j.value("conflicts", uint64_t{0}) + j.value("errors", uint64_t{0});
    if (j.contains("first_error")) out.error = j["first_error"].get<std::string>();
    out.p50_ms = std::max(out.p50_ms, j.value("latency_p50_micros", 0.0) / 1000.0);
    out.p99_ms = std::max(out.p99_ms, j.value("latency_p99_micros", 0.0) / 1000.0);
    out.start_late_ms = std::max(out.start_late_ms, j.value("start_late_micros", 0.0) / 1000.0);
    window_seconds = std::max(window_seconds, (j.value("start_late_micros", 0.0) +
                                               j.value("duration_micros", 0.0)) / 1e6);
  }
  // Without `prepare` the generators start when their request arrives: the
  // wall time seen here includes two HTTP round trips, negligible against
  // the run. With it, the window starts at start_at.
  if (prepare && window_seconds > 0) out.seconds = window_seconds;
  out.per_second = static_cast<double>(out.notarised) / out.seconds;
  out.ok = out.failed == 0;
  return out;
}

struct ClusterFigures {
  int replicas = 0;
  bool ok = false;
  std::string error;
  LoadFigures peak, at80;
  double commits_per_batch = 0, requests_per_batch = 0, replica_writer_cpu_us_per_request = 0;
  double log_flushes_per_batch = 0, at80_log_flushes_per_batch = 0;  // the vote log's, r1
  // The share of r1's batches handed to execution while the one before was
  // not yet durable (pipelined execution).
  double overlapped_share = 0;
  // r1's Store writer, wall clock: the share of the peak window it spent
  // running requests and committing (page writes, fdatasync), and one
  // commit's mean time. Near 100% the durable writes, not the CPU, bound
  // the rate.
  double writer_busy_share = 0, commit_ms = 0;
  // During the peak, per notarisation: both members together, all replicas together.
  double members_cpu_us = 0, replicas_cpu_us = 0;
  double view_changes = 0, frames_rejected = 0;  // at r1 during the peak
  // During the latency run: r1's batches per second and requests and durable
  // commits per batch, and the cores all processes kept busy (CPU s per s).
  double at80_batches_per_second = 0, at80_requests_per_batch = 0, at80_commits_per_batch = 0;
  double at80_cores_busy = 0, at80_members_cpu_us = 0, at80_replicas_cpu_us = 0;
  // r1 during the latency run: the share of batches whose replies went out
  // once their execution was settled, and how long (mean) before the batch
  // was durable.
  double at80_replied_early_share = 0, at80_replied_early_lead_ms = 0;
  // r1 (the primary) during the latency run, means: a request's wait for its
  // batch, then the batch's phases (Replica::Stats): prepares, P durable,
  // commits, execution until the replies go out.
  double at80_request_wait_ms = 0, at80_prepare_ms = 0, at80_prepared_durable_ms = 0,
         at80_commit_ms = 0, at80_execute_ms = 0;
};

// A counter of r1's notary status (group.key) between two readings.
double statusDelta(const json& before, const json& after, const char* group, const char* key) {
  return static_cast<double>(after[group].value(key, uint64_t{0}) -
                             before[group].value(key, uint64_t{0}));
}

double cpuMicrosOf(const fs::path& net, const std::vector<std::string>& names) {
  double sum = 0;
  for (const auto& name : names) sum += testing::processCpuMicros(testing::pidOf(net, name));
  return sum;
}

ClusterFigures runCluster(const Args& args, int n) {
  ClusterFigures f;
  f.replicas = n;
  testing::TempDir tmp("ccal-bench-notary");
  const fs::path dir = fs::path(tmp.path).parent_path();
  testing::PortBlock ports(2 * (2 + n));
  if (!bootstrap(dir, n, ports)) {
    f.error = "ccal network bootstrap failed (spec in " + dir.string() + ")";
    return f;
  }
  const fs::path net = dir / "net";
  for (int i = 1; i <= n; ++i) {
    if (!setNotaryOptions(net, "r" + std::to_string(i), args.notary_options)) {
      f.error = "--notary-option";
      return f;
    }
  }
  if (auto started = testing::runCcalCapturing("network start --dir " + net.string()); started.exit_code != 0) {
    f.error = "ccal network start failed: " + started.output;
    runCcal("network stop --dir " + net.string());
    return f;
  }
  testing::StopNetworkAtEnd stop{net};
  auto alpha = testing::adminClientOf(net, "alpha", api_timeout_micros);
  auto beta = testing::adminClientOf(net, "beta", api_timeout_micros);
  auto r1 = testing::adminClientOf(net, "r1", api_timeout_micros);
  if (!alpha || !beta || !r1) {
    f.error = "API client: " + (!alpha ? alpha.error() : !beta ? beta.error() : r1.error()).toString();
    return f;
  }
  // Warm up: connections up, the primary known, caches warm.
  LoadFigures warm = loadBoth(*alpha, *beta, args.quick ? 20 : 500, 64, 0);
  if (!warm.ok) {
    f.error = "warm-up: " + warm.error;
    return f;
  }
  std::vector<std::string> members = {"alpha", "beta"}, replicas;
  for (int i = 1; i <= n; ++i) replicas.push_back("r" + std::to_string(i));
  auto before = r1->get("/api/v1/notary/status");
  double members_cpu_before = 0, replicas_cpu_before = 0;
  f.peak = loadBoth(*alpha, *beta, args.count, args.concurrency, 0, args.prepare, [&] {
    members_cpu_before = cpuMicrosOf(net, members);
    replicas_cpu_before = cpuMicrosOf(net, replicas);
  });
  const double members_cpu_after = cpuMicrosOf(net, members), replicas_cpu_after = cpuMicrosOf(net, replicas);
  auto after = r1->get("/api/v1/notary/status");
  if (f.peak.notarised > 0) {
    f.members_cpu_us = (members_cpu_after - members_cpu_before) / static_cast<double>(f.peak.notarised);
    f.replicas_cpu_us = (replicas_cpu_after - replicas_cpu_before) / static_cast<double>(f.peak.notarised);
  }
  if (!f.peak.ok) {
    f.error = "peak: " + f.peak.error;
    return f;
  }
  if (before && after) {
    auto delta = [&](const char* group, const char* key) {
      return statusDelta(*before, *after, group, key);
    };
    double batches = delta("stats", "batches_executed");
    double requests = delta("stats", "requests_executed");
    if (batches > 0) {
      f.commits_per_batch = delta("store", "commits") / batches;
      f.log_flushes_per_batch = delta("vote_log", "flushes") / batches;
      f.requests_per_batch = requests / batches;
      f.overlapped_share = delta("stats", "batches_overlapped") / batches;
    }
    if (requests > 0) f.replica_writer_cpu_us_per_request = delta("store", "writer_cpu_micros") / requests;
    const double commits = delta("store", "commits");
    if (commits > 0) f.commit_ms = delta("store", "commit_micros") / commits / 1000.0;
    if (f.peak.seconds > 0) {
      f.writer_busy_share =
          (delta("store", "run_micros") + delta("store", "commit_micros")) / (f.peak.seconds * 1e6);
    }
    f.view_changes = delta("stats", "view_changes");
    f.frames_rejected = delta("stats", "frames_rejected");
  }
  // 80% of peak, open loop, offered by both members evenly, for about as long as the peak run.
  const uint64_t rate_each =
      std::max<uint64_t>(1, static_cast<uint64_t>(args.load_share / 2 * f.peak.per_second));
  const uint64_t count_each = std::max<uint64_t>(
      1, std::min<uint64_t>(args.count, static_cast<uint64_t>(static_cast<double>(rate_each) *
                                                               std::max(2.0, f.peak.seconds))));
  auto before80 = r1->get("/api/v1/notary/status");
  double members_before80 = 0, replicas_before80 = 0;
  f.at80 = loadBoth(
      *alpha, *beta, count_each, args.concurrency, rate_each, args.prepare,
      [&] {
        members_before80 = cpuMicrosOf(net, members);
        replicas_before80 = cpuMicrosOf(net, replicas);
      },
      args.tick_micros);
  const double members80 = cpuMicrosOf(net, members) - members_before80;
  const double replicas80 = cpuMicrosOf(net, replicas) - replicas_before80;
  auto after80 = r1->get("/api/v1/notary/status");
  if (f.at80.seconds > 0) f.at80_cores_busy = (members80 + replicas80) / (f.at80.seconds * 1e6);
  if (f.at80.notarised > 0) {
    f.at80_members_cpu_us = members80 / static_cast<double>(f.at80.notarised);
    f.at80_replicas_cpu_us = replicas80 / static_cast<double>(f.at80.notarised);
  }
  if (before80 && after80) {
    auto delta = [&](const char* group, const char* key) {
      return statusDelta(*before80, *after80, group, key);
    };
    const double batches = delta("stats", "batches_executed");
    if (batches > 0) {
      f.at80_requests_per_batch = delta("stats", "requests_executed") / batches;
      f.at80_commits_per_batch = delta("store", "commits") / batches;
      f.at80_log_flushes_per_batch = delta("vote_log", "flushes") / batches;
      const double early = delta("stats", "batches_replied_early");
      f.at80_replied_early_share = early / batches;
      if (early > 0)
        f.at80_replied_early_lead_ms = delta("stats", "replied_early_lead_micros") / early / 1000.0;
    }
    if (const double proposed = delta("stats", "requests_proposed"); proposed > 0) {
      f.at80_request_wait_ms = delta("stats", "request_wait_micros") / proposed / 1000.0;
    }
    if (const double timed = delta("stats", "batches_timed"); timed > 0) {
      f.at80_prepare_ms = delta("stats", "phase_prepare_micros") / timed / 1000.0;
      f.at80_prepared_durable_ms = delta("stats", "phase_prepared_durable_micros") / timed / 1000.0;
      f.at80_commit_ms = delta("stats", "phase_commit_micros") / timed / 1000.0;
      f.at80_execute_ms = delta("stats", "phase_execute_micros") / timed / 1000.0;
    }
    if (f.at80.seconds > 0) f.at80_batches_per_second = batches / f.at80.seconds;
  }
  if (!f.at80.ok) {
    f.error = "80% run: " + f.at80.error;
    return f;
  }
  f.ok = true;
  return f;
}

double rawVerifyRate(const bench::Options& options) {
  unsigned char pk[crypto_sign_PUBLICKEYBYTES], sk[crypto_sign_SECRETKEYBYTES];
  unsigned char sig[crypto_sign_BYTES];
  unsigned char message[32] = {1, 2, 3};
  crypto_sign_keypair(pk, sk);
  crypto_sign_detached(sig, nullptr, message, sizeof message, sk);
  volatile int sink = 0;
  return bench::medianRate(options, [&] {
    sink = sink + crypto_sign_verify_detached(sig, message, sizeof message, pk);
  });
}

// One small write per durable commit, one after the other.
double durableCommitRate(int commits) {
  testing::TempDir dir("ccal-bench-notary-commit");
  vault::StoreConfig config;
  config.path = dir.path;
  config.map_size_bytes = 64ull << 20;
  const std::string names[] = {"bench"};
  auto store = vault::Store::open(config, names, "ccal-bench-commit", 1);
  if (!store) return 0;
  const vault::Db& db = (*store)->db("bench");
  auto started = std::chrono::steady_clock::now();
  for (int i = 0; i < commits; ++i) {
    Bytes key{static_cast<uint8_t>(i & 0xff), static_cast<uint8_t>(i >> 8)};
    if (!(*store)->write([&](vault::WriteTxn& w) { return w.put(db, key, key); })) return 0;
  }
  return commits / std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--quick") {
      args.quick = true;
      args.replicas = {1};
      args.count = 100;
      args.concurrency = 16;
    } else if (a == "--replicas" && i + 1 < argc) {
      args.replicas.clear();
      std::string list = argv[++i];
      for (size_t p = 0; p < list.size();) {
        size_t q = list.find(',', p);
        args.replicas.push_back(std::atoi(list.substr(p, q - p).c_str()));
        p = q == std::string::npos ? list.size() : q + 1;
      }
      for (int n : args.replicas) {
        if (n < 1 || n > replicas_max || (n - 1) % 3 != 0) {
          std::fprintf(stderr, "--replicas: each cluster size must be 3f+1 and at most %d\n", replicas_max);
          return 2;
        }
      }
    } else if (a == "--build-in-window") {
      args.prepare = false;
    } else if (a == "--count" && i + 1 < argc) {
      args.count = std::strtoull(argv[++i], nullptr, 10);
    } else if (a == "--concurrency" && i + 1 < argc) {
      args.concurrency = std::strtoull(argv[++i], nullptr, 10);
    } else if (a == "--load-share" && i + 1 < argc) {
      args.load_share = std::strtod(argv[++i], nullptr);
      if (!(args.load_share > 0 && args.load_share <= 1)) {
        std::fprintf(stderr, "--load-share: a share of the peak, in (0, 1]\n");
        return 2;
      }
    } else if (a == "--tick-micros" && i + 1 < argc) {
      args.tick_micros = std::strtoll(argv[++i], nullptr, 10);
    } else if (a == "--notary-option" && i + 1 < argc &&
               std::string(argv[i + 1]).find('=') != std::string::npos) {
      args.notary_options.push_back(argv[++i]);
    } else {
      std::fprintf(
          stderr,
          "usage: bench_notary [--quick] [--replicas 1,4] [--count N per member] "
          "[--concurrency C per member, at most 1024] [--build-in-window] [--load-share S, "
          "default 0.8] [--tick-micros T] [--notary-option key=value ...]\n");
      return 2;
    }
  }
  for (int n : args.replicas) {
    if (n < 1 || (n - 1) % 3 != 0 || args.count == 0 || args.concurrency == 0 ||
        args.concurrency > 1024) {
      std::fprintf(stderr,
                   "bench_notary: a cluster has 3f+1 replicas (1, 4, 7, ...), not %d; count and "
                   "concurrency (at most 1024) are positive\n",
                   n);
      return 2;
    }
  }
  if (sodium_init() < 0) return 1;
  bench::Options options = bench::Options::fromArgs(argc, argv);
  const double verify_rate = rawVerifyRate(options);
  const double commit_rate = durableCommitRate(args.quick ? 20 : 300);

  std::printf("notary cluster benchmark: single-input notarisations, two member nodes as clients,\n"
              "replicas as separate processes over TLS on loopback (%u cores), %llu per member,\n"
              "transactions built and signed by the members %s\n",
              std::thread::hardware_concurrency(), static_cast<unsigned long long>(args.count),
              args.prepare ? "before the measured window" : "inside the measured window");
  std::printf("  raw Ed25519 verify (libsodium, one core)     %10.0f /s\n", verify_rate);
  std::printf("  durable LMDB commit, one small write each    %10.0f /s\n", commit_rate);
  std::vector<ClusterFigures> all;
  bool ok = true;
  for (int n : args.replicas) {
    ClusterFigures f = runCluster(args, n);
    all.push_back(f);
    if (!f.ok) {
      std::printf("  %d replica(s): FAILED: %s\n", n, f.error.c_str());
      ok = false;
      continue;
    }
    const double target = n == 1 ? 40'000 : 20'000;
    std::printf("  %d replica(s) (f = %d):\n", n, (n - 1) / 3);
    std::printf("    peak, closed loop          %8.0f notarisations/s (target >= %.0f: %s), %llu in %.1f s\n",
                f.peak.per_second, target, f.peak.per_second >= target ? "met" : "NOT met",
                static_cast<unsigned long long>(f.peak.notarised), f.peak.seconds);
    if (args.load_share == 0.8) {
      std::printf("    at 80%% of peak, open loop  %8.0f /s  latency p50 %.2f ms (target <= 2: %s), "
                  "p99 %.2f ms (target <= 10: %s)\n",
                  f.at80.per_second, f.at80.p50_ms, f.at80.p50_ms <= 2 ? "met" : "NOT met", f.at80.p99_ms,
                  f.at80.p99_ms <= 10 ? "met" : "NOT met");
    } else {
      std::printf("    at %2.0f%% of peak, open loop  %8.0f /s  latency p50 %.2f ms, p99 %.2f ms (targets: at 80%%)\n",
                  100 * args.load_share, f.at80.per_second, f.at80.p50_ms, f.at80.p99_ms);
    }
    std::printf(
        "    during the latency run: %.0f batches/s of %.1f requests, %.2f durable commits per "
        "batch (r1: %.2f LMDB commits, %.2f vote log flushes), %.2f cores busy (CPU per "
        "notarisation: members %.0f us, replicas %.0f us)\n",
        f.at80_batches_per_second, f.at80_requests_per_batch,
        f.at80_commits_per_batch + f.at80_log_flushes_per_batch, f.at80_commits_per_batch,
        f.at80_log_flushes_per_batch, f.at80_cores_busy, f.at80_members_cpu_us,
        f.at80_replicas_cpu_us);
    std::printf(
        "    during the latency run: r1 replied to %.0f%% of batches once their execution was "
        "settled, %.2f ms (mean) before it was durable\n",
        100 * f.at80_replied_early_share, f.at80_replied_early_lead_ms);
    std::printf(
        "    during the latency run, r1 (primary), means: a request waits %.2f ms for its batch; a "
        "batch takes %.2f ms to prepare, %.2f ms until its P is durable, %.2f ms to commit, %.2f "
        "ms "
        "to execute until its replies go out\n",
        f.at80_request_wait_ms, f.at80_prepare_ms, f.at80_prepared_durable_ms, f.at80_commit_ms,
        f.at80_execute_ms);
    std::printf(
        "    replica r1 during the peak: %.2f durable commits per batch (%.2f LMDB commits, %.2f"
        " vote log flushes), %.1f requests per batch,"
        " %.0f%% of batches executed overlapped, %.1f us writer CPU per request, %.0f view changes,"
        " %.0f frames rejected\n",
        f.commits_per_batch + f.log_flushes_per_batch, f.commits_per_batch, f.log_flushes_per_batch,
        f.requests_per_batch, 100 * f.overlapped_share, f.replica_writer_cpu_us_per_request,
        f.view_changes, f.frames_rejected);
    std::printf(
        "    r1's store writer during the peak: busy %.0f%% of the window (wall clock), %.2f ms per"
        " durable commit\n",
        100 * f.writer_busy_share, f.commit_ms);
    const double all_cpu_us = f.members_cpu_us + f.replicas_cpu_us;
    std::printf("    CPU per notarisation during the peak: members %.0f us, replicas %.0f us (%.0f us each),"
                " all %.0f us => two idle cores allow %.0f /s\n",
                f.members_cpu_us, f.replicas_cpu_us, f.replicas_cpu_us / n, all_cpu_us,
                all_cpu_us > 0 ? 2e6 / all_cpu_us : 0.0);
  }
  json out = {{"bench", "notary"}, {"raw_verify_per_second", verify_rate},
              {"durable_commits_per_second", commit_rate}};
  for (const auto& f : all) {
    out["clusters"].push_back({{"replicas", f.replicas},
                               {"ok", f.ok},
                               {"error", f.error},
                               {"peak_per_second", f.peak.per_second},
                               {"writer_busy_share", f.writer_busy_share},
                               {"commit_ms", f.commit_ms},
                               {"at80_per_second", f.at80.per_second},
                               {"at80_p50_ms", f.at80.p50_ms},
                               {"at80_p99_ms", f.at80.p99_ms},
                               {"commits_per_batch", f.commits_per_batch},
                               {"log_flushes_per_batch", f.log_flushes_per_batch},
                               {"at80_batches_per_second", f.at80_batches_per_second},
                               {"at80_requests_per_batch", f.at80_requests_per_batch},
                               {"at80_commits_per_batch", f.at80_commits_per_batch},
                               {"at80_log_flushes_per_batch", f.at80_log_flushes_per_batch},
                               {"at80_cores_busy", f.at80_cores_busy},
                               {"at80_replied_early_share", f.at80_replied_early_share},
                               {"at80_replied_early_lead_ms", f.at80_replied_early_lead_ms},
                               {"at80_request_wait_ms", f.at80_request_wait_ms},
                               {"at80_phase_prepare_ms", f.at80_prepare_ms},
                               {"at80_phase_prepared_durable_ms", f.at80_prepared_durable_ms},
                               {"at80_phase_commit_ms", f.at80_commit_ms},
                               {"at80_phase_execute_ms", f.at80_execute_ms},
                               {"at80_members_cpu_us_per_notarisation", f.at80_members_cpu_us},
                               {"at80_replicas_cpu_us_per_notarisation", f.at80_replicas_cpu_us},
                               {"requests_per_batch", f.requests_per_batch},
                               {"overlapped_share", f.overlapped_share},
                               {"members_cpu_us_per_notarisation", f.members_cpu_us},
                               {"replicas_cpu_us_per_notarisation", f.replicas_cpu_us}});
  }
  std::printf("%s\n", out.dump().c_str());
  return ok ? 0 : 1;
}
