#include "contracts/receivable.h"

#include <set>

#include "contracts/contracts.h"
#include "ledger/capnp_io.h"
#include "schemas/contracts.capnp.h"

namespace ccal::contracts {

void registerDealContracts(ContractRegistry& registry) {
  registry.add(std::make_unique<TokenContract>());
  registry.add(std::make_unique<MemberContract>());
  registry.add(std::make_unique<ReceivableContract>());
  registry.add(std::make_unique<LetterOfCreditContract>());
  registry.add(std::make_unique<LoanContract>());
}

Bytes encodeReceivable(const Receivable& r) {
  return buildCanonical<schema::contracts::ReceivableState>([&](auto b) {
    r.seller.write(b.initSeller());
    r.buyer.write(b.initBuyer());
    r.holder.write(b.initHolder());
    b.setCurrency(r.currency);
    b.setAmountMinor(r.amountMinor);
    b.setDueMicros(r.dueMicros);
    b.setInvoiceNumber(r.invoiceNumber);
    b.setLinearId(asData(r.linearId.view()));
  });
}

Result<Receivable> decodeReceivable(ByteView bytes) {
  return decodeMessage<schema::contracts::ReceivableState>(
      bytes, "receivable state", Canonical::required, [](auto r) -> Result<Receivable> {
        auto seller = Key::read(r.getSeller());
        if (!seller) return seller.error();
        auto buyer = Key::read(r.getBuyer());
        if (!buyer) return buyer.error();
        auto holder = Key::read(r.getHolder());
        if (!holder) return holder.error();
        auto id = SecureHash::fromBytes(asByteView(r.getLinearId()));
        if (!id) return id.error();
        std::string currency, invoice_number;
        CCAL_TRY_ASSIGN(currency, readText(r.getCurrency(), "receivable state: currency",
                                           text_bounded_by_message));
        CCAL_TRY_ASSIGN(invoice_number,
                        readText(r.getInvoiceNumber(), "receivable state: invoice number",
                                 text_bounded_by_message));
        return Receivable{*seller,
                          *buyer,
                          *holder,
                          std::move(currency),
                          r.getAmountMinor(),
                          r.getDueMicros(),
                          std::move(invoice_number),
                          *id};
      });
}

Bytes encodeRegistration(const InvoiceRegistration& r) {
  return buildCanonical<schema::contracts::InvoiceRegistration>([&](auto b) {
    r.seller.write(b.initSeller());
    b.setInvoiceNumber(r.invoiceNumber);
  });
}

Result<InvoiceRegistration> decodeRegistration(ByteView bytes) {
  return decodeMessage<schema::contracts::InvoiceRegistration>(
      bytes, "invoice registration", Canonical::required, [](auto r) -> Result<InvoiceRegistration> {
        auto seller = Key::read(r.getSeller());
        if (!seller) return seller.error();
        auto invoice_number = readText(r.getInvoiceNumber(), "invoice registration: invoice number",
                                       text_bounded_by_message);
        if (!invoice_number) return invoice_number.error();
        return InvoiceRegistration{*seller, std::move(invoice_number).value()};
      });
}

TransactionState receivableState(const Party& notary, const Receivable& r) {
  TransactionState s;
  s.contract = std::string(receivable_contract);
  s.stateType = std::string(receivable_state_type);
  s.data = encodeReceivable(r);
  s.participants = {r.holder, r.buyer};
  s.notary = notary;
  s.constraint.codeHash = Contract::codeIdentity(receivable_contract, 1);
  return s;
}

TransactionState registrationState(const Party& notary, const InvoiceRegistration& r) {
  TransactionState s;
  s.contract = std::string(receivable_contract);
  s.stateType = std::string(registration_state_type);
  s.data = encodeRegistration(r);
  s.participants = {r.seller};
  s.notary = notary;
  s.constraint.codeHash = Contract::codeIdentity(receivable_contract, 1);
  return s;
}

namespace {

Bytes tagged(std::string_view tag, const Key& seller, const std::string& number) {
  Bytes b(tag.begin(), tag.end());
  b.push_back(0);
  const SecureHash k = seller.hash();
  b.insert(b.end(), k.bytes().begin(), k.bytes().end());
  b.insert(b.end(), number.begin(), number.end());
  return b;
}

}  // namespace

Result<WireTransaction> registrationTransaction(const Key& seller, const std::string& invoice_number,
                                                const Party& notary) {
  const SecureHash salt = SecureHash::of(tagged("ccal.receivable.registration", seller, invoice_number));
  return TransactionBuilder(notary)
      .addOutput(registrationState(notary, InvoiceRegistration{seller, invoice_number}))
      .addCommand(Command{std::string(receivable_register_command), {}, {seller}})
      .setPrivacySalt(salt.view())
      .build();
}

SecureHash receivableLinearId(const Key& seller, const std::string& invoice_number) {
  return SecureHash::of(tagged("ccal.receivable.linear", seller, invoice_number));
}

std::vector<FieldDecl> ReceivableSchema::fields() const {
  return {{"amount", FieldType::int64}, {"currency", FieldType::text}, {"invoice", FieldType::text},
          {"due", FieldType::time},     {"seller", FieldType::hash},   {"buyer", FieldType::hash},
          {"holder", FieldType::hash}};
}

Result<StateView> ReceivableSchema::view(const TransactionState& state) const {
  auto r = decodeReceivable(state.data);
  if (!r) return r.error();
  StateView v;
  v.linearId = r->linearId;
  v.fields = {{"amount", r->amountMinor},   {"currency", r->currency},     {"invoice", r->invoiceNumber},
              {"due", r->dueMicros},        {"seller", r->seller.hash()},  {"buyer", r->buyer.hash()},
              {"holder", r->holder.hash()}};
  return v;
}

std::vector<FieldDecl> RegistrationSchema::fields() const {
  return {{"seller", FieldType::hash}, {"invoice", FieldType::text}};
}

Result<StateView> RegistrationSchema::view(const TransactionState& state) const {
  auto r = decodeRegistration(state.data);
  if (!r) return r.error();
  StateView v;
  v.fields = {{"seller", r->seller.hash()}, {"invoice", r->invoiceNumber}};
  return v;
}

namespace {

struct Decoded {
  std::vector<std::pair<const StateAndRef*, InvoiceRegistration>> regIn;
  std::vector<InvoiceRegistration> regOut;
  std::vector<Receivable> recIn, recOut;
};

Verdict decodeStates(const LedgerTransaction& tx, Decoded& d) {
  for (const StateAndRef& s : tx.inputs()) {
    if (s.state.contract != receivable_contract) continue;
    if (s.state.stateType == registration_state_type) {
      auto r = decodeRegistration(s.state.data);
      if (!r) return Verdict::reject("bad_state", "a registration does not decode: " + r.error().message);
      d.regIn.emplace_back(&s, *r);
    } else if (s.state.stateType == receivable_state_type) {
      auto r = decodeReceivable(s.state.data);
      if (!r) return Verdict::reject("bad_state", "a receivable does not decode: " + r.error().message);
      d.recIn.push_back(*r);
    } else {
      return Verdict::reject("bad_state", "a ccal.receivable state has type '" + s.state.stateType + "'");
    }
  }
  for (const TransactionState* s : tx.outputsOf(receivable_contract)) {
    if (s->stateType == registration_state_type) {
      auto r = decodeRegistration(s->data);
      if (!r) return Verdict::reject("bad_state", "a registration does not decode: " + r.error().message);
      d.regOut.push_back(*r);
    } else if (s->stateType == receivable_state_type) {
      auto r = decodeReceivable(s->data);
      if (!r) return Verdict::reject("bad_state", "a receivable does not decode: " + r.error().message);
      d.recOut.push_back(*r);
    } else {
      return Verdict::reject("bad_state", "a ccal.receivable state has type '" + s->stateType + "'");
    }
  }
  return Verdict::accept();
}

Verdict illegal(const std::string& what) { return Verdict::reject("illegal_step", what); }

Verdict fromStatus(const Status& s) {
  if (s) return Verdict::accept();
  // checkCredential's messages begin with the rule's code.
  const std::string& m = s.error().message;
  const size_t colon = m.find(':');
  return Verdict::reject(colon == std::string::npos ? "not_member" : m.substr(0, colon), m);
}

// The same receivable but for its holder.
bool sameTerms(Receivable a, const Receivable& b) {
  a.holder = b.holder;
  return a == b;
}

}  // namespace

Verdict ReceivableContract::verify(const LedgerTransaction& tx) const {
  auto commands = tx.commandsOf("ccal.receivable.");
  if (commands.size() != 1) {
    return Verdict::reject("one_command", "a transaction with receivable states needs exactly one "
                                          "ccal.receivable command, not " + std::to_string(commands.size()));
  }
  const Command& cmd = *commands[0];
  Decoded d;
  if (auto v = decodeStates(tx, d); !v.accepted) return v;
  // A receivable is shared with its holder and its buyer (receivableState):
  // the buyer learns whom to pay, the holder records what it holds.
  for (const auto* s : tx.outputsOf(receivable_contract)) {
    if (s->stateType != receivable_state_type) continue;
    auto r = decodeReceivable(s->data).value();  // (decodeStates decoded it)
    if (std::set<Key>(s->participants.begin(), s->participants.end()) !=
            std::set<Key>{r.holder, r.buyer} ||
        s->participants.size() > 2) {
      return Verdict::reject("wrong_participants",
                             "a receivable's participants are its holder and its buyer");
    }
  }

  if (cmd.type == receivable_register_command) {
    if (!d.regIn.empty() || !d.recIn.empty()) {
      return Verdict::reject("register_has_inputs", "a registration consumes no receivable states");
    }
    if (d.regOut.size() != 1 || !d.recOut.empty()) {
      return Verdict::reject("one_output", "a registration creates exactly one registration state");
    }
    if (d.regOut[0].invoiceNumber.empty()) return Verdict::reject("missing_field", "a registration names its invoice number");
    if (!signedBy(cmd, d.regOut[0].seller)) return Verdict::reject("missing_signature", "the seller must sign its registration");
    return Verdict::accept();
  }

  if (cmd.type == receivable_issue_command) {
    if (!d.recIn.empty()) return illegal("an issue consumes no receivable");
    if (d.regIn.size() != 1) {
      return Verdict::reject("registration_missing", "an issue consumes exactly one invoice registration");
    }
    if (d.recOut.size() != 1 || !d.regOut.empty()) {
      return Verdict::reject("one_output", "an issue creates exactly one receivable");
    }
    const Receivable& r = d.recOut[0];
    const InvoiceRegistration& reg = d.regIn[0].second;
    if (reg.seller != r.seller || reg.invoiceNumber != r.invoiceNumber) {
      return Verdict::reject("registration_mismatch", "the registration consumed is of another seller or invoice number");
    }
    if (!tx.notary()) return Verdict::reject("registration_not_canonical", "an issue names its notary");
    auto canonical = registrationTransaction(r.seller, r.invoiceNumber, *tx.notary());
    if (!canonical || d.regIn[0].first->ref != StateRef{canonical->id(), 0}) {
      return Verdict::reject("registration_not_canonical",
                             "invoice " + r.invoiceNumber + "'s registration is not the canonical one");
    }
    if (r.invoiceNumber.empty()) return Verdict::reject("missing_field", "a receivable names its invoice number");
    if (r.amountMinor <= 0) return Verdict::reject("non_positive", "a receivable's amount must be positive");
    if (!validCurrency(r.currency)) return Verdict::reject("bad_currency", "currency '" + r.currency + "' is not three capital letters");
    if (r.holder != r.seller) return illegal("a new receivable is held by its seller");
    if (r.seller == r.buyer) return Verdict::reject("same_party", "a seller cannot invoice itself");
    if (!signedBy(cmd, r.seller)) return Verdict::reject("missing_signature", "the seller must sign the invoice");
    if (!signedBy(cmd, r.buyer)) return Verdict::reject("missing_signature", "the buyer must sign to acknowledge the invoice");
    const auto& tw = tx.timeWindow();
    if (!tw || !tw->untilMicros) {
      return Verdict::reject("time_window_missing", "an issue needs a time window with an end");
    }
    if (r.dueMicros < *tw->untilMicros) {
      return Verdict::reject("due_in_past", "invoice " + r.invoiceNumber + "'s due date is before the end of the time window");
    }
    auto cred = checkCredential(tx, r.buyer, "the buyer");
    return fromStatus(cred ? Status{} : Status{cred.error()});
  }

  if (!d.regIn.empty() || !d.regOut.empty()) return illegal("only register and issue touch registrations");

  if (cmd.type == receivable_finance_command) {
    if (d.recIn.size() != 1 || d.recOut.size() != 1) {
      return illegal("financing consumes one receivable and creates it again");
    }
    const Receivable& before = d.recIn[0];
    const Receivable& after = d.recOut[0];
    if (!sameTerms(before, after)) return Verdict::reject("changed_terms", "financing changes only the holder");
    if (before.holder == after.holder) return Verdict::reject("same_holder", "financing assigns the receivable to a new holder");
    if (!signedBy(cmd, before.holder)) return Verdict::reject("missing_signature", "the current holder must sign the assignment");
    if (!signedBy(cmd, after.holder)) return Verdict::reject("missing_signature", "the financier must sign the assignment");
    auto advance = netTokensTo(tx, before.holder, before.currency);
    if (!advance || *advance <= 0) {
      return Verdict::reject("advance_missing", "the current holder receives no advance in " + before.currency);
    }
    return Verdict::accept();
  }

  if (cmd.type == receivable_settle_command) {
    if (d.recIn.size() != 1) return illegal("a settlement consumes exactly one receivable");
    if (!d.recOut.empty()) return illegal("a settled receivable is consumed, not recreated");
    const Receivable& r = d.recIn[0];
    if (!signedBy(cmd, r.buyer)) return Verdict::reject("missing_signature", "the buyer must sign the settlement");
    if (!signedBy(cmd, r.holder)) return Verdict::reject("missing_signature", "the holder must sign the settlement");
    auto paid = netTokensTo(tx, r.holder, r.currency);
    if (!paid || *paid < r.amountMinor) {
      // Paid in another currency, or too little.
      for (const auto* s : tx.outputsOf("ccal.token")) {
        auto t = decodeToken(s->data);
        if (t && t->owner == r.holder && t->currency != r.currency) {
          return Verdict::reject("wrong_currency", "the holder is paid in " + t->currency + ", the receivable is in " + r.currency);
        }
      }
      return Verdict::reject("underpaid", "the holder receives " + std::to_string(paid.value_or(0)) + " of " +
                                              std::to_string(r.amountMinor) + " " + r.currency);
    }
    return Verdict::accept();
  }
  return Verdict::reject("unknown_command", "unknown receivable command '" + cmd.type + "'");
}

}  // namespace ccal::contracts
