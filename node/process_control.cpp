#include "node/process_control.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>
#include <system_error>
#include <thread>

#include "ledger/assert.h"
#include "node/file_io.h"

namespace ccal::node {
namespace fs = std::filesystem;

namespace {

constexpr auto poll_interval = std::chrono::milliseconds(50);

std::string readFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// The kernel's start time of a process (clock ticks since boot), which with
// the pid names one process: a recycled pid has another start time. Empty
// when the process does not exist or is a zombie.
std::string processStartTime(pid_t pid) {
  std::string stat = readFile("/proc/" + std::to_string(pid) + "/stat");
  // The command name (field 2) is in parentheses and may hold spaces.
  auto close = stat.rfind(')');
  if (close == std::string::npos) return {};
  std::istringstream fields(stat.substr(close + 2));
  std::string field;
  std::vector<std::string> rest;
  while (fields >> field) rest.push_back(field);
  // rest[0] is field 3 (state); field 22 (starttime) is rest[19].
  if (rest.size() < 20 || rest[0] == "Z" || rest[0] == "X") return {};
  return rest[19];
}

struct PidRecord {
  pid_t pid = 0;
  std::string start_time;
};

std::optional<PidRecord> readPidFile(const fs::path& path) {
  std::istringstream in(readFile(path));
  PidRecord record;
  if (!(in >> record.pid >> record.start_time) || record.pid <= 0) return std::nullopt;
  return record;
}

bool isRunning(const PidRecord& record) {
  // Reap it if it is our own child that has exited (a test that starts and
  // stops a network in one process).
  int status = 0;
  if (::waitpid(record.pid, &status, WNOHANG) == record.pid) return false;
  return processStartTime(record.pid) == record.start_time;
}

bool isReady(const MemberDir& member, pid_t pid) {
  std::string text = readFile(member.readyFile());
  auto key = text.find("\"pid\":");
  if (key == std::string::npos) return false;
  return std::atol(text.c_str() + key + 6) == pid;
}

std::string logTail(const MemberDir& member) {
  std::string log = readFile(member.logFile());
  if (log.size() > log_tail_bytes_max) log = "..." + log.substr(log.size() - log_tail_bytes_max);
  return log.empty() ? std::string("(empty log)") : log;
}

std::vector<std::string> defaultCommand(const MemberDir& member) {
  std::error_code ec;
  fs::path self = fs::read_symlink("/proc/self/exe", ec);
  return {self.string(), "node", "run", "--config", member.config().string()};
}

Result<pid_t> spawn(const MemberDir& member, const std::vector<std::string>& argv) {
  CCAL_ASSERT(!argv.empty());
  std::error_code ec;
  fs::create_directories(member.pidFile().parent_path(), ec);
  if (ec) {
    return Error{Errc::io_error, "cannot create " + member.pidFile().parent_path().string() + ": " +
                                     ec.message()};
  }
  int log = ::open(member.logFile().c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
  if (log < 0) {
    return Error{Errc::io_error, "cannot open " + member.logFile().string() + ": " +
                                     std::generic_category().message(errno)};
  }
  std::vector<char*> args;
  for (const auto& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);

  pid_t pid = ::fork();
  if (pid < 0) {
    ::close(log);
    return Error{Errc::io_error, "fork: " + std::generic_category().message(errno)};
  }
  if (pid == 0) {
    // The child: its own session (a terminal's ^C does not reach it), no
    // stdin, stdout and stderr into the log.
    ::setsid();
    int null = ::open("/dev/null", O_RDONLY);
    if (null >= 0) ::dup2(null, 0);
    ::dup2(log, 1);
    ::dup2(log, 2);
    ::execv(args[0], args.data());
    std::string message = std::string("cannot run ") + args[0] + ": " + std::strerror(errno) + "\n";
    (void)!::write(2, message.data(), message.size());
    ::_exit(127);
  }
  ::close(log);
  return pid;
}


MemberStatus statusOf(const MemberDir& member) {
  MemberStatus status{member.name, 0, false, false, {}};
  auto record = readPidFile(member.pidFile());
  if (!record) {
    status.detail = "not running";
    return status;
  }
  status.pid = record->pid;
  status.running = isRunning(*record);
  status.ready = status.running && isReady(member, record->pid);
  status.detail = !status.running ? "not running (stale pid file)" : status.ready ? "ready" : "starting";
  return status;
}

// Stops one member; true when it had to be killed.
bool stopMember(const MemberDir& member, const PidRecord& record, int64_t timeout_millis) {
  ::kill(record.pid, SIGTERM);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_millis);
  while (isRunning(record) && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(poll_interval);
  }
  bool killed = false;
  if (isRunning(record)) {
    ::kill(record.pid, SIGKILL);
    killed = true;
    while (isRunning(record)) std::this_thread::sleep_for(poll_interval);
  }
  std::error_code ec;
  fs::remove(member.pidFile(), ec);
  return killed;
}

// A member that exited so quickly that its start time could not be read, and one
// that exited later while starting, are the same failure to the operator.
Error exitedBeforeReady(const MemberDir& member) {
  return Error{Errc::io_error, member.name + " exited before it was ready; its log (" +
                                   member.logFile().string() + ") ends:\n" + logTail(member)};
}

}  // namespace

Result<std::vector<MemberDir>> listMembers(const fs::path& network_dir) {
  std::error_code ec;
  if (!fs::is_directory(network_dir, ec)) {
    return Error{Errc::not_found, network_dir.string() + " is not a directory"};
  }
  std::vector<MemberDir> members;
  for (const auto& entry : fs::directory_iterator(network_dir, ec)) {
    if (entry.is_directory() && fs::exists(entry.path() / "node.toml")) {
      members.push_back({entry.path().filename().string(), entry.path()});
      if (members.size() > member_count_max) {
        return Error{Errc::too_large, network_dir.string() + " holds more than " +
                                               std::to_string(member_count_max) + " members"};
      }
    }
  }
  if (ec) return Error{Errc::io_error, "cannot list " + network_dir.string() + ": " + ec.message()};
  if (members.empty()) {
    return Error{Errc::not_found, network_dir.string() +
                                      " holds no member (no <name>/node.toml): run `ccal network "
                                      "bootstrap` first"};
  }
  std::sort(members.begin(), members.end(),
            [](const MemberDir& a, const MemberDir& b) { return a.name < b.name; });
  return members;
}

Status writeReadyFile(const fs::path& path, const std::string& extra_json_fields) {
  std::error_code ec;
  fs::create_directories(path.parent_path(), ec);
  std::string text = "{\"pid\":" + std::to_string(::getpid());
  if (!extra_json_fields.empty()) text += "," + extra_json_fields;
  text += "}\n";
  return writeFileAtomically(path, text);
}

Result<std::vector<MemberStatus>> networkStatus(const fs::path& network_dir) {
  auto listed = listMembers(network_dir);
  if (!listed) return listed.error();
  const auto& members = *listed;
  std::vector<MemberStatus> statuses;
  for (const auto& member : members) statuses.push_back(statusOf(member));
  return statuses;
}

Result<std::vector<MemberStatus>> startNetwork(const fs::path& network_dir,
                                               const StartOptions& options) {
  auto listed = listMembers(network_dir);
  if (!listed) return listed.error();
  const auto& members = *listed;
  std::vector<MemberStatus> statuses;
  std::vector<std::pair<MemberDir, PidRecord>> started;
  auto fail = [&](Error error) -> Result<std::vector<MemberStatus>> {
    for (const auto& [member, record] : started) stopMember(member, record, 5'000);
    return error;
  };

  for (const auto& member : members) {
    MemberStatus status = statusOf(member);
    if (status.running) {
      status.detail = status.ready ? "already running" : "already starting";
      statuses.push_back(status);
      continue;
    }
    std::error_code ec;
    fs::remove(member.readyFile(), ec);
    auto argv = options.command ? options.command(member) : defaultCommand(member);
    auto pid = spawn(member, argv);
    if (!pid) return fail(pid.error());
    // The start time may be read a moment after fork; retry briefly.
    PidRecord record{*pid, {}};
    for (int i = 0; i < 100 && record.start_time.empty(); ++i) {
      record.start_time = processStartTime(*pid);
      if (record.start_time.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if (record.start_time.empty()) {
      return fail(exitedBeforeReady(member));
    }
    auto written = writeFileAtomically(member.pidFile(), std::to_string(record.pid) + " " +
                                                             record.start_time + "\n");
    if (!written.ok()) return fail(written.error());
    started.emplace_back(member, record);
    statuses.push_back({member.name, *pid, true, false, "started"});
  }

  // Wait for every member we started to be ready.
  auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(options.ready_timeout_millis);
  for (auto& status : statuses) {
    if (status.detail != "started") continue;
    auto it = std::find_if(started.begin(), started.end(),
                           [&](const auto& s) { return s.first.name == status.name; });
    CCAL_ASSERT(it != started.end());
    const auto& member = it->first;
    const auto& record = it->second;
    while (!isReady(member, record.pid)) {
      if (!isRunning(record)) {
        return fail(exitedBeforeReady(member));
      }
      if (std::chrono::steady_clock::now() > deadline) {
        return fail(Error{Errc::timeout, member.name + " was not ready within " +
                                             std::to_string(options.ready_timeout_millis) +
                                             " ms; its log (" + member.logFile().string() +
                                             ") ends:\n" + logTail(member)});
      }
      std::this_thread::sleep_for(poll_interval);
    }
    status.ready = true;
    status.detail = "ready";
  }
  return statuses;
}

Result<std::vector<MemberStatus>> stopNetwork(const fs::path& network_dir,
                                              int64_t stop_timeout_millis) {
  auto listed = listMembers(network_dir);
  if (!listed) return listed.error();
  const auto& members = *listed;
  std::vector<MemberStatus> statuses;
  std::vector<std::pair<MemberDir, PidRecord>> running;
  for (const auto& member : members) {
    MemberStatus status{member.name, 0, false, false, {}};
    auto record = readPidFile(member.pidFile());
    if (!record || !isRunning(*record)) {
      std::error_code ec;
      fs::remove(member.pidFile(), ec);
      status.detail = "was not running";
      statuses.push_back(status);
      continue;
    }
    status.pid = record->pid;
    statuses.push_back(status);
    running.emplace_back(member, *record);
    ::kill(record->pid, SIGTERM);  // all at once; then wait for each
  }
  for (auto& status : statuses) {
    auto it = std::find_if(running.begin(), running.end(),
                           [&](const auto& r) { return r.first.name == status.name; });
    if (it == running.end()) continue;
    bool killed = stopMember(it->first, it->second, stop_timeout_millis);
    status.detail = killed ? "killed (SIGKILL) after " + std::to_string(stop_timeout_millis) +
                                 " ms without exiting on SIGTERM"
                           : "stopped";
  }
  return statuses;
}

}  // namespace ccal::node
