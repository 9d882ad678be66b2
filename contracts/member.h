#pragma once
// ccal.member: a membership credential that a cooperative issues to a
// member's key (legal name, role, valid period), which anyone can check
// without asking the cooperative. Commands (one per transaction):
//  - ccal.member.Issue: no credential inputs; one output; the cooperative
//    signs; legal name and role present; validFrom < validUntil.
//  - ccal.member.Revoke: one credential input, no credential output; its
//    cooperative signs.
// A credential is used by other deals as a REFERENCE input (see
// checkCredential): the notary refuses a transaction referencing a
// credential that a revocation has consumed, so a revocation takes effect
// on the ledger even for parties that never saw it.
// Rejection codes: one_command, bad_state, issue_has_inputs, one_output,
// missing_field, bad_validity, missing_signature, revoke_count,
// revoke_has_outputs, unknown_command.
//
// Declared fields of ccal.member.MemberState: member (hash), cooperative
// (hash), legal_name, cooperative_name, role (text), valid_from,
// valid_until (time); linear id.

#include <optional>
#include <string>
#include <string_view>

#include "ledger/contract.h"

namespace ccal::contracts {

inline constexpr std::string_view member_contract = "ccal.member";
inline constexpr std::string_view member_state_type = "ccal.member.MemberState";
inline constexpr std::string_view member_issue_command = "ccal.member.Issue";
inline constexpr std::string_view member_revoke_command = "ccal.member.Revoke";

struct Member {
  Key cooperative;
  std::string cooperativeName;
  Key member;
  std::string legalName;
  std::string role;
  int64_t validFromMicros = 0;
  int64_t validUntilMicros = 0;  // exclusive
  SecureHash linearId;
  bool operator==(const Member&) const = default;
};

Bytes encodeMember(const Member& m);
Result<Member> decodeMember(ByteView bytes);
TransactionState memberState(const Party& notary, const Member& m);

// Whether `tx` has a reference input that is a credential of `member`
// valid over the whole of the transaction's time window (which must be
// bounded on both sides): the credential, or a rejection
// (time_window_missing, not_member) naming `who`.
Result<Member> checkCredential(const LedgerTransaction& tx, const Key& member, std::string_view who);

class MemberSchema final : public StateSchema {
 public:
  std::string_view stateType() const override { return member_state_type; }
  std::vector<FieldDecl> fields() const override;
  Result<StateView> view(const TransactionState& state) const override;
};

class MemberContract final : public Contract {
 public:
  std::string_view name() const override { return member_contract; }
  uint32_t version() const override { return 1; }
  Verdict verify(const LedgerTransaction& tx) const override;
  std::vector<std::shared_ptr<const StateSchema>> stateSchemas() const override {
    return {std::make_shared<MemberSchema>()};
  }
  std::vector<std::string_view> commandTypes() const override {
    return {member_issue_command, member_revoke_command};
  }
};

}  // namespace ccal::contracts
