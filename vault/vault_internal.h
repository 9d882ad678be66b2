#pragma once
// Internals shared by the vault's translation units: sub-database names,
// stored records and the index logic. Not part of the vault's API.

#include <set>
#include <string_view>
#include <vector>

#include "ledger/capnp_io.h"
#include "schemas/vault.capnp.h"
#include "vault/index_keys.h"
#include "vault/vault.h"

namespace ccal::vault {


// Sub-databases. Transactions and states are keyed by the sequence number
// the vault gives each recorded transaction (StateKey: seq | output index),
// so a recording appends its records, and its index entries end with that
// state key; the one random-keyed table is tx_seq (tx id -> seq), which
// serves lookups by transaction id and by StateRef (tx id + index).
// Only the indexes that a status change must move carry the status:
// "unconsumed states of a type, newest first" is one contiguous range of
// ix_type, and ix_token holds unconsumed, unlocked states only (what a
// fungible selection may take; a lock moves the entry out, a release back). The others are written
// once when a state is recorded and never rewritten; queries filter them by
// status (ix_consumed_key answers "is it consumed?" from the key alone).
// Where no order is asked of an index, the recording time comes before the
// state key, so new keys cluster at the end of their range.
inline constexpr std::string_view db_tx = "tx";                  // seq -> TransactionRecord
inline constexpr std::string_view db_tx_seq = "tx_seq";          // tx id -> seq (8 bytes big-endian)
inline constexpr std::string_view db_state = "state";            // state key -> StateRecord
inline constexpr std::string_view ix_type = "ix_type";           // s | type | recorded | state key
inline constexpr std::string_view ix_participant = "ix_participant";  // key hash | recorded | state key
inline constexpr std::string_view ix_linear = "ix_linear";       // linear id | recorded | state key
inline constexpr std::string_view ix_field = "ix_field";         // field id | value | recorded | state key
inline constexpr std::string_view ix_recorded = "ix_recorded";   // recorded | state key
inline constexpr std::string_view ix_consumed = "ix_consumed";   // consumed time | state key
inline constexpr std::string_view ix_consumed_key = "ix_consumed_key";  // state key (consumed states)
inline constexpr std::string_view ix_lock = "ix_lock";           // holder | state key
inline constexpr std::string_view ix_token = "ix_token";         // token | issuer | recorded | state key (unconsumed, unlocked)
inline constexpr std::string_view db_counts = "counts";          // s | type -> u64 count
// For the layers above (see flow_store.h and message_store.h).
inline constexpr std::string_view db_flow_checkpoint = "flow_checkpoint";
inline constexpr std::string_view db_flow_journal = "flow_journal";
inline constexpr std::string_view db_msg_outbox = "msg_outbox";
inline constexpr std::string_view db_msg_inbox = "msg_inbox";
inline constexpr std::string_view db_msg_dedup = "msg_dedup";

// The indexes whose keys begin with the status byte.
inline bool statusKeyed(std::string_view index) { return index == ix_type; }

inline uint8_t statusByte(StateStatus s) { return static_cast<uint8_t>(s); }

inline std::vector<StateStatus> statusesOf(StatusFilter f) {
  switch (f) {
    case StatusFilter::unconsumed: return {StateStatus::unconsumed};
    case StatusFilter::consumed: return {StateStatus::consumed};
    case StatusFilter::all: return {StateStatus::unconsumed, StateStatus::consumed};
  }
  return {};
}

inline bool statusPasses(StatusFilter f, StateStatus s) {
  return f == StatusFilter::all || (f == StatusFilter::unconsumed) == (s == StateStatus::unconsumed);
}

// A stored state record, without decoding the TransactionState it holds:
// what recording, consuming and locking need.
struct StateRecordFields {
  SecureHash txId;  // the producing transaction (with the key's index: the StateRef)
  StateStatus status = StateStatus::unconsumed;
  Relevance relevance = Relevance::participant;
  int64_t recordedMicros = 0;
  std::optional<int64_t> consumedMicros;
  std::optional<SecureHash> consumedBy;
  std::optional<LockId> lock;
  std::string stateType;
  Bytes tokenKey;     // the ix_token prefix (token | issuer), empty when not fungible
  Bytes state_bytes;  // canonical TransactionState
};

inline Bytes encodeStateRecord(const StateRecordFields& f) {
  return buildCanonical<schema::vault::StateRecord>([&](auto b) {
    b.setStatus(statusByte(f.status));
    b.setRelevance(static_cast<uint8_t>(f.relevance));
    b.setRecordedMicros(f.recordedMicros);
    if (f.consumedMicros) b.setConsumedMicros(*f.consumedMicros);
    if (f.consumedBy) b.setConsumedBy(asData(f.consumedBy->view()));
    if (f.lock) b.setLock(asData(f.lock->view()));
    b.setState(asData(f.state_bytes));
    b.setStateType(f.stateType);
    if (!f.tokenKey.empty()) b.setTokenKey(asData(f.tokenKey));
    b.setTxId(asData(f.txId.view()));
  });
}

inline Result<StateRecordFields> readStateRecord(ByteView value) {
  return decodeMessage<schema::vault::StateRecord>(
      value, "vault state record", Canonical::required,
      [&](auto r) -> Result<StateRecordFields> {
        StateRecordFields f;
        auto tx_id = SecureHash::fromBytes(asByteView(r.getTxId()));
        if (!tx_id) return tx_id.error();
        f.txId = *tx_id;
        f.status = r.getStatus() == 0 ? StateStatus::unconsumed : StateStatus::consumed;
        f.relevance = r.getRelevance() == 0 ? Relevance::participant : Relevance::observed;
        f.recordedMicros = r.getRecordedMicros();
        if (f.status == StateStatus::consumed) {
          f.consumedMicros = r.getConsumedMicros();
          auto by = SecureHash::fromBytes(asByteView(r.getConsumedBy()));
          if (!by) return by.error();
          f.consumedBy = *by;
        }
        if (r.hasLock() && r.getLock().size() > 0) {
          auto lock = SecureHash::fromBytes(asByteView(r.getLock()));
          if (!lock) return lock.error();
          f.lock = *lock;
        }
        f.stateType = r.getStateType();
        f.tokenKey.assign(r.getTokenKey().begin(), r.getTokenKey().end());
        f.state_bytes.assign(r.getState().begin(), r.getState().end());
        return f;
      });
}

using keys::StateKey;

inline std::string describeKey(StateKey key) {
  return "stored state " + std::to_string(key.seq) + "/" + std::to_string(key.index);
}

// A stored state, decoded, with its record's fields and its key.
struct Stored {
  VaultState vs;
  StateRecordFields fields;
  StateKey key;
};

// A stored state from its record's fields (decoding the state itself).
inline Result<Stored> storedOf(StateKey key, StateRecordFields fields) {
  Stored out;
  out.key = key;
  out.fields = std::move(fields);
  const StateRecordFields& f = out.fields;
  out.vs.ref = StateRef{f.txId, key.index};
  out.vs.status = f.status;
  out.vs.relevance = f.relevance;
  out.vs.recordedMicros = f.recordedMicros;
  out.vs.consumedMicros = f.consumedMicros;
  out.vs.consumedBy = f.consumedBy;
  out.vs.lock = f.lock;
  auto state = decodeTransactionState(f.state_bytes);
  if (!state) return state.error();
  out.vs.state = std::move(state).value();
  return out;
}

inline Result<Stored> decodeStateRecord(StateKey key, ByteView value) {
  auto fields = readStateRecord(value);
  if (!fields) {
    return makeError(fields.error().code, describeKey(key) + ": " + fields.error().message);
  }
  return storedOf(key, std::move(fields).value());
}

inline uint64_t readCount(std::optional<ByteView> v) {
  if (!v || v->size() != 8) return 0;
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = n << 8 | (*v)[i];
  return n;
}

inline Bytes countValue(uint64_t n) {
  Bytes b;
  appendU64(b, n);
  return b;
}

inline Bytes countKey(StateStatus s, std::string_view type) {
  Bytes k{statusByte(s)};
  keys::appendText(k, type);
  return k;
}

// The 8-byte prefix of a declared field's ix_field entries: the first bytes
// of SHA-256(type text | field text), in place of the two texts (30-odd
// bytes for a typical type and field name), so that field entries are about
// half as long and twice as many share a page; every field's range stays
// contiguous and ordered by value. Vault::open refuses a registry in which
// two declared fields share a prefix.
inline constexpr size_t field_id_bytes = 8;
void appendFieldPrefix(Bytes& out, std::string_view type, std::string_view field);
inline Bytes fieldPrefix(std::string_view type, std::string_view field) {
  Bytes k;
  appendFieldPrefix(k, type, field);
  return k;
}

inline Bytes typeKey(StateStatus s, std::string_view type, int64_t recorded, StateKey state) {
  Bytes k{statusByte(s)};
  keys::appendText(k, type);
  keys::appendInt(k, recorded);
  keys::appendStateKey(k, state);
  return k;
}

// Oldest first within a token and issuer: selection spends the oldest
// states, and new keys land at the end of their range.
inline Bytes tokenKey(const Bytes& prefix, int64_t recorded, StateKey state) {
  Bytes k = prefix;
  keys::appendInt(k, recorded);
  keys::appendStateKey(k, state);
  return k;
}

inline Bytes lockKey(const LockId& holder, StateKey state) {
  Bytes k;
  keys::appendHash(k, holder);
  keys::appendStateKey(k, state);
  return k;
}

inline std::optional<uint64_t> readSeq(std::optional<ByteView> v) {
  if (!v || v->size() != keys::seq_bytes) return std::nullopt;
  return keys::readBe64(*v);
}

inline Bytes tokenPrefix(const StateView& view) {
  Bytes k;
  if (view.fungible) {
    keys::appendText(k, view.fungible->token);
    keys::appendHash(k, view.fungible->issuer);
  }
  return k;
}

// The implementation's access to Vault internals, and the index logic.
struct VaultAccess {
  static const Db& db(const Vault& v, std::string_view name) { return v.store_->db(name); }

  static Result<StateView> viewOf(const Vault& v, const TransactionState& state) {
    const StateSchema* schema = v.registry_.schemaFor(state.stateType);
    if (schema == nullptr) return StateView{};
    return schema->view(state);
  }

  // Every index key of a state (stored under `state`) in its current status and lock.
  static std::vector<std::pair<std::string_view, Bytes>> indexKeys(const VaultState& vs,
                                                                   const StateView& view,
                                                                   StateKey state) {
    std::vector<std::pair<std::string_view, Bytes>> out;
    out.reserve(8 + view.fields.size());
    auto key = [&](std::string_view db, auto&& fill) {
      Bytes k;
      k.reserve(96);
      fill(k);
      keys::appendStateKey(k, state);
      out.emplace_back(db, std::move(k));
    };
    out.emplace_back(ix_type, typeKey(vs.status, vs.state.stateType, vs.recordedMicros, state));
    std::set<SecureHash> participants;
    for (const auto& p : vs.state.participants) {
      participants.insert(p.hash());
      if (!p.isSingle()) {
        for (const auto& leaf : p.leafKeys()) participants.insert(Key(leaf).hash());
      }
    }
    for (const auto& h : participants) {
      key(ix_participant, [&](Bytes& k) {
        keys::appendHash(k, h);
        keys::appendInt(k, vs.recordedMicros);
      });
    }
    if (view.linearId) {
      key(ix_linear, [&](Bytes& k) {
        keys::appendHash(k, *view.linearId);
        keys::appendInt(k, vs.recordedMicros);
      });
    }
    // (A plain loop variable: clang 14 cannot capture structured bindings.)
    for (const auto& field : view.fields) {
      key(ix_field, [&](Bytes& k) {
        appendFieldPrefix(k, vs.state.stateType, field.first);
        keys::appendField(k, field.second);
        keys::appendInt(k, vs.recordedMicros);
      });
    }
    key(ix_recorded, [&](Bytes& k) { keys::appendInt(k, vs.recordedMicros); });
    if (vs.status == StateStatus::consumed) {
      key(ix_consumed, [&](Bytes& k) { keys::appendInt(k, vs.consumedMicros.value_or(0)); });
      out.emplace_back(ix_consumed_key, keys::stateKey(state));
    }
    if (vs.lock) {
      key(ix_lock, [&](Bytes& k) { keys::appendHash(k, *vs.lock); });
    }
    if (view.fungible && vs.status == StateStatus::unconsumed && !vs.lock) {
      out.emplace_back(ix_token, tokenKey(tokenPrefix(view), vs.recordedMicros, state));
    }
    return out;
  }

  // Adds `delta` to the count of (status, type).
  static Status adjustCount(const Vault& v, WriteTxn& w, const Bytes& count_key, int64_t delta) {
    const Db& counts = db(v, db_counts);
    uint64_t n = readCount(w.get(counts, count_key));
    CCAL_ASSERT(delta >= 0 || n >= static_cast<uint64_t>(-delta));
    n = static_cast<uint64_t>(static_cast<int64_t>(n) + delta);
    if (n == 0) return w.del(counts, count_key);
    return w.put(counts, count_key, countValue(n));
  }

  // Rewrites a stored state's record with a new lock holder (or none),
  // moving its ix_lock entry, and its ix_token entry when a fungible state
  // becomes locked or free (ix_token lists only the states a selection may
  // take). No other index depends on the lock.
  static Status relock(const Vault& v, WriteTxn& w, StateKey state,
                       const StateRecordFields& before, const std::optional<LockId>& holder) {
    StateRecordFields after = before;
    after.lock = holder;
    if (before.lock) CCAL_TRY(w.del(db(v, ix_lock), lockKey(*before.lock, state)));
    if (holder) CCAL_TRY(w.put(db(v, ix_lock), lockKey(*holder, state), {}));
    if (!before.tokenKey.empty() && before.status == StateStatus::unconsumed &&
        before.lock.has_value() != holder.has_value()) {
      const Bytes token_key = tokenKey(before.tokenKey, before.recordedMicros, state);
      CCAL_TRY(holder ? w.del(db(v, ix_token), token_key) : w.put(db(v, ix_token), token_key, {}));
    }
    return w.put(db(v, db_state), keys::stateKey(state), encodeStateRecord(after));
  }

  // The sequence number the vault gave a recorded transaction.
  static std::optional<uint64_t> seqOf(const Vault& v, const ReadTxn& r, const SecureHash& tx_id) {
    auto seq = readSeq(r.get(db(v, db_tx_seq), tx_id.view()));
    return seq;
  }

  // Where the vault keeps a state, when it holds it (its transaction is
  // recorded; the state itself may not be, when it was not relevant).
  static std::optional<StateKey> keyOf(const Vault& v, const ReadTxn& r, const StateRef& ref) {
    auto seq = seqOf(v, r, ref.txId);
    if (!seq) return std::nullopt;
    return StateKey{*seq, ref.index};
  }

  static Result<std::optional<StateRecordFields>> loadFields(const Vault& v, const ReadTxn& r,
                                                             StateKey state) {
    auto value = r.get(db(v, db_state), keys::stateKey(state));
    if (!value) return std::optional<StateRecordFields>{};
    auto fields = readStateRecord(*value);
    if (!fields) {
      return makeError(fields.error().code, describeKey(state) + ": " + fields.error().message);
    }
    return std::optional<StateRecordFields>(std::move(fields).value());
  }

  static bool isConsumed(const Vault& v, const ReadTxn& r, StateKey state) {
    return r.get(db(v, ix_consumed_key), keys::stateKey(state)).has_value();
  }
  // The same for the state key that ends an index key, without decoding it.
  static bool isConsumedKey(const Vault& v, const ReadTxn& r, ByteView index_key) {
    CCAL_ASSERT(index_key.size() >= keys::state_key_bytes);
    return r.get(db(v, ix_consumed_key),
                 index_key.subspan(index_key.size() - keys::state_key_bytes))
        .has_value();
  }

  // True when the state meets the criteria (the query's status and
  // relevance filters are applied separately). Defined in vault_query.cpp.
  static bool matches(const Vault& v, const Criteria& criteria, const VaultState& vs);

  static Result<std::optional<Stored>> load(const Vault& v, const ReadTxn& r, StateKey state) {
    auto value = r.get(db(v, db_state), keys::stateKey(state));
    if (!value) return std::optional<Stored>{};
    auto stored = decodeStateRecord(state, *value);
    if (!stored) return stored.error();
    return std::optional<Stored>(std::move(stored).value());
  }

  static Result<std::optional<Stored>> load(const Vault& v, const ReadTxn& r, const StateRef& ref) {
    auto state = keyOf(v, r, ref);
    if (!state) return std::optional<Stored>{};
    return load(v, r, *state);
  }
};

}  // namespace ccal::vault
