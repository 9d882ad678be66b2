#include "node/api_users.h"

#include <doctest/doctest.h>
#include <sys/stat.h>

#include <fstream>

#include "test/support/temp_dir.h"

using namespace ccal;
using namespace ccal::node;

namespace {

const std::string admin_token(64, 'a');
const std::string operator_token(64, 'b');
const std::string reader_token = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

std::string usersText() {
  return "[[users]]\nname = \"admin\"\nrole = \"admin\"\ntoken = \"" + admin_token +
         "\"\n\n[[users]]\nname = \"ops\"\nrole = \"operator\"\ntoken = \"" + operator_token +
         "\"\n\n[[users]]\nname = \"auditor\"\nrole = \"read-only\"\ntoken = \"" + reader_token +
         "\"\n";
}

std::string writeFile(const testing::TempDir& dir, const std::string& text, mode_t mode) {
  std::string path = std::filesystem::path(dir.path).parent_path() / "users.toml";
  {
    std::ofstream out(path, std::ios::trunc);
    out << text;
  }
  REQUIRE(::chmod(path.c_str(), mode) == 0);
  return path;
}

std::string errorOf(const Result<ApiUsers>& result) {
  REQUIRE_FALSE(result.ok());
  return result.error().message;
}

}  // namespace

TEST_CASE("api users: a 0600 file loads; tokens authenticate to their user and role") {
  testing::TempDir dir("api-users");
  auto users = ApiUsers::load(writeFile(dir, usersText(), 0600));
  REQUIRE(users.ok());
  REQUIRE(users->users().size() == 3);

  const ApiUser* admin = users->authenticate(admin_token);
  REQUIRE(admin != nullptr);
  CHECK(admin->name == "admin");
  CHECK(admin->role == ApiRole::admin);
  const ApiUser* ops = users->authenticate(operator_token);
  REQUIRE(ops != nullptr);
  CHECK(ops->role == ApiRole::operator_);
  const ApiUser* reader = users->authenticate(reader_token);
  REQUIRE(reader != nullptr);
  CHECK(reader->name == "auditor");
  CHECK(reader->role == ApiRole::read_only);

  std::string wrong = admin_token;
  wrong.back() = 'b';
  CHECK(users->authenticate(wrong) == nullptr);
  CHECK(users->authenticate("") == nullptr);
  CHECK(users->authenticate(admin_token.substr(1)) == nullptr);
  CHECK(users->authenticate(admin_token + "a") == nullptr);
}

TEST_CASE("api users: roles are ordered read-only < operator < admin") {
  CHECK(roleAllows(ApiRole::admin, ApiRole::operator_));
  CHECK(roleAllows(ApiRole::operator_, ApiRole::operator_));
  CHECK(roleAllows(ApiRole::operator_, ApiRole::read_only));
  CHECK_FALSE(roleAllows(ApiRole::operator_, ApiRole::admin));
  CHECK_FALSE(roleAllows(ApiRole::read_only, ApiRole::operator_));
  for (ApiRole role : {ApiRole::read_only, ApiRole::operator_, ApiRole::admin})
    CHECK(parseApiRole(apiRoleName(role)) == role);
  CHECK_FALSE(parseApiRole("root").has_value());
  CHECK_FALSE(parseApiRole("Admin").has_value());
}

TEST_CASE("api users: a file group or others can read is refused, naming the file and mode") {
  testing::TempDir dir("api-users");
  for (mode_t mode : {0644, 0640, 0604, 0660, 0666}) {
    std::string path = writeFile(dir, usersText(), mode);
    auto users = ApiUsers::load(path);
    std::string message = errorOf(users);
    CHECK(users.error().code == Errc::forbidden);
    CHECK(message.find(path) != std::string::npos);
    char octal[8];
    std::snprintf(octal, sizeof octal, "%04o", static_cast<unsigned>(mode));
    CHECK_MESSAGE(message.find(octal) != std::string::npos, message);
  }
  // Owner-only modes stricter than 0600 are fine.
  CHECK(ApiUsers::load(writeFile(dir, usersText(), 0400)).ok());
}

TEST_CASE("api users: a missing file is not_found, naming it") {
  auto users = ApiUsers::load("/nonexistent/ccal/users.toml");
  CHECK(errorOf(users).find("/nonexistent/ccal/users.toml") != std::string::npos);
  CHECK(users.error().code == Errc::not_found);
}

TEST_CASE("api users: bad content is refused naming the key and the file") {
  struct Case {
    std::string text;
    std::string expect;  // part of the message
  };
  const std::string t = "token = \"" + admin_token + "\"\n";
  const std::vector<Case> cases = {
      {"[[users]\nname = \"x\"", "not valid TOML"},
      {"", "users: missing"},
      {"users = []\n", "users: no users"},
      {"users = 3\n", "users: must be an array of tables"},
      {"other = 1\n[[users]]\nname = \"a\"\nrole = \"admin\"\n" + t, "other: unknown key"},
      {"[[users]]\nname = \"a\"\nrole = \"admin\"\n" + t + "password = \"x\"\n",
       "users[0].password: unknown key"},
      {"[[users]]\nrole = \"admin\"\n" + t, "users[0].name: missing"},
      {"[[users]]\nname = \"a\"\n" + t, "users[0].role: missing"},
      {"[[users]]\nname = \"a\"\nrole = \"admin\"\n", "users[0].token: missing"},
      {"[[users]]\nname = 7\nrole = \"admin\"\n" + t, "users[0].name: must be a string, not integer"},
      {"[[users]]\nname = \"a\"\nrole = \"root\"\n" + t, "users[0].role: unknown role \"root\""},
      {"[[users]]\nname = \"a\"\nrole = \"admin\"\ntoken = \"abc\"\n",
       "users[0].token: must be 64 lowercase hex characters"},
      {"[[users]]\nname = \"a\"\nrole = \"admin\"\ntoken = \"" + std::string(64, 'A') + "\"\n",
       "users[0].token: must be 64 lowercase hex"},
      {"[[users]]\nname = \"a b\"\nrole = \"admin\"\n" + t, "users[0].name: \"a b\" may hold only"},
      {"[[users]]\nname = \"a\"\nrole = \"admin\"\n" + t + "[[users]]\nname = \"a\"\nrole = " +
           "\"operator\"\ntoken = \"" + operator_token + "\"\n",
       "users[1].name: \"a\" is already used"},
      {"[[users]]\nname = \"a\"\nrole = \"admin\"\n" + t +
           "[[users]]\nname = \"b\"\nrole = \"operator\"\n" + t,
       "users[1].token: the same token as another user"},
  };
  testing::TempDir dir("api-users");
  for (const Case& c : cases) {
    std::string path = writeFile(dir, c.text, 0600);
    auto users = ApiUsers::load(path);
    std::string message = errorOf(users);
    CHECK_MESSAGE(message.find(c.expect) != std::string::npos, message);
    CHECK_MESSAGE(message.rfind(path, 0) != std::string::npos, message);  // starts with the file
    CHECK(users.error().code == Errc::malformed);
  }
}

TEST_CASE("api users: generated tokens are fresh 64-hex tokens; write makes a 0600 file that loads") {
  std::string a = ApiUsers::generateToken(), b = ApiUsers::generateToken();
  CHECK(a.size() == 64);
  CHECK(a != b);
  std::vector<ApiUser> list = {{"admin", ApiRole::admin, a}, {"viewer", ApiRole::read_only, b}};

  testing::TempDir dir("api-users");
  std::string path = std::filesystem::path(dir.path).parent_path() / "api-users.toml";
  mode_t old_mask = ::umask(0);  // even a permissive umask gives 0600
  Status written = ApiUsers::write(path, list);
  ::umask(old_mask);
  REQUIRE(written.ok());
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);

  auto loaded = ApiUsers::load(path);
  REQUIRE(loaded.ok());
  REQUIRE(loaded->users().size() == 2);
  CHECK(loaded->authenticate(b)->name == "viewer");
  CHECK(loaded->authenticate(a)->role == ApiRole::admin);

  // Refuses to write what it would refuse to read.
  list.push_back({"admin", ApiRole::operator_, ApiUsers::generateToken()});
  Status refused = ApiUsers::write(path, list);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().message.find("users[2].name") != std::string::npos);
  CHECK(ApiUsers::load(path).ok());  // the file on disk is untouched
}
