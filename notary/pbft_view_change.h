#pragma once
// The new-view decision of PBFT with MAC-authenticated normal case
// (Castro & Liskov, TOCS 2002, section 4.4 "view changes"): from a set S of
// at least 2f+1 view-change messages for view v, choose the checkpoint to
// start from and, for each sequence number after it, the batch (digest) the
// new view re-proposes, or the null batch. Pure functions: the new primary
// runs it to build its NEW-VIEW, every backup runs it again on the V set the
// NEW-VIEW carries and accepts only if the O set is the same.
//
// Rules (n: sequence number; m.h: the message's stable checkpoint; m.P:
// (n, d, v) prepared; m.Q: (n, d, v) pre-prepared):
//   checkpoint: the highest certified m.h in S (each view-change carries its
//     2f+1-signature proof, checked on receipt, so any certified checkpoint
//     is one at least f+1 honest replicas reached).
//   request d for n is chosen if some m in S has (n, d, v) in m.P and
//     A1: 2f+1 messages m' in S have m'.h < n and m'.P has no entry for n,
//         or an entry (n, d', v') with v' < v, or v' = v and d' = d;
//     A2: f+1 messages m' in S have (n, d, v') in m'.Q with v' >= v.
//   the null batch is chosen for n if 2f+1 messages m' in S have m'.h < n
//     and no entry for n in m'.P.
//   Otherwise S does not decide n yet: wait for more view-change messages.

#include <cstdint>
#include <optional>
#include <vector>

#include "notary/pbft_messages.h"

namespace ccal::notary::pbft {

struct Decision {
  uint64_t start_seq = 0;        // the chosen checkpoint
  SecureHash start_digest;
  size_t start_from = 0;         // index in S of a message whose proof certifies it
  std::vector<LogEntry> chosen;  // start_seq+1 .. max; zero digest = null; view = the new view
};

// nullopt: S does not (yet) decide some sequence number.
std::optional<Decision> decideNewView(const std::vector<ViewChangeMsg>& s, uint64_t new_view,
                                      uint32_t f);

}  // namespace ccal::notary::pbft
