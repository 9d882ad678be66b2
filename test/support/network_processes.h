#pragma once
// Helpers for tests and benchmarks that run a bootstrapped network as real
// `ccal` processes: run the binary, reach a member's control API as its
// admin, read a member's pid, wait for a condition, stop the network at the
// end of a scope. The including target defines CCAL_BINARY (the path of
// the `ccal` executable).

#include <sys/types.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "node/api_client.h"
#include "node/api_users.h"
#include "node/config.h"

#ifndef CCAL_BINARY
#error "CCAL_BINARY (the path of the ccal executable) must be defined by the target"
#endif

namespace ccal::testing {

// Runs `ccal ARGS` with its output discarded; its exit code, -1 if it did not exit.
inline int runCcal(const std::string& args) {
  std::string command = std::string(CCAL_BINARY) + " " + args + " >/dev/null 2>&1";
  int status = std::system(command.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// A client of member NAME's control API (under NET/NAME/node.toml) as its admin user.
inline Result<node::ApiClient> adminClientOf(const std::filesystem::path& net, const std::string& name,
                                             int64_t timeout_micros = 30'000'000) {
  auto config = node::loadNodeConfig(net / name / "node.toml");
  if (!config) return config.error();
  auto users = node::ApiUsers::load(config->api_users_file);
  if (!users) return users.error();
  std::string token;
  for (const auto& u : users->users()) {
    if (u.role == node::ApiRole::admin) token = u.token;
  }
  node::ApiClientOptions options;
  options.timeout_micros = timeout_micros;
  return node::ApiClient::create("http://" + config->api_listen.toString(), token, options);
}

// The pid `ccal network start` recorded for member NAME (0 when none).
inline pid_t pidOf(const std::filesystem::path& net, const std::string& name) {
  std::ifstream in(net / name / "run" / "node.pid");
  pid_t pid = 0;
  in >> pid;
  return pid;
}

// Polls pred every 100 ms until it holds or the timeout passes; its last value.
template <class Pred>
bool waitUntil(Pred pred, std::chrono::seconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return pred();
}

// Stops the network when the scope ends, whatever happened in it.
struct StopNetworkAtEnd {
  std::filesystem::path net;
  ~StopNetworkAtEnd() { runCcal("network stop --dir " + net.string()); }
};

}  // namespace ccal::testing
