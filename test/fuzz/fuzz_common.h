#pragma once
// Shared by the libFuzzer targets and the seed-corpus generator.
//
// Every target decodes untrusted bytes; when decoding succeeds it re-encodes
// and checks a property that must hold for every decodable input. A broken
// property is a bug in CCAL, so it aborts (FUZZ_CHECK), which libFuzzer
// reports as a crash and saves the input. Properties compare decoded values
// and ids, never the input bytes: Cap'n Proto keeps unknown fields and the
// canonical check accepts them, so re-encoding may legitimately differ from
// the input.

#include <cstddef>
#include <cstdint>

#include "ledger/assert.h"
#include "ledger/bytes.h"

#define FUZZ_CHECK(expr) CCAL_ASSERT_MSG(expr, "fuzz property")

namespace ccal::fuzz {

inline ByteView input(const uint8_t* data, size_t size) { return {data, size}; }

// fuzz_component: the first input byte (mod component_kind_count) picks the
// decoder; the rest of the input is the component's bytes.
enum class ComponentKind : uint8_t {
  state_ref = 0,
  transaction_state = 1,
  command_value = 2,
  command_signers = 3,
  party = 4,
  time_window = 5,
  hash_component = 6,
};
inline constexpr uint8_t component_kind_count = 7;

// fuzz_network: the first input byte (mod network_kind_count) picks the
// network map decoder (node/network_map.h); the rest is its input.
enum class NetworkKind : uint8_t {
  network_parameters = 0,
  signed_network_parameters = 1,
  node_info = 2,
  signed_node_info = 3,
};
inline constexpr uint8_t network_kind_count = 4;

// fuzz_notarisation: the first input byte (mod notarisation_kind_count)
// picks the decoder of notary/notarisation_messages.h; the rest is its input.
enum class NotarisationKind : uint8_t {
  request = 0,
  reply = 1,
  signed_reply = 2,
  batch_effects = 3,
};
inline constexpr uint8_t notarisation_kind_count = 4;

// fuzz_pbft: the first input byte (mod pbft_kind_count) picks the decoder of
// notary/pbft_messages.h; the rest is its input.
enum class PbftKind : uint8_t {
  frame = 0,
  batch = 1,
  checkpoint = 2,
  view_change = 3,
  new_view = 4,
};
inline constexpr uint8_t pbft_kind_count = 5;

// fuzz_messaging: the first input byte (mod messaging_kind_count) picks what
// a member takes from a peer: a LinkMux frame, a delivery frame, or a flow
// payload (flows/builtin_messages.h, flows/deal_flows.h); the rest is its
// input (deal_args: the next byte, mod the number of deal flows, picks the flow).
enum class MessagingKind : uint8_t {
  mux_frame = 0,
  delivery_frame = 1,
  builtin_message = 2,
  id_list = 3,
  transaction_list = 4,
  notary_answer = 5,
  states = 6,
  deal_args = 7,
};
inline constexpr uint8_t messaging_kind_count = 8;

}  // namespace ccal::fuzz
