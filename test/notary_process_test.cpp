// Multi-process test of the BFT notary on loopback: `ccal network start`
// runs a 4-replica cluster (f = 1) and two member nodes as separate
// processes over TLS. Notarisations keep completing while a replica is
// killed with SIGKILL and restarted (which then reaches the others' state
// digest); with two replicas down a request waits, and completes once one
// returns; two conflicting transactions from two members: exactly one is
// notarised, the other gets a conflict whose signed proof verifies. Bad
// input gets clear errors.

#include <doctest/doctest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <future>
#include <iterator>
#include <set>
#include <sstream>
#include <thread>

#include "ledger/signed_transaction.h"
#include "ledger/testing.h"
#include "ledger/transaction.h"
#include "node/api_client.h"
#include "node/api_users.h"
#include "node/config.h"
#include "node/network_map.h"
#include "node/notary_service.h"
#include "notary/notarisation_messages.h"
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

ApiClient patientClientOf(const fs::path& net, const std::string& name) {
  return testing::clientOf(net, name, 120'000'000);
}

constexpr const char* notary_x500 = "O=Test Notary, L=Haikou, C=CN";

// Two members and a 4-replica notary cluster, on ports no other test uses at the same time.
fs::path bootstrap(const testing::TempDir& tmp, const testing::PortBlock& ports) {
  fs::path dir = fs::path(tmp.path).parent_path();
  auto made = testing::bootstrapTestNetwork(
      dir,
      {{"alpha", "O=alpha Member, L=Haikou, C=CN"}, {"beta", "O=beta Member, L=Haikou, C=CN"},
       {"r1", "O=r1 Member, L=Haikou, C=CN", "notary-replica"}, {"r2", "O=r2 Member, L=Haikou, C=CN", "notary-replica"},
       {"r3", "O=r3 Member, L=Haikou, C=CN", "notary-replica"}, {"r4", "O=r4 Member, L=Haikou, C=CN", "notary-replica"}},
      {{"notary", notary_x500, 1, false, {"r1", "r2", "r3", "r4"}}}, ports);
  REQUIRE_MESSAGE(made.exit_code == 0, made.output);
  return dir / "net";
}

void killHard(const fs::path& net, const std::string& name) {
  pid_t pid = pidOf(net, name);
  REQUIRE(pid > 0);
  REQUIRE(::kill(pid, SIGKILL) == 0);
  // Reaped by nobody here (the starter detached it): wait until it is gone.
  for (int i = 0; i < 100 && ::kill(pid, 0) == 0; ++i) std::this_thread::sleep_for(50ms);
}

// The notary's Party as the network parameters define it.
Party notaryParty(const fs::path& net) {
  auto config = loadNodeConfig(net / "alpha" / "node.toml");
  REQUIRE(config);
  auto map = NetworkMap::loadFiles(*config);
  REQUIRE_MESSAGE(map, map.error().message);
  const NotaryInfo* info = (*map)->notary(notary_x500);
  REQUIRE(info != nullptr);
  return Party{info->name, info->service_key};
}

std::vector<PublicKey> replicaKeys(const fs::path& net) {
  auto config = loadNodeConfig(net / "alpha" / "node.toml");
  REQUIRE(config);
  auto map = NetworkMap::loadFiles(*config);
  REQUIRE(map);
  std::vector<PublicKey> keys;
  for (const auto& r : (*map)->notary(notary_x500)->replicas) keys.push_back(r.key);
  return keys;
}

// A transaction spending `input`, with a distinguishing output value.
SignedTransaction spend(const Party& notary, const StateRef& input, const std::string& value) {
  auto owner = ccal::testing::testKey(7);
  TransactionBuilder b(notary);
  b.addInput(input);
  b.addOutput(ccal::testing::dummyState(notary, {Key(owner.publicKey())}, value));
  b.addCommand(ccal::testing::dummyCommand("Move", {Key(owner.publicKey())}));
  SignedTransaction stx(b.build().value());
  stx.signWith(owner);
  return stx;
}

json notariseBody(const SignedTransaction& stx, const std::string& notary = notary_x500) {
  return {{"notary", notary}, {"transaction", base64Encode(stx.encode())}};
}

// status, body of POST target.
std::pair<unsigned, json> postRaw(const ApiClient& client, const std::string& target, const json& body) {
  auto r = client.exchange(HttpMethod::post, target, &body);
  REQUIRE_MESSAGE(r, r.error().message);
  return {r->status, r->body};
}

// The last `bytes` of a member's log (node.log), for failure messages.
std::string logTail(const fs::path& net, const std::string& name, size_t bytes = 3000) {
  std::ifstream in(net / name / "node.log", std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return text.size() > bytes ? text.substr(text.size() - bytes) : text;
}

json replicaStatus(const ApiClient& client) {
  auto s = client.get("/api/v1/notary/status");
  return s ? *s : json();
}

}  // namespace

TEST_CASE("a real notary cluster: kill -9 and restart of a replica, two down, conflicts, bad input") {
  testing::TempDir tmp("ccal-notary-net");
  testing::PortBlock ports(14);
  fs::path net = bootstrap(tmp, ports);
  startNetwork(net);
  testing::StopNetworkAtEnd stop_at_end{net};

  ApiClient alpha = patientClientOf(net, "alpha"), beta = patientClientOf(net, "beta");
  std::vector<ApiClient> replicas;
  for (const char* r : {"r1", "r2", "r3", "r4"}) replicas.push_back(patientClientOf(net, r));
  const Party notary = notaryParty(net);
  const std::vector<PublicKey> keys = replicaKeys(net);

  // Every member connects to every other.
  CHECK(waitUntil(
      [&] {
        for (const auto* c : {&alpha, &beta}) {
          auto peers = c->get("/api/v1/peers");
          if (!peers) return false;
          for (const auto& p : (*peers)["peers"]) {
            if (p["state"] != "connected") return false;
          }
        }
        return true;
      },
      30s));

  {  // BAD_INPUT
    INFO("bad input");
    auto [s1, b1] = postRaw(alpha, "/api/v1/notary/notarise", {{"notary", notary_x500}, {"transaction", "not*base64"}});
    CHECK(s1 == 400);
    CHECK(b1["error"]["message"].get<std::string>().find("base64") != std::string::npos);
    auto [s2, b2] = postRaw(alpha, "/api/v1/notary/notarise",
                            {{"notary", notary_x500}, {"transaction", base64Encode(asBytes("hello, notary"))}});
    CHECK(s2 == 400);
    CHECK(b2["error"]["message"].get<std::string>().find("not a SignedTransaction") != std::string::npos);
    auto tx = spend(notary, StateRef{SecureHash::of(asBytes("bad-input")), 0}, "x");
    auto [s3, b3] = postRaw(alpha, "/api/v1/notary/notarise", notariseBody(tx, "O=No Such Notary, L=Haikou, C=CN"));
    CHECK(s3 == 404);
    CHECK(b3["error"]["message"].get<std::string>().find("No Such Notary") != std::string::npos);
    Party other{"O=Other Notary, L=Haikou, C=CN", notary.owningKey};
    auto foreign = spend(other, StateRef{SecureHash::of(asBytes("foreign")), 0}, "x");
    auto [s4, b4] = postRaw(alpha, "/api/v1/notary/notarise", notariseBody(foreign));
    CHECK(s4 == 422);
    CHECK(b4["error"]["message"].get<std::string>().find("Other Notary") != std::string::npos);
    auto [s5, b5] = postRaw(alpha, "/api/v1/notary/notarise", {{"transaction", "AAAA"}});
    CHECK(s5 == 400);
    auto [s6, b6] = postRaw(replicas[0], "/api/v1/notary/notarise", notariseBody(tx));
    CHECK(s6 == 409);
    auto [s7, b7] = postRaw(alpha, "/api/v1/notary/diagnostic/load", {{"notary", notary_x500}, {"count", 1'000'000}});
    CHECK(s7 == 400);
    auto [s8, b8] = postRaw(alpha, "/api/v1/notary/diagnostic/load",
                            {{"notary", notary_x500}, {"count", 10}, {"start_at_unix_micros", INT64_MAX}});
    CHECK(s8 == 400);
    CHECK(b8.dump().find("start_at_unix_micros") != std::string::npos);
    auto [s9, b9] = postRaw(alpha, "/api/v1/notary/diagnostic/load",
                            {{"notary", notary_x500}, {"count", 10}, {"prepare", "yes"}});
    CHECK(s9 == 400);
    auto [s10, b10] = postRaw(alpha, "/api/v1/notary/diagnostic/load",
                              {{"notary", notary_x500},
                               {"count", 10},
                               {"rate_per_second", 100},
                               {"tick_micros", 1'000'000}});
    CHECK(s10 == 400);
    CHECK(b10.dump().find("tick_micros") != std::string::npos);
  }

  {  // CONFLICT
    INFO("two conflicting transactions from two members");
    StateRef contested{SecureHash::of(asBytes("the contested state")), 3};
    auto tx_a = spend(notary, contested, "to alpha's friend");
    auto tx_b = spend(notary, contested, "to beta's friend");
    auto fa = std::async(std::launch::async, [&] { return postRaw(alpha, "/api/v1/notary/notarise", notariseBody(tx_a)); });
    auto fb = std::async(std::launch::async, [&] { return postRaw(beta, "/api/v1/notary/notarise", notariseBody(tx_b)); });
    auto ra = fa.get(), rb = fb.get();
    INFO(ra.second.dump());
    INFO(rb.second.dump());
    REQUIRE(ra.first == 200);
    REQUIRE(rb.first == 200);
    const bool a_won = ra.second["result"] == "notarised";
    const auto& won = a_won ? ra.second : rb.second;
    const auto& lost = a_won ? rb.second : ra.second;
    const SignedTransaction& winner = a_won ? tx_a : tx_b;
    const SignedTransaction& loser = a_won ? tx_b : tx_a;
    CHECK(won["result"] == "notarised");
    REQUIRE(lost["result"] == "conflict");

    // The winner's signatures: valid over its id, from replicas, fulfilling the service key.
    std::set<PublicKey> signers;
    for (const auto& s : won["signatures"]) {
      auto by = PublicKey::fromHex(s["by"].get<std::string>());
      REQUIRE(by);
      auto raw = fromHex(s["signature"].get<std::string>());
      REQUIRE(raw);
      std::optional<BatchProof> batch;
      if (s.contains("batch")) {  // the replicas sign a batch's transaction ids at once
        batch.emplace();
        batch->leafIndex = s["batch"]["leaf_index"].get<uint32_t>();
        batch->leafCount = s["batch"]["leaf_count"].get<uint32_t>();
        for (const auto& h : s["batch"]["path"]) batch->path.push_back(SecureHash::fromHex(h.get<std::string>()).value());
      }
      auto sig = DigitalSignature::fromParts(*by, 1, signature_version_current, *raw, batch);
      REQUIRE_MESSAGE(sig, sig.error().message);
      CHECK(sig->verify(signableBytes(winner.id())).ok());
      CHECK(!sig->verify(signableBytes(loser.id())).ok());
      CHECK(std::find(keys.begin(), keys.end(), *by) != keys.end());
      signers.insert(*by);
    }
    CHECK(signers.size() >= 3);
    CHECK(notary.owningKey.isFulfilledBy(signers));
    // The notarised transaction comes back whole: every required signature present and valid.
    auto notarised_bytes = base64Decode(won["transaction"].get<std::string>());
    REQUIRE(notarised_bytes);
    auto notarised = SignedTransaction::decode(*notarised_bytes);
    REQUIRE_MESSAGE(notarised, notarised.error().message);
    CHECK(notarised->id() == winner.id());
    CHECK(notarised->verifyRequiredSignatures().ok());

    // The loser's conflict names the state and the winner, and its proof verifies:
    // f+1 = 2 distinct replicas signed (a Merkle root over) the same conflict answer.
    REQUIRE(lost["conflicts"].size() == 1);
    CHECK(lost["conflicts"][0]["state_ref"] == contested.toString());
    CHECK(lost["conflicts"][0]["consuming_tx_hash"] == notary::consumingTxIdHash(winner.id()).hex());
    std::set<PublicKey> provers;
    for (const auto& p : lost["proof"]) {
      auto bytes = base64Decode(p.get<std::string>());
      REQUIRE(bytes);
      auto signed_reply = notary::SignedNotarisationReply::decode(*bytes);
      REQUIRE_MESSAGE(signed_reply, signed_reply.error().message);
      auto reply = notary::NotarisationReply::decode(signed_reply->reply);
      REQUIRE(reply);
      CHECK(reply->outcome == notary::NotarisationReply::Outcome::conflict);
      CHECK(reply->txId == loser.id());
      REQUIRE(reply->conflicts.size() == 1);
      CHECK(reply->conflicts[0].ref == contested);
      auto root = signed_reply->root();
      REQUIRE(root);
      REQUIRE(signed_reply->rootSignature.has_value());
      const auto& sig = *signed_reply->rootSignature;
      CHECK(std::find(keys.begin(), keys.end(), sig.by()) != keys.end());
      CHECK(sig.verify(notary::batchRootSignableBytes(reply->batchSeq, signed_reply->leafCount, *root)).ok());
      provers.insert(sig.by());
    }
    CHECK(provers.size() >= 2);

    // Re-notarising the winner is idempotent; the loser stays refused.
    auto again = postRaw(beta, "/api/v1/notary/notarise", notariseBody(winner));
    CHECK(again.first == 200);
    CHECK(again.second["result"] == "notarised");
    auto still = postRaw(alpha, "/api/v1/notary/notarise", notariseBody(loser));
    CHECK(still.second["result"] == "conflict");
  }

  {  // KILL_ONE
    INFO("a stream of notarisations while replica r3 is killed with SIGKILL and restarted");
    constexpr uint64_t count = 300;
    auto load = std::async(std::launch::async, [&] {
      return postRaw(alpha, "/api/v1/notary/diagnostic/load",
                     {{"notary", notary_x500}, {"count", count}, {"concurrency", 16}});
    });
    std::this_thread::sleep_for(1s);
    killHard(net, "r3");
    std::this_thread::sleep_for(2s);
    startNetwork(net);
    auto [status, result] = load.get();
    INFO(result.dump());
    REQUIRE(status == 200);
    CHECK(result["notarised"] == count);
    CHECK(result["errors"] == 0);
    CHECK(result["conflicts"] == 0);
    // The restarted r3 hears the others again (they reconnect with a backoff
    // that grew while it was down): it has caught up with r1. Otherwise the
    // stream below could end before any of its pre-prepares reached r3.
    CHECK(waitUntil(
        [&] {
          json r1 = replicaStatus(replicas[0]), r3 = replicaStatus(replicas[2]);
          return !r1.is_null() && !r3.is_null() && r3["last_executed"] == r1["last_executed"];
        },
        30s));
    // More after the restart, from the other member, built before the
    // clock starts and started at an agreed instant, open loop: 500/s, the
    // generator waking every 2 ms (so the last is due 198 ms in).
    const int64_t start_at = std::chrono::duration_cast<std::chrono::microseconds>(
                                 std::chrono::system_clock::now().time_since_epoch())
                                 .count() +
                             500'000;
    auto [status2, result2] = postRaw(beta, "/api/v1/notary/diagnostic/load",
                                      {{"notary", notary_x500},
                                       {"count", 100},
                                       {"concurrency", 16},
                                       {"rate_per_second", 500},
                                       {"tick_micros", 2'000},
                                       {"prepare", true},
                                       {"start_at_unix_micros", start_at}});
    INFO(result2.dump());
    CHECK(status2 == 200);
    CHECK(result2["notarised"] == 100);
    CHECK(result2["prepared"] == true);
    CHECK(result2["tick_micros"] == 2'000);
    CHECK(result2["duration_micros"].get<int64_t>() >= 198'000);

    // The restarted replica catches up: every replica at one digest.
    json statuses;
    bool same = waitUntil(
        [&] {
          statuses = json::array();
          for (auto& r : replicas) statuses.push_back(replicaStatus(r));
          for (const auto& s : statuses) {
            if (s.is_null() || s["state_digest_seq"] != statuses[0]["state_digest_seq"] ||
                s["state_digest"] != statuses[0]["state_digest"]) {
              return false;
            }
          }
          return statuses[0]["state_digest_seq"].get<uint64_t>() > 0;
        },
        30s);
    INFO(statuses.dump());
    INFO(logTail(net, "r3"));
    CHECK(same);
    // Restarted after SIGKILL, r3 sent no prepare in the view it was killed
    // in (a vote it sent may not have reached its store); the others did.
    if (statuses[2]["view"] == 0)
      CHECK(statuses[2]["stats"]["votes_abstained"].get<uint64_t>() > 0);
  }

  {  // TWO_DOWN
    INFO("two replicas down: a request waits, and completes once one returns");
    killHard(net, "r3");
    killHard(net, "r4");
    auto tx = spend(notary, StateRef{SecureHash::of(asBytes("while two are down")), 0}, "x");
    std::atomic<bool> answered{false};
    auto pending = std::async(std::launch::async, [&] {
      auto r = postRaw(alpha, "/api/v1/notary/notarise", notariseBody(tx));
      answered = true;
      return r;
    });
    std::this_thread::sleep_for(4s);
    CHECK_FALSE(answered.load());
    // Bring back r3 only: r4's node.toml is set aside so `network start` skips it.
    fs::rename(net / "r4" / "node.toml", net / "r4" / "node.toml.off");
    startNetwork(net);
    fs::rename(net / "r4" / "node.toml.off", net / "r4" / "node.toml");
    auto [status, result] = pending.get();
    INFO(result.dump());
    CHECK(status == 200);
    CHECK(result["result"] == "notarised");
    startNetwork(net);
  }

  {  // CLEAN_STOP
    INFO(
        "after an orderly stop (which records that every vote sent is durable) no replica "
        "withholds its vote");
    REQUIRE(runCcal("network stop --dir " + net.string()) == 0);
    startNetwork(net);
    for (int i = 0; i < 3; ++i) {
      auto tx = spend(
          notary, StateRef{SecureHash::of(asBytes("after a clean stop " + std::to_string(i))), 0},
          "x");
      auto [status, result] = postRaw(alpha, "/api/v1/notary/notarise", notariseBody(tx));
      INFO(result.dump());
      CHECK(status == 200);
      CHECK(result["result"] == "notarised");
    }
    uint64_t early = 0;
    for (auto& r : replicas) {
      json s = replicaStatus(r);
      INFO(s.dump());
      CHECK(s["stats"]["votes_abstained"] == 0);
      CHECK(s["stats"]["view_changes"] == 0);
      early += s["stats"]["votes_early"].get<uint64_t>();
    }
    CHECK(early >
          0);  // the first vote of the run waits for a durable record, the later ones do not
  }

  REQUIRE(runCcal("network stop --dir " + net.string()) == 0);
}
