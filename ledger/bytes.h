#pragma once
// Byte strings and their hex form.

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ccal {

using Bytes = std::vector<uint8_t>;
using ByteView = std::span<const uint8_t>;

std::string toHex(ByteView bytes);
// Lower- or upper-case hex, even length; nullopt for anything else.
std::optional<Bytes> fromHex(std::string_view hex);

inline ByteView asBytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// Appends integers little-endian, for building hashed preimages.
inline void appendU32(Bytes& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
inline void appendU64(Bytes& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
inline void append(Bytes& out, ByteView v) { out.insert(out.end(), v.begin(), v.end()); }

}  // namespace ccal
