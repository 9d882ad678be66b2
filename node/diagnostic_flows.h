#pragma once
// Diagnostic flows every member node registers, so that a real network's
// flow runtime can be exercised before (and beside) the business flows:
// real sessions between members, a real journal, sleeps to make a flow
// last long enough to be killed or crashed in the middle.
//
// diagnostic.ping (initiating; answered by diagnostic.pong). Arguments, as
// JSON: {"peer": X.500 name, "count": 1..ping_count_max, "sleep_micros":
// pause after each echo (default 0), "responder_sleep_micros": the
// responder's pause before each echo (default 0), "text": carried by every
// message (default "")}. The initiator sends a header ({"count",
// "responder_sleep_micros"}), then "ping I TEXT" for I = 0..count-1 and
// waits for "echo I TEXT" after each. Its result (JSON): {"peer", "count",
// "echoes", "text"}. The responder's result: {"from", "count", "received":
// [the I of each ping, in the order taken]}; a ping out of sequence or an
// echo that does not match ends the flow with an error naming both.
//
// Both are deterministic given their arguments and events (the flow
// runtime's replay rule): they use nothing but their sessions and sleeps.

#include <cstdint>
#include <string>

#include "flows/flow_runtime.h"
#include "ledger/result.h"

namespace ccal::node {

inline constexpr const char* diagnostic_ping_flow = "diagnostic.ping";
inline constexpr const char* diagnostic_pong_flow = "diagnostic.pong";
inline constexpr uint32_t ping_count_max = 1000;
inline constexpr int64_t ping_sleep_micros_max = 600'000'000;
inline constexpr size_t ping_text_bytes_max = 1024;
inline constexpr size_t ping_args_bytes_max = 4096;

struct PingArgs {
  std::string peer;
  uint32_t count = 1;
  int64_t sleep_micros = 0;
  int64_t responder_sleep_micros = 0;
  std::string text;
};

// Checks a ping's arguments (JSON bytes); the error names the field.
Result<PingArgs> parsePingArgs(ByteView args);

class FlowService;

// Registers diagnostic.pong, diagnostic.ping (with its arguments check) and
// the initiating pair. Before the service starts.
Status registerDiagnosticFlows(FlowService& service);

}  // namespace ccal::node
