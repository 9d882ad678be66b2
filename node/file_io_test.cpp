#include "node/file_io.h"

#include <doctest/doctest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "test/support/temp_dir.h"

namespace fs = std::filesystem;
using ccal::Errc;
using ccal::node::writeFileAtomically;

namespace {

std::string readAll(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

mode_t modeOf(const fs::path& file) {
  struct stat st {};
  REQUIRE(::stat(file.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

}  // namespace

TEST_CASE("writeFileAtomically creates and replaces a file with exactly the mode asked") {
  ccal::testing::TempDir dir;
  fs::create_directories(dir.path);
  const fs::path file = fs::path(dir.path) / "key.pem";
  const mode_t old_umask = ::umask(0077);
  REQUIRE(writeFileAtomically(file, std::string_view("first"), 0644).ok());
  ::umask(old_umask);
  CHECK(readAll(file) == "first");
  CHECK(modeOf(file) == 0644);  // not narrowed by the umask

  const ccal::Bytes bytes{0x00, 0x01, 0xff};
  REQUIRE(writeFileAtomically(file, bytes, 0600).ok());
  CHECK(readAll(file) == std::string("\x00\x01\xff", 3));
  CHECK(modeOf(file) == 0600);
  CHECK_FALSE(fs::exists(fs::path(dir.path) / "key.pem.tmp"));

  REQUIRE(writeFileAtomically(file, std::string_view(""), 0600).ok());
  CHECK(readAll(file).empty());
}

TEST_CASE("writeFileAtomically removes a stale temporary file and never follows a link there") {
  ccal::testing::TempDir dir;
  fs::create_directories(dir.path);
  const fs::path file = fs::path(dir.path) / "node.toml";
  const fs::path victim = fs::path(dir.path) / "victim";
  std::ofstream(victim) << "keep";
  fs::create_symlink(victim, fs::path(dir.path) / "node.toml.tmp");
  REQUIRE(writeFileAtomically(file, std::string_view("x = 1\n")).ok());
  CHECK(readAll(file) == "x = 1\n");
  CHECK(readAll(victim) == "keep");
}

TEST_CASE("writeFileAtomically names the file when it cannot write, and leaves the target as it was") {
  ccal::testing::TempDir dir;
  const fs::path missing = fs::path(dir.path) / "no-such-folder" / "pid";
  auto status = writeFileAtomically(missing, std::string_view("1"));
  REQUIRE_FALSE(status.ok());
  CHECK(status.error().code == Errc::io_error);
  CHECK(status.error().message.find(missing.string()) != std::string::npos);

  if (::geteuid() != 0) {  // root writes into read-only folders
    fs::create_directories(dir.path);
    const fs::path file = fs::path(dir.path) / "ready";
    REQUIRE(writeFileAtomically(file, std::string_view("old")).ok());
    REQUIRE(::chmod(dir.path.c_str(), 0500) == 0);
    auto refused = writeFileAtomically(file, std::string_view("new"));
    ::chmod(dir.path.c_str(), 0700);
    REQUIRE_FALSE(refused.ok());
    CHECK(refused.error().message.find("ready") != std::string::npos);
    CHECK(readAll(file) == "old");
  }
}
