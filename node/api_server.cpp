// <utility> before any Asio header: Boost 1.74's awaitable.hpp needs std::exchange.
#include <utility>

#include "node/api_server.h"

#include "ledger/crypto.h"

#include <array>
#include <atomic>
#include <cctype>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <mutex>

namespace ccal::node {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;

namespace {

// After an error response the connection is closed, but first what the
// client is still sending is read and dropped for a little while, so that
// closing with unread data (a TCP reset) does not destroy the response
// before the client reads it.
constexpr size_t linger_drain_bytes_max = 4 * 1024 * 1024;
constexpr int64_t linger_drain_micros_max = 2'000'000;
// An accept that fails (out of file descriptors) is retried after a pause
// instead of spinning.
constexpr int64_t accept_retry_delay_micros = 50'000;

std::string dumpJson(const nlohmann::json& value) {
  // Strings that are not valid UTF-8 (echoed user input) are repaired, not thrown on.
  return value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::optional<HttpMethod> methodOf(http::verb verb) {
  switch (verb) {
    case http::verb::get: return HttpMethod::get;
    case http::verb::post: return HttpMethod::post;
    case http::verb::put: return HttpMethod::put;
    case http::verb::patch: return HttpMethod::patch;
    case http::verb::delete_: return HttpMethod::delete_;
    default: return std::nullopt;
  }
}

int hexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Percent-decoding; in a query, '+' is a space.
std::optional<std::string> percentDecode(std::string_view text, bool plus_is_space) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '%') {
      if (i + 2 >= text.size()) return std::nullopt;
      int hi = hexValue(text[i + 1]), lo = hexValue(text[i + 2]);
      if (hi < 0 || lo < 0) return std::nullopt;
      out.push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    } else if (c == '+' && plus_is_space) {
      out.push_back(' ');
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::vector<std::string_view> splitPath(std::string_view path) {
  std::vector<std::string_view> segments;
  CCAL_ASSERT(!path.empty() && path[0] == '/');
  size_t start = 1;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string_view::npos) end = path.size();
    segments.push_back(path.substr(start, end - start));
    start = end + 1;
  }
  return segments;
}

struct DepthExceeded {};

}  // namespace

const char* httpMethodName(HttpMethod method) {
  switch (method) {
    case HttpMethod::get: return "GET";
    case HttpMethod::post: return "POST";
    case HttpMethod::put: return "PUT";
    case HttpMethod::patch: return "PATCH";
    case HttpMethod::delete_: return "DELETE";
  }
  return "?";
}

const char* peerLinkStateName(PeerLinkState state) {
  switch (state) {
    case PeerLinkState::connected: return "connected";
    case PeerLinkState::connecting: return "connecting";
    case PeerLinkState::disconnected: return "disconnected";
  }
  return "unknown";
}

unsigned httpStatusOf(Errc code) {
  switch (code) {
    case Errc::ok: return 200;
    case Errc::malformed:
    case Errc::too_deep:
    case Errc::not_canonical:
    case Errc::bad_length:
    case Errc::unknown_scheme:
    case Errc::bad_key:
    case Errc::bad_query: return 400;
    case Errc::unauthorized: return 401;
    case Errc::forbidden: return 403;
    case Errc::not_found:
    case Errc::unknown_contract: return 404;
    case Errc::conflict:
    case Errc::locked: return 409;
    case Errc::too_large: return 413;
    case Errc::bad_signature:
    case Errc::missing_signatures:
    case Errc::merkle_proof_invalid:
    case Errc::id_mismatch:
    case Errc::not_visible:
    case Errc::invalid_transaction:
    case Errc::constraint_rejected:
    case Errc::contract_rejected:
    case Errc::certificate_invalid:
    case Errc::certificate_expired:
    case Errc::certificate_revoked:
    case Errc::name_constraint:
    case Errc::insufficient_balance: return 422;
    case Errc::unavailable: return 503;
    case Errc::timeout: return 504;
    case Errc::io_error:
    case Errc::storage_full:
    case Errc::storage_error:
    case Errc::schema_mismatch: return 500;
  }
  return 500;
}

const std::string& ApiRequest::param(std::string_view name) const {
  auto it = params.find(name);
  CCAL_ASSERT_MSG(it != params.end(), "a parameter the route pattern does not declare");
  return it->second;
}

std::optional<std::string> ApiRequest::queryParam(std::string_view name) const {
  auto it = query.find(name);
  if (it == query.end()) return std::nullopt;
  return it->second;
}

ApiResponse ApiResponse::error(unsigned status, std::string_view code, std::string_view message) {
  CCAL_ASSERT(status >= 400 && status <= 599);
  return {status,
          nlohmann::json{{"error", {{"code", std::string(code)}, {"message", std::string(message)}}}},
          {}};
}

ApiResponse ApiResponse::fromError(const Error& error) {
  return ApiResponse::error(httpStatusOf(error.code), errcName(error.code), error.message);
}

namespace detail {

struct RouteSegment {
  std::string text;  // literal text, or the parameter's name
  bool is_param = false;
};

struct Route {
  HttpMethod method;
  std::string pattern;
  std::vector<RouteSegment> segments;
  std::optional<ApiRole> min_role;  // nullopt: public (no token needed)
  ApiAsyncHandler handler;
};

class Session;

struct ApiServerState {
  ApiServerState(net::io_context& io_in, ApiServerOptions options_in, ApiUsers users_in,
                 ApiProviders providers_in)
      : io(io_in),
        options(std::move(options_in)),
        users(std::move(users_in)),
        providers(std::move(providers_in)),
        acceptor_strand(net::make_strand(io_in)),
        acceptor(acceptor_strand),
        retry_timer(acceptor_strand) {}

  net::io_context& io;
  const ApiServerOptions options;
  const ApiUsers users;
  const ApiProviders providers;
  std::vector<Route> routes;  // frozen once started

  net::strand<net::io_context::executor_type> acceptor_strand;
  tcp::acceptor acceptor;  // on acceptor_strand after start
  net::steady_timer retry_timer;
  std::atomic<bool> started{false};
  std::atomic<bool> stopped{false};
  std::atomic<size_t> connections{0};  // serving sessions
  std::atomic<size_t> rejecting{0};    // sessions only answering 503
  uint16_t bound_port = 0;
  std::string bound_address;

  std::mutex sessions_mutex;
  std::vector<std::weak_ptr<Session>> sessions;  // guarded by sessions_mutex

  void track(const std::shared_ptr<Session>& session) {
    std::lock_guard lock(sessions_mutex);
    if (sessions.size() >= 2 * options.connections_max + 16)
      std::erase_if(sessions, [](const std::weak_ptr<Session>& s) { return s.expired(); });
    sessions.push_back(session);
  }
};

// The outcome of an async handler: replied by the handler, or timed out by
// the server, whichever comes first.
struct ReplySlot {
  static constexpr int pending = 0, replied = 1, timed_out = 2;
  std::atomic<int> state{pending};
};

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket&& socket, std::shared_ptr<ApiServerState> server, bool reject)
      : server_(std::move(server)),
        stream_(std::move(socket)),
        buffer_(server_->options.header_bytes_max + server_->options.body_bytes_max + 1024),
        handler_timer_(stream_.get_executor()),
        reject_(reject) {
    (reject_ ? server_->rejecting : server_->connections).fetch_add(1);
    beast::error_code ec;
    auto remote = stream_.socket().remote_endpoint(ec);
    if (!ec) remote_ = remote.address().to_string() + ":" + std::to_string(remote.port());
  }
  ~Session() { (reject_ ? server_->rejecting : server_->connections).fetch_sub(1); }

  void run() {
    net::dispatch(stream_.get_executor(), [self = shared_from_this()] {
      if (self->server_->stopped) return self->closeNow();
      if (self->reject_) {
        self->keep_alive_ = false;
        return self->send(ApiResponse::error(
                              503, "too_many_connections",
                              "the control API serves at most " +
                                  std::to_string(self->server_->options.connections_max) +
                                  " connections at once; retry later"),
                          true);
      }
      self->readRequest();
    });
  }

  // From stop(): runs on the session's strand.
  void abort() {
    net::dispatch(stream_.get_executor(), [self = shared_from_this()] {
      self->handler_timer_.cancel();
      self->closeNow();
    });
  }

 private:
  const ApiServerOptions& options() const { return server_->options; }

  static std::chrono::microseconds micros(int64_t value) { return std::chrono::microseconds(value); }

  void readRequest() {
    parser_.emplace();
    parser_->header_limit(static_cast<std::uint32_t>(options().header_bytes_max));
    parser_->body_limit(options().body_bytes_max);
    // One deadline for the whole request, header and body: a slow sender
    // cannot hold the connection by dripping bytes.
    stream_.expires_after(micros(options().idle_timeout_micros));
    http::async_read_header(stream_, buffer_, *parser_,
                            beast::bind_front_handler(&Session::onHeader, shared_from_this()));
  }

  void onHeader(beast::error_code ec, size_t bytes) {
    if (ec) return onRead(ec, bytes);
    request_began_ = std::chrono::steady_clock::now();
    const auto& header = parser_->get();
    method_text_ = std::string(header.method_string().data(), header.method_string().size());
    target_text_ = std::string(header.target().data(), header.target().size());
    // curl and others wait for "100 Continue" before sending a body.
    auto expect = header.find(http::field::expect);
    if (expect != header.end() && beast::iequals(expect->value(), "100-continue") &&
        !parser_->is_done()) {
      auto interim = std::make_shared<http::response<http::empty_body>>(http::status::continue_,
                                                                         header.version());
      return http::async_write(stream_, *interim,
                               [self = shared_from_this(), interim](beast::error_code write_ec, size_t) {
                                 if (write_ec) return self->closeNow();
                                 self->readBody();
                               });
    }
    readBody();
  }

  void readBody() {
    http::async_read(stream_, buffer_, *parser_,
                     beast::bind_front_handler(&Session::onRead, shared_from_this()));
  }

  void onRead(beast::error_code ec, size_t) {
    if (server_->stopped) return closeNow();
    if (ec == http::error::end_of_stream || ec == beast::error::timeout ||
        ec == net::error::operation_aborted)
      return closeNow();
    keep_alive_ = false;  // after any read error the stream is out of step
    if (ec == http::error::body_limit)
      return send(ApiResponse::error(413, "body_too_large",
                                     "the request body is over the limit of " +
                                         std::to_string(options().body_bytes_max) + " bytes"),
                  true);
    if (ec == http::error::header_limit)
      return send(ApiResponse::error(431, "header_too_large",
                                     "the request line and headers are over the limit of " +
                                         std::to_string(options().header_bytes_max) + " bytes"),
                  true);
    if (ec == http::error::buffer_overflow)
      return send(ApiResponse::error(413, "request_too_large", "the request is too large"), true);
    if (ec == http::error::partial_message) return closeNow();  // the client went away
    if (ec) {
      if (ec.category() == http::make_error_code(http::error::bad_method).category())
        return send(ApiResponse::error(400, "bad_request",
                                       "malformed HTTP request: " + ec.message()),
                    true);
      return closeNow();  // a socket error: nobody to answer
    }
    http::request<http::string_body> request = parser_->release();
    parser_.reset();
    keep_alive_ = request.keep_alive();
    version_ = request.version();
    handle(std::move(request));
  }

  void handle(http::request<http::string_body>&& raw) {
    auto method = methodOf(raw.method());
    std::string_view target(raw.target().data(), raw.target().size());
    if (target.empty() || target[0] != '/')
      return send(ApiResponse::error(400, "bad_request",
                                     "the request target must be a path beginning with '/'"),
                  false);
    size_t question = target.find('?');
    std::string_view raw_path = target.substr(0, question);
    std::string_view raw_query =
        question == std::string_view::npos ? std::string_view() : target.substr(question + 1);

    ApiRequest request;
    // Decode each segment on its own, so an encoded '/' stays inside its segment.
    std::vector<std::string> segments;
    for (std::string_view segment : splitPath(raw_path)) {
      auto decoded = percentDecode(segment, false);
      if (!decoded)
        return send(ApiResponse::error(400, "bad_request",
                                       "malformed percent-encoding in the request path"),
                    false);
      segments.push_back(std::move(*decoded));
    }
    for (const std::string& s : segments) request.path += "/" + s;
    size_t start = 0;
    while (start < raw_query.size()) {
      size_t end = raw_query.find('&', start);
      if (end == std::string_view::npos) end = raw_query.size();
      std::string_view pair = raw_query.substr(start, end - start);
      start = end + 1;
      if (pair.empty()) continue;
      size_t eq = pair.find('=');
      auto key = percentDecode(pair.substr(0, eq), true);
      auto value = percentDecode(eq == std::string_view::npos ? std::string_view() : pair.substr(eq + 1),
                                 true);
      if (!key || !value)
        return send(ApiResponse::error(400, "bad_request",
                                       "malformed percent-encoding in the query string"),
                    false);
      request.query[std::move(*key)] = std::move(*value);
    }

    // Find the routes whose pattern matches the path, then the method.
    const Route* chosen = nullptr;
    std::vector<HttpMethod> allowed;
    bool path_is_public = false;
    for (const Route& route : server_->routes) {
      if (route.segments.size() != segments.size()) continue;
      bool match = true;
      for (size_t i = 0; i < segments.size() && match; ++i)
        match = route.segments[i].is_param ? !segments[i].empty()
                                           : route.segments[i].text == segments[i];
      if (!match) continue;
      path_is_public = path_is_public || !route.min_role.has_value();
      if (!method || route.method != *method) {
        allowed.push_back(route.method);
        continue;
      }
      if (chosen == nullptr || moreSpecific(route, *chosen)) chosen = &route;
    }

    // Authenticate first for everything that is not public, so an
    // unauthenticated caller learns nothing about which routes exist.
    bool is_public = chosen != nullptr ? !chosen->min_role.has_value() : path_is_public;
    if (!is_public) {
      auto header = raw.find(http::field::authorization);
      if (header == raw.end()) {
        auto response = ApiResponse::error(
            401, "unauthorized", "missing bearer token: send the header 'Authorization: Bearer <token>'");
        response.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"ccal\"");
        return send(std::move(response), false);
      }
      std::string_view value(header->value().data(), header->value().size());
      constexpr std::string_view scheme = "bearer ";
      bool bearer = value.size() > scheme.size();
      for (size_t i = 0; bearer && i < scheme.size(); ++i)
        bearer = std::tolower(static_cast<unsigned char>(value[i])) == scheme[i];
      const ApiUser* user = nullptr;
      if (bearer) {
        std::string_view token = value.substr(scheme.size());
        while (!token.empty() && token.front() == ' ') token.remove_prefix(1);
        while (!token.empty() && token.back() == ' ') token.remove_suffix(1);
        user = server_->users.authenticate(token);
      }
      if (user == nullptr) {
        auto response = ApiResponse::error(
            401, "unauthorized",
            bearer ? "the bearer token matches no user of this node"
                   : "the Authorization header must be 'Bearer <token>'");
        response.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"ccal\", error=\"invalid_token\"");
        return send(std::move(response), false);
      }
      request.user = user->name;
      request.role = user->role;
    }

    if (chosen == nullptr) {
      if (allowed.empty())
        return send(ApiResponse::error(404, "not_found",
                                       "no route " + std::string(raw_path) +
                                           " (the API is under /api/v1)"),
                    false);
      std::string allow;
      for (HttpMethod m : allowed) allow += (allow.empty() ? "" : ", ") + std::string(httpMethodName(m));
      auto response = ApiResponse::error(
          405, "method_not_allowed",
          std::string(raw.method_string().data(), raw.method_string().size()) + " is not allowed on " +
              std::string(raw_path) + " (allowed: " + allow + ")");
      response.headers.emplace_back("Allow", allow);
      return send(std::move(response), false);
    }
    if (chosen->min_role && !roleAllows(request.role, *chosen->min_role))
      return send(ApiResponse::error(
                      403, "forbidden",
                      "user \"" + request.user + "\" has role " + apiRoleName(request.role) +
                          "; " + httpMethodName(chosen->method) + " " + chosen->pattern + " needs " +
                          apiRoleName(*chosen->min_role)),
                  false);

    if (!raw.body().empty()) {
      try {
        size_t depth_max = options().json_depth_max;
        request.body = nlohmann::json::parse(
            raw.body(), [depth_max](int depth, nlohmann::json::parse_event_t event, nlohmann::json&) {
              if ((event == nlohmann::json::parse_event_t::object_start ||
                   event == nlohmann::json::parse_event_t::array_start) &&
                  static_cast<size_t>(depth) >= depth_max)
                throw DepthExceeded{};
              return true;
            });
      } catch (const DepthExceeded&) {
        return send(ApiResponse::error(400, "malformed_json",
                                       "the request body nests arrays and objects deeper than " +
                                           std::to_string(options().json_depth_max) + " levels"),
                    false);
      } catch (const nlohmann::json::exception& e) {
        return send(ApiResponse::error(400, "malformed_json",
                                       std::string("the request body is not valid JSON: ") + e.what()),
                    false);
      }
    }
    for (size_t i = 0; i < segments.size(); ++i)
      if (chosen->segments[i].is_param) request.params[chosen->segments[i].text] = segments[i];
    request.method = chosen->method;
    user_ = request.user;
    invoke(*chosen, std::move(request));
  }

  // Where two patterns match the same path, the one with a literal segment
  // at the first place they differ wins.
  static bool moreSpecific(const Route& a, const Route& b) {
    for (size_t i = 0; i < a.segments.size(); ++i)
      if (a.segments[i].is_param != b.segments[i].is_param) return !a.segments[i].is_param;
    return false;
  }

  void invoke(const Route& route, ApiRequest request) {
    auto slot = std::make_shared<ReplySlot>();
    slot_ = slot;
    std::string what = std::string(httpMethodName(route.method)) + " " + route.pattern;
    std::weak_ptr<Session> weak = shared_from_this();
    auto executor = stream_.get_executor();
    ApiReply reply = [weak, slot, executor](ApiResponse response) {
      int expected = ReplySlot::pending;
      if (!slot->state.compare_exchange_strong(expected, ReplySlot::replied)) {
        CCAL_ASSERT_MSG(expected == ReplySlot::timed_out, "an API handler replied twice");
        return;  // too late: the client already got 504
      }
      net::post(executor, [weak, response = std::move(response)]() mutable {
        if (auto self = weak.lock()) {
          self->handler_timer_.cancel();
          self->send(std::move(response), false);
        }
      });
    };
    handler_timer_.expires_after(micros(options().handler_timeout_micros));
    handler_timer_.async_wait([self = shared_from_this(), slot, what](beast::error_code ec) {
      if (ec) return;
      int expected = ReplySlot::pending;
      if (!slot->state.compare_exchange_strong(expected, ReplySlot::timed_out)) return;
      self->send(ApiResponse::error(504, "handler_timeout",
                                    what + " did not answer within " +
                                        std::to_string(self->options().handler_timeout_micros / 1000) +
                                        " ms"),
                 false);
    });
    // A handler that throws fails its request, not the server: JSON type
    // errors come from reading the request body, so they are the client's.
    auto fail = [&](ApiResponse response) {
      int expected = ReplySlot::pending;
      if (slot->state.compare_exchange_strong(expected, ReplySlot::replied)) {
        handler_timer_.cancel();
        send(std::move(response), false);
      }
    };
    try {
      route.handler(std::move(request), std::move(reply));
    } catch (const nlohmann::json::exception& e) {
      fail(ApiResponse::error(400, "bad_request", std::string("invalid request body: ") + e.what()));
    } catch (const std::exception& e) {
      fail(ApiResponse::error(500, "internal", what + " failed: " + e.what()));
    }
  }

  void send(ApiResponse response, bool close_after) {
    auto message = std::make_shared<http::response<http::string_body>>(
        static_cast<http::status>(response.status), version_ == 0 ? 11 : version_);
    message->set(http::field::server, "ccal");
    message->set(http::field::content_type, "application/json");
    message->set(http::field::cache_control, "no-store");
    for (auto& [name, value] : response.headers) message->set(name, value);
    message->body() = dumpJson(response.body);
    message->body().push_back('\n');
    message->keep_alive(keep_alive_ && !close_after && !server_->stopped);
    message->prepare_payload();
    logAccess(response.status);
    stream_.expires_after(micros(options().write_timeout_micros));
    http::async_write(stream_, *message,
                      [self = shared_from_this(), message](beast::error_code ec, size_t) {
                        if (ec) return self->closeNow();
                        if (message->keep_alive()) return self->readRequest();
                        self->lingerAndClose();
                      });
  }

  void logAccess(unsigned status) {
    const auto& log = server_->providers.access_log;
    if (log) {
      ApiAccessRecord record;
      record.remote = remote_;
      record.user = user_;
      record.method = method_text_;
      record.target = target_text_;
      record.status = status;
      if (request_began_)
        record.duration_micros = std::chrono::duration_cast<std::chrono::microseconds>(
                                     std::chrono::steady_clock::now() - *request_began_)
                                     .count();
      try {
        log(record);
      } catch (const std::exception&) {
        // A failing log must not take the connection down; the response still goes out.
      }
    }
    user_.clear();
    method_text_.clear();
    target_text_.clear();
    request_began_.reset();
  }

  void lingerAndClose() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream_.expires_after(micros(linger_drain_micros_max));
    drain();
  }

  void drain() {
    if (drained_bytes_ >= linger_drain_bytes_max || server_->stopped) return closeNow();
    stream_.async_read_some(net::buffer(drain_buffer_),
                            [self = shared_from_this()](beast::error_code ec, size_t n) {
                              if (ec) return self->closeNow();
                              self->drained_bytes_ += n;
                              self->drain();
                            });
  }

  void closeNow() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.close();
  }

  std::shared_ptr<ApiServerState> server_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  net::steady_timer handler_timer_;
  std::shared_ptr<ReplySlot> slot_;
  bool reject_ = false;
  bool keep_alive_ = true;
  unsigned version_ = 11;
  size_t drained_bytes_ = 0;
  // What the access log reports about the request being answered.
  std::string remote_;
  std::string user_;
  std::string method_text_;
  std::string target_text_;
  std::optional<std::chrono::steady_clock::time_point> request_began_;
  std::array<char, 4096> drain_buffer_{};
};

void doAccept(const std::shared_ptr<ApiServerState>& state) {
  state->acceptor.async_accept(
      net::make_strand(state->io), [state](beast::error_code ec, tcp::socket socket) {
        if (state->stopped || ec == net::error::operation_aborted) return;
        if (ec) {
          // Out of file descriptors and the like: pause, then accept again.
          state->retry_timer.expires_after(std::chrono::microseconds(accept_retry_delay_micros));
          state->retry_timer.async_wait([state](beast::error_code wait_ec) {
            if (!wait_ec && !state->stopped) doAccept(state);
          });
          return;
        }
        const size_t max = state->options.connections_max;
        if (state->connections.load() < max) {
          auto session = std::make_shared<Session>(std::move(socket), state, false);
          state->track(session);
          session->run();
        } else if (state->rejecting.load() < max) {
          // Over the limit: answer 503 (bounded too), so the client learns why.
          auto session = std::make_shared<Session>(std::move(socket), state, true);
          state->track(session);
          session->run();
        } else {
          beast::error_code ignored;
          socket.close(ignored);
        }
        doAccept(state);
      });
}

}  // namespace detail

ApiServer::ApiServer(net::io_context& io, ApiServerOptions options, ApiUsers users,
                     ApiProviders providers)
    : state_(std::make_shared<detail::ApiServerState>(io, std::move(options), std::move(users),
                                                      std::move(providers))) {
  CCAL_ASSERT(state_->options.connections_max > 0);
  CCAL_ASSERT(state_->options.header_bytes_max > 0 && state_->options.body_bytes_max > 0);
  auto* state = state_.get();
  // Built-in routes. Providers are the node's; a node without one answers 503.
  addRoute(HttpMethod::get, "/healthz", ApiRole::read_only, [state](const ApiRequest&) {
    if (state->providers.health) {
      Status health = state->providers.health();
      if (!health)
        return ApiResponse{503,
                           {{"status", "unavailable"}, {"reason", health.error().toString()}},
                           {}};
    }
    return ApiResponse::ok({{"status", "ok"}});
  });
  state_->routes.back().min_role = std::nullopt;  // public
  addRoute(HttpMethod::get, "/api/v1/node", ApiRole::read_only, [state](const ApiRequest& request) {
    if (!state->providers.node_info)
      return ApiResponse::error(503, "unavailable", "this node does not report its info yet");
    ApiNodeInfo info = state->providers.node_info();
    return ApiResponse::ok({{"name", info.name},
                            {"legal_name", info.legal_name},
                            {"role", info.role},
                            {"version", info.version},
                            {"uptime_seconds", static_cast<double>(info.uptime_micros) / 1e6},
                            {"api_version", "v1"},
                            {"crypto",
                             {{"ed25519_signs", cryptoCounters().ed25519_signs},
                              {"ed25519_verifies", cryptoCounters().ed25519_verifies}}},
                            {"user", {{"name", request.user}, {"role", apiRoleName(request.role)}}}});
  });
  addRoute(HttpMethod::get, "/api/v1/peers", ApiRole::read_only, [state](const ApiRequest&) {
    if (!state->providers.peers)
      return ApiResponse::error(503, "unavailable", "this node does not report its peers yet");
    nlohmann::json list = nlohmann::json::array();
    for (const ApiPeer& peer : state->providers.peers()) {
      nlohmann::json item = {{"legal_name", peer.legal_name},
                             {"address", peer.address},
                             {"state", peerLinkStateName(peer.state)}};
      if (peer.state_since_micros != 0) item["state_since_micros"] = peer.state_since_micros;
      if (peer.outbox_messages) item["outbox_messages"] = *peer.outbox_messages;
      list.push_back(std::move(item));
    }
    return ApiResponse::ok({{"peers", std::move(list)}});
  });
}

ApiServer::~ApiServer() { stop(); }

void ApiServer::addRoute(HttpMethod method, std::string_view pattern, ApiRole min_role,
                         ApiHandler handler) {
  CCAL_ASSERT(handler);
  addAsyncRoute(method, pattern, min_role,
                [handler = std::move(handler)](ApiRequest request, ApiReply reply) {
                  reply(handler(request));
                });
}

void ApiServer::addAsyncRoute(HttpMethod method, std::string_view pattern, ApiRole min_role,
                              ApiAsyncHandler handler) {
  CCAL_ASSERT_MSG(!state_->started, "routes are registered before start()");
  CCAL_ASSERT_MSG(!pattern.empty() && pattern[0] == '/', "a route pattern begins with '/'");
  CCAL_ASSERT(handler);
  detail::Route route{method, std::string(pattern), {}, min_role, std::move(handler)};
  for (std::string_view segment : splitPath(pattern)) {
    CCAL_ASSERT_MSG(!segment.empty(), "a route pattern has no empty segments");
    bool is_param = segment.size() > 2 && segment.front() == '{' && segment.back() == '}';
    route.segments.push_back({std::string(is_param ? segment.substr(1, segment.size() - 2) : segment),
                              is_param});
  }
  for (const detail::Route& other : state_->routes) {
    bool same = other.method == method && other.segments.size() == route.segments.size();
    for (size_t i = 0; same && i < route.segments.size(); ++i)
      same = other.segments[i].is_param == route.segments[i].is_param &&
             (route.segments[i].is_param || other.segments[i].text == route.segments[i].text);
    CCAL_ASSERT_MSG(!same, "two routes with the same method and path shape");
  }
  state_->routes.push_back(std::move(route));
}

Status ApiServer::start() {
  CCAL_ASSERT_MSG(!state_->started, "start() once");
  const auto& options = state_->options;
  const std::string where = options.host + ":" + std::to_string(options.port);
  beast::error_code ec;
  auto ip = net::ip::make_address(options.host, ec);
  if (ec)
    return makeError(Errc::malformed, "control API address " + where + ": \"" + options.host +
                                          "\" is not an IP address");
  tcp::endpoint endpoint(ip, options.port);
  auto& acceptor = state_->acceptor;
  auto fail = [&](const char* step) -> Status {
    beast::error_code ignored;
    acceptor.close(ignored);
    return makeError(Errc::io_error,
                     "control API cannot " + std::string(step) + " " + where + ": " + ec.message());
  };
  if (acceptor.open(endpoint.protocol(), ec)) return fail("open a socket for");
  if (acceptor.set_option(net::socket_base::reuse_address(true), ec)) return fail("configure");
  if (acceptor.bind(endpoint, ec)) return fail("listen on");
  if (acceptor.listen(net::socket_base::max_listen_connections, ec)) return fail("listen on");
  state_->bound_port = acceptor.local_endpoint(ec).port();
  if (ec) return fail("read the port of");
  state_->bound_address = (ip.is_v6() ? "[" + options.host + "]" : options.host) + ":" +
                          std::to_string(state_->bound_port);
  state_->started = true;
  net::dispatch(state_->acceptor_strand, [state = state_] {
    if (!state->stopped) detail::doAccept(state);
  });
  return Status::success();
}

void ApiServer::stop() {
  if (state_->stopped.exchange(true)) return;
  net::dispatch(state_->acceptor_strand, [state = state_] {
    beast::error_code ignored;
    state->acceptor.close(ignored);
    state->retry_timer.cancel();
  });
  std::vector<std::shared_ptr<detail::Session>> live;
  {
    std::lock_guard lock(state_->sessions_mutex);
    for (auto& weak : state_->sessions)
      if (auto session = weak.lock()) live.push_back(std::move(session));
    state_->sessions.clear();
  }
  for (auto& session : live) session->abort();
}

uint16_t ApiServer::port() const { return state_->bound_port; }
std::string ApiServer::address() const { return state_->bound_address; }
size_t ApiServer::connectionCount() const { return state_->connections.load(); }

}  // namespace ccal::node
