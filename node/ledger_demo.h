#pragma once
#include <string>

namespace ccal::node {

// `ccal demo`: what the ledger core does today, end to end and for real —
// a network PKI (root, doorman and node CAs, identity and TLS certificates,
// written as PEM under `out_dir` and checked), deals recorded as signed
// transactions between two cooperatives and a bank, the notary cluster's
// "3 of 4" composite key, the filtered view a non-validating notary gets,
// and bad input refused with named errors. Returns a process exit code.
int runLedgerDemo(const std::string& out_dir);

}  // namespace ccal::node
