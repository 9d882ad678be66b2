#pragma once
// Starting and stopping the members of a bootstrapped network as background
// processes: `ccal network start --dir DIR` / `ccal network stop --dir DIR`.
//
// A member is a folder DIR/<name>/ holding node.toml. Under it:
//   run/node.pid   the pid of the member's process, written by the starter
//   run/ready      written by the member itself (atomically, tmp + rename)
//                  once it serves: one JSON object {"pid":..., ...};
//                  removed by the member at clean shutdown
//   node.log       the process's stdout and stderr, appended
// A member counts as ready when run/ready names the pid we started.

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "ledger/result.h"

namespace ccal::node {

inline constexpr int64_t member_ready_timeout_millis_default = 60'000;
inline constexpr int64_t member_stop_timeout_millis_default = 30'000;
inline constexpr size_t member_count_max = 1000;
inline constexpr size_t log_tail_bytes_max = 2000;  // of a failed member's log, in its error

struct MemberDir {
  std::string name;  // the folder's name
  std::filesystem::path dir;
  std::filesystem::path config() const { return dir / "node.toml"; }
  std::filesystem::path pidFile() const { return dir / "run" / "node.pid"; }
  std::filesystem::path readyFile() const { return dir / "run" / "ready"; }
  std::filesystem::path logFile() const { return dir / "node.log"; }
};

// Every DIR/<name>/node.toml, in name order; an error when there is none.
Result<std::vector<MemberDir>> listMembers(const std::filesystem::path& network_dir);

// Writes the ready file of the calling process (pid + the given JSON fields).
Status writeReadyFile(const std::filesystem::path& path, const std::string& extra_json_fields);

struct MemberStatus {
  std::string name;
  pid_t pid = 0;
  bool running = false;
  bool ready = false;
  std::string detail;  // what happened, in words
};

struct StartOptions {
  // The program and arguments that run one member; by default this binary
  // with `node run --config <member>/node.toml`.
  std::function<std::vector<std::string>(const MemberDir&)> command;
  int64_t ready_timeout_millis = member_ready_timeout_millis_default;
};

// Starts every member not already running and waits until each is ready. If
// one fails (exits, or is not ready in time), the members this call started
// are stopped again and the error names the member and ends with its log tail.
Result<std::vector<MemberStatus>> startNetwork(const std::filesystem::path& network_dir,
                                               const StartOptions& options);

// Sends SIGTERM to every running member, waits for each to exit (SIGKILL
// after the timeout, said in the detail) and removes the pid files.
Result<std::vector<MemberStatus>> stopNetwork(
    const std::filesystem::path& network_dir,
    int64_t stop_timeout_millis = member_stop_timeout_millis_default);

// Whether each member runs and is ready, without changing anything.
Result<std::vector<MemberStatus>> networkStatus(const std::filesystem::path& network_dir);

}  // namespace ccal::node
