#include "ledger/result.h"

namespace ccal {

const char* errcName(Errc code) {
  switch (code) {
    case Errc::ok: return "ok";
    case Errc::malformed: return "malformed";
    case Errc::too_large: return "too_large";
    case Errc::too_deep: return "too_deep";
    case Errc::not_canonical: return "not_canonical";
    case Errc::bad_length: return "bad_length";
    case Errc::unknown_scheme: return "unknown_scheme";
    case Errc::bad_signature: return "bad_signature";
    case Errc::missing_signatures: return "missing_signatures";
    case Errc::bad_key: return "bad_key";
    case Errc::merkle_proof_invalid: return "merkle_proof_invalid";
    case Errc::id_mismatch: return "id_mismatch";
    case Errc::not_visible: return "not_visible";
    case Errc::invalid_transaction: return "invalid_transaction";
    case Errc::unknown_contract: return "unknown_contract";
    case Errc::constraint_rejected: return "constraint_rejected";
    case Errc::contract_rejected: return "contract_rejected";
    case Errc::certificate_invalid: return "certificate_invalid";
    case Errc::certificate_expired: return "certificate_expired";
    case Errc::certificate_revoked: return "certificate_revoked";
    case Errc::name_constraint: return "name_constraint";
    case Errc::not_found: return "not_found";
    case Errc::conflict: return "conflict";
    case Errc::locked: return "locked";
    case Errc::insufficient_balance: return "insufficient_balance";
    case Errc::bad_query: return "bad_query";
    case Errc::storage_full: return "storage_full";
    case Errc::storage_error: return "storage_error";
    case Errc::schema_mismatch: return "schema_mismatch";
    case Errc::io_error: return "io_error";
    case Errc::timeout: return "timeout";
    case Errc::unavailable: return "unavailable";
    case Errc::unauthorized: return "unauthorized";
    case Errc::forbidden: return "forbidden";
  }
  return "unknown_error";
}

std::string Error::toString() const { return std::string(errcName(code)) + ": " + message; }

}  // namespace ccal
