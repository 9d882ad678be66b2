// The vault query API over a real LMDB vault and a real control API socket:
// token and credential states recorded as signed transactions, queried by
// type (full name and alias), declared fields with every op, status,
// participant, paging by cursor and sorting; bad queries refused with 400
// naming what is wrong; a transaction read back by id.

#include "node/vault_api.h"

#include <utility>

#include <doctest/doctest.h>

#include <set>

#include "contracts/contracts.h"
#include "ledger/testing.h"
#include "node/api_client.h"
#include "node/api_server.h"
#include "test/support/api_fixture.h"
#include "test/support/temp_dir.h"
#include "vault/vault.h"

using namespace ccal;
using namespace ccal::node;
using nlohmann::json;

namespace {

struct World {
  KeyPair bank_key = testing::testKey(1), coop_key = testing::testKey(2), other_key = testing::testKey(3),
          notary_key = testing::testKey(9);
  Party bank = testing::testParty("Harbour Bank", bank_key);
  Party coop = testing::testParty("Haikou Fishing Cooperative", coop_key);
  Party other = testing::testParty("Sanya Farmers Cooperative", other_key);
  Party notary = testing::testParty("Notary", notary_key);
  ContractRegistry registry;
  testing::TempDir dir{"ccal-vault-api"};
  std::unique_ptr<vault::Vault> vault;
  VaultPartyDirectory parties;

  World() {
    contracts::registerDealContracts(registry);
    vault::VaultConfig config;
    config.store.path = dir.path;
    vault = vault::Vault::open(config, registry, {bank_key.publicKey(), coop_key.publicKey()}).value();
    parties.byName = [this](std::string_view name) -> std::optional<Party> {
      for (const Party* p : {&bank, &coop, &other, &notary}) {
        if (p->name == name) return *p;
      }
      return std::nullopt;
    };
    parties.nameOfKeyHash = [this](const SecureHash& hash) -> std::optional<std::string> {
      for (const Party* p : {&bank, &coop, &other, &notary}) {
        if (p->owningKey.hash() == hash) return p->name;
      }
      return std::nullopt;
    };
  }

  // The bank issues `amount` CNY to `owner`; the transaction's id.
  SecureHash issue(const Party& owner, int64_t amount) {
    contracts::Token t{owner.owningKey, bank.owningKey, "CNY", amount};
    auto tx = TransactionBuilder(notary)
                  .addOutput(contracts::tokenState(notary, t))
                  .addCommand(Command{std::string(contracts::token_issue_command), {}, {bank.owningKey}})
                  .build();
    REQUIRE(tx);
    SignedTransaction stx(*tx);
    stx.signWith(bank_key);
    REQUIRE(vault->record(stx, vault::RecordMode::only_relevant));
    return stx.id();
  }

  // `from` (the coop) moves its state `ref` of `amount` to `to`.
  SecureHash move(const StateRef& ref, int64_t amount, const Party& to) {
    contracts::Token t{to.owningKey, bank.owningKey, "CNY", amount};
    auto tx = TransactionBuilder(notary)
                  .addInput(ref)
                  .addOutput(contracts::tokenState(notary, t))
                  .addCommand(Command{std::string(contracts::token_move_command), {}, {coop.owningKey}})
                  .build();
    REQUIRE(tx);
    SignedTransaction stx(*tx);
    stx.signWith(coop_key).signWith(notary_key);
    REQUIRE(vault->record(stx, vault::RecordMode::all_visible));
    return stx.id();
  }
};

struct Served {
  testing::ApiFixture api;
  VaultApi vault_api;
  explicit Served(World& w) : vault_api(*w.vault, w.registry, w.parties) {
    vault_api.addRoutes(api.server());
    api.start();
  }
  ApiClient client(const std::string& token = testing::api_reader_token) const {
    return ApiClient::create("http://127.0.0.1:" + std::to_string(api.port()), token).value();
  }
};

json must(const Result<json>& r) {
  REQUIRE_MESSAGE(r, r.error().toString());
  return *r;
}

// The 400 answer's code and message for a query body.
std::pair<unsigned, json> refused(const ApiClient& client, const json& body) {
  auto r = client.exchange(HttpMethod::post, "/api/v1/vault/query", &body);
  REQUIRE_MESSAGE(r, r.error().toString());
  return {r->status, r->body};
}

std::multiset<int64_t> amounts(const json& answer) {
  std::multiset<int64_t> out;
  for (const auto& s : answer["states"]) out.insert(s["fields"]["amount"].get<int64_t>());
  return out;
}

}  // namespace

TEST_CASE("vault query API: by type and declared fields, status, participant, paging, sorting") {
  World w;
  const SecureHash first = w.issue(w.coop, 50000);
  w.issue(w.coop, 20000);
  w.issue(w.bank, 900000);
  w.issue(w.coop, 7000);
  const SecureHash moved = w.move(StateRef{first, 0}, 50000, w.other);
  Served served(w);
  ApiClient reader = served.client();

  // Every unconsumed token, by the full type name and by the alias.
  json all = must(reader.post("/api/v1/vault/query", {{"type", "ccal.token.TokenState"}}));
  CHECK(all["total"] == 4);
  CHECK(amounts(all) == std::multiset<int64_t>{50000, 20000, 900000, 7000});
  CHECK(must(reader.post("/api/v1/vault/query", {{"type", "token"}}))["total"] == 4);
  CHECK(must(reader.post("/api/v1/vault/query", {{"type", "TokenState"}}))["total"] == 4);

  // A state's answer: ref, type, contract, status, relevance, names for keys.
  json moved_answer = must(reader.post(
      "/api/v1/vault/query", {{"type", "token"}, {"fields", {{{"name", "owner"}, {"value", w.other.name}}}}}));
  REQUIRE(moved_answer["total"] == 1);
  const json& s = moved_answer["states"][0];
  CHECK(s["ref"] == StateRef{moved, 0}.toString());
  CHECK(s["type"] == "ccal.token.TokenState");
  CHECK(s["contract"] == "ccal.token");
  CHECK(s["status"] == "unconsumed");
  CHECK(s["relevance"] == "observed");  // not one of our keys: recorded as an observer
  CHECK(s["fields"]["owner"] == w.other.name);
  CHECK(s["fields"]["issuer"] == w.bank.name);
  CHECK(s["fields"]["currency"] == "CNY");
  CHECK(s["participants"] == json::array({w.other.name}));
  CHECK(s["notary"] == w.notary.name);
  CHECK(s["recorded"].get<std::string>().back() == 'Z');

  // The coop's tokens, by owner (name or key hash) and amount ops.
  auto coopTokens = [&](json fields, const char* status = "unconsumed") {
    fields.push_back({{"name", "owner"}, {"op", "="}, {"value", w.coop.name}});
    return must(reader.post("/api/v1/vault/query", {{"type", "token"}, {"status", status}, {"fields", fields}}));
  };
  CHECK(amounts(coopTokens(json::array())) == std::multiset<int64_t>{20000, 7000});
  CHECK(amounts(coopTokens(json::array(), "consumed")) == std::multiset<int64_t>{50000});
  CHECK(amounts(coopTokens(json::array(), "all")) == std::multiset<int64_t>{50000, 20000, 7000});
  CHECK(amounts(coopTokens({{{"name", "amount"}, {"op", ">="}, {"value", 20000}}})) == std::multiset<int64_t>{20000});
  CHECK(amounts(coopTokens({{{"name", "amount"}, {"op", "<"}, {"value", "20000"}}})) == std::multiset<int64_t>{7000});
  CHECK(amounts(coopTokens({{{"name", "amount"}, {"op", "between"}, {"values", {1, 7000}}}})) ==
        std::multiset<int64_t>{7000});
  CHECK(amounts(coopTokens({{{"name", "amount"}, {"op", "in"}, {"values", {7000, 20000, 3}}}})) ==
        std::multiset<int64_t>{7000, 20000});
  json by_hash = must(reader.post(
      "/api/v1/vault/query",
      {{"type", "token"}, {"fields", {{{"name", "owner"}, {"value", w.coop.owningKey.hash().hex()}}}}}));
  CHECK(by_hash["total"] == 2);
  json consumed = coopTokens(json::array(), "consumed");
  CHECK(consumed["states"][0]["consumed_by"] == moved.hex());

  // By participant; by relevance.
  CHECK(must(reader.post("/api/v1/vault/query", {{"participant", w.bank.name}}))["total"] == 1);
  CHECK(must(reader.post("/api/v1/vault/query", {{"relevance", "observed"}}))["total"] == 1);

  // Sorted, and paged by cursor one state at a time: every state once, in order.
  json sorted = must(reader.post("/api/v1/vault/query", {{"type", "token"}, {"sort", "-amount"}}));
  std::vector<int64_t> order;
  for (const auto& st : sorted["states"]) order.push_back(st["fields"]["amount"]);
  CHECK(order == std::vector<int64_t>{900000, 50000, 20000, 7000});
  std::vector<int64_t> paged;
  json body = {{"type", "token"}, {"sort", {{"by", "amount"}, {"descending", false}}}, {"page_size", 1}};
  for (int i = 0; i < 10; ++i) {
    json page = must(reader.post("/api/v1/vault/query", body));
    CHECK(page["total"] == 4);
    for (const auto& st : page["states"]) paged.push_back(st["fields"]["amount"]);
    if (!page["has_more"].get<bool>()) break;
    body["cursor"] = page["next_cursor"];
  }
  CHECK(paged == std::vector<int64_t>{7000, 20000, 50000, 900000});
  json page2 = must(reader.post("/api/v1/vault/query", {{"type", "token"}, {"sort", "amount"}, {"page_size", 3}, {"page", 2}}));
  CHECK(amounts(page2) == std::multiset<int64_t>{900000});

  // The transaction behind a state.
  json tx = must(reader.get("/api/v1/vault/transactions/" + moved.hex()));
  CHECK(tx["id"] == moved.hex());
  CHECK(tx["inputs"] == json::array({StateRef{first, 0}.toString()}));
  CHECK(tx["outputs"][0]["fields"]["owner"] == w.other.name);
  CHECK(tx["commands"][0]["type"] == "ccal.token.Move");
  CHECK(tx["commands"][0]["signers"] == json::array({w.coop.name}));
  CHECK(tx["signed_by"].size() == 2);
  CHECK(tx["notary"] == w.notary.name);
}

TEST_CASE("vault query API: bad queries are refused with 400 naming what is wrong; nothing changes") {
  World w;
  w.issue(w.coop, 100);
  Served served(w);
  ApiClient reader = served.client();
  struct Case {
    json body;
    std::string says;
  };
  const std::vector<Case> cases = {
      {{{"type", "ccal.token.Nothing"}}, "unknown state type 'ccal.token.Nothing'"},
      {{{"type", "mortgage"}}, "unknown state type 'mortgage' (known: ccal.lc.LetterOfCreditState"},
      {{{"type", "token"}, {"fields", {{{"name", "colour"}, {"value", "red"}}}}},
       "unknown field 'colour'"},
      {{{"type", "token"}, {"fields", {{{"name", "colour"}, {"value", "red"}}}}},
       "declared: amount, currency"},
      {{{"type", "token"}, {"fields", {{{"name", "amount"}, {"op", "~"}, {"value", 1}}}}},
       "unknown op '~'"},
      {{{"type", "token"}, {"fields", {{{"name", "amount"}, {"value", "lots"}}}}},
       "field 'amount' (int64)"},
      {{{"type", "token"}, {"fields", {{{"name", "currency"}, {"value", 5}}}}}, "is not a string"},
      {{{"type", "token"}, {"fields", {{{"name", "amount"}, {"value", 18446744073709551615ull}}}}},
       "18446744073709551615 is above the largest int64"},
      {{{"type", "token"}, {"fields", {{{"name", "owner"}, {"value", "O=Nobody, C=CN"}}}}},
       "O=Nobody, C=CN"},
      {{{"type", "token"}, {"fields", {{{"name", "amount"}, {"op", "between"}, {"values", {1}}}}}},
       "two values"},
      {{{"fields", {{{"name", "amount"}, {"value", 1}}}}}, "needs a 'type'"},
      {{{"type", "token"}, {"status", "spent"}}, "unknown status 'spent'"},
      {{{"relevance", "mine"}}, "unknown relevance 'mine'"},
      {{{"participant", "O=Nobody, C=CN"}}, "participant 'O=Nobody, C=CN'"},
      {{{"linear_id", "xyz"}}, "linear_id 'xyz'"},
      {{{"page_size", 5000}}, "page_size must be 1..1000"},
      {{{"page_size", 0}}, "page_size must be 1..1000"},
      {{{"page", 0}}, "page must be a positive integer"},
      {{{"cursor", "not-a-cursor"}}, "cursor"},
      {{{"type", "token"}, {"sort", "colour"}}, "colour"},
      {{{"colour", "red"}}, "unknown key 'colour'"},
  };
  for (const Case& c : cases) {
    auto [status, answer] = refused(reader, c.body);
    const std::string said = answer.dump();  // INFO captures by lambda: no structured binding (clang 14)
    INFO(c.body.dump() << " -> " << said);
    CHECK(status == 400);
    CHECK(answer["error"]["code"] == "bad_query");
    CHECK(answer["error"]["message"].get<std::string>().find(c.says) != std::string::npos);
  }
  // Not an object; a wrong token; transactions: malformed and unknown ids.
  auto [status, answer] = refused(reader, json::array({1}));
  CHECK(status == 400);
  auto stranger = served.client(std::string(64, 'z'));
  auto denied = stranger.exchange(HttpMethod::post, "/api/v1/vault/query", &answer);
  REQUIRE(denied);
  CHECK(denied->status == 401);
  auto bad_id = reader.exchange(HttpMethod::get, "/api/v1/vault/transactions/12", nullptr);
  REQUIRE(bad_id);
  CHECK(bad_id->status == 400);
  auto unknown = reader.exchange(HttpMethod::get, "/api/v1/vault/transactions/" + std::string(64, 'a'), nullptr);
  REQUIRE(unknown);
  CHECK(unknown->status == 404);
  CHECK(must(reader.post("/api/v1/vault/query", {{"type", "token"}}))["total"] == 1);
}

TEST_CASE("vault query API: times in and out, type aliases") {
  CHECK(isoTime(0) == "1970-01-01T00:00:00Z");
  CHECK(isoTime(1'800'000'000'123'456) == "2027-01-15T08:00:00.123456Z");
  CHECK(parseTimeMicros("2027-01-15T08:00:00Z").value() == 1'800'000'000'000'000);
  CHECK(parseTimeMicros("2027-01-15").value() == 1'799'971'200'000'000);
  CHECK(parseTimeMicros("42").value() == 42);
  CHECK_FALSE(parseTimeMicros("2027-13-01"));
  // Days the month has (leap years by the Gregorian rule), not any 1..31.
  CHECK(parseTimeMicros("2024-02-29").value() ==
        parseTimeMicros("2024-03-01").value() - 86'400'000'000LL);
  CHECK(parseTimeMicros("2000-02-29"));
  CHECK(parseTimeMicros("2027-01-31"));
  CHECK(parseTimeMicros("2024-02-31").error().message.find("2024-02 has no day 31") !=
        std::string::npos);
  CHECK_FALSE(parseTimeMicros("2023-02-29"));
  CHECK_FALSE(parseTimeMicros("1900-02-29"));
  CHECK_FALSE(parseTimeMicros("2027-04-31T00:00:00Z"));
  CHECK_FALSE(parseTimeMicros("yesterday"));
  ContractRegistry registry;
  contracts::registerDealContracts(registry);
  CHECK(resolveStateType(registry, "receivable").value() == "ccal.receivable.ReceivableState");
  CHECK(resolveStateType(registry, "Member").value() == "ccal.member.MemberState");
  CHECK(resolveStateType(registry, "invoiceregistration").value() == "ccal.receivable.InvoiceRegistration");
  CHECK(resolveStateType(registry, "ccal.token.TokenState").value() == "ccal.token.TokenState");
  CHECK(resolveStateType(registry, "tokens").error().code == Errc::bad_query);
}

TEST_CASE("credit report API: a party's history from this vault; an unknown party is named") {
  World w;
  // A late instalment and an on-time one of the coop's loan, recorded as the fund's committee (the bank) sees them.
  const SecureHash fund = SecureHash::of(asBytes("fund")), loan = SecureHash::of(asBytes("loan"));
  int n = 0;
  for (auto event : {contracts::CreditEvent::late_payment, contracts::CreditEvent::repayment_on_time}) {
    contracts::CreditRecord r{w.coop.owningKey, fund, loan, event, 5000, "CNY", 1'750'000'000'000'000 + n++};
    auto tx = TransactionBuilder(w.notary)
                  .addOutput(contracts::creditRecordState(w.notary, r, {w.bank.owningKey}))
                  .addCommand(Command{"ccal.loan.Repay", {}, {w.bank.owningKey}})
                  .build();
    REQUIRE(tx);
    SignedTransaction stx(*tx);
    stx.signWith(w.bank_key);
    REQUIRE(w.vault->record(stx, vault::RecordMode::all_visible));
  }
  Served s(w);
  auto reader = s.client();
  json report = must(reader.get("/api/v1/credit/report?subject=" + ApiClient::encodeSegment(w.coop.name)));
  CHECK(report["subject"] == w.coop.name);
  CHECK(report["late"] == 1);
  CHECK(report["repaid_on_time"] == 1);
  CHECK(report["defaulted"] == 0);
  CHECK(report["text"].get<std::string>().find("late") != std::string::npos);
  json clean = must(reader.get("/api/v1/credit/report?subject=" + ApiClient::encodeSegment(w.other.name)));
  CHECK(clean["late"] == 0);
  CHECK(clean["repaid_on_time"] == 0);

  auto unknown = reader.exchange(HttpMethod::get, "/api/v1/credit/report?subject=O%3DNobody", nullptr);
  REQUIRE(unknown);
  CHECK(unknown->status == 400);
  CHECK(unknown->body["error"]["message"].get<std::string>().find("no party 'O=Nobody'") != std::string::npos);
  auto missing = reader.exchange(HttpMethod::get, "/api/v1/credit/report", nullptr);
  REQUIRE(missing);
  CHECK(missing->status == 400);
}

