#include "node/diagnostic_flows.h"

#include <doctest/doctest.h>

#include <string>

using namespace ccal;
using namespace ccal::node;

namespace {

Result<PingArgs> parse(const std::string& text) {
  return parsePingArgs(ByteView(reinterpret_cast<const uint8_t*>(text.data()), text.size()));
}

std::string failure(const std::string& text) {
  auto r = parse(text);
  REQUIRE_FALSE(r);
  return r.error().message;
}

}  // namespace

TEST_CASE("ping arguments: defaults, every field, and errors naming the field") {
  auto minimal = parse(R"({"peer":"O=B, L=H, C=CN"})");
  REQUIRE(minimal);
  CHECK(minimal->peer == "O=B, L=H, C=CN");
  CHECK(minimal->count == 1);
  CHECK(minimal->sleep_micros == 0);
  CHECK(minimal->responder_sleep_micros == 0);
  CHECK(minimal->text.empty());

  auto full = parse(
      R"({"peer":"O=B, L=H, C=CN","count":7,"sleep_micros":5,"responder_sleep_micros":6,"text":"hi"})");
  REQUIRE(full);
  CHECK(full->count == 7);
  CHECK(full->sleep_micros == 5);
  CHECK(full->responder_sleep_micros == 6);
  CHECK(full->text == "hi");

  CHECK(failure("") .find("must be a JSON object") != std::string::npos);
  CHECK(failure("[1]").find("must be a JSON object") != std::string::npos);
  CHECK(failure(R"({"count":2})").find("'peer'") != std::string::npos);
  CHECK(failure(R"({"peer":""})").find("'peer'") != std::string::npos);
  CHECK(failure(R"({"peer":"p","count":0})").find("'count' must be an integer from 1 to 1000") !=
        std::string::npos);
  CHECK(failure(R"({"peer":"p","count":1001})").find("'count'") != std::string::npos);
  CHECK(failure(R"({"peer":"p","count":"3"})").find("'count'") != std::string::npos);
  CHECK(failure(R"({"peer":"p","sleep_micros":-1})").find("'sleep_micros'") != std::string::npos);
  CHECK(failure(R"({"peer":"p","responder_sleep_micros":1e3})").find("'responder_sleep_micros'") !=
        std::string::npos);
  CHECK(failure(R"({"peer":"p","text":5})").find("'text'") != std::string::npos);
  CHECK(failure(R"({"peer":"p","txet":"x"})").find("unknown argument 'txet'") != std::string::npos);
  CHECK(failure(R"({"peer":"p","text":")" + std::string(ping_text_bytes_max + 1, 'x') + "\"}")
            .find("'text'") != std::string::npos);
  CHECK(parse(R"({"peer":"p","text":")" + std::string(5000, 'x') + "\"}").error().code ==
        Errc::too_large);
}
