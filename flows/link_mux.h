#pragma once
// Sharing one flows::Link among several components that each take a whole
// Link and set themselves as its handler (Delivery, notary::Replica,
// notary::ProtocolClient).
//
// LinkMux: a channel is a sub-Link whose frames carry a one-byte tag in
// front (link_channel_messaging, link_channel_notary). A channel's
// frameBytesMax() is the base's minus that byte. Peer up/down events go to
// every channel. A frame that is empty or carries a tag no channel has is
// dropped, counted and logged; it never reaches a component.
//
// PeerSplit: parts of one Link, each for a fixed set of peers (a member's
// ProtocolClient per notary cluster on the notary channel). A frame goes to
// every part that lists its peer; a frame from a peer no part lists is
// dropped and counted; a part refuses to send to a peer it does not list.
//
// Transport-agnostic: the node puts it over its TLS link, the simulator can
// put it over its simulated one. Threading as flows/io.h: the base link's
// executor thread only. Create every channel/part before the base link
// starts delivering; they live as long as the mux/split.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "flows/io.h"

namespace ccal::flows {

inline constexpr uint8_t link_channel_messaging = 1;  // flows::Delivery
inline constexpr uint8_t link_channel_notary = 2;     // notary::Replica / ProtocolClient
inline constexpr size_t link_channel_tag_bytes = 1;

class LinkMux final : public LinkHandler {
 public:
  struct Stats {
    uint64_t frames_in = 0, frames_out = 0;
    uint64_t frames_empty = 0, frames_unknown_channel = 0;
  };

  // Sets itself as `base`'s handler. `log` gets a line per dropped frame
  // (rate-limited); empty: stderr.
  explicit LinkMux(Link& base, std::function<void(std::string_view)> log = {});
  ~LinkMux() override;
  LinkMux(const LinkMux&) = delete;
  LinkMux& operator=(const LinkMux&) = delete;

  // The channel with `tag` (created on first call; the same Link after).
  Link& channel(uint8_t tag);

  // LinkHandler (from the base link).
  void onFrame(std::string_view peer, ByteView frame) override;
  void onPeerUp(std::string_view peer) override;
  void onPeerDown(std::string_view peer) override;

  const Stats& stats() const { return stats_; }

 private:
  class Channel;
  void drop(std::string_view peer, const std::string& why, uint64_t count);

  Link& base_;
  std::function<void(std::string_view)> log_;
  std::map<uint8_t, std::unique_ptr<Channel>> channels_;
  Stats stats_;
};

class PeerSplit final : public LinkHandler {
 public:
  struct Stats {
    uint64_t frames_unknown_peer = 0;
  };

  // Sets itself as `base`'s handler.
  explicit PeerSplit(Link& base, std::function<void(std::string_view)> log = {});
  ~PeerSplit() override;
  PeerSplit(const PeerSplit&) = delete;
  PeerSplit& operator=(const PeerSplit&) = delete;

  // A new part talking to `peers` only.
  Link& part(std::set<std::string, std::less<>> peers);

  void onFrame(std::string_view peer, ByteView frame) override;
  void onPeerUp(std::string_view peer) override;
  void onPeerDown(std::string_view peer) override;

  const Stats& stats() const { return stats_; }

 private:
  class Part;
  Link& base_;
  std::function<void(std::string_view)> log_;
  std::vector<std::unique_ptr<Part>> parts_;
  Stats stats_;
};

}  // namespace ccal::flows
