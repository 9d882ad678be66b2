#include "contracts/member.h"

#include "contracts/token.h"
#include "ledger/capnp_io.h"
#include "schemas/contracts.capnp.h"

namespace ccal::contracts {

Bytes encodeMember(const Member& m) {
  return buildCanonical<schema::contracts::MemberState>([&](auto b) {
    m.cooperative.write(b.initCooperative());
    b.setCooperativeName(m.cooperativeName);
    m.member.write(b.initMember());
    b.setLegalName(m.legalName);
    b.setRole(m.role);
    b.setValidFromMicros(m.validFromMicros);
    b.setValidUntilMicros(m.validUntilMicros);
    b.setLinearId(asData(m.linearId.view()));
  });
}

Result<Member> decodeMember(ByteView bytes) {
  return decodeMessage<schema::contracts::MemberState>(
      bytes, "member state", Canonical::required, [](auto r) -> Result<Member> {
        auto coop = Key::read(r.getCooperative());
        if (!coop) return coop.error();
        auto member = Key::read(r.getMember());
        if (!member) return member.error();
        auto id = SecureHash::fromBytes(asByteView(r.getLinearId()));
        if (!id) return id.error();
        std::string cooperative_name, legal_name, role;
        CCAL_TRY_ASSIGN(cooperative_name,
                        readText(r.getCooperativeName(), "member state: cooperative name",
                                 text_bounded_by_message));
        CCAL_TRY_ASSIGN(legal_name, readText(r.getLegalName(), "member state: legal name",
                                             text_bounded_by_message));
        CCAL_TRY_ASSIGN(role, readText(r.getRole(), "member state: role", text_bounded_by_message));
        return Member{*coop,
                      std::move(cooperative_name),
                      *member,
                      std::move(legal_name),
                      std::move(role),
                      r.getValidFromMicros(),
                      r.getValidUntilMicros(),
                      *id};
      });
}

TransactionState memberState(const Party& notary, const Member& m) {
  TransactionState s;
  s.contract = std::string(member_contract);
  s.stateType = std::string(member_state_type);
  s.data = encodeMember(m);
  s.participants = {m.cooperative, m.member};
  s.notary = notary;
  s.constraint.codeHash = Contract::codeIdentity(member_contract, 1);
  return s;
}

Result<Member> checkCredential(const LedgerTransaction& tx, const Key& member, std::string_view who) {
  const auto& tw = tx.timeWindow();
  if (!tw || !tw->fromMicros || !tw->untilMicros) {
    return makeError(Errc::contract_rejected,
                     "time_window_missing: checking " + std::string(who) +
                         "'s credential needs a time window bounded on both sides");
  }
  for (const StateAndRef& r : tx.references()) {
    if (r.state.contract != member_contract || r.state.stateType != member_state_type) continue;
    auto m = decodeMember(r.state.data);
    if (!m || m->member != member) continue;
    if (m->validFromMicros <= *tw->fromMicros && *tw->untilMicros <= m->validUntilMicros) return *m;
  }
  return makeError(Errc::contract_rejected,
                   "not_member: the transaction references no membership credential of " +
                       std::string(who) + " valid over its time window");
}

std::vector<FieldDecl> MemberSchema::fields() const {
  return {{"member", FieldType::hash},       {"cooperative", FieldType::hash},
          {"legal_name", FieldType::text},   {"cooperative_name", FieldType::text},
          {"role", FieldType::text},         {"valid_from", FieldType::time},
          {"valid_until", FieldType::time}};
}

Result<StateView> MemberSchema::view(const TransactionState& state) const {
  auto m = decodeMember(state.data);
  if (!m) return m.error();
  StateView v;
  v.linearId = m->linearId;
  v.fields = {{"member", m->member.hash()},        {"cooperative", m->cooperative.hash()},
              {"legal_name", m->legalName},        {"cooperative_name", m->cooperativeName},
              {"role", m->role},                   {"valid_from", m->validFromMicros},
              {"valid_until", m->validUntilMicros}};
  return v;
}

Verdict MemberContract::verify(const LedgerTransaction& tx) const {
  auto commands = tx.commandsOf("ccal.member.");
  const auto inputs = tx.inputsOf(member_contract);
  const auto outputs = tx.outputsOf(member_contract);
  if (commands.size() != 1) {
    return Verdict::reject("one_command", "a transaction with credentials needs exactly one ccal.member "
                                          "command, not " + std::to_string(commands.size()));
  }
  const Command& cmd = *commands[0];
  auto decodeAll = [](const std::vector<const TransactionState*>& states, std::vector<Member>& into) {
    for (const auto* s : states) {
      if (s->stateType != member_state_type) {
        return Verdict::reject("bad_state", "a ccal.member state has type '" + s->stateType + "'");
      }
      auto m = decodeMember(s->data);
      if (!m) return Verdict::reject("bad_state", "a credential does not decode: " + m.error().message);
      into.push_back(*m);
    }
    return Verdict::accept();
  };
  std::vector<Member> in, out;
  if (auto v = decodeAll(inputs, in); !v.accepted) return v;
  if (auto v = decodeAll(outputs, out); !v.accepted) return v;

  if (cmd.type == member_issue_command) {
    if (!in.empty()) return Verdict::reject("issue_has_inputs", "issuing a credential consumes none");
    if (out.size() != 1) return Verdict::reject("one_output", "an issue creates exactly one credential");
    const Member& m = out[0];
    if (m.legalName.empty()) return Verdict::reject("missing_field", "a credential names the member's legal name");
    if (m.role.empty()) return Verdict::reject("missing_field", "a credential names the member's role");
    if (m.cooperativeName.empty()) return Verdict::reject("missing_field", "a credential names its cooperative");
    if (m.validFromMicros >= m.validUntilMicros) {
      return Verdict::reject("bad_validity", "a credential's validity must start before it ends");
    }
    if (!signedBy(cmd, m.cooperative)) {
      return Verdict::reject("missing_signature", "the cooperative must sign the credential it issues");
    }
    return Verdict::accept();
  }
  if (cmd.type == member_revoke_command) {
    if (in.size() != 1) return Verdict::reject("revoke_count", "a revocation consumes exactly one credential");
    if (!out.empty()) return Verdict::reject("revoke_has_outputs", "a revocation creates no credential");
    if (!signedBy(cmd, in[0].cooperative)) {
      return Verdict::reject("missing_signature", "the issuing cooperative must sign a revocation");
    }
    return Verdict::accept();
  }
  return Verdict::reject("unknown_command", "unknown member command '" + cmd.type + "'");
}

}  // namespace ccal::contracts
