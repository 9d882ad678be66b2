// Fuzzes FilteredTransaction::decode.
//
// For every decodable filtered transaction, checked against the claims read
// straight from the input (id and group hashes), independently of decode():
//  - its id is the id the input claims, and the Merkle root of the claimed
//    group hashes;
//  - each revealed group's components, nonces and proof lead to the claimed
//    hash of that group; groups are ascending and unique, indices strictly
//    ascending and inside the group;
//  - the typed views hold exactly the revealed inputs, references, notary
//    and time window;
//  - checkAllVisible() says ok exactly when the group is fully revealed or
//    provably empty;
//  - its encoding decodes to the same id and groups and re-encodes to the
//    same bytes.
//
// Almost every mutation of a valid input breaks a hash, so decode() would
// refuse it long before the components are looked at. So each input is also
// "repaired": read as a Cap'n Proto FilteredTransaction without checks, its
// group hashes and id are recomputed from what it reveals (any proof hashes
// will do), and the repaired bytes go through the same decode and checks.
// The fuzzer then explores indices, counts, proofs and revealed components.

#include <array>
#include <vector>

#include "ledger/filtered_transaction.h"
#include "ledger/merkle.h"
#include "test/fuzz/fuzz_common.h"

using namespace ccal;

namespace {

struct Claimed {
  SecureHash id;
  std::array<SecureHash, component_group_count> group_hashes;
};

// What the input claims, read without FilteredTransaction.
Claimed readClaims(ByteView bytes) {
  auto claimed = decodeMessage<schema::FilteredTransaction>(
      bytes, "claims", Canonical::not_required,
      [](schema::FilteredTransaction::Reader r) -> Result<Claimed> {
        Claimed c;
        c.id = SecureHash::fromBytes(asByteView(r.getId())).value();
        auto hashes = r.getGroupHashes();
        FUZZ_CHECK(hashes.size() == component_group_count);
        for (uint32_t g = 0; g < component_group_count; ++g) {
          c.group_hashes[g] = SecureHash::fromBytes(asByteView(hashes[g])).value();
        }
        return c;
      });
  FUZZ_CHECK(claimed.ok());
  return *claimed;
}

bool sameGroup(const FilteredTransaction::Group& a, const FilteredTransaction::Group& b) {
  return a.group == b.group && a.componentCount == b.componentCount && a.indices == b.indices &&
         a.components == b.components && a.nonces == b.nonces && a.proof == b.proof;
}

// The input with its group hashes and id made consistent with the groups it
// reveals, or an error when it is not a FilteredTransaction struct at all or
// a group's proof does not even have the right shape.
Result<Bytes> repair(ByteView bytes) {
  return decodeMessage<schema::FilteredTransaction>(
      bytes, "repair", Canonical::not_required,
      [](schema::FilteredTransaction::Reader r) -> Result<Bytes> {
        std::array<SecureHash, component_group_count> hashes;
        hashes.fill(merkle::group(0, SecureHash::zero()));
        auto in_hashes = r.getGroupHashes();
        for (uint32_t g = 0; g < component_group_count && g < in_hashes.size(); ++g) {
          auto h = SecureHash::fromBytes(asByteView(in_hashes[g]));
          if (h) hashes[g] = *h;
        }
        // Only the shapes decode() could accept: a list of empty structs costs
        // Cap'n Proto one word per element, so without this the repair itself
        // (not the code under test) could loop millions of times.
        auto groups = r.getGroups();
        if (groups.size() > component_group_count) return makeError(Errc::too_large, "groups");
        for (auto group : groups) {
          uint32_t g = group.getGroupIndex();
          if (g >= component_group_count) continue;
          if (group.getComponentCount() > 4096) return makeError(Errc::too_large, "count");
          std::vector<uint32_t> indices;
          for (uint32_t i : group.getIndices()) indices.push_back(i);
          std::vector<SecureHash> leaves, proof;
          auto components = group.getComponents();
          auto nonces = group.getNonces();
          for (uint32_t i = 0; i < components.size() && i < nonces.size(); ++i) {
            auto nonce = SecureHash::fromBytes(asByteView(nonces[i]));
            if (!nonce) return nonce.error();
            leaves.push_back(merkle::leaf(*nonce, asByteView(components[i])));
          }
          for (auto p : group.getProof()) {
            auto h = SecureHash::fromBytes(asByteView(p));
            if (!h) return h.error();
            proof.push_back(*h);
          }
          auto root = merkle::rootFromProof(group.getComponentCount(), indices, leaves, proof);
          if (!root) return root.error();
          hashes[g] = merkle::group(group.getComponentCount(), *root);
        }
        capnp::MallocMessageBuilder message;
        message.setRoot(r);
        auto out = message.getRoot<schema::FilteredTransaction>();
        SecureHash id = merkle::root(hashes);
        out.setId(kj::arrayPtr(id.bytes().data(), id.bytes().size()));
        auto out_hashes = out.initGroupHashes(component_group_count);
        for (uint32_t g = 0; g < component_group_count; ++g) {
          out_hashes.set(g, kj::arrayPtr(hashes[g].bytes().data(), hashes[g].bytes().size()));
        }
        return canonicalBytes(out.asReader());
      });
}

void fuzzOne(ByteView bytes) {
  auto ftx = FilteredTransaction::decode(bytes);
  if (!ftx) return;

  Claimed claimed = readClaims(bytes);
  FUZZ_CHECK(ftx->id() == claimed.id);
  FUZZ_CHECK(merkle::root(claimed.group_hashes) == ftx->id());

  std::vector<StateRef> inputs, references;
  std::optional<Party> notary;
  std::optional<TimeWindow> window;
  int64_t last = -1;
  for (const auto& group : ftx->groups()) {
    auto g = static_cast<uint32_t>(group.group);
    FUZZ_CHECK(g < component_group_count);
    FUZZ_CHECK(static_cast<int64_t>(g) > last);
    last = g;
    size_t n = group.indices.size();
    FUZZ_CHECK(group.components.size() == n && group.nonces.size() == n);
    std::vector<SecureHash> leaves;
    for (size_t i = 0; i < n; ++i) {
      FUZZ_CHECK(group.indices[i] < group.componentCount);
      if (i > 0) FUZZ_CHECK(group.indices[i] > group.indices[i - 1]);
      leaves.push_back(merkle::leaf(group.nonces[i], group.components[i]));
    }
    auto root = merkle::rootFromProof(group.componentCount, group.indices, leaves, group.proof);
    FUZZ_CHECK(root.ok());
    FUZZ_CHECK(merkle::group(group.componentCount, *root) == claimed.group_hashes[g]);

    for (const auto& c : group.components) {
      switch (group.group) {
        case ComponentGroup::inputs: inputs.push_back(decodeStateRef(c).value()); break;
        case ComponentGroup::references: references.push_back(decodeStateRef(c).value()); break;
        case ComponentGroup::notary: notary = decodeParty(c).value(); break;
        case ComponentGroup::time_window: window = decodeTimeWindow(c).value(); break;
        default: break;
      }
    }
  }
  FUZZ_CHECK(ftx->inputs() == inputs);
  FUZZ_CHECK(ftx->references() == references);
  FUZZ_CHECK(ftx->notary() == notary);
  FUZZ_CHECK(ftx->timeWindow() == window);

  SecureHash empty_group = merkle::group(0, SecureHash::zero());
  for (uint32_t g = 0; g < component_group_count; ++g) {
    const FilteredTransaction::Group* found = nullptr;
    for (const auto& group : ftx->groups()) {
      if (static_cast<uint32_t>(group.group) == g) found = &group;
    }
    bool expected = found ? found->indices.size() == found->componentCount
                          : claimed.group_hashes[g] == empty_group;
    Status visible = ftx->checkAllVisible(static_cast<ComponentGroup>(g));
    FUZZ_CHECK(visible.ok() == expected);
    if (!visible.ok()) FUZZ_CHECK(visible.error().code == Errc::not_visible);
  }

  Bytes encoded = ftx->encode();
  auto again = FilteredTransaction::decode(encoded);
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(again->id() == ftx->id());
  FUZZ_CHECK(again->groups().size() == ftx->groups().size());
  for (size_t i = 0; i < ftx->groups().size(); ++i) {
    FUZZ_CHECK(sameGroup(again->groups()[i], ftx->groups()[i]));
  }
  FUZZ_CHECK(again->inputs() == ftx->inputs());
  FUZZ_CHECK(again->notary() == ftx->notary());
  FUZZ_CHECK(again->timeWindow() == ftx->timeWindow());
  FUZZ_CHECK(again->encode() == encoded);
  FUZZ_CHECK(readClaims(encoded).group_hashes == claimed.group_hashes);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ByteView bytes = fuzz::input(data, size);
  fuzzOne(bytes);
  auto repaired = repair(bytes);
  if (repaired) fuzzOne(*repaired);
  return 0;
}
