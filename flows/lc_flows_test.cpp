// Letter-of-credit flows on real LMDB vaults: an applicant and a beneficiary
// cooperative, an issuing and an advising bank, a regulator that the
// network's observer rules name for ccal.lc, and a notary, exchanging flows
// through the flow runtime over an in-memory hub, with virtual time.
#include "flows/lc_flows.h"

#include <doctest/doctest.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "contracts/contracts.h"
#include "flows/deal_testing.h"

using namespace ccal;
using namespace ccal::flows;
using namespace ccal::flows::testing;
using namespace ccal::contracts;

namespace {

const std::string bank = "O=Bank of Hainan, L=Haikou, C=CN";
const std::string adviser = "O=Bank of Sanya, L=Sanya, C=CN";
const std::string coopA = "O=Haikou Fishing Cooperative, L=Haikou, C=CN";
const std::string coopB = "O=Sanya Tea Cooperative, L=Sanya, C=CN";
const std::string regulator = "O=Hainan Regulator, L=Haikou, C=CN";
const std::string outsider = "O=Wenchang Coconut Cooperative, L=Wenchang, C=CN";

constexpr int64_t day_micros = 86'400'000'000LL;

using TNode = DealTestNode;

// The LC tests' world: the regulator observes every ccal.lc transaction;
// each node applies its own LC policy.
struct World : DealTestWorld {
  World() { observer_rules = {ObserverRule{regulator, {std::string(lc_contract)}, {}, false}}; }
  TNode& add(const std::string& name, uint8_t seed, LcPolicy policy = {}) {
    return DealTestWorld::add(name, seed, {}, [policy](FlowServices& s) { addLcChecks(s, policy); });
  }
};

// `n`'s live letters of credit of `number` (closed ones included).
std::vector<LetterOfCredit> lcsOf(const TNode& n, const std::string& number) {
  const std::string type(lc_state_type);
  auto page = n.vault->query(vault::Query(vault::Criteria::field(type, "lc", vault::FieldOp::eq, {number}))).value();
  std::vector<LetterOfCredit> out;
  for (const auto& s : page.states) out.push_back(decodeLetterOfCredit(s.state.data).value());
  return out;
}
LetterOfCredit lcOf(const TNode& n, const std::string& number) {
  auto all = lcsOf(n, number);
  REQUIRE_MESSAGE(all.size() == 1, n.name << " holds " << all.size() << " live LCs " << number);
  return all[0];
}

// A 1000.00 CNY letter of credit for Haikou Fishing (applicant) buying from
// Sanya Tea (beneficiary), issued by the Bank of Hainan and advised by the
// Bank of Sanya. Virtual "now" is 2023-11-14.
struct Lc {
  World w;
  TNode& b = w.add(bank, 1);
  TNode& adv = w.add(adviser, 5);
  TNode& a = w.add(coopA, 2);
  TNode& bb = w.add(coopB, 3);
  TNode& reg = w.add(regulator, 6);
  std::vector<TNode*> parties{&b, &adv, &a, &bb};

  static std::string doc(const std::string& type) {
    return type + ":" + SecureHash::of(Bytes(type.begin(), type.end())).hex();
  }
  static std::string allDocs() {
    return doc("commercial_invoice") + ";" + doc("bill_of_lading") + ";" + doc("insurance_certificate");
  }
  void applyIssueAdvise(const std::string& number = "LC-1") {
    w.ok(a, lc_apply_deal, {"lc=" + number, "bank=" + bank, "beneficiary=" + coopB, "adviser=" + adviser,
                            "amount=100000", "currency=CNY", "expiry=2023-12-31", "shipment=2023-12-15",
                            "documents=commercial_invoice;bill_of_lading;insurance_certificate"});
    w.ok(b, lc_issue_deal, {"lc=" + number});
    w.ok(adv, lc_advise_deal, {"lc=" + number});
  }
  // Every party that sees the LC and the regulator hold it at `status`.
  void allSee(const std::string& number, LcStatus status) {
    for (TNode* n : {&b, &adv, &a, &bb, &reg}) {
      CAPTURE(n->name);
      CHECK(lcStatusName(lcOf(*n, number).status) == std::string(lcStatusName(status)));
    }
  }
};

}  // namespace

TEST_CASE("lc flow arguments: in the deal flow table, validated before a flow starts") {
  for (std::string_view f : {lc_apply_deal, lc_issue_deal, lc_advise_deal, lc_amend_deal, lc_present_deal,
                             lc_examine_deal, lc_waive_deal, lc_refuse_deal, lc_pay_deal, lc_close_deal}) {
    CHECK_MESSAGE(findDealFlow(f) != nullptr, f);
  }
  CHECK(lcFlowSpecs().size() == 10);
  auto err = [](std::string_view flow, const std::vector<std::string>& kvs) {
    auto r = parseDealArgs(flow, kvs);
    REQUIRE_FALSE(r);
    return r.error().message;
  };
  const std::vector<std::string> apply = {"lc=LC-1", "bank=B", "beneficiary=C", "amount=5", "currency=CNY",
                                          "expiry=2026-12-31", "shipment=2026-12-01", "documents=invoice"};
  CHECK(parseDealArgs(lc_apply_deal, apply));
  auto without = [&apply](const std::string& key) {
    std::vector<std::string> out;
    for (const auto& kv : apply) {
      if (kv.rfind(key + "=", 0) != 0) out.push_back(kv);
    }
    return out;
  };
  CHECK(err(lc_apply_deal, without("expiry")).find("missing argument 'expiry'") != std::string::npos);
  CHECK(err(lc_apply_deal, without("documents")).find("missing argument 'documents'") != std::string::npos);
  auto bad = without("expiry");
  bad.push_back("expiry=2026-02-30");
  CHECK(err(lc_apply_deal, bad).find("argument 'expiry'") != std::string::npos);
  bad = without("documents");
  bad.push_back("documents=invoice;;bill");
  CHECK(err(lc_apply_deal, bad).find("argument 'documents'") != std::string::npos);
  CHECK(err(lc_examine_deal, {"lc=LC-1"}).find("missing argument 'result'") != std::string::npos);
  CHECK(err(lc_pay_deal, {"lc=LC-1", "amount=5"}).find("unknown argument 'amount'") != std::string::npos);

  auto docs = parseLcDocuments(Lc::allDocs());
  REQUIRE(docs);
  CHECK(docs->size() == 3);
  CHECK(docs->at(1).first == "bill_of_lading");
  CHECK(parseLcDocuments("invoice").error().message.find("type:sha256hex") != std::string::npos);
  CHECK(parseLcDocuments("invoice:12ab").error().message.find("64 hex digits") != std::string::npos);
  CHECK_FALSE(parseLcDocuments(":" + SecureHash().hex()));
}

TEST_CASE("lc flows: application, discrepant presentation, waiver and payment; every party and the regulator see it") {
  Lc t;
  World& w = t.w;
  t.applyIssueAdvise();
  t.allSee("LC-1", LcStatus::advised);
  // Present without the insurance certificate: the bank finds it discrepant.
  w.ok(t.bb, lc_present_deal,
       {"lc=LC-1", "documents=" + Lc::doc("commercial_invoice") + ";" + Lc::doc("bill_of_lading")});
  t.allSee("LC-1", LcStatus::presented);
  CHECK(lcOf(t.b, "LC-1").drawingMinor == 100000);
  // Complying is not what the contract accepts without every required document.
  CHECK(w.fails(t.b, lc_examine_deal, {"lc=LC-1", "result=complying"}).find("[documents_missing]") != std::string::npos);
  w.ok(t.b, lc_examine_deal, {"lc=LC-1", "result=discrepant", "reasons=no insurance certificate"});
  t.allSee("LC-1", LcStatus::discrepant);
  // No payment before a waiver; only the applicant waives.
  CHECK(w.fails(t.b, lc_pay_deal, {"lc=LC-1"}).find("cannot pay") != std::string::npos);
  CHECK(w.fails(t.bb, lc_waive_deal, {"lc=LC-1"}).find("no live letter of credit LC-1 with this node as applicant") !=
        std::string::npos);
  w.ok(t.a, lc_waive_deal, {"lc=LC-1"});
  t.allSee("LC-1", LcStatus::waived);
  CHECK(lcOf(t.bb, "LC-1").discrepancies == std::vector<std::string>{"no insurance certificate"});
  // The bank pays the beneficiary in its tokens, in the same transaction.
  const SecureHash paid = w.ok(t.b, lc_pay_deal, {"lc=LC-1"});
  t.allSee("LC-1", LcStatus::paid);
  CHECK(t.bb.balance("CNY") == 100000);
  CHECK(lcOf(t.bb, "LC-1").paidMinor == 100000);
  CHECK(t.reg.vault->transaction(paid).value().has_value());
  // Fully drawn: no further presentation; the bank closes alone.
  CHECK(w.fails(t.bb, lc_present_deal, {"lc=LC-1", "documents=" + Lc::allDocs()}).find("[illegal_step]") !=
        std::string::npos);
  w.ok(t.b, lc_close_deal, {"lc=LC-1"});
  t.allSee("LC-1", LcStatus::closed);
  // A closed LC is no longer live for the flows.
  CHECK(w.fails(t.b, lc_close_deal, {"lc=LC-1"}).find("no live letter of credit") != std::string::npos);
}

TEST_CASE("lc flows: roles, the application's checks, the regulator sees but does not sign") {
  Lc t;
  World& w = t.w;
  TNode& outside = w.add(outsider, 4);
  // Arguments the flow checks against the directory and the clock.
  CHECK(w.fails(t.a, lc_apply_deal, {"lc=LC-9", "bank=O=Nobody", "beneficiary=" + coopB, "amount=1", "currency=CNY",
                                     "expiry=2023-12-31", "shipment=2023-12-15", "documents=invoice"})
            .find("argument 'bank'") != std::string::npos);
  CHECK(w.fails(t.a, lc_apply_deal, {"lc=LC-9", "bank=" + bank, "beneficiary=" + coopB, "amount=1", "currency=CNY",
                                     "expiry=2023-01-31", "shipment=2023-01-15", "documents=invoice"})
            .find("argument 'expiry'") != std::string::npos);
  CHECK(w.fails(t.a, lc_apply_deal, {"lc=LC-9", "bank=" + bank, "beneficiary=" + coopB, "amount=1", "currency=CNY",
                                     "expiry=2023-12-31", "shipment=2024-01-15", "documents=invoice"})
            .find("argument 'shipment'") != std::string::npos);
  CHECK(w.fails(t.a, lc_apply_deal, {"lc=LC-9", "bank=" + bank, "beneficiary=" + coopA, "amount=1", "currency=CNY",
                                     "expiry=2023-12-31", "shipment=2023-12-15", "documents=invoice"})
            .find("argument 'beneficiary'") != std::string::npos);
  CHECK(w.fails(t.a, lc_apply_deal, {"lc=LC-9", "bank=" + bank, "beneficiary=" + coopB, "amount=1", "currency=CNY",
                                     "expiry=2023-12-31", "shipment=2023-12-15", "documents=invoice;invoice"})
            .find("given twice") != std::string::npos);
  t.applyIssueAdvise();
  // The same number again from the same applicant.
  CHECK(w.fails(t.a, lc_apply_deal, {"lc=LC-1", "bank=" + bank, "beneficiary=" + coopB, "amount=1", "currency=CNY",
                                     "expiry=2023-12-31", "shipment=2023-12-15", "documents=invoice"})
            .find("already") != std::string::npos);
  // Only the LC's issuing bank issues, examines, pays; only its beneficiary presents.
  CHECK(w.fails(t.adv, lc_examine_deal, {"lc=LC-1", "result=complying"}).find("as issuer") != std::string::npos);
  CHECK(w.fails(t.a, lc_present_deal, {"lc=LC-1", "documents=" + Lc::allDocs()}).find("as beneficiary") !=
        std::string::npos);
  CHECK(w.fails(t.b, lc_issue_deal, {"lc=LC-1"}).find("cannot issue") != std::string::npos);
  CHECK(w.fails(t.b, lc_examine_deal, {"lc=LC-1", "result=fine"}).find("argument 'result'") != std::string::npos);
  CHECK(w.fails(t.b, lc_examine_deal, {"lc=LC-1", "result=discrepant"}).find("argument 'reasons'") != std::string::npos);
  CHECK(w.fails(t.bb, lc_present_deal, {"lc=LC-1", "documents=invoice:xyz"}).find("argument 'documents'") !=
        std::string::npos);
  CHECK(w.fails(t.bb, lc_present_deal, {"lc=LC-1", "documents=" + Lc::allDocs(), "amount=100001"})
            .find("argument 'amount'") != std::string::npos);
  // An outsider sees nothing; the regulator sees every step, signs none.
  CHECK(lcsOf(outside, "LC-1").empty());
  CHECK(lcOf(t.reg, "LC-1").status == LcStatus::advised);
  CHECK(t.reg.balance("CNY") == 0);
}

TEST_CASE("lc flows: an amendment takes effect only with the issuing bank's and the beneficiary's consent") {
  Lc t;
  World& w = t.w;
  t.applyIssueAdvise();
  // With consent: the applicant proposes, the bank signs, the beneficiary accepts.
  w.ok(t.a, lc_amend_deal, {"lc=LC-1", "action=propose", "amount=150000", "expiry=2024-01-31"});
  CHECK(lcOf(t.bb, "LC-1").amendment.has_value());
  CHECK(lcOf(t.bb, "LC-1").terms.amountMinor == 100000);  // silence is not consent
  w.ok(t.bb, lc_amend_deal, {"lc=LC-1", "action=accept"});
  for (TNode* n : t.parties) {
    CAPTURE(n->name);
    CHECK(lcOf(*n, "LC-1").terms.amountMinor == 150000);
    CHECK_FALSE(lcOf(*n, "LC-1").amendment);
  }
  // Without the beneficiary's consent: proposed, rejected, terms unchanged.
  w.ok(t.a, lc_amend_deal, {"lc=LC-1", "action=propose", "amount=90000"});
  CHECK(w.fails(t.a, lc_amend_deal, {"lc=LC-1", "action=propose", "amount=80000"}).find("pending already") !=
        std::string::npos);
  w.ok(t.bb, lc_amend_deal, {"lc=LC-1", "action=reject"});
  CHECK(lcOf(t.a, "LC-1").terms.amountMinor == 150000);
  CHECK(w.fails(t.bb, lc_amend_deal, {"lc=LC-1", "action=accept"}).find("no amendment pending") != std::string::npos);
  // Only the beneficiary answers; only the applicant proposes; a proposal changes something.
  w.ok(t.a, lc_amend_deal, {"lc=LC-1", "action=propose", "shipment=2023-12-20"});
  CHECK(w.fails(t.a, lc_amend_deal, {"lc=LC-1", "action=accept"}).find("as beneficiary") != std::string::npos);
  CHECK(w.fails(t.bb, lc_amend_deal, {"lc=LC-1", "action=accept", "amount=5"}).find("only a proposal") !=
        std::string::npos);
  // Silence: the beneficiary presents under the current terms, which drops the amendment.
  w.ok(t.bb, lc_present_deal, {"lc=LC-1", "documents=" + Lc::allDocs(), "amount=40000"});
  CHECK_FALSE(lcOf(t.b, "LC-1").amendment);
  CHECK(lcOf(t.b, "LC-1").terms.latestShipmentMicros == parseDateMicros("2023-12-16").value());
  CHECK(w.fails(t.bb, lc_amend_deal, {"lc=LC-1", "action=bargain"}).find("argument 'action'") != std::string::npos);
}

TEST_CASE("lc flows: the issuing bank refuses an amendment above its limit; the initiator sees why") {
  World w;
  LcPolicy cautious;
  cautious.lc_amount_max_minor = 120000;
  TNode& b = w.add(bank, 1, cautious);
  w.add(adviser, 5);
  TNode& a = w.add(coopA, 2);
  w.add(coopB, 3);
  w.add(regulator, 6);
  w.ok(a, lc_apply_deal, {"lc=LC-2", "bank=" + bank, "beneficiary=" + coopB, "amount=100000", "currency=CNY",
                          "expiry=2023-12-31", "shipment=2023-12-15", "documents=invoice"});
  w.ok(b, lc_issue_deal, {"lc=LC-2"});
  const std::string why = w.fails(a, lc_amend_deal, {"lc=LC-2", "action=propose", "amount=130000"});
  CHECK(why.find("refused") != std::string::npos);
  CHECK(why.find("above this bank's limit of 120000") != std::string::npos);
  CHECK_FALSE(lcOf(a, "LC-2").amendment);
  w.ok(a, lc_amend_deal, {"lc=LC-2", "action=propose", "amount=120000"});
  CHECK(lcOf(b, "LC-2").amendment->amountMinor == 120000);
}

TEST_CASE("lc flows: a presentation after expiry is refused; closing before expiry needs the beneficiary") {
  Lc t;
  World& w = t.w;
  t.applyIssueAdvise();
  // Before expiry, not drawn: the beneficiary (by its policy) does not consent.
  const std::string why = w.fails(t.b, lc_close_deal, {"lc=LC-1"});
  CHECK(why.find("refused") != std::string::npos);
  CHECK(why.find("does not consent") != std::string::npos);
  CHECK(lcOf(t.a, "LC-1").status == LcStatus::advised);
  // Past the expiry (the end of 2023-12-31): the contract refuses the presentation.
  w.advance(60 * day_micros);
  const std::string late = w.fails(t.bb, lc_present_deal, {"lc=LC-1", "documents=" + Lc::allDocs()});
  CHECK(late.find("[expired]") != std::string::npos);
  CHECK(lcOf(t.b, "LC-1").status == LcStatus::advised);
  CHECK(lcOf(t.b, "LC-1").presentation.empty());
  // Expired: the bank closes alone.
  w.ok(t.b, lc_close_deal, {"lc=LC-1"});
  t.allSee("LC-1", LcStatus::closed);
}

TEST_CASE("lc flows: a beneficiary that consents to cancellation signs the closing; refusal and re-presentation") {
  World w;
  LcPolicy lenient;
  lenient.consent_to_cancellation = true;
  TNode& b = w.add(bank, 1);
  TNode& a = w.add(coopA, 2);
  TNode& bb = w.add(coopB, 3, lenient);
  w.add(regulator, 6);
  w.ok(a, lc_apply_deal, {"lc=LC-3", "bank=" + bank, "beneficiary=" + coopB, "amount=100000", "currency=CNY",
                          "expiry=2023-12-31", "shipment=2023-12-15", "documents=invoice"});
  w.ok(b, lc_issue_deal, {"lc=LC-3"});
  w.ok(b, lc_advise_deal, {"lc=LC-3"});  // the issuing bank advises its own LC
  // Two drawings: the first refused, presented again, paid in part.
  w.ok(bb, lc_present_deal, {"lc=LC-3", "documents=" + Lc::doc("invoice"), "amount=30000"});
  w.ok(b, lc_examine_deal, {"lc=LC-3", "result=discrepant", "reasons=invoice unsigned;wrong goods description"});
  w.ok(b, lc_refuse_deal, {"lc=LC-3"});
  CHECK(lcOf(a, "LC-3").status == LcStatus::refused);
  w.ok(bb, lc_present_deal, {"lc=LC-3", "documents=" + Lc::doc("invoice"), "amount=30000"});
  w.ok(b, lc_examine_deal, {"lc=LC-3", "result=complying"});
  w.ok(b, lc_pay_deal, {"lc=LC-3"});
  CHECK(bb.balance("CNY") == 30000);
  CHECK(lcOf(bb, "LC-3").paidMinor == 30000);
  // 70000 undrawn, before expiry: closed with the beneficiary's signature.
  w.ok(b, lc_close_deal, {"lc=LC-3"});
  CHECK(lcOf(bb, "LC-3").status == LcStatus::closed);
  CHECK(lcOf(a, "LC-3").status == LcStatus::closed);
}
