// Fuzzes the decoders of the PBFT protocol (schemas/notary_protocol.capnp,
// notary/pbft_messages.h): every frame a replica or client takes from the
// network (decodeFrame), the bodies of signed messages (checkpoint,
// view-change, new-view) and a batch as stored in the replica's log. The
// first input byte (mod fuzz::pbft_kind_count) picks the decoder; the rest is
// its input.
//
// For every decodable input:
//  - the value encodes to bytes that decode again to a value encoding the
//    same bytes (one value, one encoding); a batch keeps its digest and a
//    request its digest;
//  - a view-change set built from a decoded new-view's V, once its entries
//    pass the window check the replica applies (Replica::checkViewChange),
//    is decided or left undecided by decideNewView, never a crash.

#include <set>

#include "notary/pbft_messages.h"
#include "notary/pbft_view_change.h"
#include "test/fuzz/fuzz_common.h"

using namespace ccal;
using namespace ccal::notary::pbft;

namespace {

constexpr uint64_t window_batches = 128;  // the replica's default window_batches_max

bool inWindow(const ViewChangeMsg& vc) {
  for (const auto* set : {&vc.prepared, &vc.pre_prepared}) {
    for (const auto& e : *set) {
      if (e.seq <= vc.stable_seq || e.seq > vc.stable_seq + window_batches || e.view >= vc.new_view) return false;
    }
  }
  return vc.stable_seq <= UINT64_MAX - window_batches;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const auto kind = static_cast<fuzz::PbftKind>(data[0] % fuzz::pbft_kind_count);
  const ByteView bytes = fuzz::input(data + 1, size - 1);
  const PbftLimits limits;
  switch (kind) {
    case fuzz::PbftKind::frame:
      if (auto m = decodeFrame(bytes, limits)) {
        const Bytes encoded = encodeFrame(*m);
        auto again = decodeFrame(encoded, limits);
        FUZZ_CHECK(again.ok());
        FUZZ_CHECK(encodeFrame(*again) == encoded);
        FUZZ_CHECK(std::string(messageName(*again)) == messageName(*m));
        if (auto* r = std::get_if<WireRequest>(&*m)) FUZZ_CHECK(std::get<WireRequest>(*again).digest() == r->digest());
        if (auto* p = std::get_if<PrePrepareMsg>(&*m)) {
          FUZZ_CHECK(std::get<PrePrepareMsg>(*again).batch.digest() == p->batch.digest());
        }
      }
      break;
    case fuzz::PbftKind::batch:
      if (auto b = decodeBatch(bytes, limits)) {
        const Bytes encoded = encodeBatch(*b);
        auto again = decodeBatch(encoded, limits);
        FUZZ_CHECK(again.ok());
        FUZZ_CHECK(encodeBatch(*again) == encoded);
        FUZZ_CHECK(again->digest() == b->digest());
      }
      break;
    case fuzz::PbftKind::checkpoint:
      if (auto c = decodeCheckpoint(bytes, limits)) {
        const Bytes encoded = encodeCheckpoint(*c);
        auto again = decodeCheckpoint(encoded, limits);
        FUZZ_CHECK(again.ok());
        FUZZ_CHECK(again->seq == c->seq && again->state_digest == c->state_digest);
      }
      break;
    case fuzz::PbftKind::view_change:
      if (auto vc = decodeViewChange(bytes, limits)) {
        const Bytes encoded = encodeViewChange(*vc);
        auto again = decodeViewChange(encoded, limits);
        FUZZ_CHECK(again.ok());
        FUZZ_CHECK(encodeViewChange(*again) == encoded);
        FUZZ_CHECK(again->prepared == vc->prepared && again->pre_prepared == vc->pre_prepared);
      }
      break;
    case fuzz::PbftKind::new_view:
      if (auto nv = decodeNewView(bytes, limits)) {
        const Bytes encoded = encodeNewView(*nv);
        auto again = decodeNewView(encoded, limits);
        FUZZ_CHECK(again.ok());
        FUZZ_CHECK(encodeNewView(*again) == encoded);
        FUZZ_CHECK(again->chosen == nv->chosen && again->start_seq == nv->start_seq);
        // The decision over its V set (signatures are not checked here:
        // decideNewView must cope with any well-formed set).
        std::vector<ViewChangeMsg> s;
        std::set<uint32_t> senders;
        for (const auto& sm : nv->view_changes) {
          if (sm.kind != SignedKind::view_change || !senders.insert(sm.replica).second) continue;
          auto vc = decodeViewChange(sm.body, limits);
          if (!vc || vc->new_view != nv->view || !inWindow(*vc)) continue;
          s.push_back(std::move(*vc));
        }
        for (uint32_t f = 0; f <= 2; ++f) {
          if (s.size() < 2 * size_t(f) + 1) break;
          if (auto d = decideNewView(s, nv->view, f)) {
            FUZZ_CHECK(d->start_from < s.size());
            for (const auto& e : d->chosen) FUZZ_CHECK(e.seq > d->start_seq);
          }
        }
      }
      break;
  }
  return 0;
}
