#pragma once
// The node's control API: a local HTTP/1.1 server (Boost.Beast) speaking
// JSON, versioned under /api/v1, authenticated by bearer tokens (ApiUsers),
// plus GET /healthz without authentication.
//
// The node registers routes before start():
//
//   server.addRoute(HttpMethod::get, "/api/v1/flows/{id}", ApiRole::read_only,
//                   [&](const ApiRequest& request) {
//                     auto flow = flows.status(request.param("id"));
//                     if (!flow) return ApiResponse::fromError(flow.error());
//                     return ApiResponse::ok(toJson(*flow));
//                   });
//
// A handler that takes time (a flow) is registered with addAsyncRoute and
// calls its ApiReply exactly once, from any thread, whenever it is done; a
// reply later than handler_timeout_micros is dropped (the client got 504).
//
// Every failure is a JSON body {"error":{"code":"...","message":"..."}}
// whose message names the problem: 400 malformed request or JSON, 401
// missing or wrong token, 403 role too low, 404 unknown route, 405 method
// not allowed (with Allow), 413 body too large, 431 header too large, 503
// too many connections, 504 handler timeout, 500 handler failure. The server
// never crashes on input: header and body bytes, JSON nesting, connections,
// idle time and write time are all bounded.
//
// Threading: the server runs on the owner's io_context (one or more
// threads); each connection has its own strand. Handlers and providers run
// on connection strands, possibly concurrently, so what they touch must be
// thread-safe. The ApiServer must be destroyed before its io_context, and
// what handlers use must outlive the io_context's threads (a request being
// served when stop() is called may still run its handler).

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "ledger/result.h"
#include "node/api_users.h"

namespace boost::asio {
class io_context;
}

namespace ccal::node {

enum class HttpMethod : uint8_t { get, post, put, patch, delete_ };
const char* httpMethodName(HttpMethod method);

// The HTTP status an expected failure maps to (400 for malformed input, 404
// for not_found, 409 for conflicts, 422 for a refused transaction, ...).
unsigned httpStatusOf(Errc code);

struct ApiRequest {
  HttpMethod method = HttpMethod::get;
  std::string path;  // percent-decoded, without the query string
  std::map<std::string, std::string, std::less<>> params;  // {name} segments, decoded
  std::map<std::string, std::string, std::less<>> query;   // ?a=b&c=d, decoded
  nlohmann::json body;  // null when the request has no body
  std::string user;     // the authenticated user ("" on a public route)
  ApiRole role = ApiRole::read_only;

  // A path parameter the route pattern declares (asserted).
  const std::string& param(std::string_view name) const;
  // A query parameter, if given.
  std::optional<std::string> queryParam(std::string_view name) const;
};

struct ApiResponse {
  unsigned status = 200;
  nlohmann::json body = nlohmann::json::object();
  std::vector<std::pair<std::string, std::string>> headers;  // extra headers

  static ApiResponse ok(nlohmann::json body) { return {200, std::move(body), {}}; }
  static ApiResponse created(nlohmann::json body) { return {201, std::move(body), {}}; }
  static ApiResponse accepted(nlohmann::json body) { return {202, std::move(body), {}}; }
  // {"error":{"code":code,"message":message}}
  static ApiResponse error(unsigned status, std::string_view code, std::string_view message);
  // An expected failure: status from httpStatusOf, code errcName(error.code).
  static ApiResponse fromError(const Error& error);
};

// Calls back once with the response; thread-safe.
using ApiReply = std::function<void(ApiResponse)>;
using ApiHandler = std::function<ApiResponse(const ApiRequest&)>;
using ApiAsyncHandler = std::function<void(ApiRequest, ApiReply)>;

// What the built-in routes report, from the node.
struct ApiNodeInfo {
  std::string name;        // the member's short name (its folder name)
  std::string legal_name;  // its X.500 name
  std::string role;        // node | notary-replica | regulator
  std::string version;     // the ccal version
  int64_t uptime_micros = 0;
};

enum class PeerLinkState : uint8_t { connected, connecting, disconnected };
const char* peerLinkStateName(PeerLinkState state);

struct ApiPeer {
  std::string legal_name;  // X.500 name
  std::string address;     // host:port it is reached at ("" when unknown)
  PeerLinkState state = PeerLinkState::disconnected;
  int64_t state_since_micros = 0;       // wall clock, when it entered this state (0: unknown)
  std::optional<uint64_t> outbox_messages;  // messages waiting to be acknowledged
};

// One answered request, for the node's access log (who did what).
struct ApiAccessRecord {
  std::string remote;  // client ip:port
  std::string user;    // "" when not authenticated
  std::string method;  // as sent ("" when the request did not parse)
  std::string target;  // as sent, with the query string
  unsigned status = 0;
  int64_t duration_micros = 0;  // from the complete header to the response
};

struct ApiProviders {
  std::function<ApiNodeInfo()> node_info;       // GET /api/v1/node
  std::function<std::vector<ApiPeer>()> peers;  // GET /api/v1/peers
  // GET /healthz: ok, or why the node is not healthy (-> 503). Unset: ok.
  std::function<Status()> health;
  // Called once per response, on the connection's strand. Optional.
  std::function<void(const ApiAccessRecord&)> access_log;
};

struct ApiServerOptions {
  std::string host = "127.0.0.1";  // an IP address (v4 or v6)
  uint16_t port = 0;               // 0: any free port (see ApiServer::port)
  size_t header_bytes_max = 8 * 1024;
  size_t body_bytes_max = 1024 * 1024;
  size_t json_depth_max = 64;  // nesting of arrays and objects in a request body
  size_t connections_max = 64;
  // A connection must deliver a whole request within this time after the
  // previous response (or its opening); otherwise it is closed. This bounds
  // both idle keep-alive connections and slow senders (slowloris).
  int64_t idle_timeout_micros = 30'000'000;
  int64_t write_timeout_micros = 10'000'000;
  int64_t handler_timeout_micros = 120'000'000;
};

namespace detail {
struct ApiServerState;
}

class ApiServer {
 public:
  ApiServer(boost::asio::io_context& io, ApiServerOptions options, ApiUsers users,
            ApiProviders providers);
  ~ApiServer();
  ApiServer(const ApiServer&) = delete;
  ApiServer& operator=(const ApiServer&) = delete;

  // Routes: a path pattern of '/'-separated segments, where a segment
  // "{name}" matches any one segment and is passed as a parameter; a literal
  // segment wins over a parameter where both match. Register before start().
  void addRoute(HttpMethod method, std::string_view pattern, ApiRole min_role, ApiHandler handler);
  void addAsyncRoute(HttpMethod method, std::string_view pattern, ApiRole min_role,
                     ApiAsyncHandler handler);

  // Binds and listens; an error names the address (in use, not an IP, ...).
  Status start();
  // Closes the listener and every connection. Thread-safe, idempotent.
  void stop();

  uint16_t port() const;        // the bound port, after start()
  std::string address() const;  // "host:port", after start()
  size_t connectionCount() const;

 private:
  std::shared_ptr<detail::ApiServerState> state_;
};

}  // namespace ccal::node
