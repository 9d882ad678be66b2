#include "node/process_control.h"

#include <doctest/doctest.h>
#include <signal.h>

#include <fstream>

#include "test/support/temp_dir.h"

namespace fs = std::filesystem;
using namespace ccal;
using namespace ccal::node;

namespace {

// A network folder with members a, b, c (each a node.toml; the content does
// not matter here: the members are played by shell scripts).
fs::path makeNetwork(const testing::TempDir& tmp, std::initializer_list<const char*> names) {
  fs::path dir = tmp.path;
  for (const char* name : names) {
    fs::create_directories(dir / name);
    std::ofstream(dir / name / "node.toml") << "# test\n";
  }
  return dir;
}

// A member that becomes ready like a node does (atomic ready file naming its
// pid) and exits cleanly on SIGTERM, removing the ready file.
std::vector<std::string> goodMember(const MemberDir& m) {
  std::string ready = m.readyFile().string();
  return {"/bin/sh", "-c",
          "trap 'rm -f " + ready + "; exit 0' TERM; echo starting; "
          "mkdir -p " + m.readyFile().parent_path().string() + "; " +
              "echo \"{\\\"pid\\\":$$}\" > " + ready + ".tmp && mv " + ready + ".tmp " + ready +
              "; while :; do sleep 0.05; done"};
}

StartOptions options(std::function<std::vector<std::string>(const MemberDir&)> command,
                     int64_t ready_timeout_millis = 10'000) {
  StartOptions o;
  o.command = std::move(command);
  o.ready_timeout_millis = ready_timeout_millis;
  return o;
}

}  // namespace

TEST_CASE("listMembers: members in name order; a folder without members is an error") {
  testing::TempDir tmp("ccal-proc");
  auto missing = listMembers(fs::path(tmp.path) / "nope");
  REQUIRE_FALSE(missing);
  CHECK(missing.error().message.find("is not a directory") != std::string::npos);

  fs::create_directories(tmp.path);
  auto empty = listMembers(tmp.path);
  REQUIRE_FALSE(empty);
  CHECK(empty.error().message.find("network bootstrap") != std::string::npos);

  makeNetwork(tmp, {"zeta", "alpha"});
  fs::create_directories(fs::path(tmp.path) / "not-a-member");
  auto members = listMembers(tmp.path);
  REQUIRE(members);
  REQUIRE(members->size() == 2);
  CHECK((*members)[0].name == "alpha");
  CHECK((*members)[1].name == "zeta");
}

TEST_CASE("start waits until every member is ready; stop ends them and removes the pid files") {
  testing::TempDir tmp("ccal-proc");
  auto dir = makeNetwork(tmp, {"a", "b", "c"});
  auto started = startNetwork(dir, options(goodMember));
  REQUIRE_MESSAGE(started, started.error().message);
  REQUIRE(started->size() == 3);
  for (const auto& s : *started) {
    CHECK(s.ready);
    CHECK(s.pid > 0);
    CHECK(::kill(s.pid, 0) == 0);
  }
  auto status = networkStatus(dir);
  REQUIRE(status);
  for (const auto& s : *status) CHECK(s.detail == "ready");

  SUBCASE("starting again leaves running members alone") {
    auto again = startNetwork(dir, options(goodMember));
    REQUIRE(again);
    for (size_t i = 0; i < 3; ++i) {
      CHECK((*again)[i].detail == "already running");
      CHECK((*again)[i].pid == (*started)[i].pid);
    }
  }

  auto stopped = stopNetwork(dir, 10'000);
  REQUIRE(stopped);
  for (const auto& s : *stopped) {
    CHECK(s.detail == "stopped");
    CHECK_FALSE(fs::exists(fs::path(dir) / s.name / "run" / "node.pid"));
    CHECK_FALSE(fs::exists(fs::path(dir) / s.name / "run" / "ready"));
  }
  auto stopped_again = stopNetwork(dir, 10'000);
  REQUIRE(stopped_again);
  for (const auto& s : *stopped_again) CHECK(s.detail == "was not running");
}

TEST_CASE("a member that dies before it is ready fails the start, names itself and its log") {
  testing::TempDir tmp("ccal-proc");
  auto dir = makeNetwork(tmp, {"a", "b"});
  auto started = startNetwork(dir, options([](const MemberDir& m) {
    if (m.name == "b") {
      return std::vector<std::string>{"/bin/sh", "-c", "echo 'config: unknown key p2p.foo'; exit 3"};
    }
    return goodMember(m);
  }));
  REQUIRE_FALSE(started);
  CHECK(started.error().message.find("b exited before it was ready") != std::string::npos);
  CHECK(started.error().message.find("unknown key p2p.foo") != std::string::npos);
  // What this start began is stopped again.
  auto status = networkStatus(dir);
  REQUIRE(status);
  for (const auto& s : *status) CHECK_FALSE(s.running);
}

TEST_CASE("a member that is never ready times out; one that ignores SIGTERM is killed") {
  testing::TempDir tmp("ccal-proc");
  auto dir = makeNetwork(tmp, {"slow"});
  auto never = startNetwork(dir, options(
                                     [](const MemberDir&) {
                                       return std::vector<std::string>{
                                           "/bin/sh", "-c", "echo waiting; exec sleep 30"};
                                     },
                                     300));
  REQUIRE_FALSE(never);
  CHECK(never.error().code == Errc::timeout);
  CHECK(never.error().message.find("slow was not ready within 300 ms") != std::string::npos);

  auto stubborn = startNetwork(dir, options([](const MemberDir& m) {
    auto command = goodMember(m);
    command[2] = "trap '' TERM; " + command[2].substr(command[2].find("echo starting"));
    return command;
  }));
  REQUIRE_MESSAGE(stubborn, stubborn.error().message);
  auto stopped = stopNetwork(dir, 300);
  REQUIRE(stopped);
  CHECK((*stopped)[0].detail.find("killed (SIGKILL)") != std::string::npos);
  CHECK(::kill((*stubborn)[0].pid, 0) != 0);
}

TEST_CASE("a program that cannot be run is reported with the reason") {
  testing::TempDir tmp("ccal-proc");
  auto dir = makeNetwork(tmp, {"a"});
  auto started = startNetwork(dir, options([](const MemberDir&) {
    return std::vector<std::string>{"/nonexistent/ccal"};
  }));
  REQUIRE_FALSE(started);
  CHECK(started.error().message.find("cannot run /nonexistent/ccal") != std::string::npos);
}
