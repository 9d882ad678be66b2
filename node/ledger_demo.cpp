#include "node/ledger_demo.h"

#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

#include "ledger/contract.h"
#include "ledger/filtered_transaction.h"
#include "ledger/pki.h"
#include "ledger/signed_transaction.h"
#include "schemas/demo.capnp.h"

namespace ccal::node {

namespace {

constexpr std::string_view iou_contract = "ccal.demo.Iou";

struct Iou {
  Key lender, borrower;
  int64_t amountMinor = 0;
  std::string currency;
};

Bytes encodeIou(const Iou& iou) {
  return buildCanonical<schema::demo::IouState>([&](auto b) {
    iou.lender.write(b.initLender());
    iou.borrower.write(b.initBorrower());
    b.setAmountMinor(iou.amountMinor);
    b.setCurrency(iou.currency);
  });
}

Result<Iou> decodeIou(ByteView bytes) {
  return decodeMessage<schema::demo::IouState>(
      bytes, "IOU state", Canonical::required, [](auto r) -> Result<Iou> {
        auto lender = Key::read(r.getLender());
        if (!lender) return lender.error();
        auto borrower = Key::read(r.getBorrower());
        if (!borrower) return borrower.error();
        auto currency = readText(r.getCurrency(), "IOU state: currency", text_bounded_by_message);
        if (!currency) return currency.error();
        return Iou{*lender, *borrower, r.getAmountMinor(), std::move(currency).value()};
      });
}

// A demonstration contract: Issue creates one IOU signed by both sides;
// Repay consumes one and leaves a smaller one (or none), signed by the lender.
class IouContract final : public Contract {
 public:
  std::string_view name() const override { return iou_contract; }
  uint32_t version() const override { return 1; }
  Verdict verify(const LedgerTransaction& tx) const override {
    auto commands = tx.commandsOf("ccal.demo.Iou.");
    if (commands.size() != 1) return Verdict::reject("one_command", "one IOU command is needed");
    auto decode = [](const std::vector<const TransactionState*>& states, std::vector<Iou>& out) {
      for (const auto* s : states) {
        auto iou = decodeIou(s->data);
        if (!iou) return false;
        out.push_back(*iou);
      }
      return true;
    };
    std::vector<Iou> ins, outs;
    if (!decode(tx.inputsOf(iou_contract), ins) || !decode(tx.outputsOf(iou_contract), outs)) {
      return Verdict::reject("bad_state", "an IOU state does not decode");
    }
    for (const auto& o : outs) {
      if (o.amountMinor <= 0) return Verdict::reject("non_positive", "an IOU must be positive");
    }
    const Command& command = *commands[0];
    auto signed_by = [&](const Key& k) {
      for (const auto& s : command.signers)
        if (s == k) return true;
      return false;
    };
    if (command.type == "ccal.demo.Iou.Issue") {
      if (!ins.empty() || outs.size() != 1) {
        return Verdict::reject("issue_shape", "an issue has no inputs and one output");
      }
      if (!signed_by(outs[0].lender) || !signed_by(outs[0].borrower)) {
        return Verdict::reject("issue_signers", "lender and borrower must both sign an issue");
      }
      return Verdict::accept();
    }
    if (command.type == "ccal.demo.Iou.Repay") {
      if (ins.size() != 1 || outs.size() > 1) {
        return Verdict::reject("repay_shape", "a repayment consumes one IOU and leaves at most one");
      }
      if (!signed_by(ins[0].lender)) return Verdict::reject("repay_signers", "the lender must sign");
      if (!outs.empty() && (outs[0].amountMinor >= ins[0].amountMinor ||
                            !(outs[0].lender == ins[0].lender) ||
                            !(outs[0].borrower == ins[0].borrower) ||
                            outs[0].currency != ins[0].currency)) {
        return Verdict::reject("repay_amount",
                               "a repayment must leave a smaller IOU between the same parties");
      }
      return Verdict::accept();
    }
    return Verdict::reject("unknown_command", "unknown IOU command " + command.type);
  }
};

void step(const std::string& text) { std::printf("\n== %s\n", text.c_str()); }
void ok(const std::string& text) { std::printf("   ok  %s\n", text.c_str()); }
void refused(const std::string& what, const Error& e) {
  std::printf("   refused as it must be: %s\n       -> %s\n", what.c_str(), e.toString().c_str());
}

[[noreturn]] void fail(const std::string& what, const Error& e) {
  std::fflush(stdout);
  std::fprintf(stderr, "demo failed: %s: %s\n", what.c_str(), e.toString().c_str());
  std::exit(1);
}

template <class T>
T must(Result<T> r, const std::string& what) {
  if (!r) fail(what, r.error());
  return std::move(r).value();
}

void must(const Status& s, const std::string& what) {
  if (!s) fail(what, s.error());
}

void writeFile(const std::filesystem::path& path, const std::string& text, bool secret = false) {
  std::ofstream(path) << text;
  if (secret) ::chmod(path.c_str(), 0600);
}

struct Member {
  std::string org;
  X500Name name;
  KeyPair ca_key = KeyPair::generate();
  KeyPair identity_key = KeyPair::generate();
  KeyPair tls_key = KeyPair::generate();
  std::optional<Certificate> ca, identity, tls;
  Party party() const { return Party{name.toString(), Key(identity_key.publicKey())}; }
};

}  // namespace

int runLedgerDemo(const std::string& out_dir) {
  namespace fs = std::filesystem;
  // Certificates carry whole seconds.
  const auto now = std::chrono::floor<std::chrono::seconds>(std::chrono::system_clock::now());
  const Validity years{now - std::chrono::hours(1), now + std::chrono::hours(24 * 365 * 5)};
  fs::create_directories(out_dir);
  std::printf("CCAL ledger core demo (output in %s)\n", out_dir.c_str());

  step("Network PKI: root CA -> doorman CA -> node CAs -> identity and TLS certificates");
  KeyPair root_key = KeyPair::generate(), doorman_key = KeyPair::generate();
  auto root = must(CertificateAuthority::createRoot(
                       must(X500Name::parse("O=CCAL Network Root, L=Haikou, C=CN"), "root name"),
                       root_key, years),
                   "root CA");
  auto doorman_cert = must(
      root.issueIntermediate(must(X500Name::parse("O=CCAL Doorman, L=Haikou, C=CN"), "name"),
                             doorman_key.publicKey(), years),
      "doorman CA");
  auto doorman = must(CertificateAuthority::fromCertificate(doorman_cert, doorman_key), "doorman");
  writeFile(fs::path(out_dir) / "root.pem", root.certificate().pem());
  writeFile(fs::path(out_dir) / "doorman.pem", doorman_cert.pem());

  std::map<std::string, Member> members;
  for (const char* org : {"Haikou Fishing Cooperative", "Sanya Tea Cooperative",
                          "Hainan Rural Bank", "CCAL Notary Replica 1"}) {
    Member m{org, must(X500Name::parse(std::string("O=") + org + ", L=Haikou, C=CN"), "name"),
             KeyPair::generate(), KeyPair::generate(), KeyPair::generate(), {}, {}, {}};
    m.ca = must(doorman.issueNodeCa(m.name, m.ca_key.publicKey(), years), "node CA");
    auto node_ca = must(CertificateAuthority::fromCertificate(*m.ca, m.ca_key), "node CA");
    m.identity = must(node_ca.issueLegalIdentity(m.name, m.identity_key.publicKey(), years),
                      "identity certificate");
    m.tls = must(node_ca.issueTls(m.name, m.tls_key.publicKey(), years), "TLS certificate");
    fs::path dir = fs::path(out_dir) / org;
    fs::create_directories(dir);
    writeFile(dir / "node-ca.pem", m.ca->pem());
    writeFile(dir / "identity.pem", m.identity->pem());
    writeFile(dir / "tls.pem", m.tls->pem());
    writeFile(dir / "identity-key.pem", privateKeyPem(m.identity_key), true);
    std::vector<Certificate> chain{*m.ca, doorman_cert};
    must(validatePath(*m.identity, chain, root.certificate(), {}, now, RevocationCheck::if_listed),
         "identity path");
    must(validatePath(*m.tls, chain, root.certificate(), {}, now, RevocationCheck::if_listed),
         "TLS path");
    ok(m.name.toString() + ": node CA, identity and TLS certificates issued and validated");
    members.emplace(org, std::move(m));
  }
  {
    // A node CA may only issue for its own name.
    auto& fish = members.at("Haikou Fishing Cooperative");
    auto node_ca = must(CertificateAuthority::fromCertificate(*fish.ca, fish.ca_key), "node CA");
    auto forged = node_ca.issueLegalIdentity(members.at("Hainan Rural Bank").name,
                                             KeyPair::generate().publicKey(), years);
    if (forged) fail("name constraints", makeError(Errc::name_constraint, "forgery was issued"));
    refused("the fishing cooperative's node CA issuing for the bank's name", forged.error());
    // A revoked identity no longer validates.
    auto crl = must(node_ca.issueCrl(std::vector<Certificate>{*fish.identity}, now,
                                     now + std::chrono::hours(24)),
                    "CRL");
    std::vector<Certificate> chain{*fish.ca, doorman_cert};
    std::vector<Crl> crls{crl};
    auto revoked = validatePath(*fish.identity, chain, root.certificate(), crls, now,
                                RevocationCheck::if_listed);
    if (revoked) fail("revocation", makeError(Errc::certificate_revoked, "revoked cert validated"));
    refused("a revoked identity certificate", revoked.error());
  }

  step("The notary cluster's key: any 3 of its 4 replica keys");
  std::vector<KeyPair> replicas;
  std::vector<PublicKey> replica_keys;
  for (int i = 0; i < 4; ++i) {
    replicas.push_back(KeyPair::generate());
    replica_keys.push_back(replicas.back().publicKey());
  }
  Party notary{"O=CCAL Notary, L=Haikou, C=CN", must(Key::anyOf(3, replica_keys), "notary key")};
  ok("notary " + notary.name + " key " + notary.owningKey.describe());

  ContractRegistry registry;
  registry.add(std::make_unique<IouContract>());
  const auto& fish = members.at("Haikou Fishing Cooperative");
  const auto& bank = members.at("Hainan Rural Bank");

  step("Deal 1: the bank lends the fishing cooperative CNY 50,000.00 (an IOU, issued)");
  auto iou_state = [&](int64_t amount) {
    TransactionState s;
    s.contract = std::string(iou_contract);
    s.stateType = "ccal.schema.demo.IouState";
    s.data = encodeIou(Iou{bank.party().owningKey, fish.party().owningKey, amount, "CNY"});
    s.participants = {bank.party().owningKey, fish.party().owningKey};
    s.notary = notary;
    s.constraint.codeHash = registry.find(iou_contract)->codeIdentity();
    return s;
  };
  auto issue_tx = must(TransactionBuilder(notary)
                           .addOutput(iou_state(5'000'000))
                           .addCommand(Command{"ccal.demo.Iou.Issue", {},
                                               {bank.party().owningKey, fish.party().owningKey}})
                           .build(),
                       "issue transaction");
  SignedTransaction issue(issue_tx);
  issue.signWith(bank.identity_key).signWith(fish.identity_key);
  must(registry.verify(must(LedgerTransaction::resolve(issue_tx, {}, {}), "resolve")),
       "contract verification");
  must(issue.verifyRequiredSignatures(), "signatures");
  ok("transaction " + issue.id().hex() + " (" + std::to_string(issue.encode().size()) +
     " bytes) verified: contract, 2 signatures");

  step("Deal 2: the cooperative repays CNY 20,000.00 (consumes the IOU, leaves 30,000.00)");
  auto repay_tx = must(TransactionBuilder(notary)
                           .addInput({issue.id(), 0})
                           .addOutput(iou_state(3'000'000))
                           .addCommand(Command{"ccal.demo.Iou.Repay", {},
                                               {bank.party().owningKey, fish.party().owningKey}})
                           .setTimeWindow(TimeWindow{std::nullopt,
                                                     std::chrono::duration_cast<std::chrono::microseconds>(
                                                         (now + std::chrono::minutes(10)).time_since_epoch())
                                                         .count()})
                           .build(),
                       "repay transaction");
  SignedTransaction repay(repay_tx);
  repay.signWith(bank.identity_key).signWith(fish.identity_key);
  auto resolved = must(LedgerTransaction::resolve(repay_tx, {issue_tx.outputs()[0]}, {}), "resolve");
  must(registry.verify(resolved), "contract verification");
  must(repay.verifySignaturesExcept({notary.owningKey}), "signatures before notarisation");
  auto missing = repay.verifyRequiredSignatures();
  refused("final check before the notary has signed", missing.error());

  auto view = FilteredTransaction::forNotary(repay_tx);
  Bytes view_bytes = view.encode();
  auto notary_view = must(FilteredTransaction::decode(view_bytes), "notary view");
  for (auto g : {ComponentGroup::inputs, ComponentGroup::references, ComponentGroup::notary,
                 ComponentGroup::time_window}) {
    must(notary_view.checkAllVisible(g), "notary view completeness");
  }
  ok("non-validating notary view: " + std::to_string(view_bytes.size()) + " bytes, " +
     std::to_string(notary_view.inputs().size()) + " input(s) and the time window revealed, " +
     "outputs and commands hidden, proof checked against the id");
  // Three of the four replicas sign (made here; the BFT cluster comes with the notary issue).
  for (int i : {0, 2, 3}) repay.signWith(replicas[i]);
  must(repay.verifyRequiredSignatures(), "signatures after notarisation");
  ok("3 of 4 replica signatures fulfil the notary's composite key: transaction final");

  step("Bad input is refused with a clear error and nothing changes");
  {
    Bytes bytes = repay.encode();
    Bytes truncated(bytes.begin(), bytes.begin() + bytes.size() / 2);
    refused("a truncated signed transaction", SignedTransaction::decode(truncated).error());
    Bytes tampered_view = view_bytes;
    tampered_view[tampered_view.size() - 20] ^= 0x01;
    auto t = FilteredTransaction::decode(tampered_view);
    if (t) fail("tampering", makeError(Errc::id_mismatch, "tampered view verified"));
    refused("a notary view with one byte changed", t.error());
    auto greedy_tx = must(TransactionBuilder(notary)
                              .addInput({issue.id(), 0})
                              .addOutput(iou_state(9'000'000))
                              .addCommand(Command{"ccal.demo.Iou.Repay", {},
                                                  {bank.party().owningKey}})
                              .build(),
                          "transaction");
    auto greedy = registry.verify(
        must(LedgerTransaction::resolve(greedy_tx, {issue_tx.outputs()[0]}, {}), "resolve"));
    refused("a 'repayment' that raises the debt", greedy.error());
    SignedTransaction forged(repay_tx);
    forged.addSignature(DigitalSignature(fish.identity_key.publicKey(),
                                         bank.identity_key.sign(signableBytes(repay.id())).bytes()));
    refused("a signature claiming the cooperative's key, made by the bank",
            forged.checkSignaturesAreValid().error());
  }
  std::printf("\nDemo complete. Certificates are in %s; check one with:\n"
              "  openssl verify -CAfile %s/root.pem -untrusted %s/doorman.pem "
              "-untrusted '%s/Hainan Rural Bank/node-ca.pem' '%s/Hainan Rural Bank/identity.pem'\n",
              out_dir.c_str(), out_dir.c_str(), out_dir.c_str(), out_dir.c_str(), out_dir.c_str());
  return 0;
}

}  // namespace ccal::node
