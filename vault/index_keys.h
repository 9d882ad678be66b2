#pragma once
// Order-preserving byte encodings for the vault's index keys: comparing the
// encodings with memcmp (LMDB's default order) compares the values.
//   int64   8 bytes big-endian with the sign bit flipped
//   text    bytes with 0x00 escaped as 0x00 0xff, ended by 0x00 0x01, so a
//           text is never a prefix of a longer key that follows it
//   hash    the 32 bytes
//   ref     the transaction id's 32 bytes, then the index big-endian

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "ledger/bytes.h"
#include "ledger/state_schema.h"
#include "ledger/states.h"

namespace ccal::vault::keys {

inline constexpr size_t ref_bytes = SecureHash::size_bytes + 4;

void appendInt(Bytes& out, int64_t v);
// Unsigned big-endian (sequence numbers): byte order is numeric order.
void appendBe64(Bytes& out, uint64_t v);
uint64_t readBe64(ByteView eight_bytes);
void appendText(Bytes& out, std::string_view text);
void appendHash(Bytes& out, const SecureHash& h);
void appendRef(Bytes& out, const StateRef& ref);
void appendField(Bytes& out, const FieldValue& value);

Bytes refKey(const StateRef& ref);
// Reads the state ref that ends an index key (the last ref_bytes bytes).
StateRef refFromKeyEnd(ByteView key);
int64_t readInt(ByteView eight_bytes);

// The smallest key greater than every key that starts with `prefix`, or
// nullopt when there is none (the prefix is all 0xff).
std::optional<Bytes> prefixEnd(ByteView prefix);

}  // namespace ccal::vault::keys
