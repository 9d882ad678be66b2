#include "node/api_users.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <toml++/toml.h>

#include "node/file_io.h"

namespace ccal::node {

namespace {

std::string octalMode(unsigned mode) {
  char text[8];
  std::snprintf(text, sizeof text, "%04o", mode & 07777u);
  return text;
}

bool isLowerHex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }

bool isNameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_' || c == '.';
}

// "<file>:<line>: users[<i>].<key>: <what>" — where the fault is, then what it is.
Error keyError(std::string_view source, const toml::node* node, const std::string& key,
               const std::string& what) {
  std::string where(source);
  if (node != nullptr && node->source().begin.line > 0)
    where += ":" + std::to_string(node->source().begin.line);
  return makeError(Errc::malformed, where + ": " + key + ": " + what);
}

Status checkUser(const ApiUser& user, size_t index) {
  std::string key = "users[" + std::to_string(index) + "]";
  if (user.name.empty() || user.name.size() > ApiUsers::user_name_chars_max)
    return makeError(Errc::malformed, key + ".name: must be 1 to " +
                                          std::to_string(ApiUsers::user_name_chars_max) +
                                          " characters");
  for (char c : user.name)
    if (!isNameChar(c))
      return makeError(Errc::malformed,
                       key + ".name: \"" + user.name +
                           "\" may hold only letters, digits, '-', '_' and '.'");
  if (user.token.size() != ApiUsers::token_hex_chars)
    return makeError(Errc::malformed, key + ".token: must be " +
                                          std::to_string(ApiUsers::token_hex_chars) +
                                          " lowercase hex characters (32 random bytes), not " +
                                          std::to_string(user.token.size()) + " characters");
  for (char c : user.token)
    if (!isLowerHex(c))
      return makeError(Errc::malformed, key + ".token: must be " +
                                            std::to_string(ApiUsers::token_hex_chars) +
                                            " lowercase hex characters (32 random bytes)");
  return Status::success();
}

Status checkUnique(const std::vector<ApiUser>& users) {
  std::set<std::string_view> names, tokens;
  for (size_t i = 0; i < users.size(); ++i) {
    std::string key = "users[" + std::to_string(i) + "]";
    if (!names.insert(users[i].name).second)
      return makeError(Errc::malformed,
                       key + ".name: \"" + users[i].name + "\" is already used by another user");
    if (!tokens.insert(users[i].token).second)
      return makeError(Errc::malformed, key + ".token: the same token as another user");
  }
  return Status::success();
}

}  // namespace

const char* apiRoleName(ApiRole role) {
  switch (role) {
    case ApiRole::read_only: return "read-only";
    case ApiRole::operator_: return "operator";
    case ApiRole::admin: return "admin";
  }
  return "unknown";
}

std::optional<ApiRole> parseApiRole(std::string_view name) {
  if (name == "read-only") return ApiRole::read_only;
  if (name == "operator") return ApiRole::operator_;
  if (name == "admin") return ApiRole::admin;
  return std::nullopt;
}

Result<ApiUsers> ApiUsers::load(const std::filesystem::path& file) {
  const std::string name = file.string();
  // Open first, then check the mode of what was opened, so the file checked
  // is the file read.
  int fd = ::open(name.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    return makeError(err == ENOENT ? Errc::not_found : Errc::io_error,
                     "API users file " + name + ": " + std::strerror(err));
  }
  struct FdCloser {
    int fd;
    ~FdCloser() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0)
    return makeError(Errc::io_error, "API users file " + name + ": " + std::strerror(errno));
  if (!S_ISREG(st.st_mode))
    return makeError(Errc::malformed, "API users file " + name + " is not a regular file");
  if ((st.st_mode & 077) != 0)
    return makeError(Errc::forbidden, "API users file " + name + " has mode " +
                                          octalMode(st.st_mode) +
                                          ": it holds secret tokens, so group and others may "
                                          "have no access (chmod 600 " + name + ")");
  if (static_cast<uint64_t>(st.st_size) > users_file_bytes_max)
    return makeError(Errc::too_large, "API users file " + name + " is " +
                                          std::to_string(st.st_size) + " bytes, over the limit of " +
                                          std::to_string(users_file_bytes_max));
  std::string text;
  char buffer[8192];
  for (;;) {
    ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n < 0) {
      if (errno == EINTR) continue;
      return makeError(Errc::io_error, "API users file " + name + ": " + std::strerror(errno));
    }
    if (n == 0) break;
    text.append(buffer, static_cast<size_t>(n));
    if (text.size() > users_file_bytes_max)
      return makeError(Errc::too_large, "API users file " + name + " is over the limit of " +
                                            std::to_string(users_file_bytes_max) + " bytes");
  }
  return parse(text, name);
}

Result<ApiUsers> ApiUsers::parse(std::string_view toml_text, std::string_view source) {
  toml::table root;
  try {
    root = toml::parse(toml_text, source);
  } catch (const toml::parse_error& e) {
    std::ostringstream where;
    where << source << ":" << e.source().begin.line << ":" << e.source().begin.column;
    return makeError(Errc::malformed, where.str() + ": not valid TOML: " +
                                          std::string(e.description()));
  }
  for (const auto& [key, value] : root) {
    if (key.str() != "users")
      return keyError(source, &value, std::string(key.str()),
                      "unknown key (the users file holds only [[users]] tables)");
  }
  const toml::node* users_node = root.get("users");
  if (users_node == nullptr)
    return makeError(Errc::malformed,
                     std::string(source) + ": users: missing (at least one [[users]] table)");
  const toml::array* list = users_node->as_array();
  if (list != nullptr && list->empty())
    return keyError(source, users_node, "users", "no users: at least one [[users]] table");
  if (list == nullptr || !list->is_array_of_tables())
    return keyError(source, users_node, "users", "must be an array of tables ([[users]])");
  if (list->size() > users_max)
    return keyError(source, users_node, "users",
                    std::to_string(list->size()) + " users, over the limit of " +
                        std::to_string(users_max));

  ApiUsers result;
  for (size_t i = 0; i < list->size(); ++i) {
    const toml::table& table = *(*list)[i].as_table();
    const std::string prefix = "users[" + std::to_string(i) + "]";
    for (const auto& [key, value] : table) {
      if (key.str() != "name" && key.str() != "role" && key.str() != "token")
        return keyError(source, &value, prefix + "." + std::string(key.str()),
                        "unknown key (expected name, role and token)");
    }
    auto text = [&](const char* key) -> Result<std::string> {
      const toml::node* node = table.get(key);
      if (node == nullptr)
        return keyError(source, &table, prefix + "." + key, "missing (required)");
      if (!node->is_string())
        return keyError(source, node, prefix + "." + key,
                        std::string("must be a string, not ") + [&] {
                          std::ostringstream type;
                          type << node->type();
                          return type.str();
                        }());
      return std::string(*node->value<std::string_view>());
    };
    ApiUser user;
    auto name = text("name");
    if (!name) return name.error();
    user.name = std::move(*name);
    auto role_text = text("role");
    if (!role_text) return role_text.error();
    auto role = parseApiRole(*role_text);
    if (!role)
      return keyError(source, table.get("role"), prefix + ".role",
                      "unknown role \"" + *role_text + "\" (expected admin, operator or read-only)");
    user.role = *role;
    auto token = text("token");
    if (!token) return token.error();
    user.token = std::move(*token);
    if (Status s = checkUser(user, i); !s)
      return makeError(s.error().code, std::string(source) + ": " + s.error().message);
    result.users_.push_back(std::move(user));
  }
  if (Status s = checkUnique(result.users_); !s)
    return makeError(s.error().code, std::string(source) + ": " + s.error().message);
  return result;
}

const ApiUser* ApiUsers::authenticate(std::string_view token) const {
  // The presented token's length is not secret (every valid token has the
  // same length); its content is. Every user's token is compared in full.
  if (token.size() != token_hex_chars) return nullptr;
  const ApiUser* found = nullptr;
  for (const ApiUser& user : users_) {
    CCAL_ASSERT(user.token.size() == token_hex_chars);
    bool equal = CRYPTO_memcmp(user.token.data(), token.data(), token_hex_chars) == 0;
    found = equal ? &user : found;
  }
  return found;
}

std::string ApiUsers::generateToken() {
  unsigned char bytes[token_bytes];
  // RAND_bytes fails only when the OS cannot seed the CSPRNG: nothing
  // sensible can run then.
  CCAL_ASSERT_MSG(RAND_bytes(bytes, sizeof bytes) == 1, "OpenSSL RAND_bytes failed");
  static constexpr char digits[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(token_hex_chars);
  for (unsigned char b : bytes) {
    hex.push_back(digits[b >> 4]);
    hex.push_back(digits[b & 0xf]);
  }
  OPENSSL_cleanse(bytes, sizeof bytes);
  return hex;
}

std::string ApiUsers::format(const std::vector<ApiUser>& users) {
  std::string out =
      "# CCAL control API users. Keep this file mode 0600: the tokens are secrets.\n"
      "# role: admin | operator | read-only\n";
  for (const ApiUser& user : users) {
    out += "\n[[users]]\nname = \"" + user.name + "\"\nrole = \"" + apiRoleName(user.role) +
           "\"\ntoken = \"" + user.token + "\"\n";
  }
  return out;
}

Status ApiUsers::write(const std::filesystem::path& file, const std::vector<ApiUser>& users) {
  if (users.empty()) return makeError(Errc::malformed, "users: no users to write to " + file.string());
  for (size_t i = 0; i < users.size(); ++i) CCAL_TRY(checkUser(users[i], i));
  CCAL_TRY(checkUnique(users));
  const std::string text = format(users);
  auto written = writeFileAtomically(file, text, 0600);
  if (!written.ok()) {
    return makeError(Errc::io_error, "cannot write API users file: " + written.error().message);
  }
  return Status::success();
}

}  // namespace ccal::node
