#include "vault/vault.h"

#include <algorithm>
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

// --- open ---------------------------------------------------------------------

std::vector<std::string> vaultDatabaseNames() {
  std::vector<std::string> names;
  for (auto n : {db_tx, db_state, ix_type, ix_participant, ix_linear, ix_field, ix_recorded,
                 ix_consumed, ix_lock, ix_token, db_counts, db_flow_checkpoint, db_flow_journal,
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
  std::unique_ptr<Vault> vault(new Vault(config, registry, std::move(our_keys)));
  auto names = vaultDatabaseNames();
  auto store = Store::open(config.store, names, vault_schema_name, vault_schema_version);
  if (!store) return store.error();
  vault->store_ = std::move(store).value();
  return vault;
}

int64_t Vault::now() const {
  if (config_.now_micros) return config_.now_micros();
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// --- recording ----------------------------------------------------------------

void Vault::recordAsync(const SignedTransaction& stx, RecordMode mode, DoneFn done) {
  // Refused before anything is written: a transaction whose signatures do
  // not verify or whose required signers are not all there.
  Status verified = stx.verifyRequiredSignatures();
  if (!verified.ok()) {
    done(makeError(verified.error().code, "not recorded: " + verified.error().message));
    return;
  }
  // Decode every output's view (schema fields) before queueing, so a state
  // whose data does not decode is refused up front, off the writer thread.
  auto views = std::make_shared<std::vector<StateView>>();
  const auto& outputs = stx.tx().outputs();
  for (size_t i = 0; i < outputs.size(); ++i) {
    auto view = VaultAccess::viewOf(*this, outputs[i]);
    if (!view) {
      done(makeError(view.error().code, "not recorded: output " + std::to_string(i) + " of " +
                                            stx.id().hex() + ": " + view.error().message));
      return;
    }
    views->push_back(std::move(view).value());
  }
  auto shared = std::make_shared<SignedTransaction>(stx);
  // The transaction's record is encoded here, on the caller's thread, so the
  // one writer thread only writes.
  auto update = std::make_shared<VaultUpdate>();
  update->txId = stx.id();
  const int64_t at = now();
  auto tx_record = std::make_shared<Bytes>();
  {
    Bytes encoded = stx.encode();
    *tx_record = buildCanonical<schema::vault::TransactionRecord>([&](auto b) {
      b.setRecordedMicros(at);
      b.setSignedTransaction(asData(encoded));
    });
  }

  WriteFn fn = [this, shared, views, update, mode, at, tx_record](WriteTxn& w) -> Status {
    const SignedTransaction& s = *shared;
    const SecureHash& id = s.id();
    update->produced.clear();
    update->consumed.clear();
    if (w.get(VaultAccess::db(*this, db_tx), id.view())) return {};  // recorded before

    for (const auto& ref : s.tx().inputs()) {
      auto stored = VaultAccess::load(*this, w, ref);
      if (!stored) return stored.error();
      if (!stored->has_value()) continue;  // not a state this vault holds
      const Stored& before = **stored;
      if (before.vs.status == StateStatus::consumed) {
        return makeError(Errc::conflict, "transaction " + id.hex() + " spends state " +
                                             ref.toString() +
                                             ", which this vault saw consumed by transaction " +
                                             before.vs.consumedBy->hex());
      }
      VaultState after = before.vs;
      after.status = StateStatus::consumed;
      after.consumedBy = id;
      after.consumedMicros = at;
      after.lock.reset();
      CCAL_TRY(VaultAccess::rewrite(*this, w, before, after));
      update->consumed.push_back(after);
    }

    const auto& states = s.tx().outputs();
    const auto& output_bytes = s.tx().group(ComponentGroup::outputs);
    for (uint32_t i = 0; i < states.size(); ++i) {
      bool ours = false;
      for (const auto& p : states[i].participants) {
        for (const auto& leaf : p.leafKeys()) ours = ours || our_keys_.contains(leaf);
      }
      if (!ours && mode == RecordMode::only_relevant) continue;
      VaultState vs;
      vs.ref = StateRef{id, i};
      vs.state = states[i];
      vs.relevance = ours ? Relevance::participant : Relevance::observed;
      vs.recordedMicros = at;
      CCAL_TRY(VaultAccess::putState(*this, w, vs, (*views)[i], output_bytes[i]));
      update->produced.push_back(std::move(vs));
    }

    return w.put(VaultAccess::db(*this, db_tx), id.view(), *tx_record);
  };
  store_->submit(std::move(fn), [this, update, done = std::move(done)](const Status& status) {
    if (status.ok() && (!update->produced.empty() || !update->consumed.empty())) publish(*update);
    done(status);
  });
}

Status Vault::record(const SignedTransaction& stx, RecordMode mode) {
  std::promise<Status> promise;
  auto future = promise.get_future();
  recordAsync(stx, mode, [&promise](const Status& s) { promise.set_value(s); });
  return future.get();
}

Result<std::optional<SignedTransaction>> Vault::transaction(const SecureHash& id) const {
  ReadTxn r = store_->read();
  auto value = r.get(VaultAccess::db(*this, db_tx), id.view());
  if (!value) return std::optional<SignedTransaction>{};
  return decodeMessage<schema::vault::TransactionRecord>(
      *value, "vault transaction record " + id.hex(), Canonical::required,
      [&](auto rec) -> Result<std::optional<SignedTransaction>> {
        auto stx = SignedTransaction::decode(asByteView(rec.getSignedTransaction()));
        if (!stx) return stx.error();
        return std::optional<SignedTransaction>(std::move(stx).value());
      });
}

bool Vault::hasTransaction(const SecureHash& id) const {
  ReadTxn r = store_->read();
  return r.get(VaultAccess::db(*this, db_tx), id.view()).has_value();
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
  Cursor c = r.cursor(VaultAccess::db(*this, db_tx));
  bool stop = false;
  for (bool ok = c.first(); ok && !stop; ok = c.next()) {
    auto id = SecureHash::fromBytes(c.key());
    if (!id) return id.error();
    CCAL_TRY(decodeMessage<schema::vault::TransactionRecord>(
        c.value(), "vault transaction record " + id->hex(), Canonical::required,
        [&](auto rec) -> Status {
          stop = !fn(*id, asByteView(rec.getSignedTransaction()));
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
  std::map<std::string_view, uint64_t> expected_entries;
  std::map<Bytes, uint64_t> expected_counts;
  Cursor c = r.cursor(VaultAccess::db(*this, db_state));
  for (bool ok = c.first(); ok; ok = c.next()) {
    if (c.key().size() != keys::ref_bytes) return broken("a state key of the wrong length");
    StateRef ref = keys::refFromKeyEnd(c.key());
    auto stored = decodeStateRecord(ref, c.value());
    if (!stored) return broken(stored.error().message);
    const VaultState& vs = stored->vs;
    auto view = VaultAccess::viewOf(*this, vs.state);
    if (!view) return broken("state " + ref.toString() + ": " + view.error().message);
    for (const auto& [db, key] : VaultAccess::indexKeys(vs, *view)) {
      if (!r.get(VaultAccess::db(*this, db), key)) {
        return broken("state " + ref.toString() + " is missing from index " + std::string(db));
      }
      ++expected_entries[db];
    }
    Bytes count_key{statusByte(vs.status)};
    keys::appendText(count_key, vs.state.stateType);
    ++expected_counts[count_key];
    if (vs.consumedBy && !r.get(VaultAccess::db(*this, db_tx), vs.consumedBy->view())) {
      return broken("state " + ref.toString() + " is consumed by transaction " +
                    vs.consumedBy->hex() + ", which is not recorded");
    }
    if (!r.get(VaultAccess::db(*this, db_tx), ref.txId.view())) {
      return broken("state " + ref.toString() + " has no recorded transaction");
    }
  }
  for (auto db : {ix_type, ix_participant, ix_linear, ix_field, ix_recorded, ix_consumed, ix_lock,
                  ix_token}) {
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
