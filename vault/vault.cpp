#include "vault/vault.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <map>

#include "vault/vault_internal.h"

namespace ccal::vault {

// --- criteria -----------------------------------------------------------------

Criteria Criteria::stateType(std::string type) {
  Criteria c(Kind::state_type);
  c.text_ = std::move(type);
  return c;
}

Criteria Criteria::participant(const Key& key) {
  Criteria c(Kind::participant);
  c.hash_ = key.hash();
  return c;
}

Criteria Criteria::linearId(const SecureHash& id) {
  Criteria c(Kind::linear_id);
  c.hash_ = id;
  return c;
}

Criteria Criteria::recordedBetween(int64_t from_micros, int64_t until_micros) {
  Criteria c(Kind::recorded);
  c.from_ = from_micros;
  c.until_ = until_micros;
  return c;
}

Criteria Criteria::consumedBetween(int64_t from_micros, int64_t until_micros) {
  Criteria c(Kind::consumed);
  c.from_ = from_micros;
  c.until_ = until_micros;
  return c;
}

Criteria Criteria::field(std::string state_type, std::string name, FieldOp op,
                         std::vector<FieldValue> values) {
  Criteria c(Kind::field);
  c.text_ = std::move(state_type);
  c.field_ = std::move(name);
  c.op_ = op;
  c.values_ = std::move(values);
  return c;
}

Criteria operator&&(Criteria a, Criteria b) {
  Criteria c(Criteria::Kind::and_);
  for (auto* x : {&a, &b}) {
    if (x->kind_ == Criteria::Kind::and_) {
      for (auto& child : x->children_) c.children_.push_back(std::move(child));
    } else {
      c.children_.push_back(std::move(*x));
    }
  }
  return c;
}

Criteria operator||(Criteria a, Criteria b) {
  Criteria c(Criteria::Kind::or_);
  for (auto* x : {&a, &b}) {
    if (x->kind_ == Criteria::Kind::or_) {
      for (auto& child : x->children_) c.children_.push_back(std::move(child));
    } else {
      c.children_.push_back(std::move(*x));
    }
  }
  return c;
}

// --- index keys ---------------------------------------------------------------

void appendFieldPrefix(Bytes& out, std::string_view type, std::string_view field) {
  Bytes text;
  text.reserve(type.size() + field.size() + 4);
  keys::appendText(text, type);
  keys::appendText(text, field);
  // Each thread keeps the prefixes it computed (a SHA-256 per index entry
  // would cost more than the rest of the key); the set of declared fields is
  // small, and the cache is cleared should it ever reach its bound.
  constexpr size_t field_prefix_cache_entries_max = 1024;
  thread_local std::map<Bytes, std::array<uint8_t, field_id_bytes>, std::less<>> cache;
  auto it = cache.find(text);
  if (it == cache.end()) {
    if (cache.size() >= field_prefix_cache_entries_max) cache.clear();
    std::array<uint8_t, field_id_bytes> id{};
    const SecureHash h = SecureHash::of(text);
    std::copy_n(h.view().begin(), field_id_bytes, id.begin());
    it = cache.emplace(std::move(text), id).first;
  }
  out.insert(out.end(), it->second.begin(), it->second.end());
}

// --- open ---------------------------------------------------------------------

std::vector<std::string> vaultDatabaseNames() {
  std::vector<std::string> names;
  for (auto n : {db_tx, db_tx_seq, db_state, ix_type, ix_participant, ix_linear, ix_field, ix_recorded,
                 ix_consumed, ix_consumed_key, ix_lock, ix_token, db_counts, db_flow_checkpoint, db_flow_journal,
                 db_msg_outbox, db_msg_inbox, db_msg_dedup}) {
    names.emplace_back(n);
  }
  return names;
}

Vault::Vault(const VaultConfig& config, const ContractRegistry& registry,
             std::vector<PublicKey> keys)
    : config_(config), registry_(registry), our_keys_(keys.begin(), keys.end()) {}

Vault::~Vault() = default;

Result<std::unique_ptr<Vault>> Vault::open(const VaultConfig& config,
                                           const ContractRegistry& registry,
                                           std::vector<PublicKey> our_keys) {
  {
    // Two declared fields sharing an ix_field prefix would share a range.
    std::map<Bytes, std::string> declared;
    for (const auto& name : registry.names()) {
      for (const auto& schema : registry.find(name)->stateSchemas()) {
        for (const auto& decl : schema->fields()) {
          const std::string what = std::string(schema->stateType()) + "." + decl.name;
          auto [it, fresh] = declared.emplace(fieldPrefix(schema->stateType(), decl.name), what);
          if (!fresh && it->second != what) {
            return makeError(Errc::schema_mismatch,
                             "vault at " + config.store.path + ": declared fields " + it->second +
                                 " and " + what + " share an index prefix; rename one");
          }
        }
      }
    }
  }
  std::unique_ptr<Vault> vault(new Vault(config, registry, std::move(our_keys)));
  auto names = vaultDatabaseNames();
  auto store = Store::open(config.store, names, vault_schema_name, vault_schema_version);
  if (!store) return store.error();
  vault->store_ = std::move(store).value();
  {
    // Sequence numbers continue after the last recorded transaction.
    ReadTxn r = vault->store_->read();
    Cursor c = r.cursor(VaultAccess::db(*vault, db_tx));
    if (c.last()) {
      if (c.key().size() != keys::seq_bytes) {
        return makeError(Errc::storage_error, "vault at " + config.store.path +
                                                  ": a transaction key of the wrong length");
      }
      vault->next_seq_ = keys::readBe64(c.key()) + 1;
    }
  }
  return vault;
}

int64_t Vault::now() const {
  if (config_.now_micros) return config_.now_micros();
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// --- recording ----------------------------------------------------------------

Result<VerifiedTransaction> VerifiedTransaction::verify(SignedTransaction stx) {
  Status verified = stx.verifyRequiredSignatures();
  if (!verified.ok()) return verified.error();
  return VerifiedTransaction(std::make_shared<const SignedTransaction>(std::move(stx)));
}

void Vault::recordAsync(const SignedTransaction& stx, RecordMode mode, DoneFn done) {
  // Refused before anything is written: a transaction whose signatures do
  // not verify or whose required signers are not all there.
  auto verified = VerifiedTransaction::verify(stx);
  if (!verified) {
    done(makeError(verified.error().code, "not recorded: " + verified.error().message));
    return;
  }
  recordAsync(*verified, mode, std::move(done));
}

namespace {

// A slice of a plan's arena.
struct Slice {
  uint32_t offset = 0, size = 0;
};

// One index entry of a planned output: a key-only put, applied by the writer
// in key order with the batch's other index entries (WriteTxn::putSorted).
struct PlannedEntry {
  const Db* db;
  Slice key;  // ends with a placeholder state key: the writer fills in the sequence number
};

// One output to record, prepared on the caller's thread.
struct OutputPlan {
  uint32_t index = 0;
  Slice record;
  Slice count_key;
  uint32_t entries_begin = 0, entries_end = 0;  // its PlannedEntry range
};

// An input held unconsumed when the caller looked (in a read transaction
// before submitting): what consuming it writes, prepared on the caller's
// thread. The writer uses it when the stored record is still byte for byte
// the one the caller read, and otherwise consumes the input the slow way.
struct PreparedInput {
  StateRef ref;
  StateKey key;
  Slice stored;           // the record as the caller read it
  Slice after;            // the record consumed by this transaction
  Slice type_unconsumed;  // ix_type key to delete
  Slice type_consumed;    // ix_type key to put
  Slice token;            // ix_token key to delete (size 0: not fungible)
  Slice lock;             // ix_lock key to delete (size 0: not locked)
  Slice consumed;         // ix_consumed key to put
  Slice count_unconsumed, count_consumed;
};

// An input this vault holds, as the writer found it on its last run.
struct ConsumedInput {
  StateRef ref;
  StateKey key;
  StateRecordFields fields;  // consumed by this transaction (unless prepared)
  const PreparedInput* prepared = nullptr;  // set when consumed as the caller prepared it
};

// A transaction to record, prepared on the caller's thread, and what its
// last run on the writer consumed (for trackers).
struct RecordPlan {
  explicit RecordPlan(VerifiedTransaction tx) : vtx(std::move(tx)) {}
  VerifiedTransaction vtx;
  int64_t at = 0;
  std::vector<StateRef> inputs;  // distinct
  std::vector<OutputPlan> outputs;
  std::vector<PlannedEntry> entries;
  std::vector<PreparedInput> prepared;  // inputs the caller found unconsumed, in `inputs` order
  // Every record and key of the plan in one buffer, so that the writer
  // (which ends up freeing the plan) frees a few blocks, not dozens.
  Bytes arena;
  Slice tx_record;
  std::vector<ConsumedInput> consumed;  // set anew on every run

  Slice add(ByteView bytes) {
    Slice s{static_cast<uint32_t>(arena.size()), static_cast<uint32_t>(bytes.size())};
    arena.insert(arena.end(), bytes.begin(), bytes.end());
    return s;
  }
  ByteView view(Slice s) const { return ByteView(arena.data() + s.offset, s.size); }
};

}  // namespace

DoneFn Vault::tracked(DoneFn done) {
  {
    std::lock_guard lock(pending_->mutex);
    ++pending_->in_flight;
  }
  return [pending = pending_, done = std::move(done)](const Status& status) {
    done(status);
    std::lock_guard lock(pending->mutex);
    if (--pending->in_flight == 0) pending->idle.notify_all();
  };
}

void Vault::waitForWrites() const {
  std::unique_lock lock(pending_->mutex);
  pending_->idle.wait(lock, [&] { return pending_->in_flight == 0; });
}

void Vault::recordAsync(const VerifiedTransaction& vtx, RecordMode mode, DoneFn done) {
  done = tracked(std::move(done));
  const SignedTransaction& stx = vtx.stx();
  const SecureHash& id = stx.id();
  // VerifiedTransaction shares its immutable transaction: no copy.
  auto plan = std::make_shared<RecordPlan>(vtx);
  plan->at = now();
  for (const auto& ref : stx.tx().inputs()) {
    if (std::find(plan->inputs.begin(), plan->inputs.end(), ref) != plan->inputs.end()) continue;
    plan->inputs.push_back(ref);
  }
  // Decode every output's view (schema fields) and build its record and
  // index keys here, so a state whose data does not decode is refused up
  // front, and the one writer thread only writes.
  const auto& outputs = stx.tx().outputs();
  const auto& output_bytes = stx.tx().group(ComponentGroup::outputs);
  plan->outputs.reserve(outputs.size());
  plan->entries.reserve(outputs.size() * 12);
  plan->arena.reserve(2048 + outputs.size() * 1024);
  for (uint32_t i = 0; i < outputs.size(); ++i) {
    auto view = VaultAccess::viewOf(*this, outputs[i]);
    if (!view) {
      done(makeError(view.error().code, "not recorded: output " + std::to_string(i) + " of " +
                                            id.hex() + ": " + view.error().message));
      return;
    }
    bool ours = false;
    for (const auto& p : outputs[i].participants) {
      for (const auto& leaf : p.leafKeys()) ours = ours || our_keys_.contains(leaf);
    }
    if (!ours && mode == RecordMode::only_relevant) continue;
    VaultState vs;
    vs.ref = StateRef{id, i};
    vs.relevance = ours ? Relevance::participant : Relevance::observed;
    vs.recordedMicros = plan->at;
    vs.state = outputs[i];
    OutputPlan out;
    out.index = i;
    StateRecordFields fields;
    fields.txId = id;
    fields.relevance = vs.relevance;
    fields.recordedMicros = vs.recordedMicros;
    fields.stateType = outputs[i].stateType;
    fields.tokenKey = tokenPrefix(*view);
    fields.state_bytes.assign(output_bytes[i].begin(), output_bytes[i].end());
    out.record = plan->add(encodeStateRecord(fields));
    out.entries_begin = static_cast<uint32_t>(plan->entries.size());
    for (auto& entry : VaultAccess::indexKeys(vs, *view, StateKey{0, i})) {
      plan->entries.push_back({&VaultAccess::db(*this, entry.first), plan->add(entry.second)});
    }
    out.entries_end = static_cast<uint32_t>(plan->entries.size());
    out.count_key = plan->add(countKey(StateStatus::unconsumed, outputs[i].stateType));
    plan->outputs.push_back(std::move(out));
  }
  {
    Bytes encoded = stx.encode();
    plan->tx_record = plan->add(buildCanonical<schema::vault::TransactionRecord>([&](auto b) {
      b.setRecordedMicros(plan->at);
      b.setSignedTransaction(asData(encoded));
      b.setTxId(asData(id.view()));
    }));
  }

  {
    // What consuming the inputs writes, prepared against what is stored now.
    ReadTxn r = store_->read();
    const Db& state_db = VaultAccess::db(*this, db_state);
    std::optional<uint64_t> input_seq;
    const SecureHash* input_tx = nullptr;
    for (const StateRef& ref : plan->inputs) {
      if (input_tx == nullptr || *input_tx != ref.txId) {
        input_tx = &ref.txId;
        input_seq = VaultAccess::seqOf(*this, r, ref.txId);
      }
      if (!input_seq) continue;
      const StateKey key{*input_seq, ref.index};
      auto value = r.get(state_db, keys::stateKey(key));
      if (!value) continue;
      auto fields = readStateRecord(*value);
      if (!fields || fields->status != StateStatus::unconsumed) continue;  // the writer says why
      PreparedInput in;
      in.ref = ref;
      in.key = key;
      in.stored = plan->add(*value);
      in.type_unconsumed =
          plan->add(typeKey(StateStatus::unconsumed, fields->stateType, fields->recordedMicros, key));
      in.type_consumed =
          plan->add(typeKey(StateStatus::consumed, fields->stateType, fields->recordedMicros, key));
      // Deleted even when the state is locked: ix_token lists free states
      // only, but a vault written before that rule may still list a locked
      // one, and deleting an absent key costs only a read.
      if (!fields->tokenKey.empty()) {
        in.token = plan->add(tokenKey(fields->tokenKey, fields->recordedMicros, key));
      }
      if (fields->lock) in.lock = plan->add(lockKey(*fields->lock, key));
      Bytes consumed_key;
      keys::appendInt(consumed_key, plan->at);
      keys::appendStateKey(consumed_key, key);
      in.consumed = plan->add(consumed_key);
      in.count_unconsumed = plan->add(countKey(StateStatus::unconsumed, fields->stateType));
      in.count_consumed = plan->add(countKey(StateStatus::consumed, fields->stateType));
      fields->status = StateStatus::consumed;
      fields->consumedBy = id;
      fields->consumedMicros = plan->at;
      fields->lock.reset();
      in.after = plan->add(encodeStateRecord(*fields));
      plan->prepared.push_back(in);
    }
  }

  WriteFn fn = [this, plan](WriteTxn& w) -> Status {
    plan->consumed.clear();
    const SecureHash& tx_id = plan->vtx.id();
    const Db& tx_db = VaultAccess::db(*this, db_tx);
    const Db& tx_seq_db = VaultAccess::db(*this, db_tx_seq);
    const Db& state_db = VaultAccess::db(*this, db_state);
    if (w.get(tx_seq_db, tx_id.view())) return {};  // recorded before

    // Everything that can refuse the transaction is checked before the
    // first write, so a refusal leaves the batch's transaction clean.
    // Inputs are found through their transaction's sequence number (one
    // look-up per distinct input transaction).
    // Inputs whose stored record is still the one the caller prepared
    // against need no decoding here (a transaction's sequence number never
    // changes once given, so the caller's key stands).
    size_t next_prepared = 0;
    std::optional<uint64_t> input_seq;
    const SecureHash* input_tx = nullptr;
    for (const StateRef& ref : plan->inputs) {
      if (next_prepared < plan->prepared.size() && plan->prepared[next_prepared].ref == ref) {
        const PreparedInput& in = plan->prepared[next_prepared++];
        auto value = w.get(state_db, keys::stateKey(in.key));
        const ByteView stored = plan->view(in.stored);
        if (value && std::equal(value->begin(), value->end(), stored.begin(), stored.end())) {
          plan->consumed.push_back(ConsumedInput{ref, in.key, {}, &in});
          continue;
        }
      }
      if (input_tx == nullptr || *input_tx != ref.txId) {
        input_tx = &ref.txId;
        input_seq = VaultAccess::seqOf(*this, w, ref.txId);
      }
      if (!input_seq) continue;  // not a transaction this vault recorded
      const StateKey key{*input_seq, ref.index};
      auto value = w.get(state_db, keys::stateKey(key));
      if (!value) continue;  // not a state this vault holds
      auto fields = readStateRecord(*value);
      if (!fields) {
        return makeError(fields.error().code, ref.toString() + ": " + fields.error().message);
      }
      if (fields->status == StateStatus::consumed) {
        return makeError(Errc::conflict, "transaction " + tx_id.hex() + " spends state " +
                                             ref.toString() +
                                             ", which this vault saw consumed by transaction " +
                                             fields->consumedBy->hex());
      }
      plan->consumed.push_back(ConsumedInput{ref, key, std::move(fields).value()});
    }

    // The writer's next sequence number. A run that is later rolled back
    // leaves a gap, which is harmless: numbers only need to grow.
    const uint64_t seq = next_seq_++;

    // Count changes per (status, type), applied once each.
    std::vector<std::pair<Bytes, int64_t>> counts;
    auto count = [&](Bytes key, int64_t delta) {
      for (auto& entry : counts) {
        if (entry.first == key) {
          entry.second += delta;
          return;
        }
      }
      counts.emplace_back(std::move(key), delta);
    };
    const Db& type_db = VaultAccess::db(*this, ix_type);
    for (auto& input : plan->consumed) {
      if (const PreparedInput* in = input.prepared) {
        CCAL_TRY(w.delSorted(type_db, plan->view(in->type_unconsumed)));
        CCAL_TRY(w.putSorted(type_db, plan->view(in->type_consumed), {}));
        if (in->token.size > 0) CCAL_TRY(w.delSorted(VaultAccess::db(*this, ix_token), plan->view(in->token)));
        if (in->lock.size > 0) CCAL_TRY(w.delSorted(VaultAccess::db(*this, ix_lock), plan->view(in->lock)));
        const Bytes state_key = keys::stateKey(in->key);
        CCAL_TRY(w.putSorted(VaultAccess::db(*this, ix_consumed), plan->view(in->consumed), {}));
        CCAL_TRY(w.putSorted(VaultAccess::db(*this, ix_consumed_key), state_key, {}));
        CCAL_TRY(w.put(state_db, state_key, plan->view(in->after)));
        const ByteView unconsumed = plan->view(in->count_unconsumed), consumed = plan->view(in->count_consumed);
        count(Bytes(unconsumed.begin(), unconsumed.end()), -1);
        count(Bytes(consumed.begin(), consumed.end()), +1);
        continue;
      }
      StateRecordFields& fields = input.fields;
      const Bytes state_key = keys::stateKey(input.key);
      CCAL_TRY(w.delSorted(type_db, typeKey(StateStatus::unconsumed, fields.stateType,
                                            fields.recordedMicros, input.key)));
      CCAL_TRY(w.putSorted(
          type_db, typeKey(StateStatus::consumed, fields.stateType, fields.recordedMicros, input.key),
          {}));
      if (!fields.tokenKey.empty()) {  // even when locked: see the prepared inputs above
        CCAL_TRY(w.delSorted(VaultAccess::db(*this, ix_token),
                             tokenKey(fields.tokenKey, fields.recordedMicros, input.key)));
      }
      if (fields.lock) {
        CCAL_TRY(w.delSorted(VaultAccess::db(*this, ix_lock), lockKey(*fields.lock, input.key)));
      }
      Bytes consumed_key;
      keys::appendInt(consumed_key, plan->at);
      keys::appendStateKey(consumed_key, input.key);
      CCAL_TRY(w.putSorted(VaultAccess::db(*this, ix_consumed), consumed_key, {}));
      CCAL_TRY(w.putSorted(VaultAccess::db(*this, ix_consumed_key), state_key, {}));
      fields.status = StateStatus::consumed;
      fields.consumedBy = tx_id;
      fields.consumedMicros = plan->at;
      fields.lock.reset();
      CCAL_TRY(w.put(state_db, state_key, encodeStateRecord(fields)));
      count(countKey(StateStatus::unconsumed, fields.stateType), -1);
      count(countKey(StateStatus::consumed, fields.stateType), +1);
    }
    for (auto& out : plan->outputs) {
      const StateKey key{seq, out.index};
      CCAL_TRY(w.append(state_db, keys::stateKey(key), plan->view(out.record)));
      for (uint32_t e = out.entries_begin; e < out.entries_end; ++e) {
        const PlannedEntry& entry = plan->entries[e];
        keys::setStateKeyAtEnd(plan->arena.data() + entry.key.offset, entry.key.size, key);
        const ByteView k = plan->view(entry.key);
        CCAL_TRY(w.putSorted(*entry.db, k, {}));
      }
      const ByteView count_key = plan->view(out.count_key);
      count(Bytes(count_key.begin(), count_key.end()), +1);
    }
    for (const auto& entry : counts) {
      if (entry.second != 0) CCAL_TRY(VaultAccess::adjustCount(*this, w, entry.first, entry.second));
    }
    const Bytes seq_key = keys::seqKey(seq);
    CCAL_TRY(w.append(tx_db, seq_key, plan->view(plan->tx_record)));
    return w.put(tx_seq_db, tx_id.view(), seq_key);
  };
  // Sorted: the request reads only tx_seq, state and counts, and its index
  // entries (every ix_* change) are applied in key order with the batch's.
  store_->submit(std::move(fn), [this, plan, done = std::move(done)](const Status& status) {
    if (status.ok() && tracking() && (!plan->outputs.empty() || !plan->consumed.empty())) {
      // Trackers see full states: decoded here, only when someone tracks.
      VaultUpdate update;
      update.txId = plan->vtx.id();
      const auto& states = plan->vtx.stx().tx().outputs();
      for (const auto& out : plan->outputs) {
        VaultState vs;
        vs.ref = StateRef{update.txId, out.index};
        vs.state = states[out.index];
        bool ours = false;
        for (const auto& p : vs.state.participants) {
          for (const auto& leaf : p.leafKeys()) ours = ours || our_keys_.contains(leaf);
        }
        vs.relevance = ours ? Relevance::participant : Relevance::observed;
        vs.recordedMicros = plan->at;
        update.produced.push_back(std::move(vs));
      }
      for (const auto& input : plan->consumed) {
        StateRecordFields prepared_fields;
        if (input.prepared) {
          auto after = readStateRecord(plan->view(input.prepared->after));
          CCAL_ASSERT_MSG(after.ok(), "a prepared state record no longer decodes");
          prepared_fields = std::move(after).value();
        }
        const StateRecordFields& fields = input.prepared ? prepared_fields : input.fields;
        auto state = decodeTransactionState(fields.state_bytes);
        CCAL_ASSERT_MSG(state.ok(), "a recorded state no longer decodes");
        VaultState vs;
        vs.ref = input.ref;
        vs.state = std::move(state).value();
        vs.status = fields.status;
        vs.relevance = fields.relevance;
        vs.recordedMicros = fields.recordedMicros;
        vs.consumedBy = fields.consumedBy;
        vs.consumedMicros = fields.consumedMicros;
        update.consumed.push_back(std::move(vs));
      }
      publish(update);
    }
    done(status);
  }, WriteKind::sorted);
}

Status Vault::record(const SignedTransaction& stx, RecordMode mode) {
  std::promise<Status> promise;
  auto future = promise.get_future();
  recordAsync(stx, mode, [&promise](const Status& s) { promise.set_value(s); });
  return future.get();
}

Status Vault::record(const VerifiedTransaction& tx, RecordMode mode) {
  std::promise<Status> promise;
  auto future = promise.get_future();
  recordAsync(tx, mode, [&promise](const Status& s) { promise.set_value(s); });
  return future.get();
}

bool Vault::tracking() const {
  std::lock_guard<std::mutex> guard(trackers_mutex_);
  return !trackers_.empty();
}

namespace {

// Decodes a transaction record, checking that it is the one `id` names.
template <class Fn>
Status readTransactionRecord(const SecureHash& id, ByteView value, Fn&& fn) {
  return decodeMessage<schema::vault::TransactionRecord>(
      value, "vault transaction record " + id.hex(), Canonical::required, [&](auto rec) -> Status {
        if (asByteView(rec.getTxId()).size() != SecureHash::size_bytes ||
            !std::equal(id.view().begin(), id.view().end(), asByteView(rec.getTxId()).begin())) {
          return makeError(Errc::storage_error,
                           "vault transaction record " + id.hex() + " holds another transaction");
        }
        return fn(asByteView(rec.getSignedTransaction()));
      });
}

}  // namespace

Result<std::optional<SignedTransaction>> Vault::transaction(const SecureHash& id) const {
  ReadTxn r = store_->read();
  auto seq = VaultAccess::seqOf(*this, r, id);
  if (!seq) return std::optional<SignedTransaction>{};
  auto value = r.get(VaultAccess::db(*this, db_tx), keys::seqKey(*seq));
  if (!value) {
    return makeError(Errc::storage_error, "vault transaction " + id.hex() + " has sequence number " +
                                              std::to_string(*seq) + " but no record");
  }
  std::optional<SignedTransaction> out;
  CCAL_TRY(readTransactionRecord(id, *value, [&](ByteView bytes) -> Status {
    auto stx = SignedTransaction::decode(bytes);
    if (!stx) return stx.error();
    out = std::move(stx).value();
    return {};
  }));
  return out;
}

bool Vault::hasTransaction(const SecureHash& id) const {
  ReadTxn r = store_->read();
  return VaultAccess::seqOf(*this, r, id).has_value();
}

Result<std::optional<VaultState>> Vault::state(const StateRef& ref) const {
  ReadTxn r = store_->read();
  auto stored = VaultAccess::load(*this, r, ref);
  if (!stored) return stored.error();
  if (!stored->has_value()) return std::optional<VaultState>{};
  return std::optional<VaultState>((*stored)->vs);
}

Status Vault::forEachTransaction(
    const std::function<bool(const SecureHash&, ByteView)>& fn) const {
  ReadTxn r = store_->read();
  const Db& tx_db = VaultAccess::db(*this, db_tx);
  Cursor c = r.cursor(VaultAccess::db(*this, db_tx_seq));
  bool stop = false;
  for (bool ok = c.first(); ok && !stop; ok = c.next()) {
    auto id = SecureHash::fromBytes(c.key());
    if (!id) return id.error();
    auto seq = readSeq(c.value());
    auto value = seq ? r.get(tx_db, keys::seqKey(*seq)) : std::nullopt;
    if (!value) {
      return makeError(Errc::storage_error, "vault transaction " + id->hex() + " has no record");
    }
    CCAL_TRY(readTransactionRecord(*id, *value, [&](ByteView bytes) -> Status {
      stop = !fn(*id, bytes);
      return {};
    }));
  }
  return {};
}

Status Vault::checkConsistency() const {
  auto broken = [](const std::string& why) {
    return makeError(Errc::storage_error, "vault inconsistent: " + why);
  };
  ReadTxn r = store_->read();
  const Db& tx_db = VaultAccess::db(*this, db_tx);
  // Transactions: tx_seq and tx agree one to one.
  {
    Cursor c = r.cursor(VaultAccess::db(*this, db_tx_seq));
    for (bool ok = c.first(); ok; ok = c.next()) {
      auto id = SecureHash::fromBytes(c.key());
      if (!id) return broken("a transaction id key of the wrong length");
      auto seq = readSeq(c.value());
      if (!seq) return broken("transaction " + id->hex() + ": a sequence number of the wrong length");
      auto value = r.get(tx_db, keys::seqKey(*seq));
      if (!value) return broken("transaction " + id->hex() + " has no record");
      Status same = readTransactionRecord(*id, *value, [](ByteView) -> Status { return {}; });
      if (!same.ok()) return broken(same.error().message);
    }
    if (r.entries(tx_db) != r.entries(VaultAccess::db(*this, db_tx_seq))) {
      return broken("the transaction table has " + std::to_string(r.entries(tx_db)) +
                    " records, the id map " +
                    std::to_string(r.entries(VaultAccess::db(*this, db_tx_seq))));
    }
  }
  std::map<std::string_view, uint64_t> expected_entries;
  std::map<Bytes, uint64_t> expected_counts;
  Cursor c = r.cursor(VaultAccess::db(*this, db_state));
  for (bool ok = c.first(); ok; ok = c.next()) {
    if (c.key().size() != keys::state_key_bytes) return broken("a state key of the wrong length");
    const StateKey key = keys::stateKeyFromKeyEnd(c.key());
    auto stored = decodeStateRecord(key, c.value());
    if (!stored) return broken(stored.error().message);
    const VaultState& vs = stored->vs;
    const StateRef& ref = vs.ref;
    auto view = VaultAccess::viewOf(*this, vs.state);
    if (!view) return broken("state " + ref.toString() + ": " + view.error().message);
    if (stored->fields.stateType != vs.state.stateType ||
        stored->fields.tokenKey != tokenPrefix(*view)) {
      return broken("state " + ref.toString() + ": its record's type or token key is not its state's");
    }
    for (const auto& [db, index_key] : VaultAccess::indexKeys(vs, *view, key)) {
      if (!r.get(VaultAccess::db(*this, db), index_key)) {
        return broken("state " + ref.toString() + " is missing from index " + std::string(db));
      }
      ++expected_entries[db];
    }
    Bytes count_key{statusByte(vs.status)};
    keys::appendText(count_key, vs.state.stateType);
    ++expected_counts[count_key];
    if (vs.consumedBy && !VaultAccess::seqOf(*this, r, *vs.consumedBy)) {
      return broken("state " + ref.toString() + " is consumed by transaction " +
                    vs.consumedBy->hex() + ", which is not recorded");
    }
    auto seq = VaultAccess::seqOf(*this, r, ref.txId);
    if (!seq) return broken("state " + ref.toString() + " has no recorded transaction");
    if (*seq != key.seq) {
      return broken("state " + ref.toString() + " is stored under sequence number " +
                    std::to_string(key.seq) + ", its transaction has " + std::to_string(*seq));
    }
  }
  for (auto db : {ix_type, ix_participant, ix_linear, ix_field, ix_recorded, ix_consumed,
                  ix_consumed_key, ix_lock, ix_token}) {
    uint64_t have = r.entries(VaultAccess::db(*this, db));
    if (have != expected_entries[db]) {
      return broken("index " + std::string(db) + " has " + std::to_string(have) +
                    " entries, the states call for " + std::to_string(expected_entries[db]));
    }
  }
  if (r.entries(VaultAccess::db(*this, db_counts)) != expected_counts.size()) {
    return broken("the counts table has stale entries");
  }
  for (const auto& [key, n] : expected_counts) {
    uint64_t have = readCount(r.get(VaultAccess::db(*this, db_counts), key));
    if (have != n) {
      return broken("a type count is " + std::to_string(have) + ", the states call for " +
                    std::to_string(n));
    }
  }
  return {};
}

void Vault::publish(const VaultUpdate& update) {
  std::vector<std::pair<Criteria, std::function<void(const VaultUpdate&)>>> trackers;
  {
    std::lock_guard<std::mutex> guard(trackers_mutex_);
    for (const auto& [id, tracker] : trackers_) {
      trackers.emplace_back(tracker.query.criteria, tracker.on_update);
    }
  }
  for (const auto& [criteria, on_update] : trackers) {
    // Each tracker sees the states its criteria match, whatever their new
    // status: a consumed state leaves an "unconsumed" view.
    VaultUpdate mine{update.txId, {}, {}};
    for (const auto& vs : update.produced) {
      if (VaultAccess::matches(*this, criteria, vs)) mine.produced.push_back(vs);
    }
    for (const auto& vs : update.consumed) {
      if (VaultAccess::matches(*this, criteria, vs)) mine.consumed.push_back(vs);
    }
    if (!mine.produced.empty() || !mine.consumed.empty()) on_update(mine);
  }
}

}  // namespace ccal::vault
