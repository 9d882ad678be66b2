#pragma once
// `ccal demo`: the cooperative economy on a real network (issues 7 and 8).
//
// Bootstraps the demo network spec (config/demo-network.toml) into a fresh
// folder, starts every member as a separate process (`ccal node run`), and
// runs a narrated scenario through the members' control APIs only:
//   1. Harbour Bank issues settlement tokens to both cooperatives (and to
//      itself and the credit union, the funds they finance with);
//   2. each cooperative issues the other a membership credential;
//   3. Haikou Fishing invoices Sanya Farmers (the buyer acknowledges);
//   4. Haikou Fishing finances the invoice with Harbour Bank; once that
//      flow has made its offer, while it still runs, a second financing of
//      the same invoice, with the credit union, starts: both are signed by
//      the seller, the notary lets exactly one through and refuses the other
//      with its conflict answer;
//   5. Sanya Farmers settles with the invoice's current holder;
// and part 2 (issue 8):
//   6. a letter of credit: Haikou Fishing (applicant) applies to Harbour
//      Bank (issuing and advising bank) for Sanya Farmers (beneficiary);
//      issue, advice, a presentation missing a document, examined
//      discrepant, waived by the applicant, paid in tokens in the same
//      transaction (the LC honoured);
//   7. the two cooperatives and the credit union form a mutual-aid fund
//      (committee 2 of 3), contribute, Sanya Farmers requests a loan (the
//      committee reviews its credit record), two members approve, one
//      disburses, the borrower repays in two instalments, and
//      GET /api/v1/credit/report shows the loan and the on-time repayments;
//   8. the regulator's vault holds states of exactly the transactions its
//      observer rules grant (computed from the kinds of transactions the
//      demo made: regulatorGranted in deal_demo.cpp), checked by id; any
//      other demo transaction it stores is the backchain of a granted one
//      (stored without states); it is in no transaction's signers.
// Each step prints who did what and the resulting states, read back with
// POST /api/v1/vault/query from the nodes' own vaults; the run ends with a
// summary of every expected outcome checked that way (balances per holder,
// the receivable's holder and status, the refused attempt's error code, the
// LC's status, the credit report, the fund's tokens, the regulator's view).
// The exit status is 0 only if every check held.

#include <cstdint>
#include <filesystem>
#include <iosfwd>
#include <string>

namespace ccal::node {

inline constexpr int64_t demo_flow_timeout_millis = 60'000;    // one deal flow
inline constexpr int64_t demo_settle_timeout_millis = 20'000;  // counterparties and observers recording
inline constexpr int64_t demo_poll_millis = 50;
// How often the demo looks whether the first financing has made its offer
// (the second one starts then, while the first still runs).
inline constexpr int64_t demo_race_poll_millis = 5;

struct DealDemoOptions {
  // The network spec; when relative and missing, also looked up beside the
  // executable's source tree (<exe>/../../config/demo-network.toml).
  std::filesystem::path spec = "config/demo-network.toml";
  std::filesystem::path out = "build/demo-run";  // emptied (bootstrap --force)
  // 0: the spec's ports; otherwise every member's p2p and API ports are
  // rewritten from this one upward (p2p first, then API), for tests.
  int port_base = 0;
  bool keep = false;  // leave the network running; print API addresses and tokens
};

// Runs the demo, printing to `out`; returns the process exit code.
int runDealDemo(const DealDemoOptions& options, std::ostream& out);

}  // namespace ccal::node
