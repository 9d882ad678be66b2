#pragma once
// FilteredTransaction: chosen components of a transaction with the proof
// that they belong to its id — what a non-validating notary or an oracle
// sees. A FilteredTransaction object is always verified: decode()
// recomputes every revealed group's hash from the revealed components, their
// nonces and the proof, and the id from the group hashes; build() makes them
// from a transaction (the proofs merkle::prove's over its own leaves).

#include <functional>
#include <optional>
#include <vector>

#include "ledger/canonical_writer.h"
#include "ledger/transaction.h"

namespace ccal {

class FilteredTransaction {
 public:
  struct Group {
    ComponentGroup group;
    uint32_t componentCount = 0;       // of the whole group
    std::vector<uint32_t> indices;     // revealed, ascending
    std::vector<Bytes> components;     // revealed bytes
    std::vector<SecureHash> nonces;    // their nonces
    std::vector<SecureHash> proof;     // hidden subtrees, depth-first
  };

  // Reveals the components for which reveal(group, index) is true.
  static FilteredTransaction build(const WireTransaction& tx,
                                   const std::function<bool(ComponentGroup, uint32_t)>& reveal);
  // What a non-validating notary needs: all inputs, references, the notary
  // and the time window, nothing else.
  static FilteredTransaction forNotary(const WireTransaction& tx);

  static Result<FilteredTransaction> decode(ByteView bytes,
                                            const TransactionLimits& limits = default_transaction_limits);
  static Result<FilteredTransaction> read(schema::FilteredTransaction::Reader reader,
                                          const TransactionLimits& limits);
  // Canonical bytes, written directly (writeCanonical); equal to
  // encodeBuilt(), which the tests check.
  Bytes encode() const;
  Bytes encodeBuilt() const;
  void write(schema::FilteredTransaction::Builder builder) const;
  // The struct in canonical form at `pointer_word` of `out`, in pre-order
  // from there (a notary request embeds it: one per notarisation).
  void writeCanonical(CanonicalWriter& out, size_t pointer_word) const;

  const SecureHash& id() const { return id_; }
  const std::vector<Group>& groups() const { return groups_; }

  // Ok when every component of `group` is revealed (or the group is empty);
  // not_visible otherwise. A notary calls this for inputs, references,
  // notary and time window, so that nothing it must check can be hidden.
  Status checkAllVisible(ComponentGroup group) const;

  // Typed views of revealed components (what is hidden is simply absent).
  const std::vector<StateRef>& inputs() const { return inputs_; }
  const std::vector<StateRef>& references() const { return references_; }
  const std::optional<Party>& notary() const { return notary_; }
  const std::optional<TimeWindow>& timeWindow() const { return time_window_; }

 private:
  FilteredTransaction() = default;
  // The proofs, then the revealed components (verify: both).
  Status verify(const TransactionLimits& limits);
  Status verifyProofs() const;
  Status decodeRevealed(const TransactionLimits& limits);
  const Group* find(ComponentGroup group) const;

  SecureHash id_;
  std::array<SecureHash, component_group_count> group_hashes_;
  std::vector<Group> groups_;  // ascending by group, each at most once

  std::vector<StateRef> inputs_;
  std::vector<StateRef> references_;
  std::optional<Party> notary_;
  std::optional<TimeWindow> time_window_;
};

}  // namespace ccal
