#include "node/flow_service.h"

#include <utility>

#include "ledger/assert.h"
#include "ledger/capnp_io.h"
#include "node/api_server.h"
#include "node/notary_service.h"  // base64Encode / base64Decode
#include "schemas/p2p.capnp.h"

namespace ccal::node {
namespace {

using nlohmann::json;

// Printable ASCII (and tab, newline): shown as text; anything else only as base64.
bool printable(ByteView bytes) {
  for (uint8_t b : bytes) {
    if ((b < 0x20 && b != '\n' && b != '\t') || b > 0x7e) return false;
  }
  return true;
}

}  // namespace

json flowJson(const flows::FlowInfo& info) {
  json j = {{"id", info.id.hex()},
            {"name", info.name},
            {"phase", flows::flowPhaseName(info.phase)},
            {"responder", info.responder},
            {"counterparty", info.counterparty},
            {"step", info.step},
            {"waiting", info.waiting},
            {"started_micros", info.startedMicros},
            {"events_journaled", info.eventsJournaled},
            {"sessions", info.sessions}};
  if (info.phase != flows::FlowPhase::finished) return j;
  j["outcome"] = vault::flowOutcomeName(info.outcome);
  if (info.outcome == vault::FlowOutcome::ok) {
    j["result_base64"] = base64Encode(info.result);
    // A result that is JSON is shown as JSON (the parser also checks UTF-8),
    // else as text when printable.
    json parsed = json::parse(info.result.begin(), info.result.end(), nullptr, false);
    if (!parsed.is_discarded()) {
      j["result"] = std::move(parsed);
    } else if (printable(info.result)) {
      j["result_text"] = std::string(info.result.begin(), info.result.end());
    }
  }
  if (info.error) {
    j["error"] = {{"code", errcName(info.error->code)}, {"message", info.error->message}};
  }
  return j;
}

// flows::Messaging for the runtime over the node's Delivery: a session
// message travels as P2pMessage.flowSession.
class FlowService::SessionMessaging final : public flows::Messaging {
 public:
  explicit SessionMessaging(flows::Delivery& delivery) : delivery_(delivery) {}

  void setHandler(flows::MessageHandler* handler) override { handler_ = handler; }
  void send(std::string_view peer, const flows::MessageId& id, Bytes payload,
            std::function<void(const Status&)> done) override {
    Bytes wrapped = buildCanonical<schema::p2p::P2pMessage>(
        [&](auto root) { root.setFlowSession(asData(payload)); });
    delivery_.send(peer, id, std::move(wrapped), std::move(done));
  }
  void consume(std::string_view peer, const flows::MessageId& id,
               std::function<void(const Status&)> done) override {
    delivery_.consume(peer, id, std::move(done));
  }
  void deliver(std::string_view peer, const flows::MessageId& id, ByteView payload) {
    CCAL_ASSERT_MSG(handler_ != nullptr, "a flow session message before the runtime exists");
    handler_->onMessage(peer, id, payload);
  }

 private:
  flows::Delivery& delivery_;
  flows::MessageHandler* handler_ = nullptr;
};

FlowService::FlowService(Options options) {
  CCAL_ASSERT(options.delivery && options.executor && options.clock && options.store);
  messaging_ = std::make_unique<SessionMessaging>(*options.delivery);
  const flows::Clock* clock = options.clock;
  store_ = std::make_unique<vault::FlowStore>(*options.store,
                                              [clock] { return clock->nowMicros(); });
  runtime_ = std::make_unique<flows::FlowRuntime>(*messaging_, *options.executor, *clock, *store_,
                                                  std::move(options.runtime));
}

FlowService::~FlowService() {
  if (runtime_) runtime_->waitForStore();
  runtime_.reset();  // coroutine frames first
  store_.reset();
  messaging_.reset();
}

Status FlowService::registerFlow(std::string name, flows::FlowRuntime::Factory factory,
                                 ArgsCheck check) {
  CCAL_TRY(runtime_->registerFlow(name, std::move(factory)));
  if (check) checks_[std::move(name)] = std::move(check);
  return Status::success();
}

Status FlowService::registerInitiating(std::string initiating, std::string responder) {
  return runtime_->registerInitiating(std::move(initiating), std::move(responder));
}

Status FlowService::start() { return runtime_->start(); }

void FlowService::onSessionMessage(std::string_view peer, const flows::MessageId& id,
                                   ByteView payload) {
  messaging_->deliver(peer, id, payload);
}

void FlowService::waitForStore() const { runtime_->waitForStore(); }

flows::FlowServices flowServicesOf(const NetworkMap& map, const std::string& self_x500,
                                   const KeyPair& identity, vault::Vault& vault,
                                   const ContractRegistry& contracts, flows::NotaryGateway& notary) {
  flows::FlowServices s;
  s.identity = Party{self_x500, Key(identity.publicKey())};
  s.keys = {identity};
  s.vault = &vault;
  s.contracts = &contracts;
  s.notary = &notary;
  const NetworkMap* m = &map;
  s.partyByName = [m](std::string_view name) -> std::optional<Party> {
    if (auto member = m->memberByName(name)) return Party{member->name, Key(member->legal_identity_key)};
    if (const NotaryInfo* n = m->notary(name)) return Party{n->name, n->service_key};
    return std::nullopt;
  };
  s.partyByKey = [m](const Key& key) -> std::optional<Party> {
    if (key.isSingle()) {
      if (auto member = m->memberByKey(key.single())) return Party{member->name, key};
      return std::nullopt;
    }
    for (const NotaryInfo& n : m->parameters().notaries) {
      if (n.service_key == key) return Party{n.name, n.service_key};
    }
    return std::nullopt;
  };
  for (const ObserverRule& rule : map.parameters().observers) {
    s.observer_rules.push_back(
        flows::ObserverRule{rule.observer, rule.contracts, rule.parties, rule.all_transactions});
  }
  return s;
}

namespace {

Result<vault::FlowId> flowIdParam(const ApiRequest& request) {
  const std::string& text = request.param("id");
  auto id = SecureHash::fromHex(text);
  if (!id || text.size() != 2 * SecureHash::size_bytes) {
    return makeError(Errc::malformed,
                     "'" + text.substr(0, 80) + "' is not a flow id (64 hexadecimal digits)");
  }
  return *id;
}

json statsJson(const flows::FlowRuntime::Stats& s, size_t running) {
  return {{"running", running},
          {"flows_started", s.flows_started},
          {"responders_started", s.responders_started},
          {"flows_resumed", s.flows_resumed},
          {"flows_finished", s.flows_finished},
          {"events_journaled", s.events_journaled},
          {"events_replayed", s.events_replayed},
          {"sends", s.sends},
          {"sends_suppressed", s.sends_suppressed},
          {"messages_duplicate", s.messages_duplicate},
          {"messages_dropped", s.messages_dropped},
          {"divergences", s.divergences}};
}

// Whether a flow is in the state a list filter names.
bool inState(const flows::FlowInfo& info, std::string_view state) {
  const bool finished = info.phase == flows::FlowPhase::finished;
  if (state == "running") return !finished;
  if (state == "finished") return finished;
  return finished && state == vault::flowOutcomeName(info.outcome);
}

}  // namespace

void FlowService::addRoutes(ApiServer& api) {
  api.addAsyncRoute(
      HttpMethod::post, "/api/v1/flows", ApiRole::operator_,
      [this](ApiRequest request, ApiReply reply) {
        const json& body = request.body;
        auto bad = [&](const std::string& message) {
          reply(ApiResponse::error(400, "malformed", message));
        };
        if (!body.is_object() || !body.contains("name") || !body["name"].is_string()) {
          return bad("'name' (a registered flow's name) is required");
        }
        for (const auto& [key, value] : body.items()) {
          (void)value;
          if (key != "name" && key != "args" && key != "args_base64" && key != "timeout_micros") {
            return bad("unknown field '" + key + "' (name, args, args_base64, timeout_micros)");
          }
        }
        const std::string name = body["name"];
        Bytes args;
        if (body.contains("args") && body.contains("args_base64")) {
          return bad("give 'args' (JSON) or 'args_base64', not both");
        }
        if (body.contains("args_base64")) {
          if (!body["args_base64"].is_string()) return bad("'args_base64' must be a base64 string");
          auto decoded = base64Decode(body["args_base64"].get<std::string>());
          if (!decoded) return bad("'args_base64': " + decoded.error().message);
          args = std::move(*decoded);
        } else if (body.contains("args")) {
          const std::string text = body["args"].dump();
          args.assign(text.begin(), text.end());
        }
        int64_t timeout_micros = -1;
        if (body.contains("timeout_micros")) {
          if (!body["timeout_micros"].is_number_unsigned()) {
            return bad("'timeout_micros' must be an integer >= 0 (0: no timeout)");
          }
          timeout_micros = body["timeout_micros"].get<int64_t>();
        }
        // (A name the runtime does not know is refused by startFlow: 404.)
        if (auto check = checks_.find(name); check != checks_.end() && check->second) {
          Status checked = check->second(args);
          if (!checked.ok()) return reply(ApiResponse::fromError(checked.error()));
        }
        // The reply waits for the start record to be durable, so that an id
        // the caller holds names a flow that survives a crash.
        struct Pending {
          std::string id;
          bool replied = false;
          std::optional<Status> early;  // the start completed before startFlow returned
          ApiReply reply;
        };
        auto pending = std::make_shared<Pending>();
        pending->reply = std::move(reply);
        auto answer = [](Pending& p, const Status& status) {
          if (p.replied) return;
          p.replied = true;
          if (!status.ok()) return p.reply(ApiResponse::fromError(status.error()));
          p.reply(ApiResponse::ok({{"id", p.id}}));
        };
        auto id = runtime_->startFlow(name, std::move(args), timeout_micros,
                                      [pending, answer](const Status& status) {
                                        if (pending->id.empty()) {
                                          pending->early = status;
                                        } else {
                                          answer(*pending, status);
                                        }
                                      });
        if (!id) return answer(*pending, id.error());
        pending->id = id->hex();
        if (pending->early) answer(*pending, *pending->early);
      });

  api.addRoute(HttpMethod::get, "/api/v1/flows", ApiRole::read_only,
               [this](const ApiRequest& request) {
                 auto state = request.queryParam("state");
                 if (state && *state != "running" && *state != "finished" && *state != "ok" &&
                     *state != "failed" && *state != "killed") {
                   return ApiResponse::error(
                       400, "malformed",
                       "'state' must be one of running, finished, ok, failed, killed");
                 }
                 auto name = request.queryParam("name");
                 size_t limit = flows_listed_default;
                 if (auto text = request.queryParam("limit")) {
                   char* end = nullptr;
                   unsigned long long v = std::strtoull(text->c_str(), &end, 10);
                   if (text->empty() || *end != '\0' || v == 0 || v > flows_listed_max) {
                     return ApiResponse::error(400, "malformed",
                                               "'limit' must be an integer from 1 to " +
                                                   std::to_string(flows_listed_max));
                   }
                   limit = v;
                 }
                 json out = json::array();
                 size_t matched = 0;
                 auto all = runtime_->list();
                 // Newest first, so that a limit keeps the recent ones.
                 for (auto it = all.rbegin(); it != all.rend(); ++it) {
                   if (state && !inState(*it, *state)) continue;
                   if (name && it->name != *name) continue;
                   ++matched;
                   if (out.size() < limit) out.push_back(flowJson(*it));
                 }
                 return ApiResponse::ok({{"flows", std::move(out)},
                                         {"matched", matched},
                                         {"stats", statsJson(runtime_->stats(), runtime_->running())}});
               });

  api.addRoute(HttpMethod::get, "/api/v1/flows/{id}", ApiRole::read_only,
               [this](const ApiRequest& request) {
                 auto id = flowIdParam(request);
                 if (!id) return ApiResponse::fromError(id.error());
                 auto info = runtime_->show(*id);
                 if (!info) return ApiResponse::fromError(info.error());
                 return ApiResponse::ok(flowJson(*info));
               });

  api.addRoute(HttpMethod::post, "/api/v1/flows/{id}/kill", ApiRole::operator_,
               [this](const ApiRequest& request) {
                 auto id = flowIdParam(request);
                 if (!id) return ApiResponse::fromError(id.error());
                 std::string reason = "killed by the operator";
                 if (request.body.is_object() && request.body.contains("reason")) {
                   const json& r = request.body["reason"];
                   if (!r.is_string() || r.get<std::string>().size() > flow_kill_reason_bytes_max) {
                     return ApiResponse::error(400, "malformed",
                                               "'reason' must be a string of at most " +
                                                   std::to_string(flow_kill_reason_bytes_max) +
                                                   " bytes");
                   }
                   reason = "killed by " + request.user + ": " + r.get<std::string>();
                 } else if (!request.body.is_null() && !request.body.is_object()) {
                   return ApiResponse::error(400, "malformed", "the body must be a JSON object");
                 }
                 Status killed = runtime_->kill(*id, reason);
                 if (!killed.ok()) return ApiResponse::fromError(killed.error());
                 return ApiResponse::ok({{"id", id->hex()}, {"killing", true}});
               });
}

}  // namespace ccal::node
