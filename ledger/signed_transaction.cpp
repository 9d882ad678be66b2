#include "ledger/signed_transaction.h"

#include <algorithm>

#include "ledger/signature_codec.h"

namespace ccal {

DigitalSignature SignedTransaction::signatureBy(const KeyPair& key) const {
  return key.sign(signableBytes(id()));
}

SignedTransaction& SignedTransaction::signWith(const KeyPair& key) {
  return addSignature(signatureBy(key));
}

SignedTransaction& SignedTransaction::addSignature(const DigitalSignature& signature) {
  for (const auto& s : signatures_)
    if (s.by() == signature.by()) return *this;
  signatures_.push_back(signature);
  return *this;
}

std::set<PublicKey> SignedTransaction::signers() const {
  std::set<PublicKey> out;
  for (const auto& s : signatures_) out.insert(s.by());
  return out;
}

Status SignedTransaction::checkSignaturesAreValid() const {
  if (signatures_.empty()) return {};
  // Every signature of one version covers the same bytes; build them once.
  Bytes message = signableBytes(id());
  for (const auto& s : signatures_) {
    CCAL_ASSERT(s.version() == signature_version_current);
    Status ok = s.verify(message);
    if (!ok) {
      return makeError(Errc::bad_signature, "transaction " + id().hex() + ": " + ok.error().message);
    }
  }
  return {};
}

std::vector<Key> SignedTransaction::missingSigningKeys() const {
  std::set<PublicKey> present = signers();
  std::vector<Key> missing;
  for (const auto& key : tx_.requiredSigningKeys()) {
    if (!key.isFulfilledBy(present)) missing.push_back(key);
  }
  return missing;
}

Status SignedTransaction::verifySignaturesExcept(const std::vector<Key>& allowed_missing) const {
  CCAL_TRY(checkSignaturesAreValid());
  std::string names;
  for (const auto& key : missingSigningKeys()) {
    if (std::find(allowed_missing.begin(), allowed_missing.end(), key) != allowed_missing.end()) {
      continue;
    }
    if (!names.empty()) names += ", ";
    names += key.describe();
  }
  if (!names.empty()) {
    return makeError(Errc::missing_signatures,
                     "transaction " + id().hex() + " is missing signatures from: " + names);
  }
  return {};
}

Status SignedTransaction::verifyRequiredSignatures() const { return verifySignaturesExcept({}); }

void SignedTransaction::write(schema::SignedTransaction::Builder b) const {
  tx_.write(b.initTx());
  auto sigs = b.initSignatures(static_cast<unsigned>(signatures_.size()));
  for (size_t i = 0; i < signatures_.size(); ++i) writeSignature(sigs[static_cast<unsigned>(i)], signatures_[i]);
}

Bytes SignedTransaction::encode() const {
  return buildCanonical<schema::SignedTransaction>([&](auto b) { write(b); });
}

// A bound on signatures per transaction; each costs a verification.
static constexpr uint32_t signatures_max = 256;

Result<SignedTransaction> SignedTransaction::read(schema::SignedTransaction::Reader r,
                                                  const TransactionLimits& limits) {
  if (!r.hasTx()) return makeError(Errc::malformed, "signed transaction has no transaction");
  auto tx = WireTransaction::read(r.getTx(), limits);
  if (!tx) return tx.error();
  auto sigs = r.getSignatures();
  if (sigs.size() > signatures_max) {
    return makeError(Errc::too_large, std::to_string(sigs.size()) +
                                          " signatures is over the limit of " +
                                          std::to_string(signatures_max));
  }
  std::vector<DigitalSignature> signatures;
  signatures.reserve(sigs.size());
  for (size_t i = 0; i < sigs.size(); ++i) {
    auto s = sigs[i];
    auto where = [&](const Error& e) {
      return makeError(e.code, "signature " + std::to_string(i) + ": " + e.message);
    };
    auto sig = readSignature(s);
    if (!sig) return where(sig.error());
    for (const auto& other : signatures) {
      if (other.by() == sig->by()) {
        return where(makeError(Errc::malformed, "key " + sig->by().shortHex() + " signed twice"));
      }
    }
    signatures.push_back(*sig);
  }
  return SignedTransaction(std::move(tx).value(), std::move(signatures));
}

Result<SignedTransaction> SignedTransaction::decode(ByteView bytes, const TransactionLimits& limits) {
  ReadLimits read_limits;
  read_limits.message_bytes_max = limits.transaction_bytes_max + 64 * 1024;
  return decodeMessage<schema::SignedTransaction>(
      bytes, "signed transaction", Canonical::required,
      [&](auto r) { return read(r, limits); }, read_limits);
}

}  // namespace ccal
