#include "ledger/filtered_transaction.h"

#include "ledger/merkle.h"

namespace ccal {

namespace {


Error groupError(ComponentGroup g, Errc code, const std::string& why) {
  return makeError(code, std::string("filtered ") + componentGroupName(g) + ": " + why);
}

}  // namespace

FilteredTransaction FilteredTransaction::build(
    const WireTransaction& tx, const std::function<bool(ComponentGroup, uint32_t)>& reveal) {
  FilteredTransaction ftx;
  ftx.id_ = tx.id();
  ftx.group_hashes_ = tx.groupHashes();
  for (uint32_t g = 0; g < component_group_count; ++g) {
    auto group = static_cast<ComponentGroup>(g);
    const auto& components = tx.groups()[g];
    Group out{group, static_cast<uint32_t>(components.size()), {}, {}, {}, {}};
    for (uint32_t i = 0; i < components.size(); ++i) {
      if (reveal(group, i)) out.indices.push_back(i);
    }
    // A hidden group is its hash alone (the transaction has it): its
    // components are not hashed again.
    if (out.indices.empty()) continue;
    std::vector<SecureHash> leaves;
    leaves.reserve(components.size());
    auto next = out.indices.begin();
    for (uint32_t i = 0; i < components.size(); ++i) {
      SecureHash n = merkle::nonce(tx.privacySalt(), g, i);
      leaves.push_back(merkle::leaf(n, components[i]));
      if (next != out.indices.end() && *next == i) {
        out.components.push_back(components[i]);
        out.nonces.push_back(n);
        ++next;
      }
    }
    out.proof = merkle::prove(leaves, out.indices);
    ftx.groups_.push_back(std::move(out));
  }
  // The proofs are merkle::prove's over the transaction's own leaves (the
  // receiver verifies them; the tests check that every reveal does): only
  // the revealed components are read here, as a receiver reads them.
  Status decoded = ftx.decodeRevealed(default_transaction_limits);
  CCAL_ASSERT_MSG(decoded.ok(), "a filtered transaction built from a valid one must decode");
  return ftx;
}

FilteredTransaction FilteredTransaction::forNotary(const WireTransaction& tx) {
  return build(tx, [](ComponentGroup g, uint32_t) {
    return g == ComponentGroup::inputs || g == ComponentGroup::references ||
           g == ComponentGroup::notary || g == ComponentGroup::time_window;
  });
}

Status FilteredTransaction::verify(const TransactionLimits& limits) {
  CCAL_TRY(verifyProofs());
  return decodeRevealed(limits);
}

Status FilteredTransaction::verifyProofs() const {
  int64_t last = -1;
  for (const auto& group : groups_) {
    auto g = static_cast<uint32_t>(group.group);
    if (g >= component_group_count) {
      return makeError(Errc::malformed, "unknown component group index " + std::to_string(g));
    }
    if (static_cast<int64_t>(g) <= last) {
      return makeError(Errc::malformed, "filtered groups are not in ascending order");
    }
    last = g;
    size_t n = group.indices.size();
    if (group.components.size() != n || group.nonces.size() != n) {
      return groupError(group.group, Errc::malformed,
                        "indices, components and nonces differ in count");
    }
    std::vector<SecureHash> leaves;
    leaves.reserve(n);
    for (size_t i = 0; i < n; ++i) leaves.push_back(merkle::leaf(group.nonces[i], group.components[i]));
    auto root = merkle::rootFromProof(group.componentCount, group.indices, leaves, group.proof);
    if (!root) return groupError(group.group, root.error().code, root.error().message);
    if (merkle::group(group.componentCount, *root) != group_hashes_[g]) {
      return groupError(group.group, Errc::merkle_proof_invalid,
                        "revealed components do not hash to the group's root");
    }
  }
  if (merkle::root(group_hashes_) != id_) {
    return makeError(Errc::id_mismatch,
                     "the group hashes do not lead to transaction id " + id_.hex());
  }
  return {};
}

// The revealed components we interpret, with the same checks as a full
// transaction.
Status FilteredTransaction::decodeRevealed(const TransactionLimits& limits) {
  for (const auto& group : groups_) {
    for (size_t i = 0; i < group.components.size(); ++i) {
      auto where = [&](const Error& e) {
        return groupError(group.group, e.code,
                          "component " + std::to_string(group.indices[i]) + ": " + e.message);
      };
      const Bytes& c = group.components[i];
      switch (group.group) {
        case ComponentGroup::inputs:
        case ComponentGroup::references: {
          auto ref = decodeStateRef(c);
          if (!ref) return where(ref.error());
          (group.group == ComponentGroup::inputs ? inputs_ : references_).push_back(*ref);
          break;
        }
        case ComponentGroup::notary: {
          auto party = decodeParty(c, limits.component);
          if (!party) return where(party.error());
          notary_ = std::move(party).value();
          break;
        }
        case ComponentGroup::time_window: {
          auto window = decodeTimeWindow(c);
          if (!window) return where(window.error());
          time_window_ = *window;
          break;
        }
        default:
          break;  // revealed but interpreted by whoever asked for it
      }
    }
  }
  return {};
}

const FilteredTransaction::Group* FilteredTransaction::find(ComponentGroup group) const {
  for (const auto& g : groups_)
    if (g.group == group) return &g;
  return nullptr;
}

Status FilteredTransaction::checkAllVisible(ComponentGroup group) const {
  const Group* g = find(group);
  if (g == nullptr) {
    // Hidden entirely: acceptable only if the group is provably empty.
    static const SecureHash empty_group = merkle::group(0, SecureHash::zero());
    if (group_hashes_[static_cast<uint32_t>(group)] == empty_group) return {};
    return makeError(Errc::not_visible,
                     std::string("the ") + componentGroupName(group) + " group is hidden");
  }
  if (g->indices.size() != g->componentCount) {
    return makeError(Errc::not_visible,
                     std::string("only ") + std::to_string(g->indices.size()) + " of " +
                         std::to_string(g->componentCount) + " " + componentGroupName(group) +
                         " components are revealed");
  }
  return {};
}

void FilteredTransaction::write(schema::FilteredTransaction::Builder b) const {
  b.setId(asData(id_.view()));
  auto hashes = b.initGroupHashes(component_group_count);
  for (uint32_t g = 0; g < component_group_count; ++g) hashes.set(g, asData(group_hashes_[g].view()));
  auto groups = b.initGroups(static_cast<unsigned>(groups_.size()));
  for (size_t i = 0; i < groups_.size(); ++i) {
    const auto& in = groups_[i];
    auto out = groups[i];
    out.setGroupIndex(static_cast<uint32_t>(in.group));
    out.setComponentCount(in.componentCount);
    auto indices = out.initIndices(static_cast<unsigned>(in.indices.size()));
    for (size_t j = 0; j < in.indices.size(); ++j) indices.set(j, in.indices[j]);
    auto components = out.initComponents(static_cast<unsigned>(in.components.size()));
    for (size_t j = 0; j < in.components.size(); ++j) components.set(j, asData(in.components[j]));
    auto nonces = out.initNonces(static_cast<unsigned>(in.nonces.size()));
    for (size_t j = 0; j < in.nonces.size(); ++j) nonces.set(j, asData(in.nonces[j].view()));
    auto proof = out.initProof(static_cast<unsigned>(in.proof.size()));
    for (size_t j = 0; j < in.proof.size(); ++j) proof.set(j, asData(in.proof[j].view()));
  }
}

// Layout: FilteredTransaction pointers {id, groupHashes, groups};
// FilteredComponentGroup data {groupIndex u32, componentCount u32},
// pointers {indices, components, nonces, proof} (every list set, if empty).
void FilteredTransaction::writeCanonical(CanonicalWriter& out, size_t pointer_word) const {
  const size_t at = out.structAt(pointer_word, 0, 3);
  out.dataAt(at, id_.view());
  out.hashListAt(at + 1, group_hashes_);
  // A list's elements are one size, the largest one's: a data word unless
  // every element's is zero.
  bool data = false;
  for (const auto& g : groups_)
    data = data || static_cast<uint32_t>(g.group) != 0 || g.componentCount != 0;
  const uint16_t data_words = data ? 1 : 0;
  const size_t element_words = data_words + 4u;
  const size_t first =
      out.structListAt(at + 2, static_cast<uint32_t>(groups_.size()), data_words, 4);
  for (size_t i = 0; i < groups_.size(); ++i) {
    const Group& g = groups_[i];
    const size_t element = first + i * element_words;
    if (data)
      out.setBits(element, 0, 64,
                  uint64_t{static_cast<uint32_t>(g.group)} | uint64_t{g.componentCount} << 32);
    const size_t pointers = element + data_words;
    out.u32ListAt(pointers, g.indices);
    out.dataListAt(pointers + 1, g.components);
    out.hashListAt(pointers + 2, g.nonces);
    out.hashListAt(pointers + 3, g.proof);
  }
}

Bytes FilteredTransaction::encode() const {
  CanonicalWriter out(64);
  writeCanonical(out, CanonicalWriter::root);
  return out.finish();
}

Bytes FilteredTransaction::encodeBuilt() const {
  return buildCanonical<schema::FilteredTransaction>([&](auto b) { write(b); });
}

Result<FilteredTransaction> FilteredTransaction::read(schema::FilteredTransaction::Reader r,
                                                      const TransactionLimits& limits) {
  FilteredTransaction ftx;
  auto id = SecureHash::fromBytes(asByteView(r.getId()));
  if (!id) return makeError(id.error().code, "filtered transaction id: " + id.error().message);
  ftx.id_ = *id;
  auto hashes = r.getGroupHashes();
  if (hashes.size() != component_group_count) {
    return makeError(Errc::malformed, "a filtered transaction needs " +
                                          std::to_string(component_group_count) +
                                          " group hashes, got " + std::to_string(hashes.size()));
  }
  for (uint32_t g = 0; g < component_group_count; ++g) {
    auto h = SecureHash::fromBytes(asByteView(hashes[g]));
    if (!h) return makeError(h.error().code, "group hash: " + h.error().message);
    ftx.group_hashes_[g] = *h;
  }
  auto groups = r.getGroups();
  if (groups.size() > component_group_count) {
    return makeError(Errc::malformed, "too many filtered groups");
  }
  // The largest group limit bounds every count in a proof, so a forged
  // componentCount cannot make verification do unbounded work.
  uint32_t count_max = std::max({limits.inputs_max, limits.outputs_max, limits.references_max,
                                 limits.commands_max, limits.attachments_max});
  for (auto in : groups) {
    Group out;
    uint32_t g = in.getGroupIndex();
    if (g >= component_group_count) {
      return makeError(Errc::malformed, "unknown component group index " + std::to_string(g));
    }
    out.group = static_cast<ComponentGroup>(g);
    out.componentCount = in.getComponentCount();
    if (out.componentCount > count_max) {
      return groupError(out.group, Errc::too_large,
                        "component count " + std::to_string(out.componentCount) + " over the limit");
    }
    for (auto i : in.getIndices()) out.indices.push_back(i);
    for (auto c : in.getComponents()) out.components.emplace_back(c.begin(), c.end());
    for (auto n : in.getNonces()) {
      auto h = SecureHash::fromBytes(asByteView(n));
      if (!h) return groupError(out.group, h.error().code, "nonce: " + h.error().message);
      out.nonces.push_back(*h);
    }
    for (auto p : in.getProof()) {
      auto h = SecureHash::fromBytes(asByteView(p));
      if (!h) return groupError(out.group, h.error().code, "proof hash: " + h.error().message);
      out.proof.push_back(*h);
    }
    ftx.groups_.push_back(std::move(out));
  }
  CCAL_TRY(ftx.verify(limits));
  return ftx;
}

Result<FilteredTransaction> FilteredTransaction::decode(ByteView bytes,
                                                        const TransactionLimits& limits) {
  ReadLimits read_limits;
  read_limits.message_bytes_max = limits.transaction_bytes_max;
  return decodeMessage<schema::FilteredTransaction>(
      bytes, "filtered transaction", Canonical::required,
      [&](auto r) { return read(r, limits); }, read_limits);
}

}  // namespace ccal
