// scripts/bench ledger: per-core rates of the ledger core's hot paths.
//
// Transaction ids for a 2-input, 2-output transaction; Ed25519 signatures
// made and verified through our API beside raw libsodium in the same run;
// and SignedTransaction verification (from bytes: decode, id, two
// signatures), whose target is at most 1.15x the cost of two raw verifies.

#include <sodium.h>

#include <cstdio>

#include "ledger/signed_transaction.h"
#include "ledger/testing.h"
#include "test/bench/bench.h"

using namespace ccal;
using namespace ccal::testing;

int main(int argc, char** argv) {
  auto options = bench::Options::fromArgs(argc, argv);
  ensureSodiumInitialised();

  KeyPair alice = testKey(1), bob = testKey(2), notary_key = testKey(9);
  Party alice_party = testParty("Haikou Fishing Cooperative", alice);
  Party bob_party = testParty("Sanya Tea Cooperative", bob);
  Party notary = testParty("CCAL Notary", notary_key);
  SecureHash genesis = SecureHash::of(asBytes("genesis"));
  auto tx = TransactionBuilder(notary)
                .addInput({genesis, 0})
                .addInput({genesis, 1})
                .addOutput(dummyState(notary, {alice_party.owningKey}, "alice-100"))
                .addOutput(dummyState(notary, {bob_party.owningKey}, "bob-50"))
                .addCommand(dummyCommand("Move", {alice_party.owningKey, bob_party.owningKey}))
                .build()
                .value();
  SignedTransaction stx(tx);
  stx.signWith(alice).signWith(bob);
  const Bytes stx_bytes = stx.encode();
  const Bytes message = signableBytes(tx.id());
  const std::vector<Key> notary_may_be_missing{notary.owningKey};

  // Raw libsodium, the floor.
  unsigned char sk[crypto_sign_SECRETKEYBYTES], pk[crypto_sign_PUBLICKEYBYTES];
  unsigned char sig[crypto_sign_BYTES];
  crypto_sign_keypair(pk, sk);
  crypto_sign_detached(sig, nullptr, message.data(), message.size(), sk);
  volatile int sink = 0;
  double raw_sign = bench::medianRate(options, [&] {
    crypto_sign_detached(sig, nullptr, message.data(), message.size(), sk);
  });
  double raw_verify = bench::medianRate(options, [&] {
    sink = sink + crypto_sign_verify_detached(sig, message.data(), message.size(), pk);
  });

  // Our API.
  DigitalSignature ours = alice.sign(message);
  double api_sign = bench::medianRate(options, [&] { ours = alice.sign(message); });
  double api_verify = bench::medianRate(options, [&] { sink = sink + ours.verify(message).ok(); });

  // Transaction ids.
  double id_from_components = bench::medianRate(options, [&] {
    sink = sink + computeTransactionId(tx.groups(), tx.privacySalt()).bytes()[0];
  });
  double tx_decode_and_id = bench::medianRate(options, [&] {
    sink = sink + WireTransaction::fromGroups(tx.groups(), tx.privacySalt()).ok();
  });

  // SignedTransaction verification.
  double stx_from_bytes = bench::medianRate(options, [&] {
    auto decoded = SignedTransaction::decode(stx_bytes);
    sink = sink + decoded->verifySignaturesExcept(notary_may_be_missing).ok();
  });
  double stx_decoded = bench::medianRate(options, [&] {
    sink = sink + stx.verifySignaturesExcept(notary_may_be_missing).ok();
  });
  if (!stx.verifySignaturesExcept(notary_may_be_missing).ok()) {
    std::fprintf(stderr, "bench: the benchmark transaction does not verify\n");
    return 1;
  }

  // Cost of one SignedTransaction verification over the cost of two raw
  // verifies, measured back to back in each trial: rate(2 raw) / rate(stx).
  auto raw_verify_twice = [&] {
    sink = sink + crypto_sign_verify_detached(sig, message.data(), message.size(), pk);
    sink = sink + crypto_sign_verify_detached(sig, message.data(), message.size(), pk);
  };
  double ratio_from_bytes = bench::medianRatio(options, raw_verify_twice, [&] {
    auto decoded = SignedTransaction::decode(stx_bytes);
    sink = sink + decoded->verifySignaturesExcept(notary_may_be_missing).ok();
  });
  double ratio_decoded = bench::medianRatio(options, raw_verify_twice, [&] {
    sink = sink + stx.verifySignaturesExcept(notary_may_be_missing).ok();
  });

  std::printf("CCAL ledger benchmark (per core, median of %d trials of %.2fs)\n", options.trials,
              options.trial_seconds);
  std::printf("  transaction size (2 in, 2 out, 2 signatures): %zu bytes\n", stx_bytes.size());
  std::printf("  raw libsodium Ed25519 sign                 %10.0f /s\n", raw_sign);
  std::printf("  raw libsodium Ed25519 verify               %10.0f /s\n", raw_verify);
  std::printf("  KeyPair::sign                              %10.0f /s\n", api_sign);
  std::printf("  DigitalSignature::verify                   %10.0f /s\n", api_verify);
  std::printf("  transaction id (Merkle over components)    %10.0f /s\n", id_from_components);
  std::printf("  transaction decode + checks + id           %10.0f /s\n", tx_decode_and_id);
  std::printf("  SignedTransaction verify, from bytes       %10.0f /s\n", stx_from_bytes);
  std::printf("  SignedTransaction verify, already decoded  %10.0f /s\n", stx_decoded);
  std::printf("  cost ratio vs two raw verifies: from bytes %.3fx, decoded %.3fx (target <= 1.15x)\n",
              ratio_from_bytes, ratio_decoded);
  std::printf(
      "{\"bench\":\"ledger\",\"raw_sign_per_s\":%.0f,\"raw_verify_per_s\":%.0f,"
      "\"sign_per_s\":%.0f,\"verify_per_s\":%.0f,\"tx_id_per_s\":%.0f,"
      "\"tx_decode_id_per_s\":%.0f,\"stx_verify_from_bytes_per_s\":%.0f,"
      "\"stx_verify_decoded_per_s\":%.0f,\"stx_cost_ratio_from_bytes\":%.3f,"
      "\"stx_cost_ratio_decoded\":%.3f,\"target_ratio\":1.15}\n",
      raw_sign, raw_verify, api_sign, api_verify, id_from_components, tx_decode_and_id,
      stx_from_bytes, stx_decoded, ratio_from_bytes, ratio_decoded);
  return sink == 42424242 ? 2 : 0;
}
