#pragma once
// The messages of the built-in flows and the encodings of their journaled
// call outcomes (schemas/builtin_flows.capnp). Every decoder validates and
// names what is wrong; a message of a kind the receiver does not expect at
// that point is refused naming both kinds.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "flows/services.h"
#include "ledger/signed_transaction.h"

namespace ccal::flows {

struct BuiltinMessage {
  enum class Kind : uint8_t { sign_request, signatures, fetch, transactions, finality, recorded };
  Kind kind = Kind::recorded;
  std::string check;                        // sign_request
  std::optional<SignedTransaction> stx;     // sign_request, finality
  bool observer = false;                    // finality
  std::vector<std::string> observers;       // sign_request: the finality's observers (X.500)
  std::vector<std::string> recipients;      // finality: every node it goes to, sender included
  std::vector<DigitalSignature> signatures; // signatures
  std::vector<SecureHash> ids;              // fetch
  std::vector<Bytes> transactions;          // transactions (decoded by the resolver)
};

const char* builtinMessageKindName(BuiltinMessage::Kind kind);

struct BuiltinMessageLimits {
  uint32_t list_entries_max = 1024;  // ids, transactions or signatures in one message
  uint32_t check_name_bytes_max = 256;
  uint32_t party_name_bytes_max = 1024;  // one X.500 name in observers or recipients
  TransactionLimits transaction;
};

Bytes encodeBuiltinMessage(const BuiltinMessage& message);
// Decodes a message and checks that its kind is one of `accepted`.
Result<BuiltinMessage> decodeBuiltinMessage(ByteView bytes,
                                            const std::vector<BuiltinMessage::Kind>& accepted,
                                            const BuiltinMessageLimits& limits = {});

// Call outcomes.
Bytes encodeIdList(const std::vector<SecureHash>& ids);
Result<std::vector<SecureHash>> decodeIdList(ByteView bytes);
// One entry per id asked for; nullopt when absent.
Bytes encodeTransactionList(const std::vector<std::optional<SignedTransaction>>& txs);
Result<std::vector<std::optional<SignedTransaction>>> decodeTransactionList(ByteView bytes);
Bytes encodeNotaryAnswer(const NotaryAnswer& answer);
Result<NotaryAnswer> decodeNotaryAnswer(ByteView bytes);

}  // namespace ccal::flows
