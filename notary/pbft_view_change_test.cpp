#include "notary/pbft_view_change.h"

#include <doctest/doctest.h>

using namespace ccal;
using namespace ccal::notary::pbft;

namespace {
SecureHash h(const char* s) { return SecureHash::of(asBytes(s)); }
ViewChangeMsg vc(uint64_t stable, std::vector<LogEntry> p, std::vector<LogEntry> q) {
  ViewChangeMsg m;
  m.new_view = 5;
  m.stable_seq = stable;
  m.prepared = std::move(p);
  m.pre_prepared = std::move(q);
  return m;
}
}  // namespace

TEST_CASE("pbft new-view: a batch prepared at a quorum is carried into the new view") {
  // f = 1: batch d1 at seq 1 prepared in view 2 by replicas 0 and 1 (and pre-prepared by 2).
  std::vector<ViewChangeMsg> s = {vc(0, {{1, h("d1"), 2}}, {{1, h("d1"), 2}}),
                                  vc(0, {{1, h("d1"), 2}}, {{1, h("d1"), 2}}),
                                  vc(0, {}, {{1, h("d1"), 2}})};
  auto d = decideNewView(s, 5, 1);
  REQUIRE(d);
  REQUIRE(d->chosen.size() == 1);
  CHECK(d->chosen[0].digest == h("d1"));
  CHECK(d->chosen[0].view == 5);
}

TEST_CASE("pbft new-view: gaps become null batches; a lying replica's claim is not enough") {
  // Replica 2 (faulty) claims d9 prepared at seq 2 in view 4; nobody pre-prepared it.
  std::vector<ViewChangeMsg> s = {vc(0, {{1, h("d1"), 1}, {3, h("d3"), 1}}, {{1, h("d1"), 1}, {3, h("d3"), 1}}),
                                  vc(0, {{1, h("d1"), 1}, {3, h("d3"), 1}}, {{1, h("d1"), 1}, {3, h("d3"), 1}}),
                                  vc(0, {{2, h("d9"), 4}}, {{2, h("d9"), 4}})};
  auto d = decideNewView(s, 5, 1);
  // Seq 2: A2 fails for d9 (one Q entry), and only 2 messages lack a P entry: undecided.
  CHECK(!d);
  s.push_back(vc(0, {}, {}));
  d = decideNewView(s, 5, 1);
  REQUIRE(d);
  REQUIRE(d->chosen.size() == 3);
  CHECK(d->chosen[0].digest == h("d1"));
  CHECK(d->chosen[1].digest.isZero());
  CHECK(d->chosen[2].digest == h("d3"));
}

TEST_CASE("pbft new-view: a later view's prepared batch wins over an earlier one") {
  std::vector<ViewChangeMsg> s = {vc(0, {{1, h("old"), 1}}, {{1, h("old"), 1}}),
                                  vc(0, {{1, h("new"), 3}}, {{1, h("new"), 3}, {1, h("old"), 1}}),
                                  vc(0, {{1, h("new"), 3}}, {{1, h("new"), 3}})};
  auto d = decideNewView(s, 5, 1);
  REQUIRE(d);
  CHECK(d->chosen[0].digest == h("new"));
}

TEST_CASE("pbft new-view: the highest checkpoint starts the new view; fewer than 2f+1 decide nothing") {
  std::vector<ViewChangeMsg> s = {vc(8, {}, {}), vc(4, {{5, h("x"), 1}}, {{5, h("x"), 1}}), vc(0, {}, {})};
  s[0].stable_digest = h("D8");
  auto d = decideNewView(s, 5, 1);
  REQUIRE(d);
  CHECK(d->start_seq == 8);
  CHECK(d->start_digest == h("D8"));
  CHECK(d->chosen.empty());
  s.pop_back();
  CHECK(!decideNewView(s, 5, 1));
}
