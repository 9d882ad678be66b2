#include "flows/services.h"

#include <doctest/doctest.h>

#include "ledger/testing.h"

using namespace ccal;
using namespace ccal::flows;

TEST_CASE("services: the observers the rules name") {
  const std::vector<ObserverRule> rules{
      {"O=Regulator, L=Haikou, C=CN", {"ccal.LetterOfCredit", "ccal.Loan"}, {}, false},
      {"O=Auditor, L=Haikou, C=CN", {}, {"O=Bank, L=Haikou, C=CN"}, false},
      {"O=Archive, L=Haikou, C=CN", {}, {}, true},
      {"O=Regulator, L=Haikou, C=CN", {"ccal.Cash"}, {}, false},
  };
  CHECK(observersFor(rules, {"ccal.Loan"}, {}) ==
        std::vector<std::string>{"O=Archive, L=Haikou, C=CN", "O=Regulator, L=Haikou, C=CN"});
  CHECK(observersFor(rules, {"ccal.Cash"}, {"O=Bank, L=Haikou, C=CN"}) ==
        std::vector<std::string>{"O=Archive, L=Haikou, C=CN", "O=Auditor, L=Haikou, C=CN",
                                 "O=Regulator, L=Haikou, C=CN"});
  CHECK(observersFor(rules, {"ccal.Token"}, {"O=Farm, L=Haikou, C=CN"}) ==
        std::vector<std::string>{"O=Archive, L=Haikou, C=CN"});
  CHECK(observersFor({}, {"ccal.Loan"}, {}).empty());
}

TEST_CASE("services: our keys among the required ones") {
  FlowServices svc;
  svc.keys = {ccal::testing::testKey(1), ccal::testing::testKey(2)};
  const PublicKey k1 = ccal::testing::testKey(1).publicKey();
  const PublicKey k3 = ccal::testing::testKey(3).publicKey();
  auto mine = svc.keysFor({Key(k3), Key(k1)});
  REQUIRE(mine.size() == 1);
  CHECK(mine[0]->publicKey() == k1);
  auto composite = Key::anyOf(1, {ccal::testing::testKey(2).publicKey(), k3});
  REQUIRE(composite);
  auto in_composite = svc.keysFor({*composite});
  REQUIRE(in_composite.size() == 1);
  CHECK(in_composite[0]->publicKey() == ccal::testing::testKey(2).publicKey());
  CHECK(svc.keysFor({Key(k3)}).empty());
  CHECK(svc.publicKeys().size() == 2);
}
