#pragma once
// The client side of the PBFT protocol (state_machine.h's RequestChannel)
// over a Link: a request, with an authenticator (one MAC per replica,
// pairwise keys from the identity keys, pbft_crypto.h), goes first to the
// primary of the view the replicas' replies report (primaryIndex()), which
// carries it to the backups in its pre-prepare; it is retransmitted to every
// replica that has not answered with a delay that doubles up to a bound
// until finish(), and each replica's reply is handed over once.
//
// client_seq values increase across restarts without storage: each is
// max(previous + 1, the clock in microseconds), PBFT's timestamps. (A
// client whose clock went back by more than its request rate could reuse a
// number; its replies would then come from the replicas' reply caches.)
//
// Executor thread only; the client sets itself as the link's handler.

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "flows/io.h"
#include "ledger/crypto.h"
#include "notary/pbft_crypto.h"
#include "notary/replica.h"
#include "notary/state_machine.h"

namespace ccal::notary {

struct ProtocolClientConfig {
  std::string client_name;                // this node's X.500 name (its Link name)
  std::vector<ReplicaIdentity> replicas;  // the cluster, in order
  uint32_t outstanding_requests_max = 4096;
  size_t request_body_bytes_max = 64u << 10;
  int64_t retransmit_delay_micros_min = 500'000;
  int64_t retransmit_delay_micros_max = 8'000'000;
  pbft::PbftLimits limits;
  std::function<void(std::string_view)> log;  // empty: stderr
};

class ProtocolClient final : public RequestChannel, public flows::LinkHandler {
 public:
  struct Stats {
    uint64_t submitted = 0, retransmissions = 0, replies = 0, frames_rejected = 0;
  };

  ProtocolClient(ProtocolClientConfig config, KeyPair identity, flows::Link& link,
                 flows::Executor& executor, const flows::Clock& clock);
  ~ProtocolClient() override;

  // --- RequestChannel -----------------------------------------------------------
  using RequestChannel::submit;
  Result<uint64_t> submit(Bytes body, const SecureHash& body_hash, ReplyFn on_reply) override;
  void finish(uint64_t client_seq) override;
  uint32_t replicaCount() const override { return static_cast<uint32_t>(config_.replicas.size()); }
  uint32_t faultsTolerated() const override { return (replicaCount() - 1) / 3; }

  // --- LinkHandler --------------------------------------------------------------
  void onFrame(std::string_view peer, ByteView frame) override;
  void onPeerUp(std::string_view peer) override;
  void onPeerDown(std::string_view) override {}

  size_t outstanding() const { return outstanding_.size(); }
  // Where a new request goes first: the primary of the (f+1)-th highest
  // view among those the replicas reported in their replies.
  uint32_t primaryIndex() const { return primary_; }
  const Stats& stats() const { return stats_; }

 private:
  struct Outstanding {
    Bytes frame;  // the encoded request, with its authenticator
    ReplyFn on_reply;
    std::set<uint32_t> answered;
    flows::Executor::TimerId timer = 0;
    int64_t delay_micros = 0;
  };
  void transmit(uint64_t client_seq);
  void arm(uint64_t client_seq);
  void notePrimary();
  void log(const std::string& line) const;

  ProtocolClientConfig config_;
  pbft::KeyRing keys_;
  flows::Link& link_;
  flows::Executor& executor_;
  const flows::Clock& clock_;
  std::vector<pbft::MacKey> replica_keys_;
  uint64_t last_seq_ = 0;
  std::map<uint64_t, Outstanding> outstanding_;
  std::vector<uint64_t> replica_views_;  // the highest view each replica's replies reported
  uint32_t primary_ = 0;  // primaryIndex(), recomputed when a view rises (notePrimary)
  Stats stats_;
};

}  // namespace ccal::notary
