#include "flows/services.h"

#include <doctest/doctest.h>

#include <climits>
#include <memory>

#include "ledger/testing.h"

using namespace ccal;
using namespace ccal::flows;

namespace {

using ccal::testing::TestToken;

const std::string reg_name = "O=Regulator, L=Haikou, C=CN";
const std::string auditor_name = "O=Auditor, L=Haikou, C=CN";

TestToken token(const Key& owner, int64_t amount) {
  TestToken t;
  t.owner = owner;
  t.issuer = owner;
  t.amountMinor = amount;
  t.currency = "CNY";
  t.linearId = SecureHash::of(Bytes{static_cast<uint8_t>(amount & 0xff)});
  return t;
}

// A resolved ccal.test.Token transaction: `inputs` (spent from a made-up
// transaction) to `outputs`, under `command` ("Issue" or "Move").
LedgerTransaction tokenTx(const std::vector<int64_t>& inputs, const std::vector<int64_t>& outputs,
                          const std::string& command) {
  const KeyPair k = ccal::testing::testKey(1);
  const Party notary = ccal::testing::testParty("O=Notary, L=Haikou, C=CN", ccal::testing::testKey(9));
  TransactionBuilder b(notary);
  std::vector<TransactionState> in_states;
  for (size_t i = 0; i < inputs.size(); ++i) {
    b.addInput(StateRef{SecureHash::of(Bytes{42}), static_cast<uint32_t>(i)});
    in_states.push_back(ccal::testing::tokenState(notary, token(Key(k.publicKey()), inputs[i])));
  }
  for (int64_t v : outputs) b.addOutput(ccal::testing::tokenState(notary, token(Key(k.publicKey()), v)));
  b.addCommand(Command{"ccal.test.Token." + command, {}, {Key(k.publicKey())}});
  b.setPrivacySalt(Bytes(32, 7));
  auto wtx = b.build();
  REQUIRE(wtx);
  auto ltx = LedgerTransaction::resolve(*wtx, in_states, {});
  REQUIRE(ltx);
  return std::move(ltx).value();
}

}  // namespace

TEST_CASE("services: the observers the rules name, sorted, each once") {
  ContractRegistry registry;
  registry.add(std::make_unique<ccal::testing::TestTokenContract>());
  const std::string token_name(ccal::testing::token_contract);
  const std::string archive_name = "O=Archive, L=Haikou, C=CN", bank_name = "O=Bank, L=Haikou, C=CN";
  const std::vector<ObserverRule> rules{
      {reg_name, {"ccal.LetterOfCredit", token_name}, {}, false},
      {auditor_name, {}, {bank_name}, false},
      {archive_name, {}, {}, true},
      {reg_name, {token_name}, {}, false},  // the same observer again: named once
  };
  auto nobody = [](const Key&) -> std::optional<std::string> { return std::nullopt; };
  auto bank = [&](const Key&) -> std::optional<std::string> { return bank_name; };
  using V = std::vector<std::string>;
  const LedgerTransaction move = tokenTx({5}, {5}, "Move");
  CHECK(observersFor(rules, move, registry, nobody) == V{archive_name, reg_name});
  CHECK(observersFor(rules, move, registry, bank) == V{archive_name, auditor_name, reg_name});
  const std::vector<ObserverRule> other_contract{{reg_name, {"ccal.Loan"}, {}, false}};
  CHECK(observersFor(other_contract, move, registry, bank).empty());
  CHECK(observersFor({}, move, registry, bank).empty());
}

TEST_CASE("services: observer rules with a command filter and an amount threshold") {
  ContractRegistry registry;
  registry.add(std::make_unique<ccal::testing::TestTokenContract>());
  ObserverRule threshold;
  threshold.observer = reg_name;
  threshold.contracts = {std::string(ccal::testing::token_contract)};
  threshold.commands = {"ccal.test.Token.Move"};
  threshold.amount_at_least = 100'000;
  ObserverRule any_issue{auditor_name, {std::string(ccal::testing::token_contract)}, {}, false};
  any_issue.commands = {"ccal.test.Token.Issue"};
  const std::vector<ObserverRule> rules{threshold, any_issue};
  auto names = [](const Key&) -> std::optional<std::string> { return std::nullopt; };
  using V = std::vector<std::string>;
  // Below, equal, above the threshold (the larger of the input and output totals).
  CHECK(observersFor(rules, tokenTx({99'999}, {60'000, 39'999}, "Move"), registry, names).empty());
  CHECK(observersFor(rules, tokenTx({100'000}, {60'000, 40'000}, "Move"), registry, names) == V{reg_name});
  CHECK(observersFor(rules, tokenTx({70'000, 80'000}, {150'000}, "Move"), registry, names) == V{reg_name});
  // Another command: not the threshold rule's, whatever the amount; the issue rule's.
  CHECK(observersFor(rules, tokenTx({}, {5'000'000}, "Issue"), registry, names) == V{auditor_name});
  CHECK(observersFor(rules, tokenTx({}, {1}, "Issue"), registry, names) == V{auditor_name});
  // The amount of a field the state type does not declare as int64: nothing moves.
  CHECK(observedAmount(tokenTx({7}, {7}, "Move"), registry, {std::string(ccal::testing::token_contract)},
                       "currency") == 0);
  CHECK(observedAmount(tokenTx({7}, {3, 4}, "Move"), registry, {std::string(ccal::testing::token_contract)},
                       "amount") == 7);
  CHECK(observedAmount(tokenTx({INT64_MAX, 5}, {1}, "Move"), registry,
                       {std::string(ccal::testing::token_contract)}, "amount") == INT64_MAX);
  CHECK(observedAmount(tokenTx({7}, {7}, "Move"), registry, {"ccal.other"}, "amount") == 0);
  // A party rule matches through a participant whatever the filters say.
  ObserverRule by_party{auditor_name, {}, {"O=Farm, L=Haikou, C=CN"}, false};
  auto farm = [](const Key&) -> std::optional<std::string> { return "O=Farm, L=Haikou, C=CN"; };
  CHECK(observersFor({by_party, threshold}, tokenTx({1}, {1}, "Move"), registry, farm) == V{auditor_name});
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

TEST_CASE("services: required observers name the rule that requires them") {
  ContractRegistry registry;
  registry.add(std::make_unique<ccal::testing::TestTokenContract>());
  ObserverRule threshold{reg_name, {std::string(ccal::testing::token_contract)}, {}, false};
  threshold.commands = {"ccal.test.Token.Move"};
  threshold.amount_at_least = 10;
  auto names = [](const Key&) -> std::optional<std::string> { return std::nullopt; };
  auto req = requiredObservers({threshold, threshold}, tokenTx({12}, {12}, "Move"), registry, names);
  REQUIRE(req.size() == 1);
  CHECK(req[0].observer == reg_name);
  CHECK(req[0].rule ==
        "the observer rule for contract 'ccal.test.Token', command 'ccal.test.Token.Move', amount 12 at least 10");
  ObserverRule all{auditor_name, {}, {}, true};
  req = requiredObservers({all}, tokenTx({}, {1}, "Issue"), registry, names);
  REQUIRE(req.size() == 1);
  CHECK(req[0].rule == "the observer rule for all transactions");
}
