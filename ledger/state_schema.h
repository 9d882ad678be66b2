#pragma once
// What a contract declares about its states for the vault: the fields a
// user may query (amount, currency, due date, counterparty, LC number, ...),
// the linear id of states that evolve (a loan, a letter of credit), and for
// fungible token states the token type, issuer and amount that selection
// needs. The declaration lives with the contract, so adding a contract needs
// no change to the vault.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "ledger/result.h"
#include "ledger/secure_hash.h"
#include "ledger/states.h"

namespace ccal {

enum class FieldType : uint8_t {
  int64 = 1,   // amounts in minor units, counts
  text = 2,    // currency codes, references, names
  time = 3,    // microseconds since the Unix epoch
  hash = 4,    // ids, and keys by their hash (Key::hash())
};

const char* fieldTypeName(FieldType type);

// int64 and time are held as int64_t; text as std::string; hash as SecureHash.
using FieldValue = std::variant<int64_t, std::string, SecureHash>;

bool fieldValueMatches(FieldType type, const FieldValue& value);
std::string describeFieldValue(const FieldValue& value);

struct FieldDecl {
  std::string name;
  FieldType type;
};

// A fungible amount: `amount` units of `token` (e.g. "CNY") issued by `issuer`.
struct FungibleAmount {
  std::string token;
  SecureHash issuer;  // the issuer's key hash
  int64_t amount = 0;
};

// What the vault indexes of one state.
struct StateView {
  std::optional<SecureHash> linearId;
  std::vector<std::pair<std::string, FieldValue>> fields;  // declared fields only
  std::optional<FungibleAmount> fungible;
};

class StateSchema {
 public:
  virtual ~StateSchema() = default;
  // The TransactionState::stateType this schema describes.
  virtual std::string_view stateType() const = 0;
  virtual std::vector<FieldDecl> fields() const = 0;
  // Pure and deterministic; an error if the state's data does not decode.
  virtual Result<StateView> view(const TransactionState& state) const = 0;
};

}  // namespace ccal
