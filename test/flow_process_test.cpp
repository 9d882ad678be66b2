// The flow runtime in real `ccal node run` processes (issue 6): diagnostic
// ping flows between three members through the control API and the CLI; an
// initiator and then a responder killed with SIGKILL in the middle of a flow
// and restarted with `ccal network start`, after which the flow ends once,
// ok, with the result an uninterrupted run gives, and the responder took each
// ping once and in order; `ccal flow kill` of a sleeping flow, seen on both
// sides; clear errors for an unknown flow, malformed arguments and a bad id.

#include <doctest/doctest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <string>

#include "flows/flow_runtime.h"
#include "node/api_client.h"
#include "node/config.h"
#include "test/support/network_processes.h"
#include "test/support/network_doctest.h"
#include "test/support/ports.h"
#include "test/support/test_network.h"
#include "test/support/temp_dir.h"

namespace fs = std::filesystem;
using namespace ccal;
using namespace ccal::node;
using testing::pidOf;
using testing::runCcal;
using testing::clientOf;
using testing::startNetwork;
using testing::waitUntil;
using testing::x500Of;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {

fs::path bootstrap(const testing::TempDir& tmp, const testing::PortBlock& ports) {
  fs::path dir = fs::path(tmp.path).parent_path();
  auto made = testing::bootstrapTestNetwork(
      dir,
      {{"alpha", "O=alpha Cooperative, L=Haikou, C=CN"}, {"beta", "O=beta Cooperative, L=Haikou, C=CN"},
       {"gamma", "O=gamma Cooperative, L=Haikou, C=CN"}},
      {}, ports);
  REQUIRE_MESSAGE(made.exit_code == 0, made.output);
  return dir / "net";
}

// Starts diagnostic.ping on `node`; its id (the start is durable).
std::string startPing(const ApiClient& node, const json& args) {
  auto started = node.post("/api/v1/flows", {{"name", "diagnostic.ping"}, {"args", args}});
  REQUIRE_MESSAGE(started, started.error().toString());
  return (*started)["id"].get<std::string>();
}

// The flow's status on `node` (null while the node does not answer).
json show(const ApiClient& node, const std::string& id) {
  auto shown = node.get("/api/v1/flows/" + id);
  return shown ? *shown : json();
}

// Waits until the flow has finished on `node`; its status.
json finished(const ApiClient& node, const std::string& id, std::chrono::seconds timeout = 60s) {
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

// The responder flow that the first session of initiator flow `id` started.
std::string responderOf(const std::string& id) {
  auto opener = SecureHash::fromHex(id);
  REQUIRE(opener);
  return flows::responderFlowId(*opener, 0).hex();
}

json counting(uint32_t n) {
  json list = json::array();
  for (uint32_t i = 0; i < n; ++i) list.push_back(i);
  return list;
}

}  // namespace

TEST_CASE("flows in a real network: API and CLI, crashes of either side, kill, bad input") {
  testing::TempDir tmp("ccal-flownet");
  testing::PortBlock ports(6);
  fs::path net = bootstrap(tmp, ports);
  startNetwork(net);
  testing::StopNetworkAtEnd stop_at_end{net};

  ApiClient alpha = clientOf(net, "alpha");
  ApiClient beta = clientOf(net, "beta");
  ApiClient gamma = clientOf(net, "gamma");
  const std::string alpha_x500 = x500Of(net, "alpha"), beta_x500 = x500Of(net, "beta"),
                    gamma_x500 = x500Of(net, "gamma");
  const std::string at_alpha = " --dir " + net.string() + " --node alpha";

  // --- a ping through the API ------------------------------------------------------
  {
    std::string id = startPing(alpha, {{"peer", beta_x500}, {"count", 3}, {"text", "hello"}});
    json flow = finished(alpha, id);
    CHECK(flow["outcome"] == "ok");
    CHECK(flow["result"] == json({{"peer", beta_x500}, {"count", 3}, {"echoes", 3}, {"text", "hello"}}));
    CHECK(flow["events_journaled"].get<uint64_t>() >= 3);
    json pong = finished(beta, responderOf(id));
    CHECK(pong["outcome"] == "ok");
    CHECK(pong["result"]["received"] == counting(3));
    CHECK(pong["result"]["from"] == alpha_x500);
  }

  // --- the CLI: start --wait, list, show -----------------------------------------
  {
    auto run = testing::runCcalCapturing("flow start diagnostic.ping --dir " + net.string() +
                                         " --node gamma --args '{\"peer\":\"alpha\",\"count\":2}' "
                                         "--wait --json");
    INFO(run.output);
    REQUIRE(run.exit_code == 0);
    json flow = json::parse(run.output, nullptr, false);
    REQUIRE(flow.is_object());
    CHECK(flow["outcome"] == "ok");
    CHECK(flow["result"]["peer"] == alpha_x500);  // "alpha" resolved through --dir
    CHECK(flow["result"]["echoes"] == 2);
    const std::string id = flow["id"];

    // key=value arguments (integers become numbers, the peer a member folder's X.500 name); waits by default.
    auto by_key = testing::runCcalCapturing("flow start diagnostic.ping peer=alpha count=1 text=hi --json --dir " +
                                            net.string() + " --node gamma");
    INFO(by_key.output);
    REQUIRE(by_key.exit_code == 0);
    json keyed = json::parse(by_key.output, nullptr, false);
    REQUIRE(keyed.is_object());
    CHECK(keyed["status"] == "completed");
    CHECK(keyed["result"]["peer"] == alpha_x500);
    CHECK(keyed["result"]["echoes"] == 1);
    CHECK(keyed["result"]["text"] == "hi");
    auto both = testing::runCcalCapturing("flow start diagnostic.ping peer=alpha --args '{}' --dir " +
                                          net.string() + " --node gamma");
    CHECK(both.exit_code == 1);
    CHECK_MESSAGE(both.output.find("one of them") != std::string::npos, both.output);

    // The hospital: nothing parked; a finished flow cannot be retried (409 naming why).
    auto parked = testing::runCcalCapturing("flow list --state parked --json --dir " + net.string() + " --node gamma");
    INFO(parked.output);
    CHECK(parked.exit_code == 0);
    CHECK(json::parse(parked.output, nullptr, false)["flows"].empty());
    auto retried = testing::runCcalCapturing("flow retry " + keyed["id"].get<std::string>() + " --dir " +
                                             net.string() + " --node gamma");
    CHECK(retried.exit_code == 1);
    CHECK_MESSAGE(retried.output.find("not in the hospital") != std::string::npos, retried.output);

    auto listed = testing::runCcalCapturing("flow list --state ok --name diagnostic.ping --json --dir " +
                                            net.string() + " --node gamma");
    json list = json::parse(listed.output, nullptr, false);
    REQUIRE_MESSAGE(list.is_object(), listed.output);
    bool found = false;
    for (const auto& f : list["flows"]) found = found || f["id"] == id;
    CHECK(found);
    CHECK(list["stats"]["flows_started"].get<uint64_t>() >= 1);

    auto shown = testing::runCcalCapturing("flow show " + id + " --dir " + net.string() + " --node gamma");
    CHECK(shown.exit_code == 0);
    CHECK_MESSAGE(shown.output.find("finished (ok)") != std::string::npos, shown.output);
    CHECK_MESSAGE(shown.output.find("\"echoes\":2") != std::string::npos, shown.output);
  }

  // --- bad input ---------------------------------------------------------------------
  {
    json unknown_body = {{"name", "no.such.flow"}};
    auto unknown = alpha.exchange(HttpMethod::post, "/api/v1/flows", &unknown_body);
    REQUIRE(unknown);
    CHECK(unknown->status == 404);
    CHECK(unknown->body["error"]["message"].get<std::string>().find("no.such.flow") != std::string::npos);
    auto cli = testing::runCcalCapturing("flow start no.such.flow" + at_alpha);
    CHECK(cli.exit_code == 1);
    CHECK_MESSAGE(cli.output.find("no flow 'no.such.flow' is registered") != std::string::npos, cli.output);

    json no_peer = {{"name", "diagnostic.ping"}, {"args", {{"count", 2}}}};
    auto malformed = alpha.exchange(HttpMethod::post, "/api/v1/flows", &no_peer);
    REQUIRE(malformed);
    CHECK(malformed->status == 400);
    CHECK(malformed->body["error"]["message"].get<std::string>().find("'peer'") != std::string::npos);
    json bad_count = {{"name", "diagnostic.ping"}, {"args", {{"peer", beta_x500}, {"count", 0}}}};
    auto over = alpha.exchange(HttpMethod::post, "/api/v1/flows", &bad_count);
    REQUIRE(over);
    CHECK(over->status == 400);
    CHECK(over->body["error"]["message"].get<std::string>().find("'count'") != std::string::npos);

    auto bad_id = alpha.exchange(HttpMethod::get, "/api/v1/flows/xyz", nullptr);
    REQUIRE(bad_id);
    CHECK(bad_id->status == 400);
    CHECK(bad_id->body["error"]["message"].get<std::string>().find("'xyz' is not a flow id") !=
          std::string::npos);
    auto missing = alpha.exchange(HttpMethod::get, "/api/v1/flows/" + std::string(64, 'a'), nullptr);
    REQUIRE(missing);
    CHECK(missing->status == 404);
    auto kill_missing = testing::runCcalCapturing("flow kill " + std::string(64, 'b') + at_alpha);
    CHECK(kill_missing.exit_code == 1);
    CHECK_MESSAGE(kill_missing.output.find("is not running") != std::string::npos, kill_missing.output);
  }

  // --- the initiator killed with SIGKILL mid-flow ------------------------------------
  {
    const json args = {{"peer", beta_x500}, {"count", 10}, {"sleep_micros", 250'000}, {"text", "crash"}};
    std::string id = startPing(alpha, args);
    json before;
    REQUIRE(waitUntil(
        [&] {
          before = show(alpha, id);
          return before.is_object() && before["events_journaled"].get<uint64_t>() >= 4;
        },
        30s));
    CHECK(before["phase"] != "finished");
    pid_t alpha_pid = pidOf(net, "alpha");
    REQUIRE(alpha_pid > 0);
    REQUIRE(::kill(alpha_pid, SIGKILL) == 0);
    auto killed_at = std::chrono::steady_clock::now();
    startNetwork(net);
    CHECK(pidOf(net, "alpha") != alpha_pid);
    json flow = finished(alpha, id);
    MESSAGE("initiator: SIGKILL to the flow's end after restart "
            << std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                                     killed_at)
                   .count()
            << " ms");
    INFO(flow.dump());
    CHECK(flow["outcome"] == "ok");
    CHECK(flow["result"] ==
          json({{"peer", beta_x500}, {"count", 10}, {"echoes", 10}, {"text", "crash"}}));
    json pong = finished(beta, responderOf(id));
    INFO(pong.dump());
    CHECK(pong["outcome"] == "ok");
    CHECK(pong["result"]["received"] == counting(10));
    auto list = alpha.get("/api/v1/flows?state=running");
    REQUIRE(list);
    CHECK((*list)["stats"]["flows_resumed"].get<uint64_t>() >= 1);
  }

  // --- the responder killed with SIGKILL mid-flow ------------------------------------
  {
    const json args = {{"peer", gamma_x500}, {"count", 8}, {"responder_sleep_micros", 250'000}};
    std::string id = startPing(alpha, args);
    const std::string pong_id = responderOf(id);
    json pong_before;
    REQUIRE(waitUntil(
        [&] {
          pong_before = show(gamma, pong_id);
          return pong_before.is_object() && pong_before["events_journaled"].get<uint64_t>() >= 4;
        },
        30s));
    CHECK(pong_before["phase"] != "finished");
    pid_t gamma_pid = pidOf(net, "gamma");
    REQUIRE(gamma_pid > 0);
    REQUIRE(::kill(gamma_pid, SIGKILL) == 0);
    startNetwork(net);
    json flow = finished(alpha, id);
    INFO(flow.dump());
    CHECK(flow["outcome"] == "ok");
    CHECK(flow["result"] == json({{"peer", gamma_x500}, {"count", 8}, {"echoes", 8}, {"text", ""}}));
    json pong = finished(gamma, pong_id);
    INFO(pong.dump());
    CHECK(pong["outcome"] == "ok");
    CHECK(pong["result"]["received"] == counting(8));
    auto list = gamma.get("/api/v1/flows?name=diagnostic.pong");
    REQUIRE(list);
    CHECK((*list)["stats"]["flows_resumed"].get<uint64_t>() >= 1);
  }

  // --- `ccal flow kill` of a sleeping flow: killed here, ended with it there ------------
  {
    std::string id =
        startPing(alpha, {{"peer", beta_x500}, {"count", 4}, {"sleep_micros", 60'000'000}});
    REQUIRE(waitUntil(
        [&] {
          json f = show(alpha, id);
          return f.is_object() && f.value("step", "").find("sleeping") == 0;
        },
        30s));
    auto killed = testing::runCcalCapturing("flow kill " + id + " --reason 'test over'" + at_alpha);
    INFO(killed.output);
    CHECK(killed.exit_code == 0);
    json flow = finished(alpha, id, 20s);
    INFO(flow.dump());
    CHECK(flow["outcome"] == "killed");
    CHECK(flow["error"]["message"].get<std::string>().find("test over") != std::string::npos);
    json pong = finished(beta, responderOf(id), 20s);
    INFO(pong.dump());
    // The counterparty's session ended with the kill's error: its flow fails with it.
    CHECK(pong["outcome"] == "failed");
    CHECK(pong["error"]["message"].get<std::string>().find("was killed: killed by admin: test over") !=
          std::string::npos);
    // A second kill: it is not running any more.
    auto again = testing::runCcalCapturing("flow kill " + id + at_alpha + " --json");
    CHECK(again.exit_code == 1);
    CHECK_MESSAGE(again.output.find("\"not_found\"") != std::string::npos, again.output);
  }
}
