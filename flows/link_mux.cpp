#include "flows/link_mux.h"

#include <cstdio>
#include <utility>

#include "ledger/assert.h"

namespace ccal::flows {

namespace {

void logTo(const std::function<void(std::string_view)>& log, const std::string& line) {
  if (log) {
    log(line);
  } else {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
}

// Logs the 1st, 2nd, 4th, 8th, ... drop of a kind: a flood cannot fill the log.
bool worthLogging(uint64_t count) { return (count & (count - 1)) == 0; }

}  // namespace

// --- LinkMux -----------------------------------------------------------------------

class LinkMux::Channel final : public Link {
 public:
  Channel(LinkMux& mux, uint8_t tag) : mux_(mux), tag_(tag) {}

  void setHandler(LinkHandler* handler) override { handler_ = handler; }

  Status send(std::string_view peer, Bytes frame) override {
    if (frame.size() > frameBytesMax()) {
      return Error{Errc::too_large, "a frame of " + std::to_string(frame.size()) +
                                        " bytes is over the channel's " +
                                        std::to_string(frameBytesMax()) + " bytes"};
    }
    Bytes tagged;
    tagged.reserve(frame.size() + link_channel_tag_bytes);
    tagged.push_back(tag_);
    tagged.insert(tagged.end(), frame.begin(), frame.end());
    Status sent = mux_.base_.send(peer, std::move(tagged));
    if (sent.ok()) ++mux_.stats_.frames_out;
    return sent;
  }

  size_t frameBytesMax() const override {
    size_t base = mux_.base_.frameBytesMax();
    return base > link_channel_tag_bytes ? base - link_channel_tag_bytes : 0;
  }

  LinkHandler* handler() const { return handler_; }

 private:
  LinkMux& mux_;
  uint8_t tag_;
  LinkHandler* handler_ = nullptr;
};

LinkMux::LinkMux(Link& base, std::function<void(std::string_view)> log)
    : base_(base), log_(std::move(log)) {
  base_.setHandler(this);
}

LinkMux::~LinkMux() = default;

Link& LinkMux::channel(uint8_t tag) {
  auto& c = channels_[tag];
  if (!c) c = std::make_unique<Channel>(*this, tag);
  return *c;
}

void LinkMux::drop(std::string_view peer, const std::string& why, uint64_t count) {
  if (!worthLogging(count)) return;
  logTo(log_, "link mux: dropped a frame from '" + std::string(peer) + "': " + why + " (" +
                  std::to_string(count) + " so far)");
}

void LinkMux::onFrame(std::string_view peer, ByteView frame) {
  ++stats_.frames_in;
  if (frame.empty()) {
    drop(peer, "empty, no channel tag", ++stats_.frames_empty);
    return;
  }
  auto it = channels_.find(frame[0]);
  if (it == channels_.end() || it->second->handler() == nullptr) {
    drop(peer, "channel tag " + std::to_string(frame[0]) + " is not served here",
         ++stats_.frames_unknown_channel);
    return;
  }
  it->second->handler()->onFrame(peer, frame.subspan(link_channel_tag_bytes));
}

void LinkMux::onPeerUp(std::string_view peer) {
  for (auto& [tag, c] : channels_) {
    if (c->handler()) c->handler()->onPeerUp(peer);
  }
}

void LinkMux::onPeerDown(std::string_view peer) {
  for (auto& [tag, c] : channels_) {
    if (c->handler()) c->handler()->onPeerDown(peer);
  }
}

// --- PeerSplit ---------------------------------------------------------------------

class PeerSplit::Part final : public Link {
 public:
  Part(Link& base, std::set<std::string, std::less<>> peers)
      : base_(base), peers_(std::move(peers)) {}

  void setHandler(LinkHandler* handler) override { handler_ = handler; }

  Status send(std::string_view peer, Bytes frame) override {
    if (!has(peer)) {
      return Error{Errc::not_found, "'" + std::string(peer) + "' is not a peer of this link part"};
    }
    return base_.send(peer, std::move(frame));
  }
  size_t frameBytesMax() const override { return base_.frameBytesMax(); }

  bool has(std::string_view peer) const { return peers_.find(peer) != peers_.end(); }
  LinkHandler* handler() const { return handler_; }

 private:
  Link& base_;
  std::set<std::string, std::less<>> peers_;
  LinkHandler* handler_ = nullptr;
};

PeerSplit::PeerSplit(Link& base, std::function<void(std::string_view)> log)
    : base_(base), log_(std::move(log)) {
  base_.setHandler(this);
}

PeerSplit::~PeerSplit() = default;

Link& PeerSplit::part(std::set<std::string, std::less<>> peers) {
  parts_.push_back(std::make_unique<Part>(base_, std::move(peers)));
  return *parts_.back();
}

void PeerSplit::onFrame(std::string_view peer, ByteView frame) {
  bool delivered = false;
  for (auto& p : parts_) {
    if (p->has(peer) && p->handler()) {
      p->handler()->onFrame(peer, frame);
      delivered = true;
    }
  }
  if (!delivered) {
    uint64_t count = ++stats_.frames_unknown_peer;
    if (worthLogging(count)) {
      logTo(log_, "peer split: dropped a frame from '" + std::string(peer) +
                      "', which no part talks to (" + std::to_string(count) + " so far)");
    }
  }
}

void PeerSplit::onPeerUp(std::string_view peer) {
  for (auto& p : parts_) {
    if (p->has(peer) && p->handler()) p->handler()->onPeerUp(peer);
  }
}

void PeerSplit::onPeerDown(std::string_view peer) {
  for (auto& p : parts_) {
    if (p->has(peer) && p->handler()) p->handler()->onPeerDown(peer);
  }
}

}  // namespace ccal::flows
