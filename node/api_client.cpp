// <utility> before any Asio header: Boost 1.74's awaitable.hpp needs std::exchange.
#include <utility>

#include "node/api_client.h"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <optional>

namespace ccal::node {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;

namespace {

http::verb verbOf(HttpMethod method) {
  switch (method) {
    case HttpMethod::get: return http::verb::get;
    case HttpMethod::post: return http::verb::post;
    case HttpMethod::put: return http::verb::put;
    case HttpMethod::patch: return http::verb::patch;
    case HttpMethod::delete_: return http::verb::delete_;
  }
  return http::verb::get;
}

// The Errc for an HTTP error: the server's own code when it is an Errc name
// (ApiResponse::fromError), else by status.
Errc errcOfResponse(unsigned status, std::string_view code) {
  constexpr uint16_t errc_values_max = 256;  // more than Errc will ever hold
  for (uint16_t i = 1; i < errc_values_max; ++i) {
    const char* name = errcName(static_cast<Errc>(i));
    if (std::string_view(name) == "unknown_error") break;
    if (code == name) return static_cast<Errc>(i);
  }
  switch (status) {
    case 401: return Errc::unauthorized;
    case 403: return Errc::forbidden;
    case 404: return Errc::not_found;
    case 409: return Errc::conflict;
    case 413:
    case 431: return Errc::too_large;
    case 503: return Errc::unavailable;
    case 504: return Errc::timeout;
    default: return status >= 500 ? Errc::storage_error : Errc::malformed;
  }
}

}  // namespace

Result<ApiUrl> parseApiUrl(std::string_view url) {
  auto bad = [&](const std::string& why) {
    return makeError(Errc::malformed, "API URL \"" + std::string(url) + "\": " + why);
  };
  constexpr std::string_view http_scheme = "http://";
  if (url.rfind("https://", 0) == 0)
    return bad("the control API is plain HTTP on a local address; use http://");
  if (url.rfind(http_scheme, 0) != 0) return bad("must look like http://HOST:PORT");
  std::string_view rest = url.substr(http_scheme.size());
  if (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  if (rest.find('/') != std::string_view::npos)
    return bad("must be http://HOST:PORT, without a path (routes add /api/v1)");
  ApiUrl result;
  result.text = std::string(url);
  std::string_view port_text;
  if (!rest.empty() && rest.front() == '[') {
    size_t close = rest.find(']');
    if (close == std::string_view::npos) return bad("an IPv6 address needs a closing ']'");
    result.host = std::string(rest.substr(1, close - 1));
    if (close + 1 >= rest.size() || rest[close + 1] != ':') return bad("missing :PORT");
    port_text = rest.substr(close + 2);
  } else {
    size_t colon = rest.rfind(':');
    if (colon == std::string_view::npos) return bad("missing :PORT");
    result.host = std::string(rest.substr(0, colon));
    port_text = rest.substr(colon + 1);
  }
  if (result.host.empty()) return bad("missing host");
  if (port_text.empty() || port_text.size() > 5) return bad("the port must be 1 to 65535");
  uint32_t port = 0;
  for (char c : port_text) {
    if (c < '0' || c > '9') return bad("the port must be a number");
    port = port * 10 + static_cast<uint32_t>(c - '0');
  }
  if (port == 0 || port > 65535) return bad("the port must be 1 to 65535");
  result.port = static_cast<uint16_t>(port);
  return result;
}

Result<ApiClient> ApiClient::create(std::string_view url, std::string token,
                                    ApiClientOptions options) {
  auto parsed = parseApiUrl(url);
  if (!parsed) return parsed.error();
  for (char c : token)
    if (c <= ' ' || c == 0x7f)
      return makeError(Errc::malformed, "API token: must not hold spaces or control characters");
  if (token.empty()) return makeError(Errc::malformed, "API token: empty");
  return ApiClient(std::move(*parsed), std::move(token), options);
}

std::string ApiClient::encodeSegment(std::string_view segment) {
  static constexpr char digits[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : segment) {
    bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '-' || c == '_' || c == '.' || c == '~';
    if (plain) {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(digits[c >> 4]);
      out.push_back(digits[c & 0xf]);
    }
  }
  return out;
}

Result<ApiHttpResponse> ApiClient::exchange(HttpMethod method, std::string_view target,
                                            const nlohmann::json* body) const {
  CCAL_ASSERT_MSG(!target.empty() && target[0] == '/', "an API target begins with '/'");
  const std::string what = std::string(httpMethodName(method)) + " " + std::string(target);
  const std::string where = url_.host + ":" + std::to_string(url_.port);

  http::request<http::string_body> request(verbOf(method), std::string(target), 11);
  request.set(http::field::host, where);
  request.set(http::field::user_agent, "ccal");
  request.set(http::field::authorization, "Bearer " + token_);
  request.set(http::field::accept, "application/json");
  request.keep_alive(false);
  if (body != nullptr) {
    request.set(http::field::content_type, "application/json");
    request.body() = body->dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
  request.prepare_payload();

  // Everything runs on a private io_context under one deadline.
  net::io_context io;
  tcp::resolver resolver(io);
  beast::tcp_stream stream(io);
  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.body_limit(options_.response_bytes_max);
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::microseconds(options_.timeout_micros);

  beast::error_code failure;
  const char* failed_step = nullptr;
  bool done = false;
  auto fail = [&](const char* step, beast::error_code ec) {
    failed_step = step;
    failure = ec;
  };
  resolver.async_resolve(
      url_.host, std::to_string(url_.port), [&](beast::error_code ec, tcp::resolver::results_type results) {
        if (ec) return fail("resolve", ec);
        stream.expires_at(deadline);
        stream.async_connect(results, [&](beast::error_code connect_ec, const tcp::endpoint&) {
          if (connect_ec) return fail("connect to", connect_ec);
          stream.expires_at(deadline);
          http::async_write(stream, request, [&](beast::error_code write_ec, size_t) {
            if (write_ec) return fail("send to", write_ec);
            stream.expires_at(deadline);
            http::async_read(stream, buffer, parser, [&](beast::error_code read_ec, size_t) {
              if (read_ec) return fail("read the answer of", read_ec);
              done = true;
            });
          });
        });
      });
  io.run_until(deadline + std::chrono::milliseconds(100));
  if (!done && failed_step == nullptr) {
    failed_step = "resolve";
    failure = beast::error::timeout;
  }
  if (!done) {
    if (failure == beast::error::timeout)
      return makeError(Errc::timeout, "the control API at " + where + " did not answer " + what +
                                              " within " +
                                              std::to_string(options_.timeout_micros / 1000) + " ms");
    if (failure == http::error::body_limit)
      return makeError(Errc::too_large, "the control API at " + where + " answered " + what +
                                            " with more than " +
                                            std::to_string(options_.response_bytes_max) + " bytes");
    return makeError(Errc::unavailable, "cannot " + std::string(failed_step) +
                                            " the control API at " + where + " (" + what +
                                            "): " + failure.message());
  }

  const auto& response = parser.get();
  ApiHttpResponse result;
  result.status = response.result_int();
  if (!response.body().empty()) {
    try {
      result.body = nlohmann::json::parse(response.body());
    } catch (const nlohmann::json::exception& e) {
      return makeError(Errc::malformed, "the control API at " + where + " answered " + what +
                                            " with status " + std::to_string(result.status) +
                                            " and a body that is not JSON: " + e.what());
    }
  }
  return result;
}

Result<nlohmann::json> ApiClient::call(HttpMethod method, std::string_view target,
                                       const nlohmann::json* body) const {
  auto response = exchange(method, target, body);
  if (!response) return response.error();
  if (response->status >= 200 && response->status < 300) return std::move(response->body);
  std::string code = "http_" + std::to_string(response->status);
  std::string message = "(no error message)";
  const nlohmann::json& json = response->body;
  if (json.is_object() && json.contains("error") && json["error"].is_object()) {
    const auto& error = json["error"];
    if (error.contains("code") && error["code"].is_string()) code = error["code"].get<std::string>();
    if (error.contains("message") && error["message"].is_string())
      message = error["message"].get<std::string>();
  }
  return makeError(errcOfResponse(response->status, code),
                   std::string(httpMethodName(method)) + " " + std::string(target) + ": " +
                       std::to_string(response->status) + " " + code + ": " + message);
}

Result<nlohmann::json> ApiClient::get(std::string_view target) const {
  return call(HttpMethod::get, target, nullptr);
}

Result<nlohmann::json> ApiClient::post(std::string_view target, const nlohmann::json& body) const {
  return call(HttpMethod::post, target, &body);
}

}  // namespace ccal::node
