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
