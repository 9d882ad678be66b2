#pragma once
// A running CCAL member: the composition root that `ccal node run` starts.
// It wires the configuration, the network map, the vault (one LMDB
// environment), the TLS peer link, exactly-once messaging and the control
// API together, and takes them down in the reverse order.
//
// Threads: one executor thread runs the link, messaging, the flow runtime
// (node/flow_service.h; members only, not notary replicas) and the API; the
// vault's writer thread commits.

#include <filesystem>
#include <memory>
#include <string>

#include "ledger/result.h"
#include "node/config.h"

namespace ccal::node {

inline constexpr size_t diagnostic_messages_per_request_max = 10'000;
inline constexpr size_t diagnostic_text_bytes_max = 64 * 1024;
inline constexpr size_t diagnostic_streams_max = 1024;  // remembered per node
inline constexpr size_t diagnostic_stream_bytes_max = 256;  // a stream's name

class Node {
 public:
  // Loads everything the config names (keys, certificates, network map,
  // vault, API users) and starts serving: peers over TLS, the control API.
  // An error names the file or key that is wrong; nothing is left running.
  static Result<std::unique_ptr<Node>> start(const NodeConfig& config);
  ~Node();  // stop()
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  // Stops serving: the ready file is removed, the API and peer sockets are
  // closed, queued store writes complete, and the vault is closed. Idempotent.
  void stop();

  uint16_t p2pPort() const;
  std::string apiAddress() const;

  struct Impl;

 private:
  explicit Node(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// `ccal node run --config FILE`: starts the member and runs it until SIGTERM
// or SIGINT, then stops it cleanly. Returns the process exit code.
int runNode(const std::filesystem::path& config_file);

}  // namespace ccal::node
