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
    CHECK(!rs.load()->has_meta);  // a fresh store: this replica never wrote
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
    step.reply_batches[3] = ReplyBatchRecord{{{"client", 3, 6}}, {}, {Bytes{1, 2, 3}}};
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
  CHECK(rec->has_meta);
  CHECK(!rec->meta.clean_stop);
  CHECK(rec->meta.view == 7);
  CHECK(rec->meta.view_changing);
  CHECK(rec->meta.last_batch_time_micros == 1234);
  CHECK(rec->slots.size() == 2);
  CHECK(rec->slots.count(5));
  CHECK(rec->slots.at(6).has_prepared);
  CHECK(!rec->slots.at(5).has_prepared);
  CHECK(rec->slots.at(6).batches.size() == 1);
  CHECK(rec->digests.count(4));  // the truncation point's digest is kept
  CHECK(rec->reply_batches.at(3).replies == std::vector<Bytes>{Bytes{1, 2, 3}});
}

TEST_CASE("replica store: corrupt records are refused with an error naming them") {
  CHECK(!ReplicaStore::decodeSlot(3, Bytes{1, 2}).ok());
  CHECK(ReplicaStore::decodeSlot(3, Bytes{9}).error().message.find("slot 3") != std::string::npos);
  CHECK(!ReplicaStore::decodeMeta(Bytes{}).ok());
  MetaRecord m;
  m.view = 2;
  Bytes good = ReplicaStore::encodeMeta(m);
  CHECK(ReplicaStore::decodeMeta(good).ok());
  CHECK(!ReplicaStore::decodeMeta(good)->clean_stop);  // (also: records before the mark existed)
  // The clean-stop mark: one trailing byte 1; anything else after the record is refused.
  m.clean_stop = true;
  Bytes clean = ReplicaStore::encodeMeta(m);
  CHECK(clean.size() == good.size() + 1);
  CHECK(ReplicaStore::decodeMeta(clean)->clean_stop);
  CHECK(ReplicaStore::decodeMeta(clean)->view == 2);
  clean.push_back(1);
  CHECK(!ReplicaStore::decodeMeta(clean).ok());
  good.push_back(0);
  CHECK(!ReplicaStore::decodeMeta(good).ok());
}

TEST_CASE(
    "replica store: the reply cache is one record per batch, packed or plain; old batches are "
    "deleted; older formats load") {
  ccal::testing::TempDir dir;
  vault::StoreConfig config;
  config.path = dir.path;
  config.durable = false;
  auto write = [](ReplicaStore& rs, Step step) {
    std::promise<Status> done;
    rs.write(std::move(step), [&](const Status& s) { done.set_value(s); });
    return done.get_future().get();
  };
  auto be64 = [](uint64_t x) {
    Bytes b;
    for (int i = 7; i >= 0; --i) b.push_back(static_cast<uint8_t>(x >> (8 * i)));
    return b;
  };
  auto le = [](Bytes& out, uint64_t x, int n) {
    for (int i = 0; i < n; ++i) out.push_back(static_cast<uint8_t>(x >> (8 * i)));
  };
  {
    auto store = vault::Store::open(config, ReplicaStore::dbNames(), "pbft-test", 1).value();
    ReplicaStore rs(*store);
    Step a;
    a.reply_batches[1] = ReplyBatchRecord{{{"alice", 1, 0}, {"bob", 9, 0}}, Bytes{7, 7, 7}, {}};
    a.reply_batches[2] = ReplyBatchRecord{{{"alice", 2, 1}}, {}, {Bytes{2}}};
    a.reply_batches[3] = ReplyBatchRecord{{{"alice", 3, 1}}, {}, {Bytes{3}}};
    REQUIRE(write(rs, a).ok());
    CHECK(store->read().entries(store->db("pbft_replies")) == 3);
    // Batches up to 2 fall out; batch 4 comes (and one at or below the cut is not written).
    Step b;
    b.reply_batches_through = 2;
    b.reply_batches[2] = ReplyBatchRecord{{{"alice", 5, 1}}, {}, {Bytes{5}}};
    b.reply_batches[4] = ReplyBatchRecord{{{"carol", 4, 2}}, {}, {Bytes{4, 4}}};
    REQUIRE(write(rs, b).ok());
    CHECK(store->read().entries(store->db("pbft_replies")) == 2);
    // Records of the formats before: one per reply (0x00 || client || 0x00 ||
    // u64 BE client_seq -> format 2, view, body) and one whole cache per client.
    REQUIRE(store
                ->write([&](vault::WriteTxn& txn) -> Status {
                  Bytes k{0};
                  append(k, asBytes("dave"));
                  k.push_back(0);
                  append(k, be64(6));
                  Bytes v{2};
                  le(v, 3, 8);
                  le(v, 1, 4);
                  v.push_back(0x66);
                  CCAL_TRY(txn.put(store->db("pbft_replies"), k, v));
                  Bytes w{1, 1, 0, 0, 0};  // format 1, one entry: client_seq 5, view 2, 2 bytes
                  le(w, 5, 8);
                  le(w, 2, 8);
                  w.insert(w.end(), {2, 0, 0, 0, 0xaa, 0xbb});
                  return txn.put(store->db("pbft_replies"), asBytes("erin"), w);
                })
                .ok());
  }
  auto store = vault::Store::open(config, ReplicaStore::dbNames(), "pbft-test", 1).value();
  auto rec = ReplicaStore(*store).load();
  REQUIRE(rec.ok());
  REQUIRE(rec->reply_batches.size() == 2);
  CHECK(rec->reply_batches.at(3).entries == std::vector<ReplyBatchRecord::Entry>{{"alice", 3, 1}});
  CHECK(rec->reply_batches.at(3).packed.empty());
  CHECK(rec->reply_batches.at(3).replies == std::vector<Bytes>{Bytes{3}});
  CHECK(rec->reply_batches.at(4).entries == std::vector<ReplyBatchRecord::Entry>{{"carol", 4, 2}});
  CHECK(rec->reply_batches.at(4).replies == std::vector<Bytes>{Bytes{4, 4}});
  CHECK(rec->replies.at("dave").at(6).view == 3);
  CHECK(rec->replies.at("dave").at(6).body == Bytes{0x66});
  CHECK(rec->replies.at("erin").at(5).view == 2);
  CHECK(rec->replies.at("erin").at(5).body == (Bytes{0xaa, 0xbb}));
  CHECK(rec->legacy_reply_clients == std::set<std::string>{"erin"});
  // Deleting the older records leaves the per-batch ones.
  ReplicaStore rs(*store);
  Step c;
  c.replies_dropped["dave"] = {6};
  c.replies_dropped["erin"] = {5};  // (no such per-reply key: a no-op)
  c.legacy_replies_dropped = {"erin"};
  REQUIRE(write(rs, c).ok());
  auto again = ReplicaStore(*store).load();
  REQUIRE(again.ok());
  CHECK(again->replies.empty());
  CHECK(again->legacy_reply_clients.empty());
  CHECK(again->reply_batches.size() == 2);
  // One batch's record dropped (it failed to expand at start): that one only.
  Step d;
  d.reply_batches_dropped = {3, 7};  // (no record of batch 7: a no-op)
  REQUIRE(write(rs, d).ok());
  auto dropped = ReplicaStore(*store).load();
  REQUIRE(dropped.ok());
  REQUIRE(dropped->reply_batches.size() == 1);
  CHECK(dropped->reply_batches.count(4) == 1);

  // A damaged batch record is refused, naming the batch.
  REQUIRE(store
              ->write([&](vault::WriteTxn& txn) {
                Bytes k{1};
                append(k, be64(9));
                return txn.put(store->db("pbft_replies"), k, Bytes{3, 1, 0, 0, 0});
              })
              .ok());
  auto bad = ReplicaStore(*store).load();
  REQUIRE(!bad.ok());
  CHECK(bad.error().message.find("replies of batch 9") != std::string::npos);
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

TEST_CASE(
    "replica store: merging a logged slot keeps the higher view's P and the union of Q, in either "
    "order") {
  const SecureHash a = SecureHash::of(asBytes("batch a")), b = SecureHash::of(asBytes("batch b"));
  SlotRecord store_slot;  // P of view 2 (the store, written after a view change)
  store_slot.seq = 7;
  store_slot.pre_prepared = {{b, 2}};
  store_slot.batches[b] = Bytes{2};
  store_slot.has_prepared = true;
  store_slot.prepared_view = 2;
  store_slot.prepared_digest = b;
  SlotRecord log_slot;  // P of view 1 (a record of an earlier lap, still whole)
  log_slot.seq = 7;
  log_slot.pre_prepared = {{a, 1}, {b, 1}};
  log_slot.batches[a] = Bytes{1};
  log_slot.has_prepared = true;
  log_slot.prepared_view = 1;
  log_slot.prepared_digest = a;
  for (bool log_first : {false, true}) {
    CAPTURE(log_first);
    SlotRecord into = log_first ? log_slot : store_slot;
    ReplicaStore::mergeSlot(into, log_first ? store_slot : log_slot);
    CHECK(into.has_prepared);
    CHECK(into.prepared_view == 2);
    CHECK(into.prepared_digest == b);
    CHECK(into.pre_prepared.size() == 2);
    CHECK(into.pre_prepared.at(b) == 2);  // the latest view for a digest
    CHECK(into.pre_prepared.at(a) == 1);
    CHECK(into.batches.size() == 2);
  }
  // A slot with no P takes the other's.
  SlotRecord bare;
  bare.seq = 7;
  ReplicaStore::mergeSlot(bare, log_slot);
  CHECK(bare.has_prepared);
  CHECK(bare.prepared_view == 1);
  CHECK(bare.prepared_digest == a);
}
