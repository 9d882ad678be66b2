#include "test/sim/kv_state_machine.h"

#include <algorithm>
#include <set>

namespace ccal::sim {

namespace {

constexpr std::string_view last_key = "last";
constexpr size_t keys_per_request_max = 16;
constexpr size_t key_bytes_max = 64;

Bytes seqKey(uint64_t seq) {
  Bytes k(8);
  for (int i = 0; i < 8; ++i) k[i] = static_cast<uint8_t>(seq >> (56 - 8 * i));
  return k;
}

// Batches become durable in order: the write of batch seq finds seq - 1 stored.
Status follows(vault::WriteTxn& txn, const vault::Db& meta, uint64_t seq) {
  uint64_t last = 0;
  if (auto v = txn.get(meta, asBytes(last_key)); v && v->size() == 8) {
    for (int i = 0; i < 8; ++i) last = last << 8 | (*v)[i];
  }
  if (last + 1 == seq) return Status();
  return makeError(Errc::storage_error, "kv batch " + std::to_string(seq) +
                                            " cannot follow batch " + std::to_string(last));
}

std::string text(ByteView b) { return std::string(b.begin(), b.end()); }

}  // namespace

const std::vector<std::string>& KvStateMachine::dbNames() {
  static const std::vector<std::string> names = {"kv_keys", "kv_effects", "kv_meta"};
  return names;
}

Bytes KvStateMachine::requestBody(const std::string& id, const std::vector<std::string>& keys) {
  std::string s = id + " ";
  for (size_t i = 0; i < keys.size(); ++i) s += (i ? "," : "") + keys[i];
  return Bytes(s.begin(), s.end());
}

KvStateMachine::KvStateMachine(vault::Store& store) : store_(store) {
  auto txn = store_.read();
  if (auto v = txn.get(store_.db("kv_meta"), asBytes(last_key)); v && v->size() == 8) {
    uint64_t last = 0;
    for (int i = 0; i < 8; ++i) last = last << 8 | (*v)[i];
    last_executed_ = last;
    last_queued_ = last;
  }
}

Result<KvStateMachine::Parsed> KvStateMachine::parse(ByteView body) {
  const std::string s = text(body);
  const size_t space = s.find(' ');
  if (space == std::string::npos || space == 0 || space + 1 >= s.size()) {
    return makeError(Errc::malformed, "kv request is not '<id> <keys>'");
  }
  Parsed p;
  p.id = s.substr(0, space);
  size_t start = space + 1;
  while (start <= s.size()) {
    size_t comma = s.find(',', start);
    if (comma == std::string::npos) comma = s.size();
    std::string key = s.substr(start, comma - start);
    if (key.empty() || key.size() > key_bytes_max || key.find_first_of(" =\n") != std::string::npos) {
      return makeError(Errc::malformed, "kv request with a bad key '" + key + "'");
    }
    p.keys.push_back(key);
    start = comma + 1;
  }
  if (p.keys.size() > keys_per_request_max) return makeError(Errc::too_large, "kv request with too many keys");
  return p;
}

Status KvStateMachine::check(const notary::Request& request) const {
  auto p = parse(request.body);
  if (!p) return p.error();
  return Status();
}

Bytes KvStateMachine::rejection(const notary::Request&, const Error& error) const {
  const std::string s = "refused " + error.message;
  return Bytes(s.begin(), s.end());
}

void KvStateMachine::track(int delta) {
  std::lock_guard lock(mutex_);
  in_flight_ += delta;
  if (in_flight_ == 0) drained_.notify_all();
}

void KvStateMachine::quiesce() {
  std::unique_lock lock(mutex_);
  drained_.wait(lock, [&] { return in_flight_ == 0; });
}

void KvStateMachine::execute(const notary::Batch& batch,
                             std::function<void(Result<notary::Executed>)> done,
                             std::function<void(const notary::Executed&)> decided) {
  CCAL_ASSERT(batch.seq == last_queued_ + 1);
  last_queued_ = batch.seq;
  auto out = std::make_shared<notary::Executed>();
  track(1);
  store_.submit(
      [this, batch, out](vault::WriteTxn& txn) -> Status {
        *out = notary::Executed{};  // a request may run more than once
        CCAL_TRY(follows(txn, store_.db("kv_meta"), batch.seq));
        std::map<std::string, std::string> taken;  // in this batch
        for (const auto& r : batch.requests) {
          auto p = parse(r.body);
          if (!p) {
            const std::string reply = "malformed";
            out->replies.emplace_back(reply.begin(), reply.end());
            continue;
          }
          std::string conflict;
          for (const auto& k : p->keys) {
            std::string owner;
            if (auto t = taken.find(k); t != taken.end()) {
              owner = t->second;
            } else if (auto v = txn.get(store_.db("kv_keys"), asBytes(k))) {
              owner = text(*v);
            }
            if (!owner.empty() && owner != p->id) {
              conflict = "taken " + k + " " + owner;
              break;
            }
          }
          if (conflict.empty()) {
            for (const auto& k : p->keys) {
              if (!txn.get(store_.db("kv_keys"), asBytes(k))) taken.emplace(k, p->id);
              CCAL_TRY(txn.put(store_.db("kv_keys"), asBytes(k), asBytes(p->id)));
            }
          }
          const std::string reply = conflict.empty() ? "ok" : conflict;
          out->replies.emplace_back(reply.begin(), reply.end());
        }
        std::string effects;
        for (const auto& [k, id] : taken) effects += k + "=" + id + "\n";
        out->effects.assign(effects.begin(), effects.end());
        CCAL_TRY(txn.put(store_.db("kv_effects"), seqKey(batch.seq), out->effects));
        CCAL_TRY(txn.put(store_.db("kv_meta"), asBytes(last_key), seqKey(batch.seq)));
        return Status();
      },
      [out, decided = std::move(decided)] {
        if (decided) decided(*out);
      },
      [this, seq = batch.seq, out, done = std::move(done)](const Status& s) {
        if (s) last_executed_ = seq;
        if (s) {
          done(std::move(*out));
        } else {
          done(s.error());
        }
        track(-1);
      });
}

void KvStateMachine::applyEffects(uint64_t seq, ByteView effects, std::function<void(Status)> done) {
  CCAL_ASSERT(seq == last_queued_ + 1);
  last_queued_ = seq;
  Bytes copy(effects.begin(), effects.end());
  track(1);
  store_.submit(
      [this, seq, copy](vault::WriteTxn& txn) -> Status {
        CCAL_TRY(follows(txn, store_.db("kv_meta"), seq));
        const std::string s = text(copy);
        size_t start = 0;
        while (start < s.size()) {
          const size_t nl = s.find('\n', start);
          const size_t eq = s.find('=', start);
          if (nl == std::string::npos || eq == std::string::npos || eq > nl) {
            return makeError(Errc::malformed, "kv effects line is not '<key>=<id>'");
          }
          CCAL_TRY(txn.put(store_.db("kv_keys"), asBytes(s.substr(start, eq - start)),
                           asBytes(s.substr(eq + 1, nl - eq - 1))));
          start = nl + 1;
        }
        CCAL_TRY(txn.put(store_.db("kv_effects"), seqKey(seq), copy));
        CCAL_TRY(txn.put(store_.db("kv_meta"), asBytes(last_key), seqKey(seq)));
        return Status();
      },
      [this, seq, done = std::move(done)](const Status& s) {
        if (s) last_executed_ = seq;
        done(s);
        track(-1);
      });
}

Result<Bytes> KvStateMachine::effects(uint64_t seq) const {
  auto txn = store_.read();
  auto v = txn.get(store_.db("kv_effects"), seqKey(seq));
  if (!v) return makeError(Errc::not_found, "no effects of batch " + std::to_string(seq));
  return Bytes(v->begin(), v->end());
}

std::map<std::string, std::string> KvStateMachine::keys() const {
  std::map<std::string, std::string> out;
  auto txn = store_.read();
  auto c = txn.cursor(store_.db("kv_keys"));
  for (bool ok = c.first(); ok; ok = c.next()) out[text(c.key())] = text(c.value());
  return out;
}

}  // namespace ccal::sim
