#pragma once
// Order-preserving byte encodings for the vault's index keys: comparing the
// encodings with memcmp (LMDB's default order) compares the values.
//   int64   8 bytes big-endian with the sign bit flipped
//   text    bytes with 0x00 escaped as 0x00 0xff, ended by 0x00 0x01, so a
//           text is never a prefix of a longer key that follows it
//   hash    the 32 bytes
//   ref     the transaction id's 32 bytes, then the index big-endian
//   state   a state's key in the vault (StateKey): its transaction's
//           recording sequence number (8 bytes big-endian), then its output
//           index (4 bytes big-endian); every index entry ends with one

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "ledger/bytes.h"
#include "ledger/state_schema.h"
#include "ledger/states.h"

namespace ccal::vault::keys {

inline constexpr size_t ref_bytes = SecureHash::size_bytes + 4;
inline constexpr size_t state_key_bytes = 8 + 4;
inline constexpr size_t seq_bytes = 8;

// Where a state lives in the vault: the sequence number the vault gave its
// transaction when it recorded it, and the output index. Keys made from it
// grow with recording order, so new states (and their index entries) are
// appended next to each other instead of landing on random B-tree pages.
struct StateKey {
  uint64_t seq = 0;
  uint32_t index = 0;
  auto operator<=>(const StateKey&) const = default;
};

void appendInt(Bytes& out, int64_t v);
// Unsigned big-endian (sequence numbers): byte order is numeric order.
void appendBe64(Bytes& out, uint64_t v);
uint64_t readBe64(ByteView eight_bytes);
void appendText(Bytes& out, std::string_view text);
void appendHash(Bytes& out, const SecureHash& h);
void appendRef(Bytes& out, const StateRef& ref);
void appendField(Bytes& out, const FieldValue& value);

Bytes refKey(const StateRef& ref);
void appendStateKey(Bytes& out, StateKey key);
Bytes stateKey(StateKey key);
// Reads the state key that ends an index key (the last state_key_bytes bytes).
StateKey stateKeyFromKeyEnd(ByteView key);
// Overwrites the last state_key_bytes bytes of `key` (index keys prepared
// before the writer knows the sequence number end with a placeholder).
void setStateKeyAtEnd(Bytes& key, StateKey state);
void setStateKeyAtEnd(uint8_t* key, size_t key_size, StateKey state);
Bytes seqKey(uint64_t seq);
// Reads the state ref that ends an index key (the last ref_bytes bytes).
StateRef refFromKeyEnd(ByteView key);
int64_t readInt(ByteView eight_bytes);

// The smallest key greater than every key that starts with `prefix`, or
// nullopt when there is none (the prefix is all 0xff).
std::optional<Bytes> prefixEnd(ByteView prefix);

}  // namespace ccal::vault::keys
