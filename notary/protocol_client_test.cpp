#include "notary/protocol_client.h"

#include <doctest/doctest.h>

#include "notary/pbft_testing.h"

using namespace ccal;
using namespace ccal::notary;
using namespace ccal::notary::pbft;
using ccal::notary::testing::LinkHub;
using ccal::notary::testing::ManualLoop;

namespace {

KeyPair keyOf(const std::string& name) {
  return KeyPair::fromSeed(SecureHash::of(asBytes("protocol client test " + name)).view()).value();
}
std::string replicaName(uint32_t i) { return "O=Replica " + std::to_string(i) + ", L=Haikou, C=CN"; }
const std::string client_name = "O=Client, L=Sanya, C=CN";

// A client of 4 replicas; every frame it sends is recorded with its time.
struct Fixture {
  ManualLoop loop;
  LinkHub hub{loop};
  std::vector<std::pair<int64_t, std::string>> sent;  // (time, replica)
  std::vector<std::string> logged;
  std::unique_ptr<ProtocolClient> client;

  Fixture() {
    hub.setFilter([this](const std::string& from, const std::string& to, ByteView) {
      if (from == client_name) sent.emplace_back(loop.nowMicros(), to);
      return false;  // the replicas are the test
    });
    ProtocolClientConfig c;
    c.client_name = client_name;
    for (uint32_t i = 0; i < 4; ++i) c.replicas.push_back({replicaName(i), keyOf(replicaName(i)).publicKey()});
    c.retransmit_delay_micros_min = 100'000;
    c.retransmit_delay_micros_max = 800'000;
    c.log = [this](std::string_view line) { logged.emplace_back(line); };
    client = std::make_unique<ProtocolClient>(c, keyOf(client_name), hub.link(client_name), loop, loop);
  }
  // A frame from `replica` (its Link name) to the client, delivered now.
  void deliver(uint32_t replica, const Bytes& frame) {
    client->onFrame(replicaName(replica), frame);
  }
  Bytes reply(uint32_t replica, uint64_t client_seq, std::string body) {
    return encodeFrame(Message(ReplyMsg{0, client_seq, replica, Bytes(body.begin(), body.end())}));
  }
  std::vector<int64_t> sendTimes(const std::string& to) const {
    std::vector<int64_t> out;
    for (const auto& [t, peer] : sent) {
      if (peer == to) out.push_back(t);
    }
    return out;
  }
};

}  // namespace

TEST_CASE(
    "protocol client: a request goes to the primary with a MAC for every replica, then to every "
    "replica with doubling delay up to its bound") {
  Fixture fx;
  const int64_t t0 = fx.loop.nowMicros();
  auto seq = fx.client->submit(Bytes{'h', 'i'}, [](uint32_t, ByteView) {});
  REQUIRE(seq.ok());
  CHECK(*seq >= static_cast<uint64_t>(t0));  // client_seq follows the clock
  REQUIRE(fx.sent.size() == 1);
  CHECK(fx.sent[0].second == replicaName(0));  // view 0's primary

  // The authenticator: one MAC per replica, each valid for that replica only.
  std::optional<WireRequest> request;
  fx.hub.setFilter([&](const std::string& from, const std::string& to, ByteView frame) {
    if (from == client_name) {
      fx.sent.emplace_back(fx.loop.nowMicros(), to);
      auto m = decodeFrame(frame, PbftLimits{});
      REQUIRE(m.ok());
      request = std::get<WireRequest>(*m);
    }
    return false;
  });
  fx.loop.advance(100'000);
  REQUIRE(request.has_value());
  CHECK(request->client == client_name);
  CHECK(request->client_seq == *seq);
  REQUIRE(request->authenticator.size() == 4);
  for (uint32_t i = 0; i < 4; ++i) {
    KeyRing ring(keyOf(replicaName(i)), replicaName(i));
    auto key = ring.keyFor(client_name, keyOf(client_name).publicKey());
    REQUIRE(key.ok());
    CHECK(macMatches(*key, request->digest(), request->authenticator[i]));
    CHECK(!macMatches(*key, request->digest(), request->authenticator[(i + 1) % 4]));
  }

  fx.loop.advance(10'000'000);
  // Sends to replica 0: at 0, then after 100, 200, 400, 800, 800, ... ms.
  const auto times = fx.sendTimes(replicaName(0));
  REQUIRE(times.size() >= 8);
  std::vector<int64_t> gaps;
  for (size_t i = 1; i < times.size(); ++i) gaps.push_back(times[i] - times[i - 1]);
  CHECK(gaps[0] == 100'000);
  CHECK(gaps[1] == 200'000);
  CHECK(gaps[2] == 400'000);
  CHECK(gaps[3] == 800'000);
  for (size_t i = 3; i < gaps.size(); ++i) CHECK(gaps[i] == 800'000);
  CHECK(fx.client->stats().retransmissions == times.size() - 1);
  CHECK(fx.sendTimes(replicaName(3)).size() ==
        times.size() - 1);  // from the first retransmission on
}

TEST_CASE(
    "protocol client: a new request goes to the primary of the view f+1 replicas report, not one "
    "replica's claim") {
  Fixture fx;
  auto reply_in_view = [&](uint32_t replica, uint64_t view, uint64_t client_seq) {
    fx.deliver(replica, encodeFrame(Message(ReplyMsg{view, client_seq, replica, Bytes{'r'}})));
  };
  auto first_target = [&]() {
    fx.sent.clear();
    auto seq = fx.client->submit(Bytes{'q'}, [](uint32_t, ByteView) {});
    REQUIRE(seq.ok());
    REQUIRE(fx.sent.size() == 1);
    const std::string to = fx.sent[0].second;
    fx.client->finish(*seq);
    return to;
  };
  auto seq = fx.client->submit(Bytes{'a'}, [](uint32_t, ByteView) {});
  REQUIRE(seq.ok());
  // One replica (perhaps faulty) says view 7: not enough to move the client.
  reply_in_view(3, 7, *seq);
  CHECK(fx.client->primaryIndex() == 0);
  CHECK(first_target() == replicaName(0));
  // A second replica reports view 1 (f + 1 = 2 replicas at 1 or beyond): its primary is replica 1.
  reply_in_view(2, 1, *seq);
  CHECK(fx.client->primaryIndex() == 1);
  CHECK(first_target() == replicaName(1));
  // A reply to a request already finished still tells the view.
  reply_in_view(0, 2, *seq - 1);
  reply_in_view(1, 2, *seq - 1);
  CHECK(fx.client->primaryIndex() == 2);
  // Views never go back: an old reply reporting view 0 changes nothing.
  reply_in_view(1, 0, *seq - 1);
  CHECK(fx.client->primaryIndex() == 2);
  fx.client->finish(*seq);
}

TEST_CASE("protocol client: each replica's reply is handed over once; a replica that answered is not sent to again") {
  Fixture fx;
  std::vector<std::pair<uint32_t, std::string>> replies;
  auto seq = fx.client->submit(Bytes{'x'}, [&](uint32_t replica, ByteView body) {
    replies.emplace_back(replica, std::string(body.begin(), body.end()));
  });
  REQUIRE(seq.ok());
  fx.deliver(1, fx.reply(1, *seq, "one"));
  fx.deliver(1, fx.reply(1, *seq, "one"));       // duplicate
  fx.deliver(1, fx.reply(1, *seq, "another"));   // a second answer from the same replica
  fx.deliver(2, fx.reply(2, *seq, "two"));
  fx.deliver(2, fx.reply(2, *seq + 1, "other"));  // answers a request never sent: dropped
  REQUIRE(replies.size() == 2);
  CHECK(replies[0] == std::make_pair(1u, std::string("one")));
  CHECK(replies[1] == std::make_pair(2u, std::string("two")));
  CHECK(fx.client->stats().replies == 2);

  fx.sent.clear();
  fx.loop.advance(100'000);
  // Retransmitted to the replicas that have not answered only.
  REQUIRE(fx.sent.size() == 2);
  CHECK(fx.sent[0].second == replicaName(0));
  CHECK(fx.sent[1].second == replicaName(3));
}

TEST_CASE("protocol client: finish() stops retransmission and drops later replies") {
  Fixture fx;
  int calls = 0;
  auto a = fx.client->submit(Bytes{'a'}, [&](uint32_t, ByteView) { ++calls; });
  auto b = fx.client->submit(Bytes{'b'}, [&](uint32_t, ByteView) {});
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  CHECK(*b > *a);
  CHECK(fx.client->outstanding() == 2);
  fx.client->finish(*a);
  fx.client->finish(*a);  // twice: a no-op
  CHECK(fx.client->outstanding() == 1);
  fx.deliver(0, fx.reply(0, *a, "late"));
  CHECK(calls == 0);
  fx.sent.clear();
  fx.loop.advance(1'000'000);
  // Only b is retransmitted: 3 rounds (100, 200, 400 ms) x 4 replicas.
  CHECK(fx.sent.size() == 12);
  fx.client->finish(*b);
  CHECK(fx.client->outstanding() == 0);
  CHECK(fx.loop.timers() == 0);
  fx.sent.clear();
  fx.loop.advance(10'000'000);
  CHECK(fx.sent.empty());
}

TEST_CASE("protocol client: malformed, foreign and misaddressed frames are counted and dropped") {
  Fixture fx;
  int calls = 0;
  auto seq = fx.client->submit(Bytes{'z'}, [&](uint32_t, ByteView) { ++calls; });
  REQUIRE(seq.ok());
  fx.deliver(0, Bytes{0xde, 0xad, 0xbe, 0xef});                                   // not a frame
  fx.deliver(0, Bytes{});                                                         // empty
  fx.deliver(0, encodeFrame(Message(StatusMsg{0, 0, 0, false})));                 // not a reply
  fx.deliver(0, fx.reply(1, *seq, "spoofed"));                                    // claims another index
  fx.deliver(0, fx.reply(7, *seq, "no such replica"));                            // outside the cluster
  fx.client->onFrame("O=Stranger, L=Paris, C=FR", fx.reply(2, *seq, "stranger"));  // not a replica
  Bytes truncated = fx.reply(2, *seq, "good");
  truncated.resize(truncated.size() / 2);
  fx.deliver(2, truncated);
  CHECK(calls == 0);
  CHECK(fx.client->stats().frames_rejected == 7);
  CHECK(fx.logged.size() == 7);
  // The request still waits for real answers.
  fx.deliver(2, fx.reply(2, *seq, "good"));
  CHECK(calls == 1);
}

TEST_CASE("protocol client: requests over the size or outstanding limits are refused at once") {
  ManualLoop loop;
  LinkHub hub(loop);
  ProtocolClientConfig c;
  c.client_name = client_name;
  for (uint32_t i = 0; i < 4; ++i) c.replicas.push_back({replicaName(i), keyOf(replicaName(i)).publicKey()});
  c.outstanding_requests_max = 2;
  c.request_body_bytes_max = 8;
  c.log = [](std::string_view) {};
  ProtocolClient client(c, keyOf(client_name), hub.link(client_name), loop, loop);
  auto big = client.submit(Bytes(9, 'x'), [](uint32_t, ByteView) {});
  REQUIRE(!big.ok());
  CHECK(big.error().code == Errc::too_large);
  REQUIRE(client.submit(Bytes{1}, [](uint32_t, ByteView) {}).ok());
  REQUIRE(client.submit(Bytes{2}, [](uint32_t, ByteView) {}).ok());
  auto third = client.submit(Bytes{3}, [](uint32_t, ByteView) {});
  REQUIRE(!third.ok());
  CHECK(third.error().code == Errc::unavailable);
  CHECK(client.outstanding() == 2);
}

TEST_CASE(
    "protocol client: a replies frame answers each of its requests once; a replica's name must "
    "match") {
  Fixture fx;
  std::map<uint64_t, std::vector<std::pair<uint32_t, std::string>>> answers;
  std::vector<uint64_t> seqs;
  for (int i = 0; i < 3; ++i) {
    auto seq = fx.client->submit(Bytes{'q'}, [&answers, i, &seqs](uint32_t replica, ByteView body) {
      answers[seqs[i]].emplace_back(replica, std::string(body.begin(), body.end()));
    });
    REQUIRE(seq.ok());
    seqs.push_back(*seq);
  }
  // Replica 1's replies to the first two, and one to a request never sent.
  RepliesMsg m{0, 1, {{seqs[0], Bytes{'a'}}, {seqs[1], Bytes{'b'}}, {999, Bytes{'z'}}}};
  fx.deliver(1, encodeFrame(Message(m)));
  CHECK(answers[seqs[0]] == std::vector<std::pair<uint32_t, std::string>>{{1, "a"}});
  CHECK(answers[seqs[1]] == std::vector<std::pair<uint32_t, std::string>>{{1, "b"}});
  CHECK(answers[seqs[2]].empty());
  // Again (a duplicate): each request takes one answer per replica.
  fx.deliver(1, encodeFrame(Message(m)));
  CHECK(answers[seqs[0]].size() == 1);
  CHECK(fx.client->stats().replies == 2);
  // Claiming to be replica 2 over replica 1's link: refused, nothing delivered.
  m.replica = 2;
  fx.deliver(1, encodeFrame(Message(m)));
  CHECK(answers[seqs[0]].size() == 1);
  CHECK(fx.client->stats().frames_rejected == 1);
  REQUIRE(!fx.logged.empty());
  CHECK(fx.logged.back().find("replies") != std::string::npos);
  for (uint64_t s : seqs) fx.client->finish(s);
}
