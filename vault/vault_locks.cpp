// Soft locks and fungible selection. Every lock change runs on the Store's
// single writer, so two flows can never lock the same state: the second
// sees the first's lock in its own write transaction.

#include <algorithm>

#include "vault/vault_internal.h"

namespace ccal::vault {

namespace {

std::string holderName(const LockId& id) { return "flow " + id.shortHex(); }

}  // namespace

Status Vault::lock(const LockId& holder, std::span<const StateRef> refs) {
  if (refs.size() > config_.lock_states_max) {
    return makeError(Errc::too_large, "a lock of " + std::to_string(refs.size()) +
                                          " states is over the limit of " +
                                          std::to_string(config_.lock_states_max));
  }
  std::vector<StateRef> wanted(refs.begin(), refs.end());
  return store_->write([this, holder, wanted](WriteTxn& w) -> Status {
    // All checked before the first write (a refusal then costs the batch nothing).
    std::vector<std::pair<StateKey, StateRecordFields>> to_lock;
    for (const auto& ref : wanted) {
      auto key = VaultAccess::keyOf(*this, w, ref);
      auto stored = key ? VaultAccess::loadFields(*this, w, *key)
                        : Result<std::optional<StateRecordFields>>(std::nullopt);
      if (!stored) return stored.error();
      if (!stored->has_value()) {
        return makeError(Errc::not_found, "cannot lock state " + ref.toString() +
                                              ": this vault does not hold it");
      }
      const StateRecordFields& before = **stored;
      if (before.status == StateStatus::consumed) {
        return makeError(Errc::conflict, "cannot lock state " + ref.toString() +
                                             ": consumed by transaction " +
                                             before.consumedBy->hex());
      }
      if (before.lock && *before.lock == holder) continue;
      if (before.lock) {
        return makeError(Errc::locked, "cannot lock state " + ref.toString() +
                                           " for " + holderName(holder) + ": locked by " +
                                           holderName(*before.lock));
      }
      bool twice = false;
      for (const auto& entry : to_lock) twice = twice || entry.first == *key;
      if (!twice) to_lock.emplace_back(*key, std::move(stored->value()));
    }
    for (const auto& [key, before] : to_lock) {
      CCAL_TRY(VaultAccess::relock(*this, w, key, before, holder));
    }
    return {};
  });
}

Status Vault::release(const LockId& holder, std::span<const StateRef> refs) {
  return store_->write(releaseFn(holder, refs));
}

void Vault::releaseAsync(const LockId& holder, std::span<const StateRef> refs, DoneFn done) {
  store_->submit(releaseFn(holder, refs), tracked(std::move(done)));
}

WriteFn Vault::releaseFn(const LockId& holder, std::span<const StateRef> refs) {
  std::vector<StateRef> wanted(refs.begin(), refs.end());
  return [this, holder, wanted](WriteTxn& w) -> Status {
    std::vector<StateKey> targets;
    for (const auto& ref : wanted) {
      if (auto key = VaultAccess::keyOf(*this, w, ref)) targets.push_back(*key);
    }
    if (wanted.empty()) {
      Bytes prefix;
      keys::appendHash(prefix, holder);
      Cursor c = w.cursor(VaultAccess::db(*this, ix_lock));
      for (bool ok = c.seek(prefix); ok; ok = c.next()) {
        if (!std::equal(prefix.begin(), prefix.end(), c.key().begin())) break;
        targets.push_back(keys::stateKeyFromKeyEnd(c.key()));
      }
    }
    std::sort(targets.begin(), targets.end());
    targets.erase(std::unique(targets.begin(), targets.end()), targets.end());
    for (const auto& key : targets) {
      auto stored = VaultAccess::loadFields(*this, w, key);
      if (!stored) return stored.error();
      if (!stored->has_value()) continue;
      const StateRecordFields& before = **stored;
      if (!before.lock || *before.lock != holder) continue;  // not ours: leave it
      CCAL_TRY(VaultAccess::relock(*this, w, key, before, std::nullopt));
    }
    return {};
  };
}

Result<uint64_t> Vault::releaseAllExcept(std::span<const LockId> live) {
  std::set<LockId> keep(live.begin(), live.end());
  auto released = std::make_shared<uint64_t>(0);
  Status status = store_->write([this, keep, released](WriteTxn& w) -> Status {
    *released = 0;
    std::vector<StateKey> targets;
    Cursor c = w.cursor(VaultAccess::db(*this, ix_lock));
    for (bool ok = c.first(); ok; ok = c.next()) {
      auto holder = SecureHash::fromBytes(c.key().first(SecureHash::size_bytes));
      CCAL_ASSERT(holder.ok());
      if (!keep.contains(*holder)) targets.push_back(keys::stateKeyFromKeyEnd(c.key()));
    }
    for (const auto& key : targets) {
      auto stored = VaultAccess::loadFields(*this, w, key);
      if (!stored) return stored.error();
      CCAL_ASSERT_MSG(stored->has_value(), "a lock index entry names a missing state");
      CCAL_TRY(VaultAccess::relock(*this, w, key, **stored, std::nullopt));
      ++*released;
    }
    return {};
  });
  if (!status.ok()) return status.error();
  return *released;
}

Result<FungibleSelection> Vault::selectFungible(const LockId& holder, std::string_view token,
                                                const std::optional<SecureHash>& issuer,
                                                int64_t amount) {
  if (amount <= 0) return makeError(Errc::bad_query, "a selection needs a positive amount");
  auto selection = std::make_shared<FungibleSelection>();
  Status status = store_->write(selectFn(holder, token, issuer, amount, selection));
  if (!status.ok()) return status.error();
  return *selection;
}

void Vault::selectFungibleAsync(const LockId& holder, std::string_view token,
                                const std::optional<SecureHash>& issuer, int64_t amount,
                                std::function<void(Result<FungibleSelection>)> done) {
  if (amount <= 0) return done(makeError(Errc::bad_query, "a selection needs a positive amount"));
  auto selection = std::make_shared<FungibleSelection>();
  store_->submit(selectFn(holder, token, issuer, amount, selection),
                 tracked([selection, done = std::move(done)](const Status& status) {
                   if (!status.ok()) return done(status.error());
                   done(std::move(*selection));
                 }));
}

WriteFn Vault::selectFn(const LockId& holder, std::string_view token, const std::optional<SecureHash>& issuer,
                        int64_t amount, std::shared_ptr<FungibleSelection> selection) {
  std::string token_text(token);
  return [this, holder, token_text, issuer, amount, selection](WriteTxn& w) -> Status {
    *selection = {};
    Bytes prefix;
    keys::appendText(prefix, token_text);
    if (issuer) keys::appendHash(prefix, *issuer);
    std::vector<Stored> chosen;
    int64_t available = 0;
    Cursor c = w.cursor(VaultAccess::db(*this, ix_token));
    for (bool ok = c.seek(prefix); ok; ok = c.next()) {
      ByteView k = c.key();
      if (k.size() < prefix.size() || !std::equal(prefix.begin(), prefix.end(), k.begin())) break;
      const StateKey key = keys::stateKeyFromKeyEnd(k);
      // ix_token lists free states only, but the record has the last word,
      // read before the state is decoded: locked states are spoken for —
      // another flow's, or this flow's own from an earlier selection
      // (counting those again would double-spend them). (A vault written
      // before ix_token left out locked states still lists them.)
      auto fields = VaultAccess::loadFields(*this, w, key);
      if (!fields) return fields.error();
      CCAL_ASSERT_MSG(fields->has_value(), "a token index entry names a missing state");
      if ((*fields)->lock || (*fields)->status != StateStatus::unconsumed) continue;
      auto stored = storedOf(key, std::move(**fields));
      if (!stored) return stored.error();
      const Stored& s = *stored;
      // Only states this node can spend alone: one of its own keys is a
      // participant. A state it holds through a leaf of a composite key (a
      // fund's "k of n committee" key) needs other signers too.
      const auto& parts = s.vs.state.participants;
      if (std::none_of(parts.begin(), parts.end(),
                       [this](const Key& p) { return p.isSingle() && our_keys_.contains(p.single()); })) {
        continue;
      }
      auto view = VaultAccess::viewOf(*this, s.vs.state);
      CCAL_ASSERT(view.ok() && view->fungible.has_value());
      available += view->fungible->amount;
      chosen.push_back(s);
      if (available >= amount) break;
      if (chosen.size() >= config_.lock_states_max) break;
    }
    if (available < amount) {
      return makeError(Errc::insufficient_balance,
                       "insufficient balance: " + std::to_string(amount) + " " + token_text +
                           " asked for, " + std::to_string(available) +
                           " available unlocked" +
                           (chosen.size() >= config_.lock_states_max
                                ? " within " + std::to_string(config_.lock_states_max) + " states"
                                : ""));
    }
    for (const auto& s : chosen) {
      CCAL_TRY(VaultAccess::relock(*this, w, s.key, s.fields, holder));
      VaultState after = s.vs;
      after.lock = holder;
      selection->states.push_back(std::move(after));
    }
    selection->total = available;
    return {};
  };
}

}  // namespace ccal::vault
