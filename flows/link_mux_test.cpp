#include "flows/link_mux.h"

#include <doctest/doctest.h>

#include <string>
#include <utility>
#include <vector>

using namespace ccal;
using namespace ccal::flows;

namespace {

// The base link: records what is sent, refuses unknown peers and big frames.
class RecordingLink final : public Link {
 public:
  void setHandler(LinkHandler* handler) override { handler_ = handler; }
  Status send(std::string_view peer, Bytes frame) override {
    if (peer == "nobody") return Error{Errc::not_found, "unknown peer"};
    if (frame.size() > frameBytesMax()) return Error{Errc::too_large, "frame too big"};
    sent.emplace_back(std::string(peer), std::move(frame));
    return Status::success();
  }
  size_t frameBytesMax() const override { return 100; }

  LinkHandler* handler_ = nullptr;
  std::vector<std::pair<std::string, Bytes>> sent;
};

struct Recorder final : LinkHandler {
  void onFrame(std::string_view peer, ByteView frame) override {
    frames.emplace_back(std::string(peer), Bytes(frame.begin(), frame.end()));
  }
  void onPeerUp(std::string_view peer) override { ups.emplace_back(peer); }
  void onPeerDown(std::string_view peer) override { downs.emplace_back(peer); }
  std::vector<std::pair<std::string, Bytes>> frames;
  std::vector<std::string> ups, downs;
};

Bytes bytes(std::initializer_list<uint8_t> b) { return Bytes(b); }

}  // namespace

TEST_CASE("link mux: each channel's frames carry its tag and reach only its handler") {
  RecordingLink base;
  std::vector<std::string> logged;
  LinkMux mux(base, [&](std::string_view line) { logged.emplace_back(line); });
  CHECK(base.handler_ == &mux);
  Recorder messaging, notary;
  mux.channel(link_channel_messaging).setHandler(&messaging);
  mux.channel(link_channel_notary).setHandler(&notary);
  CHECK(&mux.channel(link_channel_notary) == &mux.channel(link_channel_notary));

  REQUIRE(mux.channel(link_channel_messaging).send("alice", bytes({7, 8})).ok());
  REQUIRE(mux.channel(link_channel_notary).send("bob", bytes({9})).ok());
  REQUIRE(mux.channel(link_channel_notary).send("bob", Bytes{}).ok());
  REQUIRE(base.sent.size() == 3);
  CHECK(base.sent[0] == std::pair{std::string("alice"), bytes({1, 7, 8})});
  CHECK(base.sent[1] == std::pair{std::string("bob"), bytes({2, 9})});
  CHECK(base.sent[2] == std::pair{std::string("bob"), bytes({2})});
  CHECK(mux.stats().frames_out == 3);

  // Incoming: routed by the tag, the tag stripped.
  Bytes a = bytes({1, 4, 5}), b = bytes({2, 6}), c = bytes({2});
  mux.onFrame("carol", a);
  mux.onFrame("dave", b);
  mux.onFrame("dave", c);
  REQUIRE(messaging.frames.size() == 1);
  CHECK(messaging.frames[0] == std::pair{std::string("carol"), bytes({4, 5})});
  REQUIRE(notary.frames.size() == 2);
  CHECK(notary.frames[0] == std::pair{std::string("dave"), bytes({6})});
  CHECK(notary.frames[1].second.empty());
  CHECK(mux.stats().frames_in == 3);
  CHECK(logged.empty());

  // A refusal of the base link comes back to the caller.
  auto refused = mux.channel(link_channel_messaging).send("nobody", bytes({1}));
  CHECK(refused.error().code == Errc::not_found);
  CHECK(mux.stats().frames_out == 3);
}

TEST_CASE("link mux: empty frames and unknown or unserved tags are dropped, counted and logged") {
  RecordingLink base;
  std::vector<std::string> logged;
  LinkMux mux(base, [&](std::string_view line) { logged.emplace_back(line); });
  Recorder messaging;
  mux.channel(link_channel_messaging).setHandler(&messaging);
  (void)mux.channel(9);  // a channel without a handler

  Bytes empty, unknown = bytes({77, 1, 2}), unserved = bytes({9, 1});
  mux.onFrame("mallory", empty);
  mux.onFrame("mallory", unknown);
  mux.onFrame("mallory", unknown);
  mux.onFrame("mallory", unserved);
  CHECK(messaging.frames.empty());
  CHECK(mux.stats().frames_empty == 1);
  CHECK(mux.stats().frames_unknown_channel == 3);
  REQUIRE(logged.size() == 3);  // the 1st empty, the 1st and 2nd unknown (4th is logged, 3rd not)
  CHECK(logged[0].find("mallory") != std::string::npos);
  CHECK(logged[0].find("empty") != std::string::npos);
  CHECK(logged[1].find("channel tag 77") != std::string::npos);

  // A flood is counted in full but logged on powers of two only.
  for (int i = 0; i < 1000; ++i) mux.onFrame("mallory", unknown);
  CHECK(mux.stats().frames_unknown_channel == 1003);
  CHECK(logged.size() < 15);
  // What follows is still delivered.
  Bytes ok = bytes({1, 42});
  mux.onFrame("alice", ok);
  REQUIRE(messaging.frames.size() == 1);
  CHECK(messaging.frames[0].second == bytes({42}));
}

TEST_CASE("link mux: a channel's frame bound is the base's minus the tag byte") {
  RecordingLink base;
  LinkMux mux(base, [](std::string_view) {});
  Link& ch = mux.channel(link_channel_notary);
  CHECK(ch.frameBytesMax() == base.frameBytesMax() - 1);
  CHECK(ch.send("bob", Bytes(99, 0xab)).ok());
  REQUIRE(base.sent.size() == 1);
  CHECK(base.sent[0].second.size() == 100);
  auto over = ch.send("bob", Bytes(100, 0xab));
  CHECK(over.error().code == Errc::too_large);
  CHECK(over.error().message.find("99") != std::string::npos);
  CHECK(base.sent.size() == 1);
}

TEST_CASE("link mux: peer up and down reach every channel with a handler") {
  RecordingLink base;
  LinkMux mux(base, [](std::string_view) {});
  Recorder a, b;
  mux.channel(link_channel_messaging).setHandler(&a);
  mux.channel(link_channel_notary).setHandler(&b);
  (void)mux.channel(5);  // no handler: skipped
  mux.onPeerUp("carol");
  mux.onPeerDown("dave");
  CHECK(a.ups == std::vector<std::string>{"carol"});
  CHECK(b.ups == std::vector<std::string>{"carol"});
  CHECK(a.downs == std::vector<std::string>{"dave"});
  CHECK(b.downs == std::vector<std::string>{"dave"});
}

TEST_CASE("peer split: parts see only their peers' frames and events and send only to them") {
  RecordingLink base;
  LinkMux mux(base, [](std::string_view) {});
  std::vector<std::string> logged;
  PeerSplit split(mux.channel(link_channel_notary), [&](std::string_view l) { logged.emplace_back(l); });
  Recorder one, two;
  Link& p1 = split.part({"r1", "r2"});
  Link& p2 = split.part({"s1", "r2"});
  p1.setHandler(&one);
  p2.setHandler(&two);
  CHECK(p1.frameBytesMax() == 99);

  Bytes f1 = bytes({2, 1}), f2 = bytes({2, 2}), f3 = bytes({2, 3});
  mux.onFrame("r1", f1);
  mux.onFrame("s1", f2);
  mux.onFrame("r2", f3);  // in both parts
  REQUIRE(one.frames.size() == 2);
  CHECK(one.frames[0] == std::pair{std::string("r1"), bytes({1})});
  CHECK(one.frames[1] == std::pair{std::string("r2"), bytes({3})});
  REQUIRE(two.frames.size() == 2);
  CHECK(two.frames[0] == std::pair{std::string("s1"), bytes({2})});

  Bytes stray = bytes({2, 9});
  mux.onFrame("x", stray);
  CHECK(split.stats().frames_unknown_peer == 1);
  CHECK(logged.size() == 1);

  mux.onPeerUp("s1");
  mux.onPeerDown("r1");
  CHECK(one.ups.empty());
  CHECK(two.ups == std::vector<std::string>{"s1"});
  CHECK(one.downs == std::vector<std::string>{"r1"});
  CHECK(two.downs.empty());

  CHECK(p1.send("r1", bytes({5})).ok());
  CHECK(base.sent.back() == std::pair{std::string("r1"), bytes({2, 5})});
  auto refused = p1.send("s1", bytes({5}));
  CHECK(refused.error().code == Errc::not_found);
  CHECK(refused.error().message.find("s1") != std::string::npos);
}
