#pragma once
// The one way node/ code includes Boost.Asio and its SSL stream.
//
// Boost 1.74's asio/awaitable.hpp uses std::exchange without including
// <utility>; under g++ 12 with C++20 that breaks unless <utility> comes
// first. Asio translation units compile slowly, so keep them few: only the
// .cpp files of the executor, the TLS link and the HTTP API include this.

#include <utility>

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>

namespace ccal::node {
namespace asio = boost::asio;
}  // namespace ccal::node
