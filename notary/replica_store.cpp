#include "notary/replica_store.h"

#include <cstring>

#include "notary/record_reader.h"
#include "notary/vote_log.h"

namespace ccal::notary::pbft {

namespace {

constexpr std::string_view meta_key = "meta";
constexpr uint8_t slot_format_inline = 1;  // batches inside the slot record (before)
constexpr uint8_t slot_format = 2, meta_format = 1;  // batches under their own keys
constexpr size_t batch_key_bytes = 8 + SecureHash::size_bytes;
constexpr uint8_t legacy_reply_format = 1;  // one record per client, its whole cache
constexpr uint8_t reply_format = 2;         // one record per reply
constexpr uint8_t reply_key_tag = 0x00;     // X.500 names hold no NUL: never a legacy key
constexpr uint8_t reply_batch_format = 3;   // one record per executed batch
constexpr uint8_t reply_batch_key_tag = 0x01;

Bytes seqKey(uint64_t seq) {
  Bytes k(8);
  for (int i = 0; i < 8; ++i) k[i] = static_cast<uint8_t>(seq >> (56 - 8 * i));
  return k;
}
uint64_t seqOfKey(ByteView k) {
  uint64_t v = 0;
  for (size_t i = 0; i < 8 && i < k.size(); ++i) v = v << 8 | k[i];
  return v;
}

using Reader = RecordReader;

// A stored batch: u64 BE seq || digest (sorts after its slot's record).
Bytes batchKey(uint64_t seq, const SecureHash& digest) {
  Bytes k = seqKey(seq);
  append(k, digest.view());
  return k;
}

// 0x00 || client || 0x00 || u64 BE client_seq: a client's replies together, oldest first.
Bytes replyKey(std::string_view client, uint64_t client_seq) {
  Bytes k{reply_key_tag};
  append(k, asBytes(client));
  k.push_back(0x00);
  append(k, seqKey(client_seq));
  return k;
}

// 0x01 || u64 BE seq: batches in order.
Bytes replyBatchKey(uint64_t seq) {
  Bytes k{reply_batch_key_tag};
  append(k, seqKey(seq));
  return k;
}

Bytes encodeReplyBatch(const ReplyBatchRecord& r) {
  size_t total = 1 + 4 + 1 + 4 + r.packed.size();
  for (const auto& e : r.entries) total += 4 + e.client.size() + 16;
  for (const auto& b : r.replies) total += 4 + b.size();
  Bytes v;
  v.reserve(total);
  v.push_back(reply_batch_format);
  appendU32(v, static_cast<uint32_t>(r.entries.size()));
  for (const auto& e : r.entries) {
    appendBytes(v, asBytes(e.client));
    appendU64(v, e.client_seq);
    appendU64(v, e.view);
  }
  v.push_back(r.packed.empty() ? 0 : 1);
  if (!r.packed.empty()) {
    appendBytes(v, r.packed);
  } else {
    for (const auto& b : r.replies) appendBytes(v, b);
  }
  return v;
}

Error corrupt(const std::string& what) {
  return makeError(Errc::storage_error, "stored PBFT " + what + " is corrupt");
}

}  // namespace

const std::vector<std::string>& ReplicaStore::dbNames() {
  static const std::vector<std::string> names = {"pbft_meta", "pbft_log", "pbft_replies",
                                                 "pbft_digests"};
  return names;
}

namespace {

// A slot record: Q, the batches when inline (the vote log's records), P.
Bytes encodeSlotRecord(Bytes out, const SlotRecord& r, bool inline_batches) {
  out.push_back(inline_batches ? slot_format_inline : slot_format);
  appendU32(out, static_cast<uint32_t>(r.pre_prepared.size()));
  for (const auto& [d, v] : r.pre_prepared) {
    append(out, d.view());
    appendU64(out, v);
  }
  if (inline_batches) {
    appendU32(out, static_cast<uint32_t>(r.batches.size()));
    for (const auto& [d, b] : r.batches) {
      append(out, d.view());
      appendBytes(out, b);
    }
  }
  out.push_back(r.has_prepared ? 1 : 0);
  appendU64(out, r.prepared_view);
  append(out, r.prepared_digest.view());
  return out;
}

}  // namespace

Bytes ReplicaStore::encodeSlot(const SlotRecord& r) {
  return encodeSlotRecord({}, r, false);
}

Result<SlotRecord> ReplicaStore::decodeSlot(uint64_t seq, ByteView bytes) {
  Reader rd(bytes);
  SlotRecord r;
  r.seq = seq;
  uint8_t format = 0, prepared = 0;
  uint32_t nq = 0, nb = 0;
  if (!rd.u8(format) || (format != slot_format && format != slot_format_inline) || !rd.u32(nq) || nq > 1024) {
    return corrupt("log slot " + std::to_string(seq));
  }
  for (uint32_t i = 0; i < nq; ++i) {
    SecureHash d;
    uint64_t v = 0;
    if (!rd.hash(d) || !rd.u64(v)) return corrupt("log slot " + std::to_string(seq));
    r.pre_prepared[d] = v;
  }
  if (format == slot_format_inline && (!rd.u32(nb) || nb > 1024)) return corrupt("log slot " + std::to_string(seq));
  for (uint32_t i = 0; i < nb; ++i) {
    SecureHash d;
    Bytes b;
    if (!rd.hash(d) || !rd.bytes(b)) return corrupt("log slot " + std::to_string(seq));
    r.batches[d] = std::move(b);
  }
  if (!rd.u8(prepared) || !rd.u64(r.prepared_view) || !rd.hash(r.prepared_digest) || !rd.done()) {
    return corrupt("log slot " + std::to_string(seq));
  }
  r.has_prepared = prepared != 0;
  return r;
}

std::string ReplicaStore::voteLogPath(const vault::Store& store) {
  return store.config().path + "/pbft_votes.log";
}

Bytes ReplicaStore::encodeLoggedSlot(const SlotRecord& r, int64_t last_batch_time_micros) {
  size_t total = 8 + 8 + 1 + 4 + r.pre_prepared.size() * 40 + 4 + 1 + 8 + 32;
  for (const auto& [d, b] : r.batches) total += 32 + 4 + b.size();
  Bytes out;
  out.reserve(total);
  appendU64(out, r.seq);
  appendU64(out, static_cast<uint64_t>(last_batch_time_micros));
  return encodeSlotRecord(std::move(out), r, true);
}

Result<std::pair<SlotRecord, int64_t>> ReplicaStore::decodeLoggedSlot(ByteView bytes) {
  Reader rd(bytes);
  uint64_t seq = 0, time = 0;
  if (!rd.u64(seq) || !rd.u64(time) || bytes.size() < 17 || bytes[16] != slot_format_inline) {
    return corrupt("vote log record");
  }
  auto slot = decodeSlot(seq, bytes.subspan(16));
  if (!slot) return slot.error();
  return std::make_pair(std::move(*slot), static_cast<int64_t>(time));
}

void ReplicaStore::mergeSlot(SlotRecord& into, SlotRecord from) {
  for (const auto& [d, v] : from.pre_prepared) {
    auto [it, added] = into.pre_prepared.emplace(d, v);
    if (!added) it->second = std::max(it->second, v);
  }
  if (from.has_prepared && (!into.has_prepared || from.prepared_view > into.prepared_view)) {
    into.has_prepared = true;
    into.prepared_view = from.prepared_view;
    into.prepared_digest = from.prepared_digest;
  }
  for (auto& [d, b] : from.batches) into.batches.emplace(d, std::move(b));
  while (into.pre_prepared.size() > q_digests_per_slot_max) {
    auto lowest = into.pre_prepared.end();
    for (auto it = into.pre_prepared.begin(); it != into.pre_prepared.end(); ++it) {
      if (into.has_prepared && it->first == into.prepared_digest) continue;
      if (lowest == into.pre_prepared.end() || it->second < lowest->second) lowest = it;
    }
    into.pre_prepared.erase(lowest);
  }
  for (auto it = into.batches.begin(); it != into.batches.end();) {
    const bool kept = into.pre_prepared.count(it->first) ||
                      (into.has_prepared && into.prepared_digest == it->first);
    it = kept ? std::next(it) : into.batches.erase(it);
  }
}

Bytes ReplicaStore::encodeMeta(const MetaRecord& r) {
  Bytes out{meta_format};
  appendU64(out, r.view);
  out.push_back(r.view_changing ? 1 : 0);
  appendU64(out, r.stable_seq);
  append(out, r.stable_digest.view());
  appendU32(out, static_cast<uint32_t>(r.stable_proof.size()));
  for (const auto& s : r.stable_proof) appendBytes(out, encodeFrame(Message(s)));
  appendU64(out, static_cast<uint64_t>(r.last_batch_time_micros));
  if (r.clean_stop) out.push_back(1);
  return out;
}

Result<MetaRecord> ReplicaStore::decodeMeta(ByteView bytes) {
  Reader rd(bytes);
  MetaRecord r;
  uint8_t format = 0, changing = 0;
  uint32_t n = 0;
  if (!rd.u8(format) || format != meta_format || !rd.u64(r.view) || !rd.u8(changing) ||
      !rd.u64(r.stable_seq) || !rd.hash(r.stable_digest) || !rd.u32(n) || n > 1024) {
    return corrupt("meta record");
  }
  r.view_changing = changing != 0;
  for (uint32_t i = 0; i < n; ++i) {
    Bytes frame;
    if (!rd.bytes(frame)) return corrupt("meta record");
    auto m = decodeFrame(frame, PbftLimits{});
    if (!m || !std::holds_alternative<SignedMsg>(*m)) return corrupt("checkpoint proof");
    r.stable_proof.push_back(std::get<SignedMsg>(std::move(*m)));
  }
  uint64_t t = 0;
  if (!rd.u64(t)) return corrupt("meta record");
  r.last_batch_time_micros = static_cast<int64_t>(t);
  if (!rd.done()) {
    uint8_t clean = 0;
    if (!rd.u8(clean) || clean != 1 || !rd.done()) return corrupt("meta record");
    r.clean_stop = true;
  }
  return r;
}

Result<Recovered> ReplicaStore::load() const {
  Recovered out;
  auto txn = store_.read();
  if (auto m = txn.get(store_.db("pbft_meta"), asBytes(meta_key))) {
    auto meta = decodeMeta(*m);
    if (!meta) return meta.error();
    out.meta = std::move(*meta);
    out.has_meta = true;
  }
  for (auto c = txn.cursor(store_.db("pbft_log")); c.valid() || c.first();) {
    if (!c.valid()) break;
    const uint64_t seq = seqOfKey(c.key());
    if (c.key().size() == batch_key_bytes) {
      // A batch, after its slot's record (same seq prefix, longer key).
      auto d = SecureHash::fromBytes(c.key().subspan(8));
      auto slot = out.slots.find(seq);
      if (!d || slot == out.slots.end()) return corrupt("log batch " + std::to_string(seq));
      if (slot->second.pre_prepared.count(*d) ||
          (slot->second.has_prepared && slot->second.prepared_digest == *d)) {
        slot->second.batches[*d] = Bytes(c.value().begin(), c.value().end());
      }
      if (!c.next()) break;
      continue;
    }
    if (c.key().size() != 8) return corrupt("log key of " + std::to_string(c.key().size()) + " bytes");
    auto slot = decodeSlot(seq, c.value());
    if (!slot) return slot.error();
    out.slots[seq] = std::move(*slot);
    if (!c.next()) break;
  }
  // Prepared certificates the vote log holds, some perhaps not in the store
  // yet (the newest), some older than it (released records of a lap
  // before): merged, those at or below the stable checkpoint left out.
  auto logged = VoteLog::read(voteLogPath(store_));
  if (!logged) return logged.error();
  for (auto& record : *logged) {
    auto slot = decodeLoggedSlot(record.payload);
    if (!slot) {
      return makeError(Errc::storage_error, "vote log record " + std::to_string(record.lsn) + ": " +
                                                slot.error().message);
    }
    auto& [r, time] = *slot;
    out.meta.last_batch_time_micros = std::max(out.meta.last_batch_time_micros, time);
    if (r.seq <= out.meta.stable_seq) continue;
    auto [it, added] = out.slots.try_emplace(r.seq);
    if (added) it->second.seq = r.seq;
    mergeSlot(it->second, std::move(r));
  }
  for (auto c = txn.cursor(store_.db("pbft_digests")); c.valid() || c.first();) {
    if (!c.valid()) break;
    auto d = SecureHash::fromBytes(c.value());
    if (!d) return corrupt("checkpoint digest");
    out.digests[seqOfKey(c.key())] = *d;
    if (!c.next()) break;
  }
  for (auto c = txn.cursor(store_.db("pbft_replies")); c.valid() || c.first();) {
    if (!c.valid()) break;
    const ByteView key = c.key();
    if (!key.empty() && key[0] == reply_batch_key_tag) {
      if (key.size() != 9) return corrupt("reply batch key");
      const uint64_t seq = seqOfKey(key.subspan(1));
      const std::string what = "replies of batch " + std::to_string(seq);
      Reader rd(c.value());
      uint8_t format = 0, packed = 0;
      uint32_t n = 0;
      if (!rd.u8(format) || format != reply_batch_format || !rd.u32(n) || n > 1u << 20)
        return corrupt(what);
      ReplyBatchRecord r;
      r.entries.resize(n);
      for (auto& e : r.entries) {
        Bytes client;
        if (!rd.bytes(client) || !rd.u64(e.client_seq) || !rd.u64(e.view)) return corrupt(what);
        e.client.assign(client.begin(), client.end());
      }
      if (!rd.u8(packed) || packed > 1) return corrupt(what);
      if (packed == 1) {
        if (!rd.bytes(r.packed) || r.packed.empty()) return corrupt(what);
      } else {
        r.replies.resize(n);
        for (auto& b : r.replies) {
          if (!rd.bytes(b)) return corrupt(what);
        }
      }
      if (!rd.done()) return corrupt(what);
      out.reply_batches[seq] = std::move(r);
      if (!c.next()) break;
      continue;
    }
    if (!key.empty() && key[0] == reply_key_tag) {
      // One reply: 0x00 || client || 0x00 || u64 BE client_seq -> format, view, body.
      if (key.size() < 1 + 1 + 8 || key[key.size() - 9] != 0x00) return corrupt("reply record key");
      const std::string client(key.begin() + 1, key.end() - 9);
      ReplyRecord r;
      r.client_seq = seqOfKey(key.subspan(key.size() - 8));
      Reader rd(c.value());
      uint8_t format = 0;
      if (!rd.u8(format) || format != reply_format || !rd.u64(r.view) || !rd.bytes(r.body) || !rd.done()) {
        return corrupt("reply " + std::to_string(r.client_seq) + " of '" + client + "'");
      }
      out.replies[client][r.client_seq] = std::move(r);
      if (!c.next()) break;
      continue;
    }
    const std::string client(key.begin(), key.end());
    Reader rd(c.value());
    uint8_t format = 0;
    uint32_t n = 0;
    if (!rd.u8(format) || format != legacy_reply_format || !rd.u32(n) || n > 1u << 20) {
      return corrupt("reply cache of '" + client + "'");
    }
    out.legacy_reply_clients.insert(client);
    auto& cache = out.replies[client];
    for (uint32_t i = 0; i < n; ++i) {
      ReplyRecord r;
      if (!rd.u64(r.client_seq) || !rd.u64(r.view) || !rd.bytes(r.body)) {
        return corrupt("reply cache of '" + client + "'");
      }
      cache[r.client_seq] = std::move(r);
    }
    if (!rd.done()) return corrupt("reply cache of '" + client + "'");
    if (!c.next()) break;
  }
  return out;
}

void ReplicaStore::write(Step step, std::function<void(const Status&)> done) {
  auto shared = std::make_shared<Step>(std::move(step));
  store_.submit(
      [this, shared](vault::WriteTxn& txn) -> Status {
        const Step& s = *shared;
        if (s.meta) CCAL_TRY(txn.put(store_.db("pbft_meta"), asBytes(meta_key), encodeMeta(*s.meta)));
        if (s.truncate_through > 0) {
          for (const auto* name : {"pbft_log", "pbft_digests"}) {
            std::vector<Bytes> doomed;
            {
              auto c = txn.cursor(store_.db(name));
              for (bool ok = c.first(); ok && seqOfKey(c.key()) <= s.truncate_through; ok = c.next()) {
                doomed.emplace_back(c.key().begin(), c.key().end());
              }
            }
            // Keep the digest of the truncation point itself.
            for (const auto& k : doomed) {
              if (std::string_view(name) == "pbft_digests" && seqOfKey(k) == s.truncate_through) continue;
              CCAL_TRY(txn.del(store_.db(name), k));
            }
          }
        }
        for (const auto& [seq, slot] : s.slots) {
          if (s.truncate_through > 0 && seq <= s.truncate_through) continue;
          const vault::Db& log = store_.db("pbft_log");
          CCAL_TRY(txn.put(log, seqKey(seq), encodeSlot(slot)));
          for (const auto& d : slot.batches_dropped) CCAL_TRY(txn.del(log, batchKey(seq, d)));
          for (const auto& [d, b] : slot.batches) CCAL_TRY(txn.put(log, batchKey(seq, d), b));
        }
        for (const auto& [seq, d] : s.digests) {
          CCAL_TRY(txn.put(store_.db("pbft_digests"), seqKey(seq), d.view()));
        }
        const vault::Db& replies = store_.db("pbft_replies");
        for (const auto& client : s.legacy_replies_dropped) CCAL_TRY(txn.del(replies, asBytes(client)));
        for (const auto& [client, seqs] : s.replies_dropped) {
          for (uint64_t cs : seqs) CCAL_TRY(txn.del(replies, replyKey(client, cs)));
        }
        if (s.reply_batches_through > 0) {
          std::vector<Bytes> doomed;
          {
            auto c = txn.cursor(replies);
            for (bool ok = c.seek(replyBatchKey(0));
                 ok && c.key().size() == 9 && c.key()[0] == reply_batch_key_tag &&
                 seqOfKey(c.key().subspan(1)) <= s.reply_batches_through;
                 ok = c.next()) {
              doomed.emplace_back(c.key().begin(), c.key().end());
            }
          }
          for (const auto& k : doomed) CCAL_TRY(txn.del(replies, k));
        }
        for (uint64_t seq : s.reply_batches_dropped) CCAL_TRY(txn.del(replies, replyBatchKey(seq)));
        for (const auto& [seq, r] : s.reply_batches) {
          if (seq <= s.reply_batches_through) continue;
          CCAL_TRY(txn.put(replies, replyBatchKey(seq), encodeReplyBatch(r)));
        }
        return Status();
      },
      std::move(done));
}

}  // namespace ccal::notary::pbft
