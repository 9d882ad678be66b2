#include "notary/replica.h"

#include <algorithm>
#include <array>
#include <condition_variable>
#include <cstdio>
#include <mutex>

namespace ccal::notary {

using namespace pbft;

namespace {

constexpr uint32_t fetch_batches_per_round_max = 32;
constexpr size_t effects_frame_overhead_bytes = 4096;
// A replies frame: its fixed part, and each entry's beyond its body (list
// element, pointer, padding).
constexpr size_t replies_frame_overhead_bytes = 4096;
constexpr size_t replies_entry_overhead_bytes = 32;
constexpr int64_t transfer_stall_rounds_max = 10;  // status intervals without progress
// Slots whose prepared certificate is in the vote log only, before a store
// write is started to take them (at a steady load, every 32 batches).
constexpr size_t logged_slots_unstored_max = 32;

SecureHash chainDigest(const SecureHash& prev, ByteView effects) {
  Sha256 h;
  h.update(asBytes("ccal.notary.state.v1"));
  h.update(prev.view());
  h.update(SecureHash::of(effects).view());
  return h.finish();
}

Batch toBatch(uint64_t seq, uint64_t view, int64_t time, const BatchBody& body) {
  Batch b;
  b.seq = seq;
  b.view = view;
  b.time_micros = time;
  b.requests.reserve(body.requests.size());
  for (const auto& r : body.requests) b.requests.push_back(Request{r.client, r.client_seq, r.body});
  return b;
}

}  // namespace

Replica::BatchHashes Replica::hashBatch(const BatchBody& batch) {
  BatchHashes h;
  h.bodies.reserve(batch.requests.size());
  h.requests.reserve(batch.requests.size());
  for (const auto& r : batch.requests) {
    h.bodies.push_back(SecureHash::of(r.body));
    h.requests.push_back(r.digestWithBodyHash(h.bodies.back()));
  }
  return h;
}

Replica::Replica(ReplicaConfig config, KeyPair identity, flows::Link& link,
                 flows::Executor& executor, const flows::Clock& clock, vault::Store& store,
                 StateMachine& machine)
    : config_(std::move(config)),
      keys_(identity, config_.replicas.at(config_.self_index).name),
      link_(link),
      executor_(executor),
      clock_(clock),
      store_(store),
      machine_(machine),
      store_requests_(std::make_shared<StoreRequests>()) {
  CCAL_ASSERT(!config_.replicas.empty());
  CCAL_ASSERT(config_.self_index < config_.replicas.size());
  CCAL_ASSERT(config_.replicas[config_.self_index].key == identity.publicKey());
  CCAL_ASSERT(config_.checkpoint_interval_batches >= 1);
  CCAL_ASSERT(config_.batches_in_flight_max >= 1 &&
              config_.batches_in_flight_max <= config_.window_batches_max);
  CCAL_ASSERT(config_.window_batches_max >= 2 * config_.checkpoint_interval_batches);
  CCAL_ASSERT(config_.batch_size_max >= 1 && config_.batch_size_max <= config_.limits.batch_requests_max);
  CCAL_ASSERT(config_.window_batches_max <= config_.limits.log_entries_max / q_digests_per_slot_max);
  view_timeout_micros_ = config_.view_change_timeout_micros;
  peer_executed_at_status_.assign(config_.replicas.size(), UINT64_MAX);
  peer_stalled_statuses_.assign(config_.replicas.size(), 0);
  peer_resent_batches_.assign(config_.replicas.size(), 0);
  link_.setHandler(this);
}

Replica::~Replica() {
  alive_.reset();  // completions still to come (the vote log drains below) find it gone
  if (view_timer_) executor_.cancel(view_timer_);
  if (batch_timer_) executor_.cancel(batch_timer_);
  if (status_timer_) executor_.cancel(status_timer_);
  if (reply_write_timer_) executor_.cancel(reply_write_timer_);
}

Status Replica::start() {
  auto rec = store_.load();
  if (!rec) return rec.error();
  view_ = rec->meta.view;
  view_changing_ = rec->meta.view_changing;
  stable_seq_ = rec->meta.stable_seq;
  stable_digest_ = rec->meta.stable_digest;
  stable_proof_ = rec->meta.stable_proof;
  last_batch_time_micros_ = rec->meta.last_batch_time_micros;
  // Restarted without a clean stop (recordCleanStop): a vote sent in the
  // stored view may be missing from the store (votes go out as their write
  // is queued), so this replica sends no more votes in that view (safety 3),
  // and claims none of its log's: a pre-prepare the log holds may have been
  // accepted while abstaining already. The primary, which may have proposed
  // batches the log does not hold, asks for the next view below.
  if (f() > 0 && rec->has_meta && !rec->meta.clean_stop && !view_changing_) abstain_view_ = view_;
  // The reply cache: records of the formats before per-batch records are
  // still good answers, kept in memory and deleted from the store in the
  // first write; then the recent batches' replies.
  replies_ = std::move(rec->replies);
  for (const auto& [client, cache] : replies_) {
    if (rec->legacy_reply_clients.count(client)) step().legacy_replies_dropped.insert(client);
    for (const auto& [cs, r] : cache) {
      step().replies_dropped[client].insert(cs);  // (absent keys: no-op)
    }
  }
  for (auto& [seq, record] : rec->reply_batches) {
    auto replies = record.packed.empty() ? Result<std::vector<Bytes>>(std::move(record.replies))
                                         : machine_.expandReplies(seq, record.packed);
    if (replies && replies->size() != record.entries.size()) {
      replies =
          makeError(Errc::storage_error, std::to_string(replies->size()) + " replies for " +
                                             std::to_string(record.entries.size()) + " requests");
    }
    if (!replies) {
      // Only a cache: a request it would have answered is executed again.
      log("the stored replies of batch " + std::to_string(seq) +
          " are dropped: " + replies.error().toString());
      step().reply_batches_dropped.insert(seq);  // this record only: the others are good
      continue;
    }
    for (size_t i = 0; i < record.entries.size(); ++i) {
      const auto& e = record.entries[i];
      replies_[e.client][e.client_seq] =
          pbft::ReplyRecord{e.client_seq, e.view, std::move((*replies)[i])};
    }
  }
  for (auto& [client, cache] : replies_) {
    while (cache.size() > config_.reply_cache_per_client_max) cache.erase(cache.begin());
  }
  // D(lastExecuted): from the last stored checkpoint digest at or below it.
  const uint64_t executed = machine_.lastExecuted();
  uint64_t base = 0;
  state_digest_ = SecureHash::zero();
  for (const auto& [seq, d] : rec->digests) {
    if (seq <= executed) {
      base = seq;
      state_digest_ = d;
    }
  }
  if (stable_seq_ <= executed && stable_seq_ > base) {
    base = stable_seq_;
    state_digest_ = stable_digest_;
  }
  for (uint64_t s = base + 1; s <= executed; ++s) {
    auto e = machine_.effects(s);
    if (!e) return e.error();
    state_digest_ = chainDigest(state_digest_, *e);
  }
  state_digest_seq_ = executed;
  for (auto& [seq, r] : rec->slots) {
    Slot& s = slot(seq);
    s.q = r.pre_prepared;
    for (auto& [d, bytes] : r.batches) {
      auto b = decodeBatch(bytes, config_.limits);
      if (!b) return b.error();
      // (The null batch a new view chose is stored under the zero digest.)
      if (d.isZero() ? !b->requests.empty() : b->digest() != d) {
        return makeError(Errc::storage_error, "the stored batch " + d.shortHex() + " of slot " +
                                                  std::to_string(seq) + " has digest " +
                                                  b->digest().shortHex());
      }
      s.batches[d] = std::move(*b);
    }
    s.has_p = r.has_prepared;
    s.p_view = r.prepared_view;
    s.p_digest = r.prepared_digest;
    for (const auto& [d, v] : s.q) {
      if (v == view_ && !view_changing_) {
        s.has_pp = true;
        s.digest = d;
        s.pp_durable = true;
        s.prepare_sent = primaryOf(view_) != config_.self_index && abstain_view_ != view_;
      }
    }
    if (s.has_p && s.p_view == view_ && s.has_pp && s.p_digest == s.digest) {
      s.prepared = true;
      s.commit_sent = true;
      s.commits[config_.self_index] = s.digest;
    }
    if (s.prepare_sent) s.prepares[config_.self_index] = s.digest;
    next_seq_ = std::max(next_seq_, seq + 1);
  }
  next_seq_ = std::max({next_seq_, executed + 1, stable_seq_ + 1});
  // A prepared slot whose commit quorum is this replica alone (f = 0) is
  // committed; with f > 0 the others' commits come again by retransmission.
  for (auto& [seq, s] : slots_) {
    if (s.prepared && seq > executed) checkCommitted(s);
  }
  if (view_changing_) {
    // Resend the view-change this replica made before the restart.
    const uint64_t v = view_;
    view_ = v - 1;
    view_changing_ = false;
    startViewChange(v);
  } else if (abstain_view_ == view_ && primaryOf(view_) == config_.self_index) {
    startViewChange(view_ + 1);
  }
  if (f() > 0 && config_.vote_log_bytes > 0) {
    auto opened = VoteLog::open({ReplicaStore::voteLogPath(store_.store()), config_.vote_log_bytes,
                                 store_.store().config().durable});
    if (!opened) return opened.error();
    vote_log_ = std::move(*opened);
    if (const uint64_t last = vote_log_->lastLsn(); last > 0) {
      // Records of the runs before (load() merged them): the store takes
      // them, then the ring is free.
      for (auto& [seq, s] : slots_) persistSlot(s);
      afterDurable([this, last] { vote_log_->releaseThrough(last); });
      log_appended_lsn_ = log_durable_lsn_ = last;
    }
  }
  status_timer_ = executor_.runAfter(config_.status_interval_micros, [this] { onStatusTimer(); });
  maybeStartStateTransfer();
  tryExecute();
  started_ = true;
  return Status();
}

std::optional<uint32_t> Replica::replicaIndex(std::string_view name) const {
  for (uint32_t i = 0; i < n(); ++i) {
    if (config_.replicas[i].name == name) return i;
  }
  return std::nullopt;
}

void Replica::log(const std::string& line) const {
  const std::string full = "pbft replica " + std::to_string(config_.self_index) + ": " + line;
  if (config_.log) {
    config_.log(full);
  } else {
    std::fprintf(stderr, "%s\n", full.c_str());
  }
}

void Replica::reject(std::string_view peer, const std::string& why) {
  ++stats_.frames_rejected;
  log("rejected a message from '" + std::string(peer) + "': " + why);
}

void Replica::postBack(std::function<void()> fn) {
  executor_.post([alive = std::weak_ptr<int>(alive_), fn = std::move(fn)] {
    if (alive.expired()) return;
    fn();
  });
}

struct Replica::StoreRequests {
  std::mutex mutex;  // guards in_flight and failed
  std::condition_variable drained;
  uint64_t in_flight = 0;
  bool failed = false;  // a protocol write failed: no clean stop is recorded
};

// Counts a store (or vote log) request done when destroyed: after the
// request's completion is posted, so quiesceStore() sees it queued.
struct Replica::StoreRequestDone {
  std::shared_ptr<StoreRequests> r;
  bool failed;
  ~StoreRequestDone() {
    std::lock_guard lock(r->mutex);
    if (failed) r->failed = true;
    if (--r->in_flight == 0) r->drained.notify_all();
  }
};

void Replica::quiesceStore() {
  std::unique_lock lock(store_requests_->mutex);
  store_requests_->drained.wait(lock, [&] { return store_requests_->in_flight == 0; });
}

void Replica::recordCleanStop() {
  if (!started_) return;  // its state never loaded: nothing of this run to vouch for
  recordUnrecorded();
  flush();  // the step the executor did not get to: votes in it may be out
  quiesceStore();
  if (abstain_view_ == view_ && !view_changing_) {
    // A vote of an earlier run in this view may be lost: the mark would end
    // the abstention at the next start.
    log("stopping while withholding votes in view " + std::to_string(view_) +
        ": no clean stop is recorded");
    return;
  }
  {
    std::lock_guard lock(store_requests_->mutex);
    if (store_requests_->failed) return;  // a vote's record may be lost
    ++store_requests_->in_flight;
  }
  Step st;
  st.meta = meta();
  st.meta->clean_stop = true;
  store_.write(std::move(st), [this, requests = store_requests_](const Status& written) {
    if (!written) log("recording a clean stop failed: " + written.error().toString());
    std::lock_guard lock(requests->mutex);
    if (--requests->in_flight == 0) requests->drained.notify_all();
  });
  quiesceStore();
}

bool Replica::votesEarly() const {
  return f() > 0 && !view_changing_ && durable_view_ == view_ && abstain_view_ != view_;
}

// --- sending -------------------------------------------------------------------------

void Replica::sendToPeer(std::string_view peer, const Message& m) {
  Status s = link_.send(peer, encodeFrame(m));
  if (!s) log(std::string("sending a ") + messageName(m) + " to '" + std::string(peer) +
              "': " + s.error().toString());
}

void Replica::send(uint32_t replica, const Message& m) {
  if (replica == config_.self_index) return;
  sendToPeer(config_.replicas[replica].name, m);
}

void Replica::broadcast(const Message& m) { broadcastFrame(encodeFrame(m), messageName(m)); }

void Replica::broadcastFrame(const Bytes& frame, const char* what) {
  for (uint32_t i = 0; i < n(); ++i) {
    if (i == config_.self_index) continue;
    Status s = link_.send(config_.replicas[i].name, frame);
    if (!s) log(std::string("sending a ") + what + " to '" + config_.replicas[i].name +
                "': " + s.error().toString());
  }
}

// --- durability ----------------------------------------------------------------------

Step& Replica::step() {
  if (!step_) step_.emplace();
  scheduleFlush();
  return *step_;
}

void Replica::afterDurable(std::function<void()> fn) {
  step();
  after_durable_.push_back(std::move(fn));
}

void Replica::scheduleFlush() {
  if (flush_posted_) return;
  flush_posted_ = true;
  postBack([this] {
    flush_posted_ = false;
    flush();
  });
}

MetaRecord Replica::meta() const {
  MetaRecord m;
  m.view = view_;
  m.view_changing = view_changing_;
  m.stable_seq = stable_seq_;
  m.stable_digest = stable_digest_;
  m.stable_proof = stable_proof_;
  m.last_batch_time_micros = last_batch_time_micros_;
  return m;
}

SlotRecord Replica::slotRecord(Slot& s) const {
  SlotRecord r;
  r.seq = s.seq;
  r.pre_prepared = s.q;
  auto kept = [&s](const SecureHash& d) { return s.q.count(d) > 0 || (s.has_p && s.p_digest == d); };
  // The primary's frames go to the backups after this write (unless they
  // went as it was queued): copied.
  const bool mine_frames = isPrimary() && f() > 0 && !s.pp_durable;
  // Each batch of Q and P is written once, under its own key; a batch that
  // left them is deleted.
  for (const auto& [d, b] : s.batches) {
    if (!kept(d) || !s.stored.insert(d).second) continue;
    auto fr = s.frames.find(d);
    if (fr == s.frames.end()) {
      r.batches[d] = encodeBatch(b);
    } else if (mine_frames) {
      r.batches[d] = fr->second;  // the pre-prepare goes out from the slot once durable
    } else {
      r.batches[d] = std::move(fr->second);
      s.frames.erase(fr);
    }
  }
  for (auto it = s.stored.begin(); it != s.stored.end();) {
    if (kept(*it)) {
      ++it;
    } else {
      r.batches_dropped.insert(*it);
      it = s.stored.erase(it);
    }
  }
  r.has_prepared = s.has_p;
  r.prepared_view = s.p_view;
  r.prepared_digest = s.p_digest;
  return r;
}

void Replica::recordUnrecorded() {
  for (auto& [seq, s] : slots_) {
    if (s.unrecorded) persistSlot(s);
  }
}

void Replica::persistSlot(Slot& s) {
  s.unrecorded = false;
  SlotRecord r = slotRecord(s);
  Step& st = step();
  auto queued = st.slots.find(s.seq);
  if (queued != st.slots.end()) {
    // The record queued before in this step: its batches are not written yet.
    for (auto& [d, b] : queued->second.batches) {
      if (s.stored.count(d)) r.batches.emplace(d, std::move(b));
    }
    for (const auto& d : queued->second.batches_dropped) {
      if (!r.batches.count(d)) r.batches_dropped.insert(d);
    }
  }
  st.slots[s.seq] = std::move(r);
}

void Replica::flush() {
  if (!step_) return;
  // Slots whose prepared certificate is in the vote log only: recorded here
  // too, and the log's space released once this write is durable.
  std::vector<uint64_t> release;
  for (const auto& [seq, lsn] : logged_) {
    auto it = slots_.find(seq);
    if (it != slots_.end()) persistSlot(it->second);
    release.push_back(lsn);
  }
  logged_.clear();
  Step s = std::move(*step_);
  step_.reset();
  s.reply_batches.merge(replies_unwritten_.reply_batches);
  s.reply_batches_through =
      std::max(s.reply_batches_through, replies_unwritten_.reply_batches_through);
  replies_unwritten_ = {};
  // Slots queued before a truncation of their seq are not written.
  auto fns = std::make_shared<std::vector<std::function<void()>>>(std::move(after_durable_));
  after_durable_.clear();
  ++stats_.store_writes;
  {
    std::lock_guard lock(store_requests_->mutex);
    ++store_requests_->in_flight;
  }
  // A durable meta record in a view, not view-changing: votes in that view
  // may go out early from then on (votesEarly()).
  std::optional<uint64_t> normal_view;
  if (s.meta && !s.meta->view_changing) normal_view = s.meta->view;
  // The executor outlives this object's queued requests; this object may not.
  const uint64_t log_lsn = log_appended_lsn_;
  store_.write(std::move(s), [this, ex = &executor_, alive = std::weak_ptr<int>(alive_), fns,
                              requests = store_requests_, normal_view, log_lsn,
                              release = std::move(release)](const Status& st) mutable {
    StoreRequestDone done{requests, !st};
    ex->post([this, alive, fns, st, normal_view, log_lsn, release = std::move(release)] {
      if (alive.expired()) return;
      if (st && normal_view && (!durable_view_ || *durable_view_ < *normal_view)) {
        durable_view_ = normal_view;
      }
      if (!st) {
        // What depended on this write is not sent: the protocol state it
        // records may be lost, so acting on it could equivocate.
        log("writing protocol state failed: " + st.error().toString());
        return;
      }
      for (uint64_t lsn : release) vote_log_->release(lsn);
      // The vote log's records appended before this write are durable first.
      if (log_lsn > log_durable_lsn_) {
        if (!log_failed_) waiting_for_log_.emplace_back(log_lsn, fns);
        return;
      }
      for (auto& fn : *fns) fn();
    });
  });
}

// --- frames --------------------------------------------------------------------------

void Replica::onPeerUp(std::string_view peer) {
  if (auto idx = replicaIndex(peer)) {
    send(*idx, Message(StatusMsg{view_, machine_.lastExecuted(), stable_seq_, view_changing_}));
  }
}

void Replica::onFrame(std::string_view peer, ByteView frame) {
  auto decoded = decodeFrame(frame, config_.limits);
  if (!decoded) return reject(peer, decoded.error().toString());
  Message& m = *decoded;
  if (auto* r = std::get_if<WireRequest>(&m)) return onRequest(peer, std::move(*r));
  auto from = replicaIndex(peer);
  if (!from) return reject(peer, std::string("a ") + messageName(m) + " from a peer that is not a replica");
  if (*from == config_.self_index) return reject(peer, "a message from this replica's own name");
  std::visit(
      [&](auto& msg) {
        using T = std::decay_t<decltype(msg)>;
        if constexpr (std::is_same_v<T, PrePrepareMsg>) {
          onPrePrepare(*from, std::move(msg), frame);
        } else if constexpr (std::is_same_v<T, Prepare>) {
          onPrepare(*from, msg);
        } else if constexpr (std::is_same_v<T, Commit>) {
          onCommit(*from, msg);
        } else if constexpr (std::is_same_v<T, SignedMsg>) {
          if (Status s = verifySigned(msg); !s) return reject(peer, s.error().toString());
          if (msg.kind == SignedKind::checkpoint) {
            auto c = decodeCheckpoint(msg.body, config_.limits);
            if (!c) return reject(peer, c.error().toString());
            onCheckpoint(msg, *c);
          } else if (msg.kind == SignedKind::view_change) {
            auto vc = decodeViewChange(msg.body, config_.limits);
            if (!vc) return reject(peer, vc.error().toString());
            onViewChange(msg, std::move(*vc));
          } else {
            auto nv = decodeNewView(msg.body, config_.limits);
            if (!nv) return reject(peer, nv.error().toString());
            onNewView(msg, std::move(*nv));
          }
        } else if constexpr (std::is_same_v<T, FetchBatchMsg>) {
          onFetchBatch(*from, msg);
        } else if constexpr (std::is_same_v<T, BatchDataMsg>) {
          onBatchData(*from, std::move(msg));
        } else if constexpr (std::is_same_v<T, StatusMsg>) {
          onStatus(*from, msg);
        } else if constexpr (std::is_same_v<T, FetchEffectsMsg>) {
          onFetchEffects(*from, msg);
        } else if constexpr (std::is_same_v<T, EffectsDataMsg>) {
          onEffectsData(*from, std::move(msg));
        } else {
          reject(peer, std::string("a ") + messageName(m) + ", which replicas do not take");
        }
      },
      m);
}

// --- requests ------------------------------------------------------------------------

bool Replica::authenticated(const WireRequest& r) { return authenticated(r, r.digest()); }

bool Replica::authenticated(const WireRequest& r, const SecureHash& d) {
  if (direct_.count(d)) return true;
  if (r.authenticator.size() != n()) return false;
  auto key = config_.client_key ? config_.client_key(r.client) : std::nullopt;
  if (!key) return false;
  auto mk = keys_.keyFor(r.client, *key);
  if (!mk) return false;
  return macMatches(*mk, d, r.authenticator[config_.self_index]);
}

void Replica::sendReply(const std::string& client, uint64_t client_seq, const ReplyRecord& r) {
  // Encoded from the cached reply, without a copy of it.
  Status s = link_.send(client, encodeReplyFrame(r.view, client_seq, config_.self_index, r.body));
  if (!s) log("sending a reply to '" + client + "': " + s.error().toString());
}

void Replica::sendBatchReplies(const Batch& batch, const std::vector<Bytes>& replies) {
  // One frame per client with its replies from the batch, split only to stay
  // within what the link carries and the client decodes.
  std::vector<std::pair<const std::string*, std::vector<std::pair<uint64_t, ByteView>>>> per_client;
  std::unordered_map<std::string_view, size_t> client_at;
  for (size_t i = 0; i < batch.requests.size(); ++i) {
    const Request& r = batch.requests[i];
    auto [it, fresh] = client_at.try_emplace(r.client, per_client.size());
    if (fresh) per_client.emplace_back(&r.client, std::vector<std::pair<uint64_t, ByteView>>{});
    per_client[it->second].second.emplace_back(r.client_seq, replies[i]);
  }
  const size_t budget = std::min(link_.frameBytesMax(), config_.limits.frame_bytes_max) -
                        replies_frame_overhead_bytes;
  for (const auto& to_client : per_client) {
    const std::string& client = *to_client.first;
    const auto& entries = to_client.second;
    auto send = [&](size_t from, size_t to) {
      std::span<const std::pair<uint64_t, ByteView>> part(entries.data() + from, to - from);
      Status sent = link_.send(client, encodeRepliesFrame(view_, config_.self_index, part));
      if (!sent) log("sending replies to '" + client + "': " + sent.error().toString());
    };
    size_t from = 0, bytes = 0;
    for (size_t i = 0; i < entries.size(); ++i) {
      const size_t entry_bytes = entries[i].second.size() + replies_entry_overhead_bytes;
      if (i > from && bytes + entry_bytes > budget) {
        send(from, i);
        from = i;
        bytes = 0;
      }
      bytes += entry_bytes;
    }
    send(from, entries.size());
  }
}

void Replica::onRequest(std::string_view peer, WireRequest r) {
  if (r.client != peer) {
    return reject(peer, "a request naming client '" + r.client + "', not the sender");
  }
  if (!config_.client_key || !config_.client_key(peer)) {
    return reject(peer, "a request from a peer that is not a known client");
  }
  // Answered from the reply cache when executed already.
  auto cache = replies_.find(r.client);
  if (cache != replies_.end()) {
    auto it = cache->second.find(r.client_seq);
    if (it != cache->second.end()) {
      ++stats_.replies_from_cache;
      return sendReply(r.client, r.client_seq, it->second);
    }
  }
  const SecureHash body_hash = SecureHash::of(r.body);
  if (Status s = machine_.checkHashed(r.client, r.client_seq, r.body, body_hash); !s) {
    Request request{r.client, r.client_seq, r.body};
    // Never ordered; the client hears why (f+1 matching refusals end its
    // wait), unordered and not cached as executed.
    ++stats_.requests_refused;
    log("request " + std::to_string(r.client_seq) + " of '" + r.client + "' refused: " + s.error().toString());
    Bytes answer = machine_.rejection(request, s.error());
    if (!answer.empty()) {
      sendToPeer(peer, Message(ReplyMsg{view_, r.client_seq, config_.self_index, std::move(answer)}));
    }
    return;
  }
  const SecureHash d = r.digestWithBodyHash(body_hash);
  if (direct_.size() < config_.pending_requests_max && direct_.insert(d).second) tryAcceptAllHeld();
  if (pending_.count(d) || in_batches_.count(d)) return;
  if (pending_.size() >= config_.pending_requests_max ||
      pending_per_client_[r.client] >= config_.pending_requests_per_client_max) {
    return reject(peer, "request " + std::to_string(r.client_seq) +
                            " dropped: too many requests waiting to be ordered");
  }
  ++pending_per_client_[r.client];
  pending_.emplace(d, Pending{std::move(r), body_hash, clock_.nowMicros()});
  if (isPrimary()) {
    scheduleBatch();
  } else {
    armViewTimer();
  }
}

void Replica::proposeNow() {
  if (batch_timer_) {
    executor_.cancel(batch_timer_);
    batch_timer_ = 0;
  }
  proposeBatches();
}

void Replica::scheduleBatch() {
  if (pending_.size() >= config_.batch_size_max || config_.batch_delay_micros == 0)
    return proposeNow();
  // A pipeline with at most batches_in_flight_at_once_max batches proposed
  // and not executed: a request need not wait for company, so it goes out
  // after the requests that arrived with it (the current burst of frames);
  // while more are in flight, requests gather for up to batch_delay_micros,
  // so the batches grow with the load. (Executed as this thread has seen it,
  // not machine_.lastExecuted(), which the Store's writer moves meanwhile:
  // the simulator replays a seed exactly.)
  if (next_seq_ <= state_digest_seq_ + 1 + config_.batches_in_flight_at_once_max && isPrimary()) {
    if (propose_posted_) return;
    propose_posted_ = true;
    postBack([this] {
      propose_posted_ = false;
      proposeNow();
    });
    return;
  }
  if (batch_timer_) return;
  batch_timer_ = executor_.runAfter(config_.batch_delay_micros, [this] {
    batch_timer_ = 0;
    proposeBatches();
  });
}

void Replica::proposeBatches() {
  while (isPrimary() && !pending_.empty() && inWindow(next_seq_) &&
         next_seq_ <= machine_.lastExecuted() + config_.batches_in_flight_max) {
    BatchBody batch;
    const int64_t now = clock_.nowMicros();
    int64_t after = last_batch_time_micros_;
    for (auto it = slots_.rbegin(); it != slots_.rend(); ++it) {
      auto b = it->second.batches.find(it->second.digest);
      if (it->second.has_pp && b != it->second.batches.end() && b->second.time_micros != 0) {
        after = std::max(after, b->second.time_micros);
        break;
      }
    }
    batch.time_micros = std::max(now, after + 1);
    // Oldest first, so no request waits behind newer ones for long.
    std::vector<std::pair<int64_t, SecureHash>> order;
    order.reserve(pending_.size());
    for (const auto& [d, p] : pending_) order.emplace_back(p.since_micros, d);
    std::sort(order.begin(), order.end());
    BatchHashes hashes;
    for (const auto& [since, d] : order) {
      if (batch.requests.size() >= config_.batch_size_max) break;
      auto it = pending_.find(d);
      hashes.bodies.push_back(it->second.body_hash);
      hashes.requests.push_back(d);
      ++stats_.requests_proposed;
      stats_.request_wait_micros += static_cast<uint64_t>(std::max<int64_t>(0, now - since));
      batch.requests.push_back(std::move(it->second.request));
      if (--pending_per_client_[batch.requests.back().client] == 0) {
        pending_per_client_.erase(batch.requests.back().client);
      }
      pending_.erase(it);
      in_batches_.insert(d);
    }
    const uint64_t seq = next_seq_++;
    last_batch_time_micros_ = batch.time_micros;
    ++stats_.batches_proposed;
    const SecureHash digest = batch.digest(hashes.bodies);
    // Encoded once: the log keeps these bytes, the backups receive them.
    Bytes frame = encodePrePrepareFrame(view_, seq, batch);
    acceptPrePrepare(seq, digest, std::move(batch), true, std::move(hashes), std::move(frame));
  }
}

// --- normal case ---------------------------------------------------------------------

bool Replica::inWindow(uint64_t seq) const {
  return seq > stable_seq_ && seq <= stable_seq_ + config_.window_batches_max;
}

bool Replica::takesVotes(uint64_t seq) const {
  return inWindow(seq) || (seq > machine_.lastExecuted() && slots_.count(seq) > 0);
}

void Replica::eraseSlotsThrough(uint64_t seq) {
  const auto end = slots_.upper_bound(seq);
  for (auto it = slots_.begin(); it != end; ++it) held_slots_ -= it->second.held ? 1 : 0;
  slots_.erase(slots_.begin(), end);
}

Replica::Slot& Replica::slot(uint64_t seq) {
  Slot& s = slots_[seq];
  s.seq = seq;
  return s;
}

Status Replica::checkBatch(const BatchBody& batch, const BatchHashes& hashes, uint64_t seq,
                          size_t& unauthenticated) {
  unauthenticated = 0;
  if (batch.requests.size() > config_.batch_size_max) {
    return makeError(Errc::too_large, "batch of " + std::to_string(batch.requests.size()) +
                                          " requests, over batch_size_max");
  }
  const int64_t now = clock_.nowMicros();
  if (batch.time_micros < now - config_.time_drift_micros_max ||
      batch.time_micros > now + config_.time_drift_micros_max) {
    return makeError(Errc::invalid_transaction,
                     "batch timestamp " + std::to_string(batch.time_micros) + " is " +
                         std::to_string(batch.time_micros - now) +
                         " us from this replica's clock, beyond time_drift_micros_max");
  }
  // Strictly after the batch before it and before the one after it, as far
  // as this replica knows them.
  int64_t lower = last_executed_time_micros_, upper = INT64_MAX;
  for (auto it = slots_.lower_bound(seq); it != slots_.begin();) {
    --it;
    if (it->second.has_pp) {
      auto b = it->second.batches.find(it->second.digest);
      if (b != it->second.batches.end() && b->second.time_micros != 0) {
        lower = std::max(lower, b->second.time_micros);
        break;
      }
    }
  }
  for (auto it = slots_.upper_bound(seq); it != slots_.end(); ++it) {
    if (!it->second.has_pp) continue;
    auto b = it->second.batches.find(it->second.digest);
    if (b != it->second.batches.end() && b->second.time_micros != 0) {
      upper = b->second.time_micros;
      break;
    }
  }
  if (batch.time_micros <= lower || batch.time_micros >= upper) {
    return makeError(Errc::invalid_transaction, "batch timestamp " +
                                                    std::to_string(batch.time_micros) +
                                                    " is not after the previous batch's");
  }
  std::set<SecureHash> seen;
  for (size_t i = 0; i < batch.requests.size(); ++i) {
    const WireRequest& r = batch.requests[i];
    const SecureHash& d = hashes.requests[i];
    if (!seen.insert(d).second) {
      return makeError(Errc::malformed, "request " + std::to_string(r.client_seq) + " of '" +
                                            r.client + "' twice in one batch");
    }
    if (Status s = machine_.checkHashed(r.client, r.client_seq, r.body, hashes.bodies[i]); !s) return s;
    if (!authenticated(r, d)) {
      log("request " + std::to_string(r.client_seq) + " of '" + r.client +
          "' is not authenticated for this replica (no valid MAC, not received from the client)");
      ++unauthenticated;
    }
  }
  return Status();
}

void Replica::onPrePrepare(uint32_t from, PrePrepareMsg m, ByteView frame) {
  const std::string peer = config_.replicas[from].name;
  if (m.view != view_ || view_changing_) return;  // another view: retransmission brings it
  if (from != primaryOf(m.view)) {
    return reject(peer, "a pre-prepare for view " + std::to_string(m.view) + " from a backup");
  }
  if (!inWindow(m.seq)) return;  // outside the watermarks: dropped, as PBFT does
  BatchHashes hashes = hashBatch(m.batch);
  const SecureHash digest = m.batch.digest(hashes.bodies);
  Slot& s = slot(m.seq);
  if (s.has_pp) {
    if (s.digest != digest) {
      reject(peer, "the primary equivocates: pre-prepare " + std::to_string(m.seq) + " in view " +
                       std::to_string(m.view) + " with digest " + digest.shortHex() +
                       ", accepted " + s.digest.shortHex() + " before");
    }
    return;
  }
  if (m.seq <= machine_.lastExecuted()) return;
  if (s.held) {
    if (s.held->view == m.view && s.held->digest != digest) {
      reject(peer, "the primary equivocates: pre-prepare " + std::to_string(m.seq) + " in view " +
                       std::to_string(m.view) + " with digest " + digest.shortHex() + ", held " +
                       s.held->digest.shortHex() + " before");
    }
    if (s.held->view == m.view) return;
  }
  size_t unauthenticated = 0;
  if (Status st = checkBatch(m.batch, hashes, m.seq, unauthenticated); !st) {
    return reject(peer, "pre-prepare " + std::to_string(m.seq) + ": " + st.error().toString());
  }
  if (unauthenticated > 0) {
    // The primary authenticated these requests (it proposes only requests
    // received from their clients); this replica cannot. It prepares the
    // batch once it can (a direct copy from the client), or once f+1
    // backups prepared it: one of them is honest and authenticated every
    // request in it. Until then it sends no prepare.
    ++stats_.pre_prepares_held;
    if (!s.held) ++held_slots_;
    s.held = Slot::Held{m.view, digest, std::move(m.batch), Bytes(frame.begin(), frame.end())};
    armViewTimer();
    return tryAcceptHeld(s);
  }
  acceptPrePrepare(m.seq, digest, std::move(m.batch), false, std::move(hashes),
                   Bytes(frame.begin(), frame.end()));
}

void Replica::tryAcceptHeld(Slot& s) {
  if (!s.held) return;
  auto drop = [&] {
    s.held.reset();
    --held_slots_;
  };
  if (s.held->view != view_ || view_changing_ || s.has_pp || s.seq <= machine_.lastExecuted()) return drop();
  size_t vouchers = 0;
  for (const auto& [r, d] : s.prepares) {
    if (d == s.held->digest && r != config_.self_index && r != primaryOf(view_)) ++vouchers;
  }
  bool accept = vouchers >= size_t(f()) + 1;
  if (accept) {
    ++stats_.held_accepted_by_prepares;
  } else {
    accept = std::all_of(s.held->batch.requests.begin(), s.held->batch.requests.end(),
                         [&](const WireRequest& r) { return authenticated(r); });
  }
  if (!accept) return;
  const SecureHash digest = s.held->digest;
  BatchBody batch = std::move(s.held->batch);
  Bytes frame = std::move(s.held->frame);
  drop();
  BatchHashes hashes = hashBatch(batch);
  acceptPrePrepare(s.seq, digest, std::move(batch), false, std::move(hashes), std::move(frame));
}

void Replica::tryAcceptAllHeld() {
  if (held_slots_ == 0) return;
  for (auto& [seq, s] : slots_) {
    if (s.held) tryAcceptHeld(s);
  }
}

void Replica::acceptPrePrepare(uint64_t seq, const SecureHash& digest, BatchBody batch, bool mine,
                               BatchHashes hashes, Bytes frame) {
  CCAL_ASSERT(hashes.requests.size() == batch.requests.size() && hashes.bodies.size() == batch.requests.size());
  Slot& s = slot(seq);
  s.has_pp = true;
  s.digest = digest;
  s.accepted_at = clock_.nowMicros();
  s.q[digest] = view_;
  while (s.q.size() > q_digests_per_slot_max) {
    auto lowest = std::min_element(s.q.begin(), s.q.end(),
                                   [](const auto& a, const auto& b) { return a.second < b.second; });
    s.batches.erase(lowest->first);
    s.hashes.erase(lowest->first);
    s.frames.erase(lowest->first);
    s.q.erase(lowest);
  }
  for (size_t i = 0; i < batch.requests.size(); ++i) {
    const WireRequest& r = batch.requests[i];
    const SecureHash& d = hashes.requests[i];
    auto p = pending_.find(d);
    if (p != pending_.end()) {
      if (--pending_per_client_[r.client] == 0) pending_per_client_.erase(r.client);
      pending_.erase(p);
    }
    in_batches_.insert(d);
  }
  if (!mine) last_batch_time_micros_ = std::max(last_batch_time_micros_, batch.time_micros);
  s.batches[digest] = std::move(batch);
  s.hashes[digest] = std::move(hashes);
  if (!frame.empty()) s.frames[digest] = std::move(frame);
  // A cluster of one (f = 0): the pre-prepare is the whole prepared
  // certificate and this replica's commit the whole commit quorum. P goes
  // into the pre-prepare's write and the batch executes as soon as that write
  // is queued: the Store's writer commits in order, so the execution is never
  // durable before its slot (one or two durable commits per batch, not three).
  const bool alone = mine && f() == 0;
  if (alone) {
    s.prepared = true;
    s.has_p = true;
    s.p_view = view_;
    s.p_digest = digest;
    s.commit_sent = true;
    s.commits[config_.self_index] = digest;
    s.committed = true;
  }
  CCAL_ASSERT(!(mine && abstain_view_ == view_));
  if (votesEarly()) {
    // The vote goes out now; the slot's record goes with the write of its
    // prepared certificate, before the commit (or with a view change's or a
    // clean stop's write: recordUnrecorded), so that one write records
    // both (safety 3).
    ++stats_.votes_early;
    s.pp_durable = true;
    sendVote(s, mine);  // (the primary's frame stays: the record takes it)
    s.unrecorded = true;
    if (!mine) armViewTimer();
    return checkPrepared(s);
  }
  persistSlot(s);
  step().meta = meta();
  const uint64_t v = view_;
  afterDurable([this, seq, v, digest, mine] {
    if (view_ != v || view_changing_) return;
    auto it = slots_.find(seq);
    if (it == slots_.end() || !it->second.has_pp || it->second.digest != digest) return;
    Slot& sl = it->second;
    sl.pp_durable = true;
    if (!mine && abstain_view_ == v) {
      // Restarted in this view without a clean stop: no prepare (safety 3);
      // the slot prepares on 2f other backups' prepares.
      ++stats_.votes_abstained;
    } else if (n() > 1) {  // (a cluster of one has no one to send it to)
      sendVote(sl, mine);
      sl.frames.erase(digest);  // the slot's record has a copy
    }
    checkPrepared(sl);
  });
  if (!mine) armViewTimer();
  if (alone) {
    // Held, so that the slot's write and the execution's share one commit
    // (without it the writer, when idle, takes the first alone).
    vault::Store::Hold hold = store_.store().hold();
    flush();
    tryExecute();
  }
}

void Replica::sendVote(Slot& s, bool mine) {
  if (mine) {
    auto fr = s.frames.find(s.digest);
    if (fr != s.frames.end()) return broadcastFrame(fr->second, "pre-prepare");
    auto b = s.batches.find(s.digest);
    CCAL_ASSERT(b != s.batches.end());
    return broadcastFrame(encodePrePrepareFrame(view_, s.seq, b->second), "pre-prepare");
  }
  s.prepare_sent = true;
  s.prepares[config_.self_index] = s.digest;
  broadcast(Message(Prepare{{view_, s.seq, s.digest}}));
}

void Replica::onPrepare(uint32_t from, const VoteMsg& m) {
  if (m.view != view_ || view_changing_ || !takesVotes(m.seq)) return;
  if (from == primaryOf(m.view)) {
    return reject(config_.replicas[from].name, "a prepare from the primary");
  }
  Slot& s = slot(m.seq);
  s.prepares.emplace(from, m.digest);
  if (s.held) tryAcceptHeld(s);
  checkPrepared(s);
}

void Replica::observeCommit(uint32_t from, const VoteMsg& m) {
  if (m.view > view_ || m.seq <= machine_.lastExecuted() || !inWindow(m.seq)) return;
  Slot& s = slot(m.seq);
  if (s.decided) return;
  auto& voters = s.observed[{m.view, m.digest}];
  voters.insert(from);
  if (voters.size() >= 2 * size_t(f()) + 1) {
    s.decided = true;
    s.decided_digest = m.digest;
    s.observed.clear();
    if (m.digest.isZero()) s.batches[m.digest] = BatchBody{};
    tryExecute();
    return;
  }
  constexpr size_t observed_entries_max = 64;
  while (s.observed.size() > observed_entries_max) s.observed.erase(s.observed.begin());
}

void Replica::onCommit(uint32_t from, const VoteMsg& m) {
  if (m.view != view_ || view_changing_) return observeCommit(from, m);
  if (!takesVotes(m.seq)) return;
  Slot& s = slot(m.seq);
  s.commits.emplace(from, m.digest);
  if (!s.prepared) return decideOnCommits(s, m.digest);
  checkCommitted(s);
}

void Replica::checkPrepared(Slot& s) {
  if (!s.has_pp || !s.pp_durable || s.prepared) return;
  uint32_t votes = 0;
  for (const auto& [r, d] : s.prepares) {
    if (d == s.digest && r != primaryOf(view_)) ++votes;
  }
  if (votes < 2 * f()) return;
  s.prepared = true;
  s.prepared_at = clock_.nowMicros();
  s.has_p = true;
  s.p_view = view_;
  s.p_digest = s.digest;
  if (logPrepared(s)) return;
  persistSlot(s);
  step().meta = meta();  // (the last batch timestamp of a pre-prepare recorded only now)
  const uint64_t v = view_, seq = s.seq;
  const SecureHash digest = s.digest;
  afterDurable([this, v, seq, digest] { sendCommit(v, seq, digest); });
}

void Replica::sendCommit(uint64_t v, uint64_t seq, const SecureHash& digest) {
  if (view_ != v || view_changing_) return;
  auto it = slots_.find(seq);
  if (it == slots_.end() || !it->second.prepared || it->second.digest != digest) return;
  it->second.commit_sent = true;
  it->second.commit_sent_at = clock_.nowMicros();
  it->second.commits[config_.self_index] = digest;
  broadcast(Message(Commit{{v, seq, digest}}));
  checkCommitted(it->second);
}

bool Replica::logPrepared(Slot& s) {
  if (!vote_log_ || log_failed_) return false;
  SlotRecord r;
  r.seq = s.seq;
  r.pre_prepared = s.q;
  r.has_prepared = true;
  r.prepared_view = s.p_view;
  r.prepared_digest = s.p_digest;
  size_t record_bytes = 0;
  for (const auto& [d, b] : s.batches) {
    if (!s.q.count(d) && d != s.p_digest) continue;
    auto fr = s.frames.find(d);
    const Bytes& bytes = r.batches[d] = fr != s.frames.end() ? fr->second : encodeBatch(b);
    record_bytes += bytes.size();
    if (record_bytes > config_.vote_log_record_bytes_max) return false;
  }
  {
    std::lock_guard lock(store_requests_->mutex);
    ++store_requests_->in_flight;
  }
  const uint64_t v = view_, seq = s.seq;
  const SecureHash digest = s.digest;
  auto appended = vote_log_->append(
      ReplicaStore::encodeLoggedSlot(r, last_batch_time_micros_),
      [this, ex = &executor_, alive = std::weak_ptr<int>(alive_), requests = store_requests_, v,
       seq, digest](const Status& st, uint64_t lsn) {
        StoreRequestDone done{requests, !st};
        ex->post([this, alive, st, lsn, v, seq, digest] {
          if (alive.expired()) return;
          if (!st) {
            // No commit: the prepared certificate may be lost (safety 2);
            // nor anything a store write queued after it depends on (a
            // view-change could report it). The replica stops acting on
            // its protocol state, as after a failed store write.
            if (!log_failed_) {
              log("writing a prepared certificate to the vote log failed: " +
                  st.error().toString() + "; this replica sends no more votes that depend on it");
            }
            log_failed_ = true;
            waiting_for_log_.clear();
            return;
          }
          onLogged(lsn);
          sendCommit(v, seq, digest);
        });
      });
  if (!appended) {
    StoreRequestDone undo{store_requests_, false};
    ++stats_.prepared_log_full;
    return false;
  }
  ++stats_.prepared_logged;
  log_appended_lsn_ = *appended;
  logged_.emplace_back(seq, *appended);
  if (logged_.size() >= logged_slots_unstored_max) step();  // (the store takes them)
  s.unrecorded = false;                                     // the record has the slot's Q and batch
  return true;
}

void Replica::onLogged(uint64_t lsn) {
  log_durable_lsn_ = std::max(log_durable_lsn_, lsn);
  while (!waiting_for_log_.empty() && waiting_for_log_.front().first <= log_durable_lsn_) {
    auto fns = std::move(waiting_for_log_.front().second);
    waiting_for_log_.pop_front();
    for (auto& fn : *fns) fn();
  }
}

void Replica::checkCommitted(Slot& s) {
  if (!s.prepared || !s.commit_sent || s.committed || s.decided) return;
  uint32_t votes = 0;
  for (const auto& [r, d] : s.commits) {
    if (d == s.digest) ++votes;
  }
  if (votes < 2 * f() + 1) return;
  s.committed = true;
  s.committed_at = clock_.nowMicros();
  tryExecute();
}

// A slot that did not prepare here (its pre-prepare lost, or refused when
// resent after the allowed drift) is decided by 2f+1 commits of this view
// for one digest (only the digest of the commit just taken can reach it): at least f+1 honest
// replicas prepared that batch at this seq, so every later view keeps it there (observeCommit's
// argument, across views). It executes once its batch is here (fetched if not), instead of waiting
// for a view change or a state transfer.
void Replica::decideOnCommits(Slot& s, const SecureHash& digest) {
  // (Commits for a batch executed here already, or handed to execution —
  // after a state transfer covered it —, decide nothing.)
  const uint64_t handed = executing_batches_ == 0 ? machine_.lastExecuted() : executing_through_;
  if (s.decided || s.seq <= handed) return;
  uint32_t votes = 0;
  for (const auto& [r, d] : s.commits) {
    if (d == digest) ++votes;
  }
  if (votes < 2 * f() + 1) return;
  s.decided = true;
  s.decided_digest = digest;
  if (digest.isZero()) s.batches[digest] = BatchBody{};
  ++stats_.batches_decided_by_commits;
  tryExecute();
}

// --- execution -----------------------------------------------------------------------

void Replica::tryExecute() {
  while (!execution_failed_ && !(transfer_ && transfer_->applying) &&
         executing_batches_ < config_.executing_batches_max) {
    // With nothing in flight the state machine's lastExecuted() is exact
    // (a state transfer may have moved it).
    const uint64_t next =
        (executing_batches_ == 0 ? machine_.lastExecuted() : executing_through_) + 1;
    auto it = slots_.find(next);
    if (it == slots_.end() || !(it->second.committed || it->second.decided)) return;
    Slot& s = it->second;
    const SecureHash digest = s.committed ? s.digest : s.decided_digest;
    static const BatchBody null_batch;
    const BatchBody* body = &null_batch;
    BatchHashes hashes;
    if (!digest.isZero()) {
      auto b = s.batches.find(digest);
      if (b == s.batches.end()) {
        s.fetch_wanted = true;
        return requestMissingBatches();
      }
      body = &b->second;
      auto h = s.hashes.find(digest);
      hashes = h != s.hashes.end() ? h->second : hashBatch(*body);
    }
    // A null batch (chosen by a new view) takes the previous batch's time.
    const int64_t time = digest.isZero() ? last_executed_time_micros_ : body->time_micros;
    if (time != 0) last_executed_time_micros_ = time;
    if (executing_batches_ > 0) ++stats_.batches_overlapped;
    ++executing_batches_;
    executing_through_ = next;
    auto batch = std::make_shared<Batch>(toBatch(next, view_, time, *body));
    batch->body_hashes = std::move(hashes.bodies);
    // The replies go out as soon as they are settled, while the batch's
    // write becomes durable (state_machine.h; notary/README.md, safety 4):
    // with f >= 1 the batch is committed by 2f+1 replicas' commits, each sent
    // once its prepared certificate was durable. A cluster of one has queued
    // its slot's record just before (safety 2), maybe in the same write:
    // its replies wait for done.
    std::function<void(const Executed&)> decided;
    if (f() >= 1) {
      // (A slot that went through every phase in this view, in order, is timed.)
      std::array<int64_t, 4> at{s.accepted_at, s.prepared_at, s.commit_sent_at, s.committed_at};
      if (!s.committed || !std::is_sorted(at.begin(), at.end()) || at[0] == 0) at.fill(0);
      decided = [this, ex = &executor_, alive = std::weak_ptr<int>(alive_), next, batch,
                 at](const Executed& executed) {
        CCAL_ASSERT(executed.replies.size() == batch->requests.size());
        ex->post([this, alive, next, batch, at, replies = executed.replies] {
          if (!alive.expired()) onSettled(next, *batch, at, replies);
        });
      };
    }
    machine_.execute(
        *batch,
        [this, ex = &executor_, alive = std::weak_ptr<int>(alive_), next, batch,
         digests = std::move(hashes.requests)](Result<Executed> result) mutable {
          ex->post([this, alive, next, batch, digests = std::move(digests),
                    result = std::move(result)]() mutable {
            if (alive.expired()) return;
            onExecuted(next, *batch, digests, std::move(result));
          });
        },
        std::move(decided));
  }
}

void Replica::onSettled(uint64_t seq, const Batch& batch, const std::array<int64_t, 4>& at,
                        const std::vector<Bytes>& replies) {
  const int64_t now = clock_.nowMicros();
  if (at[0] != 0 && now >= at[3]) {
    ++stats_.batches_timed;
    stats_.phase_prepare_micros += static_cast<uint64_t>(at[1] - at[0]);
    stats_.phase_prepared_durable_micros += static_cast<uint64_t>(at[2] - at[1]);
    stats_.phase_commit_micros += static_cast<uint64_t>(at[3] - at[2]);
    stats_.phase_execute_micros += static_cast<uint64_t>(now - at[3]);
  }
  ++stats_.batches_replied_early;
  replied_early_at_.emplace_back(seq, now);
  sendBatchReplies(batch, replies);
}

void Replica::onExecuted(uint64_t seq, const Batch& batch, const std::vector<SecureHash>& request_digests,
                         Result<Executed> result) {
  CCAL_ASSERT(executing_batches_ > 0);
  --executing_batches_;
  if (execution_failed_) return;  // a batch before this one failed
  if (!result) {
    // Fatal for this replica (state_machine.h): it stops executing.
    log("executing batch " + std::to_string(seq) + " failed: " + result.error().toString() +
        "; this replica stops executing");
    execution_failed_ = true;
    return;
  }
  CCAL_ASSERT(result->replies.size() == batch.requests.size());
  CCAL_ASSERT(request_digests.size() == batch.requests.size());
  // (Later batches handed already may be durable too.)
  CCAL_ASSERT(machine_.lastExecuted() >= seq && seq == state_digest_seq_ + 1);
  // The batch's replies go with the next write the protocol makes anyway
  // (only a cache: no write of their own, and sending does not wait for it).
  {
    pbft::ReplyBatchRecord& record = replies_unwritten_.reply_batches[seq];
    record.entries.reserve(batch.requests.size());
    for (const Request& r : batch.requests) {
      record.entries.push_back({r.client, r.client_seq, view_});
    }
    if (!result->packed_replies.empty()) {
      record.packed = std::move(result->packed_replies);
    } else {
      record.replies = result->replies;
    }
    if (seq > config_.reply_batches_durable_max) {
      replies_unwritten_.reply_batches_through = std::max(replies_unwritten_.reply_batches_through,
                                                          seq - config_.reply_batches_durable_max);
    }
    // Executing batch after batch with no protocol write between (catching up
    // on observed commits): at most this many wait.
    if (replies_unwritten_.reply_batches.size() >= replies_unwritten_batches_max) step();
  }
  // A batch freed a place in the pipeline: the next goes to the Store's
  // writer before this batch's replies go out, so the writer works while
  // they are sent.
  tryExecute();
  // (Settled batches are replied to in order, each before its own done.)
  while (!replied_early_at_.empty() && replied_early_at_.front().first < seq)
    replied_early_at_.pop_front();
  if (!replied_early_at_.empty() && replied_early_at_.front().first == seq) {
    stats_.replied_early_lead_micros += static_cast<uint64_t>(
        std::max<int64_t>(0, clock_.nowMicros() - replied_early_at_.front().second));
    replied_early_at_.pop_front();
  } else {
    sendBatchReplies(batch, result->replies);
  }
  for (size_t i = 0; i < batch.requests.size(); ++i) {
    const Request& r = batch.requests[i];
    ReplyRecord rec{r.client_seq, view_, std::move(result->replies[i])};
    auto& cache = replies_[r.client];
    cache[r.client_seq] = std::move(rec);
    while (cache.size() > config_.reply_cache_per_client_max) cache.erase(cache.begin());
    const SecureHash& d = request_digests[i];
    in_batches_.erase(d);
    direct_.erase(d);
    auto p = pending_.find(d);
    if (p != pending_.end()) {
      if (--pending_per_client_[r.client] == 0) pending_per_client_.erase(r.client);
      pending_.erase(p);
    }
  }
  stalled_since_micros_ = 0;
  stats_.requests_executed += batch.requests.size();
  ++stats_.batches_executed;
  afterBatchApplied(seq, result->effects);
  if (seq <= stable_seq_) {
    eraseSlotsThrough(seq);
    truncateLog(seq);
  }
  // Progress: the view-change timer starts again, at its base value.
  view_timeout_micros_ = config_.view_change_timeout_micros;
  if (view_timer_ && !view_changing_) {
    executor_.cancel(view_timer_);
    view_timer_ = 0;
  }
  armViewTimer();
  // Nothing more to execute now: if no other write takes the replies (and
  // the slots in the vote log only) along soon (the next batch's, at a
  // steady load), they get one of their own.
  if (executing_batches_ == 0 && (!replies_unwritten_.reply_batches.empty() || !logged_.empty()) &&
      reply_write_timer_ == 0) {
    reply_write_timer_ = executor_.runAfter(replies_idle_write_delay_micros, [this] {
      reply_write_timer_ = 0;
      if (!replies_unwritten_.reply_batches.empty() || !logged_.empty()) step();
    });
  }
  if (isPrimary()) scheduleBatch();
}

void Replica::afterBatchApplied(uint64_t seq, ByteView effects) {
  state_digest_ = chainDigest(state_digest_, effects);
  state_digest_seq_ = seq;
  if (seq % config_.checkpoint_interval_batches != 0) return;
  own_checkpoints_[seq] = state_digest_;
  step().digests[seq] = state_digest_;
  SignedMsg sm = sign(SignedKind::checkpoint, encodeCheckpoint(CheckpointMsg{seq, state_digest_}));
  afterDurable([this, sm] { broadcast(Message(sm)); });
  onCheckpoint(sm, CheckpointMsg{seq, state_digest_});
}

SignedMsg Replica::sign(SignedKind kind, Bytes body) const {
  SignedMsg sm;
  sm.kind = kind;
  sm.replica = config_.self_index;
  const DigitalSignature sig = keys_.self().sign(signedPreimage(config_.cluster, kind, body));
  sm.signature.assign(sig.view().begin(), sig.view().end());
  sm.body = std::move(body);
  return sm;
}

Status Replica::verifySigned(const SignedMsg& sm) const {
  if (sm.replica >= n()) {
    return makeError(Errc::malformed, "signed message from replica " + std::to_string(sm.replica) +
                                          " of a cluster of " + std::to_string(n()));
  }
  auto sig = DigitalSignature::fromParts(config_.replicas[sm.replica].key,
                                         static_cast<uint16_t>(SignatureScheme::ed25519),
                                         signature_version_current, sm.signature);
  if (!sig) return sig.error();
  return sig->verify(signedPreimage(config_.cluster, sm.kind, sm.body));
}

Status Replica::verifyCheckpointProof(uint64_t seq, const SecureHash& digest,
                                      const std::vector<SignedMsg>& proof) const {
  if (seq == 0) {
    if (!proof.empty() || !digest.isZero()) {
      return makeError(Errc::malformed, "a checkpoint proof for seq 0");
    }
    return Status();
  }
  std::set<uint32_t> signers;
  for (const auto& sm : proof) {
    if (sm.kind != SignedKind::checkpoint) {
      return makeError(Errc::malformed, "a checkpoint proof holding another kind of message");
    }
    CCAL_TRY(verifySigned(sm));
    auto c = decodeCheckpoint(sm.body, config_.limits);
    if (!c) return c.error();
    if (c->seq != seq || c->state_digest != digest) {
      return makeError(Errc::malformed, "a checkpoint proof for " + std::to_string(seq) +
                                            " holding a checkpoint for " + std::to_string(c->seq));
    }
    signers.insert(sm.replica);
  }
  if (signers.size() < 2 * size_t(f()) + 1) {
    return makeError(Errc::missing_signatures,
                     "a checkpoint proof for " + std::to_string(seq) + " signed by " +
                         std::to_string(signers.size()) + " replicas, not 2f+1");
  }
  return Status();
}

void Replica::onCheckpoint(const SignedMsg& sm, const CheckpointMsg& c) {
  if (c.seq <= stable_seq_) return;
  if (c.seq % config_.checkpoint_interval_batches != 0) {
    return reject(config_.replicas[sm.replica].name,
                  "a checkpoint at " + std::to_string(c.seq) + ", not a multiple of K");
  }
  // Bounded: checkpoints far beyond the window are dropped, except that a
  // replica far behind still learns a certificate from peers' status answers.
  if (c.seq > stable_seq_ + 64ull * config_.window_batches_max) return;
  auto& votes = checkpoint_votes_[c.seq];
  votes[sm.replica] = sm;
  std::vector<SignedMsg> proof;
  for (const auto& [r, m] : votes) {
    auto other = decodeCheckpoint(m.body, config_.limits);
    if (other && other->state_digest == c.state_digest) proof.push_back(m);
  }
  if (proof.size() >= 2 * size_t(f()) + 1) makeStable(c.seq, c.state_digest, std::move(proof));
  while (checkpoint_votes_.size() > 4 * size_t(config_.window_batches_max)) {
    checkpoint_votes_.erase(std::prev(checkpoint_votes_.end()));
  }
}

void Replica::truncateLog(uint64_t through) {
  if (through == 0) return;
  Step& st = step();
  st.truncate_through = std::max(st.truncate_through, through);
  for (auto it = st.slots.begin(); it != st.slots.end();) {
    it = it->first <= through ? st.slots.erase(it) : std::next(it);
  }
}

void Replica::makeStable(uint64_t seq, const SecureHash& digest, std::vector<SignedMsg> proof) {
  if (seq <= stable_seq_) return;
  auto own = own_checkpoints_.find(seq);
  if (own != own_checkpoints_.end() && own->second != digest) {
    log("checkpoint " + std::to_string(seq) + " is stable with state digest " + digest.shortHex() +
        " but this replica's is " + own->second.shortHex() + ": its state diverged");
  }
  stable_seq_ = seq;
  stable_digest_ = digest;
  stable_proof_ = std::move(proof);
  ++stats_.checkpoints_stable;
  // The log is truncated up to the checkpoint, except batches not executed
  // here yet: those committed still execute from the log (cheaper than a
  // state transfer), the rest are discarded once executed or transferred.
  const uint64_t through = std::min(seq, machine_.lastExecuted());
  eraseSlotsThrough(through);
  checkpoint_votes_.erase(checkpoint_votes_.begin(), checkpoint_votes_.upper_bound(seq));
  own_checkpoints_.erase(own_checkpoints_.begin(), own_checkpoints_.lower_bound(seq));
  next_seq_ = std::max(next_seq_, seq + 1);
  Step& st = step();
  st.meta = meta();
  truncateLog(through);
  maybeStartStateTransfer();
  if (isPrimary()) scheduleBatch();
}

// --- view change ---------------------------------------------------------------------

void Replica::armViewTimer() {
  if (view_timer_) return;
  if (view_changing_) return armNewViewTimer();
  bool waiting = false;
  if (!isPrimary()) {
    waiting = !pending_.empty() || !in_batches_.empty() || held_slots_ > 0;
    for (auto it = slots_.upper_bound(machine_.lastExecuted()); !waiting && it != slots_.end(); ++it) {
      waiting = it->second.has_pp;
    }
  }
  if (!waiting) return;
  view_timer_ = executor_.runAfter(view_timeout_micros_, [this] {
    view_timer_ = 0;
    onViewTimer();
  });
}

void Replica::onViewTimer() { startViewChange(view_ + 1); }

void Replica::startViewChange(uint64_t new_view) {
  if (new_view <= view_) return;
  // The view-change reports Q and P as its write records them.
  recordUnrecorded();
  view_ = new_view;
  view_changing_ = true;
  ++stats_.view_changes;
  // (Bounded: view changes back off, view_change_timeout_micros doubling.)
  log("starting a view change to view " + std::to_string(new_view) + " (last executed " +
      std::to_string(machine_.lastExecuted()) + ")");
  new_view_msg_.reset();
  if (batch_timer_) {
    executor_.cancel(batch_timer_);
    batch_timer_ = 0;
  }
  ViewChangeMsg vc;
  vc.new_view = new_view;
  vc.stable_seq = stable_seq_;
  vc.stable_digest = stable_digest_;
  vc.stable_proof = stable_proof_;
  held_slots_ = 0;
  for (auto& [seq, s] : slots_) {
    s.held.reset();
    s.has_pp = false;
    s.pp_durable = false;
    s.prepared = s.commit_sent = s.committed = s.prepare_sent = false;
    s.prepares.clear();
    s.commits.clear();
    if (seq <= stable_seq_) continue;
    if (s.has_p) vc.prepared.push_back(LogEntry{seq, s.p_digest, s.p_view});
    for (const auto& [d, v] : s.q) vc.pre_prepared.push_back(LogEntry{seq, d, v});
  }
  SignedMsg sm = sign(SignedKind::view_change, encodeViewChange(vc));
  my_view_change_ = sm;
  // Other replicas' view-changes for lower views are of no use now.
  view_changes_.erase(view_changes_.begin(), view_changes_.lower_bound(new_view));
  view_changes_[new_view][config_.self_index] = {sm, vc};
  step().meta = meta();
  afterDurable([this, sm, new_view] {
    if (view_ == new_view && view_changing_) broadcast(Message(sm));
  });
  if (view_timer_) executor_.cancel(view_timer_);
  view_timer_ = 0;
  armNewViewTimer();
  if (primaryOf(new_view) == config_.self_index) tryNewView();
}

// PBFT's rule for moving on past a view change that does not complete: the
// timer for the new view starts only once 2f+1 replicas have asked for it
// (so a replica alone, or a few behind a partition, do not race ahead
// through views nobody else is in); when it expires before the new-view
// arrives, the replica asks for the next view, with the timeout doubled.
void Replica::armNewViewTimer() {
  if (!view_changing_ || view_timer_) return;
  auto it = view_changes_.find(view_);
  if (it == view_changes_.end() || it->second.size() < 2 * size_t(f()) + 1) return;
  view_timer_ = executor_.runAfter(view_timeout_micros_, [this] {
    view_timer_ = 0;
    if (view_changing_) startViewChange(view_ + 1);
  });
  view_timeout_micros_ = std::min(view_timeout_micros_ * 2, config_.view_change_timeout_micros_max);
}

Status Replica::checkViewChange(const SignedMsg& sm, const ViewChangeMsg& vc) const {
  CCAL_TRY(verifyCheckpointProof(vc.stable_seq, vc.stable_digest, vc.stable_proof));
  const uint64_t limit = vc.stable_seq + config_.window_batches_max;
  for (const auto* set : {&vc.prepared, &vc.pre_prepared}) {
    for (const auto& e : *set) {
      if (e.seq <= vc.stable_seq || e.seq > limit || e.view >= vc.new_view) {
        return makeError(Errc::malformed, "view-change entry for seq " + std::to_string(e.seq) +
                                              " outside its window or view");
      }
    }
  }
  return Status();
}

void Replica::onViewChange(const SignedMsg& sm, ViewChangeMsg vc) {
  const std::string peer = config_.replicas[sm.replica].name;
  if (Status s = checkViewChange(sm, vc); !s) return reject(peer, s.error().toString());
  if (vc.new_view < view_ || (vc.new_view == view_ && !view_changing_)) {
    // The sender is behind: the new-view of this view brings it up.
    if (new_view_msg_ && !view_changing_) send(sm.replica, Message(*new_view_msg_));
    return;
  }
  // One view-change per replica for views ahead of this one.
  for (auto it = view_changes_.upper_bound(view_); it != view_changes_.end(); ++it) {
    if (it->first != vc.new_view) it->second.erase(sm.replica);
  }
  const uint64_t v = vc.new_view;
  view_changes_[v][sm.replica] = {sm, std::move(vc)};
  // f+1 replicas want a higher view: join the smallest of those views
  // (PBFT's liveness rule: a faulty minority cannot start one alone).
  std::map<uint32_t, uint64_t> ahead;  // replica -> view
  for (auto it = view_changes_.upper_bound(view_); it != view_changes_.end(); ++it) {
    for (const auto& [r, m] : it->second) {
      if (!ahead.count(r)) ahead[r] = it->first;
    }
  }
  if (ahead.size() >= size_t(f()) + 1) {
    uint64_t smallest = UINT64_MAX;
    for (const auto& [r, view] : ahead) smallest = std::min(smallest, view);
    startViewChange(smallest);
    return;
  }
  if (view_changing_ && v == view_) {
    armNewViewTimer();
    if (primaryOf(view_) == config_.self_index) tryNewView();
  }
}

void Replica::tryNewView() {
  if (!view_changing_ || primaryOf(view_) != config_.self_index) return;
  auto& set = view_changes_[view_];
  if (set.size() < 2 * size_t(f()) + 1) return;
  std::vector<ViewChangeMsg> s;
  NewViewMsg nv;
  nv.view = view_;
  for (const auto& [r, m] : set) {
    s.push_back(m.second);
    nv.view_changes.push_back(m.first);
  }
  auto d = decideNewView(s, view_, f());
  if (!d) {
    log("the " + std::to_string(s.size()) + " view-changes for view " + std::to_string(view_) +
        " do not decide every batch yet: waiting for more");
    return;
  }
  nv.start_seq = d->start_seq;
  nv.chosen = d->chosen;
  SignedMsg sm = sign(SignedKind::new_view, encodeNewView(nv));
  new_view_msg_ = sm;
  installNewView(nv, *d);
  new_view_msg_ = sm;
  afterDurable([this, sm, v = view_] {
    if (view_ == v && !view_changing_) broadcast(Message(sm));
  });
}

void Replica::onNewView(const SignedMsg& sm, NewViewMsg nv) {
  const std::string peer = config_.replicas[sm.replica].name;
  if (nv.view < view_ || (nv.view == view_ && !view_changing_)) return;
  if (sm.replica != primaryOf(nv.view)) {
    return reject(peer, "a new-view for view " + std::to_string(nv.view) + " signed by replica " +
                            std::to_string(sm.replica) + ", not its primary");
  }
  std::vector<ViewChangeMsg> s;
  std::set<uint32_t> senders;
  for (const auto& vcs : nv.view_changes) {
    if (vcs.kind != SignedKind::view_change) return reject(peer, "a new-view whose V set holds another kind");
    if (Status st = verifySigned(vcs); !st) return reject(peer, "new-view V set: " + st.error().toString());
    auto vc = decodeViewChange(vcs.body, config_.limits);
    if (!vc) return reject(peer, "new-view V set: " + vc.error().toString());
    if (vc->new_view != nv.view) return reject(peer, "a new-view whose V set holds a view-change for another view");
    if (Status st = checkViewChange(vcs, *vc); !st) return reject(peer, "new-view V set: " + st.error().toString());
    if (!senders.insert(vcs.replica).second) return reject(peer, "a new-view with two view-changes from one replica");
    s.push_back(std::move(*vc));
  }
  auto d = decideNewView(s, nv.view, f());
  if (!d || d->start_seq != nv.start_seq || d->chosen != nv.chosen) {
    return reject(peer, "a new-view for view " + std::to_string(nv.view) +
                            " whose O set is not what its V set decides");
  }
  if (nv.view > view_) {
    view_ = nv.view;  // joins directly: the new-view proves 2f+1 moved on
    view_changing_ = true;
  }
  installNewView(nv, *d);
  new_view_msg_ = sm;
}

void Replica::installNewView(const NewViewMsg& nv, const Decision& d) {
  CCAL_ASSERT(nv.view == view_ && view_changing_);
  view_changing_ = false;
  ++stats_.new_views;
  log("in view " + std::to_string(view_) + ", primary " + config_.replicas[primaryOf(view_)].name);
  if (view_timer_) {
    executor_.cancel(view_timer_);
    view_timer_ = 0;
  }
  view_changes_.erase(view_changes_.begin(), view_changes_.upper_bound(view_));
  held_slots_ = 0;
  for (auto& [seq, s] : slots_) {
    s.held.reset();
    s.has_pp = s.pp_durable = s.prepared = s.commit_sent = s.committed = s.prepare_sent = false;
    s.prepares.clear();
    s.commits.clear();
  }
  if (d.start_seq > stable_seq_) {
    const auto& from = nv.view_changes[d.start_from];
    auto vc = decodeViewChange(from.body, config_.limits);
    CCAL_ASSERT(vc.ok());
    makeStable(d.start_seq, d.start_digest, vc->stable_proof);
  }
  in_batches_.clear();
  const bool primary = primaryOf(view_) == config_.self_index;
  uint64_t max_seq = std::max(stable_seq_, machine_.lastExecuted());
  for (const auto& e : d.chosen) {
    max_seq = std::max(max_seq, e.seq);
    if (e.seq <= stable_seq_) continue;
    Slot& s = slot(e.seq);
    s.has_pp = true;
    s.digest = e.digest;
    if (e.digest.isZero()) {
      s.batches[e.digest] = BatchBody{};
    } else if (!s.batches.count(e.digest)) {
      s.fetch_wanted = true;
    }
    s.q[e.digest] = view_;
    while (s.q.size() > q_digests_per_slot_max) {
      auto lowest = std::min_element(s.q.begin(), s.q.end(),
                                     [](const auto& a, const auto& b) { return a.second < b.second; });
      if (lowest->first != e.digest && lowest->first != s.p_digest) {
        s.batches.erase(lowest->first);
          }
      s.q.erase(lowest);
    }
    if (auto b = s.batches.find(e.digest); b != s.batches.end()) {
      for (const auto& r : b->second.requests) in_batches_.insert(r.digest());
    }
    persistSlot(s);
  }
  next_seq_ = max_seq + 1;
  step().meta = meta();
  const uint64_t v = view_;
  std::vector<LogEntry> chosen = d.chosen;
  afterDurable([this, v, chosen, primary] {
    if (view_ != v || view_changing_) return;
    for (const auto& e : chosen) {
      auto it = slots_.find(e.seq);
      if (it == slots_.end() || !it->second.has_pp || it->second.digest != e.digest) continue;
      Slot& s = it->second;
      s.pp_durable = true;
      if (!primary) {
        s.prepare_sent = true;
        s.prepares[config_.self_index] = e.digest;
        broadcast(Message(Prepare{{v, e.seq, e.digest}}));
      }
      checkPrepared(s);
    }
  });
  requestMissingBatches();
  // Requests that were in batches the new view dropped come again from
  // their clients; the pending ones are proposed by the new primary.
  if (primary) scheduleBatch();
  armViewTimer();
}

// --- retransmission, batch fetch, state transfer --------------------------------------

void Replica::onStatusTimer() {
  status_timer_ = executor_.runAfter(config_.status_interval_micros, [this] { onStatusTimer(); });
  broadcast(Message(StatusMsg{view_, machine_.lastExecuted(), stable_seq_, view_changing_}));
  requestMissingBatches();
  if (transfer_ && !transfer_->applying && machine_.lastExecuted() >= transfer_->target_seq) {
    transfer_.reset();  // executed there from the log meanwhile
  }
  if (transfer_ && !transfer_->applying && machine_.lastExecuted() + 1 != transfer_->from_seq) {
    transfer_->effects.clear();  // the log moved it on: ask again from there
    transfer_->from_seq = machine_.lastExecuted() + 1;
    transfer_->last_progress_micros = 0;
  }
  if (!transfer_ && !stalled_since_micros_) maybeStartStateTransfer();
  if (stalled_since_micros_ &&
      clock_.nowMicros() - stalled_since_micros_ > transfer_stall_rounds_max * config_.status_interval_micros) {
    maybeStartStateTransfer();
  }
  if (transfer_ && !transfer_->applying &&
      clock_.nowMicros() - transfer_->last_progress_micros >
          transfer_stall_rounds_max * config_.status_interval_micros) {
    transfer_->source = (transfer_->source + 1) % n();
    if (transfer_->source == config_.self_index) transfer_->source = (transfer_->source + 1) % n();
    transfer_->effects.clear();
    transfer_->from_seq = machine_.lastExecuted() + 1;
    transfer_->last_progress_micros = clock_.nowMicros();
    const uint64_t want = transfer_->target_seq - transfer_->from_seq + 1;
    send(transfer_->source, Message(FetchEffectsMsg{transfer_->from_seq,
                                                    static_cast<uint32_t>(std::min<uint64_t>(
                                                        want, config_.limits.effects_per_frame_max))}));
  }
  if (isPrimary() && !pending_.empty()) scheduleBatch();
  // Clients retransmit; requests pending far beyond the timeout are dropped
  // so that the bounded buffers do not fill with requests nobody waits for.
}

void Replica::onStatus(uint32_t from, const StatusMsg& st) {
  const bool peer_behind_view = st.view < view_ || (st.view == view_ && st.view_changing && !view_changing_);
  if (peer_behind_view) {
    if (!view_changing_ && new_view_msg_) send(from, Message(*new_view_msg_));
    if (view_changing_ && my_view_change_) send(from, Message(*my_view_change_));
  } else if (st.view == view_ && st.view_changing && view_changing_ && my_view_change_) {
    send(from, Message(*my_view_change_));
  }
  if (st.stable_seq < stable_seq_) {
    for (const auto& sm : stable_proof_) send(from, Message(sm));
  }
  // Own checkpoint messages the peer may lack.
  for (auto it = checkpoint_votes_.upper_bound(st.stable_seq); it != checkpoint_votes_.end(); ++it) {
    auto mine = it->second.find(config_.self_index);
    if (mine != it->second.end()) send(from, Message(mine->second));
  }
  if (st.view > view_ && !view_changing_) {
    // The peer is ahead in a view change: what committed here lets it
    // execute as an observer (observeCommit) until the views meet again.
    uint32_t sent = 0;
    for (auto it = slots_.upper_bound(st.last_executed);
         it != slots_.end() && sent < config_.retransmit_batches_max; ++it) {
      Slot& s = it->second;
      if (!s.committed && !s.commit_sent) continue;  // commit_sent survives a restart
      ++sent;
      send(from, Message(Commit{{view_, s.seq, s.digest}}));
      auto b = s.batches.find(s.digest);
      if (b != s.batches.end() && !s.digest.isZero()) send(from, Message(BatchDataMsg{s.seq, b->second}));
    }
    return;
  }
  if (st.view != view_ || st.view_changing || view_changing_) return;
  // Normal-case messages are resent only to a peer that has executed
  // nothing since its previous status: a peer that executes is receiving
  // what we send, and resending every batch in flight (requests and all) at
  // every status costs more than the batches did. A lost message stops the
  // peer at that batch (execution is in order), so the next status asks.
  //
  // A peer that executed nothing in one status interval is often only slow
  // (a durable commit, a busy core): it gets the one batch it needs next
  // (execution is in order, so a single loss stops it there); a peer
  // stalled for two intervals or more gets every batch in flight.
  //
  // A peer that executed no more batches than it was resent at its previous
  // status lives on what is resent (every commit of a stretch lost, say):
  // it is still stalled, so the resending grows to every batch in flight
  // instead of starting over at one batch every other status.
  uint64_t& previous = peer_executed_at_status_[from];
  uint32_t& resent = peer_resent_batches_[from];
  const bool stalled = previous != UINT64_MAX &&
                       (st.last_executed <= previous || st.last_executed - previous <= resent);
  previous = st.last_executed;
  resent = 0;
  uint32_t& stalled_statuses = peer_stalled_statuses_[from];
  stalled_statuses = stalled ? stalled_statuses + 1 : 0;
  if (!stalled) return;
  const uint32_t batches_max = stalled_statuses >= 2 ? config_.retransmit_batches_max : 1;
  const bool primary = isPrimary();
  uint32_t sent = 0;
  for (auto it = slots_.upper_bound(std::max(st.last_executed, stable_seq_));
       it != slots_.end() && sent < batches_max; ++it) {
    Slot& s = it->second;
    // A null batch's pre-prepare comes with the new-view, which the peer has
    // (or gets above); its prepares and commits are resent like any (a
    // backup that lost them would wait for its view timer otherwise).
    if (!s.has_pp || !s.pp_durable) continue;
    ++sent;
    if (primary && !s.digest.isZero()) {
      // A pre-prepare whose timestamp is beyond the allowed drift by this
      // clock is not resent: the peer would refuse it (it checks the
      // timestamp whenever the frame comes) and decides the batch on the
      // commits below instead, fetching its body (decideOnCommits).
      auto b = s.batches.find(s.digest);
      const bool stale = b != s.batches.end() &&
                         b->second.time_micros < clock_.nowMicros() - config_.time_drift_micros_max;
      if (b != s.batches.end() && from != config_.self_index && !stale) {
        Status sent_ok = link_.send(config_.replicas[from].name, encodePrePrepareFrame(view_, s.seq, b->second));
        if (!sent_ok) log("sending a pre-prepare to '" + config_.replicas[from].name + "': " + sent_ok.error().toString());
      }
    } else if (s.prepare_sent) {
      send(from, Message(Prepare{{view_, s.seq, s.digest}}));
    }
    if (s.commit_sent) send(from, Message(Commit{{view_, s.seq, s.digest}}));
  }
  resent = sent;
}

void Replica::requestMissingBatches() {
  uint32_t asked = 0;
  for (auto& [seq, s] : slots_) {
    if (asked >= fetch_batches_per_round_max) break;
    // (A slot decided on commits for another digest than the pre-prepare it
    // accepted — an equivocating primary's — fetches the decided batch.)
    const SecureHash d = s.decided && !s.committed ? s.decided_digest : s.digest;
    if (!(s.has_pp || s.decided) || d.isZero() || s.batches.count(d)) continue;
    broadcast(Message(FetchBatchMsg{seq, d}));
    ++asked;
  }
}

void Replica::onFetchBatch(uint32_t from, const FetchBatchMsg& m) {
  auto it = slots_.find(m.seq);
  if (it == slots_.end()) return;
  auto b = it->second.batches.find(m.digest);
  if (b == it->second.batches.end()) return;
  if (from == config_.self_index) return;
  Status sent = link_.send(config_.replicas[from].name, encodeBatchDataFrame(m.seq, b->second));
  if (!sent) log("sending batch data to '" + config_.replicas[from].name + "': " + sent.error().toString());
}

void Replica::onBatchData(uint32_t from, BatchDataMsg m) {
  auto it = slots_.find(m.seq);
  if (it == slots_.end() || !(it->second.has_pp || it->second.decided)) return;
  Slot& s = it->second;
  const SecureHash d = m.batch.digest();
  if (d != (s.has_pp ? s.digest : s.decided_digest) && !(s.decided && d == s.decided_digest)) {
    return reject(config_.replicas[from].name, "batch data for " + std::to_string(m.seq) +
                                                   " with digest " + d.shortHex() + ", not " +
                                                   s.digest.shortHex());
  }
  if (s.batches.count(d)) return;
  ++stats_.batches_fetched;
  for (const auto& r : m.batch.requests) in_batches_.insert(r.digest());
  s.batches[d] = std::move(m.batch);
  s.fetch_wanted = false;
  persistSlot(s);
  tryExecute();
}

void Replica::maybeStartStateTransfer() {
  if (transfer_ || stable_seq_ <= machine_.lastExecuted()) return;
  if (auto next = slots_.find(machine_.lastExecuted() + 1);
      next != slots_.end() && (next->second.committed || (next->second.has_pp && !view_changing_)) &&
      !stalled_since_micros_) {
    // Committed here, or on its way (pre-prepared in this view: a replica a
    // write behind the others when they made the checkpoint stable): it
    // executes from the log, and answers its clients, as a transferred batch
    // would not. The status timer starts a transfer if execution stalls.
    stalled_since_micros_ = clock_.nowMicros();
    return;
  }
  stalled_since_micros_ = 0;
  if (stable_seq_ - machine_.lastExecuted() > config_.state_transfer_batches_max) {
    log("behind by " + std::to_string(stable_seq_ - machine_.lastExecuted()) +
        " batches, over state_transfer_batches_max: catching up to the stable checkpoint in steps");
  }
  Transfer t;
  t.target_seq = stable_seq_;
  t.target_digest = stable_digest_;
  t.from_seq = machine_.lastExecuted() + 1;
  t.source = (config_.self_index + 1) % n();
  t.last_progress_micros = clock_.nowMicros();
  transfer_ = std::move(t);
  ++stats_.state_transfers;
  const uint64_t want = transfer_->target_seq - transfer_->from_seq + 1;
  send(transfer_->source,
       Message(FetchEffectsMsg{transfer_->from_seq, static_cast<uint32_t>(std::min<uint64_t>(
                                                        want, config_.limits.effects_per_frame_max))}));
}

void Replica::onFetchEffects(uint32_t from, const FetchEffectsMsg& m) {
  const uint64_t last = machine_.lastExecuted();
  if (m.from_seq == 0 || m.from_seq > last) return;
  EffectsDataMsg out{m.from_seq, {}};
  size_t bytes = 0;
  const size_t budget = link_.frameBytesMax() - effects_frame_overhead_bytes;
  for (uint64_t s = m.from_seq; s <= last && s < m.from_seq + m.count; ++s) {
    auto e = machine_.effects(s);
    if (!e) {
      log("reading the effects of batch " + std::to_string(s) + ": " + e.error().toString());
      break;
    }
    if (bytes + e->size() + 16 > budget) break;
    bytes += e->size() + 16;
    out.effects.push_back(std::move(*e));
  }
  if (!out.effects.empty()) send(from, Message(std::move(out)));
}

void Replica::onEffectsData(uint32_t from, EffectsDataMsg m) {
  if (!transfer_ || transfer_->applying || from != transfer_->source) return;
  // A batch being executed is queued in the state machine but not yet in
  // lastExecuted(): applying effects now would apply its seq a second time
  // (uniqueness asserts). The status timer restarts the transfer after it.
  if (executing_batches_ > 0) return;
  Transfer& t = *transfer_;
  if (machine_.lastExecuted() + 1 != t.from_seq) return;  // the status timer restarts it
  if (m.from_seq != t.from_seq + t.effects.size()) return;
  const size_t had = t.effects.size();
  for (auto& e : m.effects) {
    if (t.from_seq + t.effects.size() > t.target_seq) break;
    if (t.effects.size() >= config_.state_transfer_batches_max) break;
    t.effects.push_back(std::move(e));
  }
  // Only effects taken count as progress: a source answering with none
  // would otherwise hold the transfer for good (the status timer moves to
  // the next source when a source makes no progress).
  if (t.effects.size() > had) t.last_progress_micros = clock_.nowMicros();
  const uint64_t have_through = t.from_seq + t.effects.size() - 1;
  if (have_through < t.target_seq && t.effects.size() < config_.state_transfer_batches_max) {
    const uint64_t want = t.target_seq - have_through;
    send(t.source, Message(FetchEffectsMsg{have_through + 1, static_cast<uint32_t>(std::min<uint64_t>(
                                                                 want, config_.limits.effects_per_frame_max))}));
    return;
  }
  if (have_through < t.target_seq) {
    // TODO(perf): a transfer longer than state_transfer_batches_max would
    // need certified intermediate digests; such a replica is restored from
    // a copy of a peer's store instead.
    log("state transfer of more than state_transfer_batches_max batches is not supported");
    transfer_.reset();
    return;
  }
  SecureHash d = state_digest_;
  for (const auto& e : t.effects) d = chainDigest(d, e);
  if (d != t.target_digest) {
    reject(config_.replicas[from].name,
           "effects for batches " + std::to_string(t.from_seq) + " to " + std::to_string(t.target_seq) +
               " do not lead to the certified state digest " + t.target_digest.shortHex());
    t.effects.clear();
    t.source = (t.source + 1) % n();
    if (t.source == config_.self_index) t.source = (t.source + 1) % n();
    t.last_progress_micros = 0;  // the status timer asks the next replica
    return;
  }
  t.applying = true;
  applyTransferred();
}

void Replica::applyTransferred() {
  Transfer& t = *transfer_;
  const uint64_t seq = machine_.lastExecuted() + 1;
  if (seq > t.target_seq) {
    transfer_.reset();
    log("state transfer done: now at batch " + std::to_string(machine_.lastExecuted()));
    tryExecute();
    maybeStartStateTransfer();
    return;
  }
  CCAL_ASSERT(seq >= t.from_seq && seq - t.from_seq < t.effects.size());
  ByteView e = t.effects[seq - t.from_seq];
  machine_.applyEffects(seq, e, [this, ex = &executor_, alive = std::weak_ptr<int>(alive_), seq](Status st) {
    ex->post([this, alive, seq, st] {
      if (alive.expired()) return;
      if (!st) {
        log("applying the effects of batch " + std::to_string(seq) + " failed: " +
            st.error().toString());
        transfer_.reset();
        return;
      }
      ++stats_.effects_applied;
      const Transfer& tr = *transfer_;
      afterBatchApplied(seq, tr.effects[seq - tr.from_seq]);
      applyTransferred();
    });
  });
}

}  // namespace ccal::notary
