#include "node/notary_service.h"

#include <doctest/doctest.h>

#include "ledger/testing.h"

using namespace ccal;
using namespace ccal::node;

TEST_CASE("base64: RFC 4648 vectors, round trips, and strict refusals") {
  const std::pair<const char*, const char*> vectors[] = {
      {"", ""},         {"f", "Zg=="},         {"fo", "Zm8="},        {"foo", "Zm9v"},
      {"foob", "Zm9vYg=="}, {"fooba", "Zm9vYmE="}, {"foobar", "Zm9vYmFy"}};
  for (const auto& [plain, encoded] : vectors) {
    CHECK(base64Encode(asBytes(plain)) == encoded);
    auto back = base64Decode(encoded);
    REQUIRE(back);
    CHECK(std::string(back->begin(), back->end()) == plain);
  }
  Bytes all;
  for (int i = 0; i < 256; ++i) all.push_back(static_cast<uint8_t>(i));
  for (size_t n = 0; n <= all.size(); n += 37) {
    Bytes part(all.begin(), all.begin() + static_cast<long>(n));
    auto back = base64Decode(base64Encode(part));
    REQUIRE(back);
    CHECK(*back == part);
  }
  CHECK(base64Decode("Zg=").error().message.find("multiple of 4") != std::string::npos);
  CHECK(base64Decode("Zm9*").error().message.find("character 3") != std::string::npos);
  CHECK_FALSE(base64Decode("Zg==Zg==").ok());  // padding before the end
  CHECK_FALSE(base64Decode("Z===").ok());      // three padding characters
  CHECK_FALSE(base64Decode("=Zg=").ok());
  CHECK(base64Decode("Zh==").error().message.find("padding") != std::string::npos);  // not canonical
  CHECK(base64Decode("Zm9vYmFy").ok());
}

TEST_CASE("clusterInfoOf: the network map's notary as the notary client sees it") {
  NotaryInfo info;
  info.name = "O=CCAL Notary, L=Haikou, C=CN";
  info.f = 1;
  info.validating = true;
  std::vector<PublicKey> keys;
  for (uint8_t i = 0; i < 4; ++i) {
    NotaryReplicaInfo r;
    r.name = "O=Replica " + std::to_string(i) + ", L=Haikou, C=CN";
    r.key = ccal::testing::testKey(static_cast<uint8_t>(40 + i)).publicKey();
    keys.push_back(r.key);
    info.replicas.push_back(r);
  }
  info.service_key = Key::anyOf(3, keys).value();
  auto c = clusterInfoOf(info);
  CHECK(c.name == info.name);
  CHECK(c.service_key == info.service_key);
  CHECK(c.validating);
  CHECK(c.f == 1);
  CHECK(c.replica_keys == keys);
}
