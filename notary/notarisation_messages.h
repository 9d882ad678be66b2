#pragma once
// The notarisation messages (schemas/notary.capnp) as C++ values: the
// request a client sends, the reply each replica gives, the signed envelope
// carrying a reply's Merkle proof to its batch's signed root, and the
// effects a batch leaves in the replica's state (for state transfer).
//
// Every encoding is canonical and every decoder bounds what it reads and
// refuses anything else with an Error naming what is wrong; decoders never
// throw and never assert on untrusted bytes.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "ledger/bytes.h"
#include "ledger/crypto.h"
#include "ledger/filtered_transaction.h"
#include "ledger/result.h"
#include "ledger/secure_hash.h"
#include "ledger/signed_transaction.h"
#include "ledger/states.h"

namespace ccal::notary {

// Bounds on notarisation messages, in one place.
struct NotarisationLimits {
  size_t request_bytes_max = 4u << 20;        // one encoded request (validating: with dependencies)
  uint32_t dependencies_max = 256;            // transactions sent with a validating request
  size_t reply_bytes_max = 256u << 10;        // one encoded signed reply
  uint32_t proof_hashes_max = 32;             // Merkle proof of one reply (2^32 leaves)
  uint32_t batch_requests_max = 1u << 16;     // requests in one executed batch
  size_t effects_bytes_max = 64u << 20;       // one batch's encoded effects
  uint32_t error_message_bytes_max = 1024;    // text of an error reply
  TransactionLimits transaction;              // each transaction in a request
};

inline constexpr NotarisationLimits default_notarisation_limits{};

// What a validating notary receives: the transaction and its backchain.
struct ValidatingPayload {
  SignedTransaction transaction;
  std::vector<SignedTransaction> dependencies;
};

class NotarisationRequest {
 public:
  static NotarisationRequest nonValidating(std::string notary, FilteredTransaction ftx);
  static NotarisationRequest validating(std::string notary, SignedTransaction stx,
                                        std::vector<SignedTransaction> dependencies);

  // Canonical bytes only; every transaction in it decoded and checked (the
  // filtered transaction's proofs, the wire transactions' ledger rules).
  static Result<NotarisationRequest> decode(ByteView bytes,
                                            const NotarisationLimits& limits = default_notarisation_limits);
  // A non-validating request is written in canonical form directly; equal
  // to encodeBuilt(), which the tests check.
  Bytes encode() const;
  Bytes encodeBuilt() const;

  const std::string& notary() const { return notary_; }
  bool isValidating() const { return validating_.has_value(); }
  const FilteredTransaction& filtered() const;   // asserts !isValidating()
  const ValidatingPayload& validatingPayload() const;  // asserts isValidating()
  const SecureHash& txId() const;

 private:
  NotarisationRequest() = default;
  std::string notary_;
  std::optional<FilteredTransaction> filtered_;
  std::optional<ValidatingPayload> validating_;
};

// One StateRef already consumed by another transaction.
struct StateConflict {
  StateRef ref;
  SecureHash consumingTxIdHash;  // SHA-256 of the consuming transaction's id
  bool isReference = false;      // a reference input of the request, not an input

  bool operator==(const StateConflict&) const = default;
};

// The hash a conflict names for a consuming transaction id.
SecureHash consumingTxIdHash(const SecureHash& consuming_tx_id);

struct NotarisationReply {
  enum class Outcome : uint8_t { success, conflict, error };

  SecureHash requestHash;  // SHA-256 of the request body
  SecureHash txId;         // zero when the request did not decode
  uint64_t batchSeq = 0;
  Outcome outcome = Outcome::success;
  std::vector<StateConflict> conflicts;  // outcome == conflict, in request order
  Error error;                           // outcome == error

  // A success is written in canonical form directly (one per request per
  // replica per batch); equal to encodeBuilt(), which the tests check.
  Bytes encode() const;
  Bytes encodeBuilt() const;  // through a Cap'n Proto builder, canonicalized
  static Result<NotarisationReply> decode(ByteView bytes,
                                          const NotarisationLimits& limits = default_notarisation_limits);
  // Equal answers regardless of the batch that gave them (a replica that
  // executed a retransmission in a later batch gives the same answer).
  bool sameAnswer(const NotarisationReply& other) const;
  std::string describe() const;  // for logs and error messages
};

const char* outcomeName(NotarisationReply::Outcome outcome);

// The leaf of a batch's reply tree for one canonical reply.
SecureHash replyLeaf(ByteView reply_bytes);
// What a replica signs once per batch: a domain tag, a layout version, the
// batch's sequence number, its number of replies and the root over them.
Bytes batchRootSignableBytes(uint64_t batch_seq, uint32_t reply_count, const SecureHash& root);

// A replica's answer to one request of a batch. A success is proven by its
// transaction signature (a batch signature over the transaction ids of the
// batch's successes, ledger/crypto.h) and carries no batch-root signature
// or proof; every other answer (conflict, error) is proven by the batch-root
// signature over all the batch's replies, with its proof.
struct SignedNotarisationReply {
  Bytes reply;  // canonical NotarisationReply
  uint32_t leafIndex = 0;  // this reply's place among the batch's replies
  uint32_t leafCount = 0;
  std::vector<SecureHash> proof;                  // to the batch root; empty on a success
  std::optional<DigitalSignature> rootSignature;  // absent on a success
  std::optional<DigitalSignature> txSignature;    // over signableBytes(txId), on a success

  Bytes encode() const;
  // The same bytes, built with Cap'n Proto's builder and canonicalize()
  // (the reference encode() is tested against; slower).
  Bytes encodeBuilt() const;
  static Result<SignedNotarisationReply> decode(
      ByteView bytes, const NotarisationLimits& limits = default_notarisation_limits);
  // What a client needs of a success: the reply and the transaction
  // signature (which alone proves it), without the canonical-form check and
  // without reading the batch-root proof and signature (proof and
  // rootSignature stay empty). Anything but a success is read with decode(),
  // whose bytes a conflict proof carries.
  static Result<SignedNotarisationReply> decodeForSuccess(
      ByteView bytes, const NotarisationLimits& limits = default_notarisation_limits);
  // The root the proof leads to from this reply's leaf (merkle_proof_invalid
  // when the proof does not fit leafIndex and leafCount).
  Result<SecureHash> root() const;
};

// A state consumed by a batch, and by which transaction.
struct ConsumedState {
  StateRef ref;
  SecureHash consumingTxId;

  bool operator==(const ConsumedState&) const = default;
};

struct BatchEffects {
  uint64_t seq = 0;
  std::vector<ConsumedState> consumed;               // in execution order
  std::vector<SecureHash> committedWithoutInputs;    // transactions with no inputs, in order

  // Written in canonical form directly (one per batch per replica, with a
  // state per input); equal to encodeBuilt(), which the tests check.
  Bytes encode() const;
  Bytes encodeBuilt() const;
  static Result<BatchEffects> decode(ByteView bytes,
                                     const NotarisationLimits& limits = default_notarisation_limits);
  bool operator==(const BatchEffects&) const = default;
};

}  // namespace ccal::notary
