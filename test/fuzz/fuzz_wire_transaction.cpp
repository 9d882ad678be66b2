// Fuzzes WireTransaction::decode.
//
// For every decodable transaction:
//  - its encoding decodes to a transaction with the same id and the same
//    component groups, and re-encodes to the same bytes; the id is the Merkle
//    root of the group hashes, and fromGroups() on the same groups and salt
//    gives the same id;
//  - the typed views agree with the groups (one value per component), and
//    TransactionBuilder accepts the typed values again and yields equal
//    typed values (construction and decoding enforce the same rules);
//  - the required signers are the command signers plus, exactly when
//    needsNotarySignature(), the notary; with no signature every one is missing;
//  - a FilteredTransaction built from it (the notary's view, everything, and
//    an input-dependent subset) proves the same id and survives its own
//    encode/decode.

#include <algorithm>
#include <vector>

#include "ledger/filtered_transaction.h"
#include "ledger/merkle.h"
#include "ledger/signed_transaction.h"
#include "ledger/transaction.h"
#include "test/fuzz/fuzz_common.h"

using namespace ccal;

namespace {

bool hasKey(const std::vector<Key>& keys, const Key& key) {
  return std::find(keys.begin(), keys.end(), key) != keys.end();
}

void checkFiltered(const WireTransaction& tx, const FilteredTransaction& ftx) {
  FUZZ_CHECK(ftx.id() == tx.id());
  auto decoded = FilteredTransaction::decode(ftx.encode());
  FUZZ_CHECK(decoded.ok());
  FUZZ_CHECK(decoded->id() == tx.id());
  FUZZ_CHECK(decoded->inputs() == ftx.inputs());
  FUZZ_CHECK(decoded->references() == ftx.references());
  FUZZ_CHECK(decoded->notary() == ftx.notary());
  FUZZ_CHECK(decoded->timeWindow() == ftx.timeWindow());
}

void checkTypedRebuild(const WireTransaction& tx) {
  TransactionBuilder b;
  if (tx.notary()) b.setNotary(*tx.notary());
  for (const auto& r : tx.inputs()) b.addInput(r);
  for (const auto& r : tx.references()) b.addReference(r);
  for (const auto& s : tx.outputs()) b.addOutput(s);
  for (const auto& c : tx.commands()) b.addCommand(c);
  for (const auto& a : tx.attachments()) b.addAttachment(a);
  if (tx.timeWindow()) b.setTimeWindow(*tx.timeWindow());
  if (tx.networkParametersHash()) b.setNetworkParametersHash(*tx.networkParametersHash());
  b.setPrivacySalt(tx.privacySalt());
  auto rebuilt = b.build();
  FUZZ_CHECK(rebuilt.ok());
  FUZZ_CHECK(rebuilt->inputs() == tx.inputs());
  FUZZ_CHECK(rebuilt->references() == tx.references());
  FUZZ_CHECK(rebuilt->outputs() == tx.outputs());
  FUZZ_CHECK(rebuilt->commands() == tx.commands());
  FUZZ_CHECK(rebuilt->attachments() == tx.attachments());
  FUZZ_CHECK(rebuilt->notary() == tx.notary());
  FUZZ_CHECK(rebuilt->timeWindow() == tx.timeWindow());
  FUZZ_CHECK(rebuilt->networkParametersHash() == tx.networkParametersHash());
  // Not checked: rebuilt->id() == tx.id(). A component may carry unknown
  // (future) fields that the canonical check accepts and the id covers, but
  // that the typed value drops.
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto tx = WireTransaction::decode(fuzz::input(data, size));
  if (!tx) return 0;

  Bytes encoded = tx->encode();
  auto again = WireTransaction::decode(encoded);
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(again->id() == tx->id());
  FUZZ_CHECK(again->groups() == tx->groups());
  FUZZ_CHECK(again->encode() == encoded);
  FUZZ_CHECK(merkle::root(tx->groupHashes()) == tx->id());
  auto from_groups = WireTransaction::fromGroups(tx->groups(), tx->privacySalt());
  FUZZ_CHECK(from_groups.ok());
  FUZZ_CHECK(from_groups->id() == tx->id());

  using G = ComponentGroup;
  FUZZ_CHECK(tx->inputs().size() == tx->group(G::inputs).size());
  FUZZ_CHECK(tx->references().size() == tx->group(G::references).size());
  FUZZ_CHECK(tx->outputs().size() == tx->group(G::outputs).size());
  FUZZ_CHECK(tx->commands().size() == tx->group(G::commands).size());
  FUZZ_CHECK(tx->commands().size() == tx->group(G::signers).size());
  FUZZ_CHECK(!tx->commands().empty());
  FUZZ_CHECK(tx->attachments().size() == tx->group(G::attachments).size());
  FUZZ_CHECK(tx->notary().has_value() == !tx->group(G::notary).empty());
  FUZZ_CHECK(tx->timeWindow().has_value() == !tx->group(G::time_window).empty());
  FUZZ_CHECK(tx->networkParametersHash().has_value() == !tx->group(G::parameters).empty());
  checkTypedRebuild(*tx);

  std::vector<Key> required = tx->requiredSigningKeys();
  for (const auto& c : tx->commands()) {
    FUZZ_CHECK(!c.signers.empty());
    for (const auto& k : c.signers) FUZZ_CHECK(hasKey(required, k));
  }
  if (tx->needsNotarySignature()) FUZZ_CHECK(hasKey(required, tx->notary()->owningKey));
  SignedTransaction unsigned_tx(*tx);
  FUZZ_CHECK(unsigned_tx.checkSignaturesAreValid().ok());
  FUZZ_CHECK(unsigned_tx.missingSigningKeys().size() == required.size());
  FUZZ_CHECK(unsigned_tx.verifySignaturesExcept(required).ok());
  auto signed_again = SignedTransaction::decode(unsigned_tx.encode());
  FUZZ_CHECK(signed_again.ok());
  FUZZ_CHECK(signed_again->id() == tx->id());

  auto notary_view = FilteredTransaction::forNotary(*tx);
  checkFiltered(*tx, notary_view);
  FUZZ_CHECK(notary_view.inputs() == tx->inputs());
  FUZZ_CHECK(notary_view.references() == tx->references());
  FUZZ_CHECK(notary_view.notary() == tx->notary());
  FUZZ_CHECK(notary_view.timeWindow() == tx->timeWindow());
  for (auto g : {G::inputs, G::references, G::notary, G::time_window}) {
    FUZZ_CHECK(notary_view.checkAllVisible(g).ok());
  }
  auto everything = FilteredTransaction::build(*tx, [](G, uint32_t) { return true; });
  checkFiltered(*tx, everything);
  for (uint32_t g = 0; g < component_group_count; ++g) {
    FUZZ_CHECK(everything.checkAllVisible(static_cast<G>(g)).ok());
  }
  // A subset that depends on the input, so the fuzzer explores proof shapes.
  const auto& mask = tx->id().bytes();
  auto some = FilteredTransaction::build(*tx, [&](G g, uint32_t i) {
    uint32_t bit = static_cast<uint32_t>(g) * 31 + i;
    return (mask[(bit / 8) % mask.size()] >> (bit % 8) & 1) != 0;
  });
  checkFiltered(*tx, some);
  return 0;
}
