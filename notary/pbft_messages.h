#pragma once
// The PBFT protocol's messages as C++ values, their canonical encoding
// (schemas/notary_protocol.capnp) and their bounded, checked decoding.
// Everything a decoder returns has passed the bounds in PbftLimits: a
// hostile frame yields an Error naming what is wrong, never a crash.

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "ledger/bytes.h"
#include "ledger/result.h"
#include "ledger/secure_hash.h"

namespace ccal::notary::pbft {

// Bounds every decoder applies, each with its unit in its name.
struct PbftLimits {
  size_t frame_bytes_max = 8u << 20;
  size_t request_body_bytes_max = 64u << 10;
  size_t client_name_bytes_max = 1024;
  uint32_t batch_requests_max = 4096;      // >= any replica's batch_size_max
  uint32_t replicas_max = 1024;            // authenticator entries, proofs, view-change sets
  uint32_t log_entries_max = 4096;         // P and Q sets, O set (>= window_batches_max)
  uint32_t effects_per_frame_max = 256;
  size_t effects_bytes_max = 4u << 20;     // one batch's effects
  size_t reply_body_bytes_max = 64u << 10;
};

inline constexpr size_t mac_bytes = 16;        // a truncated keyed BLAKE2b
inline constexpr size_t signature_bytes = 64;  // Ed25519

struct WireRequest {
  std::string client;
  uint64_t client_seq = 0;
  Bytes body;
  std::vector<Bytes> authenticator;  // one MAC per replica (empty entries allowed)

  // SHA-256 over client, client_seq and the body's hash: what MACs cover and
  // what a batch digest lists.
  SecureHash digest() const;
  // The same digest from the body's SHA-256, when the caller has it already.
  SecureHash digestWithBodyHash(const SecureHash& body_hash) const;
};

// A batch as ordered: the primary's timestamp and the requests.
struct BatchBody {
  int64_t time_micros = 0;
  std::vector<WireRequest> requests;
  // PBFT's d: SHA-256 of the canonical BatchContent (timestamp, request ids).
  SecureHash digest() const;
  // The same from the requests' body hashes (body_hashes[i] = SHA-256 of
  // requests[i].body), so a replica hashes each body once.
  SecureHash digest(const std::vector<SecureHash>& body_hashes) const;
};

struct PrePrepareMsg {
  uint64_t view = 0, seq = 0;
  BatchBody batch;
};
struct VoteMsg {  // prepare or commit
  uint64_t view = 0, seq = 0;
  SecureHash digest;
};
struct ReplyMsg {
  uint64_t view = 0, client_seq = 0;
  uint32_t replica = 0;
  Bytes body;
};
// A replica's replies to one client from one executed batch: one frame for
// all of them (at most batch_requests_max entries), each entry what a
// ReplyMsg would carry.
struct RepliesMsg {
  struct Entry {
    uint64_t client_seq = 0;
    Bytes body;
  };
  uint64_t view = 0;
  uint32_t replica = 0;
  std::vector<Entry> entries;
};

enum class SignedKind : uint8_t { checkpoint = 1, view_change = 2, new_view = 3 };

// A signed message as received: the signature is checked by the replica
// (it knows the keys), against signedPreimage().
struct SignedMsg {
  SignedKind kind = SignedKind::checkpoint;
  uint32_t replica = 0;
  Bytes body;       // canonical encoding of the kind's struct
  Bytes signature;  // 64 bytes
};
// "ccal.pbft.v1" || u32 len || cluster || kind || body.
Bytes signedPreimage(std::string_view cluster, SignedKind kind, ByteView body);

struct CheckpointMsg {
  uint64_t seq = 0;
  SecureHash state_digest;
};
struct LogEntry {
  uint64_t seq = 0;
  SecureHash digest;  // zero: the null batch (in an O set)
  uint64_t view = 0;
  bool operator==(const LogEntry&) const = default;
};
struct ViewChangeMsg {
  uint64_t new_view = 0;
  uint64_t stable_seq = 0;
  SecureHash stable_digest;
  std::vector<SignedMsg> stable_proof;
  std::vector<LogEntry> prepared;      // P
  std::vector<LogEntry> pre_prepared;  // Q
};
struct NewViewMsg {
  uint64_t view = 0;
  std::vector<SignedMsg> view_changes;  // V
  uint64_t start_seq = 0;
  std::vector<LogEntry> chosen;  // O
};
struct FetchBatchMsg {
  uint64_t seq = 0;
  SecureHash digest;
};
struct BatchDataMsg {
  uint64_t seq = 0;
  BatchBody batch;
};
struct StatusMsg {
  uint64_t view = 0, last_executed = 0, stable_seq = 0;
  bool view_changing = false;
};
struct FetchEffectsMsg {
  uint64_t from_seq = 0;
  uint32_t count = 0;
};
struct EffectsDataMsg {
  uint64_t from_seq = 0;
  std::vector<Bytes> effects;
};

struct Prepare : VoteMsg {};
struct Commit : VoteMsg {};

using Message =
    std::variant<WireRequest, ReplyMsg, PrePrepareMsg, Prepare, Commit, SignedMsg, FetchBatchMsg,
                 BatchDataMsg, StatusMsg, FetchEffectsMsg, EffectsDataMsg, RepliesMsg>;

// The canonical frame of a message.
Bytes encodeFrame(const Message& message);
// Decodes and checks a frame against the limits.
Result<Message> decodeFrame(ByteView frame, const PbftLimits& limits);

// Bodies of signed messages.
Bytes encodeCheckpoint(const CheckpointMsg& m);
Result<CheckpointMsg> decodeCheckpoint(ByteView body, const PbftLimits& limits);
Bytes encodeViewChange(const ViewChangeMsg& m);
Result<ViewChangeMsg> decodeViewChange(ByteView body, const PbftLimits& limits);
Bytes encodeNewView(const NewViewMsg& m);
Result<NewViewMsg> decodeNewView(ByteView body, const PbftLimits& limits);

// The frames of a pre-prepare and of batch data, from a batch held
// elsewhere (no copy of it): equal to encodeFrame of the message.
Bytes encodePrePrepareFrame(uint64_t view, uint64_t seq, const BatchBody& batch);
Bytes encodeBatchDataFrame(uint64_t seq, const BatchBody& batch);
Bytes encodeReplyFrame(uint64_t view, uint64_t client_seq, uint32_t replica, ByteView body);
// A replies frame from (client_seq, body) pairs held elsewhere: equal to
// encodeFrame of the RepliesMsg.
Bytes encodeRepliesFrame(uint64_t view, uint32_t replica,
                         std::span<const std::pair<uint64_t, ByteView>> entries);

// A batch (with authenticators) as stored in the replica's log: a
// batch-data frame (encodeBatch) or a pre-prepare frame as it came, which
// decodeBatch() reads as well.
Bytes encodeBatch(const BatchBody& batch);
Result<BatchBody> decodeBatch(ByteView bytes, const PbftLimits& limits);

const char* messageName(const Message& message);
// The replies a reply or replies message carries, one ReplyMsg each (none
// for any other message).
std::vector<ReplyMsg> splitReplies(Message message);

}  // namespace ccal::notary::pbft
