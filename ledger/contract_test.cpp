#include "ledger/contract.h"

#include <doctest/doctest.h>

#include "ledger/testing.h"

using namespace ccal;
using namespace ccal::testing;

namespace {

struct Fixture {
  KeyPair alice = testKey(1);
  KeyPair notary_key = testKey(9);
  Party alice_party = testParty("Haikou Fishing Cooperative", alice);
  Party notary = testParty("CCAL Notary", notary_key);
  ContractRegistry registry;

  Fixture() { registry.add(std::make_unique<DummyContract>()); }

  WireTransaction issue(const std::string& value) const {
    return TransactionBuilder(notary)
        .addOutput(dummyState(notary, {alice_party.owningKey}, value))
        .addCommand(dummyCommand("Issue", {alice_party.owningKey}))
        .build()
        .value();
  }

  Status verify(const WireTransaction& tx, std::vector<TransactionState> inputs = {}) const {
    auto ltx = LedgerTransaction::resolve(tx, std::move(inputs), {});
    if (!ltx) return ltx.error();
    return registry.verify(*ltx);
  }
};

}  // namespace

TEST_CASE_FIXTURE(Fixture, "a contract accepts a valid issue and move") {
  auto issued = issue("hello");
  CHECK(verify(issued).ok());
  auto move = TransactionBuilder(notary)
                  .addInput({issued.id(), 0})
                  .addOutput(dummyState(notary, {alice_party.owningKey}, "moved"))
                  .addCommand(dummyCommand("Move", {alice_party.owningKey}))
                  .build()
                  .value();
  CHECK(verify(move, {issued.outputs()[0]}).ok());
}

TEST_CASE_FIXTURE(Fixture, "a rejection carries the contract, its code and its message") {
  auto r = verify(issue("forbidden"));
  CHECK(r.error().code == Errc::contract_rejected);
  CHECK(r.error().message.find("ccal.test.Dummy") != std::string::npos);
  CHECK(r.error().message.find("[forbidden_value]") != std::string::npos);
}

TEST_CASE_FIXTURE(Fixture, "verification is deterministic: same transaction, same verdict") {
  auto tx = issue("forbidden");
  auto first = verify(tx);
  for (int i = 0; i < 5; ++i) CHECK(verify(tx).error().message == first.error().message);
}

TEST_CASE_FIXTURE(Fixture, "unknown contracts and unaccepted constraints are refused") {
  auto s = dummyState(notary, {alice_party.owningKey}, "x");
  s.contract = "ccal.NotInstalled";
  auto unknown = TransactionBuilder(notary)
                     .addOutput(s)
                     .addCommand(dummyCommand("Issue", {alice_party.owningKey}))
                     .build()
                     .value();
  CHECK(verify(unknown).error().code == Errc::unknown_contract);

  auto old = dummyState(notary, {alice_party.owningKey}, "x");
  old.constraint.codeHash = Contract::codeIdentity(DummyContract::contract_name, 0);
  auto stale = TransactionBuilder(notary)
                   .addOutput(old)
                   .addCommand(dummyCommand("Issue", {alice_party.owningKey}))
                   .build()
                   .value();
  auto r = verify(stale);
  CHECK(r.error().code == Errc::constraint_rejected);

  auto anything = dummyState(notary, {alice_party.owningKey}, "x");
  anything.constraint.alwaysAccept = true;
  auto lax = TransactionBuilder(notary)
                 .addOutput(anything)
                 .addCommand(dummyCommand("Issue", {alice_party.owningKey}))
                 .build()
                 .value();
  CHECK(verify(lax).error().code == Errc::constraint_rejected);
  auto ltx = LedgerTransaction::resolve(lax, {}, {}).value();
  CHECK(registry.verify(ltx, VerificationPolicy{.allow_always_accept = true}).ok());
}

TEST_CASE_FIXTURE(Fixture, "inputs under another notary are refused at resolution") {
  auto issued = issue("hello");
  auto elsewhere = issued.outputs()[0];
  elsewhere.notary = alice_party;
  auto move = TransactionBuilder(notary)
                  .addInput({issued.id(), 0})
                  .addOutput(dummyState(notary, {alice_party.owningKey}, "moved"))
                  .addCommand(dummyCommand("Move", {alice_party.owningKey}))
                  .build()
                  .value();
  auto r = LedgerTransaction::resolve(move, {elsewhere}, {});
  CHECK(r.error().code == Errc::invalid_transaction);
  CHECK(r.error().message.find("not the transaction's notary") != std::string::npos);
  CHECK(LedgerTransaction::resolve(move, {}, {}).error().code == Errc::invalid_transaction);
  auto lookup_fails = LedgerTransaction::resolve(move, [](const StateRef&) -> Result<TransactionState> {
    return makeError(Errc::not_found, "no such state");
  });
  CHECK(lookup_fails.error().code == Errc::not_found);
}
