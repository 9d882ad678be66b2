#include "contracts/member.h"

#include <doctest/doctest.h>

#include "contracts/contract_testing.h"

using namespace ccal;
using namespace ccal::contracts;
using namespace ccal::contracts::testing;

TEST_CASE("credential state round-trips and declares its fields") {
  Ledger l;
  Member m = l.credential(l.coopA, l.coopB);
  CHECK(decodeMember(encodeMember(m)).value() == m);
  auto v = MemberSchema().view(memberState(l.notary.party(), m)).value();
  CHECK(v.linearId == m.linearId);
  CHECK(v.fields.size() == MemberSchema().fields().size());
  CHECK_FALSE(v.fungible);
}

TEST_CASE("member issue: the cooperative signs a complete credential with a valid period") {
  Ledger l;
  const Actor &coopA = l.coopA, &coopB = l.coopB;
  Member m = l.credential(coopA, coopB);
  l.deal().issuesCredential(m).signedBy(coopA).verifies();
  l.deal().issuesCredential(m).signedBy(coopB).fails("missing_signature");
  Member noName = m;
  noName.legalName.clear();
  l.deal().issuesCredential(noName).signedBy(coopA).fails("missing_field");
  Member noRole = m;
  noRole.role.clear();
  l.deal().issuesCredential(noRole).signedBy(coopA).fails("missing_field");
  Member noCoop = m;
  noCoop.cooperativeName.clear();
  l.deal().issuesCredential(noCoop).signedBy(coopA).fails("missing_field");
  Member backwards = m;
  backwards.validUntilMicros = backwards.validFromMicros;
  l.deal().issuesCredential(backwards).signedBy(coopA).fails("bad_validity");
  l.deal().issuesCredential(m).output(memberState(l.notary.party(), m)).signedBy(coopA).fails("one_output");
  l.deal().issuesCredential(m).input(memberState(l.notary.party(), m)).signedBy(coopA)
      .fails("issue_has_inputs");
  l.deal().output(memberState(l.notary.party(), m)).command("ccal.other.Note").signedBy(coopA)
      .fails("one_command");
  l.deal().issuesCredential(m).signedBy(coopA).command(member_revoke_command).signedBy(coopA).fails("one_command");
  l.deal().output(memberState(l.notary.party(), m)).command("ccal.member.Renew").signedBy(coopA)
      .fails("unknown_command");
}

TEST_CASE("member revoke: the issuing cooperative consumes the credential") {
  Ledger l;
  const Actor &coopA = l.coopA, &coopB = l.coopB;
  Member m = l.credential(coopA, coopB);
  l.deal().revokes(m).signedBy(coopA).verifies();
  l.deal().revokes(m).signedBy(coopB).fails("missing_signature");
  l.deal().revokes(m).output(memberState(l.notary.party(), m)).signedBy(coopA).fails("revoke_has_outputs");
  l.deal().revokes(m).input(memberState(l.notary.party(), m)).signedBy(coopA).fails("revoke_count");
}
