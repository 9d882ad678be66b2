#include "notary/pbft_messages.h"

#include <doctest/doctest.h>

using namespace ccal;
using namespace ccal::notary::pbft;

namespace {

WireRequest request(uint64_t seq, size_t body_bytes = 10) {
  WireRequest r;
  r.client = "O=Cooperative, L=Sanya, C=CN";
  r.client_seq = seq;
  r.body = Bytes(body_bytes, 7);
  r.authenticator = {Bytes(mac_bytes, 1), Bytes(mac_bytes, 2)};
  return r;
}

}  // namespace

TEST_CASE("pbft messages: every kind round-trips through its frame") {
  PbftLimits limits;
  PrePrepareMsg pp{3, 9, BatchBody{1234, {request(1), request(2)}}};
  auto back = decodeFrame(encodeFrame(Message(pp)), limits);
  REQUIRE(back.ok());
  const auto& got = std::get<PrePrepareMsg>(*back);
  CHECK(got.view == 3);
  CHECK(got.seq == 9);
  CHECK(got.batch.digest() == pp.batch.digest());
  CHECK(got.batch.requests[1].authenticator == pp.batch.requests[1].authenticator);

  Commit c{{4, 5, SecureHash::of(asBytes("x"))}};
  auto cb = decodeFrame(encodeFrame(Message(c)), limits);
  REQUIRE(cb.ok());
  CHECK(std::get<Commit>(*cb).digest == c.digest);

  ViewChangeMsg vc;
  vc.new_view = 2;
  vc.prepared = {{5, SecureHash::of(asBytes("a")), 1}};
  vc.pre_prepared = {{5, SecureHash::of(asBytes("a")), 1}, {5, SecureHash::zero(), 0}, {6, SecureHash::of(asBytes("b")), 1}};
  auto vb = decodeViewChange(encodeViewChange(vc), limits);
  REQUIRE(vb.ok());
  CHECK(vb->pre_prepared.size() == 3);
  CHECK(vb->pre_prepared[1].digest.isZero());
}

TEST_CASE("pbft messages: the batch digest covers time and requests, not authenticators") {
  BatchBody a{100, {request(1)}}, b = a;
  b.requests[0].authenticator.clear();
  CHECK(a.digest() == b.digest());
  b.time_micros = 101;
  CHECK(a.digest() != b.digest());
  BatchBody c = a;
  c.requests[0].body.push_back(1);
  CHECK(a.digest() != c.digest());
}

TEST_CASE("pbft messages: hostile frames are refused with a reason, never a crash") {
  PbftLimits limits;
  limits.request_body_bytes_max = 100;
  limits.batch_requests_max = 3;
  CHECK(decodeFrame({}, limits).error().code == Errc::malformed);
  Bytes garbage(64, 0xff);
  CHECK(!decodeFrame(garbage, limits).ok());
  auto big = decodeFrame(encodeFrame(Message(request(1, 101))), limits);
  REQUIRE(!big.ok());
  CHECK(big.error().code == Errc::too_large);
  PrePrepareMsg pp{0, 1, BatchBody{1, {request(1), request(2), request(3), request(4)}}};
  CHECK(decodeFrame(encodeFrame(Message(pp)), limits).error().code == Errc::too_large);
  WireRequest zero = request(0);
  CHECK(decodeFrame(encodeFrame(Message(zero)), limits).error().code == Errc::malformed);
  WireRequest badmac = request(1);
  badmac.authenticator[0] = Bytes(5, 1);
  CHECK(decodeFrame(encodeFrame(Message(badmac)), limits).error().code == Errc::bad_length);
  // A truncated frame of every kind fails cleanly.
  const Bytes frame = encodeFrame(Message(pp));
  for (size_t cut = 8; cut < frame.size(); cut += 8) {
    (void)decodeFrame(ByteView(frame.data(), cut), PbftLimits{});
  }
  // Entries out of order in a P set are refused.
  ViewChangeMsg vc;
  vc.new_view = 1;
  vc.prepared = {{6, SecureHash::of(asBytes("a")), 0}, {5, SecureHash::of(asBytes("b")), 0}};
  CHECK(decodeViewChange(encodeViewChange(vc), limits).error().code == Errc::malformed);
}

TEST_CASE("pbft messages: frames and digests built from a held batch equal the message's") {
  const BatchBody batch{777, {request(1, 100), request(2, 3), request(3, 0)}};
  CHECK(encodePrePrepareFrame(4, 11, batch) == encodeFrame(Message(PrePrepareMsg{4, 11, batch})));
  CHECK(encodeBatchDataFrame(11, batch) == encodeFrame(Message(BatchDataMsg{11, batch})));
  CHECK(encodeBatch(batch) == encodeFrame(Message(BatchDataMsg{0, batch})));
  const Bytes reply_body(300, 9);
  CHECK(encodeReplyFrame(5, 42, 3, reply_body) == encodeFrame(Message(ReplyMsg{5, 42, 3, reply_body})));
  std::vector<SecureHash> bodies;
  for (const auto& r : batch.requests) {
    bodies.push_back(SecureHash::of(r.body));
    CHECK(r.digestWithBodyHash(bodies.back()) == r.digest());
  }
  CHECK(batch.digest(bodies) == batch.digest());
  // Hashes that are not the bodies' give another digest (they are what it covers).
  bodies[1] = SecureHash::of(asBytes("another body"));
  CHECK(batch.digest(bodies) != batch.digest());
}

TEST_CASE(
    "pbft messages: frames are built flat (one segment, not canonicalized) and read back, small "
    "and large") {
  // A batch far beyond the per-thread scratch segment (1024 words): built in
  // one segment sized for it, and equal after a round trip.
  BatchBody big{123, {}};
  for (uint64_t i = 0; i < 500; ++i) big.requests.push_back(request(i + 1, 600));
  const Bytes frame = encodePrePrepareFrame(2, 9, big);
  auto m = decodeFrame(frame, PbftLimits{});
  REQUIRE(m.ok());
  const auto& pp = std::get<PrePrepareMsg>(*m);
  CHECK(pp.view == 2);
  CHECK(pp.seq == 9);
  CHECK(pp.batch.digest() == big.digest());
  REQUIRE(pp.batch.requests.size() == big.requests.size());
  CHECK(pp.batch.requests[499].body == big.requests[499].body);
  CHECK(pp.batch.requests[499].authenticator == big.requests[499].authenticator);
  // The stored form of a batch reads back the same way.
  auto stored = decodeBatch(encodeBatch(big), PbftLimits{});
  REQUIRE(stored.ok());
  CHECK(stored->digest() == big.digest());
  // A backup stores the pre-prepare frame as it came: read as the batch too.
  auto kept = decodeBatch(frame, PbftLimits{});
  REQUIRE(kept.ok());
  CHECK(kept->digest() == big.digest());
  CHECK(kept->time_micros == big.time_micros);
  // Any other frame is not a stored batch.
  auto other = decodeBatch(encodeReplyFrame(1, 2, 3, Bytes(4, 5)), PbftLimits{});
  REQUIRE(!other.ok());
  CHECK(other.error().message.find("not a batch") != std::string::npos);
  // Small frames reuse the scratch segment: many in a row, each intact.
  for (uint64_t i = 0; i < 50; ++i) {
    const Bytes body(static_cast<size_t>(i * 37), static_cast<uint8_t>(i));
    auto r = decodeFrame(encodeReplyFrame(i, 1000 + i, 1, body), PbftLimits{});
    REQUIRE(r.ok());
    const auto& reply = std::get<ReplyMsg>(*r);
    CHECK(reply.view == i);
    CHECK(reply.client_seq == 1000 + i);
    CHECK(reply.body == body);
  }
}

TEST_CASE(
    "pbft messages: a replies frame carries one client's replies from a batch; split, bounded") {
  RepliesMsg m{7, 2, {{11, Bytes(300, 1)}, {12, Bytes{}}, {40, Bytes(5000, 3)}}};
  const Bytes frame = encodeFrame(Message(m));
  std::vector<std::pair<uint64_t, ByteView>> views;
  for (const auto& e : m.entries) views.emplace_back(e.client_seq, e.body);
  CHECK(encodeRepliesFrame(7, 2, views) == frame);
  CHECK(encodeRepliesFrame(7, 2, {}) == encodeFrame(Message(RepliesMsg{7, 2, {}})));
  auto back = decodeFrame(frame, PbftLimits{});
  REQUIRE(back.ok());
  CHECK(std::string(messageName(*back)) == "replies");
  auto split = splitReplies(std::move(*back));
  REQUIRE(split.size() == 3);
  for (size_t i = 0; i < 3; ++i) {
    CHECK(split[i].view == 7);
    CHECK(split[i].replica == 2);
    CHECK(split[i].client_seq == m.entries[i].client_seq);
    CHECK(split[i].body == m.entries[i].body);
  }
  auto one = splitReplies(Message(ReplyMsg{1, 2, 3, Bytes{4}}));
  REQUIRE(one.size() == 1);
  CHECK(one[0].body == Bytes{4});
  CHECK(splitReplies(Message(Commit{{1, 2, SecureHash::zero()}})).empty());

  PbftLimits small;
  small.batch_requests_max = 2;
  auto many = decodeFrame(frame, small);
  REQUIRE(!many.ok());
  CHECK(many.error().code == Errc::too_large);
  CHECK(many.error().message.find("3 replies") != std::string::npos);
  small = PbftLimits{};
  small.reply_body_bytes_max = 4096;
  auto big = decodeFrame(frame, small);
  REQUIRE(!big.ok());
  CHECK(big.error().message.find("reply body of 5000 bytes") != std::string::npos);
  for (size_t cut = 8; cut < frame.size(); cut += 64)
    (void)decodeFrame(ByteView(frame.data(), cut), PbftLimits{});
}
