#include "vault/flow_store.h"

#include <doctest/doctest.h>

#include "test/support/temp_dir.h"
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <map>
#include <random>
#include <semaphore>
#include <set>
#include <thread>
#include <tuple>

#include "vault/vault.h"
#include "vault/vault_internal.h"

using namespace ccal;
using namespace ccal::vault;

namespace {

FlowId flowId(std::string_view name) {
  return SecureHash::of(asBytes(name));
}

Bytes bytesOf(std::string_view s) {
  return Bytes(s.begin(), s.end());
}

struct Fixture {
  ccal::testing::TempDir dir{"ccal-flow-store-test"};
  ContractRegistry registry;
  int64_t clock = 5'000'000;
  std::unique_ptr<Vault> vault;
  std::unique_ptr<FlowStore> flows;

  Fixture() { open(); }

  void open() {
    VaultConfig config;
    config.store.path = dir.path;
    config.store.durable = false;  // tests; the crash test below is durable
    vault = Vault::open(config, registry, {}).value();
    flows = std::make_unique<FlowStore>(vault->store(), [this] { return clock; });
  }

  // Closes the Store (draining its writer) and opens the same directory again.
  void reopen() {
    flows.reset();
    vault.reset();
    open();
  }

  FlowCheckpoint get(const FlowId& id) {
    auto cp = flows->flow(id);
    REQUIRE_MESSAGE(cp.ok(), cp.error().toString());
    REQUIRE(cp->has_value());
    return **cp;
  }

  std::vector<Bytes> events(const FlowId& id, uint64_t from_seq = 0) {
    auto journal = flows->journal(id, from_seq);
    REQUIRE_MESSAGE(journal.ok(), journal.error().toString());
    std::vector<Bytes> out;
    uint64_t expected = from_seq;
    for (const auto& e : *journal) {
      CHECK(e.seq == expected++);
      out.push_back(e.bytes);
    }
    return out;
  }

  void begin(const FlowId& id, std::string_view name = "ccal.test.IssueFlow",
             std::string_view args = "args", int64_t started = 100) {
    Status s = flows->beginFlow(id, name, asBytes(args), started);
    REQUIRE_MESSAGE(s.ok(), s.error().toString());
  }

  void append(const FlowId& id, uint64_t seq, std::string_view event) {
    Status s = flows->appendEvent(id, seq, asBytes(event));
    REQUIRE_MESSAGE(s.ok(), s.error().toString());
  }

  // Raw keys of a flow in flow_journal (head and events).
  size_t journalKeys(const FlowId& id) {
    const Db& db = vault->store().db(db_flow_journal);
    ReadTxn txn = vault->store().read();
    Cursor c = txn.cursor(db);
    size_t n = 0;
    for (bool more = c.seek(id.view()); more; more = c.next()) {
      if (!std::equal(id.view().begin(), id.view().end(), c.key().begin())) break;
      ++n;
    }
    return n;
  }
};

bool contains(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE_FIXTURE(Fixture, "flow store: begin, journal in seq order, read back") {
  const FlowId id = flowId("flow-1");
  CHECK_FALSE(flows->flow(id).value().has_value());
  begin(id, "ccal.test.IssueFlow", "issue 100 CNY", 1234);
  for (uint64_t seq = 0; seq < 5; ++seq) append(id, seq, "event-" + std::to_string(seq));
  FlowCheckpoint cp = get(id);
  CHECK(cp.id == id);
  CHECK(cp.flowName == "ccal.test.IssueFlow");
  CHECK(cp.args == bytesOf("issue 100 CNY"));
  CHECK(cp.startedMicros == 1234);
  CHECK(cp.status == FlowStatus::running);
  CHECK(cp.journalLength == 5);
  CHECK(cp.journalBytes == 5 * 7);
  auto all = events(id);
  REQUIRE(all.size() == 5);
  for (size_t i = 0; i < 5; ++i) CHECK(all[i] == bytesOf("event-" + std::to_string(i)));
  auto tail = events(id, 3);
  REQUIRE(tail.size() == 2);
  CHECK(tail[0] == bytesOf("event-3"));
  CHECK(events(id, 5).empty());
  CHECK(events(id, 99).empty());
  // Streaming stops when asked.
  std::vector<uint64_t> seen;
  REQUIRE(flows->forEachEvent(id, 1, [&](uint64_t seq, ByteView) {
    seen.push_back(seq);
    return seq < 2;
  }));
  CHECK(seen == std::vector<uint64_t>{1, 2});
  // Empty events are events.
  append(id, 5, "");
  CHECK(get(id).journalLength == 6);
  CHECK(events(id, 5) == std::vector<Bytes>{Bytes{}});
}

TEST_CASE_FIXTURE(Fixture,
                  "flow store: a gap or a repeat is refused, naming the flow and both seqs") {
  const FlowId id = flowId("flow-gap");
  begin(id, "ccal.test.GapFlow");
  append(id, 0, "a");
  append(id, 1, "b");

  Status gap = flows->appendEvent(id, 4, asBytes("e"));
  REQUIRE_FALSE(gap.ok());
  CHECK(gap.error().code == Errc::conflict);
  const std::string& g = gap.error().message;
  CHECK_MESSAGE(contains(g, id.hex()), g);
  CHECK_MESSAGE(contains(g, "ccal.test.GapFlow"), g);
  CHECK_MESSAGE(contains(g, "seq 4"), g);
  CHECK_MESSAGE(contains(g, "next seq is 2"), g);
  CHECK_MESSAGE(contains(g, "gap"), g);

  Status repeat = flows->appendEvent(id, 1, asBytes("b"));
  REQUIRE_FALSE(repeat.ok());
  CHECK(repeat.error().code == Errc::conflict);
  const std::string& r = repeat.error().message;
  CHECK_MESSAGE(contains(r, id.hex()), r);
  CHECK_MESSAGE(contains(r, "seq 1"), r);
  CHECK_MESSAGE(contains(r, "next seq is 2"), r);
  CHECK_MESSAGE(contains(r, "repeat"), r);

  // Nothing of the refused appends was written.
  CHECK(events(id) == std::vector<Bytes>{bytesOf("a"), bytesOf("b")});
  CHECK(get(id).journalLength == 2);
  CHECK(get(id).journalBytes == 2);
  append(id, 2, "c");
}

TEST_CASE_FIXTURE(Fixture, "flow store: appends to unknown and finished flows are refused") {
  const FlowId unknown = flowId("nobody");
  Status s = flows->appendEvent(unknown, 0, asBytes("x"));
  REQUIRE_FALSE(s.ok());
  CHECK(s.error().code == Errc::not_found);
  CHECK(contains(s.error().message, unknown.hex()));
  CHECK(flows->journal(unknown).error().code == Errc::not_found);
  CHECK(flows->finishFlow(unknown, FlowOutcome::ok, {}).error().code == Errc::not_found);
  CHECK(flows->park(unknown, "why").error().code == Errc::not_found);
  CHECK(flows->unpark(unknown).error().code == Errc::not_found);
  CHECK(flows->removeFlow(unknown).error().code == Errc::not_found);

  const FlowId id = flowId("done");
  begin(id, "ccal.test.DoneFlow");
  append(id, 0, "a");
  REQUIRE(flows->finishFlow(id, FlowOutcome::ok, asBytes("tx id")).ok());
  Status after = flows->appendEvent(id, 1, asBytes("late"));
  REQUIRE_FALSE(after.ok());
  CHECK(after.error().code == Errc::conflict);
  CHECK_MESSAGE(contains(after.error().message, "finished"), after.error().message);
  CHECK_MESSAGE(contains(after.error().message, "ccal.test.DoneFlow"), after.error().message);
}

TEST_CASE_FIXTURE(Fixture, "flow store: finishing deletes the journal and keeps a small record") {
  const FlowId id = flowId("finish-me");
  clock = 777;
  begin(id, "ccal.test.PayFlow", "big arguments", 100);
  for (uint64_t seq = 0; seq < 50; ++seq) append(id, seq, "event");
  CHECK(journalKeys(id) == 51);  // head + 50 events
  REQUIRE(flows->finishFlow(id, FlowOutcome::failed, asBytes("counterparty refused")).ok());
  CHECK(journalKeys(id) == 0);

  FlowCheckpoint cp = get(id);
  CHECK(cp.status == FlowStatus::finished);
  CHECK(cp.outcome == FlowOutcome::failed);
  CHECK(cp.result == bytesOf("counterparty refused"));
  CHECK(cp.finishedMicros == 777);
  CHECK(cp.journalLength == 50);
  CHECK(cp.journalBytes == 0);
  CHECK(cp.args.empty());
  CHECK(cp.flowName == "ccal.test.PayFlow");
  CHECK(cp.startedMicros == 100);
  CHECK(events(id).empty());
  CHECK(flows->unfinishedFlows().value().empty());

  Status again = flows->finishFlow(id, FlowOutcome::ok, {});
  REQUIRE_FALSE(again.ok());
  CHECK(again.error().code == Errc::conflict);
  CHECK_MESSAGE(contains(again.error().message, "failed"), again.error().message);
  // A finished flow cannot be begun again under its id.
  CHECK(flows->beginFlow(id, "ccal.test.PayFlow", asBytes("big arguments"), 100).error().code ==
        Errc::conflict);
  CHECK(flows->park(id, "late").error().code == Errc::conflict);

  // Each outcome round-trips.
  for (FlowOutcome outcome : {FlowOutcome::ok, FlowOutcome::killed}) {
    const FlowId other = flowId(std::string("outcome-") + flowOutcomeName(outcome));
    begin(other);
    REQUIRE(flows->finishFlow(other, outcome, {}).ok());
    CHECK(get(other).outcome == outcome);
    CHECK(get(other).journalLength == 0);
  }
}

TEST_CASE_FIXTURE(Fixture, "flow store: beginning again is a no-op only for the same start") {
  const FlowId id = flowId("again");
  begin(id, "ccal.test.Flow", "args", 10);
  append(id, 0, "a");
  begin(id, "ccal.test.Flow", "args", 10);  // a retry: journal untouched
  CHECK(get(id).journalLength == 1);
  for (auto [name, args, started] :
       {std::tuple{"ccal.test.Other", "args", 10}, std::tuple{"ccal.test.Flow", "other", 10},
        std::tuple{"ccal.test.Flow", "args", 11}}) {
    Status s = flows->beginFlow(id, name, asBytes(args), started);
    REQUIRE_FALSE(s.ok());
    CHECK(s.error().code == Errc::conflict);
    CHECK_MESSAGE(contains(s.error().message, id.hex()), s.error().message);
    CHECK_MESSAGE(contains(s.error().message, "already exists"), s.error().message);
  }
  CHECK(get(id).journalLength == 1);
}

TEST_CASE_FIXTURE(Fixture,
                  "flow store: unfinished flows in start order; the hospital holds parked ones") {
  const FlowId a = flowId("a"), b = flowId("b"), c = flowId("c"), d = flowId("d");
  begin(a, "ccal.test.A", "", 300);
  begin(b, "ccal.test.B", "", 100);
  begin(c, "ccal.test.C", "", 200);
  begin(d, "ccal.test.D", "", 50);
  append(b, 0, "x");
  REQUIRE(flows->finishFlow(d, FlowOutcome::ok, {}).ok());
  auto names = [](const std::vector<FlowCheckpoint>& flows_) {
    std::vector<std::string> out;
    for (const auto& f : flows_) out.push_back(f.flowName);
    return out;
  };
  auto unfinished = flows->unfinishedFlows().value();
  CHECK(names(unfinished) == std::vector<std::string>{"ccal.test.B", "ccal.test.C", "ccal.test.A"});
  CHECK(unfinished[0].journalLength == 1);
  CHECK(flows->hospital().value().empty());

  clock = 9000;
  REQUIRE(flows->park(c, "counterparty ccal.test.Bank is unknown").ok());
  clock = 8000;
  REQUIRE(flows->park(a, "contract rejected").ok());
  CHECK(names(flows->unfinishedFlows().value()) == std::vector<std::string>{"ccal.test.B"});
  auto parked = flows->hospital().value();
  REQUIRE(names(parked) == std::vector<std::string>{"ccal.test.A", "ccal.test.C"});
  CHECK(parked[1].parkReason == "counterparty ccal.test.Bank is unknown");
  CHECK(parked[1].parkedMicros == 9000);
  CHECK(get(c).status == FlowStatus::parked);

  // A parked flow's journal stays and may grow; parking again replaces the reason.
  append(c, 0, "still journaled");
  REQUIRE(flows->park(c, "retry later").ok());
  CHECK(get(c).parkReason == "retry later");
  CHECK(get(c).journalLength == 1);

  REQUIRE(flows->unpark(c).ok());
  REQUIRE(flows->unpark(c).ok());  // running already: a no-op
  CHECK(get(c).status == FlowStatus::running);
  CHECK(get(c).parkReason.empty());
  CHECK(names(flows->unfinishedFlows().value()) ==
        std::vector<std::string>{"ccal.test.B", "ccal.test.C"});
  CHECK(names(flows->hospital().value()) == std::vector<std::string>{"ccal.test.A"});
  // A parked flow can finish (an operator kills it).
  REQUIRE(flows->finishFlow(a, FlowOutcome::killed, asBytes("killed by operator")).ok());
  CHECK(flows->hospital().value().empty());
  CHECK(flows->unpark(a).error().code == Errc::conflict);
}

TEST_CASE_FIXTURE(Fixture, "flow store: removing a flow deletes everything of it") {
  const FlowId running = flowId("running"), finished = flowId("finished"), other = flowId("other");
  begin(running);
  begin(finished);
  begin(other);
  for (uint64_t seq = 0; seq < 10; ++seq) {
    append(running, seq, "r");
    append(other, seq, "o");
  }
  REQUIRE(flows->finishFlow(finished, FlowOutcome::ok, {}).ok());
  REQUIRE(flows->removeFlow(running).ok());
  REQUIRE(flows->removeFlow(finished).ok());
  CHECK_FALSE(flows->flow(running).value().has_value());
  CHECK_FALSE(flows->flow(finished).value().has_value());
  CHECK(journalKeys(running) == 0);
  CHECK(flows->removeFlow(running).error().code == Errc::not_found);
  // The other flow is untouched, and a removed id may be begun afresh.
  CHECK(events(other).size() == 10);
  begin(running);
  append(running, 0, "fresh");
  CHECK(events(running) == std::vector<Bytes>{bytesOf("fresh")});
}

TEST_CASE_FIXTURE(Fixture, "flow store: limits are enforced and named") {
  const FlowId id = flowId("limits");
  auto refused = [](const Status& s, Errc code, std::string_view part) {
    REQUIRE_FALSE(s.ok());
    CHECK(s.error().code == code);
    CHECK_MESSAGE(contains(s.error().message, part), s.error().message);
  };
  refused(flows->beginFlow(id, "", {}, 0), Errc::malformed, "flow name is empty");
  refused(flows->beginFlow(id, std::string(flow_name_bytes_max + 1, 'n'), {}, 0), Errc::too_large,
          "flow_name_bytes_max");
  refused(flows->beginFlow(id, std::string("a\0b", 3), {}, 0), Errc::malformed, "NUL");
  refused(flows->beginFlow(id, "ccal.test.Flow", Bytes(flow_args_bytes_max + 1), 0),
          Errc::too_large, "flow_args_bytes_max");
  CHECK_FALSE(flows->flow(id).value().has_value());

  begin(id, std::string(flow_name_bytes_max, 'n'), "", 0);
  refused(flows->appendEvent(id, 0, Bytes(flow_event_bytes_max + 1)), Errc::too_large,
          "flow_event_bytes_max");
  REQUIRE(flows->appendEvent(id, 0, Bytes(flow_event_bytes_max, 0xab)).ok());
  CHECK(events(id)[0] == Bytes(flow_event_bytes_max, 0xab));
  refused(flows->park(id, std::string(flow_park_reason_bytes_max + 1, 'r')), Errc::too_large,
          "flow_park_reason_bytes_max");
  refused(flows->park(id, ""), Errc::malformed, "empty");
  refused(flows->finishFlow(id, FlowOutcome::ok, Bytes(flow_result_bytes_max + 1)), Errc::too_large,
          "flow_result_bytes_max");

  // The journal limits, reached by writing the head directly (filling 100k
  // events or 256 MiB for real would dominate the test run).
  const Db& journal = vault->store().db(db_flow_journal);
  auto setHead = [&](uint64_t next_seq, uint64_t bytes) {
    Bytes head;
    for (uint64_t v : {next_seq, bytes}) {
      for (int i = 7; i >= 0; --i) head.push_back(static_cast<uint8_t>(v >> (8 * i)));
    }
    REQUIRE(vault->store().write([&](WriteTxn& w) { return w.put(journal, id.view(), head); }));
  };
  setHead(flow_journal_events_max, 10);
  refused(flows->appendEvent(id, flow_journal_events_max, asBytes("x")), Errc::too_large,
          "flow_journal_events_max");
  setHead(5, flow_journal_bytes_max - 3);
  refused(flows->appendEvent(id, 5, asBytes("four")), Errc::too_large, "flow_journal_bytes_max");
  REQUIRE(flows->appendEvent(id, 5, asBytes("thr")).ok());

  // The async variants refuse on the caller's thread, before queueing.
  std::optional<Status> got;
  flows->appendEventAsync(id, 6, Bytes(flow_event_bytes_max + 1),
                          [&](const Status& s) { got = s; });
  REQUIRE(got.has_value());
  CHECK(got->error().code == Errc::too_large);
}

TEST_CASE_FIXTURE(Fixture, "flow store: a damaged journal is reported, not papered over") {
  const FlowId id = flowId("damaged");
  begin(id, "ccal.test.Damaged");
  for (uint64_t seq = 0; seq < 4; ++seq) append(id, seq, "e");
  const Db& journal = vault->store().db(db_flow_journal);
  Bytes key(id.view().begin(), id.view().end());
  for (int i = 0; i < 7; ++i) key.push_back(0);
  key.push_back(2);  // seq 2
  REQUIRE(vault->store().write([&](WriteTxn& w) { return w.del(journal, key); }));
  auto gap = flows->journal(id);
  REQUIRE_FALSE(gap.ok());
  CHECK(gap.error().code == Errc::storage_error);
  CHECK_MESSAGE(contains(gap.error().message, "found seq 3 where seq 2 belongs"),
                gap.error().message);
  key.back() = 3;  // now the tail is missing
  REQUIRE(vault->store().write([&](WriteTxn& w) { return w.del(journal, key); }));
  auto tail = flows->journal(id);
  REQUIRE_FALSE(tail.ok());
  CHECK_MESSAGE(contains(tail.error().message, "seqs 2 to 3 are missing"), tail.error().message);
}

TEST_CASE_FIXTURE(Fixture, "flow store: everything survives closing and reopening the vault") {
  const FlowId a = flowId("a"), b = flowId("b"), c = flowId("c");
  begin(a, "ccal.test.A", "args-a", 1);
  begin(b, "ccal.test.B", "args-b", 2);
  begin(c, "ccal.test.C", "args-c", 3);
  for (uint64_t seq = 0; seq < 20; ++seq) append(a, seq, "a" + std::to_string(seq));
  append(b, 0, "b0");
  clock = 42;
  REQUIRE(flows->park(b, "peer unreachable").ok());
  REQUIRE(flows->finishFlow(c, FlowOutcome::ok, asBytes("done")).ok());

  reopen();
  auto unfinished = flows->unfinishedFlows().value();
  REQUIRE(unfinished.size() == 1);
  CHECK(unfinished[0].id == a);
  CHECK(unfinished[0].args == bytesOf("args-a"));
  CHECK(unfinished[0].journalLength == 20);
  auto journal = events(a);
  REQUIRE(journal.size() == 20);
  CHECK(journal[19] == bytesOf("a19"));
  auto parked = flows->hospital().value();
  REQUIRE(parked.size() == 1);
  CHECK(parked[0].parkReason == "peer unreachable");
  CHECK(parked[0].parkedMicros == 42);
  CHECK(get(c).result == bytesOf("done"));
  // The journal continues where it stopped, and still refuses a gap.
  CHECK(flows->appendEvent(a, 21, asBytes("gap")).error().code == Errc::conflict);
  append(a, 20, "a20");
  CHECK(events(a, 20) == std::vector<Bytes>{bytesOf("a20")});
}

TEST_CASE_FIXTURE(Fixture, "flow store: async appends pipeline in order; done() after the commit") {
  const FlowId id = flowId("async");
  std::atomic<int> begun{0};
  flows->beginFlowAsync(id, "ccal.test.Async", {}, 1, [&](const Status& s) {
    if (s.ok()) ++begun;
  });
  constexpr int n = 1000;
  std::atomic<int> ok{0}, failed{0};
  std::atomic<int> visible_when_done{0};
  for (int seq = 0; seq < n; ++seq) {
    flows->appendEventAsync(id, static_cast<uint64_t>(seq), asBytes(std::to_string(seq)),
                            [&, seq](const Status& s) {
                              if (!s.ok()) {
                                ++failed;
                                return;
                              }
                              ++ok;
                              // Committed: a reader sees it when done() runs.
                              ReadTxn txn = vault->store().read();
                              Bytes key(id.view().begin(), id.view().end());
                              for (int i = 7; i >= 0; --i) {
                                key.push_back(static_cast<uint8_t>(uint64_t(seq) >> (8 * i)));
                              }
                              if (txn.get(vault->store().db(db_flow_journal), key)) {
                                ++visible_when_done;
                              }
                            });
  }
  // Queued after the appends: returns after theirs done() ran.
  Status last = flows->appendEvent(id, n, asBytes("last"));
  REQUIRE_MESSAGE(last.ok(), last.error().toString());
  CHECK(begun == 1);
  CHECK(ok == n);
  CHECK(failed == 0);
  CHECK(visible_when_done == n);
  CHECK(get(id).journalLength == n + 1);
  // Fewer commits than requests: the appends were group-committed.
  CHECK(vault->store().stats().commits < static_cast<uint64_t>(n));
}

TEST_CASE_FIXTURE(Fixture, "flow store: concurrent journaling loses and duplicates nothing") {
  constexpr int threads = 4, flows_per_thread = 5, events_per_flow = 60;
  std::atomic<int> errors{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      std::vector<FlowId> mine;
      for (int f = 0; f < flows_per_thread; ++f) {
        mine.push_back(flowId("t" + std::to_string(t) + "f" + std::to_string(f)));
        if (!flows->beginFlow(mine.back(), "ccal.test.Concurrent", {}, t).ok()) ++errors;
      }
      // Interleave this thread's flows; other threads interleave theirs.
      for (int seq = 0; seq < events_per_flow; ++seq) {
        for (int f = 0; f < flows_per_thread; ++f) {
          std::string e = std::to_string(t) + "/" + std::to_string(f) + "/" + std::to_string(seq);
          if (!flows->appendEvent(mine[f], static_cast<uint64_t>(seq), asBytes(e)).ok()) ++errors;
        }
      }
    });
  }
  for (auto& w : workers) w.join();
  CHECK(errors == 0);
  for (int t = 0; t < threads; ++t) {
    for (int f = 0; f < flows_per_thread; ++f) {
      auto journal = events(flowId("t" + std::to_string(t) + "f" + std::to_string(f)));
      REQUIRE(journal.size() == events_per_flow);
      for (int seq = 0; seq < events_per_flow; ++seq) {
        CHECK(journal[seq] ==
              bytesOf(std::to_string(t) + "/" + std::to_string(f) + "/" + std::to_string(seq)));
      }
    }
  }
  CHECK(flows->unfinishedFlows().value().size() == threads * flows_per_thread);
}

TEST_CASE_FIXTURE(Fixture, "flow store: racing appends of the same seq: exactly one wins") {
  const FlowId id = flowId("race");
  begin(id);
  constexpr int threads = 4, seqs = 200;
  std::atomic<int> wins{0}, repeats{0}, others{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      for (int seq = 0; seq < seqs; ++seq) {
        Status s = flows->appendEvent(id, static_cast<uint64_t>(seq), asBytes(std::to_string(t)));
        if (s.ok()) {
          ++wins;
        } else if (s.error().code == Errc::conflict && contains(s.error().message, "repeat")) {
          ++repeats;
        } else {
          ++others;  // a gap would mean a lost append
        }
      }
    });
  }
  for (auto& w : workers) w.join();
  CHECK(wins == seqs);
  CHECK(repeats == seqs * (threads - 1));
  CHECK(others == 0);
  CHECK(events(id).size() == seqs);
  CHECK(get(id).journalLength == seqs);
}

TEST_CASE_FIXTURE(
    Fixture, "flow store: a full journal reads back, refuses more, and finishes in one write") {
  const FlowId id = flowId("full");
  begin(id, "ccal.test.Full");
  // Filled in one raw request: 100k async appends take minutes under the
  // sanitizers (each request has its own closure and done() round trip).
  const Db& journal = vault->store().db(db_flow_journal);
  REQUIRE(vault->store().write([&](WriteTxn& w) -> Status {
    Bytes key(id.view().begin(), id.view().end());
    key.resize(key.size() + 8);
    for (uint64_t seq = 0; seq < flow_journal_events_max; ++seq) {
      for (int i = 0; i < 8; ++i) key[32 + i] = static_cast<uint8_t>(seq >> (56 - 8 * i));
      CCAL_TRY(w.put(journal, key, ByteView(key).last(4)));
    }
    Bytes head;
    for (uint64_t v : {flow_journal_events_max, flow_journal_events_max * 4}) {
      for (int i = 7; i >= 0; --i) head.push_back(static_cast<uint8_t>(v >> (8 * i)));
    }
    return w.put(journal, id.view(), head);
  }));
  auto all = flows->journal(id);
  REQUIRE_MESSAGE(all.ok(), all.error().toString());
  CHECK(all->size() == flow_journal_events_max);
  CHECK(all->back().seq == flow_journal_events_max - 1);
  Status over = flows->appendEvent(id, flow_journal_events_max, asBytes("x"));
  REQUIRE_FALSE(over.ok());
  CHECK(over.error().code == Errc::too_large);
  CHECK_MESSAGE(contains(over.error().message, "flow_journal_events_max"), over.error().message);
  Status finish = flows->finishFlow(id, FlowOutcome::ok, {});
  REQUIRE_MESSAGE(finish.ok(), finish.error().toString());
  CHECK(journalKeys(id) == 0);
  CHECK(get(id).journalLength == flow_journal_events_max);
}

// ---------------------------------------------------------------- kill -9

namespace {

// Limits of the crash test.
constexpr int crash_iterations_default = 8;  // CCAL_CRASH_ITERATIONS overrides
constexpr int crash_threads = 3;
constexpr uint32_t crash_events_per_flow = 150;  // then the flow finishes and the next begins
constexpr int crash_in_flight_max = 64;          // async appends queued per thread
constexpr int crash_kill_after_ms_min = 60, crash_kill_after_ms_max = 400;

enum : uint8_t { ack_event = 1, ack_finish = 2 };

uint64_t mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

FlowId crashFlow(uint32_t thread, uint32_t generation) {
  return flowId("crash-flow-" + std::to_string(thread) + "-" + std::to_string(generation));
}

// An event follows from its flow and seq; a few spill into overflow pages.
Bytes crashEvent(uint32_t thread, uint32_t generation, uint32_t seq) {
  const uint64_t m = mix((uint64_t{thread} << 48) | (uint64_t{generation} << 32) | seq);
  Bytes out(m % 40 == 0 ? 20'000 + m % 5000 : 8 + m % 600);
  uint64_t x = m;
  for (auto& b : out) {
    x = mix(x);
    b = static_cast<uint8_t>(x);
  }
  return out;
}

uint64_t packAck(uint8_t kind, uint32_t thread, uint32_t generation, uint32_t seq) {
  return uint64_t{kind} << 56 | uint64_t{thread} << 48 | uint64_t{generation & 0xffff} << 32 | seq;
}

VaultConfig crashConfig(const std::string& path) {
  VaultConfig config;
  config.store.path = path;
  config.store.map_size_bytes = 1ull << 30;
  config.store.durable = true;
  return config;
}

void sendAck(int fd, uint64_t ack) {
  uint8_t b[8];
  for (int i = 0; i < 8; ++i) b[i] = static_cast<uint8_t>(ack >> (56 - 8 * i));
  if (::write(fd, b, 8) != 8) ::_exit(5);  // 8 bytes: one atomic pipe write
}

[[noreturn]] void childFail(const char* what, const Status& s) {
  std::fprintf(stderr, "flow crash child: %s: %s\n", what,
               s.ok() ? "ok" : s.error().toString().c_str());
  ::_exit(4);
}

// The child: resumes each thread's unfinished flow (as a runtime would after
// a restart) and journals until killed, acknowledging each durable append.
[[noreturn]] void journalUntilKilled(const std::string& path, int ack_fd) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the test
  ContractRegistry registry;
  auto vault = Vault::open(crashConfig(path), registry, {});
  if (!vault.ok()) childFail("open", vault.error());
  FlowStore flows(vault.value()->store());
  std::vector<std::thread> threads;
  for (uint32_t t = 0; t < crash_threads; ++t) {
    threads.emplace_back([&flows, t, ack_fd] {
      std::counting_semaphore<crash_in_flight_max> window(crash_in_flight_max);
      for (uint32_t g = 0;; ++g) {
        const FlowId id = crashFlow(t, g);
        auto cp = flows.flow(id);
        if (!cp.ok()) childFail("flow", cp.error());
        uint32_t seq = 0;
        if (!cp->has_value()) {
          Status s = flows.beginFlow(id, "ccal.test.CrashFlow", {}, g);
          if (!s.ok()) childFail("begin", s);
        } else if ((*cp)->status == FlowStatus::finished) {
          continue;
        } else {
          seq = static_cast<uint32_t>((*cp)->journalLength);
        }
        for (; seq < crash_events_per_flow; ++seq) {
          window.acquire();
          flows.appendEventAsync(id, seq, crashEvent(t, g, seq),
                                 [&window, ack_fd, t, g, seq](const Status& s) {
                                   if (!s.ok()) childFail("append", s);
                                   sendAck(ack_fd, packAck(ack_event, t, g, seq));
                                   window.release();
                                 });
        }
        // Queued behind the appends: durable only after all of them.
        Status s = flows.finishFlow(id, FlowOutcome::ok, {});
        if (!s.ok()) childFail("finish", s);
        sendAck(ack_fd, packAck(ack_finish, t, g, 0));
      }
    });
  }
  for (auto& thread : threads) thread.join();
  ::_exit(6);
}

uint64_t envOr(const char* name, uint64_t fallback) {
  const char* value = std::getenv(name);
  return value != nullptr ? std::strtoull(value, nullptr, 10) : fallback;
}

}  // namespace

TEST_CASE("flow store crash: kill -9 while journaling keeps every acknowledged event, no gaps") {
  const uint64_t seed = envOr("CCAL_CRASH_SEED", std::random_device{}());
  std::printf("flow store crash test: seed %llu (replay with CCAL_CRASH_SEED=%llu)\n",
              static_cast<unsigned long long>(seed), static_cast<unsigned long long>(seed));
  std::fflush(stdout);
  CAPTURE(seed);
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> kill_after_ms(crash_kill_after_ms_min,
                                                   crash_kill_after_ms_max);

  ccal::testing::TempDir dir{"ccal-flow-store-test"};  // kept across iterations: every run also recovers from the earlier crashes
  // (thread, generation) -> highest acknowledged seq + 1; finished generations.
  std::map<std::pair<uint32_t, uint32_t>, uint32_t> acked_events;
  std::set<std::pair<uint32_t, uint32_t>> acked_finishes;
  uint64_t acks = 0;

  const int iterations = static_cast<int>(envOr("CCAL_CRASH_ITERATIONS", crash_iterations_default));
  for (int iteration = 0; iteration < iterations; ++iteration) {
    CAPTURE(iteration);
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      ::close(fds[0]);
      journalUntilKilled(dir.path, fds[1]);
    }
    ::close(fds[1]);

    Bytes partial;
    auto take = [&](const uint8_t* data, size_t size) {
      partial.insert(partial.end(), data, data + size);
      size_t whole = partial.size() / 8 * 8;
      for (size_t at = 0; at < whole; at += 8) {
        uint64_t ack = 0;
        for (int i = 0; i < 8; ++i) ack = ack << 8 | partial[at + i];
        const auto kind = static_cast<uint8_t>(ack >> 56);
        const auto t = static_cast<uint32_t>((ack >> 48) & 0xff);
        const auto g = static_cast<uint32_t>((ack >> 32) & 0xffff);
        const auto seq = static_cast<uint32_t>(ack);
        if (kind == ack_event) {
          uint32_t& high = acked_events[{t, g}];
          high = std::max(high, seq + 1);
        } else {
          acked_finishes.insert({t, g});
        }
        ++acks;
      }
      partial.erase(partial.begin(), partial.begin() + static_cast<ptrdiff_t>(whole));
    };
    const int wait_ms = kill_after_ms(rng);
    const auto kill_at = std::chrono::steady_clock::now() + std::chrono::milliseconds(wait_ms);
    uint8_t buffer[4096];
    for (;;) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                      kill_at - std::chrono::steady_clock::now())
                      .count();
      if (left <= 0) break;
      pollfd pfd{fds[0], POLLIN, 0};
      if (::poll(&pfd, 1, static_cast<int>(left)) <= 0) continue;
      ssize_t got = ::read(fds[0], buffer, sizeof buffer);
      if (got <= 0) break;  // the child ended on its own: waitpid says why
      take(buffer, static_cast<size_t>(got));
    }
    ::kill(child, SIGKILL);
    int wstatus = 0;
    REQUIRE(::waitpid(child, &wstatus, 0) == child);
    for (ssize_t got; (got = ::read(fds[0], buffer, sizeof buffer)) > 0;) {
      take(buffer, static_cast<size_t>(got));
    }
    ::close(fds[0]);
    CHECK(partial.empty());
    INFO("child exit status " << (WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : -1));
    REQUIRE(WIFSIGNALED(wstatus));
    REQUIRE(WTERMSIG(wstatus) == SIGKILL);

    ContractRegistry registry;
    auto vault = Vault::open(crashConfig(dir.path), registry, {});
    if (!vault.ok()) FAIL("reopen after kill -9: " << vault.error().toString());
    FlowStore flows(vault.value()->store());

    // Every acknowledged event is there (or its flow has finished since).
    uint64_t missing = 0;
    for (const auto& [flow, high] : acked_events) {
      auto cp = flows.flow(crashFlow(flow.first, flow.second));
      REQUIRE(cp.ok());
      if (!cp->has_value()) {
        ++missing;
      } else if ((*cp)->status != FlowStatus::finished && (*cp)->journalLength < high) {
        ++missing;
      }
    }
    CHECK(missing == 0);
    for (const auto& [t, g] : acked_finishes) {
      auto cp = flows.flow(crashFlow(t, g)).value();
      REQUIRE(cp.has_value());
      CHECK(cp->status == FlowStatus::finished);
      CHECK(cp->journalLength == crash_events_per_flow);
    }
    // Every unfinished journal is whole: seqs 0..n-1, each event's own bytes.
    // The queue is first in, first out, so each thread has at most one.
    auto unfinished = flows.unfinishedFlows();
    REQUIRE_MESSAGE(unfinished.ok(), unfinished.error().toString());
    CHECK(unfinished->size() <= crash_threads);
    uint64_t events_checked = 0, wrong = 0;
    for (const auto& cp : *unfinished) {
      const auto g = static_cast<uint32_t>(cp.startedMicros);
      uint32_t t = crash_threads;
      for (uint32_t i = 0; i < crash_threads; ++i) {
        if (crashFlow(i, g) == cp.id) t = i;
      }
      REQUIRE(t < crash_threads);
      auto journal = flows.journal(cp.id);
      REQUIRE_MESSAGE(journal.ok(), journal.error().toString());
      CHECK(journal->size() == cp.journalLength);
      for (size_t i = 0; i < journal->size(); ++i) {
        const auto& e = (*journal)[i];
        if (e.seq != i || e.bytes != crashEvent(t, g, static_cast<uint32_t>(i))) ++wrong;
        ++events_checked;
      }
    }
    CHECK(wrong == 0);
    std::printf(
        "  iteration %d: killed after %3d ms: %llu acknowledgements so far, %zu flows "
        "finished, %zu unfinished holding %llu events\n",
        iteration, wait_ms, static_cast<unsigned long long>(acks), acked_finishes.size(),
        unfinished->size(), static_cast<unsigned long long>(events_checked));
  }
  CHECK(acks > 0);
}

TEST_CASE_FIXTURE(Fixture, "flow store: appendEvents writes several events in one request, all or none") {
  const FlowId id = flowId("flow-batch");
  begin(id, "ccal.test.BatchFlow");
  append(id, 0, "a");
  Status s = flows->appendEvents(id, 1, {bytesOf("b"), bytesOf("cc"), bytesOf("")});
  REQUIRE_MESSAGE(s.ok(), s.error().toString());
  CHECK(events(id) == std::vector<Bytes>{bytesOf("a"), bytesOf("b"), bytesOf("cc"), Bytes{}});
  CHECK(get(id).journalLength == 4);
  CHECK(get(id).journalBytes == 4);

  // A batch that starts at the wrong seq writes none of its events.
  Status gap = flows->appendEvents(id, 5, {bytesOf("x"), bytesOf("y")});
  REQUIRE_FALSE(gap.ok());
  CHECK(gap.error().code == Errc::conflict);
  CHECK_MESSAGE(contains(gap.error().message, "seq 5"), gap.error().message);
  CHECK_MESSAGE(contains(gap.error().message, "next seq is 4"), gap.error().message);
  Status repeat = flows->appendEvents(id, 3, {bytesOf("x"), bytesOf("y")});
  REQUIRE_FALSE(repeat.ok());
  CHECK(repeat.error().code == Errc::conflict);
  CHECK(get(id).journalLength == 4);

  // Limits: one event over flow_event_bytes_max refuses the batch; no
  // events, and more than flow_events_per_append_max, are refused.
  Status big = flows->appendEvents(id, 4, {bytesOf("ok"), Bytes(flow_event_bytes_max + 1)});
  REQUIRE_FALSE(big.ok());
  CHECK(big.error().code == Errc::too_large);
  CHECK_MESSAGE(contains(big.error().message, "event 5"), big.error().message);
  CHECK_MESSAGE(contains(big.error().message, "flow_event_bytes_max"), big.error().message);
  Status none = flows->appendEvents(id, 4, {});
  REQUIRE_FALSE(none.ok());
  CHECK(none.error().code == Errc::bad_query);
  Status many = flows->appendEvents(id, 4, std::vector<Bytes>(flow_events_per_append_max + 1, bytesOf("e")));
  REQUIRE_FALSE(many.ok());
  CHECK(many.error().code == Errc::too_large);
  CHECK_MESSAGE(contains(many.error().message, "flow_events_per_append_max"), many.error().message);
  CHECK(events(id) == std::vector<Bytes>{bytesOf("a"), bytesOf("b"), bytesOf("cc"), Bytes{}});

  // The next append follows on; an end that counts 2 events not journaled.
  append(id, 4, "d");
  std::promise<Status> promise;
  flows->finishFlowAsync(id, FlowOutcome::ok, asBytes("r"), 2,
                         [&promise](const Status& st) { promise.set_value(st); });
  Status finished = promise.get_future().get();
  REQUIRE_MESSAGE(finished.ok(), finished.error().toString());
  CHECK(get(id).status == FlowStatus::finished);
  CHECK(get(id).journalLength == 7);
  Status late = flows->appendEvents(id, 5, {bytesOf("late")});
  REQUIRE_FALSE(late.ok());
  CHECK(late.error().code == Errc::conflict);
}
