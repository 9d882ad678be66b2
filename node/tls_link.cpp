#include "node/tls_link.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <deque>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <unordered_map>

#include "ledger/assert.h"
#include "ledger/pki.h"
#include "node/asio.h"

namespace ccal::node {

namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using SteadyClock = std::chrono::steady_clock;

namespace {

constexpr size_t frame_header_bytes = 4;
constexpr size_t read_chunk_bytes = 64 * 1024;
// Frame lengths travel in 4 bytes; keep well inside them.
constexpr size_t frame_bytes_limit = size_t{1} << 30;

// No delay; keepalive probes after keepalive_idle_seconds of silence (a peer
// that vanished is noticed in about idle + 3 intervals, not the kernel's two
// hours); and data unacknowledged for tcp_user_timeout_micros — a peer that
// stopped reading, or whose host stopped answering — ends the connection
// (then redialled), instead of holding it up until TCP gives up (~15 min).
template <class Socket>
void tuneSocket(Socket& socket, const TlsLinkOptions& o) {
  boost::system::error_code ignored;
  socket.set_option(tcp::no_delay(true), ignored);
  socket.set_option(asio::socket_base::keep_alive(true), ignored);
  const int fd = socket.native_handle();
  const int idle = static_cast<int>(o.keepalive_idle_seconds), interval = 5, count = 3;
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval);
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof count);
  const unsigned timeout_ms = static_cast<unsigned>(o.tcp_user_timeout_micros / 1000);
  ::setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &timeout_ms, sizeof timeout_ms);
}
// The byte an accepting member writes once it has identified the dialler:
// the dialler counts its connection as up only then, so a refusal (which in
// TLS 1.3 reaches a client only after its side of the handshake is done)
// never shows as a peer that came up and at once went down.
constexpr uint8_t accept_byte = 0x01;
// Chain presented in a handshake: leaf, node CA, doorman (the root is ours).
constexpr int verify_depth_max = 4;
constexpr int64_t accept_retry_delay_micros = 100'000;

void putBigEndian32(uint8_t* out, uint32_t v) {
  out[0] = static_cast<uint8_t>(v >> 24);
  out[1] = static_cast<uint8_t>(v >> 16);
  out[2] = static_cast<uint8_t>(v >> 8);
  out[3] = static_cast<uint8_t>(v);
}

uint32_t getBigEndian32(const uint8_t* in) {
  return (uint32_t{in[0]} << 24) | (uint32_t{in[1]} << 16) | (uint32_t{in[2]} << 8) | uint32_t{in[3]};
}

class TokenBucket {
 public:
  TokenBucket(double rate_per_second, double burst, SteadyClock::time_point now)
      : rate_(rate_per_second), burst_(burst), tokens_(burst), last_(now) {}
  void refill(SteadyClock::time_point now) {
    double seconds = std::chrono::duration<double>(now - last_).count();
    if (seconds > 0) tokens_ = std::min(burst_, tokens_ + seconds * rate_);
    last_ = now;
  }
  bool take(double n) {
    if (tokens_ < n) return false;
    tokens_ -= n;
    return true;
  }

 private:
  double rate_, burst_, tokens_;
  SteadyClock::time_point last_;
};

std::string subjectOf(X509* cert) {
  if (cert == nullptr) return "(none)";
  char buf[512];
  X509_NAME_oneline(X509_get_subject_name(cert), buf, sizeof buf);
  return buf;
}

Bytes derOf(X509* cert) {
  int len = i2d_X509(cert, nullptr);
  if (len <= 0) return {};
  Bytes out(static_cast<size_t>(len));
  uint8_t* p = out.data();
  i2d_X509(cert, &p);
  return out;
}

Refusal refusalFor(Errc code) {
  switch (code) {
    case Errc::certificate_revoked: return Refusal::certificate_revoked;
    case Errc::certificate_expired: return Refusal::certificate_expired;
    case Errc::certificate_invalid:
    case Errc::name_constraint:
    case Errc::malformed:
    case Errc::unknown_scheme: return Refusal::certificate_invalid;
    default: return Refusal::not_member;
  }
}

std::string sslErrorText(const boost::system::error_code& ec) {
  std::string text = ec.message();
  if (ec.category() == asio::error::get_ssl_category()) {
    const char* reason = ERR_reason_error_string(static_cast<unsigned long>(ec.value()));
    if (reason != nullptr && text.find(reason) == std::string::npos) text += std::string(" (") + reason + ")";
  }
  return text;
}

bool isNoClientCertificate(const boost::system::error_code& ec) {
  return ec.category() == asio::error::get_ssl_category() &&
         ERR_GET_REASON(static_cast<unsigned long>(ec.value())) == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE;
}

}  // namespace

const char* refusalName(Refusal r) {
  switch (r) {
    case Refusal::tls_handshake: return "tls_handshake";
    case Refusal::no_certificate: return "no_certificate";
    case Refusal::untrusted_chain: return "untrusted_chain";
    case Refusal::certificate_invalid: return "certificate_invalid";
    case Refusal::certificate_revoked: return "certificate_revoked";
    case Refusal::certificate_expired: return "certificate_expired";
    case Refusal::not_member: return "not_member";
    case Refusal::wrong_member: return "wrong_member";
    case Refusal::refused_by_peer: return "refused_by_peer";
    case Refusal::handshake_timeout: return "handshake_timeout";
    case Refusal::too_many_connections: return "too_many_connections";
    case Refusal::count_: break;
  }
  return "unknown";
}

const char* disconnectName(Disconnect d) {
  switch (d) {
    case Disconnect::peer_closed: return "peer_closed";
    case Disconnect::io_error: return "io_error";
    case Disconnect::oversized_frame: return "oversized_frame";
    case Disconnect::empty_frame: return "empty_frame";
    case Disconnect::rate_limited: return "rate_limited";
    case Disconnect::unexpected_data: return "unexpected_data";
    case Disconnect::replaced: return "replaced";
    case Disconnect::shutdown: return "shutdown";
    case Disconnect::not_identified:
      return "not_identified";
    case Disconnect::count_: break;
  }
  return "unknown";
}

const char* outboundStateName(TlsPeerStatus::Outbound s) {
  switch (s) {
    case TlsPeerStatus::Outbound::idle: return "idle";
    case TlsPeerStatus::Outbound::connecting: return "connecting";
    case TlsPeerStatus::Outbound::up: return "up";
    case TlsPeerStatus::Outbound::backoff: return "backoff";
  }
  return "unknown";
}

uint64_t TlsLinkCounters::refusedTotal() const {
  uint64_t total = 0;
  for (auto n : refusals) total += n;
  return total;
}

namespace {
Result<std::string> readPemFile(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return makeError(Errc::not_found, std::string("cannot read the ") + what + " file " + path);
  std::ostringstream s;
  s << in.rdbuf();
  if (!in && !in.eof()) return makeError(Errc::storage_error, std::string("error reading the ") + what + " file " + path);
  return s.str();
}
}  // namespace

Status TlsLinkOptions::loadPemFiles(const std::string& root_path, const std::string& chain_path,
                                    const std::string& key_path) {
  auto root = readPemFile(root_path, "network root certificate");
  CCAL_TRY(root);
  auto chain = readPemFile(chain_path, "TLS certificate chain");
  CCAL_TRY(chain);
  auto key = readPemFile(key_path, "TLS private key");
  CCAL_TRY(key);
  root_certificate_pem = std::move(root.value());
  certificate_chain_pem = std::move(chain.value());
  private_key_pem = std::move(key.value());
  return Status::success();
}

// ---------------------------------------------------------------------------

struct Conn;

struct Peer {
  std::string name;
  std::deque<Bytes> queue;
  size_t queued_bytes = 0;
  std::shared_ptr<Conn> out;  // dialling or up
  TlsPeerStatus::Outbound state = TlsPeerStatus::Outbound::idle;
  uint32_t failed_dials = 0;
  flows::Executor::TimerId redial_timer = 0;
  bool dropping = false;  // the queue is full and frames are being dropped (log once)
  size_t inbound = 0;     // established inbound connections
};

struct TlsLink::Impl : std::enable_shared_from_this<TlsLink::Impl> {
  Impl(AsioExecutor& e, const PeerDirectory& d, TlsLinkOptions o)
      : executor(e), directory(d), options(std::move(o)), context(ssl::context::tls),
        acceptor(e.context()), resolver(e.context()) {}

  AsioExecutor& executor;
  const PeerDirectory& directory;
  const TlsLinkOptions options;
  std::shared_ptr<spdlog::logger> log;
  ssl::context context;
  tcp::acceptor acceptor;
  tcp::resolver resolver;
  uint16_t port = 0;

  // Executor thread only.
  flows::LinkHandler* handler = nullptr;
  bool accepting = false;
  bool stopped = false;
  std::map<std::string, Peer, std::less<>> peers;
  std::unordered_map<uint64_t, std::shared_ptr<Conn>> inbound;  // handshaking or up
  uint64_t next_conn_id = 1;

  struct AtomicCounters {
    std::atomic<uint64_t> frames_in{0}, bytes_in{0}, frames_out{0}, bytes_out{0}, frames_dropped{0},
        tls_writes{0}, connects{0}, inbound_accepted{0}, outbound_established{0};
    std::array<std::atomic<uint64_t>, static_cast<size_t>(Refusal::count_)> refusals{};
    std::array<std::atomic<uint64_t>, static_cast<size_t>(Disconnect::count_)> disconnects{};
  } counters;

  static void bump(std::atomic<uint64_t>& c, uint64_t n = 1) { c.fetch_add(n, std::memory_order_release); }

  Status setUp();
  void startAccept();
  void onAccept(const boost::system::error_code& ec, tcp::socket socket);
  void dial(Peer& peer);
  void scheduleRedial(Peer& peer);
  void startWrite(Peer& peer);
  void connClosed(Conn& conn, bool was_established);
  void refuse(Conn& conn, Refusal reason, const std::string& detail);
  void shutdown();
  Peer* peerEntry(std::string_view name, Status* error);
};

struct Conn : std::enable_shared_from_this<Conn> {
  enum class Side : uint8_t { inbound, outbound };

  Conn(std::shared_ptr<TlsLink::Impl> l, Side s, tcp::socket socket, uint64_t i)
      : link(std::move(l)), side(s), stream(std::move(socket), link->context), id(i),
        frames_bucket(link->options.peer_frames_per_second_max, link->options.peer_frames_burst_max,
                      SteadyClock::now()),
        bytes_bucket(link->options.peer_bytes_per_second_max, link->options.peer_bytes_burst_max,
                     SteadyClock::now()) {}

  std::shared_ptr<TlsLink::Impl> link;  // keeps the link's state alive while handlers are pending
  Side side;
  ssl::stream<tcp::socket> stream;
  uint64_t id;
  std::string remote;         // address:port, for log lines
  std::string expected_peer;  // outbound: the member we dialled
  std::string peer;           // the member the handshake identified
  std::vector<Bytes> peer_chain;  // the certificates it presented, leaf first (recheckPeers)
  std::string presented;      // subject of the certificate the peer presented, for log lines
  bool has_refusal = false;
  Refusal refusal = Refusal::tls_handshake;
  std::string refusal_detail;
  bool established = false;
  bool closed = false;
  bool timed_out = false;
  flows::Executor::TimerId deadline = 0;

  // Reading: bytes [read_begin, read_end) of read_buffer are received, not yet framed.
  Bytes read_buffer;
  size_t read_begin = 0, read_end = 0;
  TokenBucket frames_bucket, bytes_bucket;
  uint8_t accept_in = 0;

  // Writing (outbound): one coalesced batch in flight.
  Bytes write_buffer;
  bool writing = false;
  size_t batch_frames = 0, batch_payload_bytes = 0;

  std::string describe() const {
    std::string s = side == Side::inbound ? "inbound connection from " : "outbound connection to ";
    if (!peer.empty()) s += peer + " at ";
    else if (!expected_peer.empty()) s += expected_peer + " at ";
    s += remote;
    return s;
  }

  void setDeadline() {
    std::weak_ptr<Conn> weak = shared_from_this();
    deadline = link->executor.runAfter(link->options.handshake_timeout_micros, [weak] {
      auto self = weak.lock();
      if (!self || self->closed || self->established) return;
      self->deadline = 0;
      self->timed_out = true;
      boost::system::error_code ignored;
      self->stream.lowest_layer().close(ignored);  // the pending operation fails; it reports the refusal
    });
  }

  void cancelDeadline() {
    if (deadline != 0) link->executor.cancel(deadline);
    deadline = 0;
  }

  // Called by OpenSSL for each certificate of the peer's chain, root first.
  bool verify(bool preverified, ssl::verify_context& vc) {
    X509_STORE_CTX* ctx = vc.native_handle();
    int depth = X509_STORE_CTX_get_error_depth(ctx);
    if (has_refusal) return false;
    if (!preverified) {
      int err = X509_STORE_CTX_get_error(ctx);
      presented = subjectOf(X509_STORE_CTX_get0_cert(ctx));
      has_refusal = true;
      refusal = Refusal::untrusted_chain;
      refusal_detail = std::string(X509_verify_cert_error_string(err)) + " (certificate at depth " +
                       std::to_string(depth) + ": " + subjectOf(X509_STORE_CTX_get_current_cert(ctx)) + ")";
      return false;
    }
    if (depth > 0) return true;
    // The leaf, last: OpenSSL found a path to the network root; now the
    // directory says which member this is (revocation, membership).
    X509* leaf = X509_STORE_CTX_get_current_cert(ctx);
    presented = subjectOf(leaf);
    std::vector<Bytes> chain{derOf(leaf)};
    if (STACK_OF(X509)* sent = X509_STORE_CTX_get0_untrusted(ctx)) {
      for (int i = 0; i < sk_X509_num(sent); ++i) {
        X509* c = sk_X509_value(sent, i);
        if (X509_cmp(c, leaf) != 0) chain.push_back(derOf(c));
      }
    }
    auto who = link->directory.identifyPeer(chain);
    if (!who) {
      has_refusal = true;
      refusal = refusalFor(who.error().code);
      refusal_detail = who.error().toString();
      // The error picks the alert the peer gets (else "internal error").
      X509_STORE_CTX_set_error(ctx, refusal == Refusal::certificate_revoked   ? X509_V_ERR_CERT_REVOKED
                                    : refusal == Refusal::certificate_expired ? X509_V_ERR_CERT_HAS_EXPIRED
                                                                              : X509_V_ERR_APPLICATION_VERIFICATION);
      return false;
    }
    if (side == Side::outbound && *who != expected_peer) {
      has_refusal = true;
      refusal = Refusal::wrong_member;
      refusal_detail = "dialled " + expected_peer + " but " + *who + " answered";
      X509_STORE_CTX_set_error(ctx, X509_V_ERR_APPLICATION_VERIFICATION);
      return false;
    }
    peer = std::move(who.value());
    peer_chain = std::move(chain);
    return true;
  }

  void close(std::optional<Disconnect> why, const std::string& detail = {}) {
    if (closed) return;
    closed = true;
    cancelDeadline();
    boost::system::error_code ignored;
    stream.lowest_layer().shutdown(tcp::socket::shutdown_both, ignored);
    stream.lowest_layer().close(ignored);
    bool was_established = established;
    if (was_established && why) {
      // Log first, count second: whoever sees the count can find the line.
      bool protocol = *why == Disconnect::oversized_frame || *why == Disconnect::empty_frame ||
                      *why == Disconnect::rate_limited || *why == Disconnect::unexpected_data ||
                      *why == Disconnect::not_identified;
      if (protocol) {
        link->log->warn("tls {}: disconnected {}: {}{}{}", link->options.self, describe(), disconnectName(*why),
                        detail.empty() ? "" : ": ", detail);
      } else if (*why != Disconnect::shutdown) {
        link->log->info("tls {}: {} closed: {}{}{}", link->options.self, describe(), disconnectName(*why),
                        detail.empty() ? "" : ": ", detail);
      }
      TlsLink::Impl::bump(link->counters.disconnects[static_cast<size_t>(*why)]);
    }
    link->connClosed(*this, was_established);
  }

  // Reading frames (inbound) or watching for the end (outbound).
  void startRead() {
    if (closed) return;
    if (read_buffer.size() - read_end < read_chunk_bytes / 4) {
      // Compact, then make room for at least a chunk (or the frame being received).
      if (read_begin > 0) {
        std::memmove(read_buffer.data(), read_buffer.data() + read_begin, read_end - read_begin);
        read_end -= read_begin;
        read_begin = 0;
      }
      if (read_buffer.size() - read_end < read_chunk_bytes / 4) read_buffer.resize(read_end + read_chunk_bytes);
    }
    auto self = shared_from_this();
    stream.async_read_some(asio::buffer(read_buffer.data() + read_end, read_buffer.size() - read_end),
                           [self](const boost::system::error_code& ec, size_t n) { self->onRead(ec, n); });
  }

  void onRead(const boost::system::error_code& ec, size_t n) {
    if (closed) return;
    if (ec) {
      bool clean = ec == asio::error::eof || ec == ssl::error::stream_truncated;
      close(clean ? Disconnect::peer_closed : Disconnect::io_error, clean ? "" : sslErrorText(ec));
      return;
    }
    if (side == Side::outbound) {
      close(Disconnect::unexpected_data, std::to_string(n) + " bytes from a member that should only listen");
      return;
    }
    read_end += n;
    auto now = SteadyClock::now();
    frames_bucket.refill(now);
    bytes_bucket.refill(now);
    const size_t max = link->options.frame_bytes_max;
    size_t incomplete_whole = 0;  // a frame whose header is in, its bytes not all
    while (read_end - read_begin >= frame_header_bytes) {
      const uint8_t* p = read_buffer.data() + read_begin;
      uint32_t len = getBigEndian32(p);
      if (len == 0) {
        close(Disconnect::empty_frame, "a frame header with length 0");
        return;
      }
      if (len > max) {
        close(Disconnect::oversized_frame,
              "a frame of " + std::to_string(len) + " bytes, over the limit of " + std::to_string(max));
        return;
      }
      size_t whole = frame_header_bytes + len;
      if (read_end - read_begin < whole) {
        incomplete_whole = whole;
        // Make room for the whole frame (at most frame_bytes_max + 4).
        if (read_buffer.size() - read_begin < whole) {
          std::memmove(read_buffer.data(), p, read_end - read_begin);
          read_end -= read_begin;
          read_begin = 0;
          if (read_buffer.size() < whole) read_buffer.resize(whole);
        }
        break;
      }
      if (!frames_bucket.take(1)) {
        close(Disconnect::rate_limited,
              "over " + std::to_string(static_cast<uint64_t>(link->options.peer_frames_per_second_max)) +
                  " frames/s (burst " + std::to_string(static_cast<uint64_t>(link->options.peer_frames_burst_max)) + ")");
        return;
      }
      if (!bytes_bucket.take(static_cast<double>(whole))) {
        close(Disconnect::rate_limited,
              "over " + std::to_string(static_cast<uint64_t>(link->options.peer_bytes_per_second_max)) +
                  " bytes/s (burst " + std::to_string(static_cast<uint64_t>(link->options.peer_bytes_burst_max)) + ")");
        return;
      }
      read_begin += whole;
      TlsLink::Impl::bump(link->counters.frames_in);
      TlsLink::Impl::bump(link->counters.bytes_in, len);
      if (link->handler != nullptr) link->handler->onFrame(peer, ByteView(p + frame_header_bytes, len));
      if (closed) return;  // the handler stopped the link
    }
    if (read_begin == read_end) read_begin = read_end = 0;
    // A big frame grew the buffer; give the memory back once it is consumed
    // (not while one still arrives: a peer sending a big frame in tiny
    // records would have the buffer shrunk and grown again at every read).
    if (read_buffer.size() > 4 * read_chunk_bytes && read_end - read_begin < read_chunk_bytes &&
        incomplete_whole <= read_chunk_bytes) {
      std::memmove(read_buffer.data(), read_buffer.data() + read_begin, read_end - read_begin);
      read_end -= read_begin;
      read_begin = 0;
      read_buffer.resize(read_chunk_bytes);
      read_buffer.shrink_to_fit();
    }
    startRead();
  }
};

// ---------------------------------------------------------------------------

Status TlsLink::Impl::setUp() {
  const auto& o = options;
  log = o.logger ? o.logger : spdlog::default_logger();
  auto bad = [](const std::string& what) { return makeError(Errc::malformed, "TLS link options: " + what); };
  if (o.frame_bytes_max == 0 || o.frame_bytes_max > frame_bytes_limit)
    return bad("frame_bytes_max must be between 1 and " + std::to_string(frame_bytes_limit));
  if (o.send_queue_frames_max == 0) return bad("send_queue_frames_max must be at least 1");
  if (o.send_queue_bytes_max < o.frame_bytes_max)
    return bad("send_queue_bytes_max must hold at least one frame of frame_bytes_max");
  if (o.write_batch_bytes_max == 0) return bad("write_batch_bytes_max must be at least 1");
  if (!(o.peer_frames_per_second_max > 0) || !(o.peer_bytes_per_second_max > 0))
    return bad("peer_frames_per_second_max and peer_bytes_per_second_max must be positive");
  if (!(o.peer_frames_burst_max >= 1)) return bad("peer_frames_burst_max must be at least 1");
  if (!(o.peer_bytes_burst_max >= static_cast<double>(o.frame_bytes_max + frame_header_bytes)))
    return bad("peer_bytes_burst_max must allow one frame of frame_bytes_max plus its header");
  if (o.reconnect_delay_micros_min <= 0 || o.reconnect_delay_micros_max < o.reconnect_delay_micros_min)
    return bad("reconnect delays must satisfy 0 < reconnect_delay_micros_min <= reconnect_delay_micros_max");
  if (o.handshake_timeout_micros <= 0) return bad("handshake_timeout_micros must be positive");
  if (o.tcp_user_timeout_micros < 1000 || o.tcp_user_timeout_micros > 3'600'000'000)
    return bad("tcp_user_timeout_micros must be between 1 ms and 1 hour");
  if (o.keepalive_idle_seconds < 1 || o.keepalive_idle_seconds > 7200)
    return bad("keepalive_idle_seconds must be between 1 and 7200");
  if (o.inbound_connections_max == 0) return bad("inbound_connections_max must be at least 1");

  // Check the PEM with our own decoders first, for errors that name the problem.
  auto root = Certificate::fromPem(o.root_certificate_pem);
  if (!root) return makeError(root.error().code, "the network root certificate: " + root.error().message);
  auto chain = certificatesFromPem(o.certificate_chain_pem);
  if (!chain) return makeError(chain.error().code, "the TLS certificate chain: " + chain.error().message);
  auto key = keyPairFromPem(o.private_key_pem);
  if (!key) return makeError(key.error().code, "the TLS private key: " + key.error().message);
  auto leaf_key = chain->front().publicKey();
  if (!leaf_key) return makeError(leaf_key.error().code, "the TLS certificate: " + leaf_key.error().message);
  if (!(*leaf_key == key->publicKey()))
    return makeError(Errc::bad_key, "the TLS private key does not belong to the TLS certificate " +
                                        chain->front().subject().toString());

  try {
    SSL_CTX* ctx = context.native_handle();
    // TLS 1.3 only; no session tickets or cache: every connection is a full
    // handshake in which the peer proves its certificate.
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1 ||
        SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) != 1)
      return makeError(Errc::malformed, "this OpenSSL does not offer TLS 1.3");
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_num_tickets(ctx, 0);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    context.use_certificate_chain(asio::buffer(o.certificate_chain_pem));
    context.use_private_key(asio::buffer(o.private_key_pem), ssl::context::pem);
    if (SSL_CTX_check_private_key(ctx) != 1)
      return makeError(Errc::bad_key, "OpenSSL: the TLS private key does not match the certificate");
    // The network root is the only trust anchor: no system store.
    context.add_certificate_authority(asio::buffer(o.root_certificate_pem));
    context.set_verify_depth(verify_depth_max);
  } catch (const boost::system::system_error& e) {
    return makeError(Errc::malformed, std::string("OpenSSL refused the TLS credentials: ") + e.what());
  }

  if (o.listen) {
    boost::system::error_code ec;
    auto address = asio::ip::make_address(o.listen_host, ec);
    tcp::endpoint endpoint;
    if (ec) {
      auto found = resolver.resolve(o.listen_host, std::to_string(o.listen_port), ec);
      if (ec || found.empty())
        return makeError(Errc::io_error, "cannot resolve listen_host " + o.listen_host + ": " + ec.message());
      endpoint = found.begin()->endpoint();
    } else {
      endpoint = tcp::endpoint(address, o.listen_port);
    }
    std::string where = o.listen_host + ":" + std::to_string(o.listen_port);
    acceptor.open(endpoint.protocol(), ec);
    if (!ec) acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
    if (!ec) acceptor.bind(endpoint, ec);
    if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) return makeError(Errc::io_error, "cannot listen on " + where + ": " + ec.message());
    port = acceptor.local_endpoint().port();
    log->info("tls {}: listening on {}:{}", o.self, o.listen_host, port);
  }
  return Status::success();
}

void TlsLink::Impl::startAccept() {
  if (stopped || !acceptor.is_open()) return;
  auto self = shared_from_this();
  acceptor.async_accept([self](const boost::system::error_code& ec, tcp::socket socket) {
    self->onAccept(ec, std::move(socket));
  });
}

void TlsLink::Impl::onAccept(const boost::system::error_code& ec, tcp::socket socket) {
  if (stopped) return;
  if (ec) {
    // Out of file descriptors and the like: try again a little later, not in a hot loop.
    log->warn("tls {}: accept failed: {}", options.self, ec.message());
    auto self = shared_from_this();
    executor.runAfter(accept_retry_delay_micros, [self] { self->startAccept(); });
    return;
  }
  boost::system::error_code ignored;
  auto remote_endpoint = socket.remote_endpoint(ignored);
  std::string remote = remote_endpoint.address().to_string() + ":" + std::to_string(remote_endpoint.port());
  if (inbound.size() >= options.inbound_connections_max) {
    log->warn("tls {}: refused inbound connection from {}: too_many_connections ({} open)", options.self, remote,
              inbound.size());
    bump(counters.refusals[static_cast<size_t>(Refusal::too_many_connections)]);
    socket.close(ignored);
    startAccept();
    return;
  }
  tuneSocket(socket, options);
  auto conn = std::make_shared<Conn>(shared_from_this(), Conn::Side::inbound, std::move(socket), next_conn_id++);
  conn->remote = std::move(remote);
  inbound.emplace(conn->id, conn);
  conn->stream.set_verify_mode(ssl::verify_peer | ssl::verify_fail_if_no_peer_cert);
  Conn* raw = conn.get();
  conn->stream.set_verify_callback([raw](bool ok, ssl::verify_context& vc) { return raw->verify(ok, vc); });
  conn->setDeadline();
  conn->stream.async_handshake(ssl::stream_base::server, [conn](const boost::system::error_code& hec) {
    auto& link = *conn->link;
    if (conn->closed) return;
    if (hec || conn->peer.empty()) {
      if (conn->timed_out) {
        link.refuse(*conn, Refusal::handshake_timeout, "no handshake within the timeout");
      } else if (conn->has_refusal) {
        link.refuse(*conn, conn->refusal, conn->refusal_detail);
      } else if (isNoClientCertificate(hec)) {
        link.refuse(*conn, Refusal::no_certificate, "the client presented no certificate");
      } else {
        link.refuse(*conn, Refusal::tls_handshake, hec ? sslErrorText(hec) : "no peer identified");
      }
      return;
    }
    conn->cancelDeadline();
    conn->established = true;
    bump(link.counters.inbound_accepted);
    // One inbound connection per member: the member dialled again (it
    // restarted, or its old connection is half-open), so the older goes.
    std::vector<std::shared_ptr<Conn>> older;
    for (auto& [id, other] : link.inbound)
      if (other.get() != conn.get() && other->established && other->peer == conn->peer) older.push_back(other);
    for (auto& o : older) o->close(Disconnect::replaced, "the member dialled a new connection");
    if (conn->closed) return;
    link.peers.try_emplace(conn->peer).first->second.name = conn->peer;
    link.peers[conn->peer].inbound++;
    link.log->info("tls {}: accepted {}", link.options.self, conn->describe());
    asio::async_write(conn->stream, asio::buffer(&accept_byte, 1),
                      [conn](const boost::system::error_code& wec, size_t) {
                        if (wec && !conn->closed) conn->close(Disconnect::io_error, sslErrorText(wec));
                      });
    conn->startRead();
  });
  startAccept();
}

void TlsLink::Impl::refuse(Conn& conn, Refusal reason, const std::string& detail) {
  if (conn.closed) return;
  log->warn("tls {}: refused {}{}: {}: {}", options.self, conn.describe(),
            conn.presented.empty() ? "" : " presenting " + conn.presented, refusalName(reason), detail);
  bump(counters.refusals[static_cast<size_t>(reason)]);
  conn.close(std::nullopt);
}

Peer* TlsLink::Impl::peerEntry(std::string_view name, Status* error) {
  auto it = peers.find(name);
  if (it != peers.end()) return &it->second;
  auto where = directory.endpointOf(name);
  if (!where) {
    *error = makeError(Errc::not_found, "unknown peer " + std::string(name) + ": " + where.error().message);
    return nullptr;
  }
  auto& peer = peers[std::string(name)];
  peer.name = std::string(name);
  return &peer;
}

void TlsLink::Impl::dial(Peer& peer) {
  CCAL_ASSERT(peer.out == nullptr);
  if (stopped) return;
  peer.redial_timer = 0;
  peer.state = TlsPeerStatus::Outbound::connecting;
  bump(counters.connects);
  auto where = directory.endpointOf(peer.name);
  if (!where) {
    // No longer in the map: what waits for it is dropped, and nothing is
    // redialled until something is sent to it again.
    log->warn("tls {}: cannot dial {}: {}; dropping {} queued frames", options.self, peer.name,
              where.error().toString(), peer.queue.size());
    bump(counters.frames_dropped, peer.queue.size());
    peer.queue.clear();
    peer.queued_bytes = 0;
    peer.state = TlsPeerStatus::Outbound::idle;
    peer.failed_dials = 0;
    return;
  }
  auto conn = std::make_shared<Conn>(shared_from_this(), Conn::Side::outbound, tcp::socket(executor.context()),
                                     next_conn_id++);
  conn->expected_peer = peer.name;
  conn->remote = where->host + ":" + std::to_string(where->port);
  peer.out = conn;
  conn->stream.set_verify_mode(ssl::verify_peer);
  Conn* raw = conn.get();
  conn->stream.set_verify_callback([raw](bool ok, ssl::verify_context& vc) { return raw->verify(ok, vc); });
  conn->setDeadline();

  // Failures before the connection is up: a refusal (counted and logged as
  // one) or a plain dial failure (peer down), then a redial with backoff.
  auto failed = [conn](const std::string& what) {
    auto& link = *conn->link;
    if (conn->closed) return;
    if (conn->timed_out) {
      link.refuse(*conn, Refusal::handshake_timeout, "no connection and handshake within the timeout");
      return;
    }
    auto it = link.peers.find(conn->expected_peer);
    bool first = it != link.peers.end() && it->second.failed_dials == 0;
    if (first) link.log->info("tls {}: cannot reach {}: {}", link.options.self, conn->describe(), what);
    else link.log->debug("tls {}: cannot reach {}: {}", link.options.self, conn->describe(), what);
    conn->close(std::nullopt);
  };

  resolver.async_resolve(
      where->host, std::to_string(where->port),
      [conn, failed](const boost::system::error_code& rec, tcp::resolver::results_type results) {
        if (conn->closed) return;
        if (rec || conn->timed_out) return failed("resolving: " + rec.message());
        asio::async_connect(
            conn->stream.lowest_layer(), results,
            [conn, failed](const boost::system::error_code& cec, const tcp::endpoint&) {
              if (conn->closed) return;
              if (cec || conn->timed_out) return failed("connecting: " + cec.message());
              tuneSocket(conn->stream.lowest_layer(), conn->link->options);
              conn->stream.async_handshake(ssl::stream_base::client, [conn](const boost::system::error_code& hec) {
                auto& link = *conn->link;
                if (conn->closed) return;
                if (conn->timed_out)
                  return link.refuse(*conn, Refusal::handshake_timeout, "no handshake within the timeout");
                if (hec || conn->peer.empty()) {
                  if (conn->has_refusal) return link.refuse(*conn, conn->refusal, conn->refusal_detail);
                  return link.refuse(*conn, Refusal::tls_handshake, hec ? sslErrorText(hec) : "no peer identified");
                }
                // Our side of the handshake is done; the peer says whether it accepts us.
                asio::async_read(conn->stream, asio::buffer(&conn->accept_in, 1),
                                 [conn](const boost::system::error_code& aec, size_t) {
                                   auto& l = *conn->link;
                                   if (conn->closed) return;
                                   if (conn->timed_out)
                                     return l.refuse(*conn, Refusal::handshake_timeout, "no acceptance within the timeout");
                                   if (aec) return l.refuse(*conn, Refusal::refused_by_peer, sslErrorText(aec));
                                   if (conn->accept_in != accept_byte)
                                     return l.refuse(*conn, Refusal::refused_by_peer, "the peer did not send its acceptance");
                                   conn->cancelDeadline();
                                   conn->established = true;
                                   bump(l.counters.outbound_established);
                                   auto it = l.peers.find(conn->peer);
                                   CCAL_ASSERT(it != l.peers.end() && it->second.out == conn);
                                   Peer& p = it->second;
                                   p.state = TlsPeerStatus::Outbound::up;
                                   p.failed_dials = 0;
                                   l.log->info("tls {}: peer up: {}", l.options.self, conn->describe());
                                   conn->startRead();
                                   if (l.handler != nullptr) l.handler->onPeerUp(p.name);
                                   if (!conn->closed && !p.queue.empty() && !conn->writing) l.startWrite(p);
                                 });
              });
            });
      });
}

void TlsLink::Impl::scheduleRedial(Peer& peer) {
  if (stopped) return;
  peer.failed_dials++;
  int64_t delay = options.reconnect_delay_micros_min;
  for (uint32_t i = 1; i < peer.failed_dials && delay < options.reconnect_delay_micros_max; ++i) delay *= 2;
  delay = std::min(delay, options.reconnect_delay_micros_max);
  peer.state = TlsPeerStatus::Outbound::backoff;
  auto self = shared_from_this();
  std::string name = peer.name;
  peer.redial_timer = executor.runAfter(delay, [self, name] {
    auto it = self->peers.find(name);
    if (it == self->peers.end() || self->stopped) return;
    it->second.redial_timer = 0;
    if (it->second.out == nullptr) self->dial(it->second);
  });
}

void TlsLink::Impl::connClosed(Conn& conn, bool was_established) {
  if (conn.side == Conn::Side::inbound) {
    inbound.erase(conn.id);
    if (was_established) {
      auto it = peers.find(conn.peer);
      if (it != peers.end() && it->second.inbound > 0) it->second.inbound--;
    }
    return;
  }
  auto it = peers.find(conn.expected_peer);
  if (it == peers.end() || it->second.out.get() != &conn) return;
  Peer& peer = it->second;
  auto keep = peer.out;  // conn lives until this returns
  peer.out.reset();
  peer.state = TlsPeerStatus::Outbound::idle;
  if (stopped) return;
  if (was_established) {
    peer.failed_dials = 0;
    if (handler != nullptr) handler->onPeerDown(peer.name);
  }
  // onPeerDown may have stopped the link or sent (which dials at once).
  if (!stopped && peer.out == nullptr && peer.redial_timer == 0) scheduleRedial(peer);
}

void TlsLink::Impl::startWrite(Peer& peer) {
  Conn& conn = *peer.out;
  CCAL_ASSERT(conn.established && !conn.writing && !peer.queue.empty());
  conn.write_buffer.clear();
  conn.batch_frames = 0;
  conn.batch_payload_bytes = 0;
  while (!peer.queue.empty()) {
    const Bytes& frame = peer.queue.front();
    size_t whole = frame_header_bytes + frame.size();
    if (!conn.write_buffer.empty() && conn.write_buffer.size() + whole > options.write_batch_bytes_max) break;
    size_t at = conn.write_buffer.size();
    conn.write_buffer.resize(at + whole);
    putBigEndian32(conn.write_buffer.data() + at, static_cast<uint32_t>(frame.size()));
    std::memcpy(conn.write_buffer.data() + at + frame_header_bytes, frame.data(), frame.size());
    conn.batch_frames++;
    conn.batch_payload_bytes += frame.size();
    peer.queued_bytes -= frame.size();
    peer.queue.pop_front();
  }
  conn.writing = true;
  auto self = conn.shared_from_this();
  asio::async_write(conn.stream, asio::buffer(conn.write_buffer), [self](const boost::system::error_code& ec, size_t) {
    self->writing = false;
    if (self->closed) return;
    auto& link = *self->link;
    if (ec) return self->close(Disconnect::io_error, "writing: " + sslErrorText(ec));
    bump(link.counters.frames_out, self->batch_frames);
    bump(link.counters.bytes_out, self->batch_payload_bytes);
    bump(link.counters.tls_writes);
    auto it = link.peers.find(self->peer);
    if (it != link.peers.end() && it->second.out == self && !it->second.queue.empty()) link.startWrite(it->second);
  });
}

void TlsLink::Impl::shutdown() {
  if (stopped) return;
  stopped = true;
  handler = nullptr;
  boost::system::error_code ignored;
  acceptor.close(ignored);
  resolver.cancel();
  std::vector<std::shared_ptr<Conn>> all;
  for (auto& [id, c] : inbound) all.push_back(c);
  for (auto& [name, p] : peers) {
    if (p.out) all.push_back(p.out);
    if (p.redial_timer != 0) executor.cancel(p.redial_timer);
    p.redial_timer = 0;
    p.queue.clear();
    p.queued_bytes = 0;
  }
  for (auto& c : all) c->close(Disconnect::shutdown);
  log->info("tls {}: stopped", options.self);
}

// ---------------------------------------------------------------------------

TlsLink::TlsLink(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::unique_ptr<TlsLink>> TlsLink::create(AsioExecutor& executor, const PeerDirectory& directory,
                                                 TlsLinkOptions options) {
  CCAL_ASSERT_MSG(executor.running(), "a TLS link needs a running executor");
  auto impl = std::make_shared<Impl>(executor, directory, std::move(options));
  Status status;
  executor.runSync([&] { status = impl->setUp(); });
  if (!status) return status.error();
  return std::unique_ptr<TlsLink>(new TlsLink(std::move(impl)));
}

TlsLink::~TlsLink() { stop(); }

uint16_t TlsLink::listenPort() const { return impl_->port; }

void TlsLink::setHandler(flows::LinkHandler* handler) {
  CCAL_ASSERT(impl_->executor.inExecutorThread());
  CCAL_ASSERT_MSG(impl_->handler == nullptr && handler != nullptr, "the link handler is set once");
  impl_->handler = handler;
  if (!impl_->accepting && impl_->options.listen && !impl_->stopped) {
    impl_->accepting = true;
    impl_->startAccept();
  }
}

Status TlsLink::send(std::string_view peer_name, Bytes frame) {
  auto& link = *impl_;
  CCAL_ASSERT(link.executor.inExecutorThread());
  if (frame.empty()) return makeError(Errc::malformed, "an empty frame to " + std::string(peer_name));
  if (frame.size() > link.options.frame_bytes_max)
    return makeError(Errc::too_large, "a frame of " + std::to_string(frame.size()) + " bytes to " +
                                          std::string(peer_name) + ", over the limit of " +
                                          std::to_string(link.options.frame_bytes_max));
  if (link.stopped) return makeError(Errc::io_error, "the TLS link has stopped");
  Status error;
  Peer* peer = link.peerEntry(peer_name, &error);
  if (peer == nullptr) return error;
  if (peer->queue.size() >= link.options.send_queue_frames_max ||
      peer->queued_bytes + frame.size() > link.options.send_queue_bytes_max) {
    Impl::bump(link.counters.frames_dropped);
    if (!peer->dropping) {
      peer->dropping = true;
      link.log->warn("tls {}: send queue to {} full ({} frames, {} bytes): dropping frames", link.options.self,
                     peer->name, peer->queue.size(), peer->queued_bytes);
    }
    return Status::success();
  }
  peer->dropping = false;
  peer->queued_bytes += frame.size();
  peer->queue.push_back(std::move(frame));
  if (peer->out == nullptr) {
    if (peer->redial_timer == 0) link.dial(*peer);
  } else if (peer->out->established && !peer->out->writing) {
    link.startWrite(*peer);
  }
  return Status::success();
}

size_t TlsLink::recheckPeers() {
  auto& link = *impl_;
  CCAL_ASSERT(link.executor.inExecutorThread());
  std::vector<std::shared_ptr<Conn>> all;
  for (auto& [id, c] : link.inbound) all.push_back(c);
  for (auto& [name, p] : link.peers) {
    if (p.out) all.push_back(p.out);
  }
  size_t closed = 0;
  for (auto& c : all) {
    // (One still handshaking is checked as its handshake ends.)
    if (c->closed || !c->established || c->peer_chain.empty()) continue;
    auto who = link.directory.identifyPeer(c->peer_chain);
    if (who && *who == c->peer) continue;
    c->close(Disconnect::not_identified,
             who ? "the certificate now identifies " + *who : who.error().toString());
    ++closed;
  }
  return closed;
}

Status TlsLink::connect(std::string_view peer_name) {
  auto& link = *impl_;
  CCAL_ASSERT(link.executor.inExecutorThread());
  if (link.stopped) return makeError(Errc::io_error, "the TLS link has stopped");
  Status error;
  Peer* peer = link.peerEntry(peer_name, &error);
  if (peer == nullptr) return error;
  if (peer->out == nullptr && peer->redial_timer == 0) link.dial(*peer);
  return Status::success();
}

size_t TlsLink::frameBytesMax() const { return impl_->options.frame_bytes_max; }

void TlsLink::stop() {
  auto impl = impl_;
  impl->executor.runSync([impl] { impl->shutdown(); });
}

TlsLinkCounters TlsLink::counters() const {
  const auto& c = impl_->counters;
  TlsLinkCounters out;
  auto get = [](const std::atomic<uint64_t>& a) { return a.load(std::memory_order_acquire); };
  out.frames_in = get(c.frames_in);
  out.bytes_in = get(c.bytes_in);
  out.frames_out = get(c.frames_out);
  out.bytes_out = get(c.bytes_out);
  out.frames_dropped = get(c.frames_dropped);
  out.tls_writes = get(c.tls_writes);
  out.connects = get(c.connects);
  out.inbound_accepted = get(c.inbound_accepted);
  out.outbound_established = get(c.outbound_established);
  for (size_t i = 0; i < out.refusals.size(); ++i) out.refusals[i] = get(c.refusals[i]);
  for (size_t i = 0; i < out.disconnects.size(); ++i) out.disconnects[i] = get(c.disconnects[i]);
  return out;
}

std::vector<TlsPeerStatus> TlsLink::peers() const {
  std::vector<TlsPeerStatus> out;
  auto impl = impl_;
  impl->executor.runSync([&] {
    for (const auto& [name, p] : impl->peers) {
      TlsPeerStatus s;
      s.peer = name;
      s.outbound = p.state;
      s.inbound_connections = p.inbound;
      s.queued_frames = p.queue.size();
      s.queued_bytes = p.queued_bytes;
      s.failed_dials = p.failed_dials;
      out.push_back(std::move(s));
    }
  });
  return out;
}

}  // namespace ccal::node
