#include "node/diagnostic_flows.h"

#include <nlohmann/json.hpp>

#include "flows/flow.h"
#include "node/flow_service.h"

namespace ccal::node {
namespace {

using flows::Flow;
using flows::FlowContext;
using flows::Session;
using nlohmann::json;

std::string textOf(ByteView bytes) { return std::string(bytes.begin(), bytes.end()); }
Bytes bytesOf(const std::string& text) { return Bytes(text.begin(), text.end()); }

Result<int64_t> micros(const json& j, const char* key) {
  if (!j.contains(key)) return int64_t{0};
  const json& v = j[key];
  if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > ping_sleep_micros_max) {
    return makeError(Errc::malformed, std::string("'") + key + "' must be an integer from 0 to " +
                                          std::to_string(ping_sleep_micros_max));
  }
  return v.get<int64_t>();
}

struct PongHeader {
  uint32_t count = 0;
  int64_t responder_sleep_micros = 0;
};

Result<PongHeader> parseHeader(ByteView bytes) {
  json j = json::parse(bytes.begin(), bytes.end(), nullptr, false);
  if (!j.is_object() || !j.contains("count") || !j["count"].is_number_unsigned() ||
      j["count"].get<uint64_t>() == 0 || j["count"].get<uint64_t>() > ping_count_max) {
    return makeError(Errc::malformed, "a ping header needs 'count' from 1 to " +
                                          std::to_string(ping_count_max));
  }
  auto sleep = micros(j, "responder_sleep_micros");
  if (!sleep) return sleep.error();
  return PongHeader{j["count"].get<uint32_t>(), *sleep};
}

Flow<Bytes> pingFlow(FlowContext& ctx, Bytes raw) {
  auto parsed = parsePingArgs(raw);
  if (!parsed) throw flows::FlowFailure(parsed.error());
  const PingArgs args = std::move(parsed).value();
  Session s = co_await ctx.initiate(args.peer);
  ctx.step("sending the header to " + args.peer);
  // (Built before the co_await: g++ 12 mishandles brace-initialised temporaries in its operand.)
  Bytes header = bytesOf(
      json{{"count", args.count}, {"responder_sleep_micros", args.responder_sleep_micros}}.dump());
  co_await s.send(std::move(header));
  uint32_t echoes = 0;
  for (uint32_t i = 0; i < args.count; ++i) {
    ctx.step("ping " + std::to_string(i + 1) + " of " + std::to_string(args.count));
    const std::string ping = "ping " + std::to_string(i) + " " + args.text;
    Bytes reply = co_await s.sendAndReceive(bytesOf(ping));  // (a function call, not a brace-init)
    const std::string want = "echo " + std::to_string(i) + " " + args.text;
    if (textOf(reply) != want) {
      flows::failFlow(Errc::malformed, "ping " + std::to_string(i) + ": '" + args.peer +
                                           "' answered '" + textOf(reply).substr(0, 80) +
                                           "', not '" + want.substr(0, 80) + "'");
    }
    ++echoes;
    if (args.sleep_micros > 0) {
      ctx.step("sleeping after ping " + std::to_string(i + 1) + " of " +
               std::to_string(args.count));
      co_await ctx.sleep(args.sleep_micros);
    }
  }
  ctx.step("done");
  co_return bytesOf(json{{"peer", args.peer}, {"count", args.count}, {"echoes", echoes},
                         {"text", args.text}}
                        .dump());
}

Flow<Bytes> pongFlow(FlowContext& ctx, Bytes) {
  Session s = *ctx.counterparty();
  ctx.step("waiting for the header");
  const PongHeader header =
      co_await s.receive<PongHeader>(parseHeader, std::string("ping header"));
  json received = json::array();
  for (uint32_t i = 0; i < header.count; ++i) {
    ctx.step("waiting for ping " + std::to_string(i + 1) + " of " + std::to_string(header.count));
    const std::string ping = textOf(co_await s.receive());
    const std::string prefix = "ping " + std::to_string(i) + " ";
    if (ping.rfind(prefix, 0) != 0) {
      flows::failFlow(Errc::malformed, "expected ping " + std::to_string(i) + " from '" +
                                           s.peer() + "', got '" + ping.substr(0, 80) + "'");
    }
    received.push_back(i);
    if (header.responder_sleep_micros > 0) {
      ctx.step("sleeping before echo " + std::to_string(i + 1));
      co_await ctx.sleep(header.responder_sleep_micros);
    }
    Bytes echo = bytesOf("echo " + ping.substr(5));
    co_await s.send(std::move(echo));
  }
  ctx.step("done");
  co_return bytesOf(
      json{{"from", s.peer()}, {"count", header.count}, {"received", received}}.dump());
}

}  // namespace

Result<PingArgs> parsePingArgs(ByteView args) {
  if (args.size() > ping_args_bytes_max) {
    return makeError(Errc::too_large, "diagnostic.ping arguments are over " +
                                          std::to_string(ping_args_bytes_max) + " bytes");
  }
  json j = json::parse(args.begin(), args.end(), nullptr, false);
  if (!j.is_object()) {
    return makeError(Errc::malformed,
                     "diagnostic.ping arguments must be a JSON object {\"peer\", \"count\", ...}");
  }
  for (const auto& [key, value] : j.items()) {
    (void)value;
    if (key != "peer" && key != "count" && key != "sleep_micros" &&
        key != "responder_sleep_micros" && key != "text") {
      return makeError(Errc::malformed, "diagnostic.ping: unknown argument '" + key +
                                            "' (peer, count, sleep_micros, "
                                            "responder_sleep_micros, text)");
    }
  }
  PingArgs out;
  if (!j.contains("peer") || !j["peer"].is_string() || j["peer"].get<std::string>().empty()) {
    return makeError(Errc::malformed, "diagnostic.ping: 'peer' (a member's X.500 name) is required");
  }
  out.peer = j["peer"].get<std::string>();
  if (j.contains("count")) {
    if (!j["count"].is_number_unsigned() || j["count"].get<uint64_t>() == 0 ||
        j["count"].get<uint64_t>() > ping_count_max) {
      return makeError(Errc::malformed, "diagnostic.ping: 'count' must be an integer from 1 to " +
                                            std::to_string(ping_count_max));
    }
    out.count = j["count"].get<uint32_t>();
  }
  auto sleep = micros(j, "sleep_micros");
  if (!sleep) return makeError(Errc::malformed, "diagnostic.ping: " + sleep.error().message);
  out.sleep_micros = *sleep;
  auto responder_sleep = micros(j, "responder_sleep_micros");
  if (!responder_sleep) {
    return makeError(Errc::malformed, "diagnostic.ping: " + responder_sleep.error().message);
  }
  out.responder_sleep_micros = *responder_sleep;
  if (j.contains("text")) {
    if (!j["text"].is_string() || j["text"].get<std::string>().size() > ping_text_bytes_max) {
      return makeError(Errc::malformed, "diagnostic.ping: 'text' must be a string of at most " +
                                            std::to_string(ping_text_bytes_max) + " bytes");
    }
    out.text = j["text"].get<std::string>();
  }
  return out;
}

Status registerDiagnosticFlows(FlowService& service) {
  CCAL_TRY(service.registerFlow(diagnostic_pong_flow, pongFlow));
  CCAL_TRY(service.registerFlow(diagnostic_ping_flow, pingFlow, [](ByteView args) -> Status {
    auto parsed = parsePingArgs(args);
    if (!parsed) return parsed.error();
    return Status::success();
  }));
  return service.registerInitiating(diagnostic_ping_flow, diagnostic_pong_flow);
}

}  // namespace ccal::node
