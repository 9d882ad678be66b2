#include "notary/replica_store.h"

#include <doctest/doctest.h>

#include <future>

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
