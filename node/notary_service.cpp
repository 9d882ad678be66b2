#include "node/notary_service.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "ledger/assert.h"
#include "ledger/signed_transaction.h"
#include "ledger/transaction.h"
#include "node/api_server.h"
#include "notary/protocol_client.h"
#include "notary/replica.h"
#include "notary/replica_store.h"
#include "notary/uniqueness.h"
#include "flows/link_mux.h"
#include "vault/store.h"

namespace ccal::node {
namespace fs = std::filesystem;
using nlohmann::json;

// --- conversions ---------------------------------------------------------------------

notary::NotaryClusterInfo clusterInfoOf(const NotaryInfo& info) {
  notary::NotaryClusterInfo c;
  c.name = info.name;
  c.service_key = info.service_key;
  c.validating = info.validating;
  c.f = info.f;
  for (const auto& r : info.replicas) c.replica_keys.push_back(r.key);
  return c;
}

namespace {

constexpr char base64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int base64Value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

std::vector<notary::ReplicaIdentity> replicaIdentities(const NotaryInfo& info) {
  std::vector<notary::ReplicaIdentity> out;
  for (const auto& r : info.replicas) out.push_back({r.name, r.key});
  return out;
}

json statusOfReplica(const notary::Replica& r, const NotaryInfo& cluster, uint32_t index) {
  const auto& s = r.stats();
  return {{"role", "replica"},
          {"cluster", cluster.name},
          {"replica_index", index},
          {"view", r.view()},
          {"view_changing", r.viewChanging()},
          {"primary", r.isPrimary()},
          {"last_executed", r.lastExecuted()},
          {"state_digest", r.stateDigest().hex()},
          {"state_digest_seq", r.stateDigestSeq()},
          {"stable_checkpoint", r.stableSeq()},
          {"stats",
           {{"batches_proposed", s.batches_proposed},
            {"batches_executed", s.batches_executed},
            {"requests_executed", s.requests_executed},
            {"replies_from_cache", s.replies_from_cache},
            {"view_changes", s.view_changes},
            {"new_views", s.new_views},
            {"checkpoints_stable", s.checkpoints_stable},
            {"state_transfers", s.state_transfers},
            {"effects_applied", s.effects_applied},
            {"frames_rejected", s.frames_rejected},
            {"store_writes", s.store_writes},
            {"batches_fetched", s.batches_fetched},
            {"batches_decided_by_commits", s.batches_decided_by_commits},
            {"prepared_logged", s.prepared_logged},
            {"prepared_log_full", s.prepared_log_full},
            {"batches_overlapped", s.batches_overlapped},
            {"votes_early", s.votes_early},
            {"votes_abstained", s.votes_abstained},
            {"batches_replied_early", s.batches_replied_early},
            {"replied_early_lead_micros", s.replied_early_lead_micros},
            {"batches_timed", s.batches_timed},
            {"phase_prepare_micros", s.phase_prepare_micros},
            {"phase_prepared_durable_micros", s.phase_prepared_durable_micros},
            {"phase_commit_micros", s.phase_commit_micros},
            {"phase_execute_micros", s.phase_execute_micros},
            {"requests_proposed", s.requests_proposed},
            {"request_wait_micros", s.request_wait_micros}}}};
}

}  // namespace

std::string base64Encode(ByteView bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    uint32_t v = uint32_t{bytes[i]} << 16 | uint32_t{bytes[i + 1]} << 8 | bytes[i + 2];
    for (int s = 18; s >= 0; s -= 6) out.push_back(base64_alphabet[(v >> s) & 63]);
  }
  if (size_t rest = bytes.size() - i; rest > 0) {
    uint32_t v = uint32_t{bytes[i]} << 16 | (rest == 2 ? uint32_t{bytes[i + 1]} << 8 : 0);
    out.push_back(base64_alphabet[(v >> 18) & 63]);
    out.push_back(base64_alphabet[(v >> 12) & 63]);
    out.push_back(rest == 2 ? base64_alphabet[(v >> 6) & 63] : '=');
    out.push_back('=');
  }
  return out;
}

Result<Bytes> base64Decode(std::string_view text) {
  if (text.size() % 4 != 0) {
    return Error{Errc::malformed, "base64 of " + std::to_string(text.size()) +
                                      " characters: not a multiple of 4"};
  }
  Bytes out;
  out.reserve(text.size() / 4 * 3);
  for (size_t i = 0; i < text.size(); i += 4) {
    const bool last = i + 4 == text.size();
    int v[4];
    int pad = 0;
    for (int j = 0; j < 4; ++j) {
      char c = text[i + j];
      if (c == '=' && last && j >= 2) {
        ++pad;
        v[j] = 0;
        continue;
      }
      v[j] = pad > 0 ? -1 : base64Value(c);
      if (v[j] < 0) {
        return Error{Errc::malformed,
                     "base64: character " + std::to_string(i + j) + " is not in the alphabet"};
      }
    }
    uint32_t w = uint32_t(v[0]) << 18 | uint32_t(v[1]) << 12 | uint32_t(v[2]) << 6 | uint32_t(v[3]);
    out.push_back(static_cast<uint8_t>(w >> 16));
    if (pad < 2) out.push_back(static_cast<uint8_t>(w >> 8));
    if (pad < 1) out.push_back(static_cast<uint8_t>(w));
    // Canonical: the bits under the padding are zero.
    if ((pad == 1 && (w & 0xff) != 0) || (pad == 2 && (w & 0xffff) != 0)) {
      return Error{Errc::malformed, "base64: non-zero bits under the padding"};
    }
  }
  return out;
}

// --- the service ------------------------------------------------------------------

struct NotaryService::Impl {
  NotaryServiceOptions o;
  void log(const std::string& line) const {
    if (o.log) {
      o.log(line);
    } else {
      std::fprintf(stderr, "%s\n", line.c_str());
    }
  }

  // Replica role.
  const NotaryInfo* cluster = nullptr;
  std::unique_ptr<vault::Store> store;
  std::unique_ptr<notary::UniquenessStateMachine> machine;
  std::unique_ptr<notary::Replica> replica;

  // Member role: one protocol client and notary client per cluster.
  std::unique_ptr<flows::PeerSplit> split;
  struct Client {
    const NotaryInfo* info = nullptr;
    std::unique_ptr<notary::ProtocolClient> protocol;
    std::unique_ptr<notary::NotaryClient> notary;
  };
  std::map<std::string, Client, std::less<>> clients;  // by notary X.500 name

  // The load generator's nonces: each load's StateRefs are fresh.
  uint64_t load_runs = 0;

  Status openReplica();
  Status openClients();
  Client* clientFor(std::string_view notary_x500);
  // The cluster a request's "notary" names, or the only one when it names none.
  Result<Client*> chooseClient(const json& body);
  void notarise(const ApiRequest& request, ApiReply reply);
  void load(const ApiRequest& request, ApiReply reply);
  json status() const;
};

Status NotaryService::Impl::openReplica() {
  const NodeConfig& config = *o.config;
  for (const auto& n : o.map->parameters().notaries) {
    for (size_t i = 0; i < n.replicas.size(); ++i) {
      if (n.replicas[i].name == config.x500) {
        cluster = &n;
        if (i != config.notary_replica_index) {
          return Error{Errc::malformed,
                       config.source_file.string() + ": notary.replica_index is " +
                           std::to_string(config.notary_replica_index) + " but notary '" + n.name +
                           "' lists " + config.x500 + " as replica " + std::to_string(i)};
        }
      }
    }
  }
  if (!cluster) {
    return Error{Errc::not_found, config.source_file.string() + ": no notary in the network parameters lists " +
                                      config.x500 + " as a replica (notary.cluster = '" +
                                      config.notary_cluster + "')"};
  }
  vault::StoreConfig sc;
  sc.path = (config.base_dir / "notary").string();
  sc.map_size_bytes = config.vault_map_size_mb << 20;
  auto opened = notary::UniquenessStateMachine::openStore(sc, notary::pbft::ReplicaStore::dbNames());
  if (!opened) {
    return Error{opened.error().code, "notary store " + sc.path + ": " + opened.error().message};
  }
  store = std::move(*opened);

  notary::UniquenessConfig uc;
  uc.notary_name = cluster->name;
  uc.service_key = cluster->service_key;
  uc.validating = cluster->validating;
  uc.registry = o.contracts;
  uc.complete_on = o.executor;
  auto sm = notary::UniquenessStateMachine::open(*store, uc, *o.identity);
  if (!sm) {
    return Error{sm.error().code, "notary state machine " + sc.path + ": " + sm.error().message};
  }
  machine = std::move(*sm);

  notary::ReplicaConfig rc;
  rc.cluster = cluster->name;
  rc.replicas = replicaIdentities(*cluster);
  rc.self_index = config.notary_replica_index;
  const NetworkMap* map = o.map;
  // Asked for every request a replica receives or finds in a pre-prepare.
  // A member's legal identity key and role never change (NetworkMap::update
  // refuses that), so a found client is remembered (at most
  // notary_client_keys_cached_max, then the memory starts over); an unknown
  // name is asked of the map again, so a member that joins later is found.
  struct ClientKeys {
    std::mutex mutex;
    std::unordered_map<std::string, PublicKey> known;
  };
  auto keys = std::make_shared<ClientKeys>();
  rc.client_key = [map, keys](std::string_view client) -> std::optional<PublicKey> {
    {
      std::lock_guard lock(keys->mutex);
      auto it = keys->known.find(std::string(client));
      if (it != keys->known.end()) return it->second;
    }
    auto member = map->memberByName(client);
    if (!member || (member->role != Role::node && member->role != Role::regulator)) return std::nullopt;
    std::lock_guard lock(keys->mutex);
    if (keys->known.size() >= notary_client_keys_cached_max) keys->known.clear();
    keys->known.emplace(std::string(client), member->legal_identity_key);
    return member->legal_identity_key;
  };
  rc.batch_size_max = config.notary_batch_size_max;
  rc.batch_delay_micros = static_cast<int64_t>(config.notary_batch_delay_micros);
  rc.batches_in_flight_max = config.notary_batches_in_flight_max;
  rc.batches_in_flight_at_once_max = config.notary_batches_in_flight_at_once_max;
  rc.vote_log_bytes = uint64_t{config.notary_vote_log_mb} << 20;
  rc.vote_log_record_bytes_max = config.notary_vote_log_record_bytes_max;
  rc.view_change_timeout_micros = static_cast<int64_t>(config.notary_view_change_timeout_micros);
  rc.view_change_timeout_micros_max =
      std::max(rc.view_change_timeout_micros, rc.view_change_timeout_micros_max);
  rc.log = o.log;
  replica = std::make_unique<notary::Replica>(std::move(rc), *o.identity, *o.link, *o.executor,
                                              *o.clock, *store, *machine);
  return Status::success();
}

Status NotaryService::Impl::openClients() {
  split = std::make_unique<flows::PeerSplit>(*o.link, o.log);
  for (const auto& n : o.map->parameters().notaries) {
    std::set<std::string, std::less<>> peers;
    for (const auto& r : n.replicas) peers.insert(r.name);
    flows::Link& part = split->part(std::move(peers));
    notary::ProtocolClientConfig pc;
    pc.client_name = o.config->x500;
    pc.replicas = replicaIdentities(n);
    pc.log = o.log;
    Client c;
    c.info = &n;
    c.protocol = std::make_unique<notary::ProtocolClient>(pc, *o.identity, part, *o.executor, *o.clock);
    notary::NotaryClientConfig nc;
    nc.timeout_micros = notary_client_timeout_micros;
    nc.log = o.log;
    c.notary = std::make_unique<notary::NotaryClient>(*o.executor, *c.protocol, clusterInfoOf(n), nc);
    clients.emplace(n.name, std::move(c));
  }
  return Status::success();
}

notary::NotaryClient* NotaryService::clientOf(std::string_view notary_x500) {
  Impl::Client* client = impl_->clientFor(notary_x500);
  return client == nullptr ? nullptr : client->notary.get();
}

NotaryService::Impl::Client* NotaryService::Impl::clientFor(std::string_view notary_x500) {
  auto it = clients.find(notary_x500);
  if (it != clients.end()) return &it->second;
  // Any spelling of the name the map accepts.
  for (auto& [name, c] : clients) {
    if (o.map->notary(notary_x500) == c.info) return &c;
  }
  return nullptr;
}

Result<NotaryService::Impl::Client*> NotaryService::Impl::chooseClient(const json& body) {
  if (!body.contains("notary")) {
    if (clients.size() == 1) return &clients.begin()->second;
    return Error{Errc::malformed, "'notary' (the notary's X.500 name) is required: the network has " +
                                      std::to_string(clients.size()) + " notaries"};
  }
  if (!body["notary"].is_string()) {
    return Error{Errc::malformed, "'notary' must be a string (the notary's X.500 name)"};
  }
  const std::string name = body["notary"];
  Client* client = clientFor(name);
  if (!client) return Error{Errc::not_found, "'" + name + "' is not a notary in the network parameters"};
  return client;
}

json NotaryService::Impl::status() const {
  if (replica) {
    json out = statusOfReplica(*replica, *cluster, o.config->notary_replica_index);
    if (store) {
      const auto st = store->stats();
      // Durable LMDB commits of this replica's environment (protocol state
      // and consumed states together): commits per executed batch is what
      // group commit buys.
      out["store"] = {{"commits", st.commits},
                      {"requests", st.requests},
                      {"writer_cpu_micros", st.writer_cpu_micros},
                      {"queued_micros", st.queued_micros},
                      {"run_micros", st.run_micros},
                      {"commit_micros", st.commit_micros}};
    }
    // The vote log's records (prepared certificates) and its flushes,
    // durable writes besides the store's commits.
    const auto vl = replica->voteLogStats();
    out["vote_log"] = {{"records", vl.records},     {"flushes", vl.flushes},
                       {"bytes", vl.bytes},         {"refused_full", vl.refused_full},
                       {"direct_io", vl.direct_io}, {"failed", vl.failed}};
    return out;
  }
  json out = json::array();
  for (const auto& [name, c] : clients) {
    const auto& k = c.notary->counters();
    const auto& p = c.protocol->stats();
    out.push_back({{"notary", name},
                   {"validating", c.info->validating},
                   {"replicas", c.info->replicas.size()},
                   {"requests", k.requests},
                   {"notarised", k.notarised},
                   {"conflicts", k.conflicts},
                   {"errors", k.errors},
                   {"timeouts", k.timeouts},
                   {"replies_ignored", k.replies_ignored},
                   {"outstanding", c.protocol->outstanding()},
                   {"retransmissions", p.retransmissions},
                   {"frames_rejected", p.frames_rejected}});
  }
  return {{"role", "client"}, {"clusters", out}};
}

namespace {

json notarisationJson(const notary::NotarisationResult& r) {
  if (r.kind == notary::NotarisationResult::Kind::notarised) {
    json sigs = json::array();
    for (const auto& s : r.signatures) {
      json sig = {{"by", s.by().hex()}, {"signature", toHex(s.view())}};
      if (const auto& batch = s.batch()) {
        // A batch signature: the Ed25519 signature covers the batch's
        // Merkle root; this is where the transaction id sits under it.
        json path = json::array();
        for (const auto& h : batch->path) path.push_back(h.hex());
        sig["batch"] = {{"leaf_index", batch->leafIndex}, {"leaf_count", batch->leafCount}, {"path", path}};
      }
      sigs.push_back(std::move(sig));
    }
    return {{"result", "notarised"}, {"tx_id", r.txId.hex()}, {"signatures", sigs}};
  }
  json conflicts = json::array(), proof = json::array();
  for (const auto& c : r.conflicts) {
    conflicts.push_back({{"state_ref", c.ref.toString()},
                         {"consuming_tx_hash", c.consumingTxIdHash.hex()},
                         {"reference", c.isReference}});
  }
  for (const auto& p : r.proof) proof.push_back(base64Encode(p));
  return {{"result", "conflict"}, {"tx_id", r.txId.hex()}, {"conflicts", conflicts}, {"proof", proof}};
}

Result<SignedTransaction> transactionFrom(const json& value, const std::string& what) {
  if (!value.is_string()) {
    return Error{Errc::malformed, "'" + what + "' must be a string: base64 of a SignedTransaction"};
  }
  auto bytes = base64Decode(value.get<std::string>());
  if (!bytes) return Error{Errc::malformed, "'" + what + "': " + bytes.error().message};
  auto stx = SignedTransaction::decode(*bytes);
  if (!stx) {
    return Error{stx.error().code, "'" + what + "' is not a SignedTransaction: " + stx.error().message};
  }
  return std::move(*stx);
}

}  // namespace

void NotaryService::Impl::notarise(const ApiRequest& request, ApiReply reply) {
  if (replica) {
    return reply(ApiResponse::error(409, "wrong_role",
                                    "this member is a notary replica; notarisation is requested "
                                    "through a member of role node or regulator"));
  }
  const json& body = request.body;
  if (!body.is_object() || !body.contains("transaction")) {
    return reply(ApiResponse::error(400, "bad_request",
                                    "'transaction' (base64 of a SignedTransaction) is required, and "
                                    "'notary' (the notary's X.500 name) when the network has several"));
  }
  auto chosen = chooseClient(body);
  if (!chosen) return reply(ApiResponse::fromError(chosen.error()));
  Client* client = *chosen;
  auto stx = transactionFrom(body["transaction"], "transaction");
  if (!stx) return reply(ApiResponse::error(400, "malformed", stx.error().message));
  const auto& tx_notary = stx->tx().notary();
  if (!tx_notary) {
    return reply(ApiResponse::error(422, "invalid_transaction",
                                    "the transaction " + stx->id().hex() + " names no notary"));
  }
  if (o.map->notary(tx_notary->name) != client->info) {
    return reply(ApiResponse::error(422, "invalid_transaction",
                                    "the transaction " + stx->id().hex() + " names notary '" +
                                        tx_notary->name + "', not '" + client->info->name + "'"));
  }
  std::vector<SignedTransaction> dependencies;
  if (body.contains("dependencies")) {
    const json& deps = body["dependencies"];
    if (!deps.is_array() || deps.size() > notary_request_dependencies_max) {
      return reply(ApiResponse::error(
          400, "bad_request",
          "'dependencies' must be an array of at most " +
              std::to_string(notary_request_dependencies_max) + " base64 SignedTransactions"));
    }
    for (size_t i = 0; i < deps.size(); ++i) {
      auto dep = transactionFrom(deps[i], "dependencies[" + std::to_string(i) + "]");
      if (!dep) return reply(ApiResponse::error(400, "malformed", dep.error().message));
      dependencies.push_back(std::move(*dep));
    }
  }
  if (!dependencies.empty() && !client->info->validating) {
    return reply(ApiResponse::error(400, "bad_request",
                                    "notary '" + client->info->name +
                                        "' is non-validating: it takes no 'dependencies'"));
  }
  client->notary->notarise(
      *stx,
      [reply, notarised = *stx](Result<notary::NotarisationResult> result) mutable {
        if (!result) return reply(ApiResponse::fromError(result.error()));
        json out = notarisationJson(*result);
        if (result->kind == notary::NotarisationResult::Kind::notarised) {
          for (const auto& s : result->signatures) notarised.addSignature(s);
          out["transaction"] = base64Encode(notarised.encode());  // with the notary's signatures
        }
        reply(ApiResponse::ok(out));
      },
      dependencies);
}

static int64_t unixMicrosNow() {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Builds `count` transactions that each spend one fresh StateRef and
// notarises them with at most `concurrency` in flight.
void NotaryService::Impl::load(const ApiRequest& request, ApiReply reply) {
  if (replica) {
    return reply(ApiResponse::error(409, "wrong_role",
                                    "this member is a notary replica; run the load from a member "
                                    "of role node or regulator"));
  }
  const json& body = request.body;
  if (!body.is_object()) {
    return reply(ApiResponse::error(400, "bad_request", "the body must be a JSON object"));
  }
  uint64_t count = 0, concurrency = 0, rate = 0, tick = 0;
  bool prepare = false;
  int64_t start_at = 0;
  try {
    count = body.value("count", uint64_t{100});
    concurrency = body.value("concurrency", uint64_t{64});
    rate = body.value("rate_per_second", uint64_t{0});
    tick = body.value("tick_micros", uint64_t{notary_load_tick_micros_default});
    prepare = body.value("prepare", false);
    start_at = body.value("start_at_unix_micros", int64_t{0});
  } catch (const json::exception&) {
    return reply(
        ApiResponse::error(400, "bad_request",
                           "'count', 'concurrency', 'rate_per_second', 'tick_micros' and "
                           "'start_at_unix_micros' are numbers, 'prepare' is true or false"));
  }
  if (start_at < 0 || (start_at > 0 && start_at > unixMicrosNow() + notary_load_start_delay_micros_max)) {
    return reply(ApiResponse::error(400, "bad_request",
                                    "'start_at_unix_micros' must be 0 (at once) or a time at most " +
                                        std::to_string(notary_load_start_delay_micros_max / 1'000'000) +
                                        " s from now"));
  }
  if (rate > notary_load_rate_per_second_max) {
    return reply(ApiResponse::error(400, "bad_request",
                                    "'rate_per_second' must be 0 (as fast as the concurrency "
                                    "allows) .. " + std::to_string(notary_load_rate_per_second_max)));
  }
  if (tick > notary_load_tick_micros_max) {
    return reply(
        ApiResponse::error(400, "bad_request",
                           "'tick_micros' must be 0 (each transaction at its own due time) .. " +
                               std::to_string(notary_load_tick_micros_max)));
  }
  if (count == 0 || count > notary_load_transactions_max) {
    return reply(ApiResponse::error(
        400, "bad_request", "'count' must be 1.." + std::to_string(notary_load_transactions_max)));
  }
  if (concurrency == 0 || concurrency > notary_load_concurrency_max) {
    return reply(ApiResponse::error(
        400, "bad_request", "'concurrency' must be 1.." + std::to_string(notary_load_concurrency_max)));
  }
  auto chosen = chooseClient(body);
  if (!chosen) return reply(ApiResponse::fromError(chosen.error()));
  Client* client = *chosen;
  if (client->info->validating) {
    return reply(ApiResponse::error(409, "validating_notary",
                                    "the load generator's transactions carry no contract a "
                                    "validating notary would accept; use a non-validating one"));
  }

  using Clock = std::chrono::steady_clock;
  struct Run {
    Impl* self = nullptr;
    Client* client = nullptr;
    Party notary;
    uint64_t count = 0, concurrency = 0, nonce = 0, issued = 0, outstanding = 0;
    uint64_t rate_per_second = 0;  // 0: closed loop (only `concurrency` bounds it)
    int64_t tick_micros = 0;       // open loop: the generator wakes this often
    std::vector<Result<SignedTransaction>> prepared;  // with `prepare`: built before the clock starts
    int64_t start_at_unix_micros = 0;                  // 0: at once
    int64_t start_late_micros = 0;
    bool prepare = false;
    bool pace_timer_armed = false;
    uint64_t notarised = 0, conflicts = 0, errors = 0;
    std::optional<Error> first_error;
    std::vector<int64_t> latencies_micros;
    Clock::time_point started = Clock::now();
    ApiReply reply;

    // Open loop at rate_per_second: the i-th transaction is due i/rate
    // seconds after the start; what is due and under the concurrency bound
    // goes now, and a timer wakes the generator at the next tick (every
    // tick_micros, 0: at each transaction's own due time) for what is due
    // by then. A transaction's latency counts from its due time, so the
    // wait for the tick, and any lag of the generator behind its schedule
    // (a full concurrency bound, a busy executor), is in it.
    Clock::time_point dueAt(uint64_t i) const {
      return started +
             std::chrono::microseconds(static_cast<int64_t>(i * 1'000'000 / rate_per_second));
    }
    uint64_t due(Clock::time_point now) const {
      if (rate_per_second == 0) return count;
      auto elapsed = std::chrono::duration_cast<std::chrono::microseconds>(now - started).count();
      uint64_t d = static_cast<uint64_t>(elapsed) * rate_per_second / 1'000'000 + 1;
      return std::min(d, count);
    }
    void pace(const std::shared_ptr<Run>& run) {
      if (rate_per_second == 0 || pace_timer_armed || issued >= count) return;
      if (outstanding >= concurrency) return;  // a completion issues the next
      pace_timer_armed = true;
      int64_t next =
          std::chrono::duration_cast<std::chrono::microseconds>(dueAt(issued) - started).count();
      if (tick_micros > 0) next = (next + tick_micros - 1) / tick_micros * tick_micros;
      auto delay = std::chrono::duration_cast<std::chrono::microseconds>(
                       started + std::chrono::microseconds(next) - Clock::now())
                       .count();
      self->o.executor->runAfter(std::max<int64_t>(delay, 0), [run] {
        run->pace_timer_armed = false;
        run->issue(run);
      });
    }
    Result<SignedTransaction> build(uint64_t i) const {
      std::string seed = "ccal.notary.load\n" + self->o.config->x500 + "\n" + std::to_string(nonce) + "\n" +
                         std::to_string(i);
      StateRef input{SecureHash::of(asBytes(seed)), 0};
      Key owner((*self->o.identity).publicKey());
      TransactionState out;
      out.contract = "ccal.diagnostic.Load";
      out.stateType = "ccal.diagnostic.LoadState";
      out.data = Bytes(seed.begin(), seed.end());
      out.participants = {owner};
      out.notary = notary;
      TransactionBuilder b(notary);
      b.addInput(input);
      b.addOutput(std::move(out));
      b.addCommand(Command{"ccal.diagnostic.Load.Move", {}, {owner}});
      auto wtx = b.build();
      if (!wtx) return wtx.error();
      SignedTransaction stx(std::move(*wtx));
      stx.signWith((*self->o.identity));
      return stx;
    }
    // `prepare`: every transaction is built and signed before the clock
    // starts, in chunks so the executor keeps serving its links meanwhile.
    void prepareChunk(const std::shared_ptr<Run>& run) {
      const uint64_t end = std::min<uint64_t>(count, prepared.size() + notary_load_prepare_chunk_max);
      while (prepared.size() < end) prepared.push_back(build(prepared.size()));
      if (prepared.size() < count) {
        self->o.executor->post([run] { run->prepareChunk(run); });
        return;
      }
      startClock(run);
    }
    // Starts at start_at_unix_micros (waiting for it if it is ahead), or at once.
    void startClock(const std::shared_ptr<Run>& run) {
      const int64_t wait = start_at_unix_micros > 0 ? start_at_unix_micros - unixMicrosNow() : 0;
      if (wait > 0) {
        self->o.executor->runAfter(wait, [run] { run->startClock(run); });
        return;
      }
      start_late_micros = -wait;
      started = Clock::now();
      issue(run);
    }
    void issue(const std::shared_ptr<Run>& run) {
      const uint64_t due_now = due(Clock::now());
      while (outstanding < concurrency && issued < due_now) {
        const uint64_t i = issued++;
        ++outstanding;
        auto stx = i < prepared.size() ? std::move(prepared[i]) : build(i);
        if (!stx) {
          finishOne(run, Clock::now(), stx.error());
          continue;
        }
        auto at = rate_per_second > 0 ? dueAt(i) : Clock::now();
        client->notary->notarise(*stx, [run, at](Result<notary::NotarisationResult> r) {
          if (!r) return run->finishOne(run, at, r.error());
          if (r->kind == notary::NotarisationResult::Kind::notarised) {
            ++run->notarised;
          } else {
            ++run->conflicts;
          }
          run->finishOne(run, at, std::nullopt);
        });
      }
      pace(run);
    }
    void finishOne(const std::shared_ptr<Run>& run, Clock::time_point at, std::optional<Error> error) {
      --outstanding;
      latencies_micros.push_back(
          std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - at).count());
      if (error) {
        ++errors;
        if (!first_error) first_error = std::move(error);
      }
      if (issued < count) {
        // Not from inside notarise()'s call stack: post the next issue.
        self->o.executor->post([run] { run->issue(run); });
        return;
      }
      if (outstanding > 0) return;
      auto elapsed = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - started).count();
      std::sort(latencies_micros.begin(), latencies_micros.end());
      auto pct = [&](double p) {
        if (latencies_micros.empty()) return int64_t{0};
        size_t k = static_cast<size_t>(p * static_cast<double>(latencies_micros.size() - 1));
        return latencies_micros[k];
      };
      json out = {
          {"count", count},
          {"notarised", notarised},
          {"conflicts", conflicts},
          {"errors", errors},
          {"rate_per_second", rate_per_second},
          {"tick_micros", tick_micros},
          {"duration_micros", elapsed},
          {"per_second",
           elapsed > 0 ? static_cast<double>(count) * 1e6 / static_cast<double>(elapsed) : 0.0},
          {"latency_p50_micros", pct(0.50)},
          {"latency_p99_micros", pct(0.99)},
          {"latency_max_micros", latencies_micros.empty() ? 0 : latencies_micros.back()},
          {"prepared", prepare},
          {"start_late_micros", start_late_micros}};
      if (first_error) out["first_error"] = first_error->toString();
      reply(ApiResponse::ok(out));
    }
  };
  auto run = std::make_shared<Run>();
  run->self = this;
  run->client = client;
  run->notary = Party{client->info->name, client->info->service_key};
  run->count = count;
  run->concurrency = concurrency;
  run->rate_per_second = rate;
  run->tick_micros = static_cast<int64_t>(tick);
  // Fresh per load, also across restarts of this node.
  run->nonce = static_cast<uint64_t>(std::chrono::system_clock::now().time_since_epoch().count()) +
               load_runs++;
  run->reply = std::move(reply);
  run->prepare = prepare;
  run->start_at_unix_micros = start_at;
  if (prepare) {
    run->prepared.reserve(count);
    run->prepareChunk(run);
  } else {
    run->startClock(run);
  }
}

// --- NotaryService ---------------------------------------------------------------------

Result<std::unique_ptr<NotaryService>> NotaryService::open(NotaryServiceOptions options) {
  CCAL_ASSERT(options.config && options.map && options.link && options.executor && options.clock && options.identity);
  auto impl = std::make_unique<Impl>();
  impl->o = std::move(options);
  if (impl->o.config->role == Role::notary_replica) {
    CCAL_TRY(impl->openReplica());
  } else {
    CCAL_TRY(impl->openClients());
  }
  return std::unique_ptr<NotaryService>(new NotaryService(std::move(impl)));
}

NotaryService::NotaryService(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

NotaryService::~NotaryService() {
  stopStore();
  impl_->clients.clear();
  impl_->split.reset();
  impl_->replica.reset();
  impl_->machine.reset();
}

bool NotaryService::isReplica() const { return impl_->replica != nullptr; }

Status NotaryService::start() {
  if (impl_->replica) {
    Status started = impl_->replica->start();
    if (!started.ok()) {
      return Error{started.error().code, "notary replica: " + started.error().message};
    }
  }
  return Status::success();
}

void NotaryService::quiesce() {
  if (impl_->replica) impl_->replica->quiesceStore();
}

void NotaryService::recordCleanStop() {
  if (impl_->replica) impl_->replica->recordCleanStop();
}

void NotaryService::stopStore() {
  // Drains the queued writes (the replica's and the state machine's) while
  // both are still alive; their completions post to the stopped executor
  // and are dropped.
  impl_->store.reset();
}

void NotaryService::addRoutes(ApiServer& api) {
  Impl* impl = impl_.get();
  api.addRoute(HttpMethod::get, "/api/v1/notary/status", ApiRole::read_only,
               [impl](const ApiRequest&) { return ApiResponse::ok(impl->status()); });
  api.addAsyncRoute(HttpMethod::post, "/api/v1/notary/notarise", ApiRole::operator_,
                    [impl](ApiRequest request, ApiReply reply) { impl->notarise(request, std::move(reply)); });
  api.addAsyncRoute(HttpMethod::post, "/api/v1/notary/diagnostic/load", ApiRole::operator_,
                    [impl](ApiRequest request, ApiReply reply) { impl->load(request, std::move(reply)); });
}

}  // namespace ccal::node
