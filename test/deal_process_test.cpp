// Deals between real `ccal` processes (issues 6 and 7): a bank issues
// settlement tokens to a cooperative, which pays another cooperative; the
// payment is notarised by a four-replica BFT notary (separate processes)
// and the regulator, named by the network's observer rules, records both.
// The paying cooperative is killed with SIGKILL between the notary's
// signature and finality (the fault point CCAL_FAULT_KILL_AT_STEP, see
// node/flow_service.cpp) and restarted; the flow finishes once, and every vault holds exactly the
// states it should (read from the LMDB files after the network stops).

#include <signal.h>

#include <doctest/doctest.h>

#include <chrono>
#include <filesystem>
#include <string>

#include "contracts/contracts.h"
#include "flows/deal_flows.h"
#include "node/api_client.h"
#include "node/config.h"
#include "node/notary_service.h"
#include "test/support/network_doctest.h"
#include "test/support/network_processes.h"
#include "test/support/ports.h"
#include "test/support/temp_dir.h"
#include "test/support/test_network.h"
#include "vault/vault.h"

namespace fs = std::filesystem;
using namespace ccal;
using namespace ccal::node;
using namespace std::chrono_literals;
using nlohmann::json;
using testing::clientOf;
using testing::pidOf;
using testing::runCcal;
using testing::startNetwork;
using testing::waitUntil;
using testing::x500Of;

namespace {

fs::path bootstrap(const testing::TempDir& tmp, const testing::PortBlock& ports) {
  fs::path dir = fs::path(tmp.path).parent_path();
  auto made = testing::bootstrapTestNetwork(
      dir,
      {{"alpha", "O=Alpha Fishing Cooperative, L=Haikou, C=CN"},
       {"beta", "O=Beta Farmers Cooperative, L=Sanya, C=CN"},
       {"bank", "O=Harbour Test Bank, L=Haikou, C=CN"},
       {"regulator", "O=Test Regulator, L=Beijing, C=CN", "regulator"},
       {"r1", "O=r1 Replica, L=Haikou, C=CN", "notary-replica"},
       {"r2", "O=r2 Replica, L=Haikou, C=CN", "notary-replica"},
       {"r3", "O=r3 Replica, L=Haikou, C=CN", "notary-replica"},
       {"r4", "O=r4 Replica, L=Haikou, C=CN", "notary-replica"}},
      {{"notary", "O=Test Notary, L=Haikou, C=CN", 1, false, {"r1", "r2", "r3", "r4"}}}, ports,
      {{"regulator", {"alpha", "beta"}, {}}});
  REQUIRE_MESSAGE(made.exit_code == 0, made.output);
  return dir / "net";
}

// Starts deal flow `name` with key=value arguments on `node`; its id.
std::string startDeal(const ApiClient& node, const std::string& name, const std::vector<std::string>& key_values) {
  auto args = flows::parseDealArgs(name, key_values);
  REQUIRE_MESSAGE(args, args.error().toString());
  auto started = node.post("/api/v1/flows", {{"name", name}, {"args_base64", base64Encode(flows::encodeDealArgs(*args))}});
  REQUIRE_MESSAGE(started, started.error().toString());
  return (*started)["id"].get<std::string>();
}

json show(const ApiClient& node, const std::string& id) {
  auto shown = node.get("/api/v1/flows/" + id);
  return shown ? *shown : json();
}

json finished(const ApiClient& node, const std::string& id, std::chrono::seconds timeout = 120s) {
  json last;
  bool done = waitUntil(
      [&] {
        last = show(node, id);
        return last.is_object() && last.value("phase", "") == "finished";
      },
      timeout);
  INFO(last.dump());
  REQUIRE(done);
  return last;
}

SecureHash txIdOf(const json& flow) {
  INFO(flow.dump());
  REQUIRE(flow.value("outcome", "") == "ok");
  auto bytes = base64Decode(flow.value("result_base64", ""));
  REQUIRE(bytes);
  REQUIRE(bytes->size() == SecureHash::size_bytes);
  return SecureHash::fromBytes(*bytes).value();
}

// Token states of `amount` in a member's vault (its LMDB files, the network stopped).
uint64_t tokensOf(const vault::Vault& v, int64_t amount, vault::StatusFilter status) {
  auto page = v.query(vault::Query(vault::Criteria::field(std::string(contracts::token_state_type), "amount",
                                                          vault::FieldOp::eq, {FieldValue(amount)}),
                                   status));
  REQUIRE_MESSAGE(page, page.error().toString());
  return page->total;
}

}  // namespace

TEST_CASE("a token payment between cooperatives survives SIGKILL of the payer; notarised once, recorded by all") {
  testing::TempDir tmp("ccal-dealnet");
  testing::PortBlock ports(16);
  fs::path net = bootstrap(tmp, ports);
  // The nodes start with the fault point armed: a node kills itself (SIGKILL)
  // once an event is journaled for its token.move flow at finality's
  // "recording" step -- the notary's answer, journaled before the vault
  // records -- i.e. after the notary signed and before finality recorded or
  // sent anything. Only alpha runs a token.move.
  ::setenv("CCAL_FAULT_KILL_AT_STEP", "finality: recording", 1);
  ::setenv("CCAL_FAULT_KILL_IN_FLOW", "token.move", 1);
  startNetwork(net);
  ::unsetenv("CCAL_FAULT_KILL_AT_STEP");
  ::unsetenv("CCAL_FAULT_KILL_IN_FLOW");
  testing::StopNetworkAtEnd stop_at_end{net};

  ApiClient alpha = clientOf(net, "alpha", 120'000'000), bank = clientOf(net, "bank", 120'000'000);
  const std::string alpha_x500 = x500Of(net, "alpha"), beta_x500 = x500Of(net, "beta");

  // The bank issues 10,000.00 EUR to alpha, from the command line (key=value
  // arguments, the holder named by its member folder; the CLI waits for the end).
  const std::string at_bank = " --dir " + net.string() + " --node bank";
  auto refused = testing::runCcalCapturing("flow start token.issue to=alpha amount=12x currency=EUR" + at_bank);
  CHECK(refused.exit_code == 1);
  CHECK_MESSAGE(refused.output.find("'amount'") != std::string::npos, refused.output);
  auto issued = testing::runCcalCapturing("flow start token.issue to=alpha amount=1000000 currency=EUR --json" +
                                          at_bank);
  INFO(issued.output);
  REQUIRE(issued.exit_code == 0);
  const json issue_flow = json::parse(issued.output, nullptr, false);
  REQUIRE(issue_flow.is_object());
  CHECK(issue_flow["status"] == "completed");
  const SecureHash issue_id = txIdOf(finished(bank, issue_flow["id"].get<std::string>()));
  CHECK(issue_flow["transaction_id"] == issue_id.hex());

  // Alpha pays beta 2,500.00 EUR (change 7,500.00 back); it kills itself between
  // the notary's signature and finality.
  const pid_t alpha_pid = pidOf(net, "alpha");
  REQUIRE(alpha_pid > 0);
  const std::string pay = startDeal(alpha, "token.move", {"to=" + beta_x500, "amount=250000", "currency=EUR"});
  REQUIRE_MESSAGE(waitUntil([&] { return ::kill(alpha_pid, 0) != 0; }, 60s),
                  "the payer did not stop at the fault point");
  MESSAGE("payer killed by SIGKILL between notarisation and finality");
  {  // Finality sent nothing before the kill: beta has received no transaction.
    ApiClient beta = clientOf(net, "beta");
    auto received = beta.get("/api/v1/flows?name=ccal.ReceiveFinality");
    REQUIRE_MESSAGE(received, received.error().toString());
    CHECK((*received)["flows"].empty());
  }
  startNetwork(net);  // only alpha was down; restarted without the fault point
  alpha = clientOf(net, "alpha", 120'000'000);
  const SecureHash pay_id = txIdOf(finished(alpha, pay));
  CHECK(pay_id != issue_id);

  // Beta and the regulator have finished recording it.
  for (const char* member : {"beta", "regulator"}) {
    ApiClient node = clientOf(net, member);
    CHECK_MESSAGE(waitUntil(
                      [&] {
                        auto list = node.get("/api/v1/flows?name=ccal.ReceiveFinality&state=ok");
                        if (!list) return false;
                        int recorded = 0;
                        for (const auto& f : (*list)["flows"]) {
                          if (f.value("step", "").find(pay_id.hex()) != std::string::npos) ++recorded;
                        }
                        return recorded >= 1;
                      },
                      60s),
                  member);
  }
  // The regulator observes only: a deal started on it is refused, saying why.
  auto by_regulator = testing::runCcalCapturing("flow start token.move to=beta amount=1 currency=EUR --json --dir " +
                                                net.string() + " --node regulator");
  INFO(by_regulator.output);
  CHECK(by_regulator.exit_code != 0);
  CHECK(by_regulator.output.find("is a regulator") != std::string::npos);
  REQUIRE(runCcal("network stop --dir " + net.string()) == 0);

  // The vaults, from their files: the payment once, the right states in each.
  ContractRegistry registry;
  contracts::registerDealContracts(registry);
  auto openVault = [&](const std::string& member) {
    auto config = loadNodeConfig(net / member / "node.toml");
    REQUIRE(config);
    vault::VaultConfig vc;
    vc.store.path = config->vault_dir.string();
    auto v = vault::Vault::open(vc, registry, {});
    REQUIRE_MESSAGE(v, v.error().toString());
    return std::move(*v);
  };
  using vault::StatusFilter;
  {
    auto v = openVault("alpha");
    CHECK(v->hasTransaction(issue_id));
    CHECK(v->hasTransaction(pay_id));
    CHECK(tokensOf(*v, 1000000, StatusFilter::consumed) == 1);
    CHECK(tokensOf(*v, 750000, StatusFilter::unconsumed) == 1);  // the change
    CHECK(tokensOf(*v, 250000, StatusFilter::all) == 0);         // beta's, not alpha's
  }
  {
    auto v = openVault("beta");
    CHECK(v->hasTransaction(pay_id));
    CHECK(v->hasTransaction(issue_id));  // its backchain
    CHECK(tokensOf(*v, 250000, StatusFilter::unconsumed) == 1);
    CHECK(tokensOf(*v, 750000, StatusFilter::all) == 0);
  }
  {
    auto v = openVault("regulator");  // an observer records every output
    CHECK(v->hasTransaction(issue_id));
    CHECK(v->hasTransaction(pay_id));
    CHECK(tokensOf(*v, 1000000, StatusFilter::consumed) == 1);
    CHECK(tokensOf(*v, 750000, StatusFilter::unconsumed) == 1);
    CHECK(tokensOf(*v, 250000, StatusFilter::unconsumed) == 1);
  }
  {
    auto v = openVault("bank");  // the issuer: the issuance, not the payment between cooperatives
    CHECK(v->hasTransaction(issue_id));
    CHECK_FALSE(v->hasTransaction(pay_id));
  }
}
