#pragma once
// Helpers for tests and benchmarks that run a bootstrapped network as real
// `ccal` processes: run the binary, reach a member's control API as its
// admin, read a member's pid, wait for a condition, stop the network at the
// end of a scope. The including target defines CCAL_BINARY (the path of
// the `ccal` executable).

#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
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

// What `ccal ARGS` printed (stdout and stderr) and its exit code (-1 if it did not exit).
struct CcalRun {
  int exit_code = -1;
  std::string output;
};

// Runs `ccal ARGS` and keeps what it printed, for a failure message that
// names the member that did not start and the tail of its log.
inline CcalRun runCcalCapturing(const std::string& args) {
  char path[] = "/tmp/ccal-run-XXXXXX";
  int fd = ::mkstemp(path);
  if (fd < 0) return {-1, "mkstemp failed"};
  ::close(fd);
  std::string command = std::string(CCAL_BINARY) + " " + args + " >" + path + " 2>&1";
  int status = std::system(command.c_str());
  CcalRun run;
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream in(path);
  run.output.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  ::unlink(path);
  return run;
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
