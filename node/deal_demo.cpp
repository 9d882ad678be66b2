#include "node/deal_demo.h"

#include <chrono>
#include <cstdio>
#include <ctime>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <ostream>
#include <thread>
#include <vector>

#include "flows/deal_flows.h"
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
  static std::string txOf(const json& flow) {
    auto bytes = base64Decode(flow.value("result_base64", ""));
    if (!bytes || bytes->size() != 32) return "?";
    return SecureHash::fromBytes(*bytes).value().hex();
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

int Demo::run() {
  out_ << "CCAL demo: the cooperative economy on a network of separate processes\n"
       << "(tokenised deposits, membership credentials, an invoice financed once -- the notary sees to it)\n\n"
       << std::flush;
  if (Status s = bootstrap(); !s) return fail(s.error().message);
  if (Status s = start(); !s) return fail(s.error().message);
  waitForLinks();

  Member& bank = member(bank_name);
  Member& seller = member(seller_name);
  Member& buyer = member(buyer_name);
  Member& rival = member(rival_name);
  Member& regulator = member(regulator_name);

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
  for (const auto& entry : want) {
    Member* who = entry.first;
    const int64_t expected = entry.second;
    int64_t have = -1;
    const bool ok = eventually([&] {
      auto b = balance(*who);
      have = b ? *b : -1;
      return have == expected;
    });
    check("balance of " + who->name, ok, "holds " + money(have) + ", expected " + money(expected));
  }
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
  {
    bool ok = eventually([&] {
      auto tx = regulator.client->get("/api/v1/vault/transactions/" + settle_tx);
      return tx.ok();
    });
    check("the regulator observed the settlement", ok, "transaction " + settle_tx.substr(0, 16) + " in its vault");
  }

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
