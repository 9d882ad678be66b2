#pragma once
// A control API server on a real loopback socket for one test: its own
// io_context on a background thread, three users (admin, operator,
// read-only) with fixed tokens, and providers the test can change.

#include <utility>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <functional>
#include <optional>
#include <thread>
#include <vector>

#include "node/api_server.h"

namespace ccal::testing {

inline const std::string api_admin_token(64, 'a');
inline const std::string api_operator_token(64, 'b');
inline const std::string api_reader_token(64, 'c');

inline node::ApiUsers apiTestUsers() {
  auto users = node::ApiUsers::parse(
      "[[users]]\nname = \"root\"\nrole = \"admin\"\ntoken = \"" + api_admin_token +
          "\"\n[[users]]\nname = \"ops\"\nrole = \"operator\"\ntoken = \"" + api_operator_token +
          "\"\n[[users]]\nname = \"viewer\"\nrole = \"read-only\"\ntoken = \"" + api_reader_token +
          "\"\n",
      "test users");
  CCAL_ASSERT(users.ok());
  return std::move(users).value();
}

class ApiFixture {
 public:
  explicit ApiFixture(node::ApiServerOptions options = {}, node::ApiProviders providers = {})
      : work_(io_.get_executor()) {
    server_.emplace(io_, std::move(options), apiTestUsers(), std::move(providers));
  }
  ~ApiFixture() {
    server_->stop();
    work_.reset();
    for (auto& thread : threads_) thread.join();
    server_.reset();
  }
  ApiFixture(const ApiFixture&) = delete;
  ApiFixture& operator=(const ApiFixture&) = delete;

  node::ApiServer& server() { return *server_; }
  // Binds and starts serving on `threads` io_context threads; call after adding routes.
  void start(int threads = 1) {
    Status started = server_->start();
    CCAL_ASSERT_MSG(started.ok(), "the test API server could not start");
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { io_.run(); });
  }
  uint16_t port() const { return server_->port(); }
  boost::asio::io_context& io() { return io_; }

 private:
  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_;
  std::optional<node::ApiServer> server_;
  std::vector<std::thread> threads_;
};

}  // namespace ccal::testing
