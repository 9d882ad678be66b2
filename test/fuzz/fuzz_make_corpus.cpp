// Writes the seed corpus of the fuzz targets, and fresh work directories.
//
//   fuzz_make_corpus <out dir> <regressions dir> <target>...
//
// For each named target it recreates, empty, <out>/seeds/<target> and
// <out>/work/<target>, writes valid encodings for that target into the seeds
// directory, and copies in the checked-in inputs of
// <regressions dir>/<target>/ if any (inputs that once crashed a target).
// libFuzzer then runs with the work directory first (where it adds what it
// finds) and the seeds directory second (read only), so nothing in the source
// tree is ever written. Every seed is checked to decode before it is written.
// It also makes <out>/artifacts, where the tests have libFuzzer save crashes.

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "flows/builtin_messages.h"
#include "flows/deal_flows.h"
#include "flows/delivery.h"
#include "flows/link_mux.h"
#include "ledger/filtered_transaction.h"
#include "ledger/pki.h"
#include "ledger/signed_transaction.h"
#include "ledger/testing.h"
#include "node/bootstrap.h"
#include "node/network_map.h"
#include "notary/notarisation_messages.h"
#include "notary/pbft_messages.h"
#include "test/fuzz/fuzz_common.h"

using namespace ccal;
using namespace ccal::testing;
namespace fs = std::filesystem;

namespace {

struct Seed {
  std::string name;
  Bytes bytes;
};

Key composite(uint32_t threshold, std::vector<std::pair<uint32_t, Key>> children) {
  return Key::threshold(threshold, std::move(children)).value();
}

// Deterministic keys, parties and transactions: the same seeds on every run.
struct World {
  KeyPair alice = testKey(1);
  KeyPair bob = testKey(2);
  KeyPair carol = testKey(3);
  KeyPair dave = testKey(4);
  KeyPair notary1 = testKey(9);
  KeyPair notary2 = testKey(10);
  KeyPair notary3 = testKey(11);
  Key single = Key(alice.publicKey());
  Key two_of_three =
      Key::anyOf(2, {alice.publicKey(), bob.publicKey(), carol.publicKey()}).value();
  // Weighted and nested: bob alone (weight 2) and one of carol and dave.
  Key nested = composite(3, {{2, Key(bob.publicKey())},
                             {1, Key::anyOf(1, {carol.publicKey(), dave.publicKey()}).value()},
                             {1, Key(dave.publicKey())}});
  // The limit: depth_max (4) levels of threshold nodes.
  Key deep = composite(
      1, {{1, composite(1, {{1, composite(1, {{1, composite(1, {{1, Key(alice.publicKey())},
                                                               {1, Key(bob.publicKey())}})},
                                               {1, Key(carol.publicKey())}})},
                            {1, Key(dave.publicKey())}})}});
  Key notary_key = Key::anyOf(2, {notary1.publicKey(), notary2.publicKey(),
                                  notary3.publicKey()}).value();
  Party alice_party = testParty("Haikou Fishing Cooperative", alice);
  Party bob_party = testParty("Sanya Tea Cooperative", bob);
  Party notary{"O=CCAL Notary, L=Haikou, C=CN", notary_key};
  SecureHash genesis = SecureHash::of(asBytes("genesis"));

  TransactionState state(const std::string& value) const {
    return dummyState(notary, {alice_party.owningKey, bob_party.owningKey}, value);
  }

  // Every one of the nine component groups is present.
  WireTransaction full() const {
    TransactionState encumbered = state("alice-100");
    encumbered.encumbrance = 1;
    TransactionState lock = state("lock");
    lock.constraint = ContractConstraint{true, {}};
    Command issue = dummyCommand("Issue", {nested});
    issue.data = Bytes{1, 2, 3, 4, 5};
    TransactionBuilder b(notary);
    b.addInput({genesis, 0})
        .addInput({genesis, 1})
        .addReference({genesis, 5})
        .addOutput(encumbered)
        .addOutput(lock)
        .addCommand(dummyCommand("Move", {alice_party.owningKey, bob_party.owningKey}))
        .addCommand(issue)
        .addAttachment(SecureHash::of(asBytes("contract text")))
        .addAttachment(SecureHash::of(asBytes("invoice")))
        .setTimeWindow(TimeWindow{1'700'000'000'000'000, 1'700'000'600'000'000})
        .setNetworkParametersHash(SecureHash::of(asBytes("parameters")))
        .setPrivacySalt(Bytes(privacy_salt_bytes, 0x42));
    return b.build().value();
  }

  // No notary, no inputs: one output and one command.
  WireTransaction minimal() const {
    TransactionBuilder b;
    b.addOutput(dummyState(notary, {alice_party.owningKey}, "issued"))
        .addCommand(dummyCommand("Issue", {alice_party.owningKey}))
        .setPrivacySalt(Bytes(privacy_salt_bytes, 0x07));
    return b.build().value();
  }

  // Spends many inputs, so filtered proofs have several hidden subtrees.
  WireTransaction wide() const {
    TransactionBuilder b(notary);
    for (uint32_t i = 0; i < 11; ++i) b.addInput({genesis, i});
    b.addOutput(state("merged"))
        .addCommand(dummyCommand("Move", {two_of_three}))
        .setTimeWindow(TimeWindow{std::nullopt, 1'700'000'600'000'000})
        .setPrivacySalt(Bytes(privacy_salt_bytes, 0x99));
    return b.build().value();
  }
};

using Writer = std::function<std::vector<Seed>(const World&)>;

std::vector<Seed> keySeeds(const World& w) {
  return {{"single", w.single.encode()},
          {"two-of-three", w.two_of_three.encode()},
          {"nested-weighted", w.nested.encode()},
          {"deepest", w.deep.encode()},
          {"notary-cluster", w.notary_key.encode()}};
}

std::vector<Seed> componentSeeds(const World& w) {
  std::vector<Seed> out;
  auto add = [&](fuzz::ComponentKind kind, const std::string& name, const Bytes& bytes) {
    Bytes b{static_cast<uint8_t>(kind)};
    append(b, bytes);
    out.push_back({name, std::move(b)});
  };
  using K = fuzz::ComponentKind;
  add(K::state_ref, "state-ref", encodeStateRef({w.genesis, 0}));
  add(K::state_ref, "state-ref-big-index", encodeStateRef({w.genesis, 0xfffffffe}));
  WireTransaction full = w.full();
  for (size_t i = 0; i < full.outputs().size(); ++i) {
    add(K::transaction_state, "state-" + std::to_string(i),
        encodeTransactionState(full.outputs()[i]));
  }
  TransactionState plain = w.state("");
  plain.participants = {w.nested, w.deep};
  add(K::transaction_state, "state-composite-participants", encodeTransactionState(plain));
  for (size_t i = 0; i < full.commands().size(); ++i) {
    add(K::command_value, "command-" + std::to_string(i), encodeCommandValue(full.commands()[i]));
    add(K::command_signers, "signers-" + std::to_string(i),
        encodeCommandSigners(full.commands()[i]));
  }
  add(K::party, "party-single", encodeParty(w.alice_party));
  add(K::party, "party-notary-cluster", encodeParty(w.notary));
  add(K::time_window, "window-both", encodeTimeWindow(TimeWindow{-5, 1'700'000'000'000'000}));
  add(K::time_window, "window-from", encodeTimeWindow(TimeWindow{100, std::nullopt}));
  add(K::time_window, "window-until", encodeTimeWindow(TimeWindow{std::nullopt, 200}));
  add(K::hash_component, "hash", encodeHashComponent(SecureHash::of(asBytes("invoice"))));
  return out;
}

std::vector<Seed> wireSeeds(const World& w) {
  return {{"full", w.full().encode()},
          {"minimal", w.minimal().encode()},
          {"wide", w.wide().encode()}};
}

std::vector<Seed> signedSeeds(const World& w) {
  SignedTransaction all(w.full());
  for (const auto* k : {&w.alice, &w.bob, &w.dave, &w.notary1, &w.notary3}) all.signWith(*k);
  CCAL_ASSERT(all.verifyRequiredSignatures().ok());
  SignedTransaction partial(w.full());
  partial.signWith(w.alice);
  SignedTransaction wrong_tx(w.full());
  wrong_tx.addSignature(w.alice.sign(signableBytes(w.minimal().id())));
  wrong_tx.signWith(w.bob);
  SignedTransaction issued(w.minimal());
  issued.signWith(w.alice);
  return {{"fully-signed", all.encode()},
          {"partly-signed", partial.encode()},
          {"signature-over-another-tx", wrong_tx.encode()},
          {"unsigned", SignedTransaction(w.wide()).encode()},
          {"issue-signed", issued.encode()}};
}

std::vector<Seed> filteredSeeds(const World& w) {
  WireTransaction full = w.full();
  WireTransaction wide = w.wide();
  auto all = [](ComponentGroup, uint32_t) { return true; };
  auto none = [](ComponentGroup, uint32_t) { return false; };
  auto odd_inputs = [](ComponentGroup g, uint32_t i) {
    return g == ComponentGroup::inputs && i % 2 == 1;
  };
  return {{"notary-view", FilteredTransaction::forNotary(full).encode()},
          {"everything", FilteredTransaction::build(full, all).encode()},
          {"nothing", FilteredTransaction::build(full, none).encode()},
          {"wide-notary-view", FilteredTransaction::forNotary(wide).encode()},
          {"wide-odd-inputs", FilteredTransaction::build(wide, odd_inputs).encode()},
          {"minimal-everything", FilteredTransaction::build(w.minimal(), all).encode()}};
}

// A small real hierarchy: root -> node CA -> identity, and a CRL revoking it.
struct PkiSeeds {
  std::vector<Seed> certificates, crls;
};

const PkiSeeds& pkiSeeds() {
  static const PkiSeeds seeds = [] {
    PkiSeeds out;
    auto now = std::chrono::system_clock::time_point(std::chrono::seconds(1'700'000'000));
    Validity years{now, now + std::chrono::hours(24 * 365)};
    KeyPair root_key = testKey(40), node_key = testKey(41), id_key = testKey(42);
    auto root = CertificateAuthority::createRoot(
                    X500Name::parse("O=CCAL Root, L=Haikou, C=CN").value(), root_key, years)
                    .value();
    auto name = X500Name::parse("O=Haikou Fishing Cooperative, L=Haikou, C=CN").value();
    auto node_ca_cert = root.issueNodeCa(name, node_key.publicKey(), years).value();
    auto node_ca = CertificateAuthority::fromCertificate(node_ca_cert, node_key).value();
    auto identity = node_ca.issueLegalIdentity(name, id_key.publicKey(), years).value();
    auto tls = node_ca.issueTls(name, testKey(43).publicKey(), years).value();
    auto add = [](std::vector<Seed>& to, const std::string& n, const Bytes& der,
                  const std::string& pem) {
      Bytes d{0};
      append(d, der);
      to.push_back({n + "-der", d});
      Bytes p{1};
      append(p, asBytes(pem));
      to.push_back({n + "-pem", p});
    };
    add(out.certificates, "root", root.certificate().der(), root.certificate().pem());
    add(out.certificates, "node-ca", node_ca_cert.der(), node_ca_cert.pem());
    add(out.certificates, "identity", identity.der(), identity.pem());
    add(out.certificates, "tls", tls.der(), tls.pem());
    std::vector<Certificate> revoked{identity};
    auto crl = node_ca.issueCrl(revoked, now, now + std::chrono::hours(24)).value();
    auto empty = root.issueCrl({}, now, now + std::chrono::hours(24)).value();
    add(out.crls, "revoking", crl.der(), crl.pem());
    add(out.crls, "empty", empty.der(), empty.pem());
    return out;
  }();
  return seeds;
}

// The demo network, bootstrapped once into a temporary folder: its signed
// parameters and node infos, and their raw parts.
std::vector<Seed> networkSeeds(const World&) {
  std::vector<Seed> out;
  auto add = [&](fuzz::NetworkKind kind, const std::string& name, ByteView bytes) {
    Seed seed{name, {static_cast<uint8_t>(kind)}};
    seed.bytes.insert(seed.bytes.end(), bytes.begin(), bytes.end());
    out.push_back(std::move(seed));
  };
  auto read = [](const fs::path& file) {
    std::ifstream in(file, std::ios::binary);
    return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  };
  char pattern[] = "/tmp/ccal-fuzz-network-XXXXXX";
  if (::mkdtemp(pattern) == nullptr) return out;
  const fs::path dir = fs::path(pattern) / "net";
  auto spec = node::loadNetworkSpec(CCAL_DEMO_SPEC);
  auto made = spec ? node::bootstrapNetwork(*spec, dir, false, std::chrono::system_clock::now())
                   : Result<node::BootstrapResult>(spec.error());
  if (!made) {
    std::cerr << "fuzz_make_corpus: cannot bootstrap the demo network: " << made.error().message
              << "\n";
    fs::remove_all(pattern);
    return out;
  }
  const Bytes parameters = read(dir / "_operator" / "network-parameters");
  add(fuzz::NetworkKind::signed_network_parameters, "signed-parameters", parameters);
  if (auto sp = node::SignedNetworkParameters::decode(parameters)) {
    add(fuzz::NetworkKind::network_parameters, "parameters", sp->raw);
  }
  const fs::path infos = made->config_files.front().parent_path() / "node-infos";
  for (const auto& entry : fs::directory_iterator(infos)) {
    const Bytes info = read(entry.path());
    const std::string name = entry.path().filename().string();
    add(fuzz::NetworkKind::signed_node_info, "signed-" + name, info);
    if (auto si = node::SignedNodeInfo::decode(info)) {
      add(fuzz::NetworkKind::node_info, name, si->raw);
    }
  }
  fs::remove_all(pattern);
  return out;
}

// Notarisation messages as a cluster of the World's three notary keys would
// send them.
std::vector<Seed> notarisationSeeds(const World& w) {
  using namespace ccal::notary;
  std::vector<Seed> out;
  auto add = [&](fuzz::NotarisationKind kind, const std::string& name, const Bytes& bytes) {
    Bytes b{static_cast<uint8_t>(kind)};
    append(b, bytes);
    out.push_back({name, std::move(b)});
  };
  using K = fuzz::NotarisationKind;
  const WireTransaction full = w.full(), wide = w.wide();
  add(K::request, "request-filtered",
      NotarisationRequest::nonValidating(w.notary.name, FilteredTransaction::forNotary(full)).encode());
  add(K::request, "request-filtered-wide",
      NotarisationRequest::nonValidating(w.notary.name, FilteredTransaction::forNotary(wide)).encode());
  SignedTransaction stx(full);
  for (const auto* k : {&w.alice, &w.bob, &w.dave}) stx.signWith(*k);
  SignedTransaction dep(w.minimal());
  dep.signWith(w.alice);
  add(K::request, "request-validating", NotarisationRequest::validating(w.notary.name, stx, {dep}).encode());

  NotarisationReply success;
  success.requestHash = SecureHash::of(asBytes("request"));
  success.txId = full.id();
  success.batchSeq = 7;
  NotarisationReply conflict = success;
  conflict.outcome = NotarisationReply::Outcome::conflict;
  conflict.conflicts = {{{w.genesis, 0}, consumingTxIdHash(wide.id()), false},
                        {{w.genesis, 5}, consumingTxIdHash(wide.id()), true}};
  NotarisationReply error = success;
  error.outcome = NotarisationReply::Outcome::error;
  error.error = makeError(Errc::invalid_transaction, "the time window does not contain the notary's time");
  NotarisationReply refused;  // refused before ordering: batch 0
  refused.requestHash = SecureHash::of(asBytes("garbage"));
  refused.outcome = NotarisationReply::Outcome::error;
  refused.error = makeError(Errc::malformed, "notarisation request does not decode");
  for (const auto& [name, r] : std::vector<std::pair<std::string, NotarisationReply>>{
           {"success", success}, {"conflict", conflict}, {"error", error}, {"refused", refused}}) {
    add(K::reply, "reply-" + name, r.encode());
  }
  // Signed: alone in its tree, and the second of two leaves.
  SignedNotarisationReply alone;
  alone.reply = refused.encode();
  alone.leafCount = 1;
  alone.rootSignature = w.notary1.sign(batchRootSignableBytes(0, 1, replyLeaf(alone.reply)));
  add(K::signed_reply, "signed-refused", alone.encode());
  SignedNotarisationReply second;
  second.reply = success.encode();
  second.leafIndex = 1;
  second.leafCount = 2;
  second.txSignature = w.notary2.sign(signableBytes(full.id()));
  add(K::signed_reply, "signed-success", second.encode());

  BatchEffects effects;
  effects.seq = 7;
  effects.consumed = {{{w.genesis, 0}, full.id()}, {{w.genesis, 1}, full.id()}};
  effects.committedWithoutInputs = {wide.id()};
  add(K::batch_effects, "effects", effects.encode());
  BatchEffects empty;
  empty.seq = 1;
  add(K::batch_effects, "effects-empty", empty.encode());
  return out;
}

// PBFT messages of a 4-replica cluster (the World's keys sign what is signed).
std::vector<Seed> pbftSeeds(const World& w) {
  using namespace ccal::notary::pbft;
  std::vector<Seed> out;
  auto add = [&](fuzz::PbftKind kind, const std::string& name, const Bytes& bytes) {
    Bytes b{static_cast<uint8_t>(kind)};
    append(b, bytes);
    out.push_back({name, std::move(b)});
  };
  using K = fuzz::PbftKind;
  const std::string cluster = "fuzz-notary";
  WireRequest request;
  request.client = w.alice_party.name;
  request.client_seq = 1'700'000'000'000'001;
  request.body = Bytes{1, 2, 3};
  for (uint8_t i = 0; i < 4; ++i) request.authenticator.push_back(Bytes(mac_bytes, static_cast<uint8_t>(i + 1)));
  WireRequest other = request;
  other.client_seq += 1;
  other.authenticator[2].clear();  // an empty entry: this replica got it directly
  BatchBody batch{1'700'000'000'000'000, {request, other}};
  const SecureHash d = batch.digest();
  auto sign = [&](const KeyPair& k, uint32_t replica, SignedKind kind, Bytes body) {
    SignedMsg sm;
    sm.kind = kind;
    sm.replica = replica;
    const DigitalSignature sig = k.sign(signedPreimage(cluster, kind, body));
    sm.signature.assign(sig.view().begin(), sig.view().end());
    sm.body = std::move(body);
    return sm;
  };
  const KeyPair* keys[] = {&w.notary1, &w.notary2, &w.notary3, &w.alice};
  const SecureHash state = SecureHash::of(asBytes("state at 32"));
  std::vector<SignedMsg> proof;
  for (uint32_t i = 0; i < 3; ++i) {
    proof.push_back(sign(*keys[i], i, SignedKind::checkpoint, encodeCheckpoint({32, state})));
  }
  std::vector<SignedMsg> view_changes;
  for (uint32_t i = 0; i < 3; ++i) {
    ViewChangeMsg vc;
    vc.new_view = 1;
    vc.stable_seq = 32;
    vc.stable_digest = state;
    vc.stable_proof = proof;
    vc.prepared = {{33, d, 0}};
    vc.pre_prepared = {{33, d, 0}, {34, SecureHash::of(asBytes("other")), 0}};
    if (i == 2) vc.prepared.clear();
    view_changes.push_back(sign(*keys[i], i, SignedKind::view_change, encodeViewChange(vc)));
  }
  NewViewMsg nv;
  nv.view = 1;
  nv.view_changes = view_changes;
  nv.start_seq = 32;
  nv.chosen = {{33, d, 1}, {34, SecureHash::zero(), 1}};
  const std::vector<std::pair<std::string, Message>> frames{
      {"request", request},
      {"reply", ReplyMsg{0, request.client_seq, 2, Bytes{9, 9, 9}}},
      {"replies",
       RepliesMsg{0, 2, {{request.client_seq, Bytes{9, 9, 9}}, {request.client_seq + 1, Bytes{}}}}},
      {"pre-prepare", PrePrepareMsg{0, 33, batch}},
      {"prepare", Prepare{{0, 33, d}}},
      {"commit", Commit{{0, 33, d}}},
      {"checkpoint", proof[0]},
      {"view-change", view_changes[0]},
      {"new-view", sign(w.notary2, 1, SignedKind::new_view, encodeNewView(nv))},
      {"fetch-batch", FetchBatchMsg{33, d}},
      {"batch-data", BatchDataMsg{33, batch}},
      {"status", StatusMsg{1, 31, 32, true}},
      {"fetch-effects", FetchEffectsMsg{1, 256}},
      {"effects-data", EffectsDataMsg{1, {Bytes{1}, Bytes{}, Bytes(100, 7)}}},
  };
  for (const auto& [name, m] : frames) add(K::frame, "frame-" + name, encodeFrame(m));
  add(K::batch, "batch", encodeBatch(batch));
  add(K::batch, "batch-empty", encodeBatch(BatchBody{5, {}}));
  add(K::checkpoint, "checkpoint", encodeCheckpoint({32, state}));
  add(K::view_change, "view-change", view_changes[0].body);
  add(K::new_view, "new-view", encodeNewView(nv));
  return out;
}

// What a member takes from a peer: mux frames around delivery and PBFT
// frames, delivery frames, and the flows' payloads.
std::vector<Seed> messagingSeeds(const World& w) {
  using namespace ccal::flows;
  std::vector<Seed> out;
  using K = fuzz::MessagingKind;
  auto add = [&](K kind, const std::string& name, const Bytes& bytes) {
    Bytes b{static_cast<uint8_t>(kind)};
    append(b, bytes);
    out.push_back({name, std::move(b)});
  };
  const WireTransaction full = w.full();
  SignedTransaction stx(full);
  for (const auto* k : {&w.alice, &w.bob, &w.dave}) stx.signWith(*k);
  const DigitalSignature sig = w.notary1.sign(signableBytes(full.id()));

  BuiltinMessage sign_request;
  sign_request.kind = BuiltinMessage::Kind::sign_request;
  sign_request.check = "receivable.finance";
  sign_request.stx = stx;
  sign_request.observers = {w.bob_party.name};
  BuiltinMessage signatures;
  signatures.kind = BuiltinMessage::Kind::signatures;
  signatures.signatures = {sig};
  BuiltinMessage fetch;
  fetch.kind = BuiltinMessage::Kind::fetch;
  fetch.ids = {full.id(), w.genesis};
  BuiltinMessage transactions;
  transactions.kind = BuiltinMessage::Kind::transactions;
  transactions.transactions = {stx.encode()};
  BuiltinMessage finality;
  finality.kind = BuiltinMessage::Kind::finality;
  finality.stx = stx;
  finality.observer = true;
  finality.recipients = {w.alice_party.name, w.bob_party.name};
  BuiltinMessage recorded;
  recorded.kind = BuiltinMessage::Kind::recorded;
  const std::pair<const char*, const BuiltinMessage*> builtins[] = {
      {"sign-request", &sign_request}, {"signatures", &signatures}, {"fetch", &fetch},
      {"transactions", &transactions}, {"finality", &finality},     {"recorded", &recorded}};
  for (const auto& [name, m] : builtins)
    add(K::builtin_message, std::string("builtin-") + name, encodeBuiltinMessage(*m));

  const Bytes message = encodeMessageFrame(3, 7, 5, SecureHash::of(asBytes("message 7")),
                                           encodeBuiltinMessage(fetch));
  const Bytes ack = encodeAckFrame(3, 5, {7, 9});
  add(K::delivery_frame, "delivery-message", message);
  add(K::delivery_frame, "delivery-ack", ack);
  add(K::delivery_frame, "delivery-ack-empty", encodeAckFrame(1, 0, {}));
  Bytes mux_messaging{link_channel_messaging}, mux_notary{link_channel_notary, 0, 0, 0, 0};
  append(mux_messaging, message);
  add(K::mux_frame, "mux-messaging", mux_messaging);
  add(K::mux_frame, "mux-notary", mux_notary);
  add(K::mux_frame, "mux-unknown-channel", Bytes{9, 1, 2, 3});
  add(K::mux_frame, "mux-empty", Bytes{});

  add(K::id_list, "ids", encodeIdList({full.id(), w.genesis}));
  add(K::id_list, "ids-empty", encodeIdList({}));
  add(K::transaction_list, "transactions", encodeTransactionList({stx, std::nullopt}));
  NotaryAnswer signed_answer;
  signed_answer.signatures = {sig, w.notary2.sign(signableBytes(full.id()))};
  add(K::notary_answer, "answer-signed", encodeNotaryAnswer(signed_answer));
  NotaryAnswer conflict;
  conflict.conflicts = {{{w.genesis, 0}, SecureHash::of(asBytes("consumer"))}};
  add(K::notary_answer, "answer-conflict", encodeNotaryAnswer(conflict));
  add(K::states, "states",
      encodeStates({{w.state("a"), {full.id(), 0}}, {w.state("b"), {full.id(), 1}}}));
  add(K::states, "states-empty", encodeStates({}));

  // Each deal flow with every argument set to a value of its type.
  const auto& specs = dealFlowSpecs();
  for (size_t i = 0; i < specs.size(); ++i) {
    std::vector<std::string> kvs;
    for (const auto& a : specs[i].args) {
      std::string v;
      switch (a.type) {
        case ArgType::party:
          v = w.bob_party.name;
          break;
        case ArgType::amount:
          v = "250";
          break;
        case ArgType::currency:
          v = "CNY";
          break;
        case ArgType::text:
          v = "fish, 2 tonnes";
          break;
        case ArgType::date:
          v = "2026-12-31";
          break;
        case ArgType::days:
          v = "90";
          break;
        case ArgType::parties:
          v = w.alice_party.name + ";" + w.bob_party.name;
          break;
      }
      kvs.push_back(std::string(a.name) + "=" + v);
    }
    auto args = parseDealArgs(specs[i].flow, kvs);
    if (!args) continue;
    Bytes b{static_cast<uint8_t>(i)};
    append(b, encodeDealArgs(*args));
    add(K::deal_args, "deal-" + std::string(specs[i].flow), b);
  }
  return out;
}

std::vector<Seed> certificateSeeds(const World&) { return pkiSeeds().certificates; }
std::vector<Seed> crlSeeds(const World&) { return pkiSeeds().crls; }

// Every seed must be accepted by its target's decoder, or it seeds nothing.
bool decodes(const std::string& target, const Bytes& b) {
  if (target == "fuzz_key") return Key::decode(b).ok();
  if (target == "fuzz_wire_transaction") return WireTransaction::decode(b).ok();
  if (target == "fuzz_signed_transaction") return SignedTransaction::decode(b).ok();
  if (target == "fuzz_filtered_transaction") return FilteredTransaction::decode(b).ok();
  if (target == "fuzz_certificate" || target == "fuzz_crl") {
    ByteView rest = ByteView(b).subspan(1);
    std::string_view text(reinterpret_cast<const char*>(rest.data()), rest.size());
    if (target == "fuzz_certificate") {
      return b.at(0) == 0 ? Certificate::fromDer(rest).ok() : Certificate::fromPem(text).ok();
    }
    return b.at(0) == 0 ? Crl::fromDer(rest).ok() : Crl::fromPem(text).ok();
  }
  if (target == "fuzz_network") {
    ByteView rest = ByteView(b).subspan(1);
    switch (static_cast<fuzz::NetworkKind>(b.at(0))) {
      case fuzz::NetworkKind::network_parameters: return node::NetworkParameters::decode(rest).ok();
      case fuzz::NetworkKind::signed_network_parameters:
        return node::SignedNetworkParameters::decode(rest).ok();
      case fuzz::NetworkKind::node_info: return node::NodeInfo::decode(rest).ok();
      case fuzz::NetworkKind::signed_node_info: return node::SignedNodeInfo::decode(rest).ok();
    }
  }
  if (target == "fuzz_notarisation") {
    using namespace ccal::notary;
    ByteView rest = ByteView(b).subspan(1);
    switch (static_cast<fuzz::NotarisationKind>(b.at(0))) {
      case fuzz::NotarisationKind::request: return NotarisationRequest::decode(rest).ok();
      case fuzz::NotarisationKind::reply: return NotarisationReply::decode(rest).ok();
      case fuzz::NotarisationKind::signed_reply: return SignedNotarisationReply::decode(rest).ok();
      case fuzz::NotarisationKind::batch_effects: return BatchEffects::decode(rest).ok();
    }
  }
  if (target == "fuzz_pbft") {
    using namespace ccal::notary::pbft;
    ByteView rest = ByteView(b).subspan(1);
    const PbftLimits limits;
    switch (static_cast<fuzz::PbftKind>(b.at(0))) {
      case fuzz::PbftKind::frame: return decodeFrame(rest, limits).ok();
      case fuzz::PbftKind::batch: return decodeBatch(rest, limits).ok();
      case fuzz::PbftKind::checkpoint: return decodeCheckpoint(rest, limits).ok();
      case fuzz::PbftKind::view_change: return decodeViewChange(rest, limits).ok();
      case fuzz::PbftKind::new_view: return decodeNewView(rest, limits).ok();
    }
  }
  if (target == "fuzz_messaging") {
    using namespace ccal::flows;
    ByteView rest = ByteView(b).subspan(1);
    using K = fuzz::MessagingKind;
    switch (static_cast<K>(b.at(0))) {
      case K::mux_frame:
        return true;  // every frame is taken or dropped
      case K::delivery_frame:
        return decodeDeliveryFrame(rest, 8u << 20, (8u << 20) - 256, 4096).ok();
      case K::builtin_message:
        return decodeBuiltinMessage(
                   rest, {BuiltinMessage::Kind::sign_request, BuiltinMessage::Kind::signatures,
                          BuiltinMessage::Kind::fetch, BuiltinMessage::Kind::transactions,
                          BuiltinMessage::Kind::finality, BuiltinMessage::Kind::recorded})
            .ok();
      case K::id_list:
        return decodeIdList(rest).ok();
      case K::transaction_list:
        return decodeTransactionList(rest).ok();
      case K::notary_answer:
        return decodeNotaryAnswer(rest).ok();
      case K::states:
        return decodeStates(rest).ok();
      case K::deal_args:
        return !rest.empty() &&
               decodeDealArgs(dealFlowSpecs().at(rest[0] % dealFlowSpecs().size()).flow,
                              rest.subspan(1))
                   .ok();
    }
  }
  if (target == "fuzz_component") {
    ByteView c = ByteView(b).subspan(1);
    switch (static_cast<fuzz::ComponentKind>(b.at(0))) {
      case fuzz::ComponentKind::state_ref: return decodeStateRef(c).ok();
      case fuzz::ComponentKind::transaction_state: return decodeTransactionState(c).ok();
      case fuzz::ComponentKind::command_value: return decodeCommandValue(c).ok();
      case fuzz::ComponentKind::command_signers: return decodeCommandSigners(c).ok();
      case fuzz::ComponentKind::party: return decodeParty(c).ok();
      case fuzz::ComponentKind::time_window: return decodeTimeWindow(c).ok();
      case fuzz::ComponentKind::hash_component: return decodeHashComponent(c, "hash").ok();
    }
  }
  return false;
}

const std::map<std::string, Writer>& writers() {
  static const std::map<std::string, Writer> w{
      {"fuzz_key", keySeeds},
      {"fuzz_component", componentSeeds},
      {"fuzz_wire_transaction", wireSeeds},
      {"fuzz_signed_transaction", signedSeeds},
      {"fuzz_filtered_transaction", filteredSeeds},
      {"fuzz_certificate", certificateSeeds},
      {"fuzz_crl", crlSeeds},
      {"fuzz_network", networkSeeds},
      {"fuzz_notarisation", notarisationSeeds},
      {"fuzz_pbft", pbftSeeds},
      {"fuzz_messaging", messagingSeeds},
  };
  return w;
}

void freshDirectory(const fs::path& dir) {
  fs::remove_all(dir);
  fs::create_directories(dir);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::cerr << "usage: fuzz_make_corpus <out dir> <regressions dir> <target>...\n";
    return 2;
  }
  fs::path out = argv[1];
  fs::path regressions = argv[2];
  fs::create_directories(out / "artifacts");  // crash inputs; kept across runs
  World world;
  int failures = 0;
  for (int a = 3; a < argc; ++a) {
    std::string target = argv[a];
    fs::path seeds = out / "seeds" / target;
    freshDirectory(seeds);
    freshDirectory(out / "work" / target);
    auto it = writers().find(target);
    if (it == writers().end()) {
      std::cerr << "fuzz_make_corpus: no seed writer for " << target << "\n";
      ++failures;
      continue;
    }
    size_t n = 0;
    for (const auto& seed : it->second(world)) {
      if (!decodes(target, seed.bytes)) {
        std::cerr << "fuzz_make_corpus: seed " << target << "/" << seed.name
                  << " does not decode\n";
        ++failures;
      }
      char prefix[8];
      std::snprintf(prefix, sizeof prefix, "%02zu-", n++);
      std::ofstream file(seeds / (prefix + seed.name), std::ios::binary);
      file.write(reinterpret_cast<const char*>(seed.bytes.data()),
                 static_cast<std::streamsize>(seed.bytes.size()));
      if (!file) {
        std::cerr << "fuzz_make_corpus: cannot write " << (seeds / seed.name) << "\n";
        return 1;
      }
    }
    size_t copied = 0;
    if (fs::is_directory(regressions / target)) {
      for (const auto& entry : fs::directory_iterator(regressions / target)) {
        if (!entry.is_regular_file()) continue;
        fs::copy_file(entry.path(), seeds / ("regression-" + entry.path().filename().string()));
        ++copied;
      }
    }
    std::cout << target << ": " << n << " seeds, " << copied << " regression inputs -> " << seeds
              << "\n";
  }
  return failures == 0 ? 0 : 1;
}
