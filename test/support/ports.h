#pragma once
// Loopback ports for a test network of real processes.
//
// A test that writes fixed ports into a network spec must not collide with
// another test running at the same time (ctest -j) nor with an outgoing
// connection that the kernel gave the same number. So a block is taken
// below the kernel's ephemeral range (32768 and up on Linux, so no
// connect() ever picks it), held against other test processes by an flock
// on /tmp/ccal-test-ports/<first>.lock for the life of the object, and
// checked bindable before it is handed out.

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <stdexcept>
#include <string>

namespace ccal::testing {

class PortBlock {
 public:
  static constexpr int ports_per_block_max = 32;
  static constexpr int first_port_min = 10'000;
  static constexpr int first_port_end = 32'000;  // below the ephemeral range
  static constexpr int attempts_max = 400;

  explicit PortBlock(int count) : count_(count) {
    if (count <= 0 || count > ports_per_block_max) {
      throw std::invalid_argument("PortBlock: count must be 1.." + std::to_string(ports_per_block_max));
    }
    ::mkdir("/tmp/ccal-test-ports", 0777);
    constexpr int blocks = (first_port_end - first_port_min) / ports_per_block_max;
    const int start = static_cast<int>(::getpid() % blocks);
    for (int attempt = 0; attempt < attempts_max; ++attempt) {
      const int first = first_port_min + ((start + attempt * 37) % blocks) * ports_per_block_max;
      std::string lock = "/tmp/ccal-test-ports/" + std::to_string(first) + ".lock";
      int fd = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0666);
      if (fd < 0) continue;
      if (::flock(fd, LOCK_EX | LOCK_NB) != 0 || !allBindable(first, count)) {
        ::close(fd);
        continue;
      }
      first_ = first;
      lock_fd_ = fd;
      return;
    }
    throw std::runtime_error("PortBlock: no free block of " + std::to_string(count) + " loopback ports in " +
                             std::to_string(first_port_min) + ".." + std::to_string(first_port_end));
  }
  ~PortBlock() {
    if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the flock
  }
  PortBlock(const PortBlock&) = delete;
  PortBlock& operator=(const PortBlock&) = delete;

  // The i-th port of the block, 0 <= i < count.
  int at(int i) const {
    if (i < 0 || i >= count_) throw std::out_of_range("PortBlock::at " + std::to_string(i));
    return first_ + i;
  }

 private:
  // Bindable the way the node binds (SO_REUSEADDR, so a TIME_WAIT left by
  // an earlier test does not count as taken).
  static bool allBindable(int first, int count) {
    for (int port = first; port < first + count; ++port) {
      int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (fd < 0) return false;
      int on = 1;
      ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_port = htons(static_cast<uint16_t>(port));
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      bool ok = ::bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0;
      ::close(fd);
      if (!ok) return false;
    }
    return true;
  }

  int count_ = 0;
  int first_ = 0;
  int lock_fd_ = -1;
};

}  // namespace ccal::testing
