#include <utility>

#include "node/api_server.h"

#include <doctest/doctest.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <atomic>
#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <random>
#include <thread>

#include "test/support/api_fixture.h"

using namespace ccal;
using namespace ccal::node;
using ccal::testing::api_admin_token;
using ccal::testing::api_operator_token;
using ccal::testing::api_reader_token;
using ccal::testing::ApiFixture;
namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;
using json = nlohmann::json;

namespace {

constexpr int socket_timeout_seconds = 10;  // no test waits forever on a broken server

// A blocking loopback socket whose reads and writes give up after a while.
struct Client {
  net::io_context io;
  tcp::socket socket{io};

  explicit Client(uint16_t port) {
    socket.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port));
    timeval tv{socket_timeout_seconds, 0};
    ::setsockopt(socket.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(socket.native_handle(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  }

  struct Reply {
    unsigned status = 0;
    json body;
    http::response<http::string_body> raw;
  };

  Reply send(http::verb verb, const std::string& target, const std::string* token,
             const std::string& body = "", bool keep_alive = true) {
    http::request<http::string_body> request(verb, target, 11);
    request.set(http::field::host, "127.0.0.1");
    if (token) request.set(http::field::authorization, "Bearer " + *token);
    if (!body.empty()) request.set(http::field::content_type, "application/json");
    request.body() = body;
    request.keep_alive(keep_alive);
    request.prepare_payload();
    http::write(socket, request);
    return receive();
  }

  Reply receive() {
    Reply reply;
    http::response_parser<http::string_body> parser;
    parser.body_limit(1 << 20);
    http::read(socket, buffer, parser);
    reply.raw = parser.release();
    reply.status = reply.raw.result_int();
    reply.body = json::parse(reply.raw.body());  // every answer is JSON
    return reply;
  }

  // Raw bytes in; everything the server sends until it closes (or the timeout).
  std::string rawExchange(std::string_view bytes) {
    net::write(socket, net::buffer(bytes.data(), bytes.size()));
    return readUntilClosed();
  }

  std::string readUntilClosed() {
    std::string out;
    char chunk[4096];
    for (;;) {
      beast::error_code ec;
      size_t n = socket.read_some(net::buffer(chunk), ec);
      out.append(chunk, n);
      if (ec) break;
    }
    return out;
  }

  // Whether the server closed the connection (EOF/reset), waiting up to the socket timeout.
  bool closedByServer() {
    char byte;
    beast::error_code ec;
    socket.read_some(net::buffer(&byte, 1), ec);
    return ec == net::error::eof || ec == net::error::connection_reset;
  }

  beast::flat_buffer buffer;
};

const std::string* admin = &api_admin_token;
const std::string* operator_ = &api_operator_token;
const std::string* reader = &api_reader_token;

std::string errorCode(const Client::Reply& reply) { return reply.body["error"]["code"]; }
std::string errorMessage(const Client::Reply& reply) { return reply.body["error"]["message"]; }

ApiProviders testProviders() {
  ApiProviders providers;
  providers.node_info = [] {
    return ApiNodeInfo{"coop-a", "O=Cooperative A, L=Lisbon, C=PT", "node", "0.1.0", 3'500'000};
  };
  providers.peers = [] {
    return std::vector<ApiPeer>{
        {"O=Bank, L=London, C=GB", "127.0.0.1:7002", PeerLinkState::connected, 1'700'000'000'000'000,
         3},
        {"O=Notary 1, L=Zurich, C=CH", "127.0.0.1:7101", PeerLinkState::connecting, 0, std::nullopt}};
  };
  return providers;
}

}  // namespace

TEST_CASE("api server: /healthz needs no token; node and peers need one and report the providers") {
  std::atomic<bool> healthy{true};
  ApiProviders providers = testProviders();
  providers.health = [&]() -> Status {
    if (healthy) return Status::success();
    return makeError(Errc::unavailable, "the vault is not open");
  };
  ApiFixture api({}, providers);
  api.start();
  Client client(api.port());

  auto health = client.send(http::verb::get, "/healthz", nullptr);
  CHECK(health.status == 200);
  CHECK(health.body["status"] == "ok");
  CHECK(health.raw[http::field::content_type] == "application/json");
  healthy = false;
  health = client.send(http::verb::get, "/healthz", nullptr);
  CHECK(health.status == 503);
  CHECK(health.body["reason"].get<std::string>().find("the vault is not open") != std::string::npos);

  auto node = client.send(http::verb::get, "/api/v1/node", reader);
  REQUIRE(node.status == 200);
  CHECK(node.body["name"] == "coop-a");
  CHECK(node.body["legal_name"] == "O=Cooperative A, L=Lisbon, C=PT");
  CHECK(node.body["role"] == "node");
  CHECK(node.body["version"] == "0.1.0");
  CHECK(node.body["uptime_seconds"].get<double>() == doctest::Approx(3.5));
  CHECK(node.body["user"]["name"] == "viewer");
  CHECK(node.body["user"]["role"] == "read-only");

  auto peers = client.send(http::verb::get, "/api/v1/peers", reader);
  REQUIRE(peers.status == 200);
  REQUIRE(peers.body["peers"].size() == 2);
  CHECK(peers.body["peers"][0]["legal_name"] == "O=Bank, L=London, C=GB");
  CHECK(peers.body["peers"][0]["state"] == "connected");
  CHECK(peers.body["peers"][0]["outbox_messages"] == 3);
  CHECK(peers.body["peers"][1]["state"] == "connecting");
  CHECK_FALSE(peers.body["peers"][1].contains("outbox_messages"));
}

TEST_CASE("api server: 401 without a token, with a wrong one, or with another scheme") {
  ApiFixture api({}, testProviders());
  api.start();
  Client client(api.port());

  auto missing = client.send(http::verb::get, "/api/v1/node", nullptr);
  CHECK(missing.status == 401);
  CHECK(errorCode(missing) == "unauthorized");
  CHECK(errorMessage(missing).find("Authorization: Bearer") != std::string::npos);
  CHECK(missing.raw[http::field::www_authenticate].find("Bearer") == 0);

  std::string wrong = api_admin_token;
  wrong[10] = 'f';
  auto bad = client.send(http::verb::get, "/api/v1/node", &wrong);
  CHECK(bad.status == 401);
  CHECK(errorMessage(bad).find("matches no user") != std::string::npos);

  // Unknown routes answer 401 too before authentication: nothing leaks.
  CHECK(client.send(http::verb::get, "/api/v1/secret", nullptr).status == 401);

  http::request<http::string_body> basic(http::verb::get, "/api/v1/node", 11);
  basic.set(http::field::authorization, "Basic YWRtaW46YWRtaW4=");
  basic.prepare_payload();
  http::write(client.socket, basic);
  auto basic_reply = client.receive();
  CHECK(basic_reply.status == 401);
  CHECK(errorMessage(basic_reply).find("must be 'Bearer <token>'") != std::string::npos);

  // The scheme is case-insensitive.
  http::request<http::string_body> lower(http::verb::get, "/api/v1/node", 11);
  lower.set(http::field::authorization, "bearer " + api_admin_token);
  lower.prepare_payload();
  http::write(client.socket, lower);
  CHECK(client.receive().status == 200);
}

TEST_CASE("api server: roles — read-only may GET, operator may start flows, admin everything") {
  ApiFixture api({}, testProviders());
  auto echo = [](const ApiRequest& request) {
    return ApiResponse::ok({{"user", request.user}, {"role", apiRoleName(request.role)}});
  };
  api.server().addRoute(HttpMethod::get, "/api/v1/flows", ApiRole::read_only, echo);
  api.server().addRoute(HttpMethod::post, "/api/v1/flows", ApiRole::operator_, echo);
  api.server().addRoute(HttpMethod::post, "/api/v1/network/params", ApiRole::admin, echo);
  api.start();
  Client client(api.port());

  CHECK(client.send(http::verb::get, "/api/v1/flows", reader).status == 200);
  auto refused = client.send(http::verb::post, "/api/v1/flows", reader, "{}");
  CHECK(refused.status == 403);
  CHECK(errorCode(refused) == "forbidden");
  CHECK(errorMessage(refused) ==
        "user \"viewer\" has role read-only; POST /api/v1/flows needs operator");
  auto started = client.send(http::verb::post, "/api/v1/flows", operator_, "{}");
  CHECK(started.status == 200);
  CHECK(started.body["user"] == "ops");
  CHECK(client.send(http::verb::post, "/api/v1/network/params", operator_, "{}").status == 403);
  CHECK(client.send(http::verb::post, "/api/v1/network/params", admin, "{}").status == 200);
  CHECK(client.send(http::verb::post, "/api/v1/flows", admin, "{}").status == 200);
}

TEST_CASE("api server: 404 unknown route, 405 wrong method with Allow, params and query decoded") {
  ApiFixture api({}, testProviders());
  api.server().addRoute(HttpMethod::get, "/api/v1/flows/{id}", ApiRole::read_only,
                        [](const ApiRequest& request) {
                          return ApiResponse::ok({{"id", request.param("id")},
                                                  {"verbose", request.queryParam("verbose").value_or("-")}});
                        });
  api.server().addRoute(HttpMethod::get, "/api/v1/flows/stats", ApiRole::read_only,
                        [](const ApiRequest&) { return ApiResponse::ok({{"stats", true}}); });
  api.server().addRoute(HttpMethod::delete_, "/api/v1/flows/{id}", ApiRole::operator_,
                        [](const ApiRequest& request) {
                          return ApiResponse::ok({{"killed", request.param("id")}});
                        });
  api.start();
  Client client(api.port());

  auto missing = client.send(http::verb::get, "/api/v1/nothing/here", reader);
  CHECK(missing.status == 404);
  CHECK(errorCode(missing) == "not_found");
  CHECK(errorMessage(missing).find("/api/v1/nothing/here") != std::string::npos);
  CHECK(client.send(http::verb::get, "/api/v1/flows/", reader).status == 404);  // empty {id}

  auto wrong_method = client.send(http::verb::post, "/api/v1/node", admin, "{}");
  CHECK(wrong_method.status == 405);
  CHECK(errorCode(wrong_method) == "method_not_allowed");
  CHECK(wrong_method.raw[http::field::allow] == "GET");
  auto two = client.send(http::verb::put, "/api/v1/flows/42", admin, "{}");
  CHECK(two.status == 405);
  CHECK(two.raw[http::field::allow] == "GET, DELETE");
  CHECK(client.send(http::verb::post, "/healthz", nullptr).status == 405);  // public path: no 401

  auto by_id = client.send(http::verb::get, "/api/v1/flows/O%3DBank%2C%20L%3DLondon?verbose=yes+please",
                           reader);
  REQUIRE(by_id.status == 200);
  CHECK(by_id.body["id"] == "O=Bank, L=London");
  CHECK(by_id.body["verbose"] == "yes please");
  CHECK(client.send(http::verb::get, "/api/v1/flows/stats", reader).body["stats"] == true);
  CHECK(client.send(http::verb::get, "/api/v1/flows/a%2Fb", reader).body["id"] == "a/b");
  CHECK(client.send(http::verb::delete_, "/api/v1/flows/7", operator_).body["killed"] == "7");

  auto bad_escape = client.send(http::verb::get, "/api/v1/flows/%zz", reader);
  CHECK(bad_escape.status == 400);
  CHECK(errorMessage(bad_escape).find("percent-encoding") != std::string::npos);

  // Bytes that are not UTF-8, echoed in a message, still give valid JSON.
  auto binary = client.send(http::verb::get, "/api/v1/%ff%fe", reader);
  CHECK(binary.status == 404);
}

TEST_CASE("api server: JSON bodies — parsed, malformed 400, too deep 400, too large 413, header 431") {
  ApiServerOptions options;
  options.body_bytes_max = 1024;
  options.header_bytes_max = 1024;
  options.json_depth_max = 8;
  ApiFixture api(options, testProviders());
  api.server().addRoute(HttpMethod::post, "/api/v1/echo", ApiRole::operator_,
                        [](const ApiRequest& request) {
                          return ApiResponse::ok({{"got", request.body}});
                        });
  api.server().addRoute(HttpMethod::post, "/api/v1/typed", ApiRole::operator_,
                        [](const ApiRequest& request) {
                          int amount = request.body.at("amount").get<int>();
                          return ApiResponse::ok({{"amount", amount}});
                        });
  api.start();

  {
    Client client(api.port());
    auto echoed = client.send(http::verb::post, "/api/v1/echo", operator_, R"({"a":[1,2,{"b":"c"}]})");
    CHECK(echoed.status == 200);
    CHECK(echoed.body["got"]["a"][2]["b"] == "c");
    CHECK(client.send(http::verb::post, "/api/v1/echo", operator_, "").body["got"].is_null());

    auto malformed = client.send(http::verb::post, "/api/v1/echo", operator_, R"({"a":)");
    CHECK(malformed.status == 400);
    CHECK(errorCode(malformed) == "malformed_json");
    CHECK(errorMessage(malformed).find("not valid JSON") != std::string::npos);

    auto deep = client.send(http::verb::post, "/api/v1/echo", operator_,
                            std::string(9, '[') + std::string(9, ']'));
    CHECK(deep.status == 400);
    CHECK(errorMessage(deep).find("deeper than 8") != std::string::npos);
    CHECK(client.send(http::verb::post, "/api/v1/echo", operator_,
                      std::string(8, '[') + std::string(8, ']'))
              .status == 200);

    // A handler reading the wrong type out of the body: 400, not a crash.
    auto typed = client.send(http::verb::post, "/api/v1/typed", operator_, R"({"amount":"ten"})");
    CHECK(typed.status == 400);
    CHECK(errorMessage(typed).find("invalid request body") != std::string::npos);
    CHECK(client.send(http::verb::post, "/api/v1/typed", operator_, R"({"amount":10})").body["amount"] ==
          10);
  }
  {
    Client client(api.port());
    auto large = client.send(http::verb::post, "/api/v1/echo", operator_,
                             "[\"" + std::string(4000, 'x') + "\"]");
    CHECK(large.status == 413);
    CHECK(errorCode(large) == "body_too_large");
    CHECK(errorMessage(large).find("1024 bytes") != std::string::npos);
    CHECK(client.closedByServer());
  }
  {
    Client client(api.port());
    std::string request = "GET /api/v1/node HTTP/1.1\r\nHost: x\r\nX-Filler: " +
                          std::string(2000, 'y') + "\r\n\r\n";
    std::string answer = client.rawExchange(request);
    CHECK(answer.rfind("HTTP/1.1 431", 0) == 0);
    CHECK(answer.find("header_too_large") != std::string::npos);
  }
}

TEST_CASE("api server: garbage bytes get 400 and the server keeps serving") {
  ApiServerOptions options;
  options.idle_timeout_micros = 2'000'000;  // a request that parses and waits ends soon
  ApiFixture api(options, testProviders());
  api.start();
  {
    Client client(api.port());
    std::string answer = client.rawExchange(std::string("\x00\x01\x02garbage\r\n\r\n", 14));
    CHECK(answer.rfind("HTTP/1.1 400", 0) == 0);
    CHECK(answer.find("malformed HTTP request") != std::string::npos);
  }
  {
    Client client(api.port());
    std::string answer = client.rawExchange("GET /healthz HTTP/9.9\r\n\r\n");
    CHECK(answer.rfind("HTTP/1.1 400", 0) == 0);
  }
  {
    Client client(api.port());
    std::string answer = client.rawExchange(
        "POST /api/v1/node HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello");
    CHECK(answer.rfind("HTTP/1.1 400", 0) == 0);
  }
  // Random bytes, random lengths, some starting like a request.
  std::mt19937 random(20261126);
  for (int i = 0; i < 60; ++i) {
    std::string bytes = i % 2 ? "GET /api/v1/" : "";
    size_t length = random() % 600;
    for (size_t j = 0; j < length; ++j) bytes.push_back(static_cast<char>(random()));
    bytes += "\r\n\r\n";
    Client client(api.port());
    std::string answer = client.rawExchange(bytes);
    CHECK_MESSAGE(answer.rfind("HTTP/1.1 4", 0) == 0, "no 4xx for garbage #" << i);
  }
  Client client(api.port());
  CHECK(client.send(http::verb::get, "/healthz", nullptr).status == 200);
}

TEST_CASE("api server: idle and slowloris connections are closed after the idle timeout") {
  ApiServerOptions options;
  options.idle_timeout_micros = 300'000;
  ApiFixture api(options, testProviders());
  api.start();

  auto began = std::chrono::steady_clock::now();
  Client idle(api.port());
  CHECK(idle.closedByServer());
  auto idle_took = std::chrono::steady_clock::now() - began;
  CHECK(idle_took >= std::chrono::milliseconds(250));
  CHECK(idle_took < std::chrono::seconds(5));

  // Drip a header one byte every 50 ms: each byte arrives, but the request
  // never completes within the timeout.
  Client slow(api.port());
  began = std::chrono::steady_clock::now();
  std::string request = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + std::string(200, 'z');
  bool closed = false;
  for (char c : request) {
    beast::error_code ec;
    net::write(slow.socket, net::buffer(&c, 1), ec);
    if (ec) {
      closed = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (std::chrono::steady_clock::now() - began > std::chrono::seconds(3)) break;
  }
  if (!closed) closed = slow.closedByServer();
  CHECK(closed);
  CHECK(std::chrono::steady_clock::now() - began < std::chrono::seconds(5));

  // Keep-alive: two requests on one connection, then idle until closed.
  Client keep(api.port());
  CHECK(keep.send(http::verb::get, "/healthz", nullptr).status == 200);
  CHECK(keep.send(http::verb::get, "/api/v1/node", reader).status == 200);
  CHECK(keep.closedByServer());
  for (int i = 0; i < 100 && api.server().connectionCount() != 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  CHECK(api.server().connectionCount() == 0);
}

TEST_CASE("api server: connections over the limit get 503; capacity returns when they close") {
  ApiServerOptions options;
  options.connections_max = 2;
  ApiFixture api(options, testProviders());
  api.start();

  std::optional<Client> first(std::in_place, api.port());
  std::optional<Client> second(std::in_place, api.port());
  CHECK(first->send(http::verb::get, "/healthz", nullptr).status == 200);
  CHECK(second->send(http::verb::get, "/healthz", nullptr).status == 200);
  CHECK(api.server().connectionCount() == 2);

  Client third(api.port());
  auto refused = third.send(http::verb::get, "/healthz", nullptr);
  CHECK(refused.status == 503);
  CHECK(errorCode(refused) == "too_many_connections");
  CHECK(errorMessage(refused).find("at most 2 connections") != std::string::npos);

  first.reset();
  second.reset();
  for (int i = 0; i < 100 && api.server().connectionCount() != 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  Client fourth(api.port());
  CHECK(fourth.send(http::verb::get, "/healthz", nullptr).status == 200);
}

TEST_CASE("api server: async handlers reply later from any thread; late ones time out with 504") {
  ApiServerOptions options;
  options.handler_timeout_micros = 1'000'000;  // well above the 50 ms handler, even under load
  ApiFixture api(options, testProviders());
  std::vector<std::thread> workers;
  std::mutex workers_mutex;
  api.server().addAsyncRoute(HttpMethod::post, "/api/v1/flows", ApiRole::operator_,
                             [&](ApiRequest request, ApiReply reply) {
                               std::lock_guard lock(workers_mutex);
                               workers.emplace_back([request = std::move(request), reply] {
                                 std::this_thread::sleep_for(std::chrono::milliseconds(50));
                                 reply(ApiResponse::created({{"flow", request.body["name"]}}));
                               });
                             });
  std::atomic<bool> late_reply_done{false};
  api.server().addAsyncRoute(HttpMethod::post, "/api/v1/slow", ApiRole::operator_,
                             [&](ApiRequest, ApiReply reply) {
                               std::lock_guard lock(workers_mutex);
                               workers.emplace_back([reply, &late_reply_done] {
                                 std::this_thread::sleep_for(std::chrono::milliseconds(1300));
                                 reply(ApiResponse::ok({{"too", "late"}}));  // dropped
                                 late_reply_done = true;
                               });
                             });
  api.server().addRoute(HttpMethod::get, "/api/v1/broken", ApiRole::read_only,
                        [](const ApiRequest&) -> ApiResponse {
                          throw std::runtime_error("the flow table is gone");
                        });
  api.server().addRoute(HttpMethod::get, "/api/v1/refused", ApiRole::read_only,
                        [](const ApiRequest&) {
                          return ApiResponse::fromError(
                              makeError(Errc::conflict, "state abc:0 is already consumed"));
                        });
  api.start();

  Client client(api.port());
  auto created = client.send(http::verb::post, "/api/v1/flows", operator_, R"({"name":"token.move"})");
  CHECK(created.status == 201);
  CHECK(created.body["flow"] == "token.move");

  auto slow = client.send(http::verb::post, "/api/v1/slow", operator_, "{}");
  CHECK(slow.status == 504);
  CHECK(errorCode(slow) == "handler_timeout");
  CHECK(errorMessage(slow).find("POST /api/v1/slow") != std::string::npos);
  // The connection still works, and the late reply does not disturb it.
  CHECK(client.send(http::verb::get, "/healthz", nullptr).status == 200);
  for (int i = 0; i < 500 && !late_reply_done; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  CHECK(late_reply_done);
  CHECK(client.send(http::verb::get, "/api/v1/node", reader).status == 200);

  auto broken = client.send(http::verb::get, "/api/v1/broken", reader);
  CHECK(broken.status == 500);
  CHECK(errorMessage(broken) == "GET /api/v1/broken failed: the flow table is gone");
  auto refused = client.send(http::verb::get, "/api/v1/refused", reader);
  CHECK(refused.status == 409);
  CHECK(errorCode(refused) == "conflict");
  CHECK(errorMessage(refused) == "state abc:0 is already consumed");

  std::lock_guard lock(workers_mutex);
  for (auto& worker : workers) worker.join();
}

TEST_CASE("api server: stop closes open connections and the listener") {
  ApiFixture api({}, testProviders());
  api.start();
  Client client(api.port());
  CHECK(client.send(http::verb::get, "/healthz", nullptr).status == 200);
  api.server().stop();
  CHECK(client.closedByServer());
  net::io_context io;
  tcp::socket socket(io);
  beast::error_code ec;
  socket.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), api.port()), ec);
  CHECK(ec == net::error::connection_refused);
}

TEST_CASE("api server: start names the address it cannot use") {
  ApiFixture first({}, testProviders());
  first.start();
  net::io_context io;
  ApiServerOptions options;
  options.port = first.port();
  ApiServer taken(io, options, ccal::testing::apiTestUsers(), {});
  Status status = taken.start();
  REQUIRE_FALSE(status.ok());
  CHECK(status.error().code == Errc::io_error);
  CHECK(status.error().message.find("127.0.0.1:" + std::to_string(first.port())) != std::string::npos);

  options.host = "not-an-ip";
  ApiServer named(io, options, ccal::testing::apiTestUsers(), {});
  Status bad = named.start();
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().message.find("\"not-an-ip\" is not an IP address") != std::string::npos);
}

TEST_CASE("api server: expected failures map to HTTP statuses") {
  CHECK(httpStatusOf(Errc::malformed) == 400);
  CHECK(httpStatusOf(Errc::not_found) == 404);
  CHECK(httpStatusOf(Errc::conflict) == 409);
  CHECK(httpStatusOf(Errc::too_large) == 413);
  CHECK(httpStatusOf(Errc::contract_rejected) == 422);
  CHECK(httpStatusOf(Errc::unavailable) == 503);
  CHECK(httpStatusOf(Errc::timeout) == 504);
  CHECK(httpStatusOf(Errc::io_error) == 500);
  CHECK(httpStatusOf(Errc::storage_error) == 500);
  auto response = ApiResponse::fromError(makeError(Errc::insufficient_balance, "need 500 EUR, have 20"));
  CHECK(response.status == 422);
  CHECK(response.body["error"]["code"] == "insufficient_balance");
}

TEST_CASE("api server: a client expecting 100-continue gets it before sending the body") {
  ApiFixture api({}, testProviders());
  api.server().addRoute(HttpMethod::post, "/api/v1/echo", ApiRole::operator_,
                        [](const ApiRequest& request) { return ApiResponse::ok({{"got", request.body}}); });
  api.start();
  Client client(api.port());
  std::string body = R"({"amount":1200})";
  std::string header = "POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                       api_operator_token + "\r\nContent-Type: application/json\r\nContent-Length: " +
                       std::to_string(body.size()) + "\r\nExpect: 100-continue\r\n\r\n";
  net::write(client.socket, net::buffer(header));
  http::response<http::empty_body> interim;
  http::read(client.socket, client.buffer, interim);
  CHECK(interim.result() == http::status::continue_);
  net::write(client.socket, net::buffer(body));
  auto reply = client.receive();
  CHECK(reply.status == 200);
  CHECK(reply.body["got"]["amount"] == 1200);
}

TEST_CASE("api server: the access log records who did what, with the status") {
  std::mutex mutex;
  std::vector<ApiAccessRecord> records;
  ApiProviders providers = testProviders();
  providers.access_log = [&](const ApiAccessRecord& record) {
    std::lock_guard lock(mutex);
    records.push_back(record);
  };
  ApiFixture api({}, providers);
  api.start();
  {
    Client client(api.port());
    CHECK(client.send(http::verb::get, "/api/v1/node?x=1", reader).status == 200);
    CHECK(client.send(http::verb::get, "/api/v1/node", nullptr).status == 401);
  }
  {
    Client client(api.port());
    CHECK(client.rawExchange("NOT HTTP\r\n\r\n").rfind("HTTP/1.1 400", 0) == 0);
  }
  std::lock_guard lock(mutex);
  REQUIRE(records.size() == 3);
  CHECK(records[0].user == "viewer");
  CHECK(records[0].method == "GET");
  CHECK(records[0].target == "/api/v1/node?x=1");
  CHECK(records[0].status == 200);
  CHECK(records[0].remote.rfind("127.0.0.1:", 0) == 0);
  CHECK(records[1].user.empty());
  CHECK(records[1].status == 401);
  CHECK(records[2].method.empty());
  CHECK(records[2].status == 400);
}

TEST_CASE("api server: many clients at once on a two-thread io_context") {
  ApiServerOptions options;
  options.connections_max = 16;
  ApiFixture api(options, testProviders());
  std::atomic<int> served{0};
  std::mutex workers_mutex;
  std::vector<std::thread> workers;
  api.server().addAsyncRoute(HttpMethod::post, "/api/v1/flows", ApiRole::operator_,
                             [&](ApiRequest request, ApiReply reply) {
                               ++served;
                               // Reply from another thread half the time, inline otherwise.
                               int n = request.body.at("n").get<int>();
                               if (n % 2) {
                                 std::lock_guard lock(workers_mutex);
                                 workers.emplace_back([reply, n] { reply(ApiResponse::ok({{"n", n}})); });
                               } else {
                                 reply(ApiResponse::ok({{"n", n}}));
                               }
                             });
  api.start(2);
  constexpr int clients = 8, requests_each = 40;
  std::atomic<int> good{0};
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c)
    threads.emplace_back([&, c] {
      Client client(api.port());
      for (int i = 0; i < requests_each; ++i) {
        int n = c * 1000 + i;
        auto reply = i % 3 == 0 ? client.send(http::verb::get, "/api/v1/peers", reader)
                                : client.send(http::verb::post, "/api/v1/flows", operator_,
                                              json{{"n", n}}.dump());
        if (reply.status == 200 && (i % 3 == 0 || reply.body["n"] == n)) ++good;
      }
    });
  for (auto& thread : threads) thread.join();
  {
    std::lock_guard lock(workers_mutex);
    for (auto& worker : workers) worker.join();
  }
  CHECK(good == clients * requests_each);
  CHECK(served == clients * (requests_each - (requests_each + 2) / 3));
}

TEST_CASE("api server: stop while an async handler is pending; its late reply is harmless") {
  ApiFixture api({}, testProviders());
  std::mutex mutex;
  std::optional<ApiReply> parked;
  api.server().addAsyncRoute(HttpMethod::post, "/api/v1/flows", ApiRole::operator_,
                             [&](ApiRequest, ApiReply reply) {
                               std::lock_guard lock(mutex);
                               parked = std::move(reply);
                             });
  api.start();
  Client client(api.port());
  http::request<http::string_body> request(http::verb::post, "/api/v1/flows", 11);
  request.set(http::field::authorization, "Bearer " + api_operator_token);
  request.body() = "{}";
  request.prepare_payload();
  http::write(client.socket, request);
  for (int i = 0; i < 500; ++i) {
    std::lock_guard lock(mutex);
    if (parked) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  api.server().stop();
  CHECK(client.closedByServer());
  std::lock_guard lock(mutex);
  REQUIRE(parked.has_value());
  (*parked)(ApiResponse::ok({{"late", true}}));
}
