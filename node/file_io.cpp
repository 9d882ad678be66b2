#include "node/file_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

namespace ccal::node {

namespace fs = std::filesystem;

namespace {

Status failure(const fs::path& file, const char* what, int err) {
  return Error{Errc::io_error, file.string() + ": " + what + ": " + std::strerror(err)};
}

}  // namespace

Status writeFileAtomically(const fs::path& file, ByteView bytes, mode_t mode) {
  fs::path temp = file;
  temp += ".tmp";
  ::unlink(temp.c_str());  // a leftover of a crash; a symlink there is removed, not followed
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
  if (fd < 0) return failure(file, "cannot create the temporary file", errno);
  bool ok = ::fchmod(fd, mode) == 0;  // the umask may have narrowed the mode
  const char* what = "cannot set the mode";
  size_t done = 0;
  while (ok && done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    ok = n > 0;
    what = "cannot write";
    if (ok) done += static_cast<size_t>(n);
  }
  if (ok) {
    ok = ::fsync(fd) == 0;
    what = "cannot sync";
  }
  int err = errno;
  if (::close(fd) != 0 && ok) {
    ok = false;
    what = "cannot close";
    err = errno;
  }
  if (ok && ::rename(temp.c_str(), file.c_str()) != 0) {
    ok = false;
    what = "cannot replace";
    err = errno;
  }
  if (!ok) {
    ::unlink(temp.c_str());
    return failure(file, what, err);
  }
  // The rename is durable once the folder is synced.
  fs::path dir = file.parent_path();
  if (dir.empty()) dir = ".";
  const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) return failure(dir, "cannot open the folder to sync it", errno);
  const bool synced = ::fsync(dir_fd) == 0;
  err = errno;
  ::close(dir_fd);
  if (!synced) return failure(dir, "cannot sync the folder", err);
  return Status::success();
}

Status writeFileAtomically(const fs::path& file, std::string_view text, mode_t mode) {
  return writeFileAtomically(file, asBytes(text), mode);
}

Result<std::string> readFileBounded(const std::filesystem::path& file, size_t bytes_max) {
  // Opened first, then what was opened is checked and read: a regular file,
  // read up to one byte past the limit (a file that grows meanwhile is
  // refused too, not read without end).
  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return makeError(Errc::not_found, file.string() + ": " + std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0)
    return makeError(Errc::io_error, file.string() + ": " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) {
    return makeError(Errc::malformed,
                     file.string() + ": not a regular file (" +
                         (S_ISDIR(st.st_mode) ? "a directory" : "a device, pipe or socket") + ")");
  }
  auto tooLarge = [&](uint64_t size) {
    return makeError(Errc::too_large, file.string() + ": " + std::to_string(size) +
                                          " bytes, over the limit of " + std::to_string(bytes_max));
  };
  if (static_cast<uint64_t>(st.st_size) > bytes_max)
    return tooLarge(static_cast<uint64_t>(st.st_size));
  std::string text;
  char buffer[8192];
  for (;;) {
    ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n < 0) {
      if (errno == EINTR) continue;
      return makeError(Errc::io_error, file.string() + ": " + std::strerror(errno));
    }
    if (n == 0) break;
    text.append(buffer, static_cast<size_t>(n));
    if (text.size() > bytes_max) return tooLarge(text.size());
  }
  return text;
}

}  // namespace ccal::node
