#include "node/flow_service.h"

#include <signal.h>

#include <algorithm>
#include <cstdlib>
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
  flows::Delivery& delivery() const { return delivery_; }

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
  // A diagnostic switch for comparisons (bench_e2e --eager-journal):
  // journal every event before the flow sees it, as before deferred events.
  if (const char* eager = std::getenv("CCAL_FLOWS_EAGER_JOURNAL"); eager != nullptr && eager[0] == '1') {
    options.runtime.defer_events = false;
  }
  runtime_ = std::make_unique<flows::FlowRuntime>(*messaging_, *options.executor, *clock, *store_,
                                                  std::move(options.runtime));
  executor_ = options.executor;
  clock_ = clock;
  vault_store_ = options.store;
  flows::FlowRuntime::Hooks hooks;
  hooks.finished = [this](const flows::FlowInfo& info) {
    auto it = waiters_.find(info.id);
    if (it == waiters_.end()) return;
    auto fns = std::move(it->second);
    waiters_.erase(it);
    for (auto& fn : fns) fn(info);
  };
  // Fault injection for the real-process crash tests (test/deal_process_test.cpp):
  // with CCAL_FAULT_KILL_AT_STEP=<text> in its environment the node kills
  // itself with SIGKILL as soon as an event is durably journaled for a flow
  // whose progress step contains <text> (and, with CCAL_FAULT_KILL_IN_FLOW=<name>,
  // whose name is <name>). "finality: recording" in "token.move" stops a payer
  // right after the notary's answer is journaled, before finality records or
  // sends anything. Unset (the normal case), nothing is installed.
  if (const char* at = std::getenv("CCAL_FAULT_KILL_AT_STEP"); at != nullptr && *at != '\0') {
    const char* in = std::getenv("CCAL_FAULT_KILL_IN_FLOW");
    flows::FlowRuntime* rt = runtime_.get();
    hooks.journaled = [rt, text = std::string(at), flow_name = std::string(in ? in : "")](
                          const flows::FlowId& flow, uint64_t) {
      auto info = rt->show(flow);
      if (!info || info->step.find(text) == std::string::npos) return;
      if (flow_name.empty() || info->name == flow_name) ::raise(SIGKILL);
    };
  }
  runtime_->setHooks(std::move(hooks));
}

// A load run (POST /api/v1/flows/diagnostic/load), on the executor thread.
struct FlowService::Load {
  std::string name;
  Bytes args;
  uint64_t count = 0, concurrency = 0, rate_per_second = 0;
  ApiReply reply;
  int64_t started_micros = 0;
  uint64_t started = 0, in_flight = 0, completed = 0, failed = 0, killed = 0;
  std::vector<int64_t> latencies_micros;
  std::optional<std::string> first_error;
  bool pacing = false;  // an open-loop timer is armed
};

void FlowService::whenFinished(const flows::FlowId& id, std::function<void(const flows::FlowInfo&)> fn) {
  auto info = runtime_->show(id);
  if (!info) return;
  if (info->phase == flows::FlowPhase::finished) return fn(*info);
  waiters_[id].push_back(std::move(fn));
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
    flows::ObserverRule r;
    r.observer = rule.observer;
    r.contracts = rule.contracts;
    r.parties = rule.parties;
    r.all_transactions = rule.all_transactions;
    r.commands = rule.commands;
    r.amount_at_least = rule.amount_at_least;
    if (rule.amount_at_least) r.amount_field = rule.amount_field;
    s.observer_rules.push_back(std::move(r));
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
          {"divergences", s.divergences},
          {"call_retries", s.call_retries},
          {"flows_parked", s.flows_parked},
          {"flows_retried", s.flows_retried}};
}

}  // namespace

// The durable writes this node made: the Store's requests and commits (all
// of the node's writers: flows, messaging, vault), and the flow runtime's
// and the messaging's requests by kind (the rest are the vault's).
json FlowService::writesJson() const {
  const vault::Store::Stats st = vault_store_->stats();
  const flows::FlowRuntime::Stats& rt = runtime_->stats();
  const flows::Delivery::Stats& d = messaging_->delivery().stats();
  return {{"store_requests", st.requests},
          {"store_commits", st.commits},
          {"store_reruns", st.reruns},
          {"writer_cpu_micros", st.writer_cpu_micros},
          {"commit_micros", st.commit_micros},
          {"queued_micros", st.queued_micros},
          {"flow_begins", rt.store_begins},
          {"flow_appends", rt.store_appends},
          {"flow_finishes", rt.store_finishes},
          {"flow_parks", rt.store_parks},
          {"message_enqueues", d.store_enqueues},
          {"message_receives", d.store_receives},
          {"message_acks", d.store_acks},
          {"message_consumes", d.store_consumes},
          {"messages_sent", d.messages_sent},
          {"ack_frames_sent", d.ack_frames_sent}};
}

namespace {

// Whether a flow is in the state a list filter names.
bool inState(const flows::FlowInfo& info, std::string_view state) {
  const bool finished = info.phase == flows::FlowPhase::finished;
  if (state == "parked") return info.phase == flows::FlowPhase::parked;
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
          if (key != "name" && key != "args" && key != "args_base64" && key != "timeout_micros" &&
              key != "wait_micros") {
            return bad("unknown field '" + key + "' (name, args, args_base64, timeout_micros, wait_micros)");
          }
        }
        const std::string name = body["name"];
        auto parsed_args = argsOf(body);
        if (!parsed_args) return bad(parsed_args.error().message);
        Bytes args = std::move(*parsed_args);
        int64_t timeout_micros = -1;
        if (body.contains("timeout_micros")) {
          if (!body["timeout_micros"].is_number_unsigned()) {
            return bad("'timeout_micros' must be an integer >= 0 (0: no timeout)");
          }
          timeout_micros = body["timeout_micros"].get<int64_t>();
        }
        int64_t wait_micros = 0;
        if (body.contains("wait_micros")) {
          if (!body["wait_micros"].is_number_unsigned() ||
              body["wait_micros"].get<uint64_t>() > static_cast<uint64_t>(flow_wait_micros_max)) {
            return bad("'wait_micros' must be an integer from 0 to " + std::to_string(flow_wait_micros_max));
          }
          wait_micros = body["wait_micros"].get<int64_t>();
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
        auto answer = [this, wait_micros](Pending& p, const Status& status) {
          if (p.replied) return;
          p.replied = true;
          if (!status.ok()) return p.reply(ApiResponse::fromError(status.error()));
          if (wait_micros == 0) return p.reply(ApiResponse::ok({{"id", p.id}}));
          // Wait for the end, or answer with the flow as it is when the time is up.
          auto once = std::make_shared<ApiReply>(std::move(p.reply));
          auto id = *SecureHash::fromHex(p.id);
          const auto timer = executor_->runAfter(wait_micros, [this, once, id] {
            if (!*once) return;
            auto info = runtime_->show(id);
            auto respond = std::exchange(*once, nullptr);
            respond(info ? ApiResponse::ok(flowJson(*info)) : ApiResponse::fromError(info.error()));
          });
          whenFinished(id, [this, once, timer](const flows::FlowInfo& info) {
            if (!*once) return;
            executor_->cancel(timer);
            auto respond = std::exchange(*once, nullptr);
            respond(ApiResponse::ok(flowJson(info)));
          });
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
                     *state != "failed" && *state != "killed" && *state != "parked") {
                   return ApiResponse::error(
                       400, "malformed",
                       "'state' must be one of running, parked, finished, ok, failed, killed");
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
                 if (state && *state == "parked") all = runtime_->hospital();
                 // Newest first, so that a limit keeps the recent ones.
                 for (auto it = all.rbegin(); it != all.rend(); ++it) {
                   if (state && !inState(*it, *state)) continue;
                   if (name && it->name != *name) continue;
                   ++matched;
                   if (out.size() < limit) out.push_back(flowJson(*it));
                 }
                 return ApiResponse::ok({{"flows", std::move(out)},
                                         {"matched", matched},
                                         {"stats", statsJson(runtime_->stats(), runtime_->running())},
                                         {"writes", writesJson()}});
               });

  api.addRoute(HttpMethod::get, "/api/v1/flows/{id}", ApiRole::read_only,
               [this](const ApiRequest& request) {
                 auto id = flowIdParam(request);
                 if (!id) return ApiResponse::fromError(id.error());
                 auto info = runtime_->show(*id);
                 if (!info) return ApiResponse::fromError(info.error());
                 return ApiResponse::ok(flowJson(*info));
               });


  api.addAsyncRoute(
      HttpMethod::post, "/api/v1/flows/diagnostic/load", ApiRole::operator_,
      [this](ApiRequest request, ApiReply reply) {
        const json& body = request.body;
        auto bad = [&](const std::string& message) {
          reply(ApiResponse::error(400, "malformed", message));
        };
        if (!body.is_object() || !body.contains("name") || !body["name"].is_string()) {
          return bad("'name' (a registered flow's name) is required");
        }
        auto count = [&](const char* key, uint64_t max, uint64_t fallback) -> std::optional<uint64_t> {
          if (!body.contains(key)) return fallback;
          if (!body[key].is_number_unsigned() || body[key].get<uint64_t>() > max) return std::nullopt;
          return body[key].get<uint64_t>();
        };
        auto n = count("count", flow_load_count_max, 0);
        if (!n || *n == 0) return bad("'count' must be an integer from 1 to " + std::to_string(flow_load_count_max));
        auto concurrency = count("concurrency", flow_load_concurrency_max, 64);
        if (!concurrency || *concurrency == 0) {
          return bad("'concurrency' must be an integer from 1 to " + std::to_string(flow_load_concurrency_max));
        }
        auto rate = count("rate_per_second", 1'000'000, 0);
        if (!rate) return bad("'rate_per_second' must be an integer from 0 (closed loop) to 1000000");
        auto args = argsOf(body);
        if (!args) return bad(args.error().message);
        const std::string name = body["name"];
        if (auto check = checks_.find(name); check != checks_.end() && check->second) {
          Status checked = check->second(*args);
          if (!checked.ok()) return reply(ApiResponse::fromError(checked.error()));
        }
        auto load = std::make_shared<Load>();
        load->name = name;
        load->args = std::move(*args);
        load->count = *n;
        load->concurrency = *concurrency;
        load->rate_per_second = *rate;
        load->reply = std::move(reply);
        load->started_micros = clock_->nowMicros();
        load->latencies_micros.reserve(*n);
        startLoad(load);
      });

  api.addRoute(HttpMethod::post, "/api/v1/flows/{id}/retry", ApiRole::operator_,
               [this](const ApiRequest& request) {
                 auto id = flowIdParam(request);
                 if (!id) return ApiResponse::fromError(id.error());
                 Status retried = runtime_->retry(*id);
                 if (!retried.ok()) return ApiResponse::fromError(retried.error());
                 return ApiResponse::ok({{"id", id->hex()}, {"retrying", true}});
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

Result<Bytes> FlowService::argsOf(const json& body) const {
  Bytes args;
  if (body.contains("args") && body.contains("args_base64")) {
    return makeError(Errc::malformed, "give 'args' (JSON) or 'args_base64', not both");
  }
  if (body.contains("args_base64")) {
    if (!body["args_base64"].is_string()) return makeError(Errc::malformed, "'args_base64' must be a base64 string");
    auto decoded = base64Decode(body["args_base64"].get<std::string>());
    if (!decoded) return makeError(Errc::malformed, "'args_base64': " + decoded.error().message);
    args = std::move(*decoded);
  } else if (body.contains("args")) {
    const std::string text = body["args"].dump();
    args.assign(text.begin(), text.end());
  }
  return args;
}


void FlowService::startLoad(std::shared_ptr<Load> load) {
  auto finishRun = [this](Load& l) {
    auto& lat = l.latencies_micros;
    std::sort(lat.begin(), lat.end());
    auto pct = [&](double p) -> int64_t {
      if (lat.empty()) return 0;
      return lat[std::min(lat.size() - 1, static_cast<size_t>(p * static_cast<double>(lat.size())))];
    };
    const int64_t duration = std::max<int64_t>(1, clock_->nowMicros() - l.started_micros);
    json out = {{"name", l.name},
                {"count", l.count},
                {"completed", l.completed},
                {"failed", l.failed},
                {"killed", l.killed},
                {"duration_micros", duration},
                {"per_second", static_cast<double>(l.completed) * 1e6 / static_cast<double>(duration)},
                {"latency_p50_micros", pct(0.50)},
                {"latency_p90_micros", pct(0.90)},
                {"latency_p99_micros", pct(0.99)},
                {"latency_max_micros", lat.empty() ? 0 : lat.back()}};
    if (l.first_error) out["first_error"] = *l.first_error;
    auto reply = std::exchange(l.reply, nullptr);
    reply(ApiResponse::ok(std::move(out)));
  };
  // Start what the concurrency and (open loop) the schedule allow.
  while (load->started < load->count && load->in_flight < load->concurrency) {
    if (load->rate_per_second > 0) {
      const int64_t due = load->started_micros + static_cast<int64_t>(load->started * 1'000'000 / load->rate_per_second);
      const int64_t now = clock_->nowMicros();
      if (due > now) {
        if (!load->pacing) {
          load->pacing = true;
          executor_->runAfter(due - now, [this, load] {
            load->pacing = false;
            startLoad(load);
          });
        }
        return;
      }
    }
    ++load->started;
    ++load->in_flight;
    const int64_t t0 = clock_->nowMicros();
    auto ended = [this, load, t0, finishRun](const flows::FlowInfo& info) {
      --load->in_flight;
      if (info.outcome == vault::FlowOutcome::ok) {
        ++load->completed;
        load->latencies_micros.push_back(clock_->nowMicros() - t0);
      } else {
        info.outcome == vault::FlowOutcome::killed ? ++load->killed : ++load->failed;
        if (!load->first_error && info.error) load->first_error = info.error->toString();
      }
      if (load->completed + load->failed + load->killed == load->count) return finishRun(*load);
      // Not from inside the runtime's finishing call: post the next starts.
      executor_->post([this, load] { startLoad(load); });
    };
    auto id = runtime_->startFlow(load->name, load->args, -1, [](const Status&) {});
    if (!id) {
      --load->in_flight;
      ++load->failed;
      if (!load->first_error) load->first_error = id.error().toString();
      if (load->completed + load->failed + load->killed == load->count) return finishRun(*load);
      continue;
    }
    waiters_[*id].push_back(std::move(ended));
  }
}

}  // namespace ccal::node
