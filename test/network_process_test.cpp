// Multi-process test of a real network on loopback: `ccal network bootstrap`
// and `ccal network start` run separate `ccal node run` processes that talk
// TLS to each other; a stream of messages keeps flowing while its receiver is
// killed with SIGKILL and restarted, and every message arrives, is stored
// once, in order.

#include <doctest/doctest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include "node/api_client.h"
#include "node/api_users.h"
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

std::string readFileText(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// A network of three members on ports no other test uses at the same time.
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

// Each peer's connection state in a member's view, by X.500 name.
std::map<std::string, std::string> peerStates(ApiClient& client) {
  std::map<std::string, std::string> states;
  if (auto peers = client.get("/api/v1/peers")) {
    for (const auto& p : (*peers)["peers"]) states[p["legal_name"]] = p["state"];
  }
  return states;
}

}  // namespace

TEST_CASE("a real network: messages survive kill -9 of the receiver, once each and in order") {
  testing::TempDir tmp("ccal-net");
  testing::PortBlock ports(10);  // 9: where beta moves to
  fs::path net = bootstrap(tmp, ports);
  startNetwork(net);
  testing::StopNetworkAtEnd stop_at_end{net};

  ApiClient alpha = clientOf(net, "alpha");
  std::string alpha_x500 = x500Of(net, "alpha"), beta_x500 = x500Of(net, "beta");

  // The peers connect.
  CHECK(waitUntil(
      [&] {
        auto peers = alpha.get("/api/v1/peers");
        if (!peers) return false;
        for (const auto& p : (*peers)["peers"]) {
          if (p["state"] != "connected") return false;
        }
        return true;
      },
      30s));

  constexpr uint64_t total = 2400, chunk = 200;
  uint64_t sent = 0;
  auto sendChunk = [&] {
    auto queued = alpha.post("/api/v1/messages/diagnostic",
                             {{"to", beta_x500}, {"stream", "s"}, {"start", sent}, {"count", chunk},
                              {"text", "message"}});
    REQUIRE_MESSAGE(queued, queued.error().message);
    sent += chunk;
  };
  while (sent < total / 3) sendChunk();

  // Kill the receiver mid-stream; the sender keeps queueing (store and forward).
  pid_t beta_pid = pidOf(net, "beta");
  REQUIRE(beta_pid > 0);
  REQUIRE(::kill(beta_pid, SIGKILL) == 0);
  while (sent < 2 * total / 3) sendChunk();
  // Start the network again: only beta is down, so only beta starts.
  startNetwork(net);
  CHECK(pidOf(net, "beta") != beta_pid);
  while (sent < total) sendChunk();

  ApiClient beta = clientOf(net, "beta");
  json check;
  CHECK(waitUntil(
      [&] {
        auto r = beta.post("/api/v1/messages/diagnostic/check",
                           {{"from", alpha_x500}, {"stream", "s"}, {"count", total}});
        if (!r) return false;
        check = *r;
        return check["stored"] == total && check["consumed"] == total;
      },
      90s));
  INFO(check.dump());
  CHECK(check["stored"] == total);
  CHECK(check["missing_first"].empty());

  // Since its restart, beta was handed each message once, in sequence.
  auto status = beta.get("/api/v1/messages/diagnostic");
  REQUIRE(status);
  INFO(status->dump());
  for (const auto& s : (*status)["streams"]) {
    CHECK(s["gaps"] == 0);
    CHECK(s["repeated"] == 0);
    CHECK(s["next"] == total);
    CHECK(s["delivered"].get<uint64_t>() == total - s["first"].get<uint64_t>());
  }
  // And the sender's outbox drains: every message acknowledged.
  CHECK(waitUntil(
      [&] {
        auto peers = alpha.get("/api/v1/peers");
        if (!peers) return false;
        for (const auto& p : (*peers)["peers"]) {
          if (p.value("outbox_messages", uint64_t{1}) != 0) return false;
        }
        return true;
      },
      30s));

  // beta moves to another port: at start it signs a newer node info and
  // tells its peers, and alpha's messages follow it there.
  {
    pid_t old_beta = pidOf(net, "beta");
    REQUIRE(::kill(old_beta, SIGTERM) == 0);
    REQUIRE(waitUntil([&] { return ::kill(old_beta, 0) != 0; }, 30s));
    fs::path toml = net / "beta" / "node.toml";
    std::ifstream in(toml);
    std::stringstream text;
    text << in.rdbuf();
    in.close();
    std::string config = text.str();
    std::string old_port = std::to_string(ports.at(1));
    std::string new_port = std::to_string(ports.at(9));
    for (size_t at; (at = config.find("127.0.0.1:" + old_port)) != std::string::npos;) {
      config.replace(at, 10 + old_port.size(), "127.0.0.1:" + new_port);
    }
    std::ofstream(toml) << config;
  }
  startNetwork(net);
  auto moved = alpha.post("/api/v1/messages/diagnostic",
                          {{"to", beta_x500}, {"stream", "moved"}, {"count", 100}});
  REQUIRE_MESSAGE(moved, moved.error().message);
  CHECK(waitUntil(
      [&] {
        auto r = beta.post("/api/v1/messages/diagnostic/check",
                           {{"from", alpha_x500}, {"stream", "moved"}, {"count", 100}});
        return r && (*r)["consumed"] == 100;
      },
      60s));
  auto peers = alpha.get("/api/v1/peers");
  REQUIRE(peers);
  INFO(peers->dump());
  bool seen_new_address = false;
  for (const auto& p : (*peers)["peers"]) {
    if (p["legal_name"] == beta_x500) {
      seen_new_address = p["address"].get<std::string>().find(
                             std::to_string(ports.at(9))) !=
                         std::string::npos;
    }
  }
  CHECK(seen_new_address);

  REQUIRE(runCcal("network stop --dir " + net.string()) == 0);
  CHECK_FALSE(fs::exists(net / "alpha" / "run" / "node.pid"));
}

TEST_CASE("a real network: `ccal network revoke` — running members drop the member, no restarts") {
  testing::TempDir tmp("ccal-net-revoke");
  testing::PortBlock ports(10);
  fs::path net = bootstrap(tmp, ports);
  startNetwork(net);
  testing::StopNetworkAtEnd stop_at_end{net};
  ApiClient alpha = clientOf(net, "alpha");
  const std::string beta_x500 = x500Of(net, "beta"), gamma_x500 = x500Of(net, "gamma");
  auto alphaPeers = [&] { return peerStates(alpha); };
  REQUIRE(waitUntil(
      [&] {
        auto s = alphaPeers();
        return s[beta_x500] == "connected" && s[gamma_x500] == "connected";
      },
      30s));
  const pid_t beta_pid = pidOf(net, "beta");

  // Bad input first: an unknown member; nothing is written.
  const std::string crls_before = readFileText(net / "alpha" / "certs" / "crls.pem");
  auto unknown =
      testing::runCcalCapturing("network revoke --dir " + net.string() + " --member nobody");
  CHECK(unknown.exit_code != 0);
  CHECK(unknown.output.find("'nobody' is not a member folder") != std::string::npos);
  CHECK(readFileText(net / "alpha" / "certs" / "crls.pem") == crls_before);

  auto revoked =
      testing::runCcalCapturing("network revoke --dir " + net.string() + " --member beta");
  INFO(revoked.output);
  REQUIRE(revoked.exit_code == 0);
  CHECK(revoked.output.find(beta_x500) != std::string::npos);
  CHECK(readFileText(net / "alpha" / "certs" / "crls.pem") != crls_before);
  auto again = testing::runCcalCapturing("network revoke --dir " + net.string() + " --member beta");
  CHECK(again.exit_code != 0);
  CHECK(again.output.find("already revoked") != std::string::npos);

  // Within the re-read interval (5 s): beta leaves alpha's map and its
  // connections close; gamma stays connected; messages to beta are refused.
  CHECK(waitUntil(
      [&] {
        auto s = alphaPeers();
        return s.count(beta_x500) == 0 && s[gamma_x500] == "connected";
      },
      30s));
  auto to_beta =
      alpha.post("/api/v1/messages/diagnostic", {{"to", beta_x500}, {"stream", "s"}, {"count", 1}});
  REQUIRE_FALSE(to_beta.ok());
  CHECK(to_beta.error().message.find("not a peer in the network map") != std::string::npos);
  CHECK(waitUntil(
      [&] {
        return readFileText(net / "alpha" / "node.log").find("revocation lists reloaded") !=
               std::string::npos;
      },
      10s));
  // Beta keeps running (it is refused, it does not crash), and its redials are refused as revoked.
  std::this_thread::sleep_for(2s);
  CHECK(::kill(beta_pid, 0) == 0);
  auto s = alphaPeers();
  CHECK(s.count(beta_x500) == 0);
}

TEST_CASE(
    "a real network: `ccal network add-member` — a cooperative joins, running members take it, no "
    "restarts") {
  testing::TempDir tmp("ccal-net-join");
  testing::PortBlock ports(10);
  fs::path net = bootstrap(tmp, ports);
  startNetwork(net);
  testing::StopNetworkAtEnd stop_at_end{net};
  ApiClient alpha = clientOf(net, "alpha");
  const std::string beta_x500 = x500Of(net, "beta");
  REQUIRE(waitUntil([&] { return peerStates(alpha)[beta_x500] == "connected"; }, 30s));
  const pid_t alpha_pid = pidOf(net, "alpha");
  const std::string p2p = "127.0.0.1:" + std::to_string(ports.at(6));
  const std::string api = "127.0.0.1:" + std::to_string(ports.at(7));
  auto addMember = [&](const std::string& name, const std::string& x500,
                       const std::string& p2p_address, const std::string& extra = "") {
    return testing::runCcalCapturing("network add-member --dir " + net.string() + " --name " +
                                     name + " --x500 '" + x500 + "' --p2p " + p2p_address +
                                     " --api " + api + extra);
  };

  // Bad input first: refused, naming the option, and nothing is written.
  const std::string summary_before = readFileText(net / "network.json");
  const std::string crls_before = readFileText(net / "alpha" / "certs" / "crls.pem");
  struct Bad {
    std::string name, x500, p2p, extra, says;
  };
  const Bad bad[] = {
      {"delta", beta_x500, p2p, "", "--x500: is the X.500 name of member 'beta'"},
      {"beta", "O=delta Cooperative, L=Sanya, C=CN", p2p, "", "--name:"},
      {"delta", "O=delta Cooperative, L=Sanya, C=CN", "127.0.0.1:" + std::to_string(ports.at(0)),
       "", "--p2p: is the p2p address of member 'alpha'"},
      {"delta", "O=delta Cooperative, L=Sanya, C=CN", p2p, " --role notary-replica",
       "--role: a notary replica cannot join a running network"},
      {"Delta", "O=delta Cooperative, L=Sanya, C=CN", p2p, "", "--name: 'Delta' must be"},
      {"delta", "delta", p2p, "", "--x500:"},
  };
  for (const auto& b : bad) {
    auto refused = addMember(b.name, b.x500, b.p2p, b.extra);
    INFO(b.says << " <- " << refused.output);
    CHECK(refused.exit_code != 0);
    CHECK(refused.output.find(b.says) != std::string::npos);
  }
  CHECK_FALSE(fs::exists(net / "delta"));
  CHECK(readFileText(net / "network.json") == summary_before);
  CHECK(readFileText(net / "alpha" / "certs" / "crls.pem") == crls_before);

  const std::string delta_x500 = "O=delta Cooperative, L=Sanya, C=CN";
  auto added = addMember("delta", delta_x500, p2p, " --json");
  INFO(added.output);
  REQUIRE(added.exit_code == 0);
  CHECK(added.output.find("\"added\"") != std::string::npos);
  CHECK(fs::exists(net / "delta" / "node.toml"));
  CHECK(fs::exists(net / "alpha" / "node-infos" / "delta"));
  CHECK(readFileText(net / "network.json").find(delta_x500) != std::string::npos);

  // The running members read it within the re-read interval (5 s); the new
  // member starts (`network start` starts only what is down) and connects.
  CHECK(waitUntil(
      [&] {
        return readFileText(net / "alpha" / "node.log").find(delta_x500 + " joined the network") !=
               std::string::npos;
      },
      20s));
  startNetwork(net);
  ApiClient delta = clientOf(net, "delta");
  CHECK(waitUntil(
      [&] {
        return peerStates(alpha)[delta_x500] == "connected" &&
               peerStates(delta)[beta_x500] == "connected";
      },
      30s));
  CHECK(pidOf(net, "alpha") == alpha_pid);  // no restart

  // Messages both ways, exactly once (the names in a spelling of their own).
  auto sent =
      alpha.post("/api/v1/messages/diagnostic",
                 {{"to", "O=delta Cooperative,L=Sanya,C=CN"}, {"stream", "join"}, {"count", 3}});
  REQUIRE_MESSAGE(sent.ok(), sent.error().message);
  auto back = delta.post("/api/v1/messages/diagnostic",
                         {{"to", beta_x500}, {"stream", "join"}, {"count", 2}});
  REQUIRE_MESSAGE(back.ok(), back.error().message);
  ApiClient beta = clientOf(net, "beta");
  auto stored = [&](ApiClient& client, const std::string& from, int count) {
    auto checked = client.post("/api/v1/messages/diagnostic/check",
                               {{"from", from}, {"stream", "join"}, {"count", count}});
    return checked.ok() ? (*checked)["stored"].get<int>() : -1;
  };
  CHECK(waitUntil([&] { return stored(delta, x500Of(net, "alpha"), 3) == 3; }, 30s));
  CHECK(waitUntil([&] { return stored(beta, "O=delta Cooperative,L=Sanya,C=CN", 2) == 2; }, 30s));
}

TEST_CASE(
    "a real network: `ccal network rotate-tls` — the old certificate is refused, the restarted "
    "member connects") {
  testing::TempDir tmp("ccal-net-rotate");
  testing::PortBlock ports(10);
  fs::path net = bootstrap(tmp, ports);
  startNetwork(net);
  testing::StopNetworkAtEnd stop_at_end{net};
  ApiClient alpha = clientOf(net, "alpha");
  const std::string beta_x500 = x500Of(net, "beta"), gamma_x500 = x500Of(net, "gamma");
  REQUIRE(waitUntil(
      [&] {
        auto s = peerStates(alpha);
        return s[beta_x500] == "connected" && s[gamma_x500] == "connected";
      },
      30s));
  const pid_t alpha_pid = pidOf(net, "alpha"), beta_pid = pidOf(net, "beta");

  auto rotated = testing::runCcalCapturing("network rotate-tls --dir " + net.string() +
                                           " --member beta --json");
  INFO(rotated.output);
  REQUIRE(rotated.exit_code == 0);
  CHECK(rotated.output.find("\"node_info_serial\":2") != std::string::npos);

  // Within the re-read interval: alpha knows beta's new node info, closes the
  // connections made with the old certificate and refuses beta's redials
  // (beta still runs with its old key); beta stays in the map, gamma connected.
  CHECK(waitUntil(
      [&] {
        const std::string log = readFileText(net / "alpha" / "node.log");
        return log.find("node info of " + beta_x500 + " updated: serial 2") != std::string::npos &&
               log.find("is revoked by its issuer") != std::string::npos;
      },
      30s));
  auto states = peerStates(alpha);
  CHECK(states.count(beta_x500) == 1);
  CHECK(states[beta_x500] != "connected");
  CHECK(states[gamma_x500] == "connected");

  // Beta restarts with its new key: connected again, messages flow, alpha never restarted.
  REQUIRE(::kill(beta_pid, SIGTERM) == 0);
  REQUIRE(waitUntil([&] { return ::kill(beta_pid, 0) != 0; }, 30s));
  startNetwork(net);
  CHECK(waitUntil([&] { return peerStates(alpha)[beta_x500] == "connected"; }, 30s));
  auto sent = alpha.post("/api/v1/messages/diagnostic",
                         {{"to", beta_x500}, {"stream", "rotated"}, {"count", 3}});
  REQUIRE_MESSAGE(sent.ok(), sent.error().message);
  ApiClient beta = clientOf(net, "beta");
  CHECK(waitUntil(
      [&] {
        auto checked =
            beta.post("/api/v1/messages/diagnostic/check",
                      {{"from", x500Of(net, "alpha")}, {"stream", "rotated"}, {"count", 3}});
        return checked.ok() && (*checked)["stored"] == 3;
      },
      30s));
  CHECK(pidOf(net, "alpha") == alpha_pid);
}
