#pragma once
// The parts of a transaction: state references, states, commands, parties,
// time windows, and the canonical encoding of each as a transaction component.

#include <compare>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "ledger/bytes.h"
#include "ledger/capnp_io.h"
#include "ledger/composite_key.h"
#include "ledger/result.h"
#include "ledger/secure_hash.h"
#include "schemas/ledger.capnp.h"

namespace ccal {

// Bounds on the fields of a component; a decoder refuses anything larger.
struct ComponentLimits {
  uint32_t name_bytes_max = 256;          // contract names, state types, X.500 names
  uint32_t state_data_bytes_max = 64 << 10;
  uint32_t command_data_bytes_max = 16 << 10;
  uint32_t participants_max = 64;
  uint32_t signers_max = 64;

  bool operator==(const ComponentLimits&) const = default;
};

inline constexpr ComponentLimits default_component_limits{};

// Identifies one output of one transaction: consumed at most once, ever.
struct StateRef {
  SecureHash txId;
  uint32_t index = 0;

  std::string toString() const;  // "<tx id hex>:<index>"
  auto operator<=>(const StateRef&) const = default;
  bool operator==(const StateRef&) const = default;
};

struct StateRefHasher {
  size_t operator()(const StateRef& r) const { return SecureHashHasher{}(r.txId) ^ r.index; }
};

// A named identity on the network and the key it signs with.
struct Party {
  std::string name;  // X.500, e.g. "O=Haikou Fishing Cooperative, L=Haikou, C=CN"
  Key owningKey;

  bool operator==(const Party&) const = default;
};

// Both bounds in microseconds since the Unix epoch; a missing bound is open.
// The window is [from, until).
struct TimeWindow {
  std::optional<int64_t> fromMicros;
  std::optional<int64_t> untilMicros;

  bool contains(int64_t micros) const {
    return (!fromMicros || micros >= *fromMicros) && (!untilMicros || micros < *untilMicros);
  }
  bool operator==(const TimeWindow&) const = default;
};

// The contract code identity that states were created under.
struct ContractConstraint {
  bool alwaysAccept = false;  // tests only
  SecureHash codeHash;        // when !alwaysAccept

  bool operator==(const ContractConstraint&) const = default;
};

struct TransactionState {
  std::string contract;   // registered contract name
  std::string stateType;  // schema type of `data`
  Bytes data;             // canonical bytes of the contract's own state struct
  std::vector<Key> participants;
  Party notary;
  std::optional<uint32_t> encumbrance;
  ContractConstraint constraint;

  bool operator==(const TransactionState&) const = default;
};

// A command's intent; its required signers travel in the signers group.
struct Command {
  std::string type;  // e.g. "ccal.Cash.Move"
  Bytes data;        // canonical bytes of the command's struct, or empty
  std::vector<Key> signers;

  bool operator==(const Command&) const = default;
};

// --- component encodings (canonical Cap'n Proto) ------------------------------

Bytes encodeStateRef(const StateRef& ref);
Bytes encodeTransactionState(const TransactionState& state);
Bytes encodeCommandValue(const Command& command);    // type + data
Bytes encodeCommandSigners(const Command& command);  // signers
Bytes encodeParty(const Party& party);
Bytes encodeTimeWindow(const TimeWindow& window);
Bytes encodeHashComponent(const SecureHash& hash);  // attachments, parameters

Result<StateRef> decodeStateRef(ByteView bytes);
Result<TransactionState> decodeTransactionState(
    ByteView bytes, const ComponentLimits& limits = default_component_limits);
// Decodes the value half of a command; signers are left empty.
Result<Command> decodeCommandValue(ByteView bytes,
                                   const ComponentLimits& limits = default_component_limits);
Result<std::vector<Key>> decodeCommandSigners(
    ByteView bytes, const ComponentLimits& limits = default_component_limits);
Result<Party> decodeParty(ByteView bytes, const ComponentLimits& limits = default_component_limits);
Result<TimeWindow> decodeTimeWindow(ByteView bytes);
Result<SecureHash> decodeHashComponent(ByteView bytes, std::string_view what);

// Readers and writers for the same structs embedded in other messages.
// Readers may throw kj::Exception; call them within decodeMessage().
Result<StateRef> readStateRef(schema::StateRef::Reader reader);
void writeStateRef(schema::StateRef::Builder builder, const StateRef& ref);
Result<Party> readParty(schema::Party::Reader reader, const ComponentLimits& limits);
void writeParty(schema::Party::Builder builder, const Party& party);
Result<TransactionState> readTransactionState(schema::TransactionState::Reader reader,
                                              const ComponentLimits& limits);
void writeTransactionState(schema::TransactionState::Builder builder, const TransactionState& state);

}  // namespace ccal
