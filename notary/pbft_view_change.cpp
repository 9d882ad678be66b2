#include "notary/pbft_view_change.h"

#include <algorithm>

namespace ccal::notary::pbft {

namespace {

const LogEntry* entryFor(const std::vector<LogEntry>& set, uint64_t seq) {
  auto it = std::lower_bound(set.begin(), set.end(), seq,
                             [](const LogEntry& e, uint64_t n) { return e.seq < n; });
  return it != set.end() && it->seq == seq ? &*it : nullptr;
}

}  // namespace

std::optional<Decision> decideNewView(const std::vector<ViewChangeMsg>& s, uint64_t new_view,
                                      uint32_t f) {
  const size_t quorum = 2 * size_t(f) + 1;
  if (s.size() < quorum) return std::nullopt;
  Decision d;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i == 0 || s[i].stable_seq > d.start_seq) {
      d.start_seq = s[i].stable_seq;
      d.start_digest = s[i].stable_digest;
      d.start_from = i;
    }
  }
  uint64_t max_seq = d.start_seq;
  for (const auto& m : s) {
    if (!m.prepared.empty()) max_seq = std::max(max_seq, m.prepared.back().seq);
  }
  for (uint64_t n = d.start_seq + 1; n <= max_seq; ++n) {
    std::optional<LogEntry> pick;
    // Candidates: every (n, d, v) some message claims prepared.
    for (const auto& m : s) {
      const LogEntry* cand = entryFor(m.prepared, n);
      if (cand == nullptr || pick) continue;
      size_t a1 = 0, a2 = 0;
      for (const auto& other : s) {
        if (other.stable_seq < n) {
          const LogEntry* p = entryFor(other.prepared, n);
          if (p == nullptr || p->view < cand->view ||
              (p->view == cand->view && p->digest == cand->digest)) {
            ++a1;
          }
        }
        for (const auto& q : other.pre_prepared) {
          if (q.seq == n && q.digest == cand->digest && q.view >= cand->view) {
            ++a2;
            break;
          }
        }
      }
      if (a1 >= quorum && a2 >= size_t(f) + 1) pick = LogEntry{n, cand->digest, new_view};
    }
    if (!pick) {
      size_t empty = 0;
      for (const auto& m : s) {
        if (m.stable_seq < n && entryFor(m.prepared, n) == nullptr) ++empty;
      }
      if (empty >= quorum) pick = LogEntry{n, SecureHash::zero(), new_view};
    }
    if (!pick) return std::nullopt;
    d.chosen.push_back(*pick);
  }
  return d;
}

}  // namespace ccal::notary::pbft
