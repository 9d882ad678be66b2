// scripts/bench messaging: messages between two member processes over TLS
// 1.3 on loopback (node/tls_link), with the raw loopback TCP round trip
// measured in the same run as the reference.
//
//  1. Raw TCP ping-pong round trip (8 bytes, TCP_NODELAY, blocking sockets),
//     between this process and a forked echo process.
//  2. TLS ping-pong round trip over two TlsLinks (this process and a forked
//     responder process, each with its own certificates and event loop):
//     one message in flight.
//  3. Small messages per second, pipelined: 64-byte messages, the sender
//     keeps up to a window in flight, the receiver acknowledges cumulatively.
//  4. One-way latency p50/p99 at half the target rate (25,000 messages/s)
//     and at half the measured pipelined rate: paced sends, each stamped
//     with CLOCK_MONOTONIC (one clock for both processes on one host),
//     measured from send() to the receiver's handler.
// Targets (2 cores): >= 50,000 messages/s pipelined; p99 <= 5 ms at half load.
//
// What runs underneath is a Channel; today the best-effort link. A
// `--durable` mode (flows/delivery's exactly-once messaging with its durable
// outbox over the same link) plugs in as another Channel.
//
// Options: --quick (seconds-long smoke run), --rate N (latency load in
// messages/s instead of half the measured rate).

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>
#include <mutex>
#include <string>
#include <vector>

#include "node/asio_executor.h"
#include "node/tls_link.h"
#include "test/support/test_pki.h"

using namespace ccal;
using namespace ccal::node;
using namespace ccal::testing;
using SteadyClock = std::chrono::steady_clock;

namespace {

constexpr size_t message_bytes = 64;
constexpr uint64_t ack_every = 1024;
constexpr uint64_t window_messages = 16 * 1024;
constexpr int64_t child_lifetime_seconds_max = 600;
constexpr double target_msgs_per_s = 50'000;

// Message kinds (first byte).
enum Kind : uint8_t {
  data = 'D',      // pipelined: counted, acknowledged every ack_every and at the last
  ack = 'A',       // u64 cumulative count
  timed = 'L',     // latency probe: u64 send time (ns, steady clock)
  report = 'R',    // asks for the latency percentiles, then clears them
  reported = 'r',  // u64 count, u64 p50 ns, u64 p99 ns
  ping = 'P',      // u64 send time; echoed as pong
  pong = 'p',
  quit = 'X',
};

int64_t nowNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(SteadyClock::now().time_since_epoch()).count();
}

void putU64(uint8_t* at, uint64_t v) { std::memcpy(at, &v, 8); }
uint64_t getU64(const uint8_t* at) {
  uint64_t v;
  std::memcpy(&v, at, 8);
  return v;
}

Bytes message(Kind kind, std::initializer_list<uint64_t> words, size_t size = message_bytes) {
  Bytes m(std::max(size, 1 + 8 * words.size()), 0x5a);
  m[0] = kind;
  size_t at = 1;
  for (uint64_t w : words) {
    putU64(m.data() + at, w);
    at += 8;
  }
  return m;
}

struct Percentiles {
  double p50_us = 0, p99_us = 0;
  size_t count = 0;
};

Percentiles percentiles(std::vector<int64_t> nanos) {
  Percentiles p;
  p.count = nanos.size();
  if (nanos.empty()) return p;
  std::sort(nanos.begin(), nanos.end());
  p.p50_us = static_cast<double>(nanos[nanos.size() / 2]) / 1000.0;
  p.p99_us = static_cast<double>(nanos[std::min(nanos.size() - 1, nanos.size() * 99 / 100)]) / 1000.0;
  return p;
}

// What the phases need from the transport under test: send a message to the
// other side, receive its messages, on one executor.
class Channel {
 public:
  virtual ~Channel() = default;
  virtual void send(Bytes payload) = 0;
  std::function<void(ByteView)> on_message;
};

// The best-effort TLS link itself.
class LinkChannel final : public Channel, public flows::LinkHandler {
 public:
  LinkChannel(TlsLink& link, std::string peer) : link_(link), peer_(std::move(peer)) {}
  void send(Bytes payload) override {
    auto s = link_.send(peer_, std::move(payload));
    if (!s) std::fprintf(stderr, "bench: send refused: %s\n", s.error().toString().c_str());
  }
  void onFrame(std::string_view, ByteView frame) override { on_message(frame); }
  void onPeerUp(std::string_view) override {}
  void onPeerDown(std::string_view peer) override {
    if (!quitting)
      std::fprintf(stderr, "bench: connection to %.*s went down\n", int(peer.size()), peer.data());
  }
  bool quitting = false;  // the other side is told to exit: its going down is expected

 private:
  TlsLink& link_;
  std::string peer_;
};

uint16_t freePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

// ---------------------------------------------------------------------------
// Raw TCP ping-pong: the reference.

std::vector<int64_t> tcpPingPong(int round_trips) {
  int listener = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len);
  ::listen(listener, 1);
  pid_t echo = ::fork();
  if (echo == 0) {
    int c = ::accept(listener, nullptr, nullptr);
    int one = 1;
    ::setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char buf[8];
    for (;;) {
      ssize_t got = 0;
      while (got < 8) {
        ssize_t n = ::recv(c, buf + got, 8 - got, 0);
        if (n <= 0) ::_exit(0);
        got += n;
      }
      if (::send(c, buf, 8, 0) != 8) ::_exit(0);
    }
  }
  ::close(listener);
  int s = ::socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  ::setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  std::vector<int64_t> rtts;
  if (::connect(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
    char buf[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    for (int i = 0; i < round_trips; ++i) {
      int64_t t0 = nowNanos();
      if (::send(s, buf, 8, 0) != 8) break;
      ssize_t got = 0;
      while (got < 8) {
        ssize_t n = ::recv(s, buf + got, 8 - got, 0);
        if (n <= 0) break;
        got += n;
      }
      if (got < 8) break;
      rtts.push_back(nowNanos() - t0);
    }
  }
  ::close(s);
  ::waitpid(echo, nullptr, 0);
  return rtts;
}

// ---------------------------------------------------------------------------
// The responder process.

[[noreturn]] void runResponder(const TestPki& pki, TestDirectory& directory, const TlsCredentials& self,
                               const std::string& driver, const TlsLinkOptions& base) {
  AsioExecutor executor;
  executor.start();
  TlsLinkOptions options = base;
  options.self = self.name;
  options.certificate_chain_pem = self.chain_pem;
  options.private_key_pem = self.key_pem;
  auto made = TlsLink::create(executor, directory, options);
  if (!made) {
    std::fprintf(stderr, "bench responder: %s\n", made.error().toString().c_str());
    ::_exit(2);
  }
  auto link = std::move(made.value());
  LinkChannel channel(*link, driver);
  std::mutex m;
  std::condition_variable cv;
  bool done = false;
  uint64_t received = 0;
  std::vector<int64_t> latencies;
  latencies.reserve(1 << 20);
  channel.on_message = [&](ByteView msg) {
    if (msg.empty()) return;
    switch (msg[0]) {
      case data:
        ++received;
        if (received % ack_every == 0 || msg[1] == 1) channel.send(message(ack, {received}, 16));
        if (msg[1] == 1) received = 0;  // the last of a trial
        break;
      case timed:
        latencies.push_back(nowNanos() - static_cast<int64_t>(getU64(msg.data() + 1)));
        break;
      case report: {
        auto p = percentiles(latencies);
        channel.send(message(reported, {p.count, static_cast<uint64_t>(p.p50_us * 1000),
                                        static_cast<uint64_t>(p.p99_us * 1000)}));
        latencies.clear();
        break;
      }
      case ping: {
        Bytes echo(msg.begin(), msg.end());
        echo[0] = pong;
        channel.send(std::move(echo));
        break;
      }
      case quit: {
        std::lock_guard lock(m);
        done = true;
        cv.notify_all();
        break;
      }
      default: break;
    }
  };
  executor.runSync([&] { link->setHandler(&channel); });
  pid_t parent = ::getppid();
  auto deadline = SteadyClock::now() + std::chrono::seconds(child_lifetime_seconds_max);
  {
    std::unique_lock lock(m);
    while (!done && ::getppid() == parent && SteadyClock::now() < deadline)
      cv.wait_for(lock, std::chrono::milliseconds(100));
  }
  link->stop();
  executor.stop();
  ::_exit(0);
}

// ---------------------------------------------------------------------------
// The driver: runs the phases on its executor, the main thread waits.

class Driver {
 public:
  Driver(AsioExecutor& executor, Channel& channel) : executor_(executor), channel_(channel) {
    channel_.on_message = [this](ByteView m) { onMessage(m); };
  }

  std::vector<int64_t> pingPong(int round_trips) {
    std::promise<void> done;
    auto finished = done.get_future();
    executor_.post([&, round_trips] {
      pings_left_ = round_trips;
      rtts_.clear();
      ping_done_ = [&] { done.set_value(); };
      channel_.send(message(ping, {static_cast<uint64_t>(nowNanos())}));
    });
    finished.wait();
    return rtts_;
  }

  // Messages per second, `count` messages pipelined.
  double pipelined(uint64_t count) {
    std::promise<void> done;
    auto finished = done.get_future();
    int64_t t0 = 0, t1 = 0;
    executor_.post([&, count] {
      total_ = count;
      sent_ = acked_ = 0;
      t0 = nowNanos();
      acked_done_ = [&] {
        t1 = nowNanos();
        done.set_value();
      };
      fill();
    });
    finished.wait();
    return static_cast<double>(count) / (static_cast<double>(t1 - t0) / 1e9);
  }

  // One-way latency at `rate` messages/s for `seconds`: paced on a 1 ms tick.
  Percentiles atLoad(double rate, double seconds) {
    std::promise<void> done;
    auto finished = done.get_future();
    executor_.post([&, rate, seconds] {
      load_rate_ = rate;
      load_start_ = nowNanos();
      load_end_ = load_start_ + static_cast<int64_t>(seconds * 1e9);
      load_sent_ = 0;
      report_done_ = [&] { done.set_value(); };
      tick();
    });
    finished.wait();
    return report_;
  }

  void quit() {
    executor_.runSync([&] { channel_.send(message(Kind::quit, {})); });
  }

 private:
  void fill() {
    while (sent_ < total_ && sent_ - acked_ < window_messages) {
      ++sent_;
      Bytes m = message(data, {});
      m[1] = sent_ == total_ ? 1 : 0;
      channel_.send(std::move(m));
    }
  }

  void tick() {
    int64_t now = nowNanos();
    uint64_t due = static_cast<uint64_t>(load_rate_ * static_cast<double>(std::min(now, load_end_) - load_start_) / 1e9);
    while (load_sent_ < due) {
      ++load_sent_;
      channel_.send(message(timed, {static_cast<uint64_t>(nowNanos())}));
    }
    if (now < load_end_) {
      executor_.runAfter(1000, [this] { tick(); });
    } else {
      channel_.send(message(report, {}));
    }
  }

  void onMessage(ByteView m) {
    switch (m[0]) {
      case pong:
        rtts_.push_back(nowNanos() - static_cast<int64_t>(getU64(m.data() + 1)));
        if (--pings_left_ > 0) channel_.send(message(ping, {static_cast<uint64_t>(nowNanos())}));
        else ping_done_();
        break;
      case ack:
        acked_ = getU64(m.data() + 1);
        if (acked_ == total_) acked_done_();
        else fill();
        break;
      case reported:
        report_.count = getU64(m.data() + 1);
        report_.p50_us = static_cast<double>(getU64(m.data() + 9)) / 1000.0;
        report_.p99_us = static_cast<double>(getU64(m.data() + 17)) / 1000.0;
        report_done_();
        break;
      default: break;
    }
  }

  AsioExecutor& executor_;
  Channel& channel_;
  // Executor thread only.
  int pings_left_ = 0;
  std::vector<int64_t> rtts_;
  std::function<void()> ping_done_, acked_done_, report_done_;
  uint64_t total_ = 0, sent_ = 0, acked_ = 0;
  double load_rate_ = 0;
  int64_t load_start_ = 0, load_end_ = 0;
  uint64_t load_sent_ = 0;
  Percentiles report_;
};

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  double fixed_rate = 0;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) quick = true;
    else if (std::strcmp(argv[i], "--rate") == 0 && i + 1 < argc) fixed_rate = std::atof(argv[++i]);
    else if (std::strcmp(argv[i], "--durable") == 0) {
      std::fprintf(stderr, "bench: --durable needs flows/delivery, which is not built yet\n");
      return 2;
    } else {
      std::fprintf(stderr, "usage: bench_messaging [--quick] [--rate MSGS_PER_S]\n");
      return 2;
    }
  }
  const int tcp_round_trips = quick ? 300 : 20'000;
  const int tls_round_trips = quick ? 200 : 10'000;
  const uint64_t pipelined_count = quick ? 20'000 : 400'000;
  const int pipelined_trials = quick ? 1 : 5;
  const double load_seconds = quick ? 0.3 : 3.0;
  spdlog::set_level(spdlog::level::warn);

  // Everything both processes need is made before fork (no threads yet).
  TestPki pki;
  auto driver_creds = pki.issue("Haikou Fishing Cooperative");
  auto responder_creds = pki.issue("Hainan Rural Bank");
  TestDirectory directory(pki.root());
  TlsLinkOptions base;
  base.root_certificate_pem = pki.rootPem();
  base.frame_bytes_max = 1024 * 1024;
  // Measure the link, not its flood guard.
  base.peer_frames_per_second_max = 1e9;
  base.peer_frames_burst_max = 1e9;
  base.reconnect_delay_micros_min = 10'000;
  base.reconnect_delay_micros_max = 500'000;
  uint16_t driver_port = freePort(), responder_port = freePort();
  directory.setMember(driver_creds.name, Endpoint{"127.0.0.1", driver_port});
  directory.setMember(responder_creds.name, Endpoint{"127.0.0.1", responder_port});

  auto tcp = percentiles(tcpPingPong(tcp_round_trips));

  pid_t responder = ::fork();
  if (responder < 0) {
    std::perror("fork");
    return 1;
  }
  if (responder == 0) {
    TlsLinkOptions o = base;
    o.listen_port = responder_port;
    runResponder(pki, directory, responder_creds, driver_creds.name, o);
  }

  AsioExecutor executor;
  executor.start();
  TlsLinkOptions options = base;
  options.self = driver_creds.name;
  options.certificate_chain_pem = driver_creds.chain_pem;
  options.private_key_pem = driver_creds.key_pem;
  options.listen_port = driver_port;
  auto made = TlsLink::create(executor, directory, options);
  if (!made) {
    std::fprintf(stderr, "bench: %s\n", made.error().toString().c_str());
    ::kill(responder, SIGKILL);
    return 1;
  }
  auto link = std::move(made.value());
  LinkChannel channel(*link, responder_creds.name);
  Driver driver(executor, channel);
  executor.runSync([&] { link->setHandler(&channel); });

  driver.pingPong(20);  // warm up: both connections up
  auto tls_rtt = percentiles(driver.pingPong(tls_round_trips));

  std::vector<double> rates;
  auto before = link->counters();
  for (int t = 0; t < pipelined_trials; ++t) rates.push_back(driver.pipelined(pipelined_count));
  auto after = link->counters();
  std::sort(rates.begin(), rates.end());
  double rate = rates[rates.size() / 2];
  double frames_per_write = static_cast<double>(after.frames_out - before.frames_out) /
                            static_cast<double>(std::max<uint64_t>(1, after.tls_writes - before.tls_writes));

  auto at_target = driver.atLoad(target_msgs_per_s / 2, load_seconds);
  double load = fixed_rate > 0 ? fixed_rate : rate / 2;
  auto latency = driver.atLoad(load, load_seconds);

  executor.runSync([&] { channel.quitting = true; });
  driver.quit();
  int status = 0;
  ::waitpid(responder, &status, 0);
  link->stop();
  auto counters = link->counters();
  executor.stop();

  std::printf("CCAL messaging benchmark (%s): two processes, TLS 1.3 on loopback, best-effort link\n",
              quick ? "quick smoke run" : "full run");
  std::printf("  raw TCP ping-pong round trip (reference)      p50 %7.1f us  p99 %7.1f us  (%zu round trips)\n",
              tcp.p50_us, tcp.p99_us, tcp.count);
  std::printf("  TLS link ping-pong round trip                 p50 %7.1f us  p99 %7.1f us  (%zu round trips)\n",
              tls_rtt.p50_us, tls_rtt.p99_us, tls_rtt.count);
  std::printf("  %zu-byte messages pipelined (window %llu)     %10.0f msg/s   target >= 50000  (median of %d x %llu;"
              " %.0f frames per TLS write)\n",
              message_bytes, (unsigned long long)window_messages, rate, pipelined_trials,
              (unsigned long long)pipelined_count, frames_per_write);
  std::printf("  one-way latency at %.0f msg/s (half the target)  p50 %7.1f us  p99 %7.1f us  target p99 <= 5000 us"
              "  (%zu messages)\n",
              target_msgs_per_s / 2, at_target.p50_us, at_target.p99_us, at_target.count);
  std::printf("  one-way latency at %.0f msg/s (%s)  p50 %7.1f us  p99 %7.1f us  (%zu messages)\n", load,
              fixed_rate > 0 ? "--rate" : "half the pipelined rate", latency.p50_us, latency.p99_us, latency.count);
  if (counters.frames_dropped > 0 || counters.refusedTotal() > 0)
    std::printf("  WARNING: %llu frames dropped, %llu connections refused\n",
                (unsigned long long)counters.frames_dropped, (unsigned long long)counters.refusedTotal());
  std::printf(
      "{\"bench\":\"messaging\",\"mode\":\"link\",\"message_bytes\":%zu,\"pipelined_msgs_per_s\":%.0f,"
      "\"frames_per_tls_write\":%.1f,\"half_target_p50_us\":%.1f,\"half_target_p99_us\":%.1f,"
      "\"load_msgs_per_s\":%.0f,\"latency_p50_us\":%.1f,\"latency_p99_us\":%.1f,"
      "\"tls_rtt_p50_us\":%.1f,\"tls_rtt_p99_us\":%.1f,\"tcp_rtt_p50_us\":%.1f,\"tcp_rtt_p99_us\":%.1f,"
      "\"frames_dropped\":%llu}\n",
      message_bytes, rate, frames_per_write, at_target.p50_us, at_target.p99_us, load, latency.p50_us, latency.p99_us, tls_rtt.p50_us, tls_rtt.p99_us,
      tcp.p50_us, tcp.p99_us, (unsigned long long)counters.frames_dropped);
  bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0 && latency.count > 0 && at_target.count > 0;
  return ok ? 0 : 1;
}
