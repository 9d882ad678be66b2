#include "notary/uniqueness.h"

#include <algorithm>
#include <bit>
#include <list>
#include <map>
#include <mutex>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include "ledger/merkle.h"
#include "notary/record_reader.h"

namespace ccal::notary {

namespace {

constexpr std::string_view consumed_db_name = "notary_consumed";
constexpr std::string_view txs_db_name = "notary_txs";
constexpr std::string_view effects_db_name = "notary_effects";
constexpr std::string_view meta_db_name = "notary_meta";
constexpr std::string_view last_executed_key = "last_executed";
// The last batch whose consumed states are all in notary_consumed (absent:
// every batch's, as before the index was written in passes).
constexpr std::string_view merged_through_key = "consumed_merged_through";

Bytes be64(uint64_t n) {
  Bytes out(8);
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(n >> (56 - 8 * i));
  return out;
}

std::optional<uint64_t> fromBe64(ByteView b) {
  if (b.size() != 8) return std::nullopt;
  uint64_t n = 0;
  for (uint8_t byte : b) n = (n << 8) | byte;
  return n;
}

// tx id || u32 BE index: one transaction's outputs sit together.
Bytes refKey(const StateRef& ref) {
  Bytes out(ref.txId.view().begin(), ref.txId.view().end());
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(ref.index >> (24 - 8 * i)));
  return out;
}

std::string describeWindow(const TimeWindow& w) {
  return "[" + (w.fromMicros ? std::to_string(*w.fromMicros) : std::string("open")) + ", " +
         (w.untilMicros ? std::to_string(*w.untilMicros) : std::string("open")) + ")";
}

Result<uint64_t> readLastExecuted(const vault::ReadTxn& txn, const vault::Db& meta) {
  auto v = txn.get(meta, asBytes(last_executed_key));
  if (!v) return uint64_t{0};
  auto n = fromBe64(*v);
  if (!n) return makeError(Errc::storage_error, "notary_meta last_executed is not 8 bytes");
  return *n;
}

// Checks that a list of StateRefs has no repeats and shares none with `other`.
Status checkDistinct(const std::vector<StateRef>& refs, const std::vector<StateRef>& other,
                     std::string_view what) {
  std::set<StateRef> seen;
  for (const auto& r : refs) {
    if (!seen.insert(r).second) {
      return makeError(Errc::invalid_transaction, std::string(what) + " " + r.toString() + " is listed twice");
    }
  }
  for (const auto& r : other) {
    if (seen.count(r)) {
      return makeError(Errc::invalid_transaction, "state " + r.toString() + " is both an input and a reference");
    }
  }
  return {};
}

}  // namespace

struct UniquenessStateMachine::Checked {
  SecureHash txId;
  std::vector<StateRef> inputs;
  std::vector<StateRef> references;
  std::optional<TimeWindow> timeWindow;
};

// check()'s outcomes by request body hash, oldest first out.
struct UniquenessStateMachine::CheckCache {
  using Value = std::shared_ptr<const Result<Checked>>;
  struct Entry {
    Value value;
    std::list<SecureHash>::iterator order;
  };
  std::mutex mutex;  // check() may run on any thread
  std::unordered_map<SecureHash, Entry, SecureHashHasher> entries;
  std::list<SecureHash> order;
  CheckStats stats;

  Value find(const SecureHash& h, bool take) {
    std::lock_guard lock(mutex);
    auto it = entries.find(h);
    if (it == entries.end()) return nullptr;
    ++stats.cache_hits;
    Value v = it->second.value;
    if (take) {
      order.erase(it->second.order);
      entries.erase(it);
    }
    return v;
  }
  void insert(const SecureHash& h, Value v, size_t max) {
    std::lock_guard lock(mutex);
    ++stats.decoded;
    if (max == 0 || entries.count(h)) return;
    while (entries.size() >= max) {
      entries.erase(order.front());
      order.pop_front();
    }
    order.push_back(h);
    entries.emplace(h, Entry{std::move(v), std::prev(order.end())});
  }
};

UniquenessStateMachine::~UniquenessStateMachine() = default;

UniquenessStateMachine::CheckStats UniquenessStateMachine::checkStats() const {
  std::lock_guard lock(check_cache_->mutex);
  return check_cache_->stats;
}

std::vector<std::string> UniquenessStateMachine::dbNames() {
  return {std::string(consumed_db_name), std::string(txs_db_name), std::string(effects_db_name),
          std::string(meta_db_name)};
}

Result<std::unique_ptr<vault::Store>> UniquenessStateMachine::openStore(
    const vault::StoreConfig& config, std::span<const std::string> extra_db_names) {
  std::vector<std::string> names = dbNames();
  names.insert(names.end(), extra_db_names.begin(), extra_db_names.end());
  return vault::Store::open(config, names, uniqueness_schema_name, uniqueness_schema_version);
}

UniquenessStateMachine::UniquenessStateMachine(vault::Store& store, UniquenessConfig config, KeyPair signer,
                                               uint64_t last)
    : store_(store),
      config_(std::move(config)),
      signer_(std::move(signer)),
      consumed_db_(&store.db(consumed_db_name)),
      txs_db_(&store.db(txs_db_name)),
      effects_db_(&store.db(effects_db_name)),
      meta_db_(&store.db(meta_db_name)),
      check_cache_(std::make_unique<CheckCache>()),
      last_executed_(last),
      last_queued_(last) {}

Result<std::unique_ptr<UniquenessStateMachine>> UniquenessStateMachine::open(vault::Store& store,
                                                                             UniquenessConfig config,
                                                                             KeyPair signer) {
  // A replica's configuration comes from its config file and the network
  // map: a mistake there is an error naming it, not a crash.
  if (config.notary_name.empty()) return makeError(Errc::malformed, "the notary state machine needs its notary's name");
  if (config.validating && config.registry == nullptr) {
    return makeError(Errc::malformed, "a validating notary needs its contract registry");
  }
  if (!config.service_key.contains(signer.publicKey())) {
    return makeError(Errc::bad_key, "the replica's key " + signer.publicKey().shortHex() +
                                        " is not part of the notary's key " + config.service_key.describe());
  }
  uint64_t last = 0;
  {
    auto txn = store.read();
    auto l = readLastExecuted(txn, store.db(meta_db_name));
    if (!l) return l.error();
    last = *l;
  }
  if (config.consumed_merge_interval_batches == 0 || config.consumed_unmerged_states_max == 0) {
    return makeError(Errc::malformed,
                     "the consumed index's merge interval and unmerged bound must be at least 1");
  }
  std::unique_ptr<UniquenessStateMachine> machine(
      new UniquenessStateMachine(store, std::move(config), std::move(signer), last));
  CCAL_TRY(machine->loadUnmerged());
  return machine;
}

size_t UniquenessStateMachine::RefKeyHasher::operator()(const Bytes& key) const {
  // A ref key starts with a transaction id (a SHA-256): its first bytes are
  // uniform already; the output index tells a transaction's states apart.
  uint64_t h = 0;
  for (size_t i = 0; i < std::min<size_t>(8, key.size()); ++i) h = (h << 8) | key[i];
  for (size_t i = 8; i < key.size(); ++i) h = h * 1099511628211ull + key[i];
  return static_cast<size_t>(h);
}

Status UniquenessStateMachine::loadUnmerged() {
  // The states consumed by the batches after the last merge: from their
  // effects, the durable record of each executed batch.
  std::optional<uint64_t> merged;
  {
    auto txn = store_.read();
    auto m = txn.get(*meta_db_, asBytes(merged_through_key));
    if (m) merged = fromBe64(*m);
    if (m && (!merged || *merged > last_executed_.load())) {
      return makeError(Errc::storage_error, "notary_meta consumed_merged_through is damaged");
    }
  }
  if (!merged) {
    // A fresh store, or one from before the passes (every batch's states in
    // notary_consumed): the record starts at lastExecuted.
    merged = last_executed_.load();
    CCAL_TRY(store_.write([&](vault::WriteTxn& w) {
      return w.put(*meta_db_, asBytes(merged_through_key), be64(*merged));
    }));
  }
  const uint64_t last = last_executed_.load();
  auto txn = store_.read();
  std::lock_guard lock(unmerged_mutex_);
  unmerged_.clear();
  for (uint64_t seq = *merged + 1; seq <= last; ++seq) {
    auto bytes = txn.get(*effects_db_, be64(seq));
    if (!bytes)
      return makeError(Errc::storage_error,
                       "no effects of executed batch " + std::to_string(seq) + " are stored");
    auto effects = BatchEffects::decode(*bytes, config_.limits);
    if (!effects) {
      return makeError(Errc::storage_error, "the stored effects of batch " + std::to_string(seq) +
                                                ": " + effects.error().message);
    }
    for (const auto& c : effects->consumed)
      unmerged_[refKey(c.ref)] = Unmerged{c.consumingTxId, seq};
  }
  return {};
}

Status UniquenessStateMachine::writePass(
    vault::WriteTxn& txn, uint64_t seq,
    std::vector<std::pair<const Bytes*, const SecureHash*>> puts) {
  for (const auto& [key, u] : unmerged_) {
    if (u.seq < seq) puts.emplace_back(&key, &u.tx);
  }
  // Sorted, so that the puts walk the B-tree in order.
  std::sort(puts.begin(), puts.end(),
            [](const auto& a, const auto& b) { return *a.first < *b.first; });
  for (const auto& [key, tx] : puts) CCAL_TRY(txn.put(*consumed_db_, *key, tx->view()));
  return txn.put(*meta_db_, asBytes(merged_through_key), be64(seq));
}

void UniquenessStateMachine::dropUnmerged(const std::function<bool(uint64_t seq)>& which) {
  std::lock_guard lock(unmerged_mutex_);
  std::erase_if(unmerged_, [&](const auto& e) { return which(e.second.seq); });
}

Status UniquenessStateMachine::refuseAfterFailure(uint64_t seq) const {
  if (failed_seq_ == 0) return {};
  return makeError(Errc::storage_error,
                   "batch " + std::to_string(seq) + " not written: batch " +
                       std::to_string(failed_seq_) +
                       " failed before it (the state machine must be reopened)");
}

Result<std::optional<SecureHash>> UniquenessStateMachine::consumedBefore(const vault::ReadTxn& txn,
                                                                         const Bytes& key,
                                                                         uint64_t seq) const {
  auto u = unmerged_.find(key);
  if (u != unmerged_.end() && u->second.seq < seq) return std::optional<SecureHash>(u->second.tx);
  auto v = txn.get(*consumed_db_, key);
  if (!v) return std::optional<SecureHash>();
  auto h = SecureHash::fromBytes(*v);
  if (!h)
    return makeError(Errc::storage_error,
                     "notary_consumed holds a value of " + std::to_string(v->size()) + " bytes");
  return std::optional<SecureHash>(*h);
}

// --- check -----------------------------------------------------------------------

Status UniquenessStateMachine::checkNotary(const std::optional<Party>& notary) const {
  if (!notary) return makeError(Errc::invalid_transaction, "the transaction names no notary");
  if (notary->name != config_.notary_name) {
    return makeError(Errc::invalid_transaction,
                     "the transaction's notary is " + notary->name + ", this notary is " + config_.notary_name);
  }
  if (!(notary->owningKey == config_.service_key)) {
    return makeError(Errc::invalid_transaction, "the transaction's notary key " + notary->owningKey.describe() +
                                                    " is not this notary's key " + config_.service_key.describe());
  }
  return {};
}

Status UniquenessStateMachine::checkNonValidating(const NotarisationRequest& request) const {
  const FilteredTransaction& ftx = request.filtered();
  for (ComponentGroup g : {ComponentGroup::inputs, ComponentGroup::references, ComponentGroup::notary,
                           ComponentGroup::time_window}) {
    Status visible = ftx.checkAllVisible(g);
    if (!visible) return makeError(visible.error().code, "filtered transaction: " + visible.error().message);
  }
  for (const auto& group : ftx.groups()) {
    bool allowed = group.group == ComponentGroup::inputs || group.group == ComponentGroup::references ||
                   group.group == ComponentGroup::notary || group.group == ComponentGroup::time_window;
    if (!allowed && !group.indices.empty()) {
      return makeError(Errc::invalid_transaction,
                       std::string("the filtered transaction reveals ") + componentGroupName(group.group) +
                           ", which a non-validating notary must not see");
    }
  }
  return checkNotary(ftx.notary());
}

Status UniquenessStateMachine::checkValidating(const NotarisationRequest& request) const {
  const ValidatingPayload& p = request.validatingPayload();
  const SignedTransaction& stx = p.transaction;
  CCAL_TRY(checkNotary(stx.tx().notary()));
  std::unordered_map<SecureHash, const SignedTransaction*, SecureHashHasher> deps;
  for (const auto& dep : p.dependencies) {
    if (!deps.emplace(dep.id(), &dep).second) {
      return makeError(Errc::malformed, "dependency " + dep.id().hex() + " is sent twice");
    }
  }
  auto lookup = [&](const StateRef& ref) -> Result<TransactionState> {
    auto it = deps.find(ref.txId);
    if (it == deps.end()) {
      return makeError(Errc::not_found, "state " + ref.toString() + ": its transaction is not among the dependencies");
    }
    const auto& outputs = it->second->tx().outputs();
    if (ref.index >= outputs.size()) {
      return makeError(Errc::not_found, "state " + ref.toString() + ": the transaction has " +
                                            std::to_string(outputs.size()) + " outputs");
    }
    return outputs[ref.index];
  };
  // The transaction: every signature valid, every signer but the notary present.
  {
    Status sigs = stx.verifySignaturesExcept({config_.service_key});
    if (!sigs) return sigs.error();
    auto ltx = LedgerTransaction::resolve(stx.tx(), lookup);
    if (!ltx) return makeError(ltx.error().code, "transaction " + stx.id().hex() + ": " + ltx.error().message);
    Status verdict = config_.registry->verify(*ltx, config_.policy);
    if (!verdict) return makeError(verdict.error().code, "transaction " + stx.id().hex() + ": " + verdict.error().message);
  }
  // Its backchain: each dependency fully signed (notarised) and valid, its
  // own inputs among the dependencies.
  for (const auto& dep : p.dependencies) {
    Status sigs = dep.verifyRequiredSignatures();
    if (!sigs) return makeError(sigs.error().code, "dependency " + dep.id().hex() + ": " + sigs.error().message);
    auto ltx = LedgerTransaction::resolve(dep.tx(), lookup);
    if (!ltx) return makeError(ltx.error().code, "dependency " + dep.id().hex() + ": " + ltx.error().message);
    Status verdict = config_.registry->verify(*ltx, config_.policy);
    if (!verdict) {
      return makeError(verdict.error().code, "dependency " + dep.id().hex() + ": " + verdict.error().message);
    }
  }
  return {};
}

Result<UniquenessStateMachine::Checked> UniquenessStateMachine::checkBody(ByteView body) const {
  auto request = NotarisationRequest::decode(body, config_.limits);
  if (!request) return request.error();
  if (request->notary() != config_.notary_name) {
    return makeError(Errc::invalid_transaction,
                     "the request is for notary " + request->notary() + ", this notary is " + config_.notary_name);
  }
  Checked out;
  out.txId = request->txId();
  if (request->isValidating()) {
    if (!config_.validating) {
      return makeError(Errc::invalid_transaction,
                       "a validating request to a non-validating notary: send the filtered transaction");
    }
    CCAL_TRY(checkValidating(*request));
    const WireTransaction& tx = request->validatingPayload().transaction.tx();
    out.inputs = tx.inputs();
    out.references = tx.references();
    out.timeWindow = tx.timeWindow();
  } else {
    if (config_.validating) {
      return makeError(Errc::invalid_transaction,
                       "a filtered transaction to a validating notary: send the whole transaction");
    }
    CCAL_TRY(checkNonValidating(*request));
    const FilteredTransaction& ftx = request->filtered();
    out.inputs = ftx.inputs();
    out.references = ftx.references();
    out.timeWindow = ftx.timeWindow();
  }
  CCAL_TRY(checkDistinct(out.inputs, out.references, "input"));
  CCAL_TRY(checkDistinct(out.references, {}, "reference"));
  if (out.inputs.empty() && out.references.empty() && !out.timeWindow) {
    return makeError(Errc::invalid_transaction,
                     "the transaction has no inputs, references or time window: nothing to notarise");
  }
  return out;
}

std::shared_ptr<const Result<UniquenessStateMachine::Checked>> UniquenessStateMachine::checkCached(
    ByteView body, const SecureHash& body_hash, bool take) const {
  if (auto hit = check_cache_->find(body_hash, take)) return hit;
  auto result = std::make_shared<const Result<Checked>>(checkBody(body));
  // execute() takes what it needs: a result decoded there is not kept.
  check_cache_->insert(body_hash, result, take ? 0 : config_.checked_requests_cached_max);
  return result;
}

Status UniquenessStateMachine::check(const Request& request) const {
  return checkHashed(request.client, request.client_seq, request.body, SecureHash::of(request.body));
}

Status UniquenessStateMachine::checkHashed(const std::string& client, uint64_t client_seq, ByteView body,
                                           const SecureHash& body_hash) const {
  (void)client;
  (void)client_seq;
  auto checked = checkCached(body, body_hash, false);
  if (!*checked) return checked->error();
  return {};
}

namespace {

// An error as a reply carries it: the message cut to the limit the client's
// decoder enforces.
Error replyError(const Error& error, const NotarisationLimits& limits) {
  Error out = error;
  if (out.message.size() > limits.error_message_bytes_max) {
    constexpr std::string_view cut = "...";
    out.message.resize(limits.error_message_bytes_max - cut.size());
    out.message += cut;
  }
  return out;
}

}  // namespace

Bytes UniquenessStateMachine::rejection(const Request& request, const Error& error) const {
  NotarisationReply reply;
  reply.requestHash = SecureHash::of(request.body);
  reply.batchSeq = 0;  // refused before ordering
  reply.outcome = NotarisationReply::Outcome::error;
  reply.error = replyError(error, config_.limits);
  SignedNotarisationReply signed_reply;
  signed_reply.reply = reply.encode();
  signed_reply.leafIndex = 0;
  signed_reply.leafCount = 1;
  signed_reply.rootSignature = signer_.sign(batchRootSignableBytes(0, 1, replyLeaf(signed_reply.reply)));
  return signed_reply.encode();
}

// --- execute -----------------------------------------------------------------------

namespace {

struct Prepared {
  SecureHash requestHash;
  std::optional<UniquenessStateMachine::Checked> checked;
  Error error;  // when !checked
  std::vector<Bytes> inputKeys, referenceKeys;
};

// Reply i of a batch of `count`, signed: a success (tx_signature set)
// carries its transaction signature only, any other answer the batch-root
// signature and its proof in `tree`. The one place that rule is written, for
// signReplies() and expandReplies() alike.
Bytes signedReplyBytes(Bytes reply, uint32_t i, uint32_t count, const merkle::Tree& tree,
                       const DigitalSignature& root_signature,
                       std::optional<DigitalSignature> tx_signature) {
  SignedNotarisationReply r;
  r.reply = std::move(reply);
  r.leafIndex = i;
  r.leafCount = count;
  if (tx_signature) {
    r.txSignature = std::move(tx_signature);
  } else {
    r.proof = tree.prove(i);
    r.rootSignature = root_signature;
  }
  return r.encode();
}

}  // namespace

// What one run of a batch's write request produced (set anew on every run).
struct UniquenessStateMachine::BatchRun {
  std::vector<NotarisationReply> replies;
  std::vector<Bytes> replyBytes;
  Bytes effects;
  bool merged = false;  // this batch's write took the consumed index's pass
  bool wrote = false;   // its write function's last run succeeded (the commit may have failed)
};

// Packed replies (Executed::packed_replies): what a batch's signed replies
// hold beyond what can be recomputed — the two Ed25519 signatures and each
// reply's canonical bytes; the proofs and the batch signature's leaves follow
// from those. u8 format | u16 version, 64 bytes: the root signature | u8 1 if
// the batch has successes, then u16 version, 64 bytes: the transaction batch
// signature | u32 count | count x (u32 length, reply bytes).
constexpr uint8_t packed_replies_format = 1;

Bytes UniquenessStateMachine::packReplies(const DigitalSignature& root_signature,
                                          const DigitalSignature* tx_signature,
                                          const std::vector<Bytes>& replies) {
  size_t total = 1 + 2 + 64 + 1 + 2 + 64 + 4;
  for (const auto& r : replies) total += 4 + r.size();
  Bytes out;
  out.reserve(total);
  out.push_back(packed_replies_format);
  auto signature = [&out](const DigitalSignature& sig) {
    out.push_back(static_cast<uint8_t>(sig.version()));
    out.push_back(static_cast<uint8_t>(sig.version() >> 8));
    append(out, sig.view());
  };
  signature(root_signature);
  out.push_back(tx_signature != nullptr ? 1 : 0);
  if (tx_signature != nullptr) signature(*tx_signature);
  appendU32(out, static_cast<uint32_t>(replies.size()));
  for (const auto& r : replies) appendBytes(out, r);
  return out;
}

Result<std::vector<Bytes>> UniquenessStateMachine::expandReplies(uint64_t seq,
                                                                 ByteView packed) const {
  auto bad = [seq](const std::string& why) -> Error {
    return makeError(Errc::storage_error,
                     "packed replies of batch " + std::to_string(seq) + ": " + why);
  };
  RecordReader rd(packed);
  uint8_t format = 0, has_tx = 0;
  uint16_t root_version = 0, tx_version = 0;
  std::array<uint8_t, DigitalSignature::ed25519_bytes> root_bytes{}, tx_bytes{};
  uint32_t count = 0;
  if (!rd.u8(format) || format != packed_replies_format) return bad("unknown format");
  if (!rd.u16(root_version) || !rd.fixed(root_bytes) || !rd.u8(has_tx) || has_tx > 1)
    return bad("truncated");
  if (has_tx == 1 && (!rd.u16(tx_version) || !rd.fixed(tx_bytes))) return bad("truncated");
  if (!rd.u32(count) || count == 0 || count > config_.limits.batch_requests_max)
    return bad("bad reply count");
  std::vector<Bytes> replies(count);
  std::vector<SecureHash> leaves;
  leaves.reserve(count);
  std::vector<Bytes> signed_ids;
  std::vector<uint32_t> signed_at;
  for (uint32_t i = 0; i < count; ++i) {
    if (!rd.bytes(replies[i])) return bad("truncated");
    auto reply = NotarisationReply::decode(replies[i], config_.limits);
    if (!reply) return bad("reply " + std::to_string(i) + ": " + reply.error().message);
    if (reply->batchSeq != seq)
      return bad("reply " + std::to_string(i) + " names batch " + std::to_string(reply->batchSeq));
    leaves.push_back(replyLeaf(replies[i]));
    if (reply->outcome == NotarisationReply::Outcome::success) {
      signed_ids.push_back(signableBytes(reply->txId, tx_version));
      signed_at.push_back(i);
    }
  }
  if (!rd.done()) return bad("trailing bytes");
  if (signed_ids.empty() != (has_tx == 0))
    return bad("the transaction signature does not match the successes");
  merkle::Tree tree(std::move(leaves));
  const DigitalSignature root_signature(signer_.publicKey(), root_bytes, root_version);
  // Our own signature; checked so that a damaged record is never sent.
  if (auto ok = root_signature.verify(batchRootSignableBytes(seq, count, tree.root())); !ok) {
    return bad("the root signature does not verify: " + ok.error().message);
  }
  std::optional<merkle::Tree> tx_tree;
  if (!signed_ids.empty()) {
    std::vector<SecureHash> tx_leaves;
    tx_leaves.reserve(signed_ids.size());
    for (const auto& m : signed_ids) tx_leaves.push_back(merkle::batchLeaf(m));
    tx_tree.emplace(std::move(tx_leaves));
  }
  std::vector<Bytes> out;
  out.reserve(count);
  size_t next_tx = 0;
  for (uint32_t i = 0; i < count; ++i) {
    std::optional<DigitalSignature> tx_signature;
    if (next_tx < signed_at.size() && signed_at[next_tx] == i) {
      const auto k = static_cast<uint32_t>(next_tx++);
      tx_signature = DigitalSignature(
          signer_.publicKey(), tx_bytes, tx_version,
          BatchProof{k, static_cast<uint32_t>(signed_at.size()), tx_tree->prove(k)});
    }
    out.push_back(signedReplyBytes(std::move(replies[i]), i, count, tree, root_signature,
                                   std::move(tx_signature)));
  }
  return out;
}

Executed UniquenessStateMachine::signReplies(uint64_t seq, BatchRun& run) const {
  Executed executed;
  executed.effects = std::move(run.effects);
  if (run.replyBytes.empty()) return executed;
  // One signature for the whole batch's replies; each reply that is not a
  // success carries it with its proof (a success carries its transaction
  // signature instead, which alone proves it).
  std::vector<SecureHash> leaves;
  leaves.reserve(run.replyBytes.size());
  for (const auto& b : run.replyBytes) leaves.push_back(replyLeaf(b));
  merkle::Tree tree(std::move(leaves));
  auto count = static_cast<uint32_t>(run.replyBytes.size());
  DigitalSignature root_signature = signer_.sign(batchRootSignableBytes(seq, count, tree.root()));
  // The transaction signatures of the batch's successes: one batch signature
  // (ledger/crypto.h) over all their ids, each with its own proof.
  std::vector<Bytes> signed_ids;
  std::vector<uint32_t> signed_at;
  for (uint32_t i = 0; i < count; ++i) {
    if (run.replies[i].outcome != NotarisationReply::Outcome::success) continue;
    signed_ids.push_back(signableBytes(run.replies[i].txId));
    signed_at.push_back(i);
  }
  std::vector<DigitalSignature> tx_signatures;
  if (!signed_ids.empty()) tx_signatures = signer_.signBatch(signed_ids);
  executed.replies.reserve(count);
  executed.packed_replies = packReplies(
      root_signature, tx_signatures.empty() ? nullptr : &tx_signatures[0], run.replyBytes);
  size_t next_tx_signature = 0;
  for (uint32_t i = 0; i < count; ++i) {
    std::optional<DigitalSignature> tx_signature;
    if (next_tx_signature < signed_at.size() && signed_at[next_tx_signature] == i) {
      tx_signature = tx_signatures[next_tx_signature++];
    }
    executed.replies.push_back(signedReplyBytes(std::move(run.replyBytes[i]), i, count, tree,
                                                root_signature, std::move(tx_signature)));
  }
  return executed;
}

void UniquenessStateMachine::execute(const Batch& batch, std::function<void(Result<Executed>)> done,
                                     std::function<void(const Executed&)> decided) {
  CCAL_ASSERT_MSG(batch.seq == last_queued_ + 1, "batches are executed in sequence, without gaps");
  if (batch.requests.size() > config_.limits.batch_requests_max) {
    done(makeError(Errc::too_large, "batch " + std::to_string(batch.seq) + " has " +
                                        std::to_string(batch.requests.size()) + " requests, over the limit of " +
                                        std::to_string(config_.limits.batch_requests_max)));
    return;
  }
  CCAL_ASSERT(batch.body_hashes.empty() || batch.body_hashes.size() == batch.requests.size());
  last_queued_ = batch.seq;

  // Decoding and the stateless checks run here, on the caller's thread; the
  // Store's writer only looks up and writes.
  auto prepared = std::make_shared<std::vector<Prepared>>(batch.requests.size());
  for (size_t i = 0; i < batch.requests.size(); ++i) {
    Prepared& p = (*prepared)[i];
    p.requestHash = batch.body_hashes.empty() ? SecureHash::of(batch.requests[i].body) : batch.body_hashes[i];
    // Decoded and checked once: check() left the outcome in the cache.
    auto checked = checkCached(batch.requests[i].body, p.requestHash, true);
    if (!*checked) {
      p.error = checked->error();
      continue;
    }
    p.checked.emplace(checked->value());
    for (const auto& r : p.checked->inputs) p.inputKeys.push_back(refKey(r));
    for (const auto& r : p.checked->references) p.referenceKeys.push_back(refKey(r));
  }

  auto run = std::make_shared<BatchRun>();
  const uint64_t seq = batch.seq;
  const int64_t time_micros = batch.time_micros;
  auto fn = [this, prepared, run, seq, time_micros](vault::WriteTxn& txn) -> Status {
    *run = BatchRun{};
    CCAL_TRY(refuseAfterFailure(seq));
    auto last = readLastExecuted(txn, *meta_db_);
    if (!last) return last.error();
    if (*last != seq - 1) {
      return makeError(Errc::storage_error, "batch " + std::to_string(seq) + " cannot follow batch " +
                                                std::to_string(*last) + " in the store");
    }
    // This batch's consumption so far.
    std::unordered_map<Bytes, SecureHash, RefKeyHasher> consumed_now;
    std::unordered_set<SecureHash, SecureHashHasher> committed_now;
    BatchEffects effects;
    effects.seq = seq;
    std::vector<bool> ours;  // per input of the request at hand: consumed by it already
    auto consumerOf = [&](const Bytes& key) -> Result<std::optional<SecureHash>> {
      auto it = consumed_now.find(key);
      if (it != consumed_now.end()) return std::optional<SecureHash>(it->second);
      return consumedBefore(txn, key, seq);
    };

    for (const Prepared& p : *prepared) {
      NotarisationReply reply;
      reply.requestHash = p.requestHash;
      reply.batchSeq = seq;
      if (!p.checked) {
        reply.outcome = NotarisationReply::Outcome::error;
        reply.error = replyError(p.error, config_.limits);
        run->replies.push_back(std::move(reply));
        continue;
      }
      const Checked& c = *p.checked;
      reply.txId = c.txId;

      // Inputs: already ours (a re-notarisation), free, or taken by another.
      bool all_ours = !c.inputs.empty();
      ours.assign(c.inputs.size(), false);
      for (size_t k = 0; k < c.inputs.size(); ++k) {
        auto by = consumerOf(p.inputKeys[k]);
        if (!by) return by.error();
        if (!*by) {
          all_ours = false;
        } else if (**by == c.txId) {
          ours[k] = true;
        } else {
          all_ours = false;
          reply.conflicts.push_back(StateConflict{c.inputs[k], consumingTxIdHash(**by), false});
        }
      }
      bool committed_before =
          all_ours || (c.inputs.empty() && (committed_now.count(c.txId) ||
                                            txn.get(*txs_db_, c.txId.view()).has_value()));
      if (committed_before) {
        // The same answer as the first time, whatever has happened since
        // to its references or the clock.
        reply.outcome = NotarisationReply::Outcome::success;
        run->replies.push_back(std::move(reply));
        continue;
      }
      for (size_t k = 0; k < c.references.size(); ++k) {
        auto by = consumerOf(p.referenceKeys[k]);
        if (!by) return by.error();
        if (*by) reply.conflicts.push_back(StateConflict{c.references[k], consumingTxIdHash(**by), true});
      }
      if (!reply.conflicts.empty()) {
        reply.outcome = NotarisationReply::Outcome::conflict;
        run->replies.push_back(std::move(reply));
        continue;
      }
      if (c.timeWindow && !c.timeWindow->contains(time_micros)) {
        reply.outcome = NotarisationReply::Outcome::error;
        reply.error = makeError(Errc::invalid_transaction,
                                "the time window " + describeWindow(*c.timeWindow) +
                                    " does not contain the notary's time " + std::to_string(time_micros));
        run->replies.push_back(std::move(reply));
        continue;
      }
      for (size_t k = 0; k < c.inputs.size(); ++k) {
        // (Inputs consumed by this transaction before are not consumed again.)
        if (ours[k]) continue;
        consumed_now.emplace(p.inputKeys[k], c.txId);
        effects.consumed.push_back(ConsumedState{c.inputs[k], c.txId});
      }
      if (c.inputs.empty()) {
        committed_now.insert(c.txId);
        effects.committedWithoutInputs.push_back(c.txId);
      }
      reply.outcome = NotarisationReply::Outcome::success;
      run->replies.push_back(std::move(reply));
    }

    // The consumed index: in memory until a pass writes every batch's since
    // the last pass, sorted, with this batch (notary_meta records which).
    uint64_t merged = 0;  // (open() wrote the record)
    if (auto m = txn.get(*meta_db_, asBytes(merged_through_key))) merged = fromBe64(*m).value_or(0);
    Bytes seq_key = be64(seq);
    if (seq - merged >= config_.consumed_merge_interval_batches ||
        unmerged_.size() + consumed_now.size() >= config_.consumed_unmerged_states_max) {
      std::vector<std::pair<const Bytes*, const SecureHash*>> puts;
      puts.reserve(consumed_now.size());
      for (const auto& [key, tx] : consumed_now) puts.emplace_back(&key, &tx);
      CCAL_TRY(writePass(txn, seq, std::move(puts)));
      run->merged = true;
    } else {
      std::lock_guard lock(unmerged_mutex_);
      for (auto& [key, tx] : consumed_now) unmerged_.insert_or_assign(key, Unmerged{tx, seq});
    }
    for (const auto& tx : effects.committedWithoutInputs) CCAL_TRY(txn.put(*txs_db_, tx.view(), seq_key));
    run->effects = effects.encode();
    CCAL_TRY(txn.put(*effects_db_, seq_key, run->effects));
    CCAL_TRY(txn.put(*meta_db_, asBytes(last_executed_key), seq_key));
    run->replyBytes.reserve(run->replies.size());
    for (const auto& r : run->replies) run->replyBytes.push_back(r.encode());
    run->wrote = true;
    return {};
  };

  // Signed as soon as the outcome is settled, while the write becomes
  // durable; decided gets the replies then, done once durable (posts to
  // complete_on run in order, so the signing is done when done runs).
  auto executed = std::make_shared<std::optional<Executed>>();
  auto on_decided = [this, run, seq, executed, decided = std::move(decided)] {
    // (The writer may run the write again, into `run`, if its commit finds
    // the map full: the settled outputs are taken out first.)
    auto settled = std::make_shared<BatchRun>();
    settled->replies = std::move(run->replies);
    settled->replyBytes = std::move(run->replyBytes);
    settled->effects = std::move(run->effects);
    auto sign = [this, alive = std::weak_ptr<int>(alive_), settled, seq, executed, decided] {
      // (Posted: the machine may be gone by then — its replica stopped —,
      // and so is whoever waits for the replies.)
      if (alive.expired()) return;
      executed->emplace(signReplies(seq, *settled));
      if (decided) decided(**executed);
    };
    if (config_.complete_on == nullptr) return sign();
    config_.complete_on->post(std::move(sign));
  };
  auto on_done = [this, run, seq, executed, done = std::move(done)](const Status& status) {
    if (!status) {
      rewindQueued(seq);  // the replica stays where it was (a failed batch is fatal for it)
      if (run->wrote) {
        // The commit (or its sync) failed: the batch may be in the store
        // after all, so what is in memory stays as the store may hold it,
        // and every later write is refused rather than built on either.
        failed_seq_ = seq;
      } else {
        // Refused before writing: nothing of this batch, or of a later one
        // (which cannot follow it), is in the store.
        dropUnmerged([seq](uint64_t s) { return s >= seq; });
      }
      Error error = makeError(status.error().code, "batch " + std::to_string(seq) + " not executed: " +
                                                       status.error().message);
      if (config_.complete_on == nullptr) {
        done(error);
      } else {
        config_.complete_on->post([done, error]() { done(error); });
      }
      return;
    }
    // Written and durable: the entries of this pass leave memory.
    if (run->merged) dropUnmerged([seq](uint64_t s) { return s <= seq; });
    last_executed_.store(seq);
    auto finish = [alive = std::weak_ptr<int>(alive_), executed, done] {
      if (alive.expired()) return;  // (its sign did not run either)
      CCAL_ASSERT_MSG(executed->has_value(),
                      "a durable batch's replies were signed when it was decided");
      done(std::move(**executed));
    };
    if (config_.complete_on == nullptr) return finish();
    config_.complete_on->post(std::move(finish));
  };
  store_.submit(std::move(fn), std::move(on_decided), std::move(on_done));
}

void UniquenessStateMachine::rewindQueued(uint64_t failed_seq) {
  uint64_t queued = last_queued_.load();
  while (queued >= failed_seq && !last_queued_.compare_exchange_weak(queued, failed_seq - 1)) {
  }
}

// --- state transfer -------------------------------------------------------------------

void UniquenessStateMachine::applyEffects(uint64_t seq, ByteView effects_bytes, std::function<void(Status)> done) {
  CCAL_ASSERT_MSG(seq == last_queued_ + 1, "effects are applied in sequence, without gaps");
  auto effects = BatchEffects::decode(effects_bytes, config_.limits);
  if (!effects) {
    done(makeError(effects.error().code, "effects of batch " + std::to_string(seq) + ": " + effects.error().message));
    return;
  }
  if (effects->seq != seq) {
    done(makeError(Errc::malformed, "effects of batch " + std::to_string(effects->seq) + " given as batch " +
                                        std::to_string(seq)));
    return;
  }
  last_queued_ = seq;
  auto shared = std::make_shared<BatchEffects>(std::move(effects).value());
  auto bytes = std::make_shared<Bytes>(effects_bytes.begin(), effects_bytes.end());
  auto wrote = std::make_shared<bool>(false);
  auto fn = [this, shared, bytes, seq, wrote](vault::WriteTxn& txn) -> Status {
    *wrote = false;
    CCAL_TRY(refuseAfterFailure(seq));
    auto last = readLastExecuted(txn, *meta_db_);
    if (!last) return last.error();
    if (*last != seq - 1) {
      return makeError(Errc::storage_error, "effects of batch " + std::to_string(seq) +
                                                " cannot follow batch " + std::to_string(*last) + " in the store");
    }
    std::map<Bytes, SecureHash> puts;
    for (const auto& c : shared->consumed) {
      Bytes key = refKey(c.ref);
      auto stored = consumedBefore(txn, key, seq);
      if (!stored) return stored.error();
      if (*stored && **stored != c.consumingTxId) {
        // Certified effects that contradict our own state: this replica's
        // state has diverged from the cluster's, which no input can fix.
        return makeError(Errc::storage_error, "state " + c.ref.toString() + " is consumed here by another "
                                              "transaction than batch " + std::to_string(seq) + " says");
      }
      if (!puts.emplace(std::move(key), c.consumingTxId).second) {
        return makeError(Errc::malformed, "effects of batch " + std::to_string(seq) + " consume " +
                                              c.ref.toString() + " twice");
      }
    }
    // Applied effects go to the index at once, with whatever is in memory
    // (a pass): the record of what open() must replay stays within the
    // merge interval however long a transfer is.
    std::vector<std::pair<const Bytes*, const SecureHash*>> pass;
    pass.reserve(puts.size());
    for (const auto& [key, tx] : puts) pass.emplace_back(&key, &tx);
    CCAL_TRY(writePass(txn, seq, std::move(pass)));
    Bytes seq_key = be64(seq);
    for (const auto& tx : shared->committedWithoutInputs)
      CCAL_TRY(txn.put(*txs_db_, tx.view(), seq_key));
    CCAL_TRY(txn.put(*effects_db_, seq_key, *bytes));
    CCAL_TRY(txn.put(*meta_db_, asBytes(last_executed_key), seq_key));
    *wrote = true;
    return {};
  };
  store_.submit(std::move(fn), [this, seq, wrote, done = std::move(done)](const Status& status) {
    Status result;
    if (status) dropUnmerged([seq](uint64_t s) { return s <= seq; });
    if (!status) {
      if (*wrote) failed_seq_ = seq;  // as for a batch: it may be in the store after all
      rewindQueued(seq);
      result = makeError(status.error().code, "effects of batch " + std::to_string(seq) +
                                                  " not applied: " + status.error().message);
    } else {
      last_executed_.store(seq);
    }
    if (config_.complete_on == nullptr) {
      done(result);
    } else {
      config_.complete_on->post([done, result]() { done(result); });
    }
  });
}

Result<Bytes> UniquenessStateMachine::effects(uint64_t seq) const {
  auto txn = store_.read();
  auto v = txn.get(*effects_db_, be64(seq));
  if (!v) return makeError(Errc::not_found, "no effects of batch " + std::to_string(seq) + " are stored");
  return Bytes(v->begin(), v->end());
}

Result<std::optional<SecureHash>> UniquenessStateMachine::consumedBy(const StateRef& ref) const {
  const Bytes key = refKey(ref);
  {
    std::lock_guard lock(unmerged_mutex_);
    auto u = unmerged_.find(key);
    if (u != unmerged_.end() && u->second.seq <= last_executed_.load())
      return std::optional<SecureHash>(u->second.tx);
  }
  auto txn = store_.read();
  auto v = txn.get(*consumed_db_, key);
  if (!v) return std::optional<SecureHash>();
  auto h = SecureHash::fromBytes(*v);
  if (!h) return makeError(Errc::storage_error, "notary_consumed holds a value of the wrong length");
  return std::optional<SecureHash>(*h);
}

Result<SecureHash> UniquenessStateMachine::stateDigest() const {
  // Held throughout: a pass that commits between the read and the look at
  // memory would take its states out of memory unseen.
  std::lock_guard unmerged_lock(unmerged_mutex_);
  auto txn = store_.read();
  Sha256 h;
  h.update(asBytes("ccal.notary.uniqueness.state.v1"));
  auto last = readLastExecuted(txn, *meta_db_);
  if (!last) return last.error();
  Bytes last_bytes = be64(*last);
  h.update(last_bytes);
  // The consumed states: those written to notary_consumed and those still
  // in memory (where they are in the index is not part of the state).
  std::map<Bytes, Bytes> consumed;
  {
    auto cursor = txn.cursor(*consumed_db_);
    for (bool ok = cursor.first(); ok; ok = cursor.next()) {
      consumed.emplace(Bytes(cursor.key().begin(), cursor.key().end()),
                       Bytes(cursor.value().begin(), cursor.value().end()));
    }
    for (const auto& [key, u] : unmerged_) {
      if (u.seq <= *last) consumed[key] = Bytes(u.tx.view().begin(), u.tx.view().end());
    }
  }
  h.updateU32(static_cast<uint32_t>(consumed.size()));
  for (const auto& [k, v] : consumed) {
    h.updateU32(static_cast<uint32_t>(k.size())).update(k);
    h.updateU32(static_cast<uint32_t>(v.size())).update(v);
  }
  for (const vault::Db* db : {txs_db_, effects_db_}) {
    h.updateU32(static_cast<uint32_t>(txn.entries(*db)));
    auto cursor = txn.cursor(*db);
    for (bool ok = cursor.first(); ok; ok = cursor.next()) {
      h.updateU32(static_cast<uint32_t>(cursor.key().size())).update(cursor.key());
      h.updateU32(static_cast<uint32_t>(cursor.value().size())).update(cursor.value());
    }
  }
  return h.finish();
}

}  // namespace ccal::notary
