#include "ledger/state_schema.h"

namespace ccal {

const char* fieldTypeName(FieldType type) {
  switch (type) {
    case FieldType::int64: return "int64";
    case FieldType::text: return "text";
    case FieldType::time: return "time";
    case FieldType::hash: return "hash";
  }
  return "unknown";
}

bool fieldValueMatches(FieldType type, const FieldValue& value) {
  switch (type) {
    case FieldType::int64:
    case FieldType::time: return std::holds_alternative<int64_t>(value);
    case FieldType::text: return std::holds_alternative<std::string>(value);
    case FieldType::hash: return std::holds_alternative<SecureHash>(value);
  }
  return false;
}

std::string describeFieldValue(const FieldValue& value) {
  if (auto* i = std::get_if<int64_t>(&value)) return std::to_string(*i);
  if (auto* s = std::get_if<std::string>(&value)) return "'" + *s + "'";
  return std::get<SecureHash>(value).shortHex();
}

}  // namespace ccal
