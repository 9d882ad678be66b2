#pragma once
// SignedTransaction: a WireTransaction and the signatures over its id.

#include <set>
#include <vector>

#include "ledger/crypto.h"
#include "ledger/transaction.h"

namespace ccal {

class SignedTransaction {
 public:
  SignedTransaction(WireTransaction tx, std::vector<DigitalSignature> signatures = {})
      : tx_(std::move(tx)), signatures_(std::move(signatures)) {}

  static Result<SignedTransaction> decode(ByteView bytes,
                                          const TransactionLimits& limits = default_transaction_limits);
  static Result<SignedTransaction> read(schema::SignedTransaction::Reader reader,
                                        const TransactionLimits& limits);
  Bytes encode() const;
  void write(schema::SignedTransaction::Builder builder) const;

  const WireTransaction& tx() const { return tx_; }
  const SecureHash& id() const { return tx_.id(); }
  const std::vector<DigitalSignature>& signatures() const { return signatures_; }

  // Signs the id with `key` and adds the signature (a key that has already
  // signed is not added twice).
  SignedTransaction& signWith(const KeyPair& key);
  SignedTransaction& addSignature(const DigitalSignature& signature);
  DigitalSignature signatureBy(const KeyPair& key) const;

  // Every signature verifies over this id (bad_signature names the key) and
  // every required signer is fulfilled (missing_signatures names the keys).
  Status verifyRequiredSignatures() const;
  // The same, except that the keys in `allowed_missing` may be unfulfilled
  // (e.g. the notary's before notarisation).
  Status verifySignaturesExcept(const std::vector<Key>& allowed_missing) const;
  // Checks only that each present signature verifies.
  Status checkSignaturesAreValid() const;

  std::vector<Key> missingSigningKeys() const;
  std::set<PublicKey> signers() const;

 private:
  WireTransaction tx_;
  std::vector<DigitalSignature> signatures_;
};

}  // namespace ccal
