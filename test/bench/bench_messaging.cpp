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
// What runs underneath is a Channel, measured twice in one run (each with its
// own pair of processes and links):
//  - link: the best-effort TLS link itself;
//  - durable: flows/delivery's exactly-once messaging with its durable outbox
//    over the same kind of link. Each process opens its own vault (a temp
//    directory, fsync on every commit) with a MessageStore; every message is
//    enqueued (durable before it is sent), stored in the receiver's inbox
//    (durable before it is acknowledged), consumed by the receiver's handler
//    and removed from the sender's outbox: four durable writes per message,
//    group-committed. The pipelined sender keeps at most --inflight sends
//    not yet confirmed durable (Delivery's done()); times run from the first
//    send() to the last message handed to the receiver's handler.
//
// Options: --quick (seconds-long smoke run), --rate N (latency load in
// messages/s instead of half the measured rate), --link / --durable (only
// that mode), --inflight N (durable sends unconfirmed, default 16384),
// --window N (Delivery's window_messages_max, default and at most 4096; its
// retransmit_delay_micros_min is 1 s here), --waiting N (its
// inbox_waiting_messages_max, default the window), --sequential-ids (counter ids),
// --latency-only (only the --rate phase, 5,000 messages/s unless given: for
// comparing runs of the latency path without the backlog of an overload).
// In durable mode each latency phase also says where the time goes (send()
// -> outbox durable -> frame to the link -> frame at the receiver -> handed
// over), and the run measures the floor under it: one small durable commit
// and one 4 KiB write + fdatasync on the same file system.

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "flows/delivery.h"
#include "ledger/contract.h"
#include "node/asio_executor.h"
#include "node/tls_link.h"
#include "test/support/proc_cpu.h"
#include "test/support/temp_dir.h"
#include "test/support/test_pki.h"
#include "vault/message_store.h"
#include "vault/vault.h"

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
  ack = 'A',       // u64 cumulative count, u64 arrival time of the last (ns), and for the
                   // last of a trial the receiver's store commits and requests in the trial
  timed = 'L',     // latency probe: u64 send time (ns, steady clock)
  report = 'R',    // asks for the latency percentiles, then clears them
  reported = 'r',  // u64 count, u64 p50 ns, u64 p99 ns, and the same for the frame's arrival
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

// A store's counters (vault::Store::Stats), or their change over a phase.
struct StoreCounts {
  uint64_t commits = 0, requests = 0, writer_cpu_micros = 0;
  // Wall time: requests waiting in the writer's queue (summed over requests),
  // batches running (summed over batches), LMDB commits (summed over commits).
  uint64_t queued_micros = 0, run_micros = 0, commit_micros = 0;
  StoreCounts since(const StoreCounts& start) const {
    return {commits - start.commits, requests - start.requests, writer_cpu_micros - start.writer_cpu_micros,
            queued_micros - start.queued_micros, run_micros - start.run_micros,
            commit_micros - start.commit_micros};
  }
};

// Where a timed message's one-way time goes (durable mode), each measured
// from send(): durable in the sender's outbox (done()), its frame handed to
// the sender's link, its frame arriving at the receiver's link, handed to
// the receiver's handler (after the inbox write is durable).
struct Stages {
  Percentiles outbox_durable, frame_sent, frame_arrived;
  StoreCounts sender, receiver;  // the stores during the phase
  double seconds = 0;
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
  // Sends not yet confirmed (durable mode: not yet in the durable outbox).
  virtual uint64_t unconfirmed() const { return 0; }
  std::function<void(ByteView)> on_message;
  std::function<void()> on_confirmed;  // a send was confirmed
  bool quitting = false;  // the other side is told to exit: its going down is expected
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

 private:
  TlsLink& link_;
  std::string peer_;
};

// Between Delivery and the TLS link in durable mode: notes when the frame of
// a timed message goes to the link and when one arrives from it. A message
// frame's payload is its last bytes (canonical Cap'n Proto, the payload is
// the last pointer), so a timed message shows as message_bytes at the end of
// the frame starting with `timed`, with a send time that is plausible (acks
// never carry one: their seqs are small numbers).
class TimingLink final : public flows::Link, public flows::LinkHandler {
 public:
  explicit TimingLink(flows::Link& inner) : inner_(inner) {}
  void setHandler(flows::LinkHandler* handler) override {
    handler_ = handler;
    inner_.setHandler(this);
  }
  Status send(std::string_view peer, Bytes frame) override {
    note(frame, frames_out_ns);
    return inner_.send(peer, std::move(frame));
  }
  size_t frameBytesMax() const override { return inner_.frameBytesMax(); }
  void onFrame(std::string_view peer, ByteView frame) override {
    note(frame, frames_in_ns);
    handler_->onFrame(peer, frame);
  }
  void onPeerUp(std::string_view peer) override { handler_->onPeerUp(peer); }
  void onPeerDown(std::string_view peer) override { handler_->onPeerDown(peer); }

  // Executor thread: send() to this frame, per timed message frame.
  std::vector<int64_t> frames_out_ns, frames_in_ns;

 private:
  static void note(ByteView frame, std::vector<int64_t>& into) {
    if (frame.size() < message_bytes + 32) return;
    const uint8_t* payload = frame.data() + frame.size() - message_bytes;
    if (payload[0] != timed) return;
    const int64_t now = nowNanos();
    const int64_t sent = static_cast<int64_t>(getU64(payload + 1));
    if (sent <= 0 || sent > now || now - sent > 60'000'000'000) return;
    into.push_back(now - sent);
  }
  flows::Link& inner_;
  flows::LinkHandler* handler_ = nullptr;
};

// Exactly-once messaging with the durable outbox (flows/delivery): ids are
// SHA-256 of this side's name and a counter; every message handed over is
// consumed at once.
bool sequential_ids = false;  // --sequential-ids: counter ids (ids are no longer store keys; kept to compare)

class DurableChannel final : public Channel, public flows::MessageHandler {
 public:
  DurableChannel(flows::Delivery& delivery, std::string self, std::string peer)
      : delivery_(delivery), self_(std::move(self)), peer_(std::move(peer)) {}
  void send(Bytes payload) override {
    SecureHash id;
    if (sequential_ids) {
      // The counter, big-endian, in the id's first 8 bytes: neighbouring keys.
      std::array<uint8_t, SecureHash::size_bytes> raw{};
      for (int i = 0; i < 8; ++i) raw[i] = static_cast<uint8_t>(next_id_ >> (56 - 8 * i));
      ++next_id_;
      id = SecureHash::fromBytes(raw).value();
    } else {
      std::string seed = self_ + "/" + std::to_string(next_id_++);
      id = SecureHash::of(ByteView(reinterpret_cast<const uint8_t*>(seed.data()), seed.size()));
    }
    ++sent_;
    const int64_t timed_at = payload.size() >= 9 && payload[0] == timed ? static_cast<int64_t>(getU64(payload.data() + 1)) : 0;
    delivery_.send(peer_, id, std::move(payload), [this, timed_at](const Status& s) {
      if (!s.ok()) std::fprintf(stderr, "bench: durable send refused: %s\n", s.error().toString().c_str());
      if (timed_at != 0) durable_ns.push_back(nowNanos() - timed_at);
      ++confirmed_;
      if (on_confirmed) on_confirmed();
    });
  }
  uint64_t unconfirmed() const override { return sent_ - confirmed_; }
  // Executor thread: send() to done(), per timed message.
  std::vector<int64_t> durable_ns;
  void onMessage(std::string_view peer, const flows::MessageId& id, ByteView payload) override {
    on_message(payload);
    delivery_.consume(peer, id, [this](const Status& s) {
      if (!s.ok() && !quitting)
        std::fprintf(stderr, "bench: consume failed: %s\n", s.error().toString().c_str());
    });
  }

 private:
  flows::Delivery& delivery_;
  std::string self_, peer_;
  uint64_t next_id_ = 0;
  uint64_t sent_ = 0, confirmed_ = 0;  // executor thread
};

// One side of a measurement: its executor, TLS link and channel, and in
// durable mode its vault (own temp directory), message store and Delivery.
class Side {
 public:
  Side(bool durable, const TlsCredentials& self, const std::string& peer, PeerDirectory& directory,
       const TlsLinkOptions& base, uint16_t listen_port, const flows::DeliveryConfig& delivery_config,
       std::function<void(Side&, ByteView)> on_message = {})
      : durable_(durable), dir_("ccal-bench-messaging") {
    executor.start();
    TlsLinkOptions options = base;
    options.self = self.name;
    options.certificate_chain_pem = self.chain_pem;
    options.private_key_pem = self.key_pem;
    options.listen_port = listen_port;
    if (durable_) {
      vault::VaultConfig vault_config;
      vault_config.store.path = dir_.path;
      vault_config.store.map_size_bytes = 1ull << 30;
      auto opened = vault::Vault::open(vault_config, contracts_, {});
      if (!opened) {
        error = "vault " + dir_.path + ": " + opened.error().toString();
        return;
      }
      vault_ = std::move(*opened);
      messages_ = std::make_unique<vault::MessageStore>(vault_->store());
    }
    executor.runSync([&] {
      auto made = TlsLink::create(executor, directory, options);
      if (!made) {
        error = made.error().toString();
        return;
      }
      link = std::move(made.value());
      if (!durable_) {
        auto c = std::make_unique<LinkChannel>(*link, peer);
        if (on_message) c->on_message = [this, on_message](ByteView m) { on_message(*this, m); };
        link->setHandler(c.get());
        channel = std::move(c);
        return;
      }
      // Delivery sets itself as the link's handler.
      flows::DeliveryConfig config = delivery_config;
      // Sends failing once the link has stopped are expected at the end.
      config.log = [this](std::string_view line) {
        if (!closed_) std::fprintf(stderr, "bench delivery: %.*s\n", int(line.size()), line.data());
      };
      timing_link = std::make_unique<TimingLink>(*link);
      delivery = std::make_unique<flows::Delivery>(*timing_link, *messages_, executor, executor, config);
      auto c = std::make_unique<DurableChannel>(*delivery, self.name, peer);
      if (on_message) c->on_message = [this, on_message](ByteView m) { on_message(*this, m); };
      delivery->setHandler(c.get());
      channel = std::move(c);
      Status started = delivery->start();
      if (!started.ok()) error = "delivery: " + started.error().toString();
    });
  }
  ~Side() { close(); }

  StoreCounts storeCounts() const {
    if (!vault_) return {};
    auto s = vault_->store().stats();
    return {s.commits, s.requests, s.writer_cpu_micros, s.queued_micros, s.run_micros, s.commit_micros};
  }

  // Link first (no more frames), then wait for Delivery's store requests,
  // Delivery on its executor, then the store (its completions post to the
  // executor), then the executor.
  void close() {
    if (closed_) return;
    closed_ = true;
    if (link) link->stop();
    // Every store request Delivery queued must finish before the
    // MessageStore its writes run against goes away.
    if (delivery) delivery->waitForStore();
    executor.runSync([&] {
      channel.reset();
      delivery.reset();
    });
    vault_.reset();  // waits for any queued write, closes LMDB
    messages_.reset();
    executor.stop();
  }

  AsioExecutor executor;
  std::unique_ptr<TlsLink> link;
  std::unique_ptr<TimingLink> timing_link;  // durable mode
  std::unique_ptr<flows::Delivery> delivery;
  std::unique_ptr<Channel> channel;
  std::string error;  // empty when opened

 private:
  bool durable_;
  std::atomic<bool> closed_{false};
  TempDir dir_;
  ContractRegistry contracts_;
  std::unique_ptr<vault::Vault> vault_;
  std::unique_ptr<vault::MessageStore> messages_;
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
// The durable commit of one small write, one after the other, in a store of
// its own on the same file system: the floor under the durable one-way time
// (a message is committed twice on its way: the sender's outbox, the
// receiver's inbox).

Percentiles durableCommits(int commits) {
  TempDir dir("ccal-bench-commit");
  vault::StoreConfig config;
  config.path = dir.path;
  config.map_size_bytes = 64ull << 20;
  const std::string names[] = {"bench"};
  auto store = vault::Store::open(config, names, "ccal-bench-commit", 1);
  if (!store) {
    std::fprintf(stderr, "bench: commit store %s: %s\n", dir.path.c_str(), store.error().toString().c_str());
    return {};
  }
  const vault::Db& db = (*store)->db("bench");
  std::vector<int64_t> nanos;
  for (int i = 0; i < commits; ++i) {
    const int64_t t0 = nowNanos();
    Bytes key{static_cast<uint8_t>(i & 0xff), static_cast<uint8_t>(i >> 8)};
    Status s = (*store)->write([&](vault::WriteTxn& w) { return w.put(db, key, key); });
    if (!s) {
      std::fprintf(stderr, "bench: commit: %s\n", s.error().toString().c_str());
      break;
    }
    nanos.push_back(nowNanos() - t0);
  }
  return percentiles(std::move(nanos));
}

// One 4 KiB pwrite + fdatasync, one after the other, in the same kind of
// directory: what a single sync costs here (an LMDB durable commit syncs
// twice: its data pages, then its meta page).
Percentiles fileSyncs(int syncs) {
  TempDir dir("ccal-bench-sync");
  const std::string path = dir.path + ".sync";  // beside the (uncreated) data directory
  int fd = ::open(path.c_str(), O_CREAT | O_RDWR, 0600);
  if (fd < 0) {
    std::perror(path.c_str());
    return {};
  }
  std::vector<uint8_t> page(4096, 0x5a);
  std::vector<int64_t> nanos;
  for (int i = 0; i < syncs; ++i) {
    const int64_t t0 = nowNanos();
    page[0] = static_cast<uint8_t>(i);
    if (::pwrite(fd, page.data(), page.size(), 0) != static_cast<ssize_t>(page.size()) || ::fdatasync(fd) != 0) {
      std::perror(path.c_str());
      break;
    }
    nanos.push_back(nowNanos() - t0);
  }
  ::close(fd);
  return percentiles(std::move(nanos));
}

// ---------------------------------------------------------------------------
// The responder process.

[[noreturn]] void runResponder(bool durable, TestDirectory& directory, const TlsCredentials& self,
                               const std::string& driver, const TlsLinkOptions& base, uint16_t port,
                               const flows::DeliveryConfig& delivery_config) {
  std::mutex m;
  std::condition_variable cv;
  bool done = false;
  uint64_t received = 0;
  StoreCounts trial_start, latency_start;
  std::vector<int64_t> latencies;
  latencies.reserve(1 << 20);
  // Runs on the side's executor, which handles no frame before the Side's
  // constructor has set everything up (that runs on the executor too).
  auto on_message = [&](Side& side, ByteView msg) {
    Channel& channel = *side.channel;
    if (msg.empty()) return;
    switch (msg[0]) {
      case data: {
        if (received == 0) trial_start = side.storeCounts();
        ++received;
        const bool last = msg[1] == 1;
        if (received % ack_every == 0 || last) {
          StoreCounts c;
          if (last) {
            StoreCounts now = side.storeCounts();
            c = now.since(trial_start);
          }
          channel.send(message(ack, {received, static_cast<uint64_t>(nowNanos()), c.commits, c.requests,
                                     c.writer_cpu_micros}));
        }
        if (last) received = 0;  // the last of a trial
        break;
      }
      case timed:
        if (latencies.empty()) latency_start = side.storeCounts();
        latencies.push_back(nowNanos() - static_cast<int64_t>(getU64(msg.data() + 1)));
        break;
      case report: {
        auto p = percentiles(latencies);
        Percentiles arrived;
        if (side.timing_link) {
          arrived = percentiles(side.timing_link->frames_in_ns);
          side.timing_link->frames_in_ns.clear();
        }
        const StoreCounts c = side.storeCounts().since(latency_start);
        channel.send(message(reported, {p.count, static_cast<uint64_t>(p.p50_us * 1000),
                                        static_cast<uint64_t>(p.p99_us * 1000), arrived.count,
                                        static_cast<uint64_t>(arrived.p50_us * 1000),
                                        static_cast<uint64_t>(arrived.p99_us * 1000), c.commits, c.requests,
                                        c.writer_cpu_micros, c.queued_micros, c.run_micros, c.commit_micros}));
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
        channel.quitting = true;
        std::lock_guard lock(m);
        done = true;
        cv.notify_all();
        break;
      }
      default: break;
    }
  };
  std::optional<Side> side;
  side.emplace(durable, self, driver, directory, base, port, delivery_config, on_message);
  if (!side->error.empty()) {
    std::fprintf(stderr, "bench responder: %s\n", side->error.c_str());
    ::_exit(2);
  }
  pid_t parent = ::getppid();
  auto deadline = SteadyClock::now() + std::chrono::seconds(child_lifetime_seconds_max);
  {
    std::unique_lock lock(m);
    while (!done && ::getppid() == parent && SteadyClock::now() < deadline)
      cv.wait_for(lock, std::chrono::milliseconds(100));
  }
  side.reset();  // closes it and removes its vault's directory (_exit runs no destructors)
  ::_exit(0);
}

// ---------------------------------------------------------------------------
// The driver: runs the phases on its executor, the main thread waits.

class Driver {
 public:
  // inflight_max: durable sends not yet confirmed, in the pipelined phase.
  Driver(Side& side, uint64_t inflight_max)
      : side_(side), executor_(side.executor), channel_(*side.channel), inflight_max_(inflight_max) {
    executor_.runSync([this] {
      channel_.on_message = [this](ByteView m) { onMessage(m); };
      channel_.on_confirmed = [this] {
        if (filling_) fill();
      };
    });
  }

  struct Pipelined {
    double msgs_per_s = 0;
    double seconds = 0;
    double msgs_per_s_to_ack = 0;  // to the last ack's return to the sender instead
    StoreCounts sender, receiver;  // store commits and requests in the trial
  };

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

  // Messages per second, `count` messages pipelined: from the first send to
  // the last handed to the receiver's handler (its time comes in the ack).
  Pipelined pipelined(uint64_t count) {
    std::promise<void> done;
    auto finished = done.get_future();
    int64_t t0 = 0, t_ack = 0;
    StoreCounts before, after;
    executor_.post([&, count] {
      total_ = count;
      sent_ = acked_ = 0;
      before = side_.storeCounts();
      t0 = nowNanos();
      acked_done_ = [&] {
        t_ack = nowNanos();
        after = side_.storeCounts();
        filling_ = false;
        done.set_value();
      };
      filling_ = true;
      fill();
    });
    finished.wait();
    Pipelined r;
    r.seconds = static_cast<double>(last_arrival_ns_ - t0) / 1e9;
    r.msgs_per_s = static_cast<double>(count) / r.seconds;
    r.msgs_per_s_to_ack = static_cast<double>(count) / (static_cast<double>(t_ack - t0) / 1e9);
    r.sender = after.since(before);
    r.receiver = receiver_counts_;
    return r;
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
      load_counts_start_ = side_.storeCounts();
      if (auto* durable = dynamic_cast<DurableChannel*>(&channel_)) durable->durable_ns.clear();
      if (side_.timing_link) side_.timing_link->frames_out_ns.clear();
      // `seconds` by value: this task (holding the copy) is gone when the report arrives.
      report_done_ = [this, &done, seconds] {
        if (auto* durable = dynamic_cast<DurableChannel*>(&channel_))
          stages_.outbox_durable = percentiles(durable->durable_ns);
        if (side_.timing_link) stages_.frame_sent = percentiles(side_.timing_link->frames_out_ns);
        stages_.sender = side_.storeCounts().since(load_counts_start_);
        stages_.seconds = seconds;
        done.set_value();
      };
      tick();
    });
    finished.wait();
    return report_;
  }
  // Of the last atLoad(), durable mode.
  Stages stages() const {
    Stages s = stages_;
    s.frame_arrived = arrived_;
    return s;
  }

  void quit() {
    executor_.runSync([&] { channel_.send(message(Kind::quit, {})); });
  }

 private:
  void fill() {
    while (sent_ < total_ && sent_ - acked_ < window_messages && channel_.unconfirmed() < inflight_max_) {
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
        last_arrival_ns_ = static_cast<int64_t>(getU64(m.data() + 9));
        receiver_counts_ = {getU64(m.data() + 17), getU64(m.data() + 25), getU64(m.data() + 33)};
        if (acked_ == total_) acked_done_();
        else fill();
        break;
      case reported:
        report_.count = getU64(m.data() + 1);
        report_.p50_us = static_cast<double>(getU64(m.data() + 9)) / 1000.0;
        report_.p99_us = static_cast<double>(getU64(m.data() + 17)) / 1000.0;
        arrived_.count = getU64(m.data() + 25);
        arrived_.p50_us = static_cast<double>(getU64(m.data() + 33)) / 1000.0;
        arrived_.p99_us = static_cast<double>(getU64(m.data() + 41)) / 1000.0;
        stages_.receiver = {getU64(m.data() + 49), getU64(m.data() + 57), getU64(m.data() + 65),
                            getU64(m.data() + 73), getU64(m.data() + 81), getU64(m.data() + 89)};
        report_done_();
        break;
      default: break;
    }
  }

  Side& side_;
  AsioExecutor& executor_;
  Channel& channel_;
  const uint64_t inflight_max_;
  // Executor thread only.
  bool filling_ = false;
  int64_t last_arrival_ns_ = 0;
  StoreCounts receiver_counts_;
  int pings_left_ = 0;
  std::vector<int64_t> rtts_;
  std::function<void()> ping_done_, acked_done_, report_done_;
  uint64_t total_ = 0, sent_ = 0, acked_ = 0;
  double load_rate_ = 0;
  int64_t load_start_ = 0, load_end_ = 0;
  uint64_t load_sent_ = 0;
  StoreCounts load_counts_start_;
  Percentiles report_, arrived_;
  Stages stages_;
};

struct ModeResult {
  bool ran = false;
  Percentiles rtt, at_target, latency;
  Stages at_target_stages, latency_stages;
  Percentiles commit;  // durable mode: one small durable commit, the floor
  Percentiles sync;    // durable mode: one 4 KiB write + fdatasync
  double load = 0;
  // CPU per message in the last latency phase, each process (all its threads).
  double latency_sender_cpu_us = 0, latency_receiver_cpu_us = 0;
  Driver::Pipelined pipelined;  // the median trial
  double frames_per_write = 0;
  uint64_t frames_dropped = 0, refused = 0;
  flows::Delivery::Stats delivery;
  bool ok = false;
};

struct Run {
  bool quick = false;
  bool latency_only = false;  // --latency-only: only the --rate phase (A/B runs of the latency path)
  double fixed_rate = 0;
  uint64_t inflight_max = 16384;
  flows::DeliveryConfig delivery_config;
};

// Drives one mode's phases against its responder process, then tells it to quit.
ModeResult measure(bool durable, const Run& run, pid_t responder, TestDirectory& directory,
                   const TlsCredentials& self, const std::string& peer, const TlsLinkOptions& base,
                   uint16_t port) {
  ModeResult r;
  r.ran = true;
  const int round_trips = durable ? (run.quick ? 50 : 500) : (run.quick ? 200 : 10'000);
  const uint64_t count = durable ? (run.quick ? 5'000 : 200'000) : (run.quick ? 20'000 : 400'000);
  const int trials = run.quick ? 1 : (durable ? 3 : 5);
  const double load_seconds = run.quick ? 0.3 : 3.0;

  Side side(durable, self, peer, directory, base, port, run.delivery_config);
  if (!side.error.empty()) {
    std::fprintf(stderr, "bench: %s\n", side.error.c_str());
    ::kill(responder, SIGKILL);
    ::waitpid(responder, nullptr, 0);
    return r;
  }
  if (durable) {
    r.sync = fileSyncs(run.quick ? 50 : 300);
    r.commit = durableCommits(run.quick ? 50 : 300);
  }
  Driver driver(side, run.inflight_max);
  driver.pingPong(20);  // warm up: both connections up
  r.rtt = percentiles(driver.pingPong(round_trips));

  if (!run.latency_only) {
    std::vector<Driver::Pipelined> results;
    auto before = side.link->counters();
    for (int t = 0; t < trials; ++t) results.push_back(driver.pipelined(count));
    auto after = side.link->counters();
    std::sort(results.begin(), results.end(), [](auto& a, auto& b) { return a.msgs_per_s < b.msgs_per_s; });
    r.pipelined = results[results.size() / 2];
    r.frames_per_write = static_cast<double>(after.frames_out - before.frames_out) /
                         static_cast<double>(std::max<uint64_t>(1, after.tls_writes - before.tls_writes));

    r.at_target = driver.atLoad(target_msgs_per_s / 2, load_seconds);
    r.at_target_stages = driver.stages();
  }
  r.load = run.fixed_rate > 0 ? run.fixed_rate : r.pipelined.msgs_per_s / 2;
  const double sender_cpu_before = testing::processCpuMicros(::getpid());
  const double receiver_cpu_before = testing::processCpuMicros(responder);
  r.latency = driver.atLoad(r.load, load_seconds);
  r.latency_stages = driver.stages();
  if (r.latency.count > 0) {
    const auto messages = static_cast<double>(r.latency.count);
    r.latency_sender_cpu_us = (testing::processCpuMicros(::getpid()) - sender_cpu_before) / messages;
    r.latency_receiver_cpu_us = (testing::processCpuMicros(responder) - receiver_cpu_before) / messages;
  }

  side.executor.runSync([&] {
    side.channel->quitting = true;
    if (side.delivery) r.delivery = side.delivery->stats();
  });
  driver.quit();
  int status = 0;
  ::waitpid(responder, &status, 0);  // it exits once the quit message is handed over
  side.close();
  auto counters = side.link->counters();
  r.frames_dropped = counters.frames_dropped;
  r.refused = counters.refusedTotal();
  r.ok = WIFEXITED(status) && WEXITSTATUS(status) == 0 && r.latency.count > 0 &&
         (run.latency_only || r.at_target.count > 0);
  return r;
}

// Each store during a latency phase: its commit cadence and where a
// request's time goes (queued, batch running, commit with its syncs).
void printStores(const Stages& st) {
  auto one = [&](const char* who, const StoreCounts& c) {
    const double commits = static_cast<double>(std::max<uint64_t>(1, c.commits));
    const double requests = static_cast<double>(std::max<uint64_t>(1, c.requests));
    std::printf("      %s store: %6.0f commits/s, %5.1f requests per commit; per request queued %7.1f us;"
                " per commit run %6.1f us, commit %6.1f us, writer CPU %6.1f us\n",
                who, static_cast<double>(c.commits) / std::max(st.seconds, 1e-9), requests / commits,
                static_cast<double>(c.queued_micros) / requests, static_cast<double>(c.run_micros) / commits,
                static_cast<double>(c.commit_micros) / commits, static_cast<double>(c.writer_cpu_micros) / commits);
  };
  one("sender  ", st.sender);
  one("receiver", st.receiver);
}

void printMode(const char* title, const ModeResult& r, const Run& run, bool durable) {
  std::printf("%s\n", title);
  std::printf("  %s ping-pong round trip%s        p50 %7.1f us  p99 %7.1f us  (%zu round trips)\n",
              durable ? "durable" : "TLS link", durable ? "  " : " ", r.rtt.p50_us, r.rtt.p99_us, r.rtt.count);
  if (durable) {
    std::printf("      floor: one small durable commit (own store, same file system) p50 %7.1f us p99 %7.1f us;"
                " a message takes two\n"
                "             (one 4 KiB write + fdatasync p50 %7.1f us p99 %7.1f us; a commit syncs twice)\n",
                r.commit.p50_us, r.commit.p99_us, r.sync.p50_us, r.sync.p99_us);
  }
  if (!run.latency_only) {
    if (durable)
      std::printf("  %zu-byte messages pipelined (%llu unconfirmed sends, Delivery window %u)  %10.0f msg/s   target >= 50000\n",
                  message_bytes, (unsigned long long)run.inflight_max, run.delivery_config.window_messages_max,
                  r.pipelined.msgs_per_s);
    else
      std::printf("  %zu-byte messages pipelined (window %llu)     %10.0f msg/s   target >= 50000\n", message_bytes,
                  (unsigned long long)window_messages, r.pipelined.msgs_per_s);
    std::printf("      (first send to last handed over; median trial of %.2f s; to the last ack's return %.0f msg/s;"
                " %.0f frames per TLS write)\n",
                r.pipelined.seconds, r.pipelined.msgs_per_s_to_ack, r.frames_per_write);
    if (durable) {
      auto rate = [&](uint64_t n) { return static_cast<double>(n) / r.pipelined.seconds; };
      auto per = [](const StoreCounts& c) {
        return static_cast<double>(c.requests) / static_cast<double>(std::max<uint64_t>(1, c.commits));
      };
      auto cpu = [](const StoreCounts& c) {
        return static_cast<double>(c.writer_cpu_micros) / static_cast<double>(std::max<uint64_t>(1, c.requests));
      };
      std::printf("      sender store:   %7.0f durable commits/s, %6.1f requests and %6.1f messages per commit,"
                  " writer CPU %5.1f us per request\n",
                  rate(r.pipelined.sender.commits), per(r.pipelined.sender),
                  r.pipelined.msgs_per_s / std::max(1.0, rate(r.pipelined.sender.commits)), cpu(r.pipelined.sender));
      std::printf("      receiver store: %7.0f durable commits/s, %6.1f requests and %6.1f messages per commit,"
                  " writer CPU %5.1f us per request\n",
                  rate(r.pipelined.receiver.commits), per(r.pipelined.receiver),
                  r.pipelined.msgs_per_s / std::max(1.0, rate(r.pipelined.receiver.commits)), cpu(r.pipelined.receiver));
    }
    std::printf("  one-way latency at %.0f msg/s (half the target)  p50 %7.1f us  p99 %7.1f us  target p99 <= 5000 us"
                "  (%zu messages)\n",
                target_msgs_per_s / 2, r.at_target.p50_us, r.at_target.p99_us, r.at_target.count);
    if (durable) {
      const Stages& st = r.at_target_stages;
      std::printf("      from send(): outbox durable p50 %7.1f us p99 %7.1f us; frame to the link p50 %7.1f us p99 %7.1f us;\n"
                  "                   frame at the receiver p50 %7.1f us p99 %7.1f us; handed over (inbox durable) as above\n",
                  st.outbox_durable.p50_us, st.outbox_durable.p99_us, st.frame_sent.p50_us, st.frame_sent.p99_us,
                  st.frame_arrived.p50_us, st.frame_arrived.p99_us);
      printStores(st);
    }
  }
  std::printf("  one-way latency at %.0f msg/s (%s)  p50 %7.1f us  p99 %7.1f us  (%zu messages)\n", r.load,
              run.fixed_rate > 0 ? "--rate" : "half the pipelined rate", r.latency.p50_us, r.latency.p99_us,
              r.latency.count);
  std::printf("      CPU per message: sender process %.1f us, receiver process %.1f us (all threads; %.0f%% of the 2 cores)\n",
              r.latency_sender_cpu_us, r.latency_receiver_cpu_us,
              (r.latency_sender_cpu_us + r.latency_receiver_cpu_us) * r.load / 1e6 / 2 * 100);
  if (durable) {
    const Stages& st = r.latency_stages;
    std::printf("      from send(): outbox durable p50 %7.1f us p99 %7.1f us; frame to the link p50 %7.1f us p99 %7.1f us;\n"
                "                   frame at the receiver p50 %7.1f us p99 %7.1f us; handed over (inbox durable) as above\n",
                st.outbox_durable.p50_us, st.outbox_durable.p99_us, st.frame_sent.p50_us, st.frame_sent.p99_us,
                st.frame_arrived.p50_us, st.frame_arrived.p99_us);
    printStores(st);
  }
  if (durable)
    std::printf("  delivery: %llu sent, %llu retransmitted, %llu ack frames, %llu store failures\n",
                (unsigned long long)r.delivery.messages_sent, (unsigned long long)r.delivery.messages_retransmitted,
                (unsigned long long)r.delivery.ack_frames_sent, (unsigned long long)r.delivery.store_failures);
  if (r.frames_dropped > 0 || r.refused > 0)
    std::printf("  WARNING: %llu frames dropped, %llu connections refused\n", (unsigned long long)r.frames_dropped,
                (unsigned long long)r.refused);
}

std::string modeJson(const ModeResult& r, bool durable) {
  char buf[2048];
  std::snprintf(buf, sizeof buf,
                "{\"pipelined_msgs_per_s\":%.0f,\"pipelined_to_ack_msgs_per_s\":%.0f,\"frames_per_tls_write\":%.1f,\"half_target_p50_us\":%.1f,"
                "\"half_target_p99_us\":%.1f,\"load_msgs_per_s\":%.0f,\"latency_p50_us\":%.1f,"
                "\"latency_p99_us\":%.1f,\"latency_sender_cpu_us_per_msg\":%.2f,\"latency_receiver_cpu_us_per_msg\":%.2f,"
                "\"rtt_p50_us\":%.1f,\"rtt_p99_us\":%.1f,\"frames_dropped\":%llu",
                r.pipelined.msgs_per_s, r.pipelined.msgs_per_s_to_ack, r.frames_per_write, r.at_target.p50_us, r.at_target.p99_us, r.load,
                r.latency.p50_us, r.latency.p99_us, r.latency_sender_cpu_us, r.latency_receiver_cpu_us, r.rtt.p50_us,
                r.rtt.p99_us, (unsigned long long)r.frames_dropped);
  std::string out = buf;
  if (durable) {
    const double secs = std::max(r.pipelined.seconds, 1e-9);
    std::snprintf(buf, sizeof buf,
                  ",\"sender_commits_per_s\":%.0f,\"sender_messages_per_commit\":%.2f,"
                  "\"receiver_commits_per_s\":%.0f,\"receiver_messages_per_commit\":%.2f,"
                  "\"retransmitted\":%llu,\"half_target_outbox_durable_p50_us\":%.1f,"
                  "\"half_target_outbox_durable_p99_us\":%.1f,\"half_target_frame_sent_p50_us\":%.1f,"
                  "\"half_target_frame_sent_p99_us\":%.1f,\"half_target_frame_arrived_p50_us\":%.1f,"
                  "\"half_target_frame_arrived_p99_us\":%.1f,\"commit_p50_us\":%.1f,\"commit_p99_us\":%.1f,\"fdatasync_p50_us\":%.1f,\"fdatasync_p99_us\":%.1f,"
                  "\"latency_outbox_durable_p50_us\":%.1f,\"latency_outbox_durable_p99_us\":%.1f,"
                  "\"latency_frame_arrived_p50_us\":%.1f,\"latency_frame_arrived_p99_us\":%.1f",
                  static_cast<double>(r.pipelined.sender.commits) / secs,
                  r.pipelined.msgs_per_s * secs / static_cast<double>(std::max<uint64_t>(1, r.pipelined.sender.commits)),
                  static_cast<double>(r.pipelined.receiver.commits) / secs,
                  r.pipelined.msgs_per_s * secs / static_cast<double>(std::max<uint64_t>(1, r.pipelined.receiver.commits)),
                  (unsigned long long)r.delivery.messages_retransmitted, r.at_target_stages.outbox_durable.p50_us,
                  r.at_target_stages.outbox_durable.p99_us, r.at_target_stages.frame_sent.p50_us,
                  r.at_target_stages.frame_sent.p99_us, r.at_target_stages.frame_arrived.p50_us,
                  r.at_target_stages.frame_arrived.p99_us, r.commit.p50_us, r.commit.p99_us,
                  r.sync.p50_us, r.sync.p99_us, r.latency_stages.outbox_durable.p50_us,
                  r.latency_stages.outbox_durable.p99_us, r.latency_stages.frame_arrived.p50_us,
                  r.latency_stages.frame_arrived.p99_us);
    out += buf;
  }
  return out + "}";
}

}  // namespace

int main(int argc, char** argv) {
  Run run;
  bool link_mode = true, durable_mode = true;
  // Delivery's defaults (window 256, 512 waiting) are for many peers; one
  // busy peer pipelines more. The receiver drops arrivals beyond twice
  // inbox_waiting_messages_max held (stored or being stored) and the sender
  // retransmits them only on its timer: waiting >= window keeps a full
  // window of messages being stored from being dropped.
  // A bigger window makes bigger group commits, and a retransmission timer
  // below a commit's time only resends what is being stored. The window is
  // at most vault::receive_ahead_seqs_max (what a receiver takes above its
  // watermark).
  run.delivery_config.window_messages_max = 4096;
  run.delivery_config.inbox_waiting_messages_max = 0;  // 0: the window (set below)
  run.delivery_config.retransmit_delay_micros_min = 1'000'000;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) run.quick = true;
    else if (std::strcmp(argv[i], "--rate") == 0 && i + 1 < argc) run.fixed_rate = std::atof(argv[++i]);
    else if (std::strcmp(argv[i], "--latency-only") == 0) run.latency_only = true;
    else if (std::strcmp(argv[i], "--durable") == 0) link_mode = false, durable_mode = true;
    else if (std::strcmp(argv[i], "--link") == 0) link_mode = true, durable_mode = false;
    else if (std::strcmp(argv[i], "--sequential-ids") == 0) sequential_ids = true;
    else if (std::strcmp(argv[i], "--inflight") == 0 && i + 1 < argc)
      run.inflight_max = std::max<uint64_t>(1, std::strtoull(argv[++i], nullptr, 10));
    else if (std::strcmp(argv[i], "--window") == 0 && i + 1 < argc)
      run.delivery_config.window_messages_max = static_cast<uint32_t>(std::clamp<long>(
          std::atol(argv[++i]), 1, static_cast<long>(vault::receive_ahead_seqs_max)));
    else if (std::strcmp(argv[i], "--waiting") == 0 && i + 1 < argc)
      run.delivery_config.inbox_waiting_messages_max = static_cast<uint32_t>(std::max(1L, std::atol(argv[++i])));
    else {
      std::fprintf(stderr,
                   "usage: bench_messaging [--quick] [--rate MSGS_PER_S] [--latency-only] [--link | --durable] [--inflight N] "
                   "[--window N] [--waiting N] [--sequential-ids]\n");
      return 2;
    }
  }
  if (run.latency_only && run.fixed_rate <= 0) run.fixed_rate = target_msgs_per_s / 10;
  if (run.delivery_config.inbox_waiting_messages_max == 0)
    run.delivery_config.inbox_waiting_messages_max = run.delivery_config.window_messages_max;
  const int tcp_round_trips = run.quick ? 300 : 20'000;
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
  // One pair of ports per mode: each mode runs its own pair of processes.
  uint16_t ports[2][2];
  for (auto& p : ports) p[0] = freePort(), p[1] = freePort();

  auto tcp = percentiles(tcpPingPong(tcp_round_trips));

  // Both responders are forked now, before this process starts any thread.
  pid_t responders[2] = {-1, -1};
  for (int mode = 0; mode < 2; ++mode) {
    if (mode == 0 ? !link_mode : !durable_mode) continue;
    pid_t pid = ::fork();
    if (pid < 0) {
      std::perror("fork");
      return 1;
    }
    if (pid == 0) {
      directory.setMember(driver_creds.name, Endpoint{"127.0.0.1", ports[mode][0]});
      directory.setMember(responder_creds.name, Endpoint{"127.0.0.1", ports[mode][1]});
      runResponder(mode == 1, directory, responder_creds, driver_creds.name, base, ports[mode][1],
                   run.delivery_config);
    }
    responders[mode] = pid;
  }

  ModeResult link_result, durable_result;
  if (link_mode) {
    directory.setMember(driver_creds.name, Endpoint{"127.0.0.1", ports[0][0]});
    directory.setMember(responder_creds.name, Endpoint{"127.0.0.1", ports[0][1]});
    link_result = measure(false, run, responders[0], directory, driver_creds, responder_creds.name, base, ports[0][0]);
  }
  if (durable_mode) {
    directory.setMember(driver_creds.name, Endpoint{"127.0.0.1", ports[1][0]});
    directory.setMember(responder_creds.name, Endpoint{"127.0.0.1", ports[1][1]});
    durable_result = measure(true, run, responders[1], directory, driver_creds, responder_creds.name, base, ports[1][0]);
  }

  std::printf("CCAL messaging benchmark (%s): two processes, TLS 1.3 on loopback\n",
              run.quick ? "quick smoke run" : "full run");
  std::printf("  raw TCP ping-pong round trip (reference)      p50 %7.1f us  p99 %7.1f us  (%zu round trips)\n",
              tcp.p50_us, tcp.p99_us, tcp.count);
  if (link_result.ran) printMode("best-effort link (node/tls_link):", link_result, run, false);
  if (durable_result.ran)
    printMode("exactly-once messaging with the durable outbox (flows/delivery, fsync per commit):", durable_result,
              run, true);
  std::string json = "{\"bench\":\"messaging\",\"message_bytes\":" + std::to_string(message_bytes);
  char buf[256];
  std::snprintf(buf, sizeof buf, ",\"tcp_rtt_p50_us\":%.1f,\"tcp_rtt_p99_us\":%.1f", tcp.p50_us, tcp.p99_us);
  json += buf;
  if (link_result.ran) json += ",\"link\":" + modeJson(link_result, false);
  if (durable_result.ran) {
    std::snprintf(buf, sizeof buf, ",\"durable_inflight\":%llu,\"durable_window\":%u",
                  (unsigned long long)run.inflight_max, run.delivery_config.window_messages_max);
    json += buf;
    json += ",\"durable\":" + modeJson(durable_result, true);
  }
  std::printf("%s}\n", json.c_str());
  bool ok = (!link_result.ran || link_result.ok) && (!durable_result.ran || durable_result.ok) &&
            (link_result.ran || durable_result.ran);
  return ok ? 0 : 1;
}
