#pragma once
// WireTransaction: a transaction as it is hashed, signed and sent.
//
// A transaction is nine component groups (inputs, references, outputs,
// commands, attachments, notary, time window, signers, parameters), each a
// list of canonical component encodings. Its id is the Merkle root over the
// group hashes; each component's leaf is salted with a nonce derived from the
// transaction's random privacy salt, so no hidden component can be guessed
// from its hash (see merkle.h).
//
// A WireTransaction object is always well formed: construction and decoding
// check every component and the ledger rules that need no other transaction.

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "ledger/bytes.h"
#include "ledger/capnp_io.h"
#include "ledger/result.h"
#include "ledger/secure_hash.h"
#include "ledger/states.h"

namespace ccal {

enum class ComponentGroup : uint32_t {
  inputs = 0,
  references = 1,
  outputs = 2,
  commands = 3,
  attachments = 4,
  notary = 5,
  time_window = 6,
  signers = 7,
  parameters = 8,
};

inline constexpr uint32_t component_group_count = 9;
const char* componentGroupName(ComponentGroup group);

inline constexpr size_t privacy_salt_bytes = 32;

struct TransactionLimits {
  uint32_t inputs_max = 1024;
  uint32_t references_max = 256;
  uint32_t outputs_max = 1024;
  uint32_t commands_max = 64;
  uint32_t attachments_max = 64;
  uint32_t transaction_bytes_max = 4u << 20;  // the whole encoded transaction
  ComponentLimits component;
};

inline constexpr TransactionLimits default_transaction_limits{};

class WireTransaction {
 public:
  using Groups = std::array<std::vector<Bytes>, component_group_count>;

  // Checks components and ledger rules; computes the id.
  static Result<WireTransaction> fromGroups(Groups groups, ByteView privacy_salt,
                                            const TransactionLimits& limits = default_transaction_limits);
  static Result<WireTransaction> decode(ByteView bytes,
                                        const TransactionLimits& limits = default_transaction_limits);
  static Result<WireTransaction> read(schema::WireTransaction::Reader reader,
                                      const TransactionLimits& limits);

  Bytes encode() const;
  void write(schema::WireTransaction::Builder builder) const;

  const SecureHash& id() const { return id_; }
  const Groups& groups() const { return groups_; }
  const std::vector<Bytes>& group(ComponentGroup g) const {
    return groups_[static_cast<uint32_t>(g)];
  }
  const std::array<SecureHash, component_group_count>& groupHashes() const { return group_hashes_; }
  ByteView privacySalt() const { return {salt_.data(), salt_.size()}; }

  const std::vector<StateRef>& inputs() const { return inputs_; }
  const std::vector<StateRef>& references() const { return references_; }
  const std::vector<TransactionState>& outputs() const { return outputs_; }
  const std::vector<Command>& commands() const { return commands_; }  // with their signers
  const std::vector<SecureHash>& attachments() const { return attachments_; }
  const std::optional<Party>& notary() const { return notary_; }
  const std::optional<TimeWindow>& timeWindow() const { return time_window_; }
  const std::optional<SecureHash>& networkParametersHash() const { return parameters_hash_; }

  // The keys that must sign: every command's signers, and the notary's key
  // when the transaction spends or references states or has a time window.
  std::vector<Key> requiredSigningKeys() const;
  bool needsNotarySignature() const;

 private:
  WireTransaction() = default;
  Status decodeComponents(const TransactionLimits& limits);
  void computeId();

  Groups groups_;
  std::array<uint8_t, privacy_salt_bytes> salt_{};
  std::array<SecureHash, component_group_count> group_hashes_;
  SecureHash id_;

  std::vector<StateRef> inputs_;
  std::vector<StateRef> references_;
  std::vector<TransactionState> outputs_;
  std::vector<Command> commands_;
  std::vector<SecureHash> attachments_;
  std::optional<Party> notary_;
  std::optional<TimeWindow> time_window_;
  std::optional<SecureHash> parameters_hash_;
};

// The Merkle id of a transaction's component groups under a privacy salt,
// and each group's hash (see merkle.h for the tree).
SecureHash computeTransactionId(const WireTransaction::Groups& groups, ByteView privacy_salt,
                                std::array<SecureHash, component_group_count>* group_hashes = nullptr);

// The exact bytes a transaction signature covers: a domain tag, the
// signature layout version and the transaction id.
Bytes signableBytes(const SecureHash& tx_id, uint16_t version = signature_version_current);

// Builds a WireTransaction from typed parts.
class TransactionBuilder {
 public:
  TransactionBuilder() = default;
  explicit TransactionBuilder(Party notary) : notary_(std::move(notary)) {}

  TransactionBuilder& setNotary(Party notary);
  TransactionBuilder& addInput(const StateRef& ref);
  TransactionBuilder& addReference(const StateRef& ref);
  TransactionBuilder& addOutput(TransactionState state);
  TransactionBuilder& addCommand(Command command);
  TransactionBuilder& addAttachment(const SecureHash& hash);
  TransactionBuilder& setTimeWindow(const TimeWindow& window);
  TransactionBuilder& setNetworkParametersHash(const SecureHash& hash);
  // Fixes the privacy salt (tests, golden vectors); otherwise it is random.
  TransactionBuilder& setPrivacySalt(ByteView salt);

  Result<WireTransaction> build(const TransactionLimits& limits = default_transaction_limits) const;

 private:
  std::optional<Party> notary_;
  std::vector<StateRef> inputs_;
  std::vector<StateRef> references_;
  std::vector<TransactionState> outputs_;
  std::vector<Command> commands_;
  std::vector<SecureHash> attachments_;
  std::optional<TimeWindow> time_window_;
  std::optional<SecureHash> parameters_hash_;
  std::optional<Bytes> salt_;
};

}  // namespace ccal
