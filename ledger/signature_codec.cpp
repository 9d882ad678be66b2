#include "ledger/signature_codec.h"

#include "ledger/capnp_io.h"

namespace ccal {

void writeSignature(schema::DigitalSignature::Builder b, const DigitalSignature& s) {
  auto by = b.initBy();
  by.setScheme(static_cast<uint16_t>(s.by().scheme()));
  by.setKey(asData(s.by().view()));
  b.setScheme(static_cast<uint16_t>(s.scheme()));
  b.setVersion(s.version());
  b.setSignature(asData(s.view()));
  if (const auto& batch = s.batch()) {
    auto out = b.initBatch();
    out.setLeafIndex(batch->leafIndex);
    out.setLeafCount(batch->leafCount);
    auto path = out.initPath(static_cast<unsigned>(batch->path.size()));
    for (size_t i = 0; i < batch->path.size(); ++i) path.set(static_cast<unsigned>(i), asData(batch->path[i].view()));
  }
}

void writeSignature(CanonicalWriter& out, size_t pointer_word, const DigitalSignature& s) {
  // DigitalSignature: data {scheme u16, version u16}, pointers {by, signature, batch}.
  const uint64_t data = uint64_t{static_cast<uint16_t>(s.scheme())} | uint64_t{s.version()} << 16;
  const auto& batch = s.batch();
  const size_t at = out.structAt(pointer_word, data != 0 ? 1 : 0, batch ? 3 : 2);
  const size_t pointers = at + (data != 0 ? 1 : 0);
  if (data != 0) out.setBits(at, 0, 64, data);
  // PublicKey: data {scheme u16}, pointers {key}.
  const auto key_scheme = static_cast<uint16_t>(s.by().scheme());
  const size_t by = out.structAt(pointers, key_scheme != 0 ? 1 : 0, 1);
  if (key_scheme != 0) out.setBits(by, 0, 16, key_scheme);
  out.dataAt(by + (key_scheme != 0 ? 1 : 0), s.by().view());
  out.dataAt(pointers + 1, s.view());
  if (batch) {
    // BatchProof: data {leafIndex u32, leafCount u32}, pointers {path}.
    const uint64_t leaf = uint64_t{batch->leafIndex} | uint64_t{batch->leafCount} << 32;
    const size_t b = out.structAt(pointers + 2, leaf != 0 ? 1 : 0, 1);
    if (leaf != 0) out.setBits(b, 0, 64, leaf);
    out.hashListAt(b + (leaf != 0 ? 1 : 0), batch->path);
  }
}

Result<DigitalSignature> readSignature(schema::DigitalSignature::Reader r) {
  if (!r.hasBy()) return makeError(Errc::malformed, "signature names no key");
  auto by = PublicKey::fromBytes(r.getBy().getScheme(), asByteView(r.getBy().getKey()));
  if (!by) return by.error();
  std::optional<BatchProof> batch;
  if (r.hasBatch()) {
    auto in = r.getBatch();
    auto path = in.getPath();
    if (path.size() > batch_signature_path_hashes_max) {
      return makeError(Errc::too_large, "batch signature proof has " + std::to_string(path.size()) +
                                            " hashes, over the limit of " +
                                            std::to_string(batch_signature_path_hashes_max));
    }
    batch.emplace();
    batch->leafIndex = in.getLeafIndex();
    batch->leafCount = in.getLeafCount();
    batch->path.reserve(path.size());
    for (unsigned i = 0; i < path.size(); ++i) {
      auto h = SecureHash::fromBytes(asByteView(path[i]));
      if (!h) return makeError(h.error().code, "batch signature proof hash " + std::to_string(i) + ": " +
                                                   h.error().message);
      batch->path.push_back(*h);
    }
  }
  return DigitalSignature::fromParts(*by, r.getScheme(), r.getVersion(), asByteView(r.getSignature()),
                                     std::move(batch));
}

}  // namespace ccal
