#pragma once
// A compact language for contract tests (tests only): a test reads like the
// deal it checks.
//
//   Ledger l;                                  // a notary, deterministic keys
//   l.deal().issues(bank, 100_EUR, to(coopA)).signedBy(bank).verifies();
//   l.deal().moves(100_EUR, from(coopA), to(coopB)).signedBy(coopB).fails("missing_signature");
//
// Each verb adds states and, where it names one, a command; signedBy()
// sets the signers of the last command added. Inputs are resolved from the
// states the deal names (their refs are made up, except the registration
// the contract recomputes). verifies() / fails(code) run the contracts
// through ContractRegistry::verify and check the verdict (the rejection
// code appears as "[code]" in the error).

#include <doctest/doctest.h>

#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "contracts/contracts.h"
#include "ledger/testing.h"

namespace ccal::contracts::testing {

struct Amount {
  int64_t minor = 0;
  std::string currency;
};
// 100_EUR is 100.00 EUR: 10000 minor units.
inline Amount operator""_EUR(unsigned long long major) { return {static_cast<int64_t>(major) * 100, "EUR"}; }
inline Amount operator""_CNY(unsigned long long major) { return {static_cast<int64_t>(major) * 100, "CNY"}; }
inline Amount minor(int64_t units, std::string currency) { return {units, std::move(currency)}; }

struct Actor {
  std::string name;
  KeyPair keyPair;
  Key key() const { return Key(keyPair.publicKey()); }
  Party party() const { return Party{name, key()}; }
};
inline Actor actor(const std::string& org, uint8_t seed) {
  auto k = ccal::testing::testKey(seed);
  return Actor{ccal::testing::testParty(org, k).name, k};
}

struct To { const Actor* who; };
struct From { const Actor* who; };
inline To to(const Actor& a) { return {&a}; }
inline From from(const Actor& a) { return {&a}; }

inline constexpr int64_t day_micros = 86'400'000'000;
inline constexpr int64_t t0_micros = 1'750'000'000'000'000;  // "now" in these tests

class Ledger;

class Deal {
 public:
  explicit Deal(Ledger& l);

  // --- tokens ---
  Deal& tokenIn(const Actor& owner, const Amount& a, const Actor& issuer) {
    return input(tokenState(notary(), Token{owner.key(), issuer.key(), a.currency, a.minor}));
  }
  Deal& tokenOut(const Actor& owner, const Amount& a, const Actor& issuer) {
    return output(tokenState(notary(), Token{owner.key(), issuer.key(), a.currency, a.minor}));
  }
  Deal& tokenIn(const Actor& owner, const Amount& a) { return tokenIn(owner, a, bank()); }
  Deal& tokenOut(const Actor& owner, const Amount& a) { return tokenOut(owner, a, bank()); }
  Deal& issues(const Actor& issuer, const Amount& a, To t) {
    tokenOut(*t.who, a, issuer);
    return command(token_issue_command);
  }
  // Tokens of the default issuer (the bank) from one owner to another.
  Deal& moves(const Amount& a, From f, To t) {
    tokenIn(*f.who, a).tokenOut(*t.who, a);
    return tokenCommand(token_move_command);
  }
  Deal& redeems(const Actor& owner, const Amount& spent, const Amount& change) {
    tokenIn(owner, spent);
    if (change.minor != 0) tokenOut(owner, change);
    return command(token_redeem_command);
  }

  // --- credentials ---
  Deal& issuesCredential(const Member& m) {
    output(memberState(notary(), m));
    return command(member_issue_command);
  }
  Deal& revokes(const Member& m) {
    input(memberState(notary(), m));
    return command(member_revoke_command);
  }
  Deal& references(const Member& m) {
    refs_.push_back(memberState(notary(), m));
    return *this;
  }

  // --- receivables ---
  Deal& registers(const Actor& seller, const std::string& number) {
    output(registrationState(notary(), InvoiceRegistration{seller.key(), number}));
    return command(receivable_register_command);
  }
  // Consumes the canonical registration (or, with `canonical` false, one at
  // another ref), creates the receivable; a time window [t0, t0 + 1 day).
  Deal& invoices(const Receivable& r, bool canonical = true);
  Deal& finances(const Receivable& r, const Actor& financier) {
    input(receivableState(notary(), r));
    Receivable after = r;
    after.holder = financier.key();
    output(receivableState(notary(), after));
    return command(receivable_finance_command);
  }
  Deal& settles(const Receivable& r) {
    input(receivableState(notary(), r));
    return command(receivable_settle_command);
  }

  // --- parts ---
  Deal& input(TransactionState s, std::optional<StateRef> ref = std::nullopt);
  Deal& output(TransactionState s) {
    builder_.addOutput(std::move(s));
    return *this;
  }
  Deal& command(std::string_view type) {
    commands_.push_back(Command{std::string(type), {}, {}});
    return *this;
  }
  // A Move command once, however many moves the deal has.
  Deal& tokenCommand(std::string_view type) {
    for (const auto& c : commands_) {
      if (c.type == type) return *this;
    }
    return command(type);
  }
  Deal& timeWindow(std::optional<int64_t> from_micros, std::optional<int64_t> until_micros) {
    builder_.setTimeWindow(TimeWindow{from_micros, until_micros});
    return *this;
  }
  // Sets the signers of the last command added.
  template <class... A>
  Deal& signedBy(const A&... actors) {
    REQUIRE_MESSAGE(!commands_.empty(), "signedBy() needs a command first");
    commands_.back().signers = {actors.key()...};
    return *this;
  }

  Status verify();
  void verifies() {
    auto s = verify();
    CHECK_MESSAGE(s.ok(), (s ? std::string() : s.error().message));
  }
  void fails(const std::string& code) {
    auto s = verify();
    REQUIRE_MESSAGE(!s.ok(), "expected rejection [" << code << "], but the deal verifies");
    CHECK_MESSAGE(s.error().message.find("[" + code + "]") != std::string::npos,
                  "expected [" << code << "], got: " << s.error().message);
  }

 private:
  const Party& notary() const;
  const Actor& bank() const;
  Ledger& l_;
  Party notary_;
  TransactionBuilder builder_;
  std::vector<TransactionState> inputs_, refs_;
  std::vector<Command> commands_;
};

class Ledger {
 public:
  Ledger() { registerDealContracts(registry); }
  Deal deal() { return Deal(*this); }

  Actor notary = actor("Hainan Notary", 99);
  Actor bank = actor("Bank of Hainan", 1);
  Actor coopA = actor("Haikou Fishing Cooperative", 2);
  Actor coopB = actor("Sanya Tea Cooperative", 3);
  Actor coopC = actor("Wenchang Coconut Cooperative", 4);
  ContractRegistry registry;
  uint64_t nextRef = 1;

  Member credential(const Actor& coop, const Actor& member, int64_t from = t0_micros - day_micros,
                    int64_t until = t0_micros + 365 * day_micros) const {
    return Member{coop.key(), coop.name, member.key(), member.name, "member", from, until,
                  SecureHash::of(member.key().hash().view())};
  }
  Receivable invoice(const Actor& seller, const Actor& buyer, const Amount& a, const std::string& number,
                     int64_t due = t0_micros + 30 * day_micros) const {
    return Receivable{seller.key(), buyer.key(), seller.key(), a.currency, a.minor, due, number,
                      receivableLinearId(seller.key(), number)};
  }
};

inline Deal::Deal(Ledger& l) : l_(l), notary_(l.notary.party()), builder_(l.notary.party()) {}
inline const Party& Deal::notary() const { return notary_; }
inline const Actor& Deal::bank() const { return l_.bank; }

inline Deal& Deal::input(TransactionState s, std::optional<StateRef> ref) {
  if (!ref) {
    const uint64_t n = l_.nextRef++;
    ref = StateRef{SecureHash::of(ByteView(reinterpret_cast<const uint8_t*>(&n), sizeof n)), 0};
  }
  builder_.addInput(*ref);
  inputs_.push_back(std::move(s));
  return *this;
}

inline Deal& Deal::invoices(const Receivable& r, bool canonical) {
  auto reg = registrationTransaction(r.seller, r.invoiceNumber, notary()).value();
  std::optional<StateRef> ref;
  if (canonical) ref = StateRef{reg.id(), 0};
  input(registrationState(notary(), InvoiceRegistration{r.seller, r.invoiceNumber}), ref);
  output(receivableState(notary(), r));
  timeWindow(t0_micros, t0_micros + day_micros);
  return command(receivable_issue_command);
}

inline Status Deal::verify() {
  TransactionBuilder b = builder_;
  for (size_t i = 0; i < refs_.size(); ++i) {
    const uint64_t n = 1'000'000 + i;
    b.addReference(StateRef{SecureHash::of(ByteView(reinterpret_cast<const uint8_t*>(&n), sizeof n)), 0});
  }
  for (const auto& c : commands_) b.addCommand(c);
  auto wtx = b.build();
  if (!wtx) return wtx.error();
  auto ltx = LedgerTransaction::resolve(*wtx, inputs_, refs_);
  if (!ltx) return ltx.error();
  return l_.registry.verify(*ltx);
}

}  // namespace ccal::contracts::testing
