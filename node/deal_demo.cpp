#include "node/deal_demo.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <ostream>
#include <set>
#include <thread>
#include <vector>

#include "contracts/letter_of_credit.h"
#include "flows/deal_flows.h"
#include "flows/lc_flows.h"
#include "flows/loan_flows.h"
#include "ledger/result.h"
#include "node/api_client.h"
#include "node/api_users.h"
#include "node/bootstrap.h"
#include "node/config.h"
#include "node/notary_service.h"
#include "node/process_control.h"
#include "node/vault_api.h"

namespace ccal::node {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// The members the scenario needs, by their folder names in the spec.
constexpr const char* bank_name = "harbour-bank";
constexpr const char* seller_name = "haikou-fishing";
constexpr const char* buyer_name = "sanya-farmers";
constexpr const char* rival_name = "wenchang-credit-union";
constexpr const char* regulator_name = "regulator";

constexpr const char* currency = "CNY";
constexpr int64_t seller_tokens = 500'000;      // 5,000.00 CNY
constexpr int64_t buyer_tokens = 2'000'000;     // 20,000.00
constexpr int64_t bank_tokens = 10'000'000;     // 100,000.00: the bank's own funds
constexpr int64_t rival_tokens = 5'000'000;     // 50,000.00
constexpr int64_t invoice_amount = 1'200'000;   // 12,000.00
constexpr int64_t bank_advance = 1'104'000;     // 92%
constexpr int64_t rival_advance = 1'080'000;    // 90%
constexpr const char* invoice_number = "HF-2026-0042";
constexpr int64_t invoice_due_days = 60;

// 6. The letter of credit: Haikou Fishing buys from Sanya Farmers; Harbour
// Bank issues and advises it.
constexpr const char* lc_number = "HB-LC-2026-0007";
constexpr int64_t lc_amount = 750'000;  // 7,500.00
constexpr int64_t lc_expiry_days = 90;
constexpr int64_t lc_shipment_days = 60;
constexpr const char* lc_documents_required = "commercial_invoice;bill_of_lading;insurance_certificate";
constexpr const char* lc_documents_presented[] = {"commercial_invoice", "bill_of_lading"};  // no insurance
constexpr const char* lc_discrepancy = "insurance certificate missing";

// 7. The mutual-aid fund of the two cooperatives and the credit union (its
// committee, 2 of 3); Sanya Farmers borrows from it.
constexpr const char* fund_name = "Hainan Cooperative Mutual Aid";
constexpr int64_t fund_threshold = 2;
constexpr int64_t fund_principal_max = 800'000;
constexpr int64_t seller_contribution = 400'000;  // 4,000.00
constexpr int64_t buyer_contribution = 200'000;   // 2,000.00
constexpr int64_t rival_contribution = 400'000;   // 4,000.00
constexpr int64_t loan_principal = 600'000;       // 6,000.00
constexpr int64_t loan_interest_bp = 300;         // 3% simple interest over the term
constexpr int64_t loan_term_days = 180;
constexpr int64_t loan_instalments = 2;
constexpr int64_t loan_total_due = loan_principal + loan_principal * loan_interest_bp / 10'000;

// What the demo made, by kind: the regulator's expected view is computed
// from these (regulatorGranted below).
enum class TxKind { token, member, receivable, financing, settlement, lc, loan };

const char* kindName(TxKind kind) {
  switch (kind) {
    case TxKind::token: return "token";
    case TxKind::member: return "member";
    case TxKind::receivable: return "receivable";
    case TxKind::financing: return "financing";
    case TxKind::settlement: return "settlement";
    case TxKind::lc: return "lc";
    case TxKind::loan: return "loan";
  }
  return "?";
}

// ---- The regulator's rules, as the demo expects them: the ONE place to adjust ----
// config/demo-network.toml's [[observers]] rule for the regulator: every
// ccal.lc and ccal.loan transaction, and receivable financing above a
// configured amount (the demo's financing, 11,040.00 or 10,800.00 CNY, is
// above it).
// The financing rule (ccal.receivable.Finance from 1,000,000 minor units of
// the invoice's amount) is in config/demo-network.toml.
constexpr bool regulator_sees_financing = true;
// Transactions the demo walks when computing granted ones' backchain.
constexpr size_t demo_backchain_transactions_max = 1000;

bool regulatorGranted(TxKind kind) {
  switch (kind) {
    case TxKind::lc:
    case TxKind::loan:
      return true;
    case TxKind::financing:
      return regulator_sees_financing;
    case TxKind::token:
    case TxKind::member:
    case TxKind::receivable:
    case TxKind::settlement:
      return false;
  }
  return false;
}

using Clock = std::chrono::steady_clock;

std::string money(int64_t minor) {
  const bool negative = minor < 0;
  uint64_t v = negative ? 0 - static_cast<uint64_t>(minor) : static_cast<uint64_t>(minor);
  std::string whole = std::to_string(v / 100);
  for (int i = static_cast<int>(whole.size()) - 3; i > 0; i -= 3) whole.insert(static_cast<size_t>(i), ",");
  char cents[4];
  std::snprintf(cents, sizeof cents, "%02u", static_cast<unsigned>(v % 100));
  return (negative ? "-" : "") + whole + "." + cents + " " + currency;
}

// "O=Harbour Bank, L=Haikou, C=CN" -> "Harbour Bank".
std::string shortName(const std::string& x500) {
  if (x500.rfind("O=", 0) != 0) return x500.size() > 16 ? x500.substr(0, 16) + "..." : x500;
  return x500.substr(2, x500.find(',') == std::string::npos ? std::string::npos : x500.find(',') - 2);
}

// The date of a time field ("2027-01-25T00:00:00Z" -> "2027-01-25").
std::string dateOf(const json& fields, const char* key) {
  std::string s = fields.contains(key) && fields[key].is_string() ? fields[key].get<std::string>() : std::string();
  return s.size() >= 10 ? s.substr(0, 10) : s;
}

std::string todayPlusDays(int64_t days) {
  const std::time_t t = std::time(nullptr) + days * 86'400;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char text[16];
  std::strftime(text, sizeof text, "%Y-%m-%d", &tm);
  return text;
}

struct Member {
  std::string name, x500, api;
  std::string token;  // the admin's
  std::optional<ApiClient> client;
};

struct Check {
  std::string what;
  bool ok = false;
  std::string detail;
};

class Demo {
 public:
  Demo(const DealDemoOptions& options, std::ostream& out) : options_(options), out_(out) {}

  int run();

 private:
  // --- narration ---
  void say(const std::string& line) {
    const double secs = std::chrono::duration<double>(Clock::now() - started_).count();
    char stamp[16];
    std::snprintf(stamp, sizeof stamp, "[%5.1fs] ", secs);
    out_ << stamp << line << "\n" << std::flush;
  }
  void heading(const std::string& title) { out_ << "\n== " << title << "\n" << std::flush; }
  void detail(const std::string& line) { out_ << "          " << line << "\n" << std::flush; }
  int fail(const std::string& why) {
    out_ << "\nccal demo: " << why << "\n" << std::flush;
    stopUnlessKept();
    return 1;
  }

  Result<fs::path> specFile() const;
  Status bootstrap();
  Status start();
  void waitForLinks();
  void stopUnlessKept();

  Member& member(const char* name) { return members_.at(name); }

  // --- flows through the API ---
  Result<std::string> startFlow(Member& m, std::string_view flow, const std::vector<std::string>& args);
  Result<json> awaitFlow(Member& m, const std::string& id);
  // Runs a flow to its end; the finished flow's JSON (ok or failed).
  Result<json> runFlow(Member& m, std::string_view flow, const std::vector<std::string>& args) {
    auto id = startFlow(m, flow, args);
    if (!id) return id.error();
    return awaitFlow(m, *id);
  }
  // A flow's result: the 32-byte transaction id (token, member, receivable
  // and letter-of-credit flows) or a JSON object (loan flows).
  static json resultOf(const json& flow) {
    auto bytes = base64Decode(flow.value("result_base64", ""));
    if (!bytes || bytes->size() == 32) return json::object();
    json r = json::parse(bytes->begin(), bytes->end(), nullptr, false);
    return r.is_object() ? r : json::object();
  }
  static std::string txOf(const json& flow) {
    auto bytes = base64Decode(flow.value("result_base64", ""));
    if (!bytes) return "?";
    if (bytes->size() == 32) return SecureHash::fromBytes(*bytes).value().hex();
    const json r = resultOf(flow);
    return r.contains("tx_id") && r["tx_id"].is_string() ? r["tx_id"].get<std::string>() : "?";
  }
  // Runs a flow that must end ok: its finished JSON, or an error naming the
  // member, the flow and the flow's own error.
  Result<json> mustRun(Member& m, std::string_view flow, const std::vector<std::string>& args) {
    auto done = runFlow(m, flow, args);
    if (!done) return done.error();
    if (done->value("outcome", "") != "ok") {
      return Error{Errc::invalid_transaction, m.name + ": " + std::string(flow) + " failed: " + errorOf(*done)};
    }
    return done;
  }
  // Notes a transaction the demo made (for the regulator's expected view).
  void made(TxKind kind, std::string what, Member& maker, const std::string& id) {
    made_.push_back({kind, std::move(what), &maker, id});
  }
  static std::string errorOf(const json& flow) {
    if (!flow.contains("error")) return "";
    return flow["error"].value("code", "") + ": " + flow["error"].value("message", "");
  }

  // --- the vaults through the API ---
  Result<json> query(Member& m, json body) {
    body["page_size"] = 1000;
    return m.client->post("/api/v1/vault/query", body);
  }
  Result<int64_t> balance(Member& m);
  // Tokens of the demo's currency owned by a key given by its hash (the fund key).
  Result<int64_t> balanceOfKey(Member& m, const std::string& key_hash_hex);
  Result<json> lcAt(Member& m, const char* status = "unconsumed");
  void showLc(Member& m);
  // The balances each check expects, waited for (counterparties record after the initiator's flow ends).
  void checkBalance(Member& m, int64_t expected, const std::string& when);

  // --- part 2 (issue 8) ---
  Status runLetterOfCredit();
  Status runMutualAid();
  void checkRegulator();
  void showStates(Member& m, const char* type, const char* status = "unconsumed");
  std::string describe(const json& state) const;

  // Polls `pred` until it holds or the timeout passes (a counterparty or an
  // observer records a transaction after the initiator's flow has ended).
  bool eventually(const std::function<bool()>& pred, int64_t timeout_millis = demo_settle_timeout_millis,
                  int64_t poll_millis = demo_poll_millis) {
    const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_millis);
    while (Clock::now() < deadline) {
      if (pred()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(poll_millis));
    }
    return pred();
  }
  void check(std::string what, bool ok, std::string detail_text) {
    checks_.push_back({std::move(what), ok, std::move(detail_text)});
  }

  const DealDemoOptions& options_;
  std::ostream& out_;
  const Clock::time_point started_ = Clock::now();
  NetworkSpec spec_;
  std::map<std::string, Member> members_;  // members that run flows, by folder name
  std::vector<Check> checks_;
  bool started_network_ = false;

  struct MadeTx {
    TxKind kind;
    std::string what;
    Member* maker;  // holds it in its vault
    std::string id;
  };
  std::vector<MadeTx> made_;
  // What each member should hold after the steps so far (checkBalance keeps it).
  std::map<std::string, int64_t> expected_balance_;
};

Result<fs::path> Demo::specFile() const {
  if (fs::exists(options_.spec) || options_.spec.is_absolute()) return options_.spec;
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    const fs::path beside = exe.parent_path().parent_path().parent_path() / options_.spec;
    if (fs::exists(beside)) return beside;
  }
  return Error{Errc::not_found, "network spec " + options_.spec.string() +
                                    " not found (run from the source tree, or give --spec FILE)"};
}

Status Demo::bootstrap() {
  auto file = specFile();
  if (!file) return file.error();
  auto spec = loadNetworkSpec(*file);
  if (!spec) return spec.error();
  spec_ = std::move(*spec);
  if (options_.port_base > 0) {
    const size_t n = spec_.nodes.size();
    if (options_.port_base + 2 * n > 65535) {
      return Error{Errc::malformed, "--port-base " + std::to_string(options_.port_base) + " leaves no room for " +
                                        std::to_string(2 * n) + " ports"};
    }
    for (size_t i = 0; i < n; ++i) {
      spec_.nodes[i].p2p.port = static_cast<uint16_t>(options_.port_base + i);
      spec_.nodes[i].api.port = static_cast<uint16_t>(options_.port_base + n + i);
    }
  }
  for (const char* needed : {bank_name, seller_name, buyer_name, rival_name, regulator_name}) {
    bool found = false;
    for (const SpecNode& node : spec_.nodes) found = found || node.name == needed;
    if (!found) return Error{Errc::not_found, file->string() + " has no member named '" + needed + "'"};
  }
  // A network left running by an earlier `--keep` run in the same folder goes first.
  if (fs::exists(options_.out / "network.json")) (void)stopNetwork(options_.out);
  auto made = bootstrapNetwork(spec_, options_.out, true, std::chrono::system_clock::now());
  if (!made) return made.error();
  size_t replicas = 0;
  for (const SpecNode& node : spec_.nodes) {
    if (node.role == Role::notary_replica) {
      ++replicas;
      continue;
    }
    Member m{node.name, node.x500, node.api.toString(), {}, {}};
    members_.emplace(node.name, std::move(m));
  }
  say("bootstrapped " + file->string() + " into " + options_.out.string() + ": " +
      std::to_string(spec_.nodes.size()) + " members (" + std::to_string(replicas) +
      " notary replicas), a fresh PKI, signed network parameters and node infos");
  return Status::success();
}

Status Demo::start() {
  say("starting every member as its own process (ccal node run) ...");
  StartOptions options;
  auto started = startNetwork(options_.out, options);
  if (!started) return started.error();
  started_network_ = true;
  std::string pids;
  for (const MemberStatus& s : *started) pids += (pids.empty() ? "" : ", ") + s.name + " " + std::to_string(s.pid);
  say(std::to_string(started->size()) + " processes ready (pids: " + pids + ")");
  for (auto& [name, m] : members_) {
    auto config = loadNodeConfig(options_.out / name / "node.toml");
    if (!config) return config.error();
    auto users = ApiUsers::load(config->api_users_file);
    if (!users) return users.error();
    for (const auto& user : users->users()) {
      if (user.role == ApiRole::admin) m.token = user.token;
    }
    m.api = config->api_listen.toString();
    ApiClientOptions client_options;
    client_options.timeout_micros = 30'000'000;
    auto client = ApiClient::create("http://" + m.api, m.token, client_options);
    if (!client) return client.error();
    m.client.emplace(std::move(*client));
  }
  return Status::success();
}

// Members dial each other at start; a deal before that only waits longer.
void Demo::waitForLinks() {
  const auto began = Clock::now();
  const bool all = eventually(
      [&] {
        for (auto& [name, m] : members_) {
          auto peers = m.client->get("/api/v1/peers");
          if (!peers) return false;
          for (const auto& p : (*peers)["peers"]) {
            if (p.value("state", "") != "connected") return false;
          }
        }
        return true;
      },
      20'000);
  const auto millis = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - began).count();
  say(std::string(all ? "every member is connected to every other" : "some links are still connecting") +
      " over mutually authenticated TLS 1.3 (" + std::to_string(millis) + " ms)");
}

void Demo::stopUnlessKept() {
  if (!started_network_) return;
  if (options_.keep) {
    out_ << "\nThe network keeps running (--keep). Each member's control API (admin token):\n";
    for (const SpecNode& node : spec_.nodes) {
      auto config = loadNodeConfig(options_.out / node.name / "node.toml");
      if (!config) continue;
      std::string token;
      if (auto users = ApiUsers::load(config->api_users_file)) {
        for (const auto& user : users->users()) {
          if (user.role == ApiRole::admin) token = user.token;
        }
      }
      out_ << "  " << node.name << "  http://" << config->api_listen.toString() << "  " << token << "\n";
    }
    out_ << "Try: ccal vault query --dir " << options_.out.string() << " --node " << bank_name
         << " --type receivable --status all\n"
         << "Stop it with: ccal network stop --dir " << options_.out.string() << "\n"
         << std::flush;
    return;
  }
  auto stopped = stopNetwork(options_.out);
  say(stopped ? "network stopped (every member exited on SIGTERM)"
              : "stopping the network: " + stopped.error().message);
  started_network_ = false;
}

Result<std::string> Demo::startFlow(Member& m, std::string_view flow, const std::vector<std::string>& args) {
  auto parsed = flows::parseDealArgs(flow, args);
  if (!parsed) return parsed.error();
  json body = {{"name", std::string(flow)}, {"args_base64", base64Encode(flows::encodeDealArgs(*parsed))}};
  auto started = m.client->post("/api/v1/flows", body);
  if (!started) return started.error();
  return (*started)["id"].get<std::string>();
}

Result<json> Demo::awaitFlow(Member& m, const std::string& id) {
  const auto deadline = Clock::now() + std::chrono::milliseconds(demo_flow_timeout_millis);
  for (;;) {
    auto shown = m.client->get("/api/v1/flows/" + id);
    if (!shown) return shown.error();
    if (shown->value("phase", "") == "finished") return *shown;
    if (Clock::now() >= deadline) {
      return Error{Errc::timeout, m.name + "'s flow " + shown->value("name", "") + " " + id + " has not ended after " +
                                      std::to_string(demo_flow_timeout_millis / 1000) + " s (step: " +
                                      shown->value("step", "") + ")"};
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(demo_poll_millis));
  }
}

Result<int64_t> Demo::balance(Member& m) {
  auto page = query(m, {{"type", "token"},
                        {"fields", {{{"name", "owner"}, {"value", m.x500}}, {{"name", "currency"}, {"value", currency}}}}});
  if (!page) return page.error();
  int64_t sum = 0;
  for (const auto& s : (*page)["states"]) sum += s["fields"]["amount"].get<int64_t>();
  return sum;
}

Result<int64_t> Demo::balanceOfKey(Member& m, const std::string& key_hash_hex) {
  auto page = query(m, {{"type", "token"},
                        {"fields", {{{"name", "owner"}, {"value", key_hash_hex}}, {{"name", "currency"}, {"value", currency}}}}});
  if (!page) return page.error();
  int64_t sum = 0;
  for (const auto& s : (*page)["states"]) sum += s["fields"]["amount"].get<int64_t>();
  return sum;
}

void Demo::checkBalance(Member& m, int64_t expected, const std::string& when) {
  expected_balance_[m.name] = expected;
  int64_t have = -1;
  const bool ok = eventually([&] {
    auto b = balance(m);
    have = b ? *b : -1;
    return have == expected;
  });
  check("balance of " + m.name + " " + when, ok, "holds " + money(have) + ", expected " + money(expected));
}

Result<json> Demo::lcAt(Member& m, const char* status) {
  return query(m, {{"type", std::string(contracts::lc_state_type)},
                   {"status", status},
                   {"fields", {{{"name", "lc"}, {"value", lc_number}}}}});
}

void Demo::showLc(Member& m) {
  auto page = lcAt(m);
  if (!page) {
    detail(m.name + ": vault query failed: " + page.error().message);
    return;
  }
  if ((*page)["states"].empty()) detail(m.name + "'s vault: no live letter of credit " + lc_number);
  for (const auto& s : (*page)["states"]) detail(m.name + "'s vault: " + describe(s));
}

std::string Demo::describe(const json& s) const {
  const json& f = s["fields"];
  const std::string type = s.value("type", "");
  auto text = [&](const char* key) { return f.contains(key) && f[key].is_string() ? f[key].get<std::string>() : ""; };
  std::string line;
  if (type == "ccal.token.TokenState") {
    line = money(f.value("amount", int64_t{0})) + " owned by " + shortName(text("owner")) + ", issued by " +
           shortName(text("issuer"));
  } else if (type == "ccal.member.MemberState") {
    line = "credential of " + text("legal_name") + " (role " + text("role") + ") issued by " +
           shortName(text("cooperative_name")) + ", valid until " + dateOf(f, "valid_until");
  } else if (type == "ccal.receivable.ReceivableState") {
    line = "invoice " + text("invoice") + ": " + money(f.value("amount", int64_t{0})) + " owed by " +
           shortName(text("buyer")) + " (seller " + shortName(text("seller")) + "), holder " + shortName(text("holder")) +
           ", due " + dateOf(f, "due");
  } else if (type == "ccal.lc.LetterOfCreditState") {
    line = "letter of credit " + text("lc") + ": " + money(f.value("amount", int64_t{0})) + " for " +
           shortName(text("beneficiary")) + " (applicant " + shortName(text("applicant")) + "), issued by " +
           shortName(text("issuer")) + ", advised by " + shortName(text("adviser")) + ", expires " +
           text("expiry") + ", status " + text("status");
  } else if (type == "ccal.loan.FundState") {
    line = "fund '" + text("name") + "': " + money(f.value("contributed", int64_t{0})) + " contributed, fund key " +
           text("fund_key").substr(0, 12);
  } else if (type == "ccal.loan.LoanState") {
    line = "loan of " + money(f.value("amount", int64_t{0})) + " to " + shortName(text("borrower")) + ", status " +
           text("status") + (f.value("due", json()).is_string() && dateOf(f, "due") != "1970-01-01"
                                  ? ", next instalment due " + dateOf(f, "due")
                                  : "");
  } else if (type == "ccal.loan.CreditRecord") {
    line = "credit record of " + shortName(text("subject")) + ": " + text("event") + " " +
           money(f.value("amount", int64_t{0})) + " on " + dateOf(f, "at");
  } else {
    line = type;
  }
  line += "  [" + s.value("status", "") + (s.value("relevance", "") == "observed" ? ", observed" : "") + "] " +
          s.value("ref", "").substr(0, 12) + ":" + s.value("ref", "").substr(s.value("ref", "").find(':') + 1);
  return line;
}

void Demo::showStates(Member& m, const char* type, const char* status) {
  auto page = query(m, {{"type", type}, {"status", status}});
  if (!page) {
    detail(m.name + ": vault query failed: " + page.error().message);
    return;
  }
  if ((*page)["states"].empty()) detail(m.name + "'s vault: no " + std::string(status) + " " + type + " states");
  for (const auto& s : (*page)["states"]) detail(m.name + "'s vault: " + describe(s));
}

Status Demo::runLetterOfCredit() {
  Member& bank = member(bank_name);
  Member& applicant = member(seller_name);
  Member& beneficiary = member(buyer_name);
  const std::string expiry = todayPlusDays(lc_expiry_days), shipment = todayPlusDays(lc_shipment_days);
  heading("6. A letter of credit: " + shortName(applicant.x500) + " buys from " + shortName(beneficiary.x500) + " for " +
          money(lc_amount) + "; " + shortName(bank.x500) + " issues and advises it");
  // The presented documents by type and SHA-256 of their content (here a
  // stand-in text per document); the insurance certificate is missing.
  std::string presented;
  for (const char* type : lc_documents_presented) {
    const std::string content = std::string(lc_number) + " " + type;
    presented += (presented.empty() ? "" : ";") + std::string(type) + ":" +
                 SecureHash::of(Bytes(content.begin(), content.end())).hex();
  }
  struct Step {
    Member* by;
    std::string_view flow;
    std::vector<std::string> args;
    std::string what;
  };
  const std::vector<Step> steps = {
      {&applicant, flows::lc_apply_deal,
       {"lc=" + std::string(lc_number), "bank=" + bank.x500, "beneficiary=" + beneficiary.x500,
        "amount=" + std::to_string(lc_amount), "currency=" + std::string(currency), "expiry=" + expiry,
        "shipment=" + shipment, "documents=" + std::string(lc_documents_required)},
       "applies to " + shortName(bank.x500) + ": " + money(lc_amount) + " for " + shortName(beneficiary.x500) +
           ", expiry " + expiry + ", latest shipment " + shipment + ", documents " + lc_documents_required},
      {&bank, flows::lc_issue_deal, {"lc=" + std::string(lc_number)}, "issues it: irrevocable from here"},
      {&bank, flows::lc_advise_deal, {"lc=" + std::string(lc_number)},
       "advises it to " + shortName(beneficiary.x500) + " (the issuing bank is also the advising bank)"},
      {&beneficiary, flows::lc_present_deal, {"lc=" + std::string(lc_number), "documents=" + presented},
       "presents the commercial invoice and the bill of lading by SHA-256 -- the insurance certificate is missing"},
      {&bank, flows::lc_examine_deal,
       {"lc=" + std::string(lc_number), "result=discrepant", "reasons=" + std::string(lc_discrepancy)},
       "examines the presentation: discrepant (" + std::string(lc_discrepancy) + ")"},
      {&applicant, flows::lc_waive_deal, {"lc=" + std::string(lc_number)}, "waives the discrepancy"},
      {&bank, flows::lc_pay_deal, {"lc=" + std::string(lc_number)},
       "pays " + money(lc_amount) + " to " + shortName(beneficiary.x500) +
           " in its tokens, in the transaction that marks the LC paid: honoured"},
  };
  std::string pay_tx;
  for (const Step& st : steps) {
    auto done = mustRun(*st.by, st.flow, st.args);
    if (!done) return done.error();
    const std::string tx = txOf(*done);
    say(st.by->name + ": " + std::string(st.flow) + " " + lc_number + ": " + st.what + " -> tx " + tx.substr(0, 16));
    made(TxKind::lc, std::string(st.flow) + " " + lc_number, *st.by, tx);
    showLc(bank);
    if (st.flow == flows::lc_pay_deal) pay_tx = tx;
  }
  showLc(beneficiary);
  showStates(beneficiary, "token");

  checkBalance(beneficiary, expected_balance_.at(beneficiary.name) + lc_amount, "after the letter of credit");
  for (Member* m : {&beneficiary, &bank, &applicant}) {
    std::string seen;
    const bool ok = eventually([&] {
      auto page = lcAt(*m);
      if (!page) return false;
      seen.clear();
      bool paid = false;
      for (const auto& s : (*page)["states"]) {
        seen += "\n            " + describe(s);
        paid = s["fields"].value("status", "") == "paid" && s.value("ref", "").rfind(pay_tx, 0) == 0;
      }
      return (*page)["states"].size() == 1 && paid;
    });
    check("letter of credit " + std::string(lc_number) + " paid (honoured) in " + m->name + "'s vault", ok,
          "live in its vault:" + (seen.empty() ? std::string(" none") : seen));
  }
  return Status::success();
}

Status Demo::runMutualAid() {
  Member& haikou = member(seller_name);
  Member& borrower = member(buyer_name);
  Member& credit_union = member(rival_name);
  const std::vector<Member*> committee = {&haikou, &borrower, &credit_union};
  heading("7. A mutual-aid fund: " + shortName(haikou.x500) + ", " + shortName(borrower.x500) + " and " +
          shortName(credit_union.x500) + " form its committee (any " + std::to_string(fund_threshold) + " of " +
          std::to_string(committee.size()) + " sign for its tokens)");
  std::string committee_arg;
  for (Member* m : committee) committee_arg += (committee_arg.empty() ? "" : ";") + m->x500;
  auto created = mustRun(haikou, flows::loan_fund_create_deal,
                         {"name=" + std::string(fund_name), "committee=" + committee_arg,
                          "threshold=" + std::to_string(fund_threshold), "currency=" + std::string(currency),
                          "principal_max=" + std::to_string(fund_principal_max), "interest_min_bp=0",
                          "interest_max_bp=1200", "term_min_days=30", "term_max_days=720"});
  if (!created) return created.error();
  const json fund = resultOf(*created);
  const std::string fund_key = fund.value("fund_key", "");
  say(haikou.name + ": loan.fund.create '" + fund_name + "', loans up to " + money(fund_principal_max) +
      ", every committee member signs -> tx " + txOf(*created).substr(0, 16));
  detail("the fund's tokens belong to the composite key 'any " + std::to_string(fund_threshold) + " of the " +
         std::to_string(committee.size()) + " committee keys' (hash " + fund_key.substr(0, 16) + ")");
  made(TxKind::loan, "loan.fund.create", haikou, txOf(*created));

  struct Contribution {
    Member* by;
    int64_t amount;
  };
  const std::vector<Contribution> contributions = {
      {&haikou, seller_contribution}, {&borrower, buyer_contribution}, {&credit_union, rival_contribution}};
  int64_t contributed = 0;
  for (const Contribution& c : contributions) {
    auto done = mustRun(*c.by, flows::loan_fund_contribute_deal,
                        {"fund=" + std::string(fund_name), "amount=" + std::to_string(c.amount)});
    if (!done) return done.error();
    contributed += c.amount;
    say(c.by->name + ": loan.fund.contribute " + money(c.amount) + " -> tx " + txOf(*done).substr(0, 16));
    made(TxKind::loan, "loan.fund.contribute by " + c.by->name, *c.by, txOf(*done));
  }
  showStates(haikou, "ccal.loan.FundState");

  heading("   " + shortName(borrower.x500) + " requests a loan of " + money(loan_principal) + " at " +
          std::to_string(loan_interest_bp / 100) + "% over " + std::to_string(loan_term_days) + " days in " +
          std::to_string(loan_instalments) + " instalments; the committee reviews its credit record");
  auto requested = mustRun(borrower, flows::loan_request_deal,
                           {"fund=" + std::string(fund_name), "amount=" + std::to_string(loan_principal),
                            "interest_bp=" + std::to_string(loan_interest_bp),
                            "term_days=" + std::to_string(loan_term_days),
                            "instalments=" + std::to_string(loan_instalments)});
  if (!requested) return requested.error();
  const json request = resultOf(*requested);
  const std::string loan_id = request.value("loan_id", "");
  say(borrower.name + ": loan.request (its credential referenced) -> tx " + txOf(*requested).substr(0, 16) +
      ", loan " + loan_id.substr(0, 12));
  made(TxKind::loan, "loan.request", borrower, txOf(*requested));
  size_t reviews = 0, approving = 0;
  if (request.contains("reviews") && request["reviews"].is_array()) {
    for (const auto& r : request["reviews"]) {
      ++reviews;
      const json& c = r.contains("credit_report") ? r["credit_report"] : json::object();
      const bool yes = r.value("would_approve", false);
      if (yes) ++approving;
      detail(shortName(r.value("member", std::string("?"))) + " reviews the credit record in its vault: loans " +
             std::to_string(c.value("loans_taken", int64_t{-1})) + ", on time " +
             std::to_string(c.value("repaid_on_time", int64_t{-1})) + ", late " +
             std::to_string(c.value("late", int64_t{-1})) + ", defaulted " +
             std::to_string(c.value("defaulted", int64_t{-1})) + " -> " +
             (yes ? "would approve" : "would refuse: " + r.value("reason", std::string())));
    }
  }
  check("the committee reviewed the request with the borrower's credit record",
        reviews == committee.size() - 1 && approving == reviews,
        std::to_string(reviews) + " reviews, " + std::to_string(approving) + " would approve; want " +
            std::to_string(committee.size() - 1) + ", all approving");

  auto approved = mustRun(haikou, flows::loan_approve_deal, {"loan=" + loan_id, "approvers=" + credit_union.x500});
  if (!approved) return approved.error();
  say(haikou.name + ": loan.approve with " + credit_union.name + " (" + std::to_string(fund_threshold) + " of " +
      std::to_string(committee.size()) + ", both sign) -> tx " + txOf(*approved).substr(0, 16));
  made(TxKind::loan, "loan.approve", haikou, txOf(*approved));
  auto disbursed = mustRun(haikou, flows::loan_disburse_deal, {"loan=" + loan_id});
  if (!disbursed) return disbursed.error();
  say(haikou.name + ": loan.disburse " + money(loan_principal) + " from the fund's tokens to " +
      shortName(borrower.x500) + ", the approvers signing for the fund key -> tx " + txOf(*disbursed).substr(0, 16));
  made(TxKind::loan, "loan.disburse", haikou, txOf(*disbursed));

  std::vector<std::string> events;
  for (int64_t k = 1; k <= loan_instalments; ++k) {
    auto repaid = mustRun(borrower, flows::loan_repay_deal, {"loan=" + loan_id});
    if (!repaid) return repaid.error();
    const json r = resultOf(*repaid);
    events.push_back(r.value("event", ""));
    say(borrower.name + ": loan.repay instalment " + std::to_string(k) + ": " + r.value("event", "?") + ", repaid " +
        money(r.value("repaid", int64_t{0})) + ", outstanding " + money(r.value("outstanding", int64_t{0})) +
        " -> tx " + txOf(*repaid).substr(0, 16));
    made(TxKind::loan, "loan.repay " + std::to_string(k), borrower, txOf(*repaid));
  }
  {
    auto page = query(borrower, {{"type", "ccal.loan.LoanState"}, {"linear_id", loan_id}});
    if (page) {
      for (const auto& s : (*page)["states"]) detail(borrower.name + "'s vault: " + describe(s));
    }
  }
  showStates(borrower, "ccal.loan.CreditRecord");

  // The credit report, from the borrower's vault and a committee member's.
  for (Member* m : {&borrower, &haikou}) {
    std::string text;
    const bool ok = eventually([&] {
      auto report = m->client->get("/api/v1/credit/report?subject=" + ApiClient::encodeSegment(borrower.x500));
      if (!report) {
        text = report.error().message;
        return false;
      }
      text = report->value("text", "");
      const json& outstanding = report->contains("outstanding_minor") ? (*report)["outstanding_minor"] : json();
      const bool nothing_owed = !outstanding.is_object() || outstanding.value(currency, int64_t{0}) == 0;
      return report->value("loans_taken", -1) == 1 && report->value("repaid_on_time", -1) == loan_instalments &&
             report->value("late", -1) == 0 && report->value("defaulted", -1) == 0 &&
             report->value("settled", -1) == 1 && nothing_owed;
    });
    say("GET /api/v1/credit/report?subject=" + shortName(borrower.x500) + " at " + m->name + ": " + text);
    check("credit report of " + borrower.name + " at " + m->name + ": 1 loan, " + std::to_string(loan_instalments) +
              " on-time repayments, settled",
          ok, text);
  }
  check("the instalments were on time, the last settling the loan",
        events == std::vector<std::string>{"repayment_on_time", "full_settlement"},
        [&] {
          std::string e;
          for (const auto& x : events) e += (e.empty() ? "" : ", ") + x;
          return e;
        }());

  checkBalance(haikou, expected_balance_.at(haikou.name) - seller_contribution, "after the mutual-aid fund");
  checkBalance(borrower,
               expected_balance_.at(borrower.name) - buyer_contribution + loan_principal - loan_total_due,
               "after its loan");
  checkBalance(credit_union, expected_balance_.at(credit_union.name) - rival_contribution,
               "after the mutual-aid fund");
  const int64_t fund_expected = contributed - loan_principal + loan_total_due;
  for (Member* m : committee) {
    int64_t have = -1;
    const bool ok = eventually([&] {
      auto b = balanceOfKey(*m, fund_key);
      have = b ? *b : -1;
      return have == fund_expected;
    });
    check("the fund's tokens in " + m->name + "'s vault", ok,
          "the fund key holds " + money(have) + ", expected " + money(fund_expected));
  }
  say("the fund holds " + money(fund_expected) + ": " + money(contributed) + " contributed, " + money(loan_principal) +
      " lent, " + money(loan_total_due) + " repaid with interest");
  return Status::success();
}

// The regulator's view: which of the demo's transactions it holds, by id,
// against what its rules grant (regulatorGranted, computed from the kinds
// of transactions the demo made).
void Demo::checkRegulator() {
  Member& regulator = member(regulator_name);
  std::set<std::string> expected;
  std::map<std::string, const MadeTx*> by_id;
  std::map<std::string, int> granted_by_kind;
  for (const MadeTx& t : made_) {
    by_id[t.id] = &t;
    if (regulatorGranted(t.kind)) {
      expected.insert(t.id);
      ++granted_by_kind[kindName(t.kind)];
    }
  }
  std::string grant;
  for (const auto& [kind, n] : granted_by_kind) grant += (grant.empty() ? "" : ", ") + std::to_string(n) + " " + kind;
  heading("8. The regulator observes: its vault holds exactly the transactions its rules grant (" + grant + ": " +
          std::to_string(expected.size()) + " of the " + std::to_string(made_.size()) +
          " the demo made), and it signed none");
  auto label = [&](const std::string& id) {
    auto it = by_id.find(id);
    return id.substr(0, 16) + " (" + (it == by_id.end() ? "not made by the demo" : it->second->what) + ")";
  };

  // 1. The transactions whose states its vault holds.
  std::set<std::string> held, relevances;
  size_t states = 0;
  const bool same = eventually([&] {
    auto page = query(regulator, {{"status", "all"}});
    if (!page) return false;
    held.clear();
    relevances.clear();
    states = (*page)["states"].size();
    for (const auto& s : (*page)["states"]) {
      const std::string ref = s.value("ref", "");
      held.insert(ref.substr(0, ref.find(':')));
      relevances.insert(s.value("relevance", ""));
    }
    return held == expected && !(*page).value("has_more", false);
  });
  std::string diff;
  for (const std::string& id : expected) {
    if (!held.count(id)) diff += "\n            missing " + label(id);
  }
  for (const std::string& id : held) {
    if (!expected.count(id)) diff += "\n            not granted " + label(id);
  }
  say("POST /api/v1/vault/query at the regulator: " + std::to_string(states) + " states (relevance " +
      [&] {
        std::string r;
        for (const auto& x : relevances) r += (r.empty() ? "" : ", ") + x;
        return r;
      }() +
      ") from " + std::to_string(held.size()) + " transactions");
  check("the regulator's vault holds states of exactly the " + std::to_string(expected.size()) +
            " transactions its rules grant, all observed",
        same && relevances == std::set<std::string>{"observed"},
        std::to_string(held.size()) + " transactions, relevance " + std::to_string(relevances.size()) + " kinds:" +
            diff);

  // 2. By transaction id: every granted one is recorded; any other one the
  // regulator stores must be in the backchain of a granted one (fetched to
  // verify it, recorded without states), computed here from the vaults of the
  // members that made the granted transactions.
  auto dependencies = [&](Member& m, const std::string& id) -> std::vector<std::string> {
    std::vector<std::string> out;
    auto tx = m.client->get("/api/v1/vault/transactions/" + id);
    if (!tx) return out;
    for (const char* key : {"inputs", "references"}) {
      for (const auto& r : (*tx)[key]) {
        const std::string ref = r.get<std::string>();
        out.push_back(ref.substr(0, ref.find(':')));
      }
    }
    return out;
  };
  std::set<std::string> backchain;
  std::vector<std::pair<Member*, std::string>> todo;
  for (const MadeTx& t : made_) {
    if (expected.count(t.id)) todo.emplace_back(t.maker, t.id);
  }
  while (!todo.empty() && backchain.size() < demo_backchain_transactions_max) {
    auto [maker, id] = todo.back();
    todo.pop_back();
    for (const std::string& dep : dependencies(*maker, id)) {
      if (!expected.count(dep) && backchain.insert(dep).second) todo.emplace_back(maker, dep);
    }
  }
  size_t granted_present = 0, others_absent = 0, others_backchain = 0;
  std::string wrong, backchain_text;
  for (const MadeTx& t : made_) {
    auto tx = regulator.client->get("/api/v1/vault/transactions/" + t.id);
    const bool present = tx.ok();
    if (!present && tx.error().code != Errc::not_found) {
      wrong += "\n            " + label(t.id) + ": " + tx.error().message;
    } else if (expected.count(t.id)) {
      if (present) {
        ++granted_present;
      } else {
        wrong += "\n            granted but not recorded: " + label(t.id);
      }
    } else if (!present) {
      ++others_absent;
    } else if (backchain.count(t.id)) {
      ++others_backchain;
      backchain_text += (backchain_text.empty() ? "" : ", ") + t.what;
    } else {
      wrong += "\n            not granted, yet recorded: " + label(t.id);
    }
  }
  say("GET /api/v1/vault/transactions/{id} at the regulator, for each of the demo's " + std::to_string(made_.size()) +
      " transactions: " + std::to_string(granted_present) + " granted and recorded; of the others, " +
      std::to_string(others_absent) + " not there (404) and " + std::to_string(others_backchain) +
      " stored without states as the backchain of granted ones");
  if (!backchain_text.empty()) {
    detail("the backchain it fetched to verify the inputs and references of granted transactions: " + backchain_text);
    detail("(no states of these are in its vault, but it can read them in full by id: the backchain resolution, "
           "not its observer rules, gave them to it)");
  }
  check("by id: every granted transaction recorded at the regulator, no other one but granted ones' backchain",
        wrong.empty() && granted_present == expected.size(), wrong);

  // 3. It never signed: in no transaction's signers (as the members that made them hold them).
  std::string signed_by_regulator;
  size_t examined = 0;
  for (const MadeTx& t : made_) {
    auto tx = t.maker->client->get("/api/v1/vault/transactions/" + t.id);
    if (!tx) {
      signed_by_regulator += "\n            " + label(t.id) + " not readable at " + t.maker->name + ": " +
                             tx.error().message;
      continue;
    }
    ++examined;
    bool named = false;
    for (const auto& c : (*tx)["commands"]) {
      for (const auto& k : c["signers"]) named = named || k == regulator.x500;
    }
    for (const auto& k : (*tx)["signed_by"]) named = named || k == regulator.x500;
    if (named) signed_by_regulator += "\n            " + label(t.id);
  }
  check("the regulator is in no transaction's signers (" + std::to_string(examined) + " transactions examined)",
        signed_by_regulator.empty() && examined == made_.size(), signed_by_regulator);
}

int Demo::run() {
  out_ << "CCAL demo: the cooperative economy on a network of separate processes\n"
       << "(tokenised deposits, membership credentials, an invoice financed once -- the notary sees to it;\n"
       << " a letter of credit, a mutual-aid loan and its credit record; what the regulator observes)\n\n"
       << std::flush;
  if (Status s = bootstrap(); !s) return fail(s.error().message);
  if (Status s = start(); !s) return fail(s.error().message);
  waitForLinks();

  Member& bank = member(bank_name);
  Member& seller = member(seller_name);
  Member& buyer = member(buyer_name);
  Member& rival = member(rival_name);

  // 1. Tokens.
  heading("1. " + shortName(bank.x500) + " issues settlement tokens (tokenised deposits, CNY)");
  struct Issue {
    Member* to;
    int64_t amount;
  };
  const std::vector<Issue> issues = {
      {&seller, seller_tokens}, {&buyer, buyer_tokens}, {&bank, bank_tokens}, {&rival, rival_tokens}};
  std::vector<std::string> issue_ids;
  for (const Issue& i : issues) {
    auto id = startFlow(bank, flows::token_issue_deal,
                        {"to=" + i.to->x500, "amount=" + std::to_string(i.amount), "currency=" + std::string(currency)});
    if (!id) return fail(bank.name + ": token.issue: " + id.error().message);
    issue_ids.push_back(*id);
  }
  for (size_t k = 0; k < issues.size(); ++k) {
    auto done = awaitFlow(bank, issue_ids[k]);
    if (!done) return fail(done.error().message);
    if (done->value("outcome", "") != "ok") return fail(bank.name + ": token.issue failed: " + errorOf(*done));
    say(bank.name + ": token.issue " + money(issues[k].amount) + " to " + shortName(issues[k].to->x500) + " -> tx " +
        txOf(*done).substr(0, 16));
    made(TxKind::token, "token.issue to " + issues[k].to->name, bank, txOf(*done));
  }
  for (Member* m : {&seller, &buyer}) showStates(*m, "token");

  // 2. Credentials.
  heading("2. Each cooperative issues the other a membership credential (the buyer of an invoice must hold one)");
  struct Credential {
    Member* by;
    Member* to;
  };
  const std::vector<Credential> credentials = {{&seller, &buyer}, {&buyer, &seller}};
  std::vector<std::string> credential_ids;
  for (const Credential& c : credentials) {
    auto id = startFlow(*c.by, flows::member_issue_deal,
                        {"member=" + c.to->x500, "name=" + shortName(c.to->x500), "role=member", "days=365"});
    if (!id) return fail(c.by->name + ": member.issue: " + id.error().message);
    credential_ids.push_back(*id);
  }
  for (size_t k = 0; k < credentials.size(); ++k) {
    auto done = awaitFlow(*credentials[k].by, credential_ids[k]);
    if (!done) return fail(done.error().message);
    if (done->value("outcome", "") != "ok") {
      return fail(credentials[k].by->name + ": member.issue failed: " + errorOf(*done));
    }
    say(credentials[k].by->name + ": member.issue to " + shortName(credentials[k].to->x500) + " -> tx " +
        txOf(*done).substr(0, 16));
    made(TxKind::member, "member.issue to " + credentials[k].to->name, *credentials[k].by, txOf(*done));
  }
  showStates(seller, "member");

  // 3. The invoice.
  const std::string due = todayPlusDays(invoice_due_days);
  heading("3. " + shortName(seller.x500) + " invoices " + shortName(buyer.x500) + " " + money(invoice_amount) +
          ", due " + due + "; the buyer acknowledges by signing");
  auto invoiced = runFlow(seller, flows::receivable_issue_deal,
                          {"buyer=" + buyer.x500, "amount=" + std::to_string(invoice_amount),
                           "currency=" + std::string(currency), "invoice=" + std::string(invoice_number), "due=" + due});
  if (!invoiced) return fail(invoiced.error().message);
  if (invoiced->value("outcome", "") != "ok") return fail(seller.name + ": receivable.issue failed: " + errorOf(*invoiced));
  say(seller.name + ": receivable.issue " + invoice_number + " to " + shortName(buyer.x500) +
      " (invoice number registered with the notary; buyer's credential referenced) -> tx " +
      txOf(*invoiced).substr(0, 16));
  made(TxKind::receivable, "receivable.issue " + std::string(invoice_number), seller, txOf(*invoiced));
  for (Member* m : {&seller, &buyer}) showStates(*m, "receivable");

  // 4. Two financings of the one invoice, running at the same time: the
  // credit union's starts once the bank's has shared the invoice and made
  // its offer, so both find the invoice live in the seller's vault, both are
  // signed by the seller, and the notary decides.
  heading("4. " + shortName(seller.x500) + " finances the invoice with " + shortName(bank.x500) +
          "; while that runs, a second financing of the same invoice, with " + shortName(rival.x500) + ", starts");
  struct Offer {
    Member* financier;
    int64_t advance;
    std::string id;
  };
  std::vector<Offer> offers = {{&bank, bank_advance, {}}, {&rival, rival_advance, {}}};
  for (size_t k = 0; k < offers.size(); ++k) {
    Offer& o = offers[k];
    auto id = startFlow(seller, flows::receivable_finance_deal,
                        {"invoice=" + std::string(invoice_number), "financier=" + o.financier->x500,
                         "advance=" + std::to_string(o.advance)});
    if (!id) return fail(seller.name + ": receivable.finance: " + id.error().message);
    o.id = *id;
    say(seller.name + ": receivable.finance " + invoice_number + " with " + shortName(o.financier->x500) +
        " for an advance of " + money(o.advance) + " (flow " + o.id.substr(0, 12) + ")");
    if (k + 1 == offers.size()) break;
    std::string step;
    const bool offered = eventually(
        [&] {
          auto shown = seller.client->get("/api/v1/flows/" + o.id);
          if (!shown) return false;
          step = shown->value("step", "");
          return step.rfind("offering", 0) == 0 || shown->value("phase", "") == "finished";
        },
        demo_flow_timeout_millis, demo_race_poll_millis);
    if (!offered) return fail(seller.name + "'s financing with " + o.financier->name + " did not reach its offer");
    say("  ... its step now: " + step);
  }
  std::vector<json> results;
  for (const Offer& o : offers) {
    auto done = awaitFlow(seller, o.id);
    if (!done) return fail(done.error().message);
    results.push_back(*done);
  }
  int winners = 0;
  size_t won = 0;
  for (size_t k = 0; k < offers.size(); ++k) {
    if (results[k].value("outcome", "") == "ok") {
      ++winners;
      won = k;
    }
  }
  if (winners != 1) {
    std::string why;
    for (size_t k = 0; k < offers.size(); ++k) {
      why += "\n  with " + offers[k].financier->name + ": " + results[k].value("outcome", "") + " " + errorOf(results[k]);
    }
    return fail(std::to_string(winners) + " financings of " + invoice_number + " succeeded, want exactly 1:" + why);
  }
  const size_t lost = 1 - won;
  Member& holder = *offers[won].financier;
  Member& loser = *offers[lost].financier;
  const int64_t advance = offers[won].advance;
  const std::string finance_tx = txOf(results[won]);
  made(TxKind::financing, "receivable.finance " + std::string(invoice_number) + " with " + holder.name, seller,
       finance_tx);
  say("financed by " + shortName(holder.x500) + ": advance " + money(advance) + " paid to " + shortName(seller.x500) +
      " in the same transaction -> tx " + finance_tx.substr(0, 16));
  const json refusal = results[lost].contains("error") ? results[lost]["error"] : json::object();
  say("refused: the financing with " + shortName(loser.x500) + " ended " + results[lost].value("outcome", "") + " with " +
      refusal.value("code", "?") + ":");
  detail(refusal.value("message", ""));
  if (&holder != &bank) {
    say("(this time the credit union's financing reached the notary first; the bank's was refused)");
  }
  for (Member* m : {&holder, &seller, &loser}) showStates(*m, "receivable", "all");
  detail("(" + loser.name + "'s copy, shared with it for its offer, still looks live in its vault: nobody told it "
         "otherwise; the notary, which every spend goes through, is what refused the second financing)");

  // 5. Settlement.
  heading("5. " + shortName(buyer.x500) + " settles the invoice with its current holder, " + shortName(holder.x500));
  auto settled = runFlow(buyer, flows::receivable_settle_deal,
                         {"invoice=" + std::string(invoice_number), "seller=" + seller.x500});
  if (!settled) return fail(settled.error().message);
  if (settled->value("outcome", "") != "ok") return fail(buyer.name + ": receivable.settle failed: " + errorOf(*settled));
  const std::string settle_tx = txOf(*settled);
  made(TxKind::settlement, "receivable.settle " + std::string(invoice_number), buyer, settle_tx);
  say(buyer.name + ": receivable.settle " + invoice_number + ": " + money(invoice_amount) + " paid to " +
      shortName(holder.x500) + "; the receivable is consumed -> tx " + settle_tx.substr(0, 16));
  showStates(holder, "receivable", "all");
  for (Member* m : {&buyer, &holder}) showStates(*m, "token");

  // The outcomes, each read from the node's own vault through its API.

  const std::map<Member*, int64_t> want = {
      {&seller, seller_tokens + advance},
      {&buyer, buyer_tokens - invoice_amount},
      {&holder, (&holder == &bank ? bank_tokens : rival_tokens) - advance + invoice_amount},
      {&loser, &loser == &bank ? bank_tokens : rival_tokens},
  };
  for (const auto& entry : want) checkBalance(*entry.first, entry.second, "after the settlement");
  auto receivableAt = [&](Member& m, const char* status) -> Result<json> {
    return query(m, {{"type", "receivable"},
                     {"status", status},
                     {"fields", {{{"name", "invoice"}, {"value", invoice_number}}}}});
  };
  {
    std::string seen;
    const bool ok = eventually([&] {
      auto all = receivableAt(holder, "all");
      auto live = receivableAt(holder, "unconsumed");
      if (!all || !live) return false;
      seen.clear();
      bool held_and_settled = false;
      for (const auto& s : (*all)["states"]) {
        seen += "\n            " + describe(s);
        if (s["fields"].value("holder", "") == holder.x500 && s.value("status", "") == "consumed" &&
            s.value("consumed_by", "") == settle_tx) {
          held_and_settled = true;
        }
      }
      return held_and_settled && (*live)["total"] == 0;
    });
    check("receivable " + std::string(invoice_number) + " held by " + holder.name + ", consumed by the settlement", ok,
          "in " + holder.name + "'s vault:" + seen);
  }
  for (Member* m : {&seller, &buyer}) {
    int64_t live = -1;
    const bool ok = eventually([&] {
      auto page = receivableAt(*m, "unconsumed");
      live = page ? (*page)["total"].get<int64_t>() : -1;
      return live == 0;
    });
    check("no live receivable " + std::string(invoice_number) + " at " + m->name, ok,
          std::to_string(live) + " unconsumed");
  }
  {
    const std::string code = refusal.value("code", ""), message = refusal.value("message", "");
    const bool ok = code == "conflict" && message.find("notary") != std::string::npos &&
                    message.find("consumed already") != std::string::npos;
    check("the financing with " + loser.name + " refused by the notary's conflict", ok, code + ": " + message);
  }

  // Part 2 (issue 8): a letter of credit, the mutual-aid fund, the regulator's view.
  if (Status s = runLetterOfCredit(); !s) return fail(s.error().message);
  if (Status s = runMutualAid(); !s) return fail(s.error().message);
  checkRegulator();

  heading("Summary: every expected outcome, read from the nodes' own vaults (POST /api/v1/vault/query)");
  for (Member* m : {&seller, &buyer, &bank, &rival}) {
    auto b = balance(*m);
    say(m->name + " holds " + (b ? money(*b) : "? (" + b.error().message + ")"));
  }
  size_t failed = 0;
  for (const Check& c : checks_) {
    out_ << "  [" << (c.ok ? " ok " : "FAIL") << "] " << c.what << (c.ok ? "" : ": " + c.detail) << "\n";
    if (!c.ok) ++failed;
  }
  out_ << std::flush;
  const double secs = std::chrono::duration<double>(Clock::now() - started_).count();
  char took[32];
  std::snprintf(took, sizeof took, "%.1f", secs);
  if (failed == 0) {
    say(std::to_string(checks_.size()) + " outcomes checked against the nodes' vaults: all as expected (" + took + " s)");
  } else {
    say(std::to_string(failed) + " of " + std::to_string(checks_.size()) + " outcomes NOT as expected");
  }
  stopUnlessKept();
  return failed == 0 ? 0 : 1;
}

}  // namespace

int runDealDemo(const DealDemoOptions& options, std::ostream& out) {
  Demo demo(options, out);
  return demo.run();
}

}  // namespace ccal::node
