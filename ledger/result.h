#pragma once
// Expected failures are values: an Error with a code a program can switch on
// and a message a person can act on. Result<T> holds a T or an Error.

#include <cstdint>
#include <string>
#include <utility>
#include <variant>

#include "ledger/assert.h"

namespace ccal {

enum class Errc : uint16_t {
  ok = 0,
  malformed,             // bytes that do not decode, or decode to something invalid
  too_large,             // over a size, count or traversal limit
  too_deep,              // over a nesting limit
  not_canonical,         // a hashed or signed encoding that is not the canonical one
  bad_length,            // a key, signature, hash or salt of the wrong length
  unknown_scheme,        // a signature scheme or version id this build does not know
  bad_signature,         // a signature that does not verify
  missing_signatures,    // required signers not fulfilled
  bad_key,               // an invalid composite key (threshold, weights, duplicates)
  merkle_proof_invalid,  // a proof that does not lead to the claimed root
  id_mismatch,           // content whose id is not the one claimed
  not_visible,           // a component that a filtered transaction hides but must show
  invalid_transaction,   // a transaction that breaks a ledger rule (not a contract rule)
  unknown_contract,      // no contract registered under that name
  constraint_rejected,   // the contract constraint of a state is not satisfied
  contract_rejected,     // a contract's verify refused the transaction
  certificate_invalid,   // certificate path does not validate (signature, issuer, usage)
  certificate_expired,   // outside the validity period
  certificate_revoked,   // on the issuer's revocation list
  name_constraint,       // issued for a name the issuer may not issue for
  not_found,             // a referenced thing (state, transaction, key) is not known
  conflict,              // a state already consumed by another transaction
  locked,                // a state soft-locked by another flow
  insufficient_balance,  // fungible selection cannot reach the amount
  bad_query,             // a query naming unknown fields or types, or bad paging
  storage_full,          // the store's map, the disk or a file size limit is full
  storage_error,         // the store failed an operation (I/O error, corruption, a failing request)
  schema_mismatch,       // a store file made by another program, schema version or LMDB format
  io_error,              // an operating-system operation failed (file, process, socket)
  timeout,               // something did not happen within its time limit
  unavailable,           // a service or peer that cannot be reached or refuses to serve now
  unauthorized,          // missing or wrong credentials
  forbidden,             // credentials that are valid but not allowed to do this
};

const char* errcName(Errc code);

struct Error {
  Errc code = Errc::ok;
  std::string message;

  std::string toString() const;
};

inline Error makeError(Errc code, std::string message) { return Error{code, std::move(message)}; }

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}
  Result(Error error) : v_(std::move(error)) {
    CCAL_ASSERT_MSG(std::get<Error>(v_).code != Errc::ok, "an Error must carry a failure code");
  }

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  const T& value() const& {
    CCAL_ASSERT_MSG(ok(), "value() of a failed Result");
    return std::get<0>(v_);
  }
  T& value() & {
    CCAL_ASSERT_MSG(ok(), "value() of a failed Result");
    return std::get<0>(v_);
  }
  T&& value() && {
    CCAL_ASSERT_MSG(ok(), "value() of a failed Result");
    return std::get<0>(std::move(v_));
  }
  const T& operator*() const& { return value(); }
  T& operator*() & { return value(); }
  const T* operator->() const { return &value(); }
  T* operator->() { return &value(); }

  const Error& error() const {
    CCAL_ASSERT_MSG(!ok(), "error() of a successful Result");
    return std::get<1>(v_);
  }

 private:
  std::variant<T, Error> v_;
};

// Status: success, or an Error.
class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Error error) : error_(std::move(error)) {
    CCAL_ASSERT_MSG(error_.code != Errc::ok, "an Error must carry a failure code");
  }
  static Status success() { return Status(); }

  bool ok() const { return error_.code == Errc::ok; }
  explicit operator bool() const { return ok(); }
  const Error& error() const {
    CCAL_ASSERT_MSG(!ok(), "error() of a successful Status");
    return error_;
  }

 private:
  Error error_;
};

}  // namespace ccal

// Propagate a failed Status/Result to the caller.
#define CCAL_TRY(expr)                          \
  do {                                          \
    auto&& ccal_try_ = (expr);                  \
    if (!ccal_try_.ok()) return ccal_try_.error(); \
  } while (false)

// Assign a successful Result's value to `lhs`, or return its error to the caller.
#define CCAL_TRY_ASSIGN(lhs, expr)                 \
  do {                                             \
    auto ccal_try_ = (expr);                       \
    if (!ccal_try_.ok()) return ccal_try_.error(); \
    lhs = std::move(ccal_try_).value();            \
  } while (false)
