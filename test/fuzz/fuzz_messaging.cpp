// Fuzzes what a member takes from its peers above the TLS link: the LinkMux's
// channel tag (flows/link_mux.h), the reliable-delivery frames
// (decodeDeliveryFrame, flows/delivery.h) and the flows' payloads inside
// them (flows/builtin_messages.h: builtin messages, id lists, transaction
// lists, notary answers; flows/deal_flows.h: deal arguments, state lists).
// The first input byte (mod fuzz::messaging_kind_count) picks the decoder;
// the rest is its input (for deal arguments, the next byte picks the flow).
//
// For every decodable input, the value encodes to bytes that decode again to
// a value encoding the same bytes (one value, one encoding). For the mux,
// every frame is either handed to exactly one channel, without its tag, or
// dropped and counted as empty or of an unserved channel; never both.

#include <variant>

#include "flows/builtin_messages.h"
#include "flows/deal_flows.h"
#include "flows/delivery.h"
#include "flows/link_mux.h"
#include "test/fuzz/fuzz_common.h"

using namespace ccal;
using namespace ccal::flows;

namespace {

// Delivery's bounds for a link whose frames may be 8 MiB.
constexpr size_t frame_bytes_max = 8u << 20;
constexpr size_t payload_bytes_max = frame_bytes_max - 256;
constexpr size_t ack_seqs_max = 4096;

Bytes encodeDelivery(const DeliveryFrame& f) {
  if (const auto* m = std::get_if<DeliveryMessageFrame>(&f)) {
    return encodeMessageFrame(m->incarnation, m->seq, m->floor, m->id, m->payload);
  }
  const auto& a = std::get<DeliveryAckFrame>(f);
  return encodeAckFrame(a.incarnation, a.up_to, a.seqs);
}

// decode -> encode -> decode -> encode: the two encodings are equal.
template <typename Decode, typename Encode>
void roundTrip(ByteView bytes, Decode decode, Encode encode) {
  auto v = decode(bytes);
  if (!v) return;
  const Bytes encoded = encode(*v);
  auto again = decode(ByteView(encoded));
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(encode(*again) == encoded);
}

// A base link that delivers nothing by itself and keeps what is sent.
class StubLink final : public Link {
 public:
  void setHandler(LinkHandler* handler) override { handler_ = handler; }
  Status send(std::string_view, Bytes) override { return Status::success(); }
  size_t frameBytesMax() const override { return frame_bytes_max; }

 private:
  LinkHandler* handler_ = nullptr;
};

class Recorder final : public LinkHandler {
 public:
  void onFrame(std::string_view, ByteView frame) override {
    ++frames;
    last.assign(frame.begin(), frame.end());
  }
  void onPeerUp(std::string_view) override {}
  void onPeerDown(std::string_view) override {}
  size_t frames = 0;
  Bytes last;
};

void muxFrame(ByteView bytes) {
  StubLink base;
  LinkMux mux(base, [](std::string_view) {});
  Recorder messaging, notary;
  mux.channel(link_channel_messaging).setHandler(&messaging);
  mux.channel(link_channel_notary).setHandler(&notary);
  mux.onFrame("peer", bytes);
  const auto& s = mux.stats();
  FUZZ_CHECK(s.frames_in == 1);
  const size_t delivered = messaging.frames + notary.frames;
  FUZZ_CHECK(delivered + s.frames_empty + s.frames_unknown_channel == 1);
  if (bytes.empty()) {
    FUZZ_CHECK(s.frames_empty == 1);
    return;
  }
  const bool served = bytes[0] == link_channel_messaging || bytes[0] == link_channel_notary;
  FUZZ_CHECK(delivered == (served ? 1u : 0u));
  if (!served) return;
  const Recorder& got = bytes[0] == link_channel_messaging ? messaging : notary;
  FUZZ_CHECK(got.frames == 1);
  FUZZ_CHECK(got.last == Bytes(bytes.begin() + 1, bytes.end()));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const auto kind = static_cast<fuzz::MessagingKind>(data[0] % fuzz::messaging_kind_count);
  const ByteView bytes = fuzz::input(data + 1, size - 1);
  using K = fuzz::MessagingKind;
  switch (kind) {
    case K::mux_frame:
      muxFrame(bytes);
      break;
    case K::delivery_frame:
      roundTrip(
          bytes,
          [](ByteView b) { return decodeDeliveryFrame(b, frame_bytes_max, payload_bytes_max, ack_seqs_max); },
          encodeDelivery);
      break;
    case K::builtin_message: {
      const std::vector<BuiltinMessage::Kind> all = {
          BuiltinMessage::Kind::sign_request, BuiltinMessage::Kind::signatures, BuiltinMessage::Kind::fetch,
          BuiltinMessage::Kind::transactions, BuiltinMessage::Kind::finality,   BuiltinMessage::Kind::recorded};
      auto decoded = decodeBuiltinMessage(bytes, all);
      if (decoded) {
        const Bytes encoded = encodeBuiltinMessage(*decoded);
        auto again = decodeBuiltinMessage(encoded, all);
        FUZZ_CHECK(again.ok());
        FUZZ_CHECK(again->kind == decoded->kind);
        FUZZ_CHECK(encodeBuiltinMessage(*again) == encoded);
        // Accepted only among the kinds asked for.
        std::vector<BuiltinMessage::Kind> others;
        for (auto k : all) {
          if (k != decoded->kind) others.push_back(k);
        }
        FUZZ_CHECK(!decodeBuiltinMessage(bytes, others).ok());
      }
      break;
    }
    case K::id_list:
      roundTrip(bytes, decodeIdList, encodeIdList);
      break;
    case K::transaction_list:
      roundTrip(bytes, decodeTransactionList, encodeTransactionList);
      break;
    case K::notary_answer:
      roundTrip(bytes, decodeNotaryAnswer, encodeNotaryAnswer);
      break;
    case K::states:
      roundTrip(bytes, decodeStates, encodeStates);
      break;
    case K::deal_args: {
      if (bytes.empty()) break;
      const auto& specs = dealFlowSpecs();
      const std::string_view flow = specs[bytes[0] % specs.size()].flow;
      roundTrip(
          bytes.subspan(1), [flow](ByteView b) { return decodeDealArgs(flow, b); }, encodeDealArgs);
      break;
    }
  }
  return 0;
}
