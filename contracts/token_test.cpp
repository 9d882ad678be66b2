#include "contracts/token.h"

#include <doctest/doctest.h>

#include "contracts/contract_testing.h"

using namespace ccal;
using namespace ccal::contracts;
using namespace ccal::contracts::testing;

TEST_CASE("token state round-trips and declares its fields and fungible amount") {
  Ledger l;
  Token t{l.coopA.key(), l.bank.key(), "EUR", 12345};
  CHECK(decodeToken(encodeToken(t)).value() == t);
  CHECK_FALSE(decodeToken(Bytes{1, 2, 3}));
  auto v = TokenSchema().view(tokenState(l.notary.party(), t)).value();
  REQUIRE(v.fungible);
  CHECK(v.fungible->token == "EUR");
  CHECK(v.fungible->issuer == l.bank.key().hash());
  CHECK(v.fungible->amount == 12345);
  CHECK(v.fields.size() == TokenSchema().fields().size());
}

TEST_CASE("token issue: the issuer issues positive amounts of one currency") {
  Ledger l;
  const Actor &bank = l.bank, &coopA = l.coopA, &coopB = l.coopB;
  l.deal().issues(bank, 100_EUR, to(coopA)).signedBy(bank).verifies();
  l.deal().issues(bank, 100_EUR, to(coopA)).tokenOut(coopB, 5_EUR).signedBy(bank).verifies();
  l.deal().issues(bank, 100_EUR, to(coopA)).signedBy(coopA).fails("missing_signature");
  l.deal().issues(bank, 100_EUR, to(coopA)).signedBy(coopA, coopB).fails("missing_signature");
  l.deal().issues(bank, minor(0, "EUR"), to(coopA)).signedBy(bank).fails("non_positive");
  l.deal().issues(bank, minor(-5, "EUR"), to(coopA)).signedBy(bank).fails("non_positive");
  l.deal().issues(bank, minor(5, "eur"), to(coopA)).signedBy(bank).fails("bad_currency");
  l.deal().issues(bank, 100_EUR, to(coopA)).tokenOut(coopA, 1_CNY).signedBy(bank).fails("mixed_tokens");
  l.deal().issues(bank, 100_EUR, to(coopA)).tokenOut(coopA, 1_EUR, coopB).signedBy(bank, coopB)
      .fails("mixed_tokens");
  l.deal().issues(bank, 100_EUR, to(coopA)).tokenIn(coopA, 1_EUR).signedBy(bank, coopA)
      .fails("issue_has_inputs");
  l.deal().issues(bank, minor(INT64_MAX, "EUR"), to(coopA)).tokenOut(coopB, minor(1, "EUR"))
      .signedBy(bank).fails("overflow");
}

TEST_CASE("token move: owners sign, amounts conserved per currency and issuer") {
  Ledger l;
  const Actor &bank = l.bank, &coopA = l.coopA, &coopB = l.coopB, &coopC = l.coopC;
  l.deal().moves(100_EUR, from(coopA), to(coopB)).signedBy(coopA).verifies();
  // With change: 100 in, 60 + 40 out.
  l.deal().tokenIn(coopA, 100_EUR).tokenOut(coopB, 60_EUR).tokenOut(coopA, 40_EUR)
      .command(token_move_command).signedBy(coopA).verifies();
  // Two owners, two currencies.
  l.deal().moves(100_EUR, from(coopA), to(coopB)).moves(7_CNY, from(coopC), to(coopA))
      .signedBy(coopA, coopC).verifies();
  l.deal().moves(100_EUR, from(coopA), to(coopB)).signedBy(coopB).fails("missing_signature");
  l.deal().moves(100_EUR, from(coopA), to(coopB)).moves(7_CNY, from(coopC), to(coopA))
      .signedBy(coopA).fails("missing_signature");
  l.deal().tokenIn(coopA, 100_EUR).tokenOut(coopB, 101_EUR).command(token_move_command)
      .signedBy(coopA).fails("not_conserved");
  l.deal().tokenIn(coopA, 100_EUR).tokenOut(coopB, 99_EUR).command(token_move_command)
      .signedBy(coopA).fails("not_conserved");
  // Same currency, another issuer: not the same token.
  l.deal().tokenIn(coopA, 100_EUR).tokenOut(coopB, 100_EUR, coopC).command(token_move_command)
      .signedBy(coopA).fails("not_conserved");
  // Mixed currencies: EUR in, CNY out.
  l.deal().tokenIn(coopA, 100_EUR).tokenOut(coopB, 100_CNY).command(token_move_command)
      .signedBy(coopA).fails("not_conserved");
  l.deal().tokenIn(coopA, 100_EUR).tokenOut(coopB, minor(0, "EUR")).command(token_move_command)
      .signedBy(coopA).fails("non_positive");
  l.deal().tokenOut(coopB, 100_EUR).command(token_move_command).signedBy(coopA).fails("no_inputs");
  l.deal().tokenIn(coopA, minor(INT64_MAX, "EUR")).tokenIn(coopA, minor(1, "EUR"))
      .tokenOut(coopB, 1_EUR).command(token_move_command).signedBy(coopA).fails("overflow");
  // Exactly one token command.
  l.deal().moves(100_EUR, from(coopA), to(coopB)).signedBy(coopA).command(token_issue_command).signedBy(bank)
      .fails("one_command");
  l.deal().tokenIn(coopA, 100_EUR).tokenOut(coopB, 100_EUR).command("ccal.other.Note").signedBy(coopA)
      .fails("one_command");
  l.deal().tokenIn(coopA, 100_EUR).tokenOut(coopB, 100_EUR).command("ccal.token.Split")
      .signedBy(coopA).fails("unknown_command");
  // A token shared with its owner alone: not hidden from it, not shown to another.
  for (const std::vector<Key>& participants :
       {std::vector<Key>{coopA.key()}, std::vector<Key>{coopB.key(), coopA.key()}, std::vector<Key>{}}) {
    TransactionState out = tokenState(l.notary.party(), Token{coopB.key(), bank.key(), "EUR", 100});
    out.participants = participants;
    l.deal().tokenIn(coopA, 100_EUR).output(out).command(token_move_command).signedBy(coopA)
        .fails("wrong_participants");
  }
}

TEST_CASE("token redeem: owner and issuer sign, less change than spent, one token") {
  Ledger l;
  const Actor &bank = l.bank, &coopA = l.coopA, &coopB = l.coopB;
  l.deal().redeems(coopA, 100_EUR, 30_EUR).signedBy(coopA, bank).verifies();
  l.deal().redeems(coopA, 100_EUR, minor(0, "EUR")).signedBy(coopA, bank).verifies();
  l.deal().redeems(coopA, 100_EUR, 30_EUR).signedBy(coopA).fails("missing_signature");
  l.deal().redeems(coopA, 100_EUR, 30_EUR).signedBy(bank).fails("missing_signature");
  l.deal().redeems(coopA, 100_EUR, 100_EUR).signedBy(coopA, bank).fails("nothing_redeemed");
  l.deal().redeems(coopA, 100_EUR, 30_EUR).tokenIn(coopB, 1_CNY).signedBy(coopA, coopB, bank)
      .fails("mixed_tokens");
  l.deal().tokenIn(coopA, 100_EUR).tokenOut(coopA, 1_CNY).command(token_redeem_command)
      .signedBy(coopA, bank).fails("mixed_tokens");
  l.deal().tokenOut(coopA, 1_EUR).command(token_redeem_command).signedBy(coopA, bank).fails("no_inputs");
}

TEST_CASE("netTokensTo counts what an owner receives minus what it spends") {
  Ledger l;
  auto wtx = TransactionBuilder(l.notary.party())
                 .addInput(StateRef{SecureHash::of(Bytes{1}), 0})
                 .addOutput(tokenState(l.notary.party(), Token{l.coopB.key(), l.bank.key(), "EUR", 60}))
                 .addOutput(tokenState(l.notary.party(), Token{l.coopA.key(), l.bank.key(), "EUR", 40}))
                 .addCommand(Command{std::string(token_move_command), {}, {l.coopA.key()}})
                 .build()
                 .value();
  auto ltx = LedgerTransaction::resolve(
                 wtx, {tokenState(l.notary.party(), Token{l.coopA.key(), l.bank.key(), "EUR", 100})}, {})
                 .value();
  CHECK(netTokensTo(ltx, l.coopB.key(), "EUR") == 60);
  CHECK(netTokensTo(ltx, l.coopA.key(), "EUR") == -60);
  CHECK(netTokensTo(ltx, l.coopA.key(), "CNY") == 0);
}
