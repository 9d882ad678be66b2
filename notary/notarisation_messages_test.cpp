#include "notary/notarisation_messages.h"

#include <doctest/doctest.h>

#include "ledger/merkle.h"
#include "ledger/testing.h"

using namespace ccal;
using namespace ccal::notary;

namespace {

Bytes replyBytes(size_t n) {
  Bytes b(n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(i * 7 + 1);
  return b;
}

}  // namespace

TEST_CASE("signed reply: the direct canonical encoding equals the built one, and reads back") {
  const KeyPair key = testing::testKey(5);
  size_t cases = 0;
  for (uint32_t count : {1u, 2u, 3u, 7u, 64u}) {
    for (uint32_t index : {0u, count / 2, count - 1}) {
      for (size_t reply_size : {1u, 8u, 13u, 200u}) {
        for (bool tx : {false, true}) {
          SignedNotarisationReply r;
          r.reply = replyBytes(reply_size);
          r.leafIndex = index;
          r.leafCount = count;
          std::vector<SecureHash> leaves;
          for (uint32_t i = 0; i < count; ++i) leaves.push_back(SecureHash::of(replyBytes(i + 1)));
          if (tx) {
            // A success: the transaction signature, no batch-root parts.
            std::vector<Bytes> ids;
            for (uint32_t i = 0; i <= index; ++i) ids.push_back(replyBytes(32));
            r.txSignature = key.signBatch(ids).back();
          } else {
            r.proof = merkle::prove(leaves, std::span<const uint32_t>(&index, 1));
            r.rootSignature = key.sign(asBytes("root"));
          }
          const Bytes direct = r.encode();
          REQUIRE(direct == r.encodeBuilt());
          auto back = SignedNotarisationReply::decode(direct);
          REQUIRE(back.ok());
          CHECK(back->reply == r.reply);
          CHECK(back->leafIndex == index);
          CHECK(back->leafCount == count);
          CHECK(back->proof == r.proof);
          CHECK(back->rootSignature == r.rootSignature);
          CHECK(back->txSignature == r.txSignature);
          ++cases;
        }
      }
    }
  }
  CHECK(cases == 5 * 3 * 4 * 2);
}

TEST_CASE("signed reply: decodeForSuccess reads the reply and the transaction signature only") {
  const KeyPair key = testing::testKey(6);
  SignedNotarisationReply r;
  r.reply = replyBytes(40);
  r.leafIndex = 1;
  r.leafCount = 3;
  r.txSignature = key.signBatch(std::vector<Bytes>{replyBytes(32), replyBytes(33)}).back();
  const Bytes bytes = r.encode();
  auto light = SignedNotarisationReply::decodeForSuccess(bytes);
  REQUIRE(light.ok());
  CHECK(light->reply == r.reply);
  CHECK(light->txSignature == r.txSignature);
  CHECK(light->proof.empty());
  // Not in canonical form (a word after the message): decode() refuses it,
  // decodeForSuccess() does not look.
  Bytes padded = bytes;
  padded.resize(padded.size() + 8, 0);
  CHECK(SignedNotarisationReply::decode(padded).error().code == Errc::not_canonical);
  CHECK(SignedNotarisationReply::decodeForSuccess(padded).ok());
  // Still refused: no reply, a declared but missing transaction signature.
  SignedNotarisationReply empty = r;
  empty.reply.clear();
  CHECK(
      SignedNotarisationReply::decodeForSuccess(empty.encode()).error().message.find("no reply") !=
      std::string::npos);
  SignedNotarisationReply no_tx = r;
  no_tx.txSignature.reset();
  no_tx.rootSignature = key.sign(asBytes("root"));
  auto no_tx_read = SignedNotarisationReply::decodeForSuccess(no_tx.encode());
  REQUIRE(no_tx_read.ok());
  CHECK(!no_tx_read->txSignature.has_value());
  CHECK(!no_tx_read->rootSignature.has_value());  // not read
  // Neither signature: refused by both.
  SignedNotarisationReply unsigned_reply = r;
  unsigned_reply.txSignature.reset();
  CHECK(unsigned_reply.encode() == unsigned_reply.encodeBuilt());
  auto unsigned_read = SignedNotarisationReply::decode(unsigned_reply.encode());
  REQUIRE(!unsigned_read.ok());
  CHECK_MESSAGE(unsigned_read.error().message.find("neither") != std::string::npos,
                unsigned_read.error().message);
  // Both (an older replica's success): still read.
  SignedNotarisationReply both = r;
  both.rootSignature = key.sign(asBytes("root"));
  CHECK(both.encode() == both.encodeBuilt());
  auto both_read = SignedNotarisationReply::decode(both.encode());
  REQUIRE(both_read.ok());
  CHECK(both_read->rootSignature == both.rootSignature);
  CHECK(both_read->txSignature == both.txSignature);
}

TEST_CASE(
    "a success reply written directly equals the builder's canonical bytes; other outcomes are the "
    "builder's") {
  for (uint64_t seq : {uint64_t{0}, uint64_t{1}, uint64_t{255}, uint64_t{1} << 40, ~uint64_t{0}}) {
    for (int variant = 0; variant < 3; ++variant) {
      NotarisationReply r;
      r.batchSeq = seq;
      r.requestHash = variant == 0 ? SecureHash::zero()
                                   : SecureHash::of(asBytes("request " + std::to_string(variant)));
      r.txId = variant == 1 ? SecureHash::zero()
                            : SecureHash::of(asBytes("tx " + std::to_string(variant)));
      INFO("seq " << seq << " variant " << variant);
      REQUIRE(r.encode() == r.encodeBuilt());
      auto back = NotarisationReply::decode(r.encode());
      if (seq == 0) {
        CHECK(!back.ok());  // batch 0 is only ever an error
        continue;
      }
      REQUIRE(back.ok());
      CHECK(back->outcome == NotarisationReply::Outcome::success);
      CHECK(back->batchSeq == seq);
      CHECK(back->requestHash == r.requestHash);
      CHECK(back->txId == r.txId);
    }
  }
  NotarisationReply conflict;
  conflict.batchSeq = 3;
  conflict.outcome = NotarisationReply::Outcome::conflict;
  conflict.conflicts.push_back(StateConflict{StateRef{SecureHash::of(asBytes("a")), 2},
                                             SecureHash::of(asBytes("b")), false});
  CHECK(conflict.encode() == conflict.encodeBuilt());
  NotarisationReply error;
  error.outcome = NotarisationReply::Outcome::error;
  error.error = makeError(Errc::malformed, "no");
  CHECK(error.encode() == error.encodeBuilt());
}

TEST_CASE("batch effects written directly equal the builder's canonical bytes, and decode back") {
  auto hash = [](const std::string& s) { return SecureHash::of(asBytes(s)); };
  std::vector<BatchEffects> cases;
  BatchEffects empty;
  empty.seq = 1;
  cases.push_back(empty);
  BatchEffects zero_seq;  // (refused by decode: encoded all the same)
  zero_seq.consumed.push_back(ConsumedState{StateRef{hash("a"), 0}, hash("t")});
  cases.push_back(zero_seq);
  for (size_t n : {size_t{1}, size_t{2}, size_t{7}, size_t{300}}) {
    BatchEffects e;
    e.seq = (uint64_t{1} << 40) + n;
    for (size_t i = 0; i < n; ++i) {
      // Indexes 0 (a truncated data word) and others, in one list.
      const uint32_t index = i % 3 == 0 ? 0 : static_cast<uint32_t>(i * 1000 + 1);
      e.consumed.push_back(ConsumedState{StateRef{hash("in " + std::to_string(i)), index},
                                         hash("tx " + std::to_string(i))});
    }
    cases.push_back(e);
    BatchEffects with_txs = e;
    for (size_t i = 0; i < n; ++i)
      with_txs.committedWithoutInputs.push_back(hash("no inputs " + std::to_string(i)));
    cases.push_back(with_txs);
    BatchEffects only_txs;
    only_txs.seq = n;
    only_txs.committedWithoutInputs = with_txs.committedWithoutInputs;
    cases.push_back(only_txs);
  }
  for (size_t k = 0; k < cases.size(); ++k) {
    INFO("case " << k);
    const Bytes direct = cases[k].encode();
    INFO("direct " << toHex(direct) << " built " << toHex(cases[k].encodeBuilt()));
    REQUIRE(direct == cases[k].encodeBuilt());
    if (cases[k].seq == 0) continue;
    auto back = BatchEffects::decode(direct);
    REQUIRE(back.ok());
    CHECK(*back == cases[k]);
  }
}
