#include "notary/notarisation_messages.h"

#include <string_view>

#include "ledger/canonical_writer.h"
#include "ledger/capnp_io.h"
#include "ledger/merkle.h"
#include "ledger/signature_codec.h"
#include "schemas/notary.capnp.h"

namespace ccal::notary {

namespace {

namespace ns = ccal::schema::notary;

constexpr std::string_view batch_root_tag = "CCAL notary batch replies";
constexpr uint16_t batch_root_version = 1;
constexpr uint16_t errc_last = static_cast<uint16_t>(Errc::forbidden);

Result<DigitalSignature> readSignature(schema::DigitalSignature::Reader r, std::string_view what) {
  auto sig = ccal::readSignature(r);
  if (!sig) return makeError(sig.error().code, std::string(what) + ": " + sig.error().message);
  return *sig;
}

Result<SecureHash> readHash(capnp::Data::Reader data, std::string_view what) {
  auto h = SecureHash::fromBytes(asByteView(data));
  if (!h) return makeError(h.error().code, std::string(what) + ": " + h.error().message);
  return *h;
}

ReadLimits readLimits(size_t bytes_max) {
  ReadLimits limits;
  limits.message_bytes_max = bytes_max;
  limits.traversal_words_max = bytes_max / sizeof(capnp::word) * 2 + 64;
  return limits;
}

}  // namespace

// --- requests -------------------------------------------------------------------

NotarisationRequest NotarisationRequest::nonValidating(std::string notary, FilteredTransaction ftx) {
  NotarisationRequest r;
  r.notary_ = std::move(notary);
  r.filtered_.emplace(std::move(ftx));
  return r;
}

NotarisationRequest NotarisationRequest::validating(std::string notary, SignedTransaction stx,
                                                    std::vector<SignedTransaction> dependencies) {
  NotarisationRequest r;
  r.notary_ = std::move(notary);
  r.validating_.emplace(ValidatingPayload{std::move(stx), std::move(dependencies)});
  return r;
}

const FilteredTransaction& NotarisationRequest::filtered() const {
  CCAL_ASSERT(filtered_.has_value());
  return *filtered_;
}

const ValidatingPayload& NotarisationRequest::validatingPayload() const {
  CCAL_ASSERT(validating_.has_value());
  return *validating_;
}

const SecureHash& NotarisationRequest::txId() const {
  return validating_ ? validating_->transaction.id() : filtered_->id();
}

Bytes NotarisationRequest::encode() const {
  if (validating_) return encodeBuilt();
  // Written directly (one per notarisation): pointers {notary, the union's
  // nonValidating|validating}; data {the union's discriminant, 0 for
  // nonValidating: a zero word, truncated}.
  CanonicalWriter out(128);
  const size_t at = out.structAt(CanonicalWriter::root, 0, 2);
  out.textAt(at, notary_);
  filtered_->writeCanonical(out, at + 1);
  return out.finish();
}

Bytes NotarisationRequest::encodeBuilt() const {
  return buildCanonical<ns::NotarisationRequest>([&](ns::NotarisationRequest::Builder b) {
    b.setNotary(notary_);
    if (validating_) {
      auto v = b.initValidating();
      validating_->transaction.write(v.initTransaction());
      auto deps = v.initDependencies(static_cast<unsigned>(validating_->dependencies.size()));
      for (size_t i = 0; i < validating_->dependencies.size(); ++i) {
        validating_->dependencies[i].write(deps[static_cast<unsigned>(i)]);
      }
    } else {
      filtered_->write(b.initNonValidating());
    }
  });
}

Result<NotarisationRequest> NotarisationRequest::decode(ByteView bytes, const NotarisationLimits& limits) {
  return decodeMessage<ns::NotarisationRequest>(
      bytes, "notarisation request", Canonical::required,
      [&](ns::NotarisationRequest::Reader r) -> Result<NotarisationRequest> {
        NotarisationRequest out;
        auto name = r.getNotary();
        if (name.size() == 0) return makeError(Errc::malformed, "notarisation request names no notary");
        CCAL_TRY_ASSIGN(out.notary_,
                        readText(name, "notary name", limits.transaction.component.name_bytes_max));
        switch (r.which()) {
          case ns::NotarisationRequest::NON_VALIDATING: {
            auto ftx = FilteredTransaction::read(r.getNonValidating(), limits.transaction);
            if (!ftx) return makeError(ftx.error().code, "filtered transaction: " + ftx.error().message);
            out.filtered_.emplace(std::move(ftx).value());
            return out;
          }
          case ns::NotarisationRequest::VALIDATING: {
            auto v = r.getValidating();
            if (!v.hasTransaction()) return makeError(Errc::malformed, "validating request has no transaction");
            auto stx = SignedTransaction::read(v.getTransaction(), limits.transaction);
            if (!stx) return makeError(stx.error().code, "transaction: " + stx.error().message);
            auto deps = v.getDependencies();
            if (deps.size() > limits.dependencies_max) {
              return makeError(Errc::too_large, std::to_string(deps.size()) +
                                                    " dependencies is over the limit of " +
                                                    std::to_string(limits.dependencies_max));
            }
            std::vector<SignedTransaction> dependencies;
            dependencies.reserve(deps.size());
            for (unsigned i = 0; i < deps.size(); ++i) {
              auto dep = SignedTransaction::read(deps[i], limits.transaction);
              if (!dep) {
                return makeError(dep.error().code,
                                 "dependency " + std::to_string(i) + ": " + dep.error().message);
              }
              dependencies.push_back(std::move(dep).value());
            }
            out.validating_.emplace(ValidatingPayload{std::move(stx).value(), std::move(dependencies)});
            return out;
          }
        }
        return makeError(Errc::malformed, "notarisation request of an unknown mode");
      },
      readLimits(limits.request_bytes_max));
}

// --- replies ---------------------------------------------------------------------

SecureHash consumingTxIdHash(const SecureHash& consuming_tx_id) {
  return SecureHash::of(consuming_tx_id.view());
}

const char* outcomeName(NotarisationReply::Outcome outcome) {
  switch (outcome) {
    case NotarisationReply::Outcome::success: return "success";
    case NotarisationReply::Outcome::conflict: return "conflict";
    case NotarisationReply::Outcome::error: return "error";
  }
  return "?";
}

Bytes NotarisationReply::encode() const {
  if (outcome != Outcome::success) return encodeBuilt();
  // Layout: data {batchSeq u64, then the union's discriminant u16, 0 for
  // success: a zero word, truncated}, pointers {requestHash, txId, the
  // union's conflict|error: null for success, truncated}.
  const uint16_t data_words = batchSeq != 0 ? 1 : 0;
  CanonicalWriter out(16);
  const size_t at = out.structAt(CanonicalWriter::root, data_words, 2);
  if (data_words > 0) out.setBits(at, 0, 64, batchSeq);
  out.dataAt(at + data_words, requestHash.view());
  out.dataAt(at + data_words + 1, txId.view());
  return out.finish();
}

Bytes NotarisationReply::encodeBuilt() const {
  return buildCanonical<ns::NotarisationReply>([&](ns::NotarisationReply::Builder b) {
    b.setRequestHash(asData(requestHash.view()));
    b.setTxId(asData(txId.view()));
    b.setBatchSeq(batchSeq);
    switch (outcome) {
      case Outcome::success: b.setSuccess(); break;
      case Outcome::conflict: {
        auto list = b.initConflict(static_cast<unsigned>(conflicts.size()));
        for (size_t i = 0; i < conflicts.size(); ++i) {
          auto c = list[static_cast<unsigned>(i)];
          writeStateRef(c.initRef(), conflicts[i].ref);
          c.setConsumingTxIdHash(asData(conflicts[i].consumingTxIdHash.view()));
          c.setIsReference(conflicts[i].isReference);
        }
        break;
      }
      case Outcome::error: {
        auto e = b.initError();
        e.setCode(static_cast<uint16_t>(error.code));
        e.setMessage(error.message);
        break;
      }
    }
  });
}

Result<NotarisationReply> NotarisationReply::decode(ByteView bytes, const NotarisationLimits& limits) {
  return decodeMessage<ns::NotarisationReply>(
      bytes, "notarisation reply", Canonical::required,
      [&](ns::NotarisationReply::Reader r) -> Result<NotarisationReply> {
        NotarisationReply out;
        auto request_hash = readHash(r.getRequestHash(), "reply request hash");
        if (!request_hash) return request_hash.error();
        auto tx_id = readHash(r.getTxId(), "reply transaction id");
        if (!tx_id) return tx_id.error();
        out.requestHash = *request_hash;
        out.txId = *tx_id;
        out.batchSeq = r.getBatchSeq();
        // Batch 0: a refusal before ordering (StateMachine::rejection), only ever an error.
        if (out.batchSeq == 0 && r.which() != ns::NotarisationReply::ERROR) {
          return makeError(Errc::malformed, "a success or conflict reply names batch 0");
        }
        switch (r.which()) {
          case ns::NotarisationReply::SUCCESS: out.outcome = Outcome::success; return out;
          case ns::NotarisationReply::CONFLICT: {
            out.outcome = Outcome::conflict;
            auto list = r.getConflict();
            uint32_t max = limits.transaction.inputs_max + limits.transaction.references_max;
            if (list.size() == 0) return makeError(Errc::malformed, "a conflict reply names no state");
            if (list.size() > max) {
              return makeError(Errc::too_large, std::to_string(list.size()) +
                                                    " conflicts is over the limit of " + std::to_string(max));
            }
            for (unsigned i = 0; i < list.size(); ++i) {
              auto ref = readStateRef(list[i].getRef());
              if (!ref) return makeError(ref.error().code, "conflict " + std::to_string(i) + ": " + ref.error().message);
              auto h = readHash(list[i].getConsumingTxIdHash(), "conflict consuming transaction hash");
              if (!h) return h.error();
              out.conflicts.push_back(StateConflict{*ref, *h, list[i].getIsReference()});
            }
            return out;
          }
          case ns::NotarisationReply::ERROR: {
            out.outcome = Outcome::error;
            auto e = r.getError();
            if (e.getCode() == 0 || e.getCode() > errc_last) {
              return makeError(Errc::malformed, "error reply with unknown code " + std::to_string(e.getCode()));
            }
            auto text =
                readText(e.getMessage(), "error reply message", limits.error_message_bytes_max);
            if (!text) return text.error();
            out.error = Error{static_cast<Errc>(e.getCode()), std::move(text).value()};
            return out;
          }
        }
        return makeError(Errc::malformed, "notarisation reply of an unknown outcome");
      },
      readLimits(limits.reply_bytes_max));
}

bool NotarisationReply::sameAnswer(const NotarisationReply& o) const {
  return requestHash == o.requestHash && txId == o.txId && outcome == o.outcome && conflicts == o.conflicts &&
         error.code == o.error.code && error.message == o.error.message;
}

std::string NotarisationReply::describe() const {
  std::string out = std::string(outcomeName(outcome)) + " for transaction " + txId.hex() + " in batch " +
                    std::to_string(batchSeq);
  if (outcome == Outcome::conflict) {
    out += ":";
    for (const auto& c : conflicts) {
      out += " " + c.ref.toString() + (c.isReference ? " (reference)" : "") + " consumed by tx hash " +
             c.consumingTxIdHash.hex();
    }
  } else if (outcome == Outcome::error) {
    out += ": " + error.toString();
  }
  return out;
}

SecureHash replyLeaf(ByteView reply_bytes) { return merkle::leaf(SecureHash::zero(), reply_bytes); }

Bytes batchRootSignableBytes(uint64_t batch_seq, uint32_t reply_count, const SecureHash& root) {
  Bytes out(batch_root_tag.begin(), batch_root_tag.end());
  out.push_back(static_cast<uint8_t>(batch_root_version));
  out.push_back(static_cast<uint8_t>(batch_root_version >> 8));
  appendU64(out, batch_seq);
  appendU32(out, reply_count);
  append(out, root.view());
  return out;
}

Bytes SignedNotarisationReply::encode() const {
  // Written in canonical form directly (one per request per replica, the
  // hottest encoding of a notary); equal to encodeBuilt(), which the tests
  // check. Layout: data {leafIndex u32, leafCount u32 | hasTxSignature bit},
  // pointers {reply, proof, rootSignature, txSignature}.
  const bool tx = txSignature.has_value();
  const uint64_t leaf = uint64_t{leafIndex} | uint64_t{leafCount} << 32;
  const uint16_t data_words = tx ? 2 : (leaf != 0 ? 1 : 0);
  // (A 32-byte hash in a list: its pointer and 4 words; a signature ~20 words.)
  const size_t tx_path = tx && txSignature->batch() ? txSignature->batch()->path.size() : 0;
  CanonicalWriter out(64 + reply.size() / 8 + (proof.size() + tx_path) * 5);
  const size_t at =
      out.structAt(CanonicalWriter::root, data_words, tx ? 4 : (rootSignature ? 3 : 2));
  if (data_words > 0) out.setBits(at, 0, 64, leaf);
  if (tx) out.setBits(at + 1, 0, 1, 1);
  const size_t pointers = at + data_words;
  out.dataAt(pointers, reply);
  out.hashListAt(pointers + 1, proof);
  if (rootSignature) writeSignature(out, pointers + 2, *rootSignature);
  if (tx) writeSignature(out, pointers + 3, *txSignature);
  return out.finish();
}

Bytes SignedNotarisationReply::encodeBuilt() const {
  return buildCanonical<ns::SignedNotarisationReply>([&](ns::SignedNotarisationReply::Builder b) {
    b.setReply(asData(reply));
    b.setLeafIndex(leafIndex);
    b.setLeafCount(leafCount);
    auto p = b.initProof(static_cast<unsigned>(proof.size()));
    for (size_t i = 0; i < proof.size(); ++i) p.set(static_cast<unsigned>(i), asData(proof[i].view()));
    if (rootSignature) writeSignature(b.initRootSignature(), *rootSignature);
    if (txSignature) {
      writeSignature(b.initTxSignature(), *txSignature);
      b.setHasTxSignature(true);
    }
  });
}

namespace {

// whole: every part, in canonical form; else the reply and the transaction
// signature only (decodeForSuccess).
Result<SignedNotarisationReply> decodeSignedReply(ByteView bytes, const NotarisationLimits& limits,
                                                  bool whole) {
  return decodeMessage<ns::SignedNotarisationReply>(
      bytes, "signed notarisation reply", whole ? Canonical::required : Canonical::not_required,
      [&](ns::SignedNotarisationReply::Reader r) -> Result<SignedNotarisationReply> {
        SignedNotarisationReply out;
        auto reply_bytes = r.getReply();
        if (reply_bytes.size() == 0)
          return makeError(Errc::malformed, "signed reply carries no reply");
        out.reply.assign(reply_bytes.begin(), reply_bytes.end());
        out.leafIndex = r.getLeafIndex();
        out.leafCount = r.getLeafCount();
        if (out.leafCount == 0 || out.leafIndex >= out.leafCount) {
          return makeError(Errc::malformed, "reply leaf " + std::to_string(out.leafIndex) + " of " +
                                                std::to_string(out.leafCount));
        }
        if (whole) {
          auto proof_hashes = r.getProof();
          if (proof_hashes.size() > limits.proof_hashes_max) {
            return makeError(Errc::too_large, "reply proof of " +
                                                  std::to_string(proof_hashes.size()) +
                                                  " hashes is over the limit of " +
                                                  std::to_string(limits.proof_hashes_max));
          }
          for (unsigned i = 0; i < proof_hashes.size(); ++i) {
            auto h = readHash(proof_hashes[i], "reply proof hash");
            if (!h) return h.error();
            out.proof.push_back(*h);
          }
          if (r.hasRootSignature()) {
            auto root_sig = readSignature(r.getRootSignature(), "root signature");
            if (!root_sig) return root_sig.error();
            out.rootSignature = *root_sig;
          } else if (!r.getHasTxSignature()) {
            return makeError(Errc::malformed,
                             "signed reply has neither a root nor a transaction signature");
          }
        }
        if (r.getHasTxSignature()) {
          if (!r.hasTxSignature())
            return makeError(Errc::malformed, "signed reply lacks its transaction signature");
          auto tx_sig = readSignature(r.getTxSignature(), "transaction signature");
          if (!tx_sig) return tx_sig.error();
          out.txSignature = *tx_sig;
        } else if (r.hasTxSignature()) {
          return makeError(Errc::malformed, "signed reply carries a transaction signature it does not declare");
        }
        return out;
      },
      readLimits(limits.reply_bytes_max));
}

}  // namespace

Result<SignedNotarisationReply> SignedNotarisationReply::decode(ByteView bytes,
                                                                const NotarisationLimits& limits) {
  return decodeSignedReply(bytes, limits, true);
}

Result<SignedNotarisationReply> SignedNotarisationReply::decodeForSuccess(
    ByteView bytes, const NotarisationLimits& limits) {
  return decodeSignedReply(bytes, limits, false);
}

Result<SecureHash> SignedNotarisationReply::root() const {
  SecureHash leaf = replyLeaf(reply);
  uint32_t index = leafIndex;
  return merkle::rootFromProof(leafCount, std::span<const uint32_t>(&index, 1),
                               std::span<const SecureHash>(&leaf, 1), proof);
}

// --- effects ---------------------------------------------------------------------

Bytes BatchEffects::encode() const {
  // Layout: data {seq u64}, pointers {consumed, committedWithoutInputs};
  // ConsumedState: pointers {ref, consumingTxId}; StateRef: data {index
  // u32}, pointers {txId}. Preorder: the lists' elements, then each
  // element's objects in turn.
  const uint16_t data_words = seq != 0 ? 1 : 0;
  CanonicalWriter out(8 + consumed.size() * 13 + committedWithoutInputs.size() * 5);
  const size_t at = out.structAt(CanonicalWriter::root, data_words, 2);
  if (data_words > 0) out.setBits(at, 0, 64, seq);
  const size_t pointers = at + data_words;
  const size_t first = out.structListAt(pointers, static_cast<uint32_t>(consumed.size()), 0, 2);
  for (size_t i = 0; i < consumed.size(); ++i) {
    const size_t element = first + 2 * i;
    const StateRef& ref = consumed[i].ref;
    const uint16_t ref_data = ref.index != 0 ? 1 : 0;
    const size_t r = out.structAt(element, ref_data, 1);
    if (ref_data > 0) out.setBits(r, 0, 32, ref.index);
    out.dataAt(r + ref_data, ref.txId.view());
    out.dataAt(element + 1, consumed[i].consumingTxId.view());
  }
  out.hashListAt(pointers + 1, committedWithoutInputs);
  return out.finish();
}

Bytes BatchEffects::encodeBuilt() const {
  return buildCanonical<ns::BatchEffects>([&](ns::BatchEffects::Builder b) {
    b.setSeq(seq);
    auto list = b.initConsumed(static_cast<unsigned>(consumed.size()));
    for (size_t i = 0; i < consumed.size(); ++i) {
      auto c = list[static_cast<unsigned>(i)];
      writeStateRef(c.initRef(), consumed[i].ref);
      c.setConsumingTxId(asData(consumed[i].consumingTxId.view()));
    }
    auto txs = b.initCommittedWithoutInputs(static_cast<unsigned>(committedWithoutInputs.size()));
    for (size_t i = 0; i < committedWithoutInputs.size(); ++i) {
      txs.set(static_cast<unsigned>(i), asData(committedWithoutInputs[i].view()));
    }
  });
}

Result<BatchEffects> BatchEffects::decode(ByteView bytes, const NotarisationLimits& limits) {
  return decodeMessage<ns::BatchEffects>(
      bytes, "batch effects", Canonical::required,
      [&](ns::BatchEffects::Reader r) -> Result<BatchEffects> {
        BatchEffects out;
        out.seq = r.getSeq();
        if (out.seq == 0) return makeError(Errc::malformed, "effects of batch 0");
        auto list = r.getConsumed();
        uint64_t consumed_max = uint64_t{limits.batch_requests_max} * limits.transaction.inputs_max;
        if (list.size() > consumed_max) {
          return makeError(Errc::too_large, std::to_string(list.size()) + " consumed states is over the limit");
        }
        out.consumed.reserve(list.size());
        for (unsigned i = 0; i < list.size(); ++i) {
          auto ref = readStateRef(list[i].getRef());
          if (!ref) return makeError(ref.error().code, "consumed state " + std::to_string(i) + ": " + ref.error().message);
          auto by = readHash(list[i].getConsumingTxId(), "consuming transaction id");
          if (!by) return by.error();
          out.consumed.push_back(ConsumedState{*ref, *by});
        }
        auto txs = r.getCommittedWithoutInputs();
        if (txs.size() > limits.batch_requests_max) {
          return makeError(Errc::too_large, std::to_string(txs.size()) + " committed transactions is over the limit");
        }
        for (unsigned i = 0; i < txs.size(); ++i) {
          auto id = readHash(txs[i], "committed transaction id");
          if (!id) return id.error();
          out.committedWithoutInputs.push_back(*id);
        }
        return out;
      },
      readLimits(limits.effects_bytes_max));
}

}  // namespace ccal::notary
