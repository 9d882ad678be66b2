#pragma once
// Test helpers for the notarisation state machine and client: a notary
// cluster of deterministic keys, transactions that spend named states, and
// state machines over real LMDB files. Used by tests and benchmarks only.

#include <future>
#include <memory>
#include <string>
#include <vector>

#include "ledger/filtered_transaction.h"
#include "ledger/testing.h"
#include "notary/notarisation_messages.h"
#include "notary/uniqueness.h"
#include "test/support/temp_dir.h"

namespace ccal::notary::testing {

inline constexpr const char* notary_name = "O=CCAL Notary, L=Haikou, C=CN";

// 3f+1 replica keys (seeds first_seed, first_seed + 1, ...) and the "2f+1 of 3f+1" service key.
struct TestCluster {
  uint32_t f = 1;
  std::vector<KeyPair> replica_keys;
  Key service_key;
  Party party;

  explicit TestCluster(uint32_t faults = 1, std::string name = notary_name, uint8_t first_seed = 100)
      : f(faults) {
    std::vector<PublicKey> keys;
    for (uint32_t i = 0; i < 3 * f + 1; ++i) {
      replica_keys.push_back(ccal::testing::testKey(static_cast<uint8_t>(first_seed + i)));
      keys.push_back(replica_keys.back().publicKey());
    }
    service_key = Key::anyOf(2 * f + 1, keys).value();
    party = Party{std::move(name), service_key};
  }

  UniquenessConfig config() const {
    UniquenessConfig c;
    c.notary_name = party.name;
    c.service_key = service_key;
    return c;
  }
};

// A state that some earlier transaction produced, named for readability.
inline StateRef stateRef(const std::string& name, uint32_t index = 0) {
  return StateRef{SecureHash::of(asBytes("state of " + name)), index};
}

// A transaction spending `inputs`, reading `references`, within `window`.
inline WireTransaction spend(const Party& notary, const std::vector<StateRef>& inputs,
                             const std::vector<StateRef>& references = {},
                             std::optional<TimeWindow> window = std::nullopt) {
  auto alice = ccal::testing::testKey(1);
  TransactionBuilder b(notary);
  for (const auto& r : inputs) b.addInput(r);
  for (const auto& r : references) b.addReference(r);
  b.addOutput(ccal::testing::dummyState(notary, {Key(alice.publicKey())}, "moved"));
  b.addCommand(ccal::testing::dummyCommand("Move", {Key(alice.publicKey())}));
  if (window) b.setTimeWindow(*window);
  return b.build().value();
}

inline Bytes nonValidatingRequest(const WireTransaction& tx, const std::string& notary = notary_name) {
  return NotarisationRequest::nonValidating(notary, FilteredTransaction::forNotary(tx)).encode();
}

inline Request request(Bytes body, uint64_t client_seq = 1, std::string client = "O=Alice, L=Haikou, C=CN") {
  return Request{std::move(client), client_seq, std::move(body)};
}

// A state machine over its own LMDB directory.
struct TestReplica {
  std::unique_ptr<ccal::testing::TempDir> dir;
  std::unique_ptr<vault::Store> store;
  std::unique_ptr<UniquenessStateMachine> sm;

  static vault::StoreConfig storeConfig(const std::string& path, bool durable) {
    vault::StoreConfig c;
    c.path = path;
    c.map_size_bytes = 256ull << 20;
    c.durable = durable;
    return c;
  }

  TestReplica(const UniquenessConfig& config, const KeyPair& key, bool durable = false)
      : dir(std::make_unique<ccal::testing::TempDir>("ccal-notary")) {
    open(config, key, durable);
  }
  void open(const UniquenessConfig& config, const KeyPair& key, bool durable = false) {
    sm.reset();
    store.reset();
    store = UniquenessStateMachine::openStore(storeConfig(dir->path, durable)).value();
    sm = UniquenessStateMachine::open(*store, config, key).value();
  }
  void close() {
    sm.reset();
    store.reset();
  }

  // Executes and waits for the durable result.
  Result<Executed> execute(const Batch& batch) {
    std::promise<Result<Executed>> promise;
    auto future = promise.get_future();
    sm->execute(batch, [&](Result<Executed> r) { promise.set_value(std::move(r)); });
    return future.get();
  }
  Result<Executed> execute(std::vector<Request> requests, int64_t time_micros = 1'000'000) {
    Batch b;
    b.seq = sm->lastExecuted() + 1;
    b.time_micros = time_micros;
    b.requests = std::move(requests);
    return execute(b);
  }
  Status applyEffects(uint64_t seq, ByteView effects) {
    std::promise<Status> promise;
    auto future = promise.get_future();
    sm->applyEffects(seq, effects, [&](Status s) { promise.set_value(std::move(s)); });
    return future.get();
  }
};

inline SignedNotarisationReply signedReply(ByteView bytes) {
  return SignedNotarisationReply::decode(bytes).value();
}
inline NotarisationReply replyOf(ByteView bytes) {
  return NotarisationReply::decode(signedReply(bytes).reply).value();
}

}  // namespace ccal::notary::testing
