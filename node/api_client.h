#pragma once
// A client of a node's control API: what the `ccal` CLI uses to talk to a
// running node. One request per connection, with a deadline covering
// connect, send and receive.
//
//   auto client = ApiClient::create("http://127.0.0.1:7001", token);
//   auto node = client->get("/api/v1/node");          // Result<json>
//   if (!node) fail(node.error().message);  // names the address, or the server's error
//
// Errors: unreachable (refused, reset) is Errc::unavailable and no answer in
// time is Errc::timeout, both naming the address; an HTTP error is an Error whose code the server's error code
// maps to (401 -> unauthorized, 404 -> not_found, ...) and whose message is
// "<METHOD> <target>: <status> <code>: <the server's message>".

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "ledger/result.h"
#include "node/api_server.h"

namespace ccal::node {

struct ApiUrl {
  std::string host;  // an IP address or a name (without brackets for IPv6)
  uint16_t port = 0;
  std::string text;  // as given, for messages
};

// "http://HOST:PORT" with an optional trailing '/'. https is not offered by
// the local control API, and is refused with a message saying so.
Result<ApiUrl> parseApiUrl(std::string_view url);

struct ApiClientOptions {
  int64_t timeout_micros = 30'000'000;  // connect + send + receive, per request
  size_t response_bytes_max = 64 * 1024 * 1024;
};

struct ApiHttpResponse {
  unsigned status = 0;
  nlohmann::json body;  // null when the body was empty
};

class ApiClient {
 public:
  static Result<ApiClient> create(std::string_view url, std::string token,
                                  ApiClientOptions options = {});

  // 2xx: the response body; otherwise an Error carrying the server's message.
  Result<nlohmann::json> get(std::string_view target) const;
  Result<nlohmann::json> post(std::string_view target, const nlohmann::json& body) const;
  Result<nlohmann::json> call(HttpMethod method, std::string_view target,
                              const nlohmann::json* body) const;
  // The exchange itself: any HTTP status is a value; an Error only when no
  // well-formed answer came (unreachable, timeout, not JSON, too large).
  Result<ApiHttpResponse> exchange(HttpMethod method, std::string_view target,
                                   const nlohmann::json* body) const;

  const ApiUrl& url() const { return url_; }

  // Percent-encodes one path segment (an X.500 name, a flow id).
  static std::string encodeSegment(std::string_view segment);

 private:
  ApiClient(ApiUrl url, std::string token, ApiClientOptions options)
      : url_(std::move(url)), token_(std::move(token)), options_(options) {}

  ApiUrl url_;
  std::string token_;
  ApiClientOptions options_;
};

}  // namespace ccal::node
