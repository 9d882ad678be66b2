#pragma once
// The users of a node's control API: who may call it, with which bearer
// token, in which role. The users file is written at bootstrap (mode 0600)
// and read when the node starts:
//
//   [[users]]
//   name = "admin"          # unique
//   role = "admin"          # admin | operator | read-only
//   token = "<64 hex chars: 32 random bytes>"
//
// Roles are ordered: read-only may GET; operator may also start and kill
// flows; admin may do everything. A route names the least role it needs.

#include <array>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ledger/result.h"

namespace ccal::node {

enum class ApiRole : uint8_t { read_only = 0, operator_ = 1, admin = 2 };

// "read-only", "operator", "admin": the words of the users file and the API.
const char* apiRoleName(ApiRole role);
std::optional<ApiRole> parseApiRole(std::string_view name);
// Whether a user with role `has` may call a route that needs `needs`.
inline bool roleAllows(ApiRole has, ApiRole needs) { return has >= needs; }

struct ApiUser {
  std::string name;
  ApiRole role = ApiRole::read_only;
  std::string token;  // 64 lowercase hex characters
};

class ApiUsers {
 public:
  static constexpr size_t token_bytes = 32;
  static constexpr size_t token_hex_chars = 2 * token_bytes;
  static constexpr size_t users_max = 1024;
  static constexpr size_t users_file_bytes_max = 1 << 20;
  static constexpr size_t user_name_chars_max = 128;

  // Reads and checks a users file. Refused, with an error naming the file,
  // when it is missing, readable or writable by group or others (its mode
  // must be 0600, or stricter), not TOML, or breaks a rule (unknown or
  // missing key, wrong type, unknown role, malformed or duplicate token,
  // duplicate name, no users), naming the key at fault.
  static Result<ApiUsers> load(const std::filesystem::path& file);
  // The same checks on text already read; `source` names it in errors.
  static Result<ApiUsers> parse(std::string_view toml_text, std::string_view source);

  // The user holding this bearer token, or nullptr. The token is compared
  // with every user's in constant time, so timing shows neither which user
  // matched nor how much of a token was right.
  const ApiUser* authenticate(std::string_view token) const;

  const std::vector<ApiUser>& users() const { return users_; }

  // A fresh token: 32 bytes from the OS's CSPRNG, as 64 hex characters.
  static std::string generateToken();
  // The users file text for these users (the format above).
  static std::string format(const std::vector<ApiUser>& users);
  // Writes a users file with mode 0600 (created so; never briefly wider),
  // replacing any file there. The users are checked first.
  static Status write(const std::filesystem::path& file, const std::vector<ApiUser>& users);

 private:
  std::vector<ApiUser> users_;
};

}  // namespace ccal::node
