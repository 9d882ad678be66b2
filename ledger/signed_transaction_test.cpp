#include "ledger/signed_transaction.h"

#include <doctest/doctest.h>

#include "ledger/testing.h"

using namespace ccal;
using namespace ccal::testing;

namespace {

struct Fixture {
  KeyPair alice = testKey(1);
  KeyPair bob = testKey(2);
  KeyPair r1 = testKey(11), r2 = testKey(12), r3 = testKey(13), r4 = testKey(14);
  Party alice_party = testParty("Haikou Fishing Cooperative", alice);
  Party bob_party = testParty("Sanya Tea Cooperative", bob);
  // A four-replica notary cluster whose key is "any 3 of 4".
  Party notary{"O=CCAL Notary, L=Haikou, C=CN",
               Key::anyOf(3, {r1.publicKey(), r2.publicKey(), r3.publicKey(), r4.publicKey()})
                   .value()};
  SecureHash genesis = SecureHash::of(asBytes("genesis"));

  SignedTransaction unsigned_move() const {
    TransactionBuilder b(notary);
    b.addInput({genesis, 0})
        .addOutput(dummyState(notary, {bob_party.owningKey}, "paid"))
        .addCommand(dummyCommand("Move", {alice_party.owningKey, bob_party.owningKey}));
    return SignedTransaction(b.build().value());
  }
};

}  // namespace

TEST_CASE_FIXTURE(Fixture, "signatures fulfil required signers; missing ones are named") {
  auto stx = unsigned_move();
  auto missing = stx.verifyRequiredSignatures();
  CHECK(missing.error().code == Errc::missing_signatures);
  CHECK(missing.error().message.find(alice.publicKey().shortHex()) != std::string::npos);
  CHECK(missing.error().message.find("composite(3 of 4)") != std::string::npos);

  stx.signWith(alice);
  CHECK(stx.missingSigningKeys().size() == 2);
  stx.signWith(bob);
  // Before notarisation, only the notary may be missing.
  CHECK(stx.verifySignaturesExcept({notary.owningKey}).ok());
  CHECK_FALSE(stx.verifyRequiredSignatures().ok());
  stx.signWith(r1).signWith(r2);
  CHECK(stx.verifyRequiredSignatures().error().code == Errc::missing_signatures);
  stx.signWith(r4);  // three of four replicas
  CHECK(stx.verifyRequiredSignatures().ok());
  stx.signWith(alice);  // signing twice adds nothing
  CHECK(stx.signatures().size() == 5);
}

TEST_CASE_FIXTURE(Fixture, "a signature over another transaction or by another key fails") {
  auto stx = unsigned_move();
  auto other = unsigned_move();  // same content, different random salt, different id
  REQUIRE(other.id() != stx.id());
  stx.addSignature(other.signatureBy(alice));
  auto r = stx.checkSignaturesAreValid();
  CHECK(r.error().code == Errc::bad_signature);
  CHECK(r.error().message.find(alice.publicKey().shortHex()) != std::string::npos);

  // A signature that claims to be Bob's but was made by Alice.
  auto forged = unsigned_move();
  auto sig = forged.signatureBy(alice);
  forged.addSignature(DigitalSignature(bob.publicKey(), sig.bytes()));
  CHECK(forged.checkSignaturesAreValid().error().code == Errc::bad_signature);
}

TEST_CASE_FIXTURE(Fixture, "encode and decode round trip; bad signature bytes are refused") {
  auto stx = unsigned_move();
  stx.signWith(alice).signWith(bob);
  Bytes encoded = stx.encode();
  auto decoded = SignedTransaction::decode(encoded);
  REQUIRE(decoded.ok());
  CHECK(decoded->id() == stx.id());
  CHECK(decoded->signatures() == stx.signatures());
  CHECK(decoded->verifySignaturesExcept({notary.owningKey}).ok());

  auto edit = [&](auto change) {
    capnp::MallocMessageBuilder message;
    auto root = message.initRoot<schema::SignedTransaction>();
    stx.write(root);
    change(root);
    return SignedTransaction::decode(canonicalBytes(root.asReader()));
  };
  CHECK(edit([](auto r) { r.getSignatures()[0].setScheme(7); }).error().code ==
        Errc::unknown_scheme);
  CHECK(edit([](auto r) { r.getSignatures()[0].setVersion(9); }).error().code ==
        Errc::unknown_scheme);
  CHECK(edit([](auto r) { r.getSignatures()[0].getBy().setScheme(3); }).error().code ==
        Errc::unknown_scheme);
  CHECK(edit([](auto r) {
          Bytes short_sig(63, 1);
          r.getSignatures()[0].setSignature(kj::ArrayPtr<const kj::byte>(short_sig.data(), 63));
        }).error().code == Errc::bad_length);
  CHECK(edit([](auto r) {
          Bytes long_key(33, 1);
          r.getSignatures()[0].getBy().setKey(kj::ArrayPtr<const kj::byte>(long_key.data(), 33));
        }).error().code == Errc::bad_length);
  CHECK(edit([](auto r) { r.getSignatures().setWithCaveats(1, r.getSignatures()[0]); })
            .error()
            .message.find("signed twice") != std::string::npos);
  // A flipped signature bit decodes but does not verify.
  auto flipped = edit([](auto r) { r.getSignatures()[1].getSignature()[10] ^= 1; });
  REQUIRE(flipped.ok());
  CHECK(flipped->checkSignaturesAreValid().error().code == Errc::bad_signature);
}

TEST_CASE_FIXTURE(Fixture, "batch-signed notary signatures round trip, fulfil the notary's key and refuse tampering") {
  auto stx = unsigned_move();
  stx.signWith(alice).signWith(bob);
  // Three replicas each sign a batch of 5 transaction ids that holds this one at index 2.
  std::vector<Bytes> ids;
  for (int i = 0; i < 5; ++i) ids.push_back(signableBytes(SecureHash::of(asBytes("other " + std::to_string(i)))));
  ids[2] = signableBytes(stx.id());
  for (const KeyPair* r : {&r1, &r2, &r3}) stx.addSignature(r->signBatch(ids)[2]);
  CHECK(stx.verifyRequiredSignatures().ok());
  auto decoded = SignedTransaction::decode(stx.encode());
  REQUIRE(decoded.ok());
  CHECK(decoded->signatures() == stx.signatures());
  CHECK(decoded->verifyRequiredSignatures().ok());

  auto edit = [&](auto change) {
    capnp::MallocMessageBuilder message;
    auto root = message.initRoot<schema::SignedTransaction>();
    stx.write(root);
    change(root);
    return SignedTransaction::decode(canonicalBytes(root.asReader()));
  };
  // Index 3's proof for index 2's leaf: decodes, does not verify, names the signer.
  auto moved = edit([](auto r) { r.getSignatures()[2].getBatch().setLeafIndex(3); });
  REQUIRE(moved.ok());
  auto refused = moved->verifyRequiredSignatures();
  CHECK(refused.error().code == Errc::bad_signature);
  CHECK(refused.error().message.find(r1.publicKey().shortHex()) != std::string::npos);
  CHECK(edit([](auto r) { r.getSignatures()[2].getBatch().setLeafCount(0); }).error().code == Errc::malformed);
  CHECK(edit([](auto r) { r.getSignatures()[2].getBatch().initPath(21); }).error().code == Errc::too_large);
  CHECK(edit([](auto r) {
          Bytes short_hash(31, 1);
          r.getSignatures()[2].getBatch().getPath().set(0, kj::ArrayPtr<const kj::byte>(short_hash.data(), 31));
        }).error().code == Errc::bad_length);
}
