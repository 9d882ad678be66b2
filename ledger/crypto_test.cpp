#include "ledger/crypto.h"

#include <botan/auto_rng.h>
#include <botan/ed25519.h>
#include <botan/pubkey.h>
#include <doctest/doctest.h>
#include <sodium.h>

#include <string>

using namespace ccal;

namespace {

Bytes hex(std::string_view h) {
  auto b = fromHex(h);
  REQUIRE_MESSAGE(b.has_value(), "bad hex in a test vector");
  return *b;
}

struct Vector {
  const char* name;
  const char* seed;
  const char* public_key;
  std::string message;
  const char* signature;
};

// RFC 8032 section 7.1, Ed25519 (the TEST 1024 message is 1023 bytes long).
const Vector rfc8032_vectors[] = {
    {"TEST 1", "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
     "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
     "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"},
    {"TEST 2", "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
     "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
     "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"},
    {"TEST 3", "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
     "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025", "af82",
     "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
     "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a"},
    {"TEST 1024", "f5e5767cf153319517630f226876b86c8160cc583bc013744c6bf255f5cc0ee5",
     "278117fc144c72340f67d0f2316e8386ceffbf2b2428c9c51fef7c597f1d426e",
     "08b8b2b733424243760fe426a4b54908632110a66c2f6591eabd3345e3e4eb98"
     "fa6e264bf09efe12ee50f8f54e9f77b1e355f6c50544e23fb1433ddf73be84d8"
     "79de7c0046dc4996d9e773f4bc9efe5738829adb26c81b37c93a1b270b20329d"
     "658675fc6ea534e0810a4432826bf58c941efb65d57a338bbd2e26640f89ffbc"
     "1a858efcb8550ee3a5e1998bd177e93a7363c344fe6b199ee5d02e82d522c4fe"
     "ba15452f80288a821a579116ec6dad2b3b310da903401aa62100ab5d1a36553e"
     "06203b33890cc9b832f79ef80560ccb9a39ce767967ed628c6ad573cb116dbef"
     "efd75499da96bd68a8a97b928a8bbc103b6621fcde2beca1231d206be6cd9ec7"
     "aff6f6c94fcd7204ed3455c68c83f4a41da4af2b74ef5c53f1d8ac70bdcb7ed1"
     "85ce81bd84359d44254d95629e9855a94a7c1958d1f8ada5d0532ed8a5aa3fb2"
     "d17ba70eb6248e594e1a2297acbbb39d502f1a8c6eb6f1ce22b3de1a1f40cc24"
     "554119a831a9aad6079cad88425de6bde1a9187ebb6092cf67bf2b13fd65f270"
     "88d78b7e883c8759d2c4f5c65adb7553878ad575f9fad878e80a0c9ba63bcbcc"
     "2732e69485bbc9c90bfbd62481d9089beccf80cfe2df16a2cf65bd92dd597b07"
     "07e0917af48bbb75fed413d238f5555a7a569d80c3414a8d0859dc65a46128ba"
     "b27af87a71314f318c782b23ebfe808b82b0ce26401d2e22f04d83d1255dc51a"
     "ddd3b75a2b1ae0784504df543af8969be3ea7082ff7fc9888c144da2af58429e"
     "c96031dbcad3dad9af0dcbaaaf268cb8fcffead94f3c7ca495e056a9b47acdb7"
     "51fb73e666c6c655ade8297297d07ad1ba5e43f1bca32301651339e22904cc8c"
     "42f58c30c04aafdb038dda0847dd988dcda6f3bfd15c4b4c4525004aa06eeff8"
     "ca61783aacec57fb3d1f92b0fe2fd1a85f6724517b65e614ad6808d6f6ee34df"
     "f7310fdc82aebfd904b01e1dc54b2927094b2db68d6f903b68401adebf5a7e08"
     "d78ff4ef5d63653a65040cf9bfd4aca7984a74d37145986780fc0b16ac451649"
     "de6188a7dbdf191f64b5fc5e2ab47b57f7f7276cd419c17a3ca8e1b939ae49e4"
     "88acba6b965610b5480109c8b17b80e1b7b750dfc7598d5d5011fd2dcc5600a3"
     "2ef5b52a1ecc820e308aa342721aac0943bf6686b64b2579376504ccc493d97e"
     "6aed3fb0f9cd71a43dd497f01f17c0e2cb3797aa2a2f256656168e6c496afc5f"
     "b93246f6b1116398a346f1a641f3b041e989f7914f90cc2c7fff357876e506b5"
     "0d334ba77c225bc307ba537152f3f1610e4eafe595f6d9d90d11faa933a15ef1"
     "369546868a7f3a45a96768d40fd9d03412c091c6315cf4fde7cb68606937380d"
     "b2eaaa707b4c4185c32eddcdd306705e4dc1ffc872eeee475a64dfac86aba41c"
     "0618983f8741c5ef68d3a101e8a3b8cac60c905c15fc910840b94c00a0b9d0",
     "0aab4c900501b3e24d7cdf4663326a3a87df5e4843b2cbdb67cbf6e460fec350"
     "aa5371b1508f9f4528ecea23c436d94b5e8fcd4f681e30a6ac00a9704a188a03"},
    {"TEST SHA(abc)", "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
     "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
     "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
     "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
     "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b589"
     "09351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704"},
};

constexpr uint16_t ed25519 = static_cast<uint16_t>(SignatureScheme::ed25519);

Botan::Ed25519_PrivateKey botanKey(ByteView seed) {
  return Botan::Ed25519_PrivateKey(Botan::secure_vector<uint8_t>(seed.begin(), seed.end()));
}

bool botanVerifies(const PublicKey& key, ByteView message, ByteView signature) {
  Botan::Ed25519_PublicKey public_key(key.bytes().data(), key.bytes().size());
  Botan::PK_Verifier verifier(public_key, "Pure");
  return verifier.verify_message(message.data(), message.size(), signature.data(),
                                 signature.size());
}

Bytes botanSign(ByteView seed, ByteView message) {
  Botan::AutoSeeded_RNG rng;
  auto key = botanKey(seed);
  Botan::PK_Signer signer(key, rng, "Pure");
  return signer.sign_message(message.data(), message.size(), rng);
}

}  // namespace

TEST_CASE("RFC 8032 section 7.1 Ed25519 test vectors") {
  for (const auto& v : rfc8032_vectors) {
    CAPTURE(v.name);
    Bytes message = hex(v.message);
    auto pair = KeyPair::fromSeed(hex(v.seed));
    REQUIRE(pair.ok());
    CHECK(pair->publicKey().hex() == v.public_key);
    CHECK(toHex(pair->seed()) == v.seed);

    DigitalSignature signature = pair->sign(message);
    CHECK(toHex(signature.view()) == v.signature);
    CHECK(signature.by() == pair->publicKey());
    CHECK(signature.version() == signature_version_current);
    CHECK(signature.verify(message).ok());

    // The published signature, taken apart and put back together, verifies.
    auto key = PublicKey::fromHex(v.public_key);
    REQUIRE(key.ok());
    auto published = DigitalSignature::fromParts(*key, ed25519, 1, hex(v.signature));
    REQUIRE(published.ok());
    CHECK(*published == signature);
    CHECK(published->verify(message).ok());

    // One flipped bit anywhere in the signature, or in the message, fails.
    for (size_t bit : {0u, 7u, 255u, 256u, 511u}) {
      CAPTURE(bit);
      auto bytes = signature.bytes();
      bytes[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
      Status s = DigitalSignature(pair->publicKey(), bytes).verify(message);
      REQUIRE_FALSE(s.ok());
      CHECK(s.error().code == Errc::bad_signature);
      CHECK(s.error().message.find(pair->publicKey().shortHex()) != std::string::npos);
    }
    Bytes altered = message;
    if (altered.empty()) {
      altered.push_back(0);
    } else {
      altered.back() ^= 0x01;
    }
    CHECK(signature.verify(altered).error().code == Errc::bad_signature);
    // Another key's signature over the same message is not this key's.
    auto other = KeyPair::fromSeed(Bytes(32, 0x5a));
    DigitalSignature misattributed(other->publicKey(), signature.bytes());
    CHECK(misattributed.verify(message).error().code == Errc::bad_signature);
  }
}

TEST_CASE("RFC 8032 vector sizes and the SHA(abc) message") {
  CHECK(hex(rfc8032_vectors[3].message).size() == 1023);
  // TEST SHA(abc) signs the SHA-512 of "abc".
  Bytes digest(crypto_hash_sha512_BYTES);
  crypto_hash_sha512(digest.data(), reinterpret_cast<const unsigned char*>("abc"), 3);
  CHECK(toHex(digest) == rfc8032_vectors[4].message);
}

TEST_CASE("libsodium and Botan 2 agree on Ed25519, both ways") {
  const std::string messages[] = {"", "x", "a transaction's signable bytes",
                                  std::string(1000, '\x7f')};
  for (uint8_t s = 1; s <= 4; ++s) {
    CAPTURE(s);
    Bytes seed(32, s);
    seed[0] = 0xc0;
    auto pair = KeyPair::fromSeed(seed);
    REQUIRE(pair.ok());
    // Same seed, same public key.
    auto botan = botanKey(seed);
    CHECK(toHex(botan.get_public_key()) == pair->publicKey().hex());

    for (const auto& text : messages) {
      CAPTURE(text.size());
      ByteView message = asBytes(text);

      // libsodium signs, Botan verifies.
      DigitalSignature ours = pair->sign(message);
      CHECK(botanVerifies(pair->publicKey(), message, ours.view()));

      // Botan signs, libsodium verifies. Ed25519 is deterministic, so the
      // signatures are equal too.
      Bytes theirs = botanSign(seed, message);
      REQUIRE(theirs.size() == DigitalSignature::ed25519_bytes);
      CHECK(toHex(theirs) == toHex(ours.view()));
      auto imported = DigitalSignature::fromParts(pair->publicKey(), ed25519, 1, theirs);
      REQUIRE(imported.ok());
      CHECK(imported->verify(message).ok());

      // Both refuse a tampered signature.
      theirs[10] ^= 0x40;
      CHECK_FALSE(botanVerifies(pair->publicKey(), message, theirs));
      auto tampered = DigitalSignature::fromParts(pair->publicKey(), ed25519, 1, theirs);
      REQUIRE(tampered.ok());
      CHECK_FALSE(tampered->verify(message).ok());
    }
  }
}

TEST_CASE("RFC 8032 vectors verify with Botan too") {
  for (const auto& v : rfc8032_vectors) {
    CAPTURE(v.name);
    auto key = PublicKey::fromHex(v.public_key);
    REQUIRE(key.ok());
    CHECK(botanVerifies(*key, hex(v.message), hex(v.signature)));
    CHECK(toHex(botanSign(hex(v.seed), hex(v.message))) == v.signature);
  }
}

TEST_CASE("PublicKey::fromBytes rejects wrong lengths and unknown schemes") {
  for (size_t length : {0u, 1u, 31u, 33u, 63u, 64u, 65u}) {
    CAPTURE(length);
    auto r = PublicKey::fromBytes(ed25519, Bytes(length, 0x11));
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::bad_length);
    CHECK(r.error().message.find("32 bytes, got " + std::to_string(length)) != std::string::npos);
  }
  for (uint16_t scheme : {0, 2, 7, 0xffff}) {
    CAPTURE(scheme);
    auto r = PublicKey::fromBytes(scheme, Bytes(32, 0x11));
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::unknown_scheme);
    CHECK(r.error().message.find("scheme id " + std::to_string(scheme)) != std::string::npos);
  }
  auto good = PublicKey::fromBytes(ed25519, Bytes(32, 0x11));
  REQUIRE(good.ok());
  CHECK(good->hex() == std::string(64, '1'));
  CHECK(good->shortHex() == std::string(12, '1'));

  CHECK(PublicKey::fromHex("zz").error().code == Errc::malformed);
  CHECK(PublicKey::fromHex(std::string(62, 'a')).error().code == Errc::bad_length);
}

TEST_CASE("DigitalSignature::fromParts rejects wrong lengths, schemes and versions") {
  PublicKey by = KeyPair::fromSeed(Bytes(32, 3))->publicKey();
  for (size_t length : {0u, 31u, 32u, 33u, 63u, 65u, 128u}) {
    CAPTURE(length);
    auto r = DigitalSignature::fromParts(by, ed25519, 1, Bytes(length, 0x22));
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::bad_length);
    CHECK(r.error().message.find("64 bytes, got " + std::to_string(length)) != std::string::npos);
  }
  for (uint16_t scheme : {0, 2, 7}) {
    CAPTURE(scheme);
    auto r = DigitalSignature::fromParts(by, scheme, 1, Bytes(64, 0x22));
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::unknown_scheme);
    CHECK(r.error().message.find("scheme id " + std::to_string(scheme)) != std::string::npos);
  }
  for (uint16_t version : {0, 2}) {
    CAPTURE(version);
    auto r = DigitalSignature::fromParts(by, ed25519, version, Bytes(64, 0x22));
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::unknown_scheme);
    CHECK(r.error().message.find("version " + std::to_string(version)) != std::string::npos);
  }
  auto good = DigitalSignature::fromParts(by, ed25519, 1, Bytes(64, 0x22));
  REQUIRE(good.ok());
  CHECK(good->by() == by);
  CHECK(toHex(good->view()) == std::string(128, '2'));
}

TEST_CASE("KeyPair::fromSeed rejects a seed of the wrong length") {
  for (size_t length : {0u, 16u, 31u, 33u, 64u}) {
    CAPTURE(length);
    auto r = KeyPair::fromSeed(Bytes(length, 0x33));
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::bad_length);
    CHECK(r.error().message.find("32 bytes, got " + std::to_string(length)) != std::string::npos);
  }
}

TEST_CASE("KeyPair: generated keys differ, copies sign alike") {
  KeyPair a = KeyPair::generate();
  KeyPair b = KeyPair::generate();
  CHECK(a.publicKey() != b.publicKey());
  Bytes message = randomBytes(40);
  CHECK(message.size() == 40);
  DigitalSignature sig = a.sign(message);
  CHECK(sig.verify(message).ok());
  CHECK(DigitalSignature(b.publicKey(), sig.bytes()).verify(message).error().code ==
        Errc::bad_signature);

  KeyPair copy = a;
  CHECK(copy.publicKey() == a.publicKey());
  CHECK(copy.sign(message) == sig);
  copy = b;
  CHECK(copy.publicKey() == b.publicKey());
  CHECK(toHex(copy.seed()) == toHex(b.seed()));
  // The seed reproduces the pair.
  CHECK(KeyPair::fromSeed(a.seed())->publicKey() == a.publicKey());
}

TEST_CASE("verification refuses malleable and degenerate signatures") {
  auto pair = KeyPair::fromSeed(hex(rfc8032_vectors[0].seed));
  std::string_view text = "pay 100 to the cooperative";
  ByteView message = asBytes(text);
  DigitalSignature good = pair->sign(message);
  REQUIRE(good.verify(message).ok());

  // S + L, with L the order of the base point, is the same point arithmetic
  // but a second encoding of the signature: RFC 8032 requires S < L, so that
  // a signed transaction cannot be given a different id by a third party.
  const Bytes order = hex("edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010");
  auto bytes = good.bytes();
  unsigned carry = 0;
  for (size_t i = 0; i < 32; ++i) {
    unsigned sum = bytes[32 + i] + order[i] + carry;
    bytes[32 + i] = static_cast<uint8_t>(sum);
    carry = sum >> 8;
  }
  REQUIRE(carry == 0);
  CHECK(DigitalSignature(pair->publicKey(), bytes).verify(message).error().code ==
        Errc::bad_signature);

  // The identity point as a public key, with R = identity and S = 0, satisfies
  // the verification equation for every message; it must still be refused.
  std::array<uint8_t, 32> identity{};
  identity[0] = 1;
  std::array<uint8_t, 64> degenerate{};
  degenerate[0] = 1;
  CHECK(DigitalSignature(PublicKey(identity), degenerate).verify(message).error().code ==
        Errc::bad_signature);
}

static Bytes msg(const std::string& s) { return Bytes(s.begin(), s.end()); }

TEST_CASE("batch signatures: one Ed25519 signature covers every message, each with its proof") {
  auto key = KeyPair::fromSeed(Bytes(32, 7)).value();
  std::vector<Bytes> messages;
  for (int i = 0; i < 37; ++i) messages.push_back(msg("message " + std::to_string(i)));
  auto sigs = key.signBatch(messages);
  REQUIRE(sigs.size() == messages.size());
  for (size_t i = 0; i < sigs.size(); ++i) {
    REQUIRE(sigs[i].batch().has_value());
    CHECK(sigs[i].batch()->leafIndex == i);
    CHECK(sigs[i].batch()->leafCount == 37);
    CHECK(sigs[i].bytes() == sigs[0].bytes());  // one signature
    CHECK(sigs[i].by() == key.publicKey());
    CHECK(sigs[i].verify(messages[i]).ok());
  }
  // Another batch member's message, or any other message, does not verify.
  CHECK(sigs[3].verify(messages[4]).error().code == Errc::bad_signature);
  CHECK(sigs[3].verify(msg("message 3 ")).error().code == Errc::bad_signature);
  // A single-message batch has an empty proof.
  auto one = key.signBatch(std::vector<Bytes>{msg("alone")});
  REQUIRE(one.size() == 1);
  CHECK(one[0].batch()->path.empty());
  CHECK(one[0].verify(msg("alone")).ok());
  // A batch signature is not a plain signature over the message, nor the reverse.
  DigitalSignature as_plain(key.publicKey(), one[0].bytes());
  CHECK(as_plain.verify(msg("alone")).error().code == Errc::bad_signature);
  DigitalSignature plain = key.sign(msg("alone"));
  DigitalSignature as_batch(key.publicKey(), plain.bytes(), signature_version_current, BatchProof{0, 1, {}});
  CHECK(as_batch.verify(msg("alone")).error().code == Errc::bad_signature);
}

TEST_CASE("batch signatures: a tampered proof, index, count, signature or signer is refused") {
  auto key = KeyPair::fromSeed(Bytes(32, 8)).value();
  auto other = KeyPair::fromSeed(Bytes(32, 9)).value();
  std::vector<Bytes> messages;
  for (int i = 0; i < 10; ++i) messages.push_back(msg("tx " + std::to_string(i)));
  auto sigs = key.signBatch(messages);
  const DigitalSignature good = sigs[5];
  REQUIRE(good.verify(messages[5]).ok());  // now also remembered as verified
  auto with = [&](auto change) {
    BatchProof p = *good.batch();
    auto bytes = good.bytes();
    PublicKey by = good.by();
    change(p, bytes, by);
    return DigitalSignature(by, bytes, signature_version_current, p);
  };
  // The remembered root does not let anything else through.
  CHECK(with([](BatchProof& p, auto&, auto&) { p.path[0] = SecureHash::of(p.path[0].view()); }).verify(messages[5]).error().code ==
        Errc::bad_signature);
  CHECK(with([](BatchProof& p, auto&, auto&) { p.leafIndex = 4; }).verify(messages[5]).error().code ==
        Errc::bad_signature);
  CHECK(with([](BatchProof& p, auto&, auto&) { p.leafCount = 11; }).verify(messages[5]).error().code ==
        Errc::bad_signature);
  CHECK(with([](BatchProof& p, auto&, auto&) { p.path.pop_back(); }).verify(messages[5]).error().code ==
        Errc::bad_signature);
  CHECK(with([](BatchProof& p, auto&, auto&) { p.path.push_back(p.path[0]); }).verify(messages[5]).error().code ==
        Errc::bad_signature);
  CHECK(with([](BatchProof&, auto& bytes, auto&) { bytes[1] ^= 1; }).verify(messages[5]).error().code ==
        Errc::bad_signature);
  CHECK(with([&](BatchProof&, auto&, PublicKey& by) { by = other.publicKey(); }).verify(messages[5]).error().code ==
        Errc::bad_signature);
  auto refused = with([](BatchProof& p, auto&, auto&) { p.leafIndex = 3; });
  CHECK(refused.verify(messages[5]).error().message.find("batch signature") != std::string::npos);
  // Every message verified (their proofs' inner nodes remembered): a change
  // of any one hash of a proof is still refused.
  for (size_t i = 0; i < messages.size(); ++i) REQUIRE(sigs[i].verify(messages[i]).ok());
  for (size_t k = 0; k < good.batch()->path.size(); ++k) {
    CHECK(with([k](BatchProof& p, auto&, auto&) { p.path[k] = SecureHash::of(p.path[k].view()); })
              .verify(messages[5])
              .error()
              .code == Errc::bad_signature);
  }
}

TEST_CASE("verified and own signatures are remembered; nothing else gets through") {
  auto key = KeyPair::fromSeed(Bytes(32, 11)).value();
  auto other = KeyPair::fromSeed(Bytes(32, 12)).value();
  // Made here: checking it costs no Ed25519 verification.
  DigitalSignature own = key.sign(msg("own"));
  uint64_t before = cryptoCounters().ed25519_verifies;
  CHECK(own.verify(msg("own")).ok());
  CHECK(cryptoCounters().ed25519_verifies == before);
  // Another process's signature (rebuilt from its bytes, as if received):
  // verified once, then remembered.
  std::array<uint8_t, DigitalSignature::ed25519_bytes> sig{};
  auto signer = KeyPair::fromSeed(Bytes(32, 13)).value();
  Bytes signed_bytes = msg("received");
  // Sign through libsodium directly so the memory does not know it yet.
  Bytes secret(32, 13);
  std::array<uint8_t, 32> pk{};
  std::array<uint8_t, 64> sk{};
  crypto_sign_seed_keypair(pk.data(), sk.data(), secret.data());
  crypto_sign_detached(sig.data(), nullptr, signed_bytes.data(), signed_bytes.size(), sk.data());
  DigitalSignature received(signer.publicKey(), sig);
  before = cryptoCounters().ed25519_verifies;
  CHECK(received.verify(signed_bytes).ok());
  CHECK(cryptoCounters().ed25519_verifies == before + 1);
  CHECK(received.verify(signed_bytes).ok());
  CHECK(cryptoCounters().ed25519_verifies == before + 1);
  // The remembered signature does not verify another message, another
  // signer, or tampered bytes, and refusals are never remembered.
  CHECK(received.verify(msg("received!")).error().code == Errc::bad_signature);
  CHECK(DigitalSignature(other.publicKey(), sig).verify(signed_bytes).error().code == Errc::bad_signature);
  auto tampered = sig;
  tampered[0] ^= 1;
  CHECK(DigitalSignature(signer.publicKey(), tampered).verify(signed_bytes).error().code == Errc::bad_signature);
  CHECK(DigitalSignature(signer.publicKey(), tampered).verify(signed_bytes).error().code == Errc::bad_signature);
  // A plain signature remembered is not a batch signature with an empty proof.
  DigitalSignature as_batch(signer.publicKey(), sig, signature_version_current, BatchProof{0, 1, {}});
  CHECK(as_batch.verify(signed_bytes).error().code == Errc::bad_signature);
}

TEST_CASE("DigitalSignature::fromParts checks a batch proof's shape") {
  auto key = KeyPair::fromSeed(Bytes(32, 10)).value();
  Bytes sig(64, 1);
  const uint16_t ed = static_cast<uint16_t>(SignatureScheme::ed25519);
  CHECK(DigitalSignature::fromParts(key.publicKey(), ed, 1, sig, BatchProof{0, 1, {}}).ok());
  CHECK(DigitalSignature::fromParts(key.publicKey(), ed, 1, sig, BatchProof{0, 0, {}}).error().code == Errc::malformed);
  CHECK(DigitalSignature::fromParts(key.publicKey(), ed, 1, sig, BatchProof{2, 2, {SecureHash()}}).error().code ==
        Errc::malformed);
  CHECK(DigitalSignature::fromParts(key.publicKey(), ed, 1, sig, BatchProof{0, batch_signature_leaves_max + 1, {}})
            .error()
            .code == Errc::malformed);
  // Two leaves need one hash, not two.
  auto too_long = DigitalSignature::fromParts(key.publicKey(), ed, 1, sig, BatchProof{0, 2, {SecureHash(), SecureHash()}});
  CHECK(too_long.error().code == Errc::malformed);
  CHECK(too_long.error().message.find("at most 1") != std::string::npos);
}
