#include "ledger/transaction.h"

#include <doctest/doctest.h>

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>

#include "ledger/merkle.h"
#include "ledger/testing.h"

using namespace ccal;
using namespace ccal::testing;

namespace {

struct Fixture {
  KeyPair alice = testKey(1);
  KeyPair bob = testKey(2);
  KeyPair notary_key = testKey(9);
  Party alice_party = testParty("Haikou Fishing Cooperative", alice);
  Party bob_party = testParty("Sanya Tea Cooperative", bob);
  Party notary = testParty("CCAL Notary", notary_key);
  SecureHash genesis = SecureHash::of(asBytes("genesis"));

  // The fixed two-input, two-output transaction whose bytes and id are pinned.
  TransactionBuilder golden() const {
    TransactionBuilder b(notary);
    b.addInput({genesis, 0})
        .addInput({genesis, 1})
        .addOutput(dummyState(notary, {alice_party.owningKey}, "alice-100"))
        .addOutput(dummyState(notary, {bob_party.owningKey}, "bob-50"))
        .addCommand(dummyCommand("Move", {alice_party.owningKey, bob_party.owningKey}))
        .setTimeWindow(TimeWindow{1'700'000'000'000'000, 1'700'000'600'000'000})
        .setNetworkParametersHash(SecureHash::of(asBytes("parameters")))
        .setPrivacySalt(Bytes(privacy_salt_bytes, 0x42));
    return b;
  }
};

}  // namespace

TEST_CASE_FIXTURE(Fixture, "golden vector: canonical encoding and id of a fixed transaction") {
  auto tx = golden().build();
  REQUIRE(tx.ok());
  Bytes encoded = tx->encode();
  // If either value changes, the wire or hashed format changed: that breaks
  // every stored transaction and every signature. Change them only on purpose.
  std::string encoding_hash = SecureHash::of(encoded).hex();
  std::string id = tx->id().hex();
  MESSAGE("encoding sha256 " << encoding_hash << " id " << id << " size " << encoded.size());
  CHECK(encoding_hash == "c23d1bea86fd5df86c061725baaf6bc639c9e721d7edc180683b62b71b875a76");
  CHECK(id == "d7af03d3a06625a717a180c68da0c5eb9d3c3464e7b045204081f62225a297e0");

  // The id is the Merkle root over the nine group hashes.
  CHECK(merkle::root(tx->groupHashes()) == tx->id());
  // Decoding gives back the same transaction.
  auto decoded = WireTransaction::decode(encoded);
  REQUIRE(decoded.ok());
  CHECK(decoded->id() == tx->id());
  CHECK(decoded->encode() == encoded);
  CHECK(decoded->inputs() == tx->inputs());
  CHECK(decoded->outputs() == tx->outputs());
  CHECK(decoded->commands() == tx->commands());
  CHECK(decoded->timeWindow() == tx->timeWindow());
  CHECK(decoded->notary() == tx->notary());
}

TEST_CASE_FIXTURE(Fixture, "the privacy salt and every component change the id") {
  auto base = golden().build().value().id();
  CHECK(golden().setPrivacySalt(Bytes(32, 0x43)).build()->id() != base);
  CHECK(golden().addAttachment(SecureHash::of(asBytes("doc"))).build()->id() != base);
  CHECK(golden().addReference({genesis, 7}).build()->id() != base);
  CHECK(golden().setTimeWindow(TimeWindow{1, 2}).build()->id() != base);
  // Two builds without a fixed salt differ: the salt is random.
  TransactionBuilder random_salt(notary);
  random_salt.addOutput(dummyState(notary, {alice_party.owningKey}, "x"))
      .addCommand(dummyCommand("Issue", {alice_party.owningKey}));
  CHECK(random_salt.build()->id() != random_salt.build()->id());
}

TEST_CASE_FIXTURE(Fixture, "ledger rules refuse malformed transactions with named reasons") {
  auto code_of = [](const TransactionBuilder& b) { return b.build().error().code; };
  auto message_of = [](const TransactionBuilder& b) { return b.build().error().message; };

  TransactionBuilder no_command(notary);
  no_command.addOutput(dummyState(notary, {}, "x"));
  CHECK(code_of(no_command) == Errc::invalid_transaction);
  CHECK(message_of(no_command).find("command") != std::string::npos);

  auto duplicate = golden();
  duplicate.addInput({genesis, 0});
  CHECK(code_of(duplicate) == Errc::invalid_transaction);
  CHECK(message_of(duplicate).find("appears twice") != std::string::npos);

  auto ref_is_input = golden();
  ref_is_input.addReference({genesis, 1});
  CHECK(code_of(ref_is_input) == Errc::invalid_transaction);

  TransactionBuilder no_notary;
  no_notary.addInput({genesis, 0}).addCommand(dummyCommand("Move", {alice_party.owningKey}));
  CHECK(message_of(no_notary).find("must name a notary") != std::string::npos);

  auto other_notary = golden();
  other_notary.addOutput(dummyState(alice_party, {}, "elsewhere"));
  CHECK(message_of(other_notary).find("not the transaction's notary") != std::string::npos);

  auto bad_encumbrance = golden();
  auto s = dummyState(notary, {}, "locked");
  s.encumbrance = 7;
  bad_encumbrance.addOutput(s);
  CHECK(message_of(bad_encumbrance).find("encumbrance") != std::string::npos);

  auto short_salt = golden();
  short_salt.setPrivacySalt(Bytes(31, 1));
  CHECK(code_of(short_salt) == Errc::bad_length);

  TransactionLimits small;
  small.inputs_max = 1;
  CHECK(golden().build(small).error().code == Errc::too_large);
}

TEST_CASE_FIXTURE(Fixture, "decoding bad bytes gives errors, never a crash") {
  Bytes good = golden().build()->encode();
  CHECK(WireTransaction::decode({}).error().code == Errc::malformed);
  CHECK_FALSE(WireTransaction::decode(ByteView(good).first(good.size() - 8)).ok());
  CHECK(WireTransaction::decode(ByteView(good).first(good.size() - 3)).error().code ==
        Errc::malformed);
  Bytes trailing = good;
  trailing.resize(good.size() + 8, 0);
  CHECK(WireTransaction::decode(trailing).error().code == Errc::not_canonical);
  Bytes garbage(256, 0xff);
  CHECK_FALSE(WireTransaction::decode(garbage).ok());
  TransactionLimits tiny;
  tiny.transaction_bytes_max = 64;
  CHECK(WireTransaction::decode(good, tiny).error().code == Errc::too_large);
  // Every single-byte corruption is refused, or changes the id, or leaves
  // the meaning intact (bytes of unused struct padding, which Cap'n Proto
  // keeps for forward compatibility and which are outside every hashed
  // component): the id always binds the meaning. Never a crash.
  auto original = WireTransaction::decode(good).value();
  for (size_t i = 0; i < good.size(); ++i) {
    Bytes bad = good;
    bad[i] ^= 0x5a;
    auto r = WireTransaction::decode(bad);
    if (r.ok() && r->id() == original.id()) {
      CHECK(r->groups() == original.groups());
      CHECK(r->outputs() == original.outputs());
      CHECK(r->commands() == original.commands());
    }
  }
}

TEST_CASE_FIXTURE(Fixture, "non-canonical and out-of-order component groups are refused") {
  auto tx = golden().build().value();
  // A component that is not the canonical encoding of its struct.
  auto groups = tx.groups();
  Bytes& input = groups[0][0];
  input.resize(input.size() + 8, 0);  // padding after the struct
  auto r = WireTransaction::fromGroups(groups, tx.privacySalt());
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("inputs[0]") != std::string::npos);

  // Groups out of order on the wire.
  capnp::MallocMessageBuilder message;
  auto root = message.initRoot<schema::WireTransaction>();
  tx.write(root);
  auto list = root.getComponentGroups();
  uint32_t first = list[0].getGroupIndex();
  list[0].setGroupIndex(list[1].getGroupIndex());
  list[1].setGroupIndex(first);
  Bytes swapped = canonicalBytes(root.asReader());
  CHECK(WireTransaction::decode(swapped).error().code == Errc::not_canonical);
}

TEST_CASE_FIXTURE(Fixture, "required signers: command signers, plus the notary when spending") {
  auto tx = golden().build().value();
  auto keys = tx.requiredSigningKeys();
  CHECK(keys.size() == 3);
  CHECK(tx.needsNotarySignature());
  TransactionBuilder issue(notary);
  issue.addOutput(dummyState(notary, {alice_party.owningKey}, "new"))
      .addCommand(dummyCommand("Issue", {alice_party.owningKey}));
  auto issued = issue.build().value();
  CHECK_FALSE(issued.needsNotarySignature());
  CHECK(issued.requiredSigningKeys() == std::vector<Key>{alice_party.owningKey});
}

TEST_CASE_FIXTURE(Fixture, "the stock capnp tool decodes a transaction's bytes") {
  Bytes encoded = golden().build()->encode();
  std::string dir = "/tmp/ccal-capnp-decode-" + std::to_string(::getpid());
  std::string bin = dir + ".bin", txt = dir + ".txt";
  FILE* f = std::fopen(bin.c_str(), "wb");
  REQUIRE(f != nullptr);
  std::fwrite(encoded.data(), 1, encoded.size(), f);
  std::fclose(f);
  std::string cmd = std::string("capnp decode --flat ") + CCAL_SOURCE_DIR +
                    "/schemas/ledger.capnp WireTransaction < " + bin + " > " + txt;
  REQUIRE(std::system(cmd.c_str()) == 0);
  std::ifstream in(txt);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK(text.find("componentGroups") != std::string::npos);
  CHECK(text.find("privacySalt") != std::string::npos);
  std::remove(bin.c_str());
  std::remove(txt.c_str());
}

TEST_CASE_FIXTURE(Fixture, "a NUL byte in any name is refused (it would not survive re-encoding)") {
  // The builder writes names through c_str(), so put the NUL in by hand.
  auto good = golden().build().value();
  auto groups = good.groups();
  Bytes state = buildCanonical<schema::TransactionState>([&](auto s) {
    writeTransactionState(s, good.outputs()[0]);
    s.setStateType(capnp::Text::Reader("ccal.test.Dummy\0State", 21));
  });
  groups[static_cast<uint32_t>(ComponentGroup::outputs)][0] = state;
  auto r = WireTransaction::fromGroups(groups, good.privacySalt());
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("NUL") != std::string::npos);
}
