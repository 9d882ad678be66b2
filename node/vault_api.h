#pragma once
// The vault over the control API (issue 7): states by type, by the fields
// each contract declares queryable, by status, relevance, participant and
// linear id, paged and sorted -- served by vault::Vault::query (its
// indexes), never by a scan here.
//
//   POST /api/v1/vault/query   (read-only)
//   {"type": "ccal.token.TokenState" | "token",       optional; a short alias
//                                                      is the last part of a
//                                                      type, without "State"
//    "status": "unconsumed" | "consumed" | "all",      default unconsumed
//    "relevance": "participant" | "observed" | "all",  default all
//    "fields": [{"name": "amount", "op": ">=", "value": 100},
//               {"name": "owner", "op": "=", "value": "O=Sanya Farmers Cooperative, L=Sanya, C=CN"},
//               {"name": "due", "op": "between", "values": ["2027-01-01", "2027-12-31"]}],
//    "participant": X.500 name,  "linear_id": hex,
//    "page_size": 1..1000 (default 200), "page": 1.. | "cursor": from next_cursor,
//    "sort": "amount" | "-amount" | {"by": "amount", "descending": true}}
//   -> {"total", "page", "has_more", "next_cursor",
//       "states": [{"ref": "txid:index", "type", "contract", "status", "relevance",
//                   "recorded", "consumed_by"?, "consumed"?, "notary", "participants": [name],
//                   "fields": {declared field: value}}]}
//
//   GET /api/v1/vault/transactions/{id}  (read-only) -> the transaction's
//       inputs, references, outputs (as above, by index), commands and
//       signers, notary, time window and who signed; 404 when not recorded.
//
// Field values: int64 fields take a JSON integer (or its decimal text);
// text fields a string; time fields an integer of microseconds since the
// epoch, "YYYY-MM-DD" or "YYYY-MM-DDTHH:MM:SSZ" (answered in that last
// form); hash fields (keys by their hash, ids) 64 hex digits or, for a key,
// a party's X.500 name (answered as the name when the network knows the
// key, else hex). Ops: = < <= > >= (one "value"), between (two "values",
// inclusive), in (one or more "values").
//
// Errors (400, code bad_query or malformed) name what is wrong: an unknown
// type (and the known ones), an unknown field (and the type's declared
// fields), an unknown op, a value of the wrong type, an unknown party,
// paging out of range; a foreign cursor is the vault's bad_query.

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ledger/contract.h"
#include "ledger/result.h"
#include "vault/vault.h"

namespace ccal::node {

class ApiServer;

inline constexpr size_t vault_query_fields_max = 32;         // conditions in one query
inline constexpr size_t vault_query_values_max = 1024;       // values of one "in"
inline constexpr uint32_t vault_query_page_size_default = 200;
inline constexpr size_t vault_query_cursor_bytes_max = 4096;

// Who a key is, for answers and for queries naming a party.
struct VaultPartyDirectory {
  // A party (member or notary) by X.500 name.
  std::function<std::optional<Party>(std::string_view name)> byName;
  // The X.500 name of the party whose key has this hash.
  std::function<std::optional<std::string>(const SecureHash& key_hash)> nameOfKeyHash;
};

// The registered state type that `type` names: the type itself, or a short
// alias (case-insensitive last part of the type, with or without "State":
// token, member, receivable, invoiceregistration). bad_query naming the
// known types when none or several match.
Result<std::string> resolveStateType(const ContractRegistry& registry, std::string_view type);

// The JSON body of POST /api/v1/vault/query as a vault query.
Result<vault::Query> parseVaultQuery(const nlohmann::json& body, const ContractRegistry& registry,
                                     const VaultPartyDirectory& parties,
                                     uint32_t page_size_max = vault::VaultConfig{}.page_size_max);

// One state as the API answers it.
nlohmann::json vaultStateJson(const vault::VaultState& state, const ContractRegistry& registry,
                              const VaultPartyDirectory& parties);

// Microseconds since the epoch as "YYYY-MM-DDTHH:MM:SS[.ffffff]Z", and back
// (also "YYYY-MM-DD" and an integer in text).
std::string isoTime(int64_t micros);
Result<int64_t> parseTimeMicros(std::string_view text);

class VaultApi {
 public:
  // All three must outlive the API server's threads.
  VaultApi(const vault::Vault& vault, const ContractRegistry& registry, VaultPartyDirectory parties)
      : vault_(vault), registry_(registry), parties_(std::move(parties)) {}

  void addRoutes(ApiServer& api);

  // The handlers, for tests without a socket.
  Result<nlohmann::json> query(const nlohmann::json& body) const;
  Result<nlohmann::json> transaction(std::string_view id_hex) const;
  // GET /api/v1/credit/report?subject=X500: the subject's credit history from
  // what this vault holds (contracts::creditReport over its loans and credit
  // records): {subject, loans_taken, repaid_on_time, late, defaulted, settled,
  // outstanding_minor, repaid_minor, text}; bad_query naming an unknown party.
  Result<nlohmann::json> creditReport(std::string_view subject) const;

 private:
  const vault::Vault& vault_;
  const ContractRegistry& registry_;
  VaultPartyDirectory parties_;
};

}  // namespace ccal::node
