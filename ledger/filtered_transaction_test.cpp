#include "ledger/filtered_transaction.h"

#include <doctest/doctest.h>

#include "ledger/testing.h"

using namespace ccal;
using namespace ccal::testing;

namespace {

struct Fixture {
  KeyPair alice = testKey(1);
  KeyPair notary_key = testKey(9);
  Party alice_party = testParty("Haikou Fishing Cooperative", alice);
  Party notary = testParty("CCAL Notary", notary_key);
  SecureHash genesis = SecureHash::of(asBytes("genesis"));

  WireTransaction tx() const {
    TransactionBuilder b(notary);
    b.addInput({genesis, 0})
        .addInput({genesis, 1})
        .addInput({genesis, 2})
        .addReference({genesis, 5})
        .addOutput(dummyState(notary, {alice_party.owningKey}, "secret-deal-1"))
        .addOutput(dummyState(notary, {alice_party.owningKey}, "secret-deal-2"))
        .addCommand(dummyCommand("Move", {alice_party.owningKey}))
        .setTimeWindow(TimeWindow{100, 200})
        .setPrivacySalt(Bytes(privacy_salt_bytes, 7));
    return b.build().value();
  }
};

// Re-encodes a filtered transaction after `edit` changes its Cap'n Proto form.
template <class Edit>
Result<FilteredTransaction> tampered(const FilteredTransaction& ftx, Edit&& edit) {
  capnp::MallocMessageBuilder message;
  auto root = message.initRoot<schema::FilteredTransaction>();
  ftx.write(root);
  edit(root);
  return FilteredTransaction::decode(canonicalBytes(root.asReader()));
}

int groupPosition(const FilteredTransaction& ftx, ComponentGroup g) {
  for (size_t i = 0; i < ftx.groups().size(); ++i)
    if (ftx.groups()[i].group == g) return static_cast<int>(i);
  return -1;
}

}  // namespace

TEST_CASE_FIXTURE(Fixture, "a notary's view reveals inputs, references, notary, time window only") {
  auto wtx = tx();
  auto ftx = FilteredTransaction::forNotary(wtx);
  CHECK(ftx.id() == wtx.id());
  CHECK(ftx.inputs() == wtx.inputs());
  CHECK(ftx.references() == wtx.references());
  CHECK(ftx.notary() == wtx.notary());
  CHECK(ftx.timeWindow() == wtx.timeWindow());
  for (auto g : {ComponentGroup::inputs, ComponentGroup::references, ComponentGroup::notary,
                 ComponentGroup::time_window, ComponentGroup::attachments}) {
    CHECK(ftx.checkAllVisible(g).ok());  // attachments: provably empty
  }
  CHECK(ftx.checkAllVisible(ComponentGroup::outputs).error().code == Errc::not_visible);
  CHECK(ftx.checkAllVisible(ComponentGroup::commands).error().code == Errc::not_visible);
  // Nothing of the outputs travels.
  Bytes encoded = ftx.encode();
  std::string as_text(encoded.begin(), encoded.end());
  CHECK(as_text.find("secret-deal") == std::string::npos);

  auto decoded = FilteredTransaction::decode(encoded);
  REQUIRE(decoded.ok());
  CHECK(decoded->id() == wtx.id());
  CHECK(decoded->inputs() == wtx.inputs());
}

TEST_CASE_FIXTURE(Fixture, "a partial reveal proves, and says which group is incomplete") {
  auto wtx = tx();
  auto ftx = FilteredTransaction::build(
      wtx, [](ComponentGroup g, uint32_t i) { return g == ComponentGroup::inputs && i == 1; });
  CHECK(ftx.inputs() == std::vector<StateRef>{wtx.inputs()[1]});
  auto visible = ftx.checkAllVisible(ComponentGroup::inputs);
  CHECK(visible.error().code == Errc::not_visible);
  CHECK(visible.error().message.find("1 of 3") != std::string::npos);
  CHECK(FilteredTransaction::decode(ftx.encode()).ok());
}

TEST_CASE_FIXTURE(
    Fixture,
    "every reveal of whole groups, and of single components, builds one its receiver verifies") {
  auto wtx = tx();
  for (uint32_t mask = 0; mask < (1u << component_group_count); ++mask) {
    auto ftx = FilteredTransaction::build(
        wtx, [mask](ComponentGroup g, uint32_t) { return (mask >> static_cast<uint32_t>(g)) & 1; });
    INFO("mask " << mask);
    REQUIRE(ftx.encode() == ftx.encodeBuilt());  // written directly: the builder's canonical bytes
    auto decoded = FilteredTransaction::decode(ftx.encode());
    REQUIRE(decoded.ok());
    CHECK(decoded->id() == wtx.id());
    CHECK(decoded->inputs() == ftx.inputs());
    CHECK(decoded->notary() == ftx.notary());
  }
  for (uint32_t g = 0; g < component_group_count; ++g) {
    for (uint32_t i = 0; i < wtx.groups()[g].size(); ++i) {
      auto ftx = FilteredTransaction::build(wtx, [g, i](ComponentGroup group, uint32_t index) {
        return static_cast<uint32_t>(group) == g && index == i;
      });
      INFO("group " << g << " component " << i);
      REQUIRE(ftx.encode() == ftx.encodeBuilt());
      REQUIRE(FilteredTransaction::decode(ftx.encode()).ok());
    }
  }
}

TEST_CASE_FIXTURE(Fixture, "every tampering with a filtered transaction fails verification") {
  auto wtx = tx();
  auto ftx = FilteredTransaction::forNotary(wtx);
  int inputs = groupPosition(ftx, ComponentGroup::inputs);
  REQUIRE(inputs >= 0);

  SUBCASE("a revealed component changed") {
    auto r = tampered(ftx, [&](auto root) {
      auto c = root.getGroups()[inputs].getComponents();
      Bytes other = encodeStateRef({genesis, 9});
      c.set(0, kj::ArrayPtr<const kj::byte>(other.data(), other.size()));
    });
    CHECK(r.error().code == Errc::merkle_proof_invalid);
  }
  SUBCASE("a nonce changed") {
    auto r = tampered(ftx, [&](auto root) { root.getGroups()[inputs].getNonces()[0][0] ^= 1; });
    CHECK(r.error().code == Errc::merkle_proof_invalid);
  }
  SUBCASE("a nonce of the wrong length") {
    auto r = tampered(ftx, [&](auto root) { root.getGroups()[inputs].getNonces().set(0, {}); });
    CHECK(r.error().code == Errc::bad_length);
  }
  SUBCASE("a proof hash changed (partial reveal)") {
    auto partial = FilteredTransaction::build(
        wtx, [](ComponentGroup g, uint32_t i) { return g == ComponentGroup::inputs && i == 0; });
    REQUIRE_FALSE(partial.groups()[0].proof.empty());
    auto r = tampered(partial, [&](auto root) { root.getGroups()[0].getProof()[0][5] ^= 1; });
    CHECK(r.error().code == Errc::merkle_proof_invalid);
  }
  SUBCASE("a proof hash removed or added") {
    auto partial = FilteredTransaction::build(
        wtx, [](ComponentGroup g, uint32_t i) { return g == ComponentGroup::inputs && i == 0; });
    auto removed = tampered(partial, [&](auto root) {
      auto old = root.getGroups()[0].getProof();
      capnp::Orphanage orphanage = capnp::Orphanage::getForMessageContaining(root);
      auto shorter = orphanage.newOrphan<capnp::List<capnp::Data>>(old.size() - 1);
      for (unsigned i = 0; i + 1 < old.size(); ++i) shorter.get().set(i, old[i]);
      root.getGroups()[0].adoptProof(kj::mv(shorter));
    });
    CHECK(removed.error().code == Errc::merkle_proof_invalid);
  }
  SUBCASE("a component removed while its count stays") {
    auto r = tampered(ftx, [&](auto root) {
      auto g = root.getGroups()[inputs];
      g.initIndices(2).set(0, 0);
      g.getIndices().set(1, 1);
      auto c = g.getComponents();
      auto n = g.getNonces();
      capnp::Orphanage orphanage = capnp::Orphanage::getForMessageContaining(root);
      auto c2 = orphanage.newOrphan<capnp::List<capnp::Data>>(2);
      auto n2 = orphanage.newOrphan<capnp::List<capnp::Data>>(2);
      for (unsigned i = 0; i < 2; ++i) {
        c2.get().set(i, c[i]);
        n2.get().set(i, n[i]);
      }
      g.adoptComponents(kj::mv(c2));
      g.adoptNonces(kj::mv(n2));
    });
    CHECK(r.error().code == Errc::merkle_proof_invalid);
  }
  SUBCASE("the component count understated to hide an input") {
    auto r = tampered(ftx, [&](auto root) { root.getGroups()[inputs].setComponentCount(2); });
    CHECK_FALSE(r.ok());
  }
  SUBCASE("indices swapped") {
    auto r = tampered(ftx, [&](auto root) {
      auto idx = root.getGroups()[inputs].getIndices();
      idx.set(0, 1);
      idx.set(1, 0);
    });
    CHECK(r.error().code == Errc::merkle_proof_invalid);
  }
  SUBCASE("a hidden group's hash changed") {
    auto r = tampered(ftx, [&](auto root) {
      root.getGroupHashes()[static_cast<uint32_t>(ComponentGroup::outputs)][0] ^= 1;
    });
    CHECK(r.error().code == Errc::id_mismatch);
  }
  SUBCASE("a revealed group's hash changed") {
    auto r = tampered(ftx, [&](auto root) {
      root.getGroupHashes()[static_cast<uint32_t>(ComponentGroup::inputs)][0] ^= 1;
    });
    CHECK(r.error().code == Errc::merkle_proof_invalid);
  }
  SUBCASE("a proof presented for another transaction id") {
    auto other = TransactionBuilder(notary)
                     .addInput({genesis, 0})
                     .addCommand(dummyCommand("Move", {alice_party.owningKey}))
                     .build()
                     .value();
    auto r = tampered(ftx, [&](auto root) {
      root.setId(kj::ArrayPtr<const kj::byte>(other.id().bytes().data(), 32));
    });
    CHECK(r.error().code == Errc::id_mismatch);
  }
  SUBCASE("a group moved to another group index") {
    auto r = tampered(ftx, [&](auto root) {
      root.getGroups()[inputs].setGroupIndex(static_cast<uint32_t>(ComponentGroup::outputs));
    });
    CHECK_FALSE(r.ok());
  }
  SUBCASE("too few group hashes") {
    auto r = tampered(ftx, [&](auto root) { root.initGroupHashes(3); });
    CHECK(r.error().code == Errc::malformed);
  }
  SUBCASE("an absurd component count") {
    auto r = tampered(ftx, [&](auto root) { root.getGroups()[inputs].setComponentCount(~0u); });
    CHECK(r.error().code == Errc::too_large);
  }
}

TEST_CASE("malformed filtered transaction bytes give errors") {
  CHECK(FilteredTransaction::decode({}).error().code == Errc::malformed);
  Bytes junk(64, 0x11);
  CHECK_FALSE(FilteredTransaction::decode(junk).ok());
}
