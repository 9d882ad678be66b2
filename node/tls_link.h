#pragma once
// TlsLink: the best-effort flows::Link between members, over TLS 1.3 on TCP
// (Asio's SSL stream, OpenSSL), mutually authenticated with each member's
// TLS certificate chain, the network root being the only trust anchor.
//
// Who a peer is: OpenSSL first checks that the presented chain leads to the
// network root; then PeerDirectory::identifyPeer names the member (chain
// valid, not revoked, the TLS certificate of a member of the map). Anything
// else is refused inside the handshake (the peer gets an alert), counted by
// reason, logged, and never reaches the LinkHandler. A connection we dial
// must identify as the member we dialled.
//
// Topology: each member sends on its own outbound connection to a peer and
// receives on the connections the peer dials to it, so two members that
// dial each other at the same moment never race. onPeerUp/onPeerDown follow
// the outbound connection; it counts as up once the accepting member, having
// identified us, writes one byte (0x01) on it (in TLS 1.3 a server's refusal
// reaches the client only after the client's side of the handshake is done,
// so without this a refused dialler would see its peer up for a moment).
// A peer is dialled on the first send (or connect()), and redialled with
// bounded exponential backoff after a failure or a drop, until the link
// stops or the peer leaves the directory.
//
// Framing: a 4-byte big-endian length, then that many bytes (1 to
// frame_bytes_max). A peer that sends a zero or oversized length, more
// frames or bytes per second than its token buckets allow, or anything on a
// connection where it should only listen, is disconnected with a logged
// reason; other sessions are not affected.
//
// Sending: frames queue per peer (bounded in frames and bytes; beyond the
// bound they are dropped and counted, since the layer above retransmits) and
// are written coalesced, many frames per TLS write.
//
// Threading: the link runs on an AsioExecutor; send/connect and every
// LinkHandler callback happen on its thread. counters() and peers() may be
// called from any thread.

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "flows/io.h"
#include "ledger/result.h"
#include "node/asio_executor.h"
#include "node/peer_directory.h"

namespace spdlog {
class logger;
}  // namespace spdlog

namespace ccal::node {

struct TlsLinkOptions {
  // This member's X.500 name (canonical string), for log lines.
  std::string self;
  // Where to accept peers' connections. Port 0 picks a free port (see
  // TlsLink::listenPort()). listen = false makes a link that only dials.
  std::string listen_host = "127.0.0.1";
  uint16_t listen_port = 0;
  bool listen = true;

  // PEM: the network root certificate (the only trust anchor), this
  // member's TLS certificate followed by its node CA and doorman
  // certificates, and the TLS private key (PKCS#8).
  std::string root_certificate_pem;
  std::string certificate_chain_pem;
  std::string private_key_pem;
  // Reads the three PEM files into the fields above; an error names the file.
  Status loadPemFiles(const std::string& root_path, const std::string& chain_path,
                      const std::string& key_path);

  // The network parameters' maximum message size.
  size_t frame_bytes_max = 10 * 1024 * 1024;
  // Sets frame_bytes_max and raises the send queue's bytes and the peers'
  // byte burst where they could not hold two frames of it (a node
  // configured for frames over their defaults' half).
  void setFrameBytesMax(size_t bytes) {
    frame_bytes_max = bytes;
    send_queue_bytes_max = std::max(send_queue_bytes_max, 2 * bytes);
    peer_bytes_burst_max = std::max(peer_bytes_burst_max, 2.0 * static_cast<double>(bytes + 4));
  }
  // Per peer, frames waiting to be written (beyond it, frames are dropped).
  size_t send_queue_frames_max = 65'536;
  size_t send_queue_bytes_max = 64 * 1024 * 1024;
  // One TLS write carries queued frames up to this many bytes (or one frame
  // if it is bigger).
  size_t write_batch_bytes_max = 256 * 1024;

  // Token buckets per inbound connection: sustained rate and burst.
  double peer_frames_per_second_max = 200'000;
  double peer_frames_burst_max = 400'000;
  double peer_bytes_per_second_max = 128.0 * 1024 * 1024;
  double peer_bytes_burst_max = 256.0 * 1024 * 1024;

  // Redial delay after a failed or dropped connection: doubles from min to max.
  int64_t reconnect_delay_micros_min = 100'000;
  int64_t reconnect_delay_micros_max = 30'000'000;
  // TCP connect plus TLS handshake must finish within this time.
  int64_t handshake_timeout_micros = 10'000'000;
  // A connection whose sent data stays unacknowledged this long (a peer that
  // stopped reading or answering) is closed and redialled (TCP_USER_TIMEOUT).
  int64_t tcp_user_timeout_micros = 30'000'000;
  // Keepalive probes start after this much silence on a connection.
  int64_t keepalive_idle_seconds = 10;
  // Inbound connections at once (handshaking or up); beyond, new ones are closed.
  size_t inbound_connections_max = 1024;

  // Where log lines go; null: spdlog's default logger.
  std::shared_ptr<spdlog::logger> logger;
};

// Why a connection was refused (at or before the end of its handshake).
enum class Refusal : uint8_t {
  tls_handshake,        // the TLS handshake failed (protocol, version, bad signature, reset)
  no_certificate,       // the client presented no certificate
  untrusted_chain,      // OpenSSL found no path to the network root (self-signed, foreign root)
  certificate_invalid,  // the directory: path, usage or name constraints do not validate
  certificate_revoked,  // the directory: on a revocation list
  certificate_expired,  // the directory: outside its validity
  not_member,           // the directory: valid, but not the TLS certificate of a member
  wrong_member,         // we dialled one member and another answered
  refused_by_peer,      // the member we dialled refused us (its alert, or it closed before accepting)
  handshake_timeout,    // connect plus handshake took too long
  too_many_connections, // inbound_connections_max reached
  count_
};
const char* refusalName(Refusal r);

// Why an established connection was closed.
enum class Disconnect : uint8_t {
  peer_closed,      // the peer closed the connection (or the TLS session)
  io_error,         // a read or write failed (reset, broken pipe)
  oversized_frame,  // a frame length over frame_bytes_max
  empty_frame,      // a frame length of zero
  rate_limited,     // over the frames/s or bytes/s token bucket
  unexpected_data,  // bytes on a connection where the peer should only listen
  replaced,         // the peer dialled again; its older inbound connection is closed
  shutdown,         // this link stopped
  not_identified,   // recheckPeers: its certificate no longer identifies the member (revoked)
  count_
};
const char* disconnectName(Disconnect d);

struct TlsLinkCounters {
  uint64_t frames_in = 0, bytes_in = 0;    // payload bytes of frames delivered to the handler
  uint64_t frames_out = 0, bytes_out = 0;  // payload bytes of frames written to a socket
  uint64_t frames_dropped = 0;             // send queue full
  uint64_t tls_writes = 0;                 // coalesced writes (frames_out / tls_writes = batching)
  uint64_t connects = 0;                   // outbound dials started
  uint64_t inbound_accepted = 0, outbound_established = 0;
  std::array<uint64_t, static_cast<size_t>(Refusal::count_)> refusals{};
  std::array<uint64_t, static_cast<size_t>(Disconnect::count_)> disconnects{};

  uint64_t refused(Refusal r) const { return refusals[static_cast<size_t>(r)]; }
  uint64_t disconnected(Disconnect d) const { return disconnects[static_cast<size_t>(d)]; }
  uint64_t refusedTotal() const;
};

// The state of our outbound connection to a peer and its inbound ones.
struct TlsPeerStatus {
  enum class Outbound : uint8_t { idle, connecting, up, backoff };
  std::string peer;
  Outbound outbound = Outbound::idle;
  size_t inbound_connections = 0;
  size_t queued_frames = 0, queued_bytes = 0;
  uint32_t failed_dials = 0;  // since the last established connection
};
const char* outboundStateName(TlsPeerStatus::Outbound s);

class TlsLink final : public flows::Link {
 public:
  // Checks the options (PEM parses, key matches the certificate, limits
  // sane) and starts listening: an error names what is wrong. The directory
  // and executor must outlive the link; the executor must be running.
  static Result<std::unique_ptr<TlsLink>> create(AsioExecutor& executor, const PeerDirectory& directory,
                                                 TlsLinkOptions options);
  // Stops the link (see stop()).
  ~TlsLink() override;

  // The port we listen on (0 if not listening).
  uint16_t listenPort() const;

  // flows::Link. Executor thread only.
  void setHandler(flows::LinkHandler* handler) override;
  Status send(std::string_view peer, Bytes frame) override;
  size_t frameBytesMax() const override;

  // Dials the peer now if there is no connection to it (a node may dial every
  // member at start so that onPeerUp comes early). Executor thread only.
  Status connect(std::string_view peer);

  // Asks the directory again about every established connection's peer
  // certificate chain (as at its handshake) and closes, as not_identified,
  // each that no longer identifies its member — after the directory's
  // revocation lists changed. Returns how many it closed. Executor thread only.
  size_t recheckPeers();

  // Closes the listener and every connection, cancels timers; afterwards the
  // handler is not called again. From any thread but the executor's, it
  // waits until done. Idempotent.
  void stop();

  // Thread-safe snapshots, for the control API and metrics.
  TlsLinkCounters counters() const;
  std::vector<TlsPeerStatus> peers() const;

  struct Impl;

 private:
  explicit TlsLink(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

}  // namespace ccal::node
