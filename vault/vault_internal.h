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


// Sub-databases. Index keys start with the status byte where the index
// serves both unconsumed and consumed states, so "unconsumed states of a
// type" is one contiguous range.
inline constexpr std::string_view db_tx = "tx";                  // tx id -> TransactionRecord
inline constexpr std::string_view db_state = "state";            // ref -> StateRecord
inline constexpr std::string_view ix_type = "ix_type";           // s | type | recorded | ref
inline constexpr std::string_view ix_participant = "ix_participant";  // s | key hash | ref
inline constexpr std::string_view ix_linear = "ix_linear";       // s | linear id | ref
inline constexpr std::string_view ix_field = "ix_field";         // s | type | field | value | ref
inline constexpr std::string_view ix_recorded = "ix_recorded";   // s | recorded | ref
inline constexpr std::string_view ix_consumed = "ix_consumed";   // consumed time | ref
inline constexpr std::string_view ix_lock = "ix_lock";           // holder | ref
inline constexpr std::string_view ix_token = "ix_token";         // token | issuer | ref (unconsumed)
inline constexpr std::string_view db_counts = "counts";          // s | type -> u64 count
// For the layers above (see flow_store.h and message_store.h).
inline constexpr std::string_view db_flow_checkpoint = "flow_checkpoint";
inline constexpr std::string_view db_flow_journal = "flow_journal";
inline constexpr std::string_view db_msg_outbox = "msg_outbox";
inline constexpr std::string_view db_msg_inbox = "msg_inbox";
inline constexpr std::string_view db_msg_dedup = "msg_dedup";


inline uint8_t statusByte(StateStatus s) { return static_cast<uint8_t>(s); }

inline std::vector<StateStatus> statusesOf(StatusFilter f) {
  switch (f) {
    case StatusFilter::unconsumed: return {StateStatus::unconsumed};
    case StatusFilter::consumed: return {StateStatus::consumed};
    case StatusFilter::all: return {StateStatus::unconsumed, StateStatus::consumed};
  }
  return {};
}

inline Bytes encodeStateRecord(const VaultState& vs, ByteView state_bytes) {
  return buildCanonical<schema::vault::StateRecord>([&](auto b) {
    b.setStatus(statusByte(vs.status));
    b.setRelevance(static_cast<uint8_t>(vs.relevance));
    b.setRecordedMicros(vs.recordedMicros);
    if (vs.consumedMicros) b.setConsumedMicros(*vs.consumedMicros);
    if (vs.consumedBy) b.setConsumedBy(asData(vs.consumedBy->view()));
    if (vs.lock) b.setLock(asData(vs.lock->view()));
    b.setState(asData(state_bytes));
  });
}

// A stored state with the canonical bytes of its TransactionState.
struct Stored {
  VaultState vs;
  Bytes state_bytes;
};

inline Result<Stored> decodeStateRecord(const StateRef& ref, ByteView value) {
  return decodeMessage<schema::vault::StateRecord>(
      value, "vault state record " + ref.toString(), Canonical::required,
      [&](auto r) -> Result<Stored> {
        Stored out;
        out.vs.ref = ref;
        out.vs.status = r.getStatus() == 0 ? StateStatus::unconsumed : StateStatus::consumed;
        out.vs.relevance = r.getRelevance() == 0 ? Relevance::participant : Relevance::observed;
        out.vs.recordedMicros = r.getRecordedMicros();
        if (out.vs.status == StateStatus::consumed) {
          out.vs.consumedMicros = r.getConsumedMicros();
          auto by = SecureHash::fromBytes(asByteView(r.getConsumedBy()));
          if (!by) return by.error();
          out.vs.consumedBy = *by;
        }
        if (r.hasLock() && r.getLock().size() > 0) {
          auto lock = SecureHash::fromBytes(asByteView(r.getLock()));
          if (!lock) return lock.error();
          out.vs.lock = *lock;
        }
        out.state_bytes.assign(r.getState().begin(), r.getState().end());
        auto state = decodeTransactionState(out.state_bytes);
        if (!state) return state.error();
        out.vs.state = std::move(state).value();
        return out;
      });
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


// The implementation's access to Vault internals, and the index logic.
struct VaultAccess {
  static const Db& db(const Vault& v, std::string_view name) { return v.store_->db(name); }

  static Result<StateView> viewOf(const Vault& v, const TransactionState& state) {
    const StateSchema* schema = v.registry_.schemaFor(state.stateType);
    if (schema == nullptr) return StateView{};
    return schema->view(state);
  }

  // Every index key of a state in its current status and lock.
  static std::vector<std::pair<std::string_view, Bytes>> indexKeys(const VaultState& vs,
                                                                   const StateView& view) {
    std::vector<std::pair<std::string_view, Bytes>> out;
    const uint8_t s = statusByte(vs.status);
    auto key = [&](std::string_view db, auto&& fill) {
      Bytes k;
      fill(k);
      keys::appendRef(k, vs.ref);
      out.emplace_back(db, std::move(k));
    };
    key(ix_type, [&](Bytes& k) {
      k.push_back(s);
      keys::appendText(k, vs.state.stateType);
      keys::appendInt(k, vs.recordedMicros);
    });
    std::set<SecureHash> participants;
    for (const auto& p : vs.state.participants) {
      participants.insert(p.hash());
      if (!p.isSingle()) {
        for (const auto& leaf : p.leafKeys()) participants.insert(Key(leaf).hash());
      }
    }
    for (const auto& h : participants) {
      key(ix_participant, [&](Bytes& k) {
        k.push_back(s);
        keys::appendHash(k, h);
      });
    }
    if (view.linearId) {
      key(ix_linear, [&](Bytes& k) {
        k.push_back(s);
        keys::appendHash(k, *view.linearId);
      });
    }
    // (A plain loop variable: clang 14 cannot capture structured bindings.)
    for (const auto& field : view.fields) {
      key(ix_field, [&](Bytes& k) {
        k.push_back(s);
        keys::appendText(k, vs.state.stateType);
        keys::appendText(k, field.first);
        keys::appendField(k, field.second);
      });
    }
    key(ix_recorded, [&](Bytes& k) {
      k.push_back(s);
      keys::appendInt(k, vs.recordedMicros);
    });
    if (vs.status == StateStatus::consumed) {
      key(ix_consumed, [&](Bytes& k) { keys::appendInt(k, vs.consumedMicros.value_or(0)); });
    }
    if (vs.lock) {
      key(ix_lock, [&](Bytes& k) { keys::appendHash(k, *vs.lock); });
    }
    if (view.fungible && vs.status == StateStatus::unconsumed) {
      key(ix_token, [&](Bytes& k) {
        keys::appendText(k, view.fungible->token);
        keys::appendHash(k, view.fungible->issuer);
      });
    }
    return out;
  }

  static Status adjustCount(const Vault& v, WriteTxn& w, StateStatus s, const std::string& type,
                            int delta) {
    Bytes k{statusByte(s)};
    keys::appendText(k, type);
    const Db& counts = db(v, db_counts);
    uint64_t n = readCount(w.get(counts, k));
    CCAL_ASSERT(delta > 0 || n > 0);
    n = delta > 0 ? n + 1 : n - 1;
    if (n == 0) return w.del(counts, k);
    return w.put(counts, k, countValue(n));
  }

  // Writes (or removes) a state's record, index entries and count.
  static Status putState(const Vault& v, WriteTxn& w, const VaultState& vs, const StateView& view,
                         ByteView state_bytes) {
    CCAL_TRY(w.put(db(v, db_state), keys::refKey(vs.ref), encodeStateRecord(vs, state_bytes)));
    for (const auto& [name, key] : indexKeys(vs, view)) CCAL_TRY(w.put(db(v, name), key, {}));
    return adjustCount(v, w, vs.status, vs.state.stateType, +1);
  }

  static Status removeIndexes(const Vault& v, WriteTxn& w, const VaultState& vs,
                              const StateView& view) {
    for (const auto& [name, key] : indexKeys(vs, view)) CCAL_TRY(w.del(db(v, name), key));
    return adjustCount(v, w, vs.status, vs.state.stateType, -1);
  }

  // Moves a stored state to a new status/lock: old index entries out, new in.
  static Status rewrite(const Vault& v, WriteTxn& w, const Stored& before, const VaultState& after) {
    auto view = viewOf(v, before.vs.state);
    // A stored state's view decoded when it was recorded; the code is the same.
    CCAL_ASSERT_MSG(view.ok(), "a recorded state no longer decodes for its schema");
    CCAL_TRY(removeIndexes(v, w, before.vs, *view));
    return putState(v, w, after, *view, before.state_bytes);
  }

  // True when the state meets the criteria (the query's status and
  // relevance filters are applied separately). Defined in vault_query.cpp.
  static bool matches(const Vault& v, const Criteria& criteria, const VaultState& vs);

  static Result<std::optional<Stored>> load(const Vault& v, const ReadTxn& r, const StateRef& ref) {
    auto value = r.get(db(v, db_state), keys::refKey(ref));
    if (!value) return std::optional<Stored>{};
    auto stored = decodeStateRecord(ref, *value);
    if (!stored) return stored.error();
    return std::optional<Stored>(std::move(stored).value());
  }
};

}  // namespace ccal::vault
