#include <utility>

#include "node/api_client.h"

#include <doctest/doctest.h>

#include <boost/asio/ip/tcp.hpp>
#include <chrono>

#include "test/support/api_fixture.h"

using namespace ccal;
using namespace ccal::node;
using ccal::testing::api_admin_token;
using ccal::testing::api_operator_token;
using ccal::testing::api_reader_token;
using ccal::testing::ApiFixture;
using json = nlohmann::json;

namespace {

std::string urlOf(uint16_t port) { return "http://127.0.0.1:" + std::to_string(port); }

ApiProviders testProviders() {
  ApiProviders providers;
  providers.node_info = [] { return ApiNodeInfo{"bank", "O=Bank, L=London, C=GB", "node", "0.1.0", 1}; };
  return providers;
}

}  // namespace

TEST_CASE("api client: URLs are http://HOST:PORT; anything else is refused, saying why") {
  auto plain = parseApiUrl("http://127.0.0.1:7001");
  REQUIRE(plain.ok());
  CHECK(plain->host == "127.0.0.1");
  CHECK(plain->port == 7001);
  CHECK(parseApiUrl("http://localhost:80/")->host == "localhost");
  auto v6 = parseApiUrl("http://[::1]:7001");
  REQUIRE(v6.ok());
  CHECK(v6->host == "::1");

  auto message = [](std::string_view url) {
    auto parsed = parseApiUrl(url);
    REQUIRE_FALSE(parsed.ok());
    CHECK(parsed.error().code == Errc::malformed);
    CHECK(parsed.error().message.find(std::string(url)) != std::string::npos);
    return parsed.error().message;
  };
  CHECK(message("https://127.0.0.1:7001").find("use http://") != std::string::npos);
  CHECK(message("127.0.0.1:7001").find("http://HOST:PORT") != std::string::npos);
  CHECK(message("http://127.0.0.1").find("missing :PORT") != std::string::npos);
  CHECK(message("http://127.0.0.1:0").find("1 to 65535") != std::string::npos);
  CHECK(message("http://127.0.0.1:70000").find("1 to 65535") != std::string::npos);
  CHECK(message("http://127.0.0.1:7a").find("must be a number") != std::string::npos);
  CHECK(message("http://127.0.0.1:7001/api/v1").find("without a path") != std::string::npos);
  CHECK(message("http://:7001").find("missing host") != std::string::npos);

  CHECK_FALSE(ApiClient::create("http://127.0.0.1:1", "").ok());
  CHECK_FALSE(ApiClient::create("http://127.0.0.1:1", "abc def").ok());
  CHECK(ApiClient::encodeSegment("O=Bank, L=London") == "O%3DBank%2C%20L%3DLondon");
}

TEST_CASE("api client: GET and POST JSON against a real server") {
  ApiFixture api({}, testProviders());
  api.server().addRoute(HttpMethod::post, "/api/v1/flows", ApiRole::operator_,
                        [](const ApiRequest& request) {
                          return ApiResponse::created({{"flow", request.body["flow"]}, {"id", 7}});
                        });
  api.server().addRoute(HttpMethod::get, "/api/v1/peers/{name}", ApiRole::read_only,
                        [](const ApiRequest& request) {
                          return ApiResponse::ok({{"legal_name", request.param("name")}});
                        });
  api.start();

  auto reader = ApiClient::create(urlOf(api.port()), api_reader_token);
  REQUIRE(reader.ok());
  auto node = reader->get("/api/v1/node");
  REQUIRE(node.ok());
  CHECK((*node)["name"] == "bank");
  CHECK((*node)["user"]["name"] == "viewer");

  auto peer = reader->get("/api/v1/peers/" + ApiClient::encodeSegment("O=Bank, L=London, C=GB"));
  REQUIRE(peer.ok());
  CHECK((*peer)["legal_name"] == "O=Bank, L=London, C=GB");

  auto ops = ApiClient::create(urlOf(api.port()) + "/", api_operator_token);
  REQUIRE(ops.ok());
  auto started = ops->post("/api/v1/flows", {{"flow", "token.issue"}});
  REQUIRE(started.ok());
  CHECK((*started)["flow"] == "token.issue");
  CHECK((*started)["id"] == 7);

  auto raw = ops->exchange(HttpMethod::get, "/healthz", nullptr);
  REQUIRE(raw.ok());
  CHECK(raw->status == 200);
  CHECK(raw->body["status"] == "ok");
}

TEST_CASE("api client: HTTP errors carry the server's code and message") {
  ApiFixture api({}, testProviders());
  api.server().addRoute(HttpMethod::post, "/api/v1/flows", ApiRole::operator_,
                        [](const ApiRequest&) {
                          return ApiResponse::fromError(
                              makeError(Errc::insufficient_balance, "need 500 EUR, have 20"));
                        });
  api.start();

  auto reader = ApiClient::create(urlOf(api.port()), api_reader_token);
  auto forbidden = reader->post("/api/v1/flows", json::object());
  REQUIRE_FALSE(forbidden.ok());
  CHECK(forbidden.error().code == Errc::forbidden);
  CHECK(forbidden.error().message ==
        "POST /api/v1/flows: 403 forbidden: user \"viewer\" has role read-only; POST /api/v1/flows "
        "needs operator");

  auto wrong = ApiClient::create(urlOf(api.port()), std::string(64, '0'));
  auto unauthorized = wrong->get("/api/v1/node");
  REQUIRE_FALSE(unauthorized.ok());
  CHECK(unauthorized.error().code == Errc::unauthorized);
  CHECK(unauthorized.error().message.find("matches no user") != std::string::npos);

  auto admin = ApiClient::create(urlOf(api.port()), api_admin_token);
  auto missing = admin->get("/api/v1/nope");
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().code == Errc::not_found);
  CHECK(missing.error().message.find("GET /api/v1/nope: 404 not_found: no route /api/v1/nope") == 0);

  auto refused = admin->post("/api/v1/flows", json::object());
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().code == Errc::insufficient_balance);
  CHECK(refused.error().message ==
        "POST /api/v1/flows: 422 insufficient_balance: need 500 EUR, have 20");
}

TEST_CASE("api client: a refused connection names the address; a silent server times out") {
  // A port that was free a moment ago: nothing listens there now.
  uint16_t free_port = 0;
  {
    boost::asio::io_context io;
    boost::asio::ip::tcp::acceptor probe(
        io, boost::asio::ip::tcp::endpoint(boost::asio::ip::make_address("127.0.0.1"), 0));
    free_port = probe.local_endpoint().port();
  }
  auto client = ApiClient::create(urlOf(free_port), api_admin_token);
  auto refused = client->get("/api/v1/node");
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().code == Errc::unavailable);
  CHECK_MESSAGE(refused.error().message.find("127.0.0.1:" + std::to_string(free_port)) !=
                    std::string::npos,
                refused.error().message);
  CHECK(refused.error().message.find("refused") != std::string::npos);

  // A listener that accepts but never answers.
  boost::asio::io_context io;
  boost::asio::ip::tcp::acceptor silent(
      io, boost::asio::ip::tcp::endpoint(boost::asio::ip::make_address("127.0.0.1"), 0));
  ApiClientOptions options;
  options.timeout_micros = 300'000;
  auto patient = ApiClient::create(urlOf(silent.local_endpoint().port()), api_admin_token, options);
  auto began = std::chrono::steady_clock::now();
  auto timed_out = patient->get("/api/v1/node");
  auto took = std::chrono::steady_clock::now() - began;
  REQUIRE_FALSE(timed_out.ok());
  CHECK(timed_out.error().code == Errc::timeout);
  CHECK_MESSAGE(timed_out.error().message.find("did not answer GET /api/v1/node within 300 ms") !=
                    std::string::npos,
                timed_out.error().message);
  CHECK(took < std::chrono::seconds(3));
}
