#pragma once
// doctest helpers for tests that run a network of real `ccal` processes
// (test_network.h): start it, reach a member's API as its admin, read a
// member's X.500 name; each fails the test with what went wrong.

#include <doctest/doctest.h>

#include <cstdint>
#include <filesystem>
#include <string>

#include "node/api_client.h"
#include "node/config.h"
#include "test/support/network_processes.h"

namespace ccal::testing {

// Starts the network; a failure shows what `ccal network start` printed
// (the member that did not come up and the tail of its log).
inline void startNetwork(const std::filesystem::path& net) {
  auto started = runCcalCapturing("network start --dir " + net.string());
  REQUIRE_MESSAGE(started.exit_code == 0, started.output);
}

inline node::ApiClient clientOf(const std::filesystem::path& net, const std::string& name,
                                 int64_t timeout_micros = 30'000'000) {
  auto client = adminClientOf(net, name, timeout_micros);
  REQUIRE_MESSAGE(client, client.error().toString());
  return *client;
}

inline std::string x500Of(const std::filesystem::path& net, const std::string& name) {
  auto config = node::loadNodeConfig(net / name / "node.toml");
  REQUIRE(config);
  return config->x500;
}

}  // namespace ccal::testing
