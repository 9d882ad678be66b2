// FlowService over real parts: two members in one process, each with its
// own LMDB vault, MessageStore, Delivery and flow runtime, on one
// AsioExecutor (as a node runs them), frames passed between them by a
// loopback link; the control API on a real socket.

#include "node/flow_service.h"

#include <utility>

#include <doctest/doctest.h>

#include <chrono>
#include <map>
#include <thread>

#include "ledger/capnp_io.h"
#include "ledger/contract.h"
#include "node/api_client.h"
#include "node/api_server.h"
#include "node/asio_executor.h"
#include "node/diagnostic_flows.h"
#include "node/notary_service.h"
#include "schemas/p2p.capnp.h"
#include "test/support/api_fixture.h"
#include "test/support/temp_dir.h"
#include "vault/message_store.h"
#include "vault/vault.h"

using namespace ccal;
using namespace ccal::node;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

const std::string alice = "O=Alice Cooperative, L=Haikou, C=CN";
const std::string bob = "O=Bob Cooperative, L=Haikou, C=CN";

struct Loop;

// Frames between the members on the executor, in order; a member that is
// closed loses them (Delivery retransmits).
class LoopLink final : public flows::Link {
 public:
  LoopLink(Loop& loop, std::string self);
  ~LoopLink() override;
  void setHandler(flows::LinkHandler* handler) override { handler_ = handler; }
  Status send(std::string_view peer, Bytes frame) override;
  size_t frameBytesMax() const override { return 1u << 20; }
  flows::LinkHandler* handler_ = nullptr;

 private:
  Loop& loop_;
  std::string self_;
};

struct Loop {
  AsioExecutor* executor = nullptr;
  std::map<std::string, LoopLink*> links;
};

LoopLink::LoopLink(Loop& loop, std::string self) : loop_(loop), self_(std::move(self)) {
  loop_.links[self_] = this;
}
LoopLink::~LoopLink() { loop_.links.erase(self_); }
Status LoopLink::send(std::string_view peer, Bytes frame) {
  if (peer != alice && peer != bob) {
    return makeError(Errc::not_found, "unknown peer '" + std::string(peer) + "'");
  }
  Loop* loop = &loop_;
  loop->executor->post([loop, from = self_, to = std::string(peer), frame = std::move(frame)] {
    auto it = loop->links.find(to);
    if (it != loop->links.end() && it->second->handler_) it->second->handler_->onFrame(from, frame);
  });
  return {};
}

// One member: what Node wires for flows, and its control API.
struct Member final : flows::MessageHandler {
  std::string name;
  Loop& loop;
  AsioExecutor& executor;
  testing::TempDir dir{"ccal-flow-service-test"};
  ContractRegistry registry;
  std::unique_ptr<vault::Vault> vault;
  std::unique_ptr<vault::MessageStore> messages;
  std::unique_ptr<LoopLink> link;
  std::unique_ptr<flows::Delivery> delivery;
  std::unique_ptr<FlowService> service;
  std::unique_ptr<ApiServer> api;

  Member(std::string n, Loop& l, AsioExecutor& ex) : name(std::move(n)), loop(l), executor(ex) { open(); }
  ~Member() override { close(); }

  void open() {
    executor.runSync([&] {
      vault::VaultConfig vc;
      vc.store.path = dir.path;
      vc.store.durable = false;
      vault = vault::Vault::open(vc, registry, {}).value();
      messages = std::make_unique<vault::MessageStore>(vault->store());
      link = std::make_unique<LoopLink>(loop, name);
      flows::DeliveryConfig dc;
      dc.knows_peer = [this](std::string_view peer) {
        return peer != name && (peer == alice || peer == bob);
      };
      dc.log = [](std::string_view) {};
      delivery = std::make_unique<flows::Delivery>(*link, *messages, executor, executor, dc);
      delivery->setHandler(this);
      FlowService::Options options;
      options.delivery = delivery.get();
      options.executor = &executor;
      options.clock = &executor;
      options.store = &vault->store();
      options.runtime.self = name;
      options.runtime.log = [](std::string_view) {};
      service = std::make_unique<FlowService>(std::move(options));
      REQUIRE(registerDiagnosticFlows(*service).ok());
      REQUIRE(service->start().ok());
      REQUIRE(delivery->start().ok());
      ApiServerOptions api_options;
      api = std::make_unique<ApiServer>(executor.context(), api_options, testing::apiTestUsers(),
                                        ApiProviders{});
      service->addRoutes(*api);
      REQUIRE(api->start().ok());
    });
  }
  void close() {
    executor.runSync([&] {
      api->stop();
      service->waitForStore();
      delivery->waitForStore();
      service.reset();
      delivery.reset();
      link.reset();
      api.reset();
      vault.reset();
      messages.reset();
    });
  }

  // As Node::Impl::onMessage: flow session messages go to the runtime, which consumes them.
  void onMessage(std::string_view peer, const flows::MessageId& id, ByteView payload) override {
    bool for_flows = false;
    auto decoded = decodeMessage<schema::p2p::P2pMessage>(
        payload, "p2p message", Canonical::not_required, [&](auto message) -> Status {
          if (message.which() != schema::p2p::P2pMessage::FLOW_SESSION) {
            return makeError(Errc::malformed, "not a flow message");
          }
          service->onSessionMessage(peer, id, asByteView(message.getFlowSession()));
          for_flows = true;
          return Status::success();
        });
    CHECK(decoded.ok());
    if (!for_flows) delivery->consume(peer, id, [](const Status&) {});
  }

  ApiClient client(const std::string& token = testing::api_admin_token) const {
    return ApiClient::create("http://" + api->address(), token).value();
  }
};

json waitFinished(const ApiClient& client, const std::string& id) {
  json last;
  for (int i = 0; i < 300; ++i) {
    auto shown = client.get("/api/v1/flows/" + id);
    if (shown) {
      last = *shown;
      if (last["phase"] == "finished") return last;
    }
    std::this_thread::sleep_for(20ms);
  }
  FAIL("flow " << id << " did not finish: " << last.dump());
  return last;
}

std::string responderOf(const std::string& id) {
  return flows::responderFlowId(SecureHash::fromHex(id).value(), 0).hex();
}

unsigned statusOf(const ApiClient& client, HttpMethod method, const std::string& target, const json* body,
                  std::string* message = nullptr) {
  auto r = client.exchange(method, target, body);
  REQUIRE(r);
  if (message && r->body.is_object() && r->body.contains("error")) {
    *message = r->body["error"]["message"].get<std::string>();
  }
  return r->status;
}

}  // namespace

TEST_CASE("flows through the control API: start, list, show, kill, restart, bad input, roles") {
  AsioExecutor executor;
  executor.start();
  Loop loop;
  loop.executor = &executor;
  {
    Member a(alice, loop, executor);
    Member b(bob, loop, executor);
    ApiClient ac = a.client();
    ApiClient bc = b.client();

    // A ping, answered by bob's pong.
    auto started = ac.post("/api/v1/flows", {{"name", "diagnostic.ping"},
                                             {"args", {{"peer", bob}, {"count", 3}, {"text", "t"}}}});
    REQUIRE_MESSAGE(started, started.error().toString());
    const std::string id = (*started)["id"];
    json flow = waitFinished(ac, id);
    CHECK(flow["outcome"] == "ok");
    CHECK(flow["name"] == "diagnostic.ping");
    CHECK(flow["result"] == json({{"peer", bob}, {"count", 3}, {"echoes", 3}, {"text", "t"}}));
    CHECK(flow["sessions"] == 1);
    CHECK(flow["events_journaled"].get<uint64_t>() >= 3);
    json pong = waitFinished(bc, responderOf(id));
    CHECK(pong["outcome"] == "ok");
    CHECK(pong["responder"] == true);
    CHECK(pong["counterparty"] == alice);
    CHECK(pong["result"]["received"] == json({0, 1, 2}));

    // Listed, filtered by state and name.
    auto list = ac.get("/api/v1/flows?state=ok&name=diagnostic.ping");
    REQUIRE(list);
    REQUIRE((*list)["flows"].size() == 1);
    CHECK((*list)["flows"][0]["id"] == id);
    CHECK((*list)["stats"]["flows_started"] == 1);
    auto running = ac.get("/api/v1/flows?state=running");
    REQUIRE(running);
    CHECK((*running)["flows"].empty());

    // A read-only user may look, not start or kill.
    ApiClient viewer = a.client(testing::api_reader_token);
    CHECK(viewer.get("/api/v1/flows"));
    json ping_body = {{"name", "diagnostic.ping"}, {"args", {{"peer", bob}}}};
    CHECK(statusOf(viewer, HttpMethod::post, "/api/v1/flows", &ping_body) == 403);
    CHECK(statusOf(viewer, HttpMethod::post, "/api/v1/flows/" + id + "/kill", nullptr) == 403);

    // Bad input, each with a message naming what is wrong.
    std::string message;
    json unknown = {{"name", "no.such"}};
    CHECK(statusOf(ac, HttpMethod::post, "/api/v1/flows", &unknown, &message) == 404);
    CHECK(message.find("no flow 'no.such'") != std::string::npos);
    json no_name = {{"args", 1}};
    CHECK(statusOf(ac, HttpMethod::post, "/api/v1/flows", &no_name, &message) == 400);
    CHECK(message.find("'name'") != std::string::npos);
    json both = {{"name", "diagnostic.ping"}, {"args", 1}, {"args_base64", "AA=="}};
    CHECK(statusOf(ac, HttpMethod::post, "/api/v1/flows", &both, &message) == 400);
    CHECK(message.find("not both") != std::string::npos);
    json bad_base64 = {{"name", "diagnostic.ping"}, {"args_base64", "!!"}};
    CHECK(statusOf(ac, HttpMethod::post, "/api/v1/flows", &bad_base64, &message) == 400);
    CHECK(message.find("'args_base64'") != std::string::npos);
    json extra = {{"name", "diagnostic.ping"}, {"argz", 1}};
    CHECK(statusOf(ac, HttpMethod::post, "/api/v1/flows", &extra, &message) == 400);
    CHECK(message.find("unknown field 'argz'") != std::string::npos);
    json bad_timeout = {{"name", "diagnostic.ping"}, {"args", {{"peer", bob}}}, {"timeout_micros", -1}};
    CHECK(statusOf(ac, HttpMethod::post, "/api/v1/flows", &bad_timeout, &message) == 400);
    CHECK(message.find("'timeout_micros'") != std::string::npos);
    json bad_args = {{"name", "diagnostic.ping"}, {"args", {{"peer", bob}, {"count", 0}}}};
    CHECK(statusOf(ac, HttpMethod::post, "/api/v1/flows", &bad_args, &message) == 400);
    CHECK(message.find("'count'") != std::string::npos);
    CHECK(statusOf(ac, HttpMethod::get, "/api/v1/flows?state=sleepy", nullptr, &message) == 400);
    CHECK(message.find("'state'") != std::string::npos);
    CHECK(statusOf(ac, HttpMethod::get, "/api/v1/flows?limit=0", nullptr, &message) == 400);
    CHECK(statusOf(ac, HttpMethod::get, "/api/v1/flows/12ab", nullptr, &message) == 400);
    CHECK(message.find("'12ab' is not a flow id") != std::string::npos);
    CHECK(statusOf(ac, HttpMethod::get, "/api/v1/flows/" + std::string(64, 'c'), nullptr) == 404);
    CHECK(statusOf(ac, HttpMethod::post, "/api/v1/flows/" + std::string(64, 'c') + "/kill", nullptr) ==
          404);
    // A peer that is not in the network: the flow fails with the reason.
    auto nowhere = ac.post("/api/v1/flows",
                           {{"name", "diagnostic.ping"}, {"args", {{"peer", "O=Nobody, L=X, C=CN"}}}});
    REQUIRE(nowhere);
    json failed = waitFinished(ac, (*nowhere)["id"]);
    CHECK(failed["outcome"] == "failed");
    CHECK(failed["error"]["message"].get<std::string>().find("Nobody") != std::string::npos);

    // Kill a sleeping flow: killed here, bob's pong ends with the error.
    auto sleeper = ac.post("/api/v1/flows", {{"name", "diagnostic.ping"},
                                             {"args", {{"peer", bob}, {"count", 2}, {"sleep_micros", 60'000'000}}}});
    REQUIRE(sleeper);
    const std::string sleeper_id = (*sleeper)["id"];
    for (int i = 0; i < 300; ++i) {
      auto f = ac.get("/api/v1/flows/" + sleeper_id);
      if (f && (*f)["step"].get<std::string>().rfind("sleeping", 0) == 0) break;
      std::this_thread::sleep_for(20ms);
    }
    auto kill = ac.post("/api/v1/flows/" + sleeper_id + "/kill", {{"reason", "enough"}});
    REQUIRE_MESSAGE(kill, kill.error().toString());
    json killed = waitFinished(ac, sleeper_id);
    CHECK(killed["outcome"] == "killed");
    CHECK(killed["error"]["message"].get<std::string>().find("killed by root: enough") != std::string::npos);
    json pong_killed = waitFinished(bc, responderOf(sleeper_id));
    CHECK(pong_killed["outcome"] == "failed");
    CHECK(pong_killed["error"]["message"].get<std::string>().find("was killed") != std::string::npos);
    CHECK(pong_killed["error"]["message"].get<std::string>().find("enough") != std::string::npos);
    CHECK(statusOf(ac, HttpMethod::post, "/api/v1/flows/" + sleeper_id + "/kill", nullptr) == 404);

    // A per-flow timeout fails the flow with code timeout.
    auto timed = ac.post("/api/v1/flows", {{"name", "diagnostic.ping"},
                                           {"args", {{"peer", bob}, {"sleep_micros", 60'000'000}}},
                                           {"timeout_micros", 300'000}});
    REQUIRE(timed);
    json timed_out = waitFinished(ac, (*timed)["id"]);
    CHECK(timed_out["outcome"] == "failed");
    CHECK(timed_out["error"]["code"] == "timeout");

    // A restart in the middle of a flow: resumed from the store, it ends once, ok.
    auto long_ping = ac.post("/api/v1/flows", {{"name", "diagnostic.ping"},
                                               {"args", {{"peer", bob}, {"count", 6}, {"sleep_micros", 100'000}}}});
    REQUIRE(long_ping);
    const std::string long_id = (*long_ping)["id"];
    for (int i = 0; i < 300; ++i) {
      auto f = ac.get("/api/v1/flows/" + long_id);
      if (f && (*f)["events_journaled"].get<uint64_t>() >= 4) break;
      std::this_thread::sleep_for(20ms);
    }
    a.close();
    a.open();
    ac = a.client();
    auto resumed_list = ac.get("/api/v1/flows");
    REQUIRE(resumed_list);
    CHECK((*resumed_list)["stats"]["flows_resumed"] == 1);
    json resumed = waitFinished(ac, long_id);
    CHECK(resumed["outcome"] == "ok");
    CHECK(resumed["result"]["echoes"] == 6);
    json long_pong = waitFinished(bc, responderOf(long_id));
    CHECK(long_pong["result"]["received"] == json({0, 1, 2, 3, 4, 5}));
  }
  executor.stop();
}

TEST_CASE("flowJson shows a result as JSON, as text, or as base64 only") {
  flows::FlowInfo info;
  info.id = SecureHash::of(asBytes(std::string("x")));
  info.name = "f";
  info.phase = flows::FlowPhase::finished;
  info.outcome = vault::FlowOutcome::ok;
  info.result = Bytes{'{', '"', 'a', '"', ':', '1', '}'};
  json j = flowJson(info);
  CHECK(j["result"] == json({{"a", 1}}));
  CHECK(j["result_base64"] == base64Encode(info.result));
  info.result = Bytes{'h', 'i', ' ', 'x'};
  j = flowJson(info);
  CHECK(j["result_text"] == "hi x");
  CHECK_FALSE(j.contains("result"));
  info.result = Bytes{0xff, 0x00, 0x80};
  j = flowJson(info);
  CHECK_FALSE(j.contains("result"));
  CHECK_FALSE(j.contains("result_text"));
  CHECK(j["result_base64"] == base64Encode(info.result));
  CHECK(j.dump().size() > 0);  // dumps (no invalid UTF-8 inside)
  info.outcome = vault::FlowOutcome::failed;
  info.result.clear();
  info.error = makeError(Errc::timeout, "too slow");
  j = flowJson(info);
  CHECK(j["outcome"] == "failed");
  CHECK(j["error"] == json({{"code", "timeout"}, {"message", "too slow"}}));
  info.phase = flows::FlowPhase::running;
  CHECK_FALSE(flowJson(info).contains("outcome"));
}
