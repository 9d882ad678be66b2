#include "flows/deal_flows.h"

#include <algorithm>
#include <charconv>
#include <memory>
#include <set>

#include "contracts/contracts.h"
#include "flows/lc_flows.h"
#include "flows/loan_flows.h"
#include "ledger/assert.h"
#include "ledger/capnp_io.h"
#include "schemas/contracts_flows.capnp.h"

namespace ccal::flows {

using namespace ccal::contracts;
using detail::CallDone;
using detail::CallOp;

// --- arguments ----------------------------------------------------------------------------

const std::vector<DealFlowSpec>& dealFlowSpecs() {
  static const std::vector<DealFlowSpec> specs = [] {
    std::vector<DealFlowSpec> s = {
      {token_issue_deal,
       "the issuer (this node) issues tokens to a holder",
       {{"to", ArgType::party, true, "the holder"},
        {"amount", ArgType::amount, true, "minor units"},
        {"currency", ArgType::currency, true, "e.g. CNY"},
        {"notary", ArgType::party, false, "the notary (default: the node's)"}}},
      {token_move_deal,
       "pays a holder from this node's tokens, with change back",
       {{"to", ArgType::party, true, "the recipient"},
        {"amount", ArgType::amount, true, "minor units"},
        {"currency", ArgType::currency, true, "e.g. CNY"},
        {"issuer", ArgType::party, false, "only tokens of this issuer"}}},
      {token_redeem_deal,
       "returns tokens to their issuer",
       {{"issuer", ArgType::party, true, "the issuer"},
        {"amount", ArgType::amount, true, "minor units"},
        {"currency", ArgType::currency, true, "e.g. CNY"}}},
      {member_issue_deal,
       "this cooperative issues a membership credential",
       {{"member", ArgType::party, true, "the member"},
        {"name", ArgType::text, true, "the member's legal name"},
        {"role", ArgType::text, true, "e.g. member, board"},
        {"days", ArgType::days, true, "valid for this many days from now"},
        {"observers", ArgType::parties, false, "parties that receive the credential too"},
        {"notary", ArgType::party, false, "the notary (default: the node's)"}}},
      {member_revoke_deal,
       "this cooperative revokes its credentials of a member",
       {{"member", ArgType::party, true, "the member"}}},
      {receivable_issue_deal,
       "this seller invoices a buyer, who acknowledges",
       {{"buyer", ArgType::party, true, "the buyer (holds a valid credential)"},
        {"amount", ArgType::amount, true, "minor units"},
        {"currency", ArgType::currency, true, "e.g. CNY"},
        {"invoice", ArgType::text, true, "the seller's invoice number"},
        {"due", ArgType::date, true, "YYYY-MM-DD"},
        {"notary", ArgType::party, false, "the notary (default: the node's)"}}},
      {receivable_finance_deal,
       "this holder assigns an invoice to a financier against an advance",
       {{"invoice", ArgType::text, true, "the invoice number"},
        {"financier", ArgType::party, true, "the financier"},
        {"advance", ArgType::amount, true, "minor units of the invoice's currency"}}},
      {receivable_settle_deal,
       "this buyer pays an invoice to its holder",
       {{"invoice", ArgType::text, true, "the invoice number"},
        {"seller", ArgType::party, true, "the invoice's seller"}}},
  };
    s.insert(s.end(), lcFlowSpecs().begin(), lcFlowSpecs().end());
    s.insert(s.end(), loanFlowSpecs().begin(), loanFlowSpecs().end());
    return s;
  }();
  return specs;
}

const DealFlowSpec* findDealFlow(std::string_view flow) {
  for (const auto& s : dealFlowSpecs()) {
    if (s.flow == flow) return &s;
  }
  return nullptr;
}

namespace {

std::optional<int64_t> parseInt(std::string_view v) {
  int64_t out = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
  if (ec != std::errc() || p != v.data() + v.size()) return std::nullopt;
  return out;
}

// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
int64_t daysFromCivil(int64_t y, int64_t m, int64_t d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const int64_t yoe = y - era * 400;
  const int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

std::optional<std::string> checkArg(const ArgSpec& spec, const std::string& v) {
  if (v.empty()) return "is empty";
  if (v.size() > deal_arg_bytes_max) return "is longer than " + std::to_string(deal_arg_bytes_max) + " bytes";
  if (v.find_first_of("\r\n") != std::string::npos) return "has a line break";
  switch (spec.type) {
    case ArgType::party:
    case ArgType::text: return std::nullopt;
    case ArgType::parties: {
      size_t start = 0;
      while (start <= v.size()) {
        size_t end = v.find(';', start);
        if (end == std::string::npos) end = v.size();
        if (end == start) return "has an empty party name";
        start = end + 1;
      }
      return std::nullopt;
    }
    case ArgType::amount: {
      auto n = parseInt(v);
      if (!n) return "is not an integer of minor units: '" + v + "'";
      if (*n <= 0) return "must be positive, not " + v;
      return std::nullopt;
    }
    case ArgType::currency:
      if (!validCurrency(v)) return "is not three capital letters: '" + v + "'";
      return std::nullopt;
    case ArgType::date:
      if (!parseDateMicros(v)) return "is not a date YYYY-MM-DD: '" + v + "'";
      return std::nullopt;
    case ArgType::days: {
      auto n = parseInt(v);
      if (!n || *n < 1 || *n > 36500) return "is not a number of days 1..36500: '" + v + "'";
      return std::nullopt;
    }
  }
  return "has an unknown type";
}

Result<DealArgs> validate(std::string_view flow, const std::vector<std::pair<std::string, std::string>>& kvs) {
  const DealFlowSpec* spec = findDealFlow(flow);
  if (!spec) return makeError(Errc::not_found, "no deal flow named '" + std::string(flow) + "'");
  DealArgs out;
  for (const auto& kv : kvs) {
    const std::string& k = kv.first;
    const std::string& v = kv.second;
    auto it = std::find_if(spec->args.begin(), spec->args.end(), [&k](const ArgSpec& a) { return a.name == k; });
    if (it == spec->args.end()) {
      return makeError(Errc::malformed, std::string(flow) + ": unknown argument '" + k + "'");
    }
    if (out.count(k)) return makeError(Errc::malformed, std::string(flow) + ": argument '" + k + "' given twice");
    if (auto why = checkArg(*it, v)) {
      return makeError(Errc::malformed, std::string(flow) + ": argument '" + k + "' " + *why);
    }
    out.emplace(k, v);
  }
  for (const ArgSpec& a : spec->args) {
    if (a.required && !out.count(a.name)) {
      return makeError(Errc::malformed, std::string(flow) + ": missing argument '" + std::string(a.name) +
                                            "' (" + std::string(a.help) + ")");
    }
  }
  return out;
}

}  // namespace

Result<int64_t> parseDateMicros(std::string_view date) {
  if (date.size() != 10 || date[4] != '-' || date[7] != '-') {
    return makeError(Errc::malformed, "not a date YYYY-MM-DD");
  }
  auto y = parseInt(date.substr(0, 4)), m = parseInt(date.substr(5, 2)), d = parseInt(date.substr(8, 2));
  if (!y || !m || !d || *y < 1970 || *m < 1 || *m > 12 || *d < 1) {
    return makeError(Errc::malformed, "not a date YYYY-MM-DD");
  }
  static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  const bool leap = (*y % 4 == 0 && *y % 100 != 0) || *y % 400 == 0;
  if (*d > mdays[*m - 1] + (*m == 2 && leap ? 1 : 0)) return makeError(Errc::malformed, "no such day");
  return daysFromCivil(*y, *m, *d) * 86'400'000'000LL;
}

Result<DealArgs> parseDealArgs(std::string_view flow, const std::vector<std::string>& key_values) {
  std::vector<std::pair<std::string, std::string>> kvs;
  for (const std::string& kv : key_values) {
    const size_t eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) {
      return makeError(Errc::malformed, std::string(flow) + ": argument '" + kv + "' is not key=value");
    }
    kvs.emplace_back(kv.substr(0, eq), kv.substr(eq + 1));
  }
  return validate(flow, kvs);
}

Bytes encodeDealArgs(const DealArgs& args) {
  std::string s;
  for (const auto& [k, v] : args) s += k + "=" + v + "\n";
  return Bytes(s.begin(), s.end());
}

Result<DealArgs> decodeDealArgs(std::string_view flow, ByteView bytes) {
  const std::string text(bytes.begin(), bytes.end());
  std::vector<std::string> lines;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    lines.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return parseDealArgs(flow, lines);
}

int64_t argAmount(const DealArgs& args, std::string_view name) {
  auto it = args.find(name);
  CCAL_ASSERT(it != args.end());
  return parseInt(it->second).value();
}

std::vector<std::string> argParties(const DealArgs& args, std::string_view name) {
  std::vector<std::string> out;
  auto it = args.find(name);
  if (it == args.end()) return out;
  const std::string& v = it->second;
  size_t start = 0;
  while (start <= v.size()) {
    size_t end = v.find(';', start);
    if (end == std::string::npos) end = v.size();
    out.push_back(v.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

// --- journaled vault access --------------------------------------------------------------

Bytes encodeStates(const std::vector<StateAndRef>& states) {
  return buildCanonical<schema::dealflows::StateList>([&](auto b) {
    auto l = b.initStates(static_cast<uint32_t>(states.size()));
    for (uint32_t i = 0; i < states.size(); ++i) {
      writeStateRef(l[i].initRef(), states[i].ref);
      writeTransactionState(l[i].initState(), states[i].state);
    }
  });
}

Result<std::vector<StateAndRef>> decodeStates(ByteView bytes) {
  return decodeMessage<schema::dealflows::StateList>(
      bytes, "state list", Canonical::required, [](auto r) -> Result<std::vector<StateAndRef>> {
        std::vector<StateAndRef> out;
        for (auto e : r.getStates()) {
          auto ref = readStateRef(e.getRef());
          if (!ref) return ref.error();
          auto st = readTransactionState(e.getState(), default_component_limits);
          if (!st) return st.error();
          out.push_back({std::move(st).value(), *ref});
        }
        return out;
      });
}

Flow<bool> releaseLocks(FlowContext& ctx, const FlowServices& svc) {
  vault::Vault* v = svc.vault;
  const SecureHash holder = ctx.id();
  CallOp op = [v, holder](CallDone done) {
    v->releaseAsync(holder, {}, [done = std::move(done)](const Status& s) {
      if (!s.ok()) return done(s.error());
      done(Bytes{});
    });
  };
  co_await ctx.call("vault.release", std::move(op));
  co_return true;
}

DealArgs dealArgsOf(std::string_view flow, const Bytes& bytes) {
  auto a = decodeDealArgs(flow, bytes);
  if (!a) throw FlowFailure(a.error());
  return std::move(a).value();
}

Party partyNamed(const FlowServices& svc, const std::string& name, std::string_view arg) {
  auto p = svc.partyByName ? svc.partyByName(name) : std::nullopt;
  if (!p) failFlow(Errc::not_found, "argument '" + std::string(arg) + "': no party named '" + name + "'");
  return *p;
}

Party dealNotary(const FlowServices& svc, const DealConfig& config, const DealArgs& args) {
  auto it = args.find("notary");
  const std::string name = it != args.end() ? it->second : config.notary;
  if (name.empty()) failFlow(Errc::malformed, "no notary: pass notary=NAME (the node names none)");
  return partyNamed(svc, name, "notary");
}

Bytes idBytes(const SecureHash& id) { return Bytes(id.bytes().begin(), id.bytes().end()); }

Flow<std::vector<StateAndRef>> queryStates(FlowContext& ctx, const FlowServices& svc, std::string call,
                                           vault::Criteria criteria) {
  vault::Vault* v = svc.vault;
  CallOp op = [v, criteria](CallDone done) {
    auto page = v->query(vault::Query(criteria));
    if (!page) {
      done(page.error());
      return;
    }
    std::vector<StateAndRef> out;
    out.reserve(page->states.size());
    for (const auto& st : page->states) out.push_back({st.state, st.ref});
    done(encodeStates(out));
  };
  auto decode = [](ByteView b) { return decodeStates(b); };
  std::vector<StateAndRef> out = co_await ctx.call<std::vector<StateAndRef>>(std::move(call), std::move(op), decode);
  co_return out;
}

Flow<SignedTransaction> signAndFinalise(FlowContext& ctx, const FlowServices& svc, TransactionBuilder b,
                                        std::string check, std::vector<std::string> observers) {
  Bytes salt = co_await privacySalt(ctx);
  b.setPrivacySalt(salt);
  auto wtx = b.build();
  if (!wtx) throw FlowFailure(wtx.error());
  SignedTransaction stx(std::move(wtx).value());
  stx = co_await collectSignatures(ctx, svc, std::move(stx), std::move(check));
  stx = co_await finality(ctx, svc, std::move(stx), std::move(observers));
  co_return stx;
}

std::vector<TransactionState> payOutputs(const std::vector<StateAndRef>& selected, const Key& payer,
                                         const Key& payee, const std::string& currency, int64_t amount,
                                         const Party& notary) {
  std::map<SecureHash, std::pair<Key, int64_t>> byIssuer;  // issuer hash -> (issuer, total)
  std::vector<SecureHash> order;
  for (const auto& s : selected) {
    auto t = decodeToken(s.state.data).value();
    auto [it, fresh] = byIssuer.try_emplace(t.issuer.hash(), t.issuer, 0);
    if (fresh) order.push_back(t.issuer.hash());
    it->second.second = addChecked(it->second.second, t.amountMinor).value();
  }
  std::vector<TransactionState> out;
  int64_t remaining = amount;
  for (const SecureHash& h : order) {
    const auto& [issuer, total] = byIssuer.at(h);
    const int64_t pay = std::min(total, remaining);
    remaining -= pay;
    if (pay > 0) out.push_back(tokenState(notary, Token{payee, issuer, currency, pay}));
    if (total - pay > 0) out.push_back(tokenState(notary, Token{payer, issuer, currency, total - pay}));
  }
  CCAL_ASSERT(remaining == 0);
  return out;
}

Flow<Bytes> releasingLocks(FlowContext& ctx, const FlowServices& svc, Flow<Bytes> body) {
  Result<Bytes> r = co_await body.asResult();
  co_await releaseLocks(ctx, svc);
  if (!r) throw FlowFailure(r.error());
  co_return std::move(r).value();
}

std::function<void(const FlowId&)> lockReleaser(vault::Vault& vault,
                                                std::function<void(std::string_view)> log) {
  vault::Vault* v = &vault;
  return [v, log = std::move(log)](const FlowId& id) {
    v->releaseAsync(id, {}, [log, id](const Status& st) {
      if (!st && log)
        log("releasing the soft locks of ended flow " + id.hex() + ": " + st.error().toString());
    });
  };
}

Result<uint64_t> releaseLocksOfEndedFlows(const FlowRuntime& runtime, vault::Vault& vault) {
  std::vector<vault::LockId> live;
  for (const FlowInfo& f : runtime.list()) {
    if (f.phase != FlowPhase::finished) live.push_back(f.id);
  }
  return vault.releaseAllExcept(live);
}

bool holdsKey(const FlowServices& svc, const Key& k) { return !svc.keysFor({k}).empty(); }

Status refusal(const std::string& why) { return makeError(Errc::forbidden, "refused: " + why); }

Result<Key> initiatorKey(const FlowServices& svc, const std::string& initiator) {
  auto p = svc.partyByName ? svc.partyByName(initiator) : std::nullopt;
  if (!p) return makeError(Errc::not_found, "the initiator '" + initiator + "' is not in the network map");
  return p->owningKey;
}

namespace {

std::vector<StateAndRef> fromVault(const std::vector<vault::VaultState>& states) {
  std::vector<StateAndRef> out;
  for (const auto& s : states) out.push_back({s.state, s.ref});
  return out;
}

// Tokens of `currency` (of `issuer` when given) summing to at least
// `amount`, soft-locked for this flow.
Flow<std::vector<StateAndRef>> selectTokens(FlowContext& ctx, const FlowServices& svc, std::string currency,
                                            std::optional<SecureHash> issuer, int64_t amount) {
  vault::Vault* v = svc.vault;
  const SecureHash holder = ctx.id();
  CallOp op = [v, holder, currency, issuer, amount](CallDone done) {
    // Without blocking the executor: done runs on the vault's writer thread.
    v->selectFungibleAsync(holder, currency, issuer, amount,
                           [done = std::move(done)](Result<vault::FungibleSelection> sel) {
                             if (!sel) return done(sel.error());
                             done(encodeStates(fromVault(sel->states)));
                           });
  };
  auto decode = [](ByteView b) { return decodeStates(b); };
  std::vector<StateAndRef> out =
      co_await ctx.call<std::vector<StateAndRef>>("vault.selectFungible", std::move(op), decode);
  co_return out;
}

// The state at `ref` if this vault holds it unconsumed.
Flow<std::vector<StateAndRef>> unconsumedState(FlowContext& ctx, const FlowServices& svc, StateRef ref) {
  vault::Vault* v = svc.vault;
  CallOp op = [v, ref](CallDone done) {
    auto s = v->state(ref);
    if (!s) {
      done(s.error());
      return;
    }
    std::vector<StateAndRef> out;
    if (*s && (*s)->status == vault::StateStatus::unconsumed) out.push_back({(*s)->state, ref});
    done(encodeStates(out));
  };
  auto decode = [](ByteView b) { return decodeStates(b); };
  std::vector<StateAndRef> out = co_await ctx.call<std::vector<StateAndRef>>("vault.state", std::move(op), decode);
  co_return out;
}

// Records the canonical registration of (seller, number) unless this
// vault saw it consumed already (the notary guards it in any case).
Flow<bool> recordRegistration(FlowContext& ctx, const FlowServices& svc, SignedTransaction stx,
                              std::string number) {
  vault::Vault* v = svc.vault;
  CallOp op = [v, stx, number](CallDone done) {
    auto s = v->state(StateRef{stx.id(), 0});
    if (!s) {
      done(s.error());
      return;
    }
    if (*s && (*s)->status == vault::StateStatus::consumed) {
      done(makeError(Errc::conflict, "invoice number '" + number + "' was issued already, by transaction " +
                                         ((*s)->consumedBy ? (*s)->consumedBy->hex() : std::string("?"))));
      return;
    }
    v->recordAsync(stx, vault::RecordMode::only_relevant, [done = std::move(done)](const Status& r) {
      if (!r.ok()) return done(r.error());
      done(Bytes{});
    });
  };
  co_await ctx.call("vault.registerInvoice", std::move(op));
  co_return true;
}

// --- helpers ------------------------------------------------------------------------------

struct Shared {
  const FlowServices* svc;
  DealConfig config;
};

std::string hashText(const Key& k) { return k.hash().shortHex(); }

// --- token flows ----------------------------------------------------------------------------

Flow<Bytes> tokenIssueFlow(FlowContext& ctx, std::shared_ptr<const Shared> sh, Bytes raw) {
  const FlowServices& svc = *sh->svc;
  const DealArgs args = dealArgsOf(token_issue_deal, raw);
  const Party to = partyNamed(svc, args.at("to"), "to");
  const Party notary = dealNotary(*sh->svc, sh->config, args);
  Token t{to.owningKey, svc.identity.owningKey, args.at("currency"), argAmount(args, "amount")};
  TransactionBuilder b(notary);
  b.addOutput(tokenState(notary, t));
  b.addCommand(Command{std::string(token_issue_command), {}, {svc.identity.owningKey}});
  std::vector<std::string> none;
  SignedTransaction stx = co_await signAndFinalise(ctx, svc, std::move(b), std::string(token_issue_deal), none);
  co_return idBytes(stx.id());
}

Flow<Bytes> tokenMoveBody(FlowContext& ctx, std::shared_ptr<const Shared> sh, DealArgs args) {
  const FlowServices& svc = *sh->svc;
  const Party to = partyNamed(svc, args.at("to"), "to");
  if (to.owningKey == svc.identity.owningKey) failFlow(Errc::malformed, "argument 'to': a node cannot pay itself");
  std::optional<SecureHash> issuer;
  if (args.count("issuer")) issuer = partyNamed(svc, args.at("issuer"), "issuer").owningKey.hash();
  const int64_t amount = argAmount(args, "amount");
  const std::string currency = args.at("currency");
  ctx.step("selecting " + std::to_string(amount) + " " + currency);
  std::vector<StateAndRef> selected = co_await selectTokens(ctx, svc, currency, issuer, amount);
  const Party notary = selected.at(0).state.notary;
  TransactionBuilder b(notary);
  for (const auto& s : selected) b.addInput(s.ref);
  for (auto& o : payOutputs(selected, svc.identity.owningKey, to.owningKey, currency, amount, notary)) b.addOutput(o);
  b.addCommand(Command{std::string(token_move_command), {}, {svc.identity.owningKey}});
  std::vector<std::string> none;
  SignedTransaction stx = co_await signAndFinalise(ctx, svc, std::move(b), std::string(token_move_deal), none);
  co_return idBytes(stx.id());
}

Flow<Bytes> tokenMoveFlow(FlowContext& ctx, std::shared_ptr<const Shared> sh, Bytes raw) {
  DealArgs args = dealArgsOf(token_move_deal, raw);
  Bytes out = co_await releasingLocks(ctx, *sh->svc, tokenMoveBody(ctx, sh, std::move(args)));
  co_return out;
}

Flow<Bytes> tokenRedeemBody(FlowContext& ctx, std::shared_ptr<const Shared> sh, DealArgs args) {
  const FlowServices& svc = *sh->svc;
  const Party issuer = partyNamed(svc, args.at("issuer"), "issuer");
  const int64_t amount = argAmount(args, "amount");
  const std::string currency = args.at("currency");
  std::vector<StateAndRef> selected =
      co_await selectTokens(ctx, svc, currency, issuer.owningKey.hash(), amount);
  const Party notary = selected.at(0).state.notary;
  TransactionBuilder b(notary);
  int64_t total = 0;
  for (const auto& s : selected) {
    b.addInput(s.ref);
    total += decodeToken(s.state.data).value().amountMinor;
  }
  if (total > amount) {
    b.addOutput(tokenState(notary, Token{svc.identity.owningKey, issuer.owningKey, currency, total - amount}));
  }
  b.addCommand(Command{std::string(token_redeem_command), {}, {svc.identity.owningKey, issuer.owningKey}});
  std::vector<std::string> none;
  SignedTransaction stx = co_await signAndFinalise(ctx, svc, std::move(b), std::string(token_redeem_deal), none);
  co_return idBytes(stx.id());
}

Flow<Bytes> tokenRedeemFlow(FlowContext& ctx, std::shared_ptr<const Shared> sh, Bytes raw) {
  DealArgs args = dealArgsOf(token_redeem_deal, raw);
  Bytes out = co_await releasingLocks(ctx, *sh->svc, tokenRedeemBody(ctx, sh, std::move(args)));
  co_return out;
}

// --- member flows ---------------------------------------------------------------------------

Flow<Bytes> memberIssueFlow(FlowContext& ctx, std::shared_ptr<const Shared> sh, Bytes raw) {
  const FlowServices& svc = *sh->svc;
  const DealArgs args = dealArgsOf(member_issue_deal, raw);
  const Party member = partyNamed(svc, args.at("member"), "member");
  const Party notary = dealNotary(*sh->svc, sh->config, args);
  std::vector<std::string> observers = argParties(args, "observers");
  for (const auto& o : observers) partyNamed(svc, o, "observers");
  const int64_t now = co_await ctx.now();
  const Bytes seed = co_await ctx.randomBytes(16);
  Member m{svc.identity.owningKey,
           svc.identity.name,
           member.owningKey,
           args.at("name"),
           args.at("role"),
           now,
           now + argAmount(args, "days") * 86'400'000'000LL,
           SecureHash::of(seed)};
  TransactionBuilder b(notary);
  b.addOutput(memberState(notary, m));
  b.addCommand(Command{std::string(member_issue_command), {}, {svc.identity.owningKey}});
  SignedTransaction stx =
      co_await signAndFinalise(ctx, svc, std::move(b), std::string(member_issue_deal), observers);
  co_return idBytes(stx.id());
}

Flow<Bytes> memberRevokeFlow(FlowContext& ctx, std::shared_ptr<const Shared> sh, Bytes raw) {
  const FlowServices& svc = *sh->svc;
  const DealArgs args = dealArgsOf(member_revoke_deal, raw);
  const Party member = partyNamed(svc, args.at("member"), "member");
  const std::string type(member_state_type);
  vault::Criteria c =
      vault::Criteria::field(type, "member", vault::FieldOp::eq, {member.owningKey.hash()}) &&
      vault::Criteria::field(type, "cooperative", vault::FieldOp::eq, {svc.identity.owningKey.hash()});
  std::vector<StateAndRef> found = co_await queryStates(ctx, svc, "vault.credentials", c);
  if (found.empty()) {
    failFlow(Errc::not_found, "this cooperative has no live credential of '" + member.name + "'");
  }
  SecureHash last;
  for (const StateAndRef& s : found) {
    TransactionBuilder b(s.state.notary);
    b.addInput(s.ref);
    b.addCommand(Command{std::string(member_revoke_command), {}, {svc.identity.owningKey}});
    std::vector<std::string> none;
    SignedTransaction stx =
        co_await signAndFinalise(ctx, svc, std::move(b), std::string(member_revoke_deal), none);
    last = stx.id();
  }
  co_return idBytes(last);
}

// --- sharing a transaction ------------------------------------------------------------------

std::vector<SecureHash> dependenciesOf(const WireTransaction& tx) {
  std::set<SecureHash> ids;
  for (const StateRef& r : tx.inputs()) ids.insert(r.txId);
  for (const StateRef& r : tx.references()) ids.insert(r.txId);
  return {ids.begin(), ids.end()};
}

// Sends a final (notarised) transaction to `party`, which records it as an
// observer (its ReceiveFinality responder), serving the backchain it asks
// for: finality's distribution step without verifying and notarising again
// (the transaction's time window may have passed since).
Flow<bool> shareBody(FlowContext& ctx, const FlowServices& svc, SignedTransaction stx, std::string party) {
  using Kind = BuiltinMessage::Kind;
  Session s = co_await ctx.initiate(party);
  BuiltinMessage m;
  m.kind = Kind::finality;
  m.stx = stx;
  m.observer = true;
  co_await s.send(encodeBuiltinMessage(m));
  const std::vector<SecureHash> deps = dependenciesOf(stx.tx());
  std::set<SecureHash> authorised(deps.begin(), deps.end());
  uint64_t served = 0;
  for (;;) {
    std::vector<Kind> accepted{Kind::fetch, Kind::recorded};
    auto decode = [accepted](ByteView b) { return decodeBuiltinMessage(b, accepted); };
    BuiltinMessage got = co_await s.receive<BuiltinMessage>(decode, "recorded answer");
    if (got.kind == Kind::recorded) co_return true;
    served += got.ids.size();
    if (got.ids.size() > svc.limits.transactions_per_batch_max || served > svc.limits.backchain_transactions_max) {
      failFlow(Errc::too_large, "'" + party + "' asked for too many backchain transactions");
    }
    for (const SecureHash& id : got.ids) {
      if (!authorised.count(id)) {
        failFlow(Errc::forbidden, "'" + party + "' asked for transaction " + id.hex() +
                                      ", which is not in the backchain of " + stx.id().hex());
      }
    }
    auto txs = co_await loadTransactions(ctx, svc, got.ids);
    BuiltinMessage reply;
    reply.kind = Kind::transactions;
    for (size_t i = 0; i < txs.size(); ++i) {
      if (!txs[i]) failFlow(Errc::not_found, "backchain transaction " + got.ids[i].hex() + " is not in the vault");
      for (const SecureHash& dep : dependenciesOf(txs[i]->tx())) authorised.insert(dep);
      reply.transactions.push_back(txs[i]->encode());
    }
    co_await s.send(encodeBuiltinMessage(reply));
  }
}

inline constexpr std::string_view share_flow = "receivable.share";

// --- receivable flows ------------------------------------------------------------------------

Flow<Bytes> receivableIssueFlow(FlowContext& ctx, std::shared_ptr<const Shared> sh, Bytes raw) {
  const FlowServices& svc = *sh->svc;
  const DealArgs args = dealArgsOf(receivable_issue_deal, raw);
  const Party buyer = partyNamed(svc, args.at("buyer"), "buyer");
  if (buyer.owningKey == svc.identity.owningKey) failFlow(Errc::malformed, "argument 'buyer': a seller cannot invoice itself");
  const Party notary = dealNotary(*sh->svc, sh->config, args);
  const std::string number = args.at("invoice");
  const int64_t due = parseDateMicros(args.at("due")).value();
  const int64_t now = co_await ctx.now();
  // [now - skew, now + window), starting no earlier than the credential.
  TimeWindow window{now - sh->config.clock_skew_micros_max, now + sh->config.time_window_micros};
  if (due < *window.untilMicros) failFlow(Errc::malformed, "argument 'due': " + args.at("due") + " is in the past");

  // The buyer's credential, as a reference input.
  ctx.step("finding the buyer's credential");
  const std::string mtype(member_state_type);
  vault::Criteria c = vault::Criteria::field(mtype, "member", vault::FieldOp::eq, {buyer.owningKey.hash()});
  std::vector<StateAndRef> creds = co_await queryStates(ctx, svc, "vault.credentials", c);
  std::optional<StateAndRef> cred;
  for (const auto& s : creds) {
    auto m = decodeMember(s.state.data);
    if (m && m->validFromMicros <= now && *window.untilMicros <= m->validUntilMicros && s.state.notary == notary) {
      cred = s;
      window.fromMicros = std::max(*window.fromMicros, m->validFromMicros);
      break;
    }
  }
  if (!cred) {
    failFlow(Errc::not_found, "buyer '" + buyer.name + "' holds no valid credential known to this node");
  }

  // The invoice number's registration (see contracts/receivable.h).
  ctx.step("registering invoice " + number);
  auto reg = registrationTransaction(svc.identity.owningKey, number, notary);
  if (!reg) throw FlowFailure(reg.error());
  SignedTransaction regStx(std::move(reg).value());
  for (const KeyPair* k : svc.keysFor(regStx.tx().requiredSigningKeys())) regStx.signWith(*k);
  const SecureHash regId = regStx.id();
  co_await recordRegistration(ctx, svc, std::move(regStx), number);

  Receivable r{svc.identity.owningKey, buyer.owningKey, svc.identity.owningKey, args.at("currency"),
               argAmount(args, "amount"), due, number, receivableLinearId(svc.identity.owningKey, number)};
  TransactionBuilder b(notary);
  b.addInput(StateRef{regId, 0});
  b.addReference(cred->ref);
  b.addOutput(receivableState(notary, r));
  b.addCommand(Command{std::string(receivable_issue_command), {}, {svc.identity.owningKey, buyer.owningKey}});
  b.setTimeWindow(window);
  std::vector<std::string> none;
  SignedTransaction stx =
      co_await signAndFinalise(ctx, svc, std::move(b), std::string(receivable_issue_deal), none);
  co_return idBytes(stx.id());
}

Bytes encodeProposal(const StateRef& ref, int64_t advance) {
  return buildCanonical<schema::dealflows::FinanceProposal>([&](auto b) {
    writeStateRef(b.initReceivable(), ref);
    b.setAdvanceMinor(advance);
  });
}

Result<std::pair<StateRef, int64_t>> decodeProposal(ByteView bytes) {
  return decodeMessage<schema::dealflows::FinanceProposal>(
      bytes, "finance proposal", Canonical::required, [](auto r) -> Result<std::pair<StateRef, int64_t>> {
        auto ref = readStateRef(r.getReceivable());
        if (!ref) return ref.error();
        return std::make_pair(*ref, r.getAdvanceMinor());
      });
}

Bytes encodeDone(const SecureHash& id) {
  return buildCanonical<schema::dealflows::FinanceDone>([&](auto b) { b.setTxId(asData(id.view())); });
}

Result<SecureHash> decodeDone(ByteView bytes) {
  return decodeMessage<schema::dealflows::FinanceDone>(
      bytes, "finance answer", Canonical::required,
      [](auto r) -> Result<SecureHash> { return SecureHash::fromBytes(asByteView(r.getTxId())); });
}

// This node's unconsumed receivable of `number` (held by it when `held`,
// else owed by it to `seller`).
Flow<StateAndRef> findReceivable(FlowContext& ctx, const FlowServices& svc, std::string number,
                                 std::optional<Key> seller) {
  const std::string type(receivable_state_type);
  vault::Criteria c = vault::Criteria::field(type, "invoice", vault::FieldOp::eq, {number});
  if (seller) {
    c = std::move(c) && vault::Criteria::field(type, "seller", vault::FieldOp::eq, {seller->hash()}) &&
        vault::Criteria::field(type, "buyer", vault::FieldOp::eq, {svc.identity.owningKey.hash()});
  } else {
    c = std::move(c) && vault::Criteria::field(type, "holder", vault::FieldOp::eq, {svc.identity.owningKey.hash()});
  }
  std::vector<StateAndRef> found = co_await queryStates(ctx, svc, "vault.receivables", c);
  if (found.empty()) {
    failFlow(Errc::not_found, "no live receivable of invoice '" + number + "' " +
                                  (seller ? "owed by this node" : "held by this node"));
  }
  if (found.size() > 1) failFlow(Errc::conflict, "more than one live receivable of invoice '" + number + "'");
  co_return found[0];
}

Flow<Bytes> receivableFinanceFlow(FlowContext& ctx, std::shared_ptr<const Shared> sh, Bytes raw) {
  const FlowServices& svc = *sh->svc;
  const DealArgs args = dealArgsOf(receivable_finance_deal, raw);
  const Party financier = partyNamed(svc, args.at("financier"), "financier");
  if (financier.owningKey == svc.identity.owningKey) failFlow(Errc::malformed, "argument 'financier': this node holds it already");
  const int64_t advance = argAmount(args, "advance");
  StateAndRef rec = co_await findReceivable(ctx, svc, args.at("invoice"), std::nullopt);
  const Receivable r = decodeReceivable(rec.state.data).value();
  if (advance > r.amountMinor) {
    failFlow(Errc::malformed, "argument 'advance': " + std::to_string(advance) + " is more than the invoice's " +
                                  std::to_string(r.amountMinor));
  }
  // The financier must see the receivable and its backchain: send it the
  // receivable's transaction as an observer.
  ctx.step("sharing the receivable with " + financier.name);
  std::vector<SecureHash> ids{rec.ref.txId};
  auto txs = co_await loadTransactions(ctx, svc, ids);
  if (!txs[0]) failFlow(Errc::not_found, "transaction " + rec.ref.txId.hex() + " is not in the vault");
  co_await ctx.subFlow(std::string(share_flow), shareBody(ctx, svc, std::move(*txs[0]), financier.name));
  ctx.step("offering invoice " + r.invoiceNumber + " to " + financier.name);
  Session s = co_await ctx.initiate(financier.name);
  co_await s.send(encodeProposal(rec.ref, advance));
  auto decode = [](ByteView b) { return decodeDone(b); };
  SecureHash id = co_await s.receive<SecureHash>(decode, "finance answer");
  co_return idBytes(id);
}

Flow<Bytes> financeResponderBody(FlowContext& ctx, std::shared_ptr<const Shared> sh, Session s) {
  const FlowServices& svc = *sh->svc;
  const DealPolicy& policy = sh->config.policy;
  auto decode = [](ByteView b) { return decodeProposal(b); };
  std::pair<StateRef, int64_t> proposal = co_await s.receive<std::pair<StateRef, int64_t>>(decode, "finance proposal");
  const Party seller = partyNamed(svc, s.peer(), "initiator");
  std::vector<StateAndRef> found = co_await unconsumedState(ctx, svc, proposal.first);
  if (found.empty() || found[0].state.stateType != receivable_state_type) {
    failFlow(Errc::not_found, "refused: " + proposal.first.toString() + " is not a live receivable in " + svc.identity.name + "'s vault");
  }
  const Receivable r = decodeReceivable(found[0].state.data).value();
  const int64_t advance = proposal.second;
  if (r.holder != seller.owningKey) {
    failFlow(Errc::forbidden, "refused: '" + seller.name + "' does not hold invoice " + r.invoiceNumber);
  }
  if (r.buyer == svc.identity.owningKey) failFlow(Errc::forbidden, "refused: this node owes invoice " + r.invoiceNumber);
  if (advance <= 0 || advance > r.amountMinor / 100 * policy.finance_advance_percent_max +
                                      r.amountMinor % 100 * policy.finance_advance_percent_max / 100) {
    failFlow(Errc::forbidden, "refused: an advance of " + std::to_string(advance) + " on " + std::to_string(r.amountMinor) +
                                  " " + r.currency + " is above this financier's " +
                                  std::to_string(policy.finance_advance_percent_max) + "%");
  }
  const int64_t now = co_await ctx.now();
  if (r.dueMicros <= now) failFlow(Errc::forbidden, "refused: invoice " + r.invoiceNumber + " is due already");
  ctx.step("paying an advance of " + std::to_string(advance) + " " + r.currency);
  std::vector<StateAndRef> selected = co_await selectTokens(ctx, svc, r.currency, std::nullopt, advance);
  const Party notary = found[0].state.notary;
  Receivable after = r;
  after.holder = svc.identity.owningKey;
  TransactionBuilder b(notary);
  b.addInput(proposal.first);
  for (const auto& t : selected) b.addInput(t.ref);
  b.addOutput(receivableState(notary, after));
  for (auto& o : payOutputs(selected, svc.identity.owningKey, seller.owningKey, r.currency, advance, notary)) b.addOutput(o);
  b.addCommand(Command{std::string(receivable_finance_command), {}, {seller.owningKey, svc.identity.owningKey}});
  b.addCommand(Command{std::string(token_move_command), {}, {svc.identity.owningKey}});
  std::vector<std::string> none;
  SignedTransaction stx =
      co_await signAndFinalise(ctx, svc, std::move(b), std::string(receivable_finance_deal), none);
  co_await s.send(encodeDone(stx.id()));
  co_return idBytes(stx.id());
}

Flow<Bytes> financeResponder(FlowContext& ctx, std::shared_ptr<const Shared> sh, Bytes) {
  Session s = *ctx.counterparty();
  Bytes out = co_await releasingLocks(ctx, *sh->svc, financeResponderBody(ctx, sh, s));
  co_return out;
}

Flow<Bytes> receivableSettleBody(FlowContext& ctx, std::shared_ptr<const Shared> sh, DealArgs args) {
  const FlowServices& svc = *sh->svc;
  const Party seller = partyNamed(svc, args.at("seller"), "seller");
  StateAndRef rec = co_await findReceivable(ctx, svc, args.at("invoice"), seller.owningKey);
  const Receivable r = decodeReceivable(rec.state.data).value();
  ctx.step("paying " + std::to_string(r.amountMinor) + " " + r.currency + " to holder " + hashText(r.holder));
  std::vector<StateAndRef> selected = co_await selectTokens(ctx, svc, r.currency, std::nullopt, r.amountMinor);
  const Party notary = rec.state.notary;
  TransactionBuilder b(notary);
  b.addInput(rec.ref);
  for (const auto& t : selected) b.addInput(t.ref);
  for (auto& o : payOutputs(selected, svc.identity.owningKey, r.holder, r.currency, r.amountMinor, notary)) b.addOutput(o);
  b.addCommand(Command{std::string(receivable_settle_command), {}, {svc.identity.owningKey, r.holder}});
  b.addCommand(Command{std::string(token_move_command), {}, {svc.identity.owningKey}});
  std::vector<std::string> none;
  SignedTransaction stx =
      co_await signAndFinalise(ctx, svc, std::move(b), std::string(receivable_settle_deal), none);
  co_return idBytes(stx.id());
}

Flow<Bytes> receivableSettleFlow(FlowContext& ctx, std::shared_ptr<const Shared> sh, Bytes raw) {
  DealArgs args = dealArgsOf(receivable_settle_deal, raw);
  Bytes out = co_await releasingLocks(ctx, *sh->svc, receivableSettleBody(ctx, sh, std::move(args)));
  co_return out;
}

// --- business checks -------------------------------------------------------------------------

std::optional<Receivable> onlyReceivable(const std::vector<const TransactionState*>& states) {
  return onlyOf<Receivable>(states, receivable_state_type, [](ByteView b) { return decodeReceivable(b); });
}

std::vector<const TransactionState*> inputStates(const LedgerTransaction& tx, std::string_view contract) {
  return tx.inputsOf(contract);
}

}  // namespace

void addDealChecks(FlowServices& svc, const DealPolicy& policy) {
  const FlowServices* s = &svc;
  addLoanChecks(svc);
  svc.checks[std::string(token_redeem_deal)] = [s](const LedgerTransaction& tx, const std::string& initiator) -> Status {
    auto who = initiatorKey(*s, initiator);
    if (!who) return who.error();
    bool any = false;
    for (const auto* st : inputStates(tx, token_contract)) {
      auto t = decodeToken(st->data);
      if (!t) return refusal("a token input does not decode");
      if (!holdsKey(*s, t.value().issuer)) return refusal("this node did not issue every redeemed token");
      if (t.value().owner != *who) return refusal("'" + initiator + "' does not own every redeemed token");
      any = true;
    }
    if (!any) return refusal("nothing is redeemed");
    return {};
  };
  svc.checks[std::string(receivable_issue_deal)] = [s, policy](const LedgerTransaction& tx,
                                                               const std::string& initiator) -> Status {
    auto who = initiatorKey(*s, initiator);
    if (!who) return who.error();
    auto r = onlyReceivable(tx.outputsOf(receivable_contract));
    if (!r) return refusal("the transaction creates no single receivable");
    if (!holdsKey(*s, r->buyer)) return refusal("this node is not the buyer of invoice " + r->invoiceNumber);
    if (r->seller != *who) return refusal("'" + initiator + "' is not the seller of invoice " + r->invoiceNumber);
    if (r->amountMinor > policy.invoice_amount_max_minor) {
      return refusal("invoice " + r->invoiceNumber + " of " + std::to_string(r->amountMinor) + " " + r->currency +
                    " is above this buyer's limit of " + std::to_string(policy.invoice_amount_max_minor));
    }
    return {};
  };
  svc.checks[std::string(receivable_finance_deal)] = [s, policy](const LedgerTransaction& tx,
                                                                 const std::string& initiator) -> Status {
    auto who = initiatorKey(*s, initiator);
    if (!who) return who.error();
    auto before = onlyReceivable(inputStates(tx, receivable_contract));
    auto after = onlyReceivable(tx.outputsOf(receivable_contract));
    if (!before || !after) return refusal("the transaction assigns no single receivable");
    if (!holdsKey(*s, before->holder)) return refusal("this node does not hold invoice " + before->invoiceNumber);
    if (after->holder != *who) return refusal("the invoice is not assigned to the initiator '" + initiator + "'");
    auto advance = netTokensTo(tx, before->holder, before->currency);
    if (!advance || *advance <= 0 ||
        *advance < before->amountMinor / 100 * policy.finance_advance_percent_min +
                       before->amountMinor % 100 * policy.finance_advance_percent_min / 100) {
      return refusal("an advance of " + std::to_string(advance.value_or(0)) + " " + before->currency + " on " +
                    std::to_string(before->amountMinor) + " is below this holder's " +
                    std::to_string(policy.finance_advance_percent_min) + "%");
    }
    return {};
  };
  svc.checks[std::string(receivable_settle_deal)] = [s](const LedgerTransaction& tx,
                                                        const std::string& initiator) -> Status {
    auto who = initiatorKey(*s, initiator);
    if (!who) return who.error();
    auto r = onlyReceivable(inputStates(tx, receivable_contract));
    if (!r) return refusal("the transaction settles no single receivable");
    if (!holdsKey(*s, r->holder)) return refusal("this node does not hold invoice " + r->invoiceNumber);
    if (r->buyer != *who) return refusal("'" + initiator + "' is not the buyer of invoice " + r->invoiceNumber);
    auto paid = netTokensTo(tx, r->holder, r->currency);
    if (!paid || *paid < r->amountMinor) return refusal("this holder is not paid in full");
    return {};
  };
  addLcChecks(svc);
}

Status registerDealFlows(FlowRuntime& runtime, const FlowServices& services, DealConfig config) {
  auto sh = std::make_shared<const Shared>(Shared{&services, std::move(config)});
  using Body = Flow<Bytes> (*)(FlowContext&, std::shared_ptr<const Shared>, Bytes);
  const std::vector<std::pair<std::string_view, Body>> flows = {
      {token_issue_deal, tokenIssueFlow},
      {token_move_deal, tokenMoveFlow},
      {token_redeem_deal, tokenRedeemFlow},
      {member_issue_deal, memberIssueFlow},
      {member_revoke_deal, memberRevokeFlow},
      {receivable_issue_deal, receivableIssueFlow},
      {receivable_finance_deal, receivableFinanceFlow},
      {receivable_finance_responder, financeResponder},
      {receivable_settle_deal, receivableSettleFlow},
  };
  for (const auto& [name, body] : flows) {
    Body fn = body;
    if (auto s = runtime.registerFlow(std::string(name),
                                      [sh, fn](FlowContext& ctx, Bytes args) { return fn(ctx, sh, std::move(args)); });
        !s) {
      return s;
    }
  }
  if (auto s = runtime.registerInitiating(std::string(share_flow), std::string(receive_finality_flow)); !s) {
    return s;
  }
  if (auto s = registerLcFlows(runtime, services, sh->config); !s) return s;
  if (auto s = registerLoanFlows(runtime, services, sh->config); !s) return s;
  return runtime.registerInitiating(std::string(receivable_finance_deal), std::string(receivable_finance_responder));
}

}  // namespace ccal::flows
