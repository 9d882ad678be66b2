#include "vault/index_keys.h"

#include "ledger/assert.h"

namespace ccal::vault::keys {

void appendInt(Bytes& out, int64_t v) {
  uint64_t u = static_cast<uint64_t>(v) ^ (uint64_t{1} << 63);
  for (int i = 7; i >= 0; --i) out.push_back(static_cast<uint8_t>(u >> (8 * i)));
}

void appendBe64(Bytes& out, uint64_t v) {
  for (int i = 7; i >= 0; --i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

uint64_t readBe64(ByteView b) {
  CCAL_ASSERT(b.size() >= 8);
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = v << 8 | b[i];
  return v;
}

int64_t readInt(ByteView b) {
  CCAL_ASSERT(b.size() >= 8);
  uint64_t u = 0;
  for (int i = 0; i < 8; ++i) u = u << 8 | b[i];
  return static_cast<int64_t>(u ^ (uint64_t{1} << 63));
}

void appendText(Bytes& out, std::string_view text) {
  for (char c : text) {
    out.push_back(static_cast<uint8_t>(c));
    if (c == '\0') out.push_back(0xff);
  }
  out.push_back(0x00);
  out.push_back(0x01);
}

void appendHash(Bytes& out, const SecureHash& h) { append(out, h.view()); }

void appendRef(Bytes& out, const StateRef& ref) {
  append(out, ref.txId.view());
  for (int i = 3; i >= 0; --i) out.push_back(static_cast<uint8_t>(ref.index >> (8 * i)));
}

void appendField(Bytes& out, const FieldValue& value) {
  if (auto* i = std::get_if<int64_t>(&value)) {
    appendInt(out, *i);
  } else if (auto* s = std::get_if<std::string>(&value)) {
    appendText(out, *s);
  } else {
    appendHash(out, std::get<SecureHash>(value));
  }
}

Bytes refKey(const StateRef& ref) {
  Bytes out;
  out.reserve(ref_bytes);
  appendRef(out, ref);
  return out;
}

StateRef refFromKeyEnd(ByteView key) {
  CCAL_ASSERT(key.size() >= ref_bytes);
  auto tail = key.subspan(key.size() - ref_bytes);
  StateRef ref;
  ref.txId = SecureHash::fromBytes(tail.first(SecureHash::size_bytes)).value();
  uint32_t index = 0;
  for (size_t i = SecureHash::size_bytes; i < ref_bytes; ++i) index = index << 8 | tail[i];
  ref.index = index;
  return ref;
}

void appendStateKey(Bytes& out, StateKey key) {
  appendBe64(out, key.seq);
  for (int i = 3; i >= 0; --i) out.push_back(static_cast<uint8_t>(key.index >> (8 * i)));
}

Bytes stateKey(StateKey key) {
  Bytes out;
  out.reserve(state_key_bytes);
  appendStateKey(out, key);
  return out;
}

StateKey stateKeyFromKeyEnd(ByteView key) {
  CCAL_ASSERT(key.size() >= state_key_bytes);
  auto tail = key.subspan(key.size() - state_key_bytes);
  StateKey out;
  out.seq = readBe64(tail);
  for (size_t i = seq_bytes; i < state_key_bytes; ++i) out.index = out.index << 8 | tail[i];
  return out;
}

void setStateKeyAtEnd(Bytes& key, StateKey state) { setStateKeyAtEnd(key.data(), key.size(), state); }

void setStateKeyAtEnd(uint8_t* key, size_t key_size, StateKey state) {
  CCAL_ASSERT(key_size >= state_key_bytes);
  uint8_t* p = key + key_size - state_key_bytes;
  for (int i = 7; i >= 0; --i) *p++ = static_cast<uint8_t>(state.seq >> (8 * i));
  for (int i = 3; i >= 0; --i) *p++ = static_cast<uint8_t>(state.index >> (8 * i));
}

Bytes seqKey(uint64_t seq) {
  Bytes out;
  out.reserve(seq_bytes);
  appendBe64(out, seq);
  return out;
}

std::optional<Bytes> prefixEnd(ByteView prefix) {
  Bytes end(prefix.begin(), prefix.end());
  while (!end.empty()) {
    if (end.back() != 0xff) {
      ++end.back();
      return end;
    }
    end.pop_back();
  }
  return std::nullopt;
}

}  // namespace ccal::vault::keys
