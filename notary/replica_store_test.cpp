#include "notary/replica_store.h"

#include <doctest/doctest.h>

#include <future>
#include <set>

#include "test/support/temp_dir.h"

using namespace ccal;
using namespace ccal::notary::pbft;

TEST_CASE("replica store: protocol state survives a reopen; truncation drops the log below a checkpoint") {
  ccal::testing::TempDir dir;
  vault::StoreConfig config;
  config.path = dir.path;
  config.durable = false;
  {
    auto store = vault::Store::open(config, ReplicaStore::dbNames(), "pbft-test", 1).value();
    ReplicaStore rs(*store);
    Step step;
    MetaRecord meta;
    meta.view = 7;
    meta.view_changing = true;
    meta.stable_seq = 0;
    meta.last_batch_time_micros = 1234;
    step.meta = meta;
    for (uint64_t seq = 1; seq <= 6; ++seq) {
      SlotRecord slot;
      slot.seq = seq;
      BatchBody batch{int64_t(seq), {}};
      slot.pre_prepared[batch.digest()] = 6;
      slot.batches[batch.digest()] = encodeBatch(batch);
      slot.has_prepared = seq % 2 == 0;
      slot.prepared_view = 6;
      slot.prepared_digest = batch.digest();
      step.slots[seq] = slot;
    }
    step.digests[4] = SecureHash::of(asBytes("D4"));
    step.replies["client"][3] = ReplyRecord{3, 6, Bytes{1, 2, 3}};
    std::promise<Status> done;
    rs.write(step, [&](const Status& s) { done.set_value(s); });
    REQUIRE(done.get_future().get().ok());
    Step trunc;
    trunc.truncate_through = 4;
    std::promise<Status> done2;
    rs.write(trunc, [&](const Status& s) { done2.set_value(s); });
    REQUIRE(done2.get_future().get().ok());
  }
  auto store = vault::Store::open(config, ReplicaStore::dbNames(), "pbft-test", 1).value();
  auto rec = ReplicaStore(*store).load();
  REQUIRE(rec.ok());
  CHECK(rec->meta.view == 7);
  CHECK(rec->meta.view_changing);
  CHECK(rec->meta.last_batch_time_micros == 1234);
  CHECK(rec->slots.size() == 2);
  CHECK(rec->slots.count(5));
  CHECK(rec->slots.at(6).has_prepared);
  CHECK(!rec->slots.at(5).has_prepared);
  CHECK(rec->slots.at(6).batches.size() == 1);
  CHECK(rec->digests.count(4));  // the truncation point's digest is kept
  CHECK(rec->replies.at("client").at(3).body == Bytes{1, 2, 3});
}

TEST_CASE("replica store: corrupt records are refused with an error naming them") {
  CHECK(!ReplicaStore::decodeSlot(3, Bytes{1, 2}).ok());
  CHECK(ReplicaStore::decodeSlot(3, Bytes{9}).error().message.find("slot 3") != std::string::npos);
  CHECK(!ReplicaStore::decodeMeta(Bytes{}).ok());
  MetaRecord m;
  m.view = 2;
  Bytes good = ReplicaStore::encodeMeta(m);
  CHECK(ReplicaStore::decodeMeta(good).ok());
  good.push_back(0);
  CHECK(!ReplicaStore::decodeMeta(good).ok());
}

TEST_CASE("replica store: the reply cache is written per reply; evicted replies are deleted; old whole-cache records load") {
  ccal::testing::TempDir dir;
  vault::StoreConfig config;
  config.path = dir.path;
  config.durable = false;
  auto write = [](ReplicaStore& rs, Step step) {
    std::promise<Status> done;
    rs.write(std::move(step), [&](const Status& s) { done.set_value(s); });
    return done.get_future().get();
  };
  {
    auto store = vault::Store::open(config, ReplicaStore::dbNames(), "pbft-test", 1).value();
    ReplicaStore rs(*store);
    Step a;
    for (uint64_t cs = 1; cs <= 3; ++cs) a.replies["alice"][cs] = ReplyRecord{cs, 0, Bytes{uint8_t(cs)}};
    a.replies["bob"][9] = ReplyRecord{9, 1, Bytes{9}};
    REQUIRE(write(rs, a).ok());
    CHECK(store->read().entries(store->db("pbft_replies")) == 4);
    // The next step adds one reply and evicts one: two keys change, the rest are not rewritten.
    Step b;
    b.replies["alice"][4] = ReplyRecord{4, 0, Bytes{4}};
    b.replies_dropped["alice"] = {1};
    REQUIRE(write(rs, b).ok());
    // A whole-cache record as stores written before per-reply records hold it.
    REQUIRE(store
                ->write([&](vault::WriteTxn& txn) {
                  Bytes v{1, 1, 0, 0, 0};  // format 1, one entry
                  for (uint64_t x : {uint64_t{5}, uint64_t{2}}) {
                    for (int i = 0; i < 8; ++i) v.push_back(static_cast<uint8_t>(x >> (8 * i)));
                  }
                  v.insert(v.end(), {2, 0, 0, 0, 0xaa, 0xbb});
                  return txn.put(store->db("pbft_replies"), asBytes("carol"), v);
                })
                .ok());
  }
  auto store = vault::Store::open(config, ReplicaStore::dbNames(), "pbft-test", 1).value();
  auto rec = ReplicaStore(*store).load();
  REQUIRE(rec.ok());
  REQUIRE(rec->replies.at("alice").size() == 3);
  CHECK(!rec->replies.at("alice").count(1));
  CHECK(rec->replies.at("alice").at(4).body == Bytes{4});
  CHECK(rec->replies.at("bob").at(9).view == 1);
  CHECK(rec->replies.at("carol").at(5).view == 2);
  CHECK(rec->replies.at("carol").at(5).body == (Bytes{0xaa, 0xbb}));
  CHECK(rec->legacy_reply_clients == std::set<std::string>{"carol"});
  // Rewritten per reply, the old record goes.
  ReplicaStore rs(*store);
  Step c;
  c.replies["carol"] = rec->replies.at("carol");
  c.legacy_replies_dropped = {"carol"};
  REQUIRE(write(rs, c).ok());
  auto again = ReplicaStore(*store).load();
  REQUIRE(again.ok());
  CHECK(again->legacy_reply_clients.empty());
  CHECK(again->replies.at("carol").at(5).body == (Bytes{0xaa, 0xbb}));
}

TEST_CASE("replica store: batches are written once under their own keys; dropped ones go; inline (format 1) slots load") {
  ccal::testing::TempDir dir;
  vault::StoreConfig config;
  config.path = dir.path;
  config.durable = false;
  auto store = vault::Store::open(config, ReplicaStore::dbNames(), "pbft-test", 1).value();
  ReplicaStore rs(*store);
  auto write = [&](const Step& step) {
    std::promise<Status> done;
    rs.write(step, [&](const Status& s) { done.set_value(s); });
    REQUIRE(done.get_future().get().ok());
  };
  auto slotStep = [](const SlotRecord& r) {
    Step step;
    step.slots[r.seq] = r;
    return step;
  };
  const BatchBody a{10, {}}, b{11, {}};
  // Pre-prepared a: the record and a's batch.
  SlotRecord slot;
  slot.seq = 3;
  slot.pre_prepared[a.digest()] = 1;
  slot.batches[a.digest()] = encodeBatch(a);
  write(slotStep(slot));
  // Prepared: the record alone, without the batch again; a stays.
  slot.batches.clear();
  slot.has_prepared = true;
  slot.prepared_view = 1;
  slot.prepared_digest = a.digest();
  write(slotStep(slot));
  auto rec = rs.load();
  REQUIRE(rec.ok());
  REQUIRE(rec->slots.at(3).batches.count(a.digest()));
  CHECK(decodeBatch(rec->slots.at(3).batches.at(a.digest()), PbftLimits{})->time_micros == 10);
  CHECK(rec->slots.at(3).has_prepared);
  // A new view pre-prepares b in Q and a leaves Q and P: a's batch is deleted.
  slot.pre_prepared = {{b.digest(), 2}};
  slot.has_prepared = false;
  slot.batches = {{b.digest(), encodeBatch(b)}};
  slot.batches_dropped = {a.digest()};
  write(slotStep(slot));
  rec = rs.load();
  REQUIRE(rec.ok());
  CHECK(rec->slots.at(3).batches.size() == 1);
  CHECK(rec->slots.at(3).batches.count(b.digest()));
  // A batch key whose digest is in neither Q nor P is not handed out.
  slot.pre_prepared = {{a.digest(), 3}};
  slot.batches.clear();
  slot.batches_dropped.clear();
  write(slotStep(slot));
  rec = rs.load();
  REQUIRE(rec.ok());
  CHECK(rec->slots.at(3).batches.empty());
  // Truncation removes the slot's batch keys with it.
  Step truncate;
  truncate.truncate_through = 3;
  write(truncate);
  {
    auto txn = store->read();
    auto c = txn.cursor(store->db("pbft_log"));
    CHECK(!c.first());
  }
  // A slot record of format 1 (batches inline), as stores written before hold.
  Bytes legacy{1};
  appendU32(legacy, 1);
  append(legacy, a.digest().view());
  appendU64(legacy, 4);
  appendU32(legacy, 1);
  append(legacy, a.digest().view());
  const Bytes encoded = encodeBatch(a);
  appendU32(legacy, static_cast<uint32_t>(encoded.size()));
  append(legacy, encoded);
  legacy.push_back(0);
  appendU64(legacy, 0);
  append(legacy, SecureHash::zero().view());
  auto old = ReplicaStore::decodeSlot(9, legacy);
  REQUIRE(old.ok());
  CHECK(old->pre_prepared.at(a.digest()) == 4);
  CHECK(old->batches.at(a.digest()) == encoded);
  // The current format holds no batches inline.
  CHECK(ReplicaStore::decodeSlot(9, ReplicaStore::encodeSlot(*old))->batches.empty());
}
