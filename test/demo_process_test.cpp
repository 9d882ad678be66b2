// `ccal demo` as real processes (issues 7 and 8): the demo network of
// config/demo-network.toml on PortBlock ports, its narrated scenario run to
// the end with every outcome checked by the demo itself against the nodes'
// vaults (exit status 0 only then), left running with --keep so that this
// test reads the same vaults again with `ccal vault query` and
// `ccal credit report`, the CLI: the receivable, balances, the letter of
// credit, the borrower's credit record, and what the regulator holds.

#include <doctest/doctest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "test/support/network_processes.h"
#include "test/support/ports.h"
#include "test/support/temp_dir.h"

namespace fs = std::filesystem;
using namespace ccal;
using nlohmann::json;

namespace {

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

json queryJson(const fs::path& net, const std::string& node, const std::string& args) {
  auto run = testing::runCcalCapturing("vault query --dir " + net.string() + " --node " + node + " " + args +
                                       " --json 2>/dev/null");
  INFO(run.output);
  REQUIRE(run.exit_code == 0);
  return json::parse(run.output);
}

}  // namespace

TEST_CASE("ccal demo: the narrated scenario ends with every outcome checked; its vaults answer ccal vault query") {
  testing::TempDir tmp("ccal-demo");
  const fs::path net = fs::path(tmp.path).parent_path() / "net";
  testing::PortBlock ports(18);  // 9 members: p2p, then API
  testing::StopNetworkAtEnd stop_at_end{net};
  const std::string spec = std::string(CCAL_SOURCE_DIR) + "/config/demo-network.toml";

  auto demo = testing::runCcalCapturing("demo --spec " + spec + " --out " + net.string() + " --port-base " +
                                        std::to_string(ports.at(0)) + " --keep");
  MESSAGE(demo.output);
  REQUIRE(demo.exit_code == 0);
  // The story as told: who did what, the refusal with the notary's answer, the checks.
  for (const char* line : {"harbour-bank: token.issue 5,000.00 CNY to Haikou Fishing Cooperative",
                           "haikou-fishing: member.issue to Sanya Farmers Cooperative",
                           "haikou-fishing: receivable.issue HF-2026-0042 to Sanya Farmers Cooperative",
                           "ended failed with conflict:", "input states consumed already",
                           "sanya-farmers: receivable.settle HF-2026-0042",
                           "[ ok ] balance of haikou-fishing", "[ ok ] balance of sanya-farmers",
                           // Part 2: the letter of credit.
                           "haikou-fishing: lc.apply HB-LC-2026-0007: applies to Harbour Bank",
                           "harbour-bank: lc.issue HB-LC-2026-0007", "harbour-bank: lc.advise HB-LC-2026-0007",
                           "sanya-farmers: lc.present HB-LC-2026-0007", "the insurance certificate is missing",
                           "harbour-bank: lc.examine HB-LC-2026-0007: examines the presentation: discrepant",
                           "haikou-fishing: lc.waive HB-LC-2026-0007", "harbour-bank: lc.pay HB-LC-2026-0007",
                           "status discrepant", "status waived", "status paid",
                           "[ ok ] letter of credit HB-LC-2026-0007 paid (honoured) in sanya-farmers's vault",
                           "[ ok ] balance of sanya-farmers after the letter of credit",
                           // The mutual-aid fund, the loan and the credit report.
                           "haikou-fishing: loan.fund.create 'Hainan Cooperative Mutual Aid'",
                           "wenchang-credit-union: loan.fund.contribute 4,000.00 CNY",
                           "sanya-farmers: loan.request", "reviews the credit record in its vault: loans 0",
                           "would approve", "haikou-fishing: loan.approve with wenchang-credit-union",
                           "haikou-fishing: loan.disburse 6,000.00 CNY",
                           "loan.repay instalment 1: repayment_on_time", "loan.repay instalment 2: full_settlement",
                           "[ ok ] credit report of sanya-farmers at sanya-farmers",
                           "[ ok ] credit report of sanya-farmers at haikou-fishing",
                           "[ ok ] the fund's tokens in wenchang-credit-union's vault",
                           // The regulator.
                           "[ ok ] the regulator's vault holds states of exactly",
                           "[ ok ] by id: every granted transaction recorded at the regulator",
                           "[ ok ] the regulator is in no transaction's signers", "all as expected",
                           "The network keeps running (--keep)"}) {
    CHECK_MESSAGE(has(demo.output, line), line);
  }
  CHECK_FALSE(has(demo.output, "[FAIL]"));
  const std::string holder = has(demo.output, "financed by Harbour Bank") ? "harbour-bank" : "wenchang-credit-union";

  // The same outcomes through the CLI: the holder's settled receivable, the buyer's balance.
  // The holder's vault has the receivable as it was shared for financing (held by the seller, consumed by
  // the financing) and as financed (held by the financier, consumed by the settlement).
  json receivables = queryJson(net, holder, "--type receivable --status all --field invoice=HF-2026-0042");
  CHECK(receivables["total"] == 2);
  const std::string holder_x500 = holder == "harbour-bank" ? "O=Harbour Bank, L=Haikou, C=CN"
                                                           : "O=Wenchang Rural Credit Union, L=Wenchang, C=CN";
  int held = 0;
  for (const auto& r : receivables["states"]) {
    CHECK(r["status"] == "consumed");
    CHECK(r["fields"]["amount"] == 1200000);
    if (r["fields"]["holder"] == holder_x500) ++held;
  }
  CHECK(held == 1);
  CHECK(queryJson(net, holder, "--type receivable --field invoice=HF-2026-0042")["total"] == 0);
  json buyer_tokens = queryJson(net, "sanya-farmers", "--type ccal.token.TokenState --field owner=sanya-farmers");
  int64_t sum = 0;
  for (const auto& s : buyer_tokens["states"]) sum += s["fields"]["amount"].get<int64_t>();
  // 20,000.00 - 12,000.00 (the invoice) + 7,500.00 (the LC) - 2,000.00 (its contribution)
  // + 6,000.00 (the loan) - 6,180.00 (repaid with 3% interest)
  CHECK(sum == 1332000);
  json big = queryJson(net, "harbour-bank", "--type token --field 'amount>=5000000' --field owner=harbour-bank");
  CHECK(big["total"] == 1);  // the bank's own funds after the financing (or untouched)

  // The letter of credit, paid, as the beneficiary's vault holds it.
  json lc = queryJson(net, "sanya-farmers", "--type ccal.lc.LetterOfCreditState --field lc=HB-LC-2026-0007");
  REQUIRE(lc["total"] == 1);
  CHECK(lc["states"][0]["fields"]["status"] == "paid");
  CHECK(lc["states"][0]["fields"]["amount"] == 750000);

  // The borrower's credit record, from a committee member's vault.
  auto report = testing::runCcalCapturing("credit report --dir " + net.string() +
                                          " --node wenchang-credit-union --subject sanya-farmers --json 2>/dev/null");
  INFO(report.output);
  REQUIRE(report.exit_code == 0);
  json credit = json::parse(report.output);
  CHECK(credit["loans_taken"] == 1);
  CHECK(credit["repaid_on_time"] == 2);
  CHECK(credit["late"] == 0);
  CHECK(credit["defaulted"] == 0);
  CHECK(credit["settled"] == 1);

  // The regulator: every state of the letter of credit's seven transactions, observed; no credential (member
  // transactions are not granted it), nothing it participates in.
  json reg_lc = queryJson(net, "regulator", "--type ccal.lc.LetterOfCreditState --status all");
  CHECK(reg_lc["total"] == 7);
  for (const auto& s : reg_lc["states"]) CHECK(s["relevance"] == "observed");
  CHECK(queryJson(net, "regulator", "--type member --status all")["total"] == 0);
  CHECK(queryJson(net, "regulator", "--type ccal.loan.CreditRecord --status all")["total"] == 2);

  // The human table, and a bad field named in the error.
  auto table = testing::runCcalCapturing("vault query --dir " + net.string() +
                                         " --node sanya-farmers --type member --status all");
  CHECK(table.exit_code == 0);
  CHECK_MESSAGE(has(table.output, "LEGAL_NAME"), table.output);
  CHECK_MESSAGE(has(table.output, "Sanya Farmers Cooperative"), table.output);
  auto bad = testing::runCcalCapturing("vault query --dir " + net.string() +
                                       " --node sanya-farmers --type token --field colour=red");
  CHECK(bad.exit_code == 1);
  CHECK_MESSAGE(has(bad.output, "unknown field 'colour'"), bad.output);
}
