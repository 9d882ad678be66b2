// Fuzzes the transaction component decoders (ledger/states.h). The first
// input byte picks the decoder (see fuzz::ComponentKind), the rest is the
// component. The rest starts at an odd address, so this target also drives
// decodeMessage()'s copy of unaligned input.
//
// For every decodable component: re-encoding it gives bytes that decode to an
// equal value and re-encode to the same bytes (the canonical encoding is a
// fixed point), plus a few kind-specific facts (a time window contains its
// start and not its end).

#include <string>
#include <vector>

#include "ledger/states.h"
#include "test/fuzz/fuzz_common.h"

using namespace ccal;

namespace {

// decode(bytes) succeeded with `value`: check the round trip through encode.
template <class T, class Encode, class Decode>
void checkRoundTrip(const T& value, Encode&& encode, Decode&& decode) {
  Bytes encoded = encode(value);
  auto again = decode(ByteView(encoded));
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(*again == value);
  FUZZ_CHECK(encode(*again) == encoded);
}

void fuzzStateRef(ByteView bytes) {
  auto ref = decodeStateRef(bytes);
  if (!ref) return;
  checkRoundTrip(*ref, encodeStateRef, [](ByteView b) { return decodeStateRef(b); });
  FUZZ_CHECK(!ref->toString().empty());
}

void fuzzTransactionState(ByteView bytes) {
  auto state = decodeTransactionState(bytes);
  if (!state) return;
  checkRoundTrip(*state, encodeTransactionState,
                 [](ByteView b) { return decodeTransactionState(b); });
  FUZZ_CHECK(!state->contract.empty() && !state->stateType.empty());
}

void fuzzCommandValue(ByteView bytes) {
  auto command = decodeCommandValue(bytes);
  if (!command) return;
  FUZZ_CHECK(command->signers.empty());
  checkRoundTrip(*command, encodeCommandValue, [](ByteView b) { return decodeCommandValue(b); });
}

void fuzzCommandSigners(ByteView bytes) {
  auto signers = decodeCommandSigners(bytes);
  if (!signers) return;
  FUZZ_CHECK(!signers->empty());
  checkRoundTrip(
      *signers,
      [](const std::vector<Key>& keys) { return encodeCommandSigners(Command{"x", {}, keys}); },
      [](ByteView b) { return decodeCommandSigners(b); });
}

void fuzzParty(ByteView bytes) {
  auto party = decodeParty(bytes);
  if (!party) return;
  FUZZ_CHECK(!party->name.empty());
  checkRoundTrip(*party, encodeParty, [](ByteView b) { return decodeParty(b); });
}

void fuzzTimeWindow(ByteView bytes) {
  auto window = decodeTimeWindow(bytes);
  if (!window) return;
  FUZZ_CHECK(window->fromMicros || window->untilMicros);
  if (window->fromMicros) FUZZ_CHECK(window->contains(*window->fromMicros));
  if (window->untilMicros) FUZZ_CHECK(!window->contains(*window->untilMicros));
  checkRoundTrip(*window, encodeTimeWindow, [](ByteView b) { return decodeTimeWindow(b); });
}

void fuzzHashComponent(ByteView bytes) {
  auto hash = decodeHashComponent(bytes, "attachment");
  if (!hash) return;
  checkRoundTrip(*hash, encodeHashComponent,
                 [](ByteView b) { return decodeHashComponent(b, "attachment"); });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  ByteView bytes = fuzz::input(data + 1, size - 1);
  switch (static_cast<fuzz::ComponentKind>(data[0] % fuzz::component_kind_count)) {
    case fuzz::ComponentKind::state_ref: fuzzStateRef(bytes); break;
    case fuzz::ComponentKind::transaction_state: fuzzTransactionState(bytes); break;
    case fuzz::ComponentKind::command_value: fuzzCommandValue(bytes); break;
    case fuzz::ComponentKind::command_signers: fuzzCommandSigners(bytes); break;
    case fuzz::ComponentKind::party: fuzzParty(bytes); break;
    case fuzz::ComponentKind::time_window: fuzzTimeWindow(bytes); break;
    case fuzz::ComponentKind::hash_component: fuzzHashComponent(bytes); break;
  }
  return 0;
}
