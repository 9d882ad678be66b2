#include "notary/pbft_messages.h"

#include "ledger/assert.h"
#include "ledger/capnp_io.h"
#include "schemas/notary_protocol.capnp.h"

namespace ccal::notary::pbft {

namespace sp = ccal::schema::pbft;

namespace {

constexpr std::string_view signed_domain = "ccal.pbft.v1";

Error bad(const std::string& what) { return makeError(Errc::malformed, what); }
Error tooLarge(const std::string& what) { return makeError(Errc::too_large, what); }

Result<SecureHash> hashField(capnp::Data::Reader data, const char* what) {
  if (data.size() != SecureHash::size_bytes) {
    return makeError(Errc::bad_length, std::string(what) + " is " + std::to_string(data.size()) +
                                           " bytes, not 32");
  }
  return SecureHash::fromBytes(asByteView(data));
}

// An optional digest: empty means the zero hash (the null batch).
Result<SecureHash> optionalHashField(capnp::Data::Reader data, const char* what) {
  if (data.size() == 0) return SecureHash::zero();
  return hashField(data, what);
}


void fillRequest(sp::Request::Builder b, const WireRequest& r) {
  b.setClient(r.client);
  b.setClientSeq(r.client_seq);
  b.setBody(asData(r.body));
  auto auth = b.initAuthenticator(static_cast<unsigned>(r.authenticator.size()));
  for (size_t i = 0; i < r.authenticator.size(); ++i) {
    auth.set(static_cast<unsigned>(i), asData(r.authenticator[i]));
  }
}

// The fields a pre-prepare and a batch-data frame share: seq, timestamp and
// the requests.
template <class Builder>
void fillBatch(Builder b, uint64_t seq, const BatchBody& batch) {
  b.setSeq(seq);
  b.setTimeMicros(batch.time_micros);
  auto list = b.initRequests(static_cast<unsigned>(batch.requests.size()));
  for (size_t i = 0; i < batch.requests.size(); ++i)
    fillRequest(list[static_cast<unsigned>(i)], batch.requests[i]);
}

Result<WireRequest> readRequest(sp::Request::Reader r, const PbftLimits& limits) {
  WireRequest out;
  if (!r.hasClient() || r.getClient().size() == 0) return bad("request without a client name");
  CCAL_TRY_ASSIGN(out.client,
                  readText(r.getClient(), "request client name", limits.client_name_bytes_max));
  out.client_seq = r.getClientSeq();
  if (out.client_seq == 0) return bad("request client_seq 0 (they start at 1)");
  if (r.getBody().size() > limits.request_body_bytes_max) {
    return tooLarge("request body of " + std::to_string(r.getBody().size()) +
                    " bytes is over the limit of " +
                    std::to_string(limits.request_body_bytes_max));
  }
  auto body = r.getBody();
  out.body.assign(body.begin(), body.end());
  auto auth = r.getAuthenticator();
  if (auth.size() > limits.replicas_max) {
    return tooLarge("request authenticator of " + std::to_string(auth.size()) + " MACs");
  }
  for (auto mac : auth) {
    if (mac.size() != 0 && mac.size() != mac_bytes) {
      return makeError(Errc::bad_length, "request authenticator MAC of " +
                                             std::to_string(mac.size()) + " bytes, not 16");
    }
    out.authenticator.emplace_back(mac.begin(), mac.end());
  }
  return out;
}

Result<std::vector<WireRequest>> readRequests(capnp::List<sp::Request>::Reader list,
                                              const PbftLimits& limits) {
  if (list.size() > limits.batch_requests_max) {
    return tooLarge("batch of " + std::to_string(list.size()) + " requests is over the limit of " +
                    std::to_string(limits.batch_requests_max));
  }
  std::vector<WireRequest> out;
  out.reserve(list.size());
  for (auto r : list) {
    auto req = readRequest(r, limits);
    if (!req) return req.error();
    out.push_back(std::move(*req));
  }
  return out;
}

void fillSigned(sp::Signed::Builder b, const SignedMsg& m) {
  b.setKind(static_cast<uint8_t>(m.kind));
  b.setReplica(m.replica);
  b.setBody(asData(m.body));
  b.setSignature(asData(m.signature));
}

Result<SignedMsg> readSigned(sp::Signed::Reader r, const PbftLimits& limits) {
  SignedMsg out;
  if (r.getKind() < 1 || r.getKind() > 3) {
    return bad("signed message of unknown kind " + std::to_string(r.getKind()));
  }
  out.kind = static_cast<SignedKind>(r.getKind());
  out.replica = r.getReplica();
  if (out.replica >= limits.replicas_max) {
    return bad("signed message from replica " + std::to_string(out.replica));
  }
  if (r.getSignature().size() != signature_bytes) {
    return makeError(Errc::bad_length, "signature of " + std::to_string(r.getSignature().size()) +
                                           " bytes, not 64");
  }
  auto body = r.getBody();
  out.body.assign(body.begin(), body.end());
  auto sig = r.getSignature();
  out.signature.assign(sig.begin(), sig.end());
  return out;
}

Result<std::vector<SignedMsg>> readSignedList(capnp::List<sp::Signed>::Reader list,
                                              const PbftLimits& limits, const char* what) {
  if (list.size() > limits.replicas_max) {
    return tooLarge(std::string(what) + " of " + std::to_string(list.size()) + " messages");
  }
  std::vector<SignedMsg> out;
  for (auto s : list) {
    auto m = readSigned(s, limits);
    if (!m) return m.error();
    out.push_back(std::move(*m));
  }
  return out;
}

void fillEntries(capnp::List<sp::LogEntry>::Builder b, const std::vector<LogEntry>& entries) {
  for (size_t i = 0; i < entries.size(); ++i) {
    auto e = b[static_cast<unsigned>(i)];
    e.setSeq(entries[i].seq);
    if (!entries[i].digest.isZero()) e.setDigest(asData(entries[i].digest.view()));
    e.setView(entries[i].view);
  }
}

Result<std::vector<LogEntry>> readEntries(capnp::List<sp::LogEntry>::Reader list,
                                          const PbftLimits& limits, const char* what,
                                          bool one_per_seq = true) {
  if (list.size() > limits.log_entries_max) {
    return tooLarge(std::string(what) + " of " + std::to_string(list.size()) + " entries");
  }
  std::vector<LogEntry> out;
  uint64_t last_seq = 0;
  for (auto e : list) {
    auto d = optionalHashField(e.getDigest(), what);
    if (!d) return d.error();
    if (e.getSeq() == 0 || e.getSeq() < last_seq || (one_per_seq && e.getSeq() == last_seq)) {
      return bad(std::string(what) + ": entries not in increasing seq order");
    }
    last_seq = e.getSeq();
    out.push_back(LogEntry{e.getSeq(), *d, e.getView()});
  }
  return out;
}

// body_hashes: empty (each body is hashed here) or one per request.
void fillBatchContent(sp::BatchContent::Builder b, const BatchBody& batch,
                      const std::vector<SecureHash>& body_hashes) {
  CCAL_ASSERT(body_hashes.empty() || body_hashes.size() == batch.requests.size());
  b.setTimeMicros(batch.time_micros);
  auto ids = b.initRequests(static_cast<unsigned>(batch.requests.size()));
  for (size_t i = 0; i < batch.requests.size(); ++i) {
    auto id = ids[static_cast<unsigned>(i)];
    id.setClient(batch.requests[i].client);
    id.setClientSeq(batch.requests[i].client_seq);
    if (body_hashes.empty()) {
      id.setBodyDigest(asData(SecureHash::of(batch.requests[i].body).view()));
    } else {
      id.setBodyDigest(asData(body_hashes[i].view()));
    }
  }
}

}  // namespace

SecureHash WireRequest::digest() const { return digestWithBodyHash(SecureHash::of(body)); }

SecureHash WireRequest::digestWithBodyHash(const SecureHash& body_hash) const {
  Sha256 h;
  h.update(asBytes("ccal.pbft.request.v1"));
  h.updateU32(static_cast<uint32_t>(client.size()));
  h.update(asBytes(client));
  Bytes seq;
  appendU64(seq, client_seq);
  h.update(seq);
  h.update(body_hash.view());
  return h.finish();
}

SecureHash BatchBody::digest() const { return digest({}); }

SecureHash BatchBody::digest(const std::vector<SecureHash>& body_hashes) const {
  capnp::MallocMessageBuilder message;
  auto root = message.initRoot<sp::BatchContent>();
  fillBatchContent(root, *this, body_hashes);
  return SecureHash::of(canonicalBytes(root.asReader()));
}

Bytes signedPreimage(std::string_view cluster, SignedKind kind, ByteView body) {
  Bytes out;
  append(out, asBytes(signed_domain));
  appendU32(out, static_cast<uint32_t>(cluster.size()));
  append(out, asBytes(cluster));
  out.push_back(static_cast<uint8_t>(kind));
  append(out, body);
  return out;
}

namespace {

void fillReplies(sp::Replies::Builder r, uint64_t view, uint32_t replica,
                 std::span<const std::pair<uint64_t, ByteView>> entries) {
  r.setView(view);
  r.setReplica(replica);
  auto list = r.initEntries(static_cast<unsigned>(entries.size()));
  for (size_t i = 0; i < entries.size(); ++i) {
    auto e = list[static_cast<unsigned>(i)];
    e.setClientSeq(entries[i].first);
    e.setBody(asData(entries[i].second));
  }
}

void fillFrame(sp::Frame::Builder f, const Message& message) {
  std::visit(
      [&](const auto& m) {
        using T = std::decay_t<decltype(m)>;
        if constexpr (std::is_same_v<T, WireRequest>) {
          fillRequest(f.initRequest(), m);
        } else if constexpr (std::is_same_v<T, ReplyMsg>) {
          auto r = f.initReply();
          r.setView(m.view);
          r.setClientSeq(m.client_seq);
          r.setReplica(m.replica);
          r.setBody(asData(m.body));
        } else if constexpr (std::is_same_v<T, PrePrepareMsg>) {
          auto p = f.initPrePrepare();
          p.setView(m.view);
          fillBatch(p, m.seq, m.batch);
        } else if constexpr (std::is_same_v<T, Prepare> || std::is_same_v<T, Commit>) {
          auto v = std::is_same_v<T, Prepare> ? f.initPrepare() : f.initCommit();
          v.setView(m.view);
          v.setSeq(m.seq);
          v.setDigest(asData(m.digest.view()));
        } else if constexpr (std::is_same_v<T, SignedMsg>) {
          fillSigned(f.initSigned(), m);
        } else if constexpr (std::is_same_v<T, FetchBatchMsg>) {
          auto b = f.initFetchBatch();
          b.setSeq(m.seq);
          b.setDigest(asData(m.digest.view()));
        } else if constexpr (std::is_same_v<T, BatchDataMsg>) {
          fillBatch(f.initBatchData(), m.seq, m.batch);
        } else if constexpr (std::is_same_v<T, StatusMsg>) {
          auto s = f.initStatus();
          s.setView(m.view);
          s.setLastExecuted(m.last_executed);
          s.setStableSeq(m.stable_seq);
          s.setViewChanging(m.view_changing);
        } else if constexpr (std::is_same_v<T, FetchEffectsMsg>) {
          auto e = f.initFetchEffects();
          e.setFromSeq(m.from_seq);
          e.setCount(m.count);
        } else if constexpr (std::is_same_v<T, EffectsDataMsg>) {
          auto e = f.initEffectsData();
          e.setFromSeq(m.from_seq);
          auto list = e.initEffects(static_cast<unsigned>(m.effects.size()));
          for (size_t i = 0; i < m.effects.size(); ++i) {
            list.set(static_cast<unsigned>(i), asData(m.effects[i]));
          }
        } else if constexpr (std::is_same_v<T, RepliesMsg>) {
          std::vector<std::pair<uint64_t, ByteView>> entries;
          entries.reserve(m.entries.size());
          for (const auto& e : m.entries) entries.emplace_back(e.client_seq, e.body);
          fillReplies(f.initReplies(), m.view, m.replica, entries);
        }
      },
      message);
}

}  // namespace

Bytes encodeFrame(const Message& message) {
  // Frames are neither hashed nor signed and decodeFrame() does not require
  // the canonical form: built flat, without canonicalize()'s walk and copy.
  return buildFlat<sp::Frame>([&](sp::Frame::Builder f) { fillFrame(f, message); });
}

Result<Message> decodeFrame(ByteView frame, const PbftLimits& limits) {
  ReadLimits read;
  read.message_bytes_max = limits.frame_bytes_max;
  read.traversal_words_max = limits.frame_bytes_max / 8 * 4 + 1024;
  return decodeMessage<sp::Frame>(
      frame, "pbft frame", Canonical::not_required,
      [&](sp::Frame::Reader f) -> Result<Message> {
        switch (f.which()) {
          case sp::Frame::REQUEST: {
            auto r = readRequest(f.getRequest(), limits);
            if (!r) return r.error();
            return Message(std::move(*r));
          }
          case sp::Frame::REPLY: {
            auto r = f.getReply();
            if (r.getBody().size() > limits.reply_body_bytes_max) {
              return tooLarge("reply body of " + std::to_string(r.getBody().size()) + " bytes");
            }
            ReplyMsg m{r.getView(), r.getClientSeq(), r.getReplica(),
                       Bytes(r.getBody().begin(), r.getBody().end())};
            return Message(std::move(m));
          }
          case sp::Frame::PRE_PREPARE: {
            auto p = f.getPrePrepare();
            auto reqs = readRequests(p.getRequests(), limits);
            if (!reqs) return reqs.error();
            if (p.getSeq() == 0) return bad("pre-prepare for seq 0");
            PrePrepareMsg m{p.getView(), p.getSeq(), BatchBody{p.getTimeMicros(), std::move(*reqs)}};
            return Message(std::move(m));
          }
          case sp::Frame::PREPARE:
          case sp::Frame::COMMIT: {
            const bool prepare = f.which() == sp::Frame::PREPARE;
            auto v = prepare ? f.getPrepare() : f.getCommit();
            auto d = hashField(v.getDigest(), prepare ? "prepare digest" : "commit digest");
            if (!d) return d.error();
            if (v.getSeq() == 0) return bad("vote for seq 0");
            if (prepare) return Message(Prepare{{v.getView(), v.getSeq(), *d}});
            return Message(Commit{{v.getView(), v.getSeq(), *d}});
          }
          case sp::Frame::SIGNED: {
            auto s = readSigned(f.getSigned(), limits);
            if (!s) return s.error();
            return Message(std::move(*s));
          }
          case sp::Frame::FETCH_BATCH: {
            auto b = f.getFetchBatch();
            auto d = hashField(b.getDigest(), "fetch-batch digest");
            if (!d) return d.error();
            return Message(FetchBatchMsg{b.getSeq(), *d});
          }
          case sp::Frame::BATCH_DATA: {
            auto b = f.getBatchData();
            auto reqs = readRequests(b.getRequests(), limits);
            if (!reqs) return reqs.error();
            return Message(BatchDataMsg{b.getSeq(), BatchBody{b.getTimeMicros(), std::move(*reqs)}});
          }
          case sp::Frame::STATUS: {
            auto s = f.getStatus();
            return Message(StatusMsg{s.getView(), s.getLastExecuted(), s.getStableSeq(),
                                     s.getViewChanging()});
          }
          case sp::Frame::FETCH_EFFECTS: {
            auto e = f.getFetchEffects();
            if (e.getCount() == 0 || e.getCount() > limits.effects_per_frame_max) {
              return bad("fetch-effects count " + std::to_string(e.getCount()));
            }
            return Message(FetchEffectsMsg{e.getFromSeq(), e.getCount()});
          }
          case sp::Frame::EFFECTS_DATA: {
            auto e = f.getEffectsData();
            if (e.getEffects().size() > limits.effects_per_frame_max) {
              return tooLarge("effects data of " + std::to_string(e.getEffects().size()) +
                              " batches");
            }
            EffectsDataMsg m{e.getFromSeq(), {}};
            for (auto blob : e.getEffects()) {
              if (blob.size() > limits.effects_bytes_max) {
                return tooLarge("effects of " + std::to_string(blob.size()) + " bytes");
              }
              m.effects.emplace_back(blob.begin(), blob.end());
            }
            return Message(std::move(m));
          }
          case sp::Frame::REPLIES: {
            auto r = f.getReplies();
            auto list = r.getEntries();
            if (list.size() > limits.batch_requests_max) {
              return tooLarge("replies frame of " + std::to_string(list.size()) + " replies");
            }
            RepliesMsg m{r.getView(), r.getReplica(), {}};
            m.entries.reserve(list.size());
            for (auto e : list) {
              if (e.getBody().size() > limits.reply_body_bytes_max) {
                return tooLarge("reply body of " + std::to_string(e.getBody().size()) + " bytes");
              }
              m.entries.push_back(
                  {e.getClientSeq(), Bytes(e.getBody().begin(), e.getBody().end())});
            }
            return Message(std::move(m));
          }
        }
        return bad("pbft frame of an unknown type");
      },
      read);
}

Bytes encodeCheckpoint(const CheckpointMsg& m) {
  capnp::MallocMessageBuilder builder;
  auto c = builder.initRoot<sp::Checkpoint>();
  c.setSeq(m.seq);
  c.setStateDigest(asData(m.state_digest.view()));
  return canonicalBytes(c.asReader());
}

Result<CheckpointMsg> decodeCheckpoint(ByteView body, const PbftLimits& limits) {
  return decodeMessage<sp::Checkpoint>(
      body, "checkpoint", Canonical::required, [&](sp::Checkpoint::Reader c) -> Result<CheckpointMsg> {
        auto d = hashField(c.getStateDigest(), "checkpoint state digest");
        if (!d) return d.error();
        if (c.getSeq() == 0) return bad("checkpoint at seq 0");
        return CheckpointMsg{c.getSeq(), *d};
      });
}

Bytes encodeViewChange(const ViewChangeMsg& m) {
  capnp::MallocMessageBuilder builder;
  auto v = builder.initRoot<sp::ViewChange>();
  v.setNewView(m.new_view);
  v.setStableSeq(m.stable_seq);
  v.setStableDigest(asData(m.stable_digest.view()));
  auto proof = v.initStableProof(static_cast<unsigned>(m.stable_proof.size()));
  for (size_t i = 0; i < m.stable_proof.size(); ++i) {
    fillSigned(proof[static_cast<unsigned>(i)], m.stable_proof[i]);
  }
  fillEntries(v.initPrepared(static_cast<unsigned>(m.prepared.size())), m.prepared);
  fillEntries(v.initPrePrepared(static_cast<unsigned>(m.pre_prepared.size())), m.pre_prepared);
  return canonicalBytes(v.asReader());
}

Result<ViewChangeMsg> decodeViewChange(ByteView body, const PbftLimits& limits) {
  return decodeMessage<sp::ViewChange>(
      body, "view-change", Canonical::required,
      [&](sp::ViewChange::Reader v) -> Result<ViewChangeMsg> {
        ViewChangeMsg m;
        m.new_view = v.getNewView();
        m.stable_seq = v.getStableSeq();
        auto d = hashField(v.getStableDigest(), "view-change stable digest");
        if (!d) return d.error();
        m.stable_digest = *d;
        auto proof = readSignedList(v.getStableProof(), limits, "view-change stable proof");
        if (!proof) return proof.error();
        m.stable_proof = std::move(*proof);
        auto p = readEntries(v.getPrepared(), limits, "view-change P set");
        if (!p) return p.error();
        m.prepared = std::move(*p);
        auto q = readEntries(v.getPrePrepared(), limits, "view-change Q set", false);
        if (!q) return q.error();
        m.pre_prepared = std::move(*q);
        return m;
      });
}

Bytes encodeNewView(const NewViewMsg& m) {
  capnp::MallocMessageBuilder builder;
  auto n = builder.initRoot<sp::NewView>();
  n.setView(m.view);
  auto vcs = n.initViewChanges(static_cast<unsigned>(m.view_changes.size()));
  for (size_t i = 0; i < m.view_changes.size(); ++i) {
    fillSigned(vcs[static_cast<unsigned>(i)], m.view_changes[i]);
  }
  n.setStartSeq(m.start_seq);
  fillEntries(n.initChosen(static_cast<unsigned>(m.chosen.size())), m.chosen);
  return canonicalBytes(n.asReader());
}

Result<NewViewMsg> decodeNewView(ByteView body, const PbftLimits& limits) {
  return decodeMessage<sp::NewView>(
      body, "new-view", Canonical::required, [&](sp::NewView::Reader n) -> Result<NewViewMsg> {
        NewViewMsg m;
        m.view = n.getView();
        auto vcs = readSignedList(n.getViewChanges(), limits, "new-view V set");
        if (!vcs) return vcs.error();
        m.view_changes = std::move(*vcs);
        m.start_seq = n.getStartSeq();
        auto o = readEntries(n.getChosen(), limits, "new-view O set");
        if (!o) return o.error();
        m.chosen = std::move(*o);
        return m;
      });
}

// Words of one first segment that holds a batch's requests, so that a large
// batch is built in one allocation, not a chain of growing segments: per
// request its list element (4 words), client name, body and authenticator.
namespace {
unsigned batchSegmentWords(const BatchBody& batch) {
  size_t words = 64;
  for (const auto& r : batch.requests) {
    words += 4 + (r.client.size() + 8) / 8 + (r.body.size() + 7) / 8 + r.authenticator.size() * 3;
  }
  return static_cast<unsigned>(std::min<size_t>(words, size_t{1} << 28));
}

}  // namespace

Bytes encodePrePrepareFrame(uint64_t view, uint64_t seq, const BatchBody& batch) {
  return buildFlat<sp::Frame>(
      [&](sp::Frame::Builder f) {
        auto p = f.initPrePrepare();
        p.setView(view);
        fillBatch(p, seq, batch);
      },
      batchSegmentWords(batch));
}

Bytes encodeBatchDataFrame(uint64_t seq, const BatchBody& batch) {
  return buildFlat<sp::Frame>(
      [&](sp::Frame::Builder f) { fillBatch(f.initBatchData(), seq, batch); },
      batchSegmentWords(batch));
}

Bytes encodeReplyFrame(uint64_t view, uint64_t client_seq, uint32_t replica, ByteView body) {
  return buildFlat<sp::Frame>([&](sp::Frame::Builder f) {
    auto r = f.initReply();
    r.setView(view);
    r.setClientSeq(client_seq);
    r.setReplica(replica);
    r.setBody(asData(body));
  });
}

Bytes encodeRepliesFrame(uint64_t view, uint32_t replica,
                         std::span<const std::pair<uint64_t, ByteView>> entries) {
  // One segment: a word per entry's pointer, two for its struct, and the bodies rounded up.
  size_t words = 16;
  for (const auto& [seq, body] : entries) words += 3 + (body.size() + 7) / 8;
  return buildFlat<sp::Frame>(
      [&](sp::Frame::Builder f) { fillReplies(f.initReplies(), view, replica, entries); }, words);
}

Bytes encodeBatch(const BatchBody& batch) { return encodeBatchDataFrame(0, batch); }

Result<BatchBody> decodeBatch(ByteView bytes, const PbftLimits& limits) {
  auto m = decodeFrame(bytes, limits);
  if (!m) return m.error();
  if (auto* data = std::get_if<BatchDataMsg>(&*m)) return std::move(data->batch);
  // A backup keeps the pre-prepare's bytes as they came.
  if (auto* pp = std::get_if<PrePrepareMsg>(&*m)) return std::move(pp->batch);
  return bad("stored batch is not a batch");
}

std::vector<ReplyMsg> splitReplies(Message message) {
  std::vector<ReplyMsg> out;
  if (auto* one = std::get_if<ReplyMsg>(&message)) {
    out.push_back(std::move(*one));
  } else if (auto* many = std::get_if<RepliesMsg>(&message)) {
    out.reserve(many->entries.size());
    for (auto& e : many->entries)
      out.push_back(ReplyMsg{many->view, e.client_seq, many->replica, std::move(e.body)});
  }
  return out;
}

const char* messageName(const Message& message) {
  static const char* names[] = {"request", "reply",         "pre-prepare",  "prepare",
                                "commit",  "signed",        "fetch-batch",  "batch-data",
                                "status",  "fetch-effects", "effects-data", "replies"};
  return names[message.index()];
}

}  // namespace ccal::notary::pbft
