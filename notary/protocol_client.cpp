#include "notary/protocol_client.h"

#include <algorithm>
#include <cstdio>
#include <functional>

namespace ccal::notary {

using namespace pbft;

ProtocolClient::ProtocolClient(ProtocolClientConfig config, KeyPair identity, flows::Link& link,
                               flows::Executor& executor, const flows::Clock& clock)
    : config_(std::move(config)),
      keys_(identity, config_.client_name),
      link_(link),
      executor_(executor),
      clock_(clock) {
  CCAL_ASSERT(!config_.replicas.empty());
  for (const auto& r : config_.replicas) {
    auto k = keys_.keyFor(r.name, r.key);
    // A replica key that is not a valid point is a configuration error of
    // the network map, which checks keys when it is loaded.
    CCAL_ASSERT_MSG(k.ok(), "a replica identity key that is not a valid Ed25519 point");
    replica_keys_.push_back(*k);
  }
  replica_views_.assign(config_.replicas.size(), 0);
  link_.setHandler(this);
}

ProtocolClient::~ProtocolClient() {
  for (auto& [seq, o] : outstanding_) {
    if (o.timer) executor_.cancel(o.timer);
  }
}

void ProtocolClient::log(const std::string& line) const {
  const std::string full = "pbft client '" + config_.client_name + "': " + line;
  if (config_.log) {
    config_.log(full);
  } else {
    std::fprintf(stderr, "%s\n", full.c_str());
  }
}

Result<uint64_t> ProtocolClient::submit(Bytes body, const SecureHash& body_hash, ReplyFn on_reply) {
  if (body.size() > config_.request_body_bytes_max) {
    return makeError(Errc::too_large, "a notary request of " + std::to_string(body.size()) +
                                          " bytes is over the limit of " +
                                          std::to_string(config_.request_body_bytes_max));
  }
  if (outstanding_.size() >= config_.outstanding_requests_max) {
    return makeError(Errc::unavailable, "already " + std::to_string(outstanding_.size()) +
                                            " notary requests outstanding (the limit)");
  }
  const uint64_t seq = std::max<uint64_t>(last_seq_ + 1, static_cast<uint64_t>(std::max<int64_t>(clock_.nowMicros(), 1)));
  last_seq_ = seq;
  WireRequest r;
  r.client = config_.client_name;
  r.client_seq = seq;
  r.body = std::move(body);
  const SecureHash d = r.digestWithBodyHash(body_hash);
  for (const auto& k : replica_keys_) r.authenticator.push_back(mac(k, d));
  Outstanding o;
  o.frame = encodeFrame(Message(std::move(r)));
  o.on_reply = std::move(on_reply);
  o.delay_micros = config_.retransmit_delay_micros_min;
  outstanding_.emplace(seq, std::move(o));
  ++stats_.submitted;
  // PBFT: first to the primary, which carries the request to the backups in
  // its pre-prepare (with this authenticator, which each backup checks);
  // to every replica only when no answer comes in time (arm()).
  const uint32_t primary = primaryIndex();
  Status sent = link_.send(config_.replicas[primary].name, outstanding_.find(seq)->second.frame);
  if (!sent) log("sending request " + std::to_string(seq) + ": " + sent.error().toString());
  arm(seq);
  return seq;
}

void ProtocolClient::notePrimary() {
  // The (f+1)-th highest view reported: at least one correct replica has
  // reached it, so f faulty replicas reporting views ahead cannot steer the
  // client away from the primary (they can only hold it back to a view a
  // correct replica reported, which retransmission to all then covers).
  std::vector<uint64_t> views = replica_views_;
  const size_t k = faultsTolerated();
  std::nth_element(views.begin(), views.begin() + static_cast<std::ptrdiff_t>(k), views.end(),
                   std::greater<>());
  primary_ = static_cast<uint32_t>(views[k] % views.size());
}

void ProtocolClient::transmit(uint64_t client_seq) {
  auto it = outstanding_.find(client_seq);
  if (it == outstanding_.end()) return;
  for (uint32_t i = 0; i < config_.replicas.size(); ++i) {
    if (it->second.answered.count(i)) continue;  // it has executed the request
    Status s = link_.send(config_.replicas[i].name, it->second.frame);
    if (!s) log("sending request " + std::to_string(client_seq) + ": " + s.error().toString());
  }
}

void ProtocolClient::arm(uint64_t client_seq) {
  auto it = outstanding_.find(client_seq);
  if (it == outstanding_.end()) return;
  Outstanding& o = it->second;
  o.timer = executor_.runAfter(o.delay_micros, [this, client_seq] {
    auto found = outstanding_.find(client_seq);
    if (found == outstanding_.end()) return;
    found->second.timer = 0;
    found->second.delay_micros =
        std::min(found->second.delay_micros * 2, config_.retransmit_delay_micros_max);
    ++stats_.retransmissions;
    transmit(client_seq);
    arm(client_seq);
  });
}

void ProtocolClient::finish(uint64_t client_seq) {
  auto it = outstanding_.find(client_seq);
  if (it == outstanding_.end()) return;
  if (it->second.timer) executor_.cancel(it->second.timer);
  outstanding_.erase(it);
}

void ProtocolClient::onPeerUp(std::string_view peer) {
  // A replica that comes (back) up gets every outstanding request at once.
  for (uint32_t i = 0; i < config_.replicas.size(); ++i) {
    if (config_.replicas[i].name != peer) continue;
    for (auto& [seq, o] : outstanding_) {
      if (!o.answered.count(i)) (void)link_.send(peer, o.frame);
    }
  }
}

void ProtocolClient::onFrame(std::string_view peer, ByteView frame) {
  auto m = decodeFrame(frame, config_.limits);
  if (!m) {
    ++stats_.frames_rejected;
    return log("rejected a frame from '" + std::string(peer) + "': " + m.error().toString());
  }
  uint64_t view = 0;
  uint32_t replica = 0;
  if (auto* one = std::get_if<ReplyMsg>(&*m)) {
    view = one->view;
    replica = one->replica;
  } else if (auto* many = std::get_if<RepliesMsg>(&*m)) {
    view = many->view;
    replica = many->replica;
  } else {
    ++stats_.frames_rejected;
    return log(std::string("rejected a ") + messageName(*m) + " from '" + std::string(peer) + "'");
  }
  if (replica >= config_.replicas.size() || config_.replicas[replica].name != peer) {
    ++stats_.frames_rejected;
    return log(std::string("rejected a ") + messageName(*m) + " from '" + std::string(peer) +
               "' claiming to be replica " + std::to_string(replica));
  }
  if (view > replica_views_[replica]) {
    replica_views_[replica] = view;
    notePrimary();
  }
  auto deliver = [&](uint64_t client_seq, const Bytes& body) {
    auto it = outstanding_.find(client_seq);
    if (it == outstanding_.end()) return;  // finished, or never sent
    if (!it->second.answered.insert(replica).second) return;
    ++stats_.replies;
    // The callback may finish() this request: copy what it needs first.
    ReplyFn fn = it->second.on_reply;
    fn(replica, body);
  };
  if (auto* one = std::get_if<ReplyMsg>(&*m)) return deliver(one->client_seq, one->body);
  for (const auto& e : std::get<RepliesMsg>(*m).entries) deliver(e.client_seq, e.body);
}

}  // namespace ccal::notary
