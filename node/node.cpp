#include "node/node.h"

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <map>
#include <sstream>
#include <utility>

#include <nlohmann/json.hpp>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include "contracts/contracts.h"
#include "flows/builtin_flows.h"
#include "flows/deal_flows.h"
#include "flows/delivery.h"
#include "flows/link_mux.h"
#include "ledger/assert.h"
#include "ledger/capnp_io.h"
#include "ledger/contract.h"
#include "ledger/pki.h"
#include "node/api_server.h"
#include "node/api_users.h"
#include "node/asio_executor.h"
#include "node/diagnostic_flows.h"
#include "node/file_io.h"
#include "node/flow_service.h"
#include "node/network_map.h"
#include "node/notary_gateway.h"
#include "node/notary_service.h"
#include "node/process_control.h"
#include "node/tls_link.h"
#include "node/vault_api.h"
#include "node/worker_pool.h"
#include "schemas/p2p.capnp.h"
#include "vault/message_store.h"
#include "vault/vault.h"

namespace ccal::node {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* ccal_version = "0.1.0";

// Every deal flow on a regulator's node: refused before it does anything.
flows::Flow<Bytes> refuseAsRegulator(flows::FlowContext&, Bytes) {
  flows::failFlow(Errc::forbidden,
                  "this node is a regulator: it observes the transactions the network's rules send it and "
                  "neither starts nor signs a deal");
  co_return Bytes{};
}

std::string readText(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

spdlog::level::level_enum spdlogLevel(LogLevel level) {
  switch (level) {
    case LogLevel::trace: return spdlog::level::trace;
    case LogLevel::debug: return spdlog::level::debug;
    case LogLevel::info: return spdlog::level::info;
    case LogLevel::warn: return spdlog::level::warn;
    case LogLevel::error: return spdlog::level::err;
    case LogLevel::off: return spdlog::level::off;
  }
  return spdlog::level::info;
}

Result<std::shared_ptr<spdlog::logger>> makeLogger(const NodeConfig& config) {
  try {
    std::shared_ptr<spdlog::logger> logger;
    if (config.log_file.empty()) {
      logger = std::make_shared<spdlog::logger>(
          config.name, std::make_shared<spdlog::sinks::stderr_sink_mt>());
    } else {
      logger = std::make_shared<spdlog::logger>(
          config.name,
          std::make_shared<spdlog::sinks::basic_file_sink_mt>(config.log_file.string()));
    }
    logger->set_level(spdlogLevel(config.log_level));
    logger->flush_on(spdlog::level::info);
    return logger;
  } catch (const spdlog::spdlog_ex& e) {
    return Error{Errc::io_error, "cannot open log file " + config.log_file.string() + ": " + e.what()};
  }
}

// The id of diagnostic message `sequence` of a stream from `from` to `to`:
// deterministic, so sending a stream again is idempotent.
flows::MessageId diagnosticId(std::string_view from, std::string_view to, std::string_view stream,
                              uint64_t sequence) {
  std::string text = "ccal.diagnostic\n";
  text.append(from).append("\n").append(to).append("\n").append(stream).append("\n");
  text += std::to_string(sequence);
  return SecureHash::of(asBytes(text));
}

// What the receiver saw of one diagnostic stream since it started.
struct StreamTally {
  bool started = false;      // a first message was seen (it may follow a restart)
  uint64_t first = 0;        // the sequence of the first message seen
  uint64_t delivered = 0;    // handed over in sequence
  uint64_t next = 0;         // the sequence expected next
  uint64_t repeated = 0;     // a sequence below `next` (a redelivery)
  uint64_t gaps = 0;         // a sequence above `next` (an earlier one missing)
};

// Parties by X.500 name and by key hash, from the network map (members and notaries).
VaultPartyDirectory vaultPartyDirectory(const NetworkMap& map) {
  VaultPartyDirectory parties;
  parties.byName = [&map](std::string_view name) -> std::optional<Party> {
    if (auto member = map.memberByName(name)) return Party{member->name, Key(member->legal_identity_key)};
    if (const NotaryInfo* notary = map.notary(name)) return Party{notary->name, notary->service_key};
    return std::nullopt;
  };
  parties.nameOfKeyHash = [&map](const SecureHash& hash) -> std::optional<std::string> {
    for (const auto& member : map.members()) {
      if (Key(member->legal_identity_key).hash() == hash) return member->name;
    }
    for (const auto& notary : map.parameters().notaries) {
      if (notary.service_key.hash() == hash) return notary.name;
    }
    return std::nullopt;
  };
  return parties;
}

}  // namespace

// How often a running node reads its crls file and its node-infos folder
// again. A changed crls file's lists replace the map's
// (NetworkMap::replaceCrls), and the link closes the connections of members
// they revoke (TlsLink::recheckPeers). A new or changed node-info file is
// taken into the map (NetworkMap::update): a member that joined the network
// (`ccal network add-member`) or one whose node info is newer.
constexpr int64_t files_reread_interval_micros = 5'000'000;

struct Node::Impl final : flows::MessageHandler {
  NodeConfig config;
  std::shared_ptr<spdlog::logger> log;
  std::unique_ptr<NetworkMap> map;
  // The crls file as last read (applied or refused), each node-info file's
  // size and modification time as last seen, and the re-read timer.
  std::string crls_text;
  std::map<fs::path, std::pair<uintmax_t, fs::file_time_type>> node_info_stamps;
  bool node_infos_scanned = false;  // the first scan (at start) only notes the stamps
  uint64_t reread_timer = 0;        // 0: none
  void rereadFiles();
  void rereadCrls();
  void rereadNodeInfos();
  ContractRegistry contracts;
  std::unique_ptr<vault::Vault> vault;
  std::unique_ptr<vault::MessageStore> messages;
  AsioExecutor executor;
  std::unique_ptr<TlsLink> link;
  std::unique_ptr<flows::LinkMux> mux;  // channels: messaging, notary
  std::unique_ptr<flows::Delivery> delivery;
  std::unique_ptr<NotaryService> notary;
  std::optional<KeyPair> identity;  // the legal identity key (signs for the member's flows)
  // Members only (not notary replicas): what the built-in flows use; both
  // outlive the flow runtime.
  std::unique_ptr<ClientNotaryGateway> notary_gateway;
  std::unique_ptr<WorkerPool> workers;  // backchain verification beside the executor
  flows::FlowServices flow_services;
  std::unique_ptr<FlowService> flows;
  std::unique_ptr<VaultApi> vault_api;  // its routes read the vault and the map
  std::unique_ptr<ApiServer> api;
  std::chrono::steady_clock::time_point started_at = std::chrono::steady_clock::now();
  fs::path ready_file;
  bool stopped = false;
  // Executor thread only.
  std::map<std::pair<std::string, std::string>, StreamTally> tallies;
  uint64_t messages_malformed = 0;
  // The node-info file of each member, by X.500 name (node_infos_dir).
  std::map<std::string, fs::path, std::less<>> node_info_files;
  Bytes own_node_info;  // signed, as announced to peers

  Status publishOwnNodeInfo();
  void announceNodeInfo();
  void announceNodeInfoTo(const std::string& member);
  void onNodeInfo(const std::string& from, ByteView signed_info);

  Status open();
  Status openFlows();
  void addRoutes();
  std::vector<ApiPeer> peers() const;
  void stop();

  // flows::MessageHandler, on the executor.
  void onMessage(std::string_view peer, const flows::MessageId& id, ByteView payload) override;
};

Status Node::Impl::open() {
  auto logger = makeLogger(config);
  if (!logger) return logger.error();
  log = *logger;

  auto loaded_map = NetworkMap::loadFiles(config);
  if (!loaded_map) return loaded_map.error();
  map = std::move(*loaded_map);
  auto self = map->memberByName(config.x500);
  if (!self) {
    return Error{Errc::not_found, config.source_file.string() + ": node.x500 '" + config.x500 +
                                      "' is not a member of the network map"};
  }

  auto identity_key = keyPairFromPem(readText(config.identity_key_file));
  if (!identity_key) {
    return Error{identity_key.error().code,
                 config.identity_key_file.string() + ": " + identity_key.error().message};
  }
  identity = std::move(*identity_key);
  if (identity->publicKey() != self->legal_identity_key) {
    return Error{Errc::bad_key, config.identity_key_file.string() +
                                    " does not hold the legal identity key of " + config.x500 +
                                    " in the network map"};
  }

  CCAL_TRY(publishOwnNodeInfo());

  // The contracts every member verifies and whose states' fields the vault indexes.
  ccal::contracts::registerDealContracts(contracts);

  vault::VaultConfig vault_config;
  vault_config.store.path = config.vault_dir.string();
  vault_config.store.map_size_bytes = config.vault_map_size_mb << 20;
  auto opened = vault::Vault::open(vault_config, contracts, {identity->publicKey()});
  if (!opened) {
    return Error{opened.error().code,
                 "vault " + config.vault_dir.string() + ": " + opened.error().message};
  }
  vault = std::move(*opened);
  messages = std::make_unique<vault::MessageStore>(vault->store());
  messages->setOutboxMessagesPerPeerMax(config.outbox_messages_per_peer_max);

  executor.start();

  TlsLinkOptions link_options;
  link_options.self = config.x500;
  link_options.listen_host = config.p2p_listen.host;
  link_options.listen_port = config.p2p_listen.port;
  CCAL_TRY(link_options.loadPemFiles(config.network_root_file.string(),
                                     config.tls_chain_file.string(),
                                     config.tls_key_file.string()));
  link_options.setFrameBytesMax(
      std::min<size_t>(config.frame_bytes_max, map->parameters().max_message_bytes));
  link_options.peer_frames_per_second_max = config.inbound_messages_per_second_max;
  link_options.peer_frames_burst_max = config.inbound_burst_messages_max;
  link_options.reconnect_delay_micros_min = static_cast<int64_t>(config.reconnect_delay_micros_min);
  link_options.reconnect_delay_micros_max = static_cast<int64_t>(config.reconnect_delay_micros_max);
  link_options.handshake_timeout_micros = static_cast<int64_t>(config.handshake_timeout_micros);
  link_options.logger = log;
  Status result = Status::success();
  executor.runSync([&] {
    auto made = TlsLink::create(executor, *map, link_options);
    if (!made) {
      result = Error{made.error().code, "p2p listener " + config.p2p_listen.toString() + ": " +
                                            made.error().message};
      return;
    }
    link = std::move(*made);
    mux = std::make_unique<flows::LinkMux>(
        *link, [this](std::string_view line) { log->warn("{}", line); });
    flows::DeliveryConfig delivery_config;
    delivery_config.knows_peer = [this](std::string_view peer) {
      return peer != config.x500 && map->memberByName(peer) != nullptr;
    };
    delivery_config.log = [this](std::string_view line) { log->warn("messaging: {}", line); };
    delivery = std::make_unique<flows::Delivery>(mux->channel(flows::link_channel_messaging),
                                                 *messages, executor, executor, delivery_config);
    delivery->setHandler(this);
    // The notary service first: flows resumed below may notarise at once.
    NotaryServiceOptions notary_options;
    notary_options.config = &config;
    notary_options.map = map.get();
    notary_options.contracts = &contracts;
    notary_options.identity = *identity;
    notary_options.link = &mux->channel(flows::link_channel_notary);
    notary_options.executor = &executor;
    notary_options.clock = &executor;
    notary_options.log = [this](std::string_view line) { log->info("notary: {}", line); };
    auto service = NotaryService::open(std::move(notary_options));
    if (!service) {
      result = service.error();
      return;
    }
    notary = std::move(*service);
    result = notary->start();
    if (!result.ok()) return;
    // The flow runtime replays unfinished flows before Delivery hands over
    // stored messages (some of them are for those flows).
    if (config.role != Role::notary_replica) {
      result = openFlows();
      if (!result.ok()) return;
    }
    result = delivery->start();
    if (!result.ok()) return;
    // Dial every member now, so that peers show as connected and messages
    // waiting in the outbox flow at once; tell each our node info.
    for (const auto& member : map->members()) {
      if (member->name != config.x500) (void)link->connect(member->name);
    }
    announceNodeInfo();
    if (!config.crls_file.empty()) {
      if (auto text = readFileBounded(config.crls_file, NetworkMap::crls_file_bytes_max))
        crls_text = *text;
    }
    rereadNodeInfos();  // the stamps of the files the map was loaded from
    reread_timer = executor.runAfter(files_reread_interval_micros, [this] { rereadFiles(); });
  });
  CCAL_TRY(result);

  auto users = ApiUsers::load(config.api_users_file);
  if (!users) return users.error();
  ApiServerOptions api_options;
  api_options.host = config.api_listen.host;
  api_options.port = config.api_listen.port;
  ApiProviders providers;
  providers.node_info = [this] {
    ApiNodeInfo info;
    info.name = config.name;
    info.legal_name = config.x500;
    info.role = roleName(config.role);
    info.version = ccal_version;
    info.uptime_micros = std::chrono::duration_cast<std::chrono::microseconds>(
                             std::chrono::steady_clock::now() - started_at)
                             .count();
    return info;
  };
  providers.peers = [this] { return peers(); };
  providers.health = [] { return Status::success(); };
  providers.access_log = [this](const ApiAccessRecord& r) {
    log->debug("api {} {} {} {} -> {} in {} us", r.remote, r.user, r.method, r.target, r.status,
               r.duration_micros);
  };
  executor.runSync([&] {
    api = std::make_unique<ApiServer>(executor.context(), api_options, std::move(*users),
                                      std::move(providers));
    addRoutes();
    notary->addRoutes(*api);
    if (flows) flows->addRoutes(*api);
    vault_api = std::make_unique<VaultApi>(*vault, contracts, vaultPartyDirectory(*map));
    vault_api->addRoutes(*api);
    result = api->start();
  });
  if (!result.ok()) {
    return Error{result.error().code,
                 "control API " + config.api_listen.toString() + ": " + result.error().message};
  }

  ready_file = config.source_file.parent_path() / "run" / "ready";
  json ready_fields = {{"api", api->address()},
                       {"p2p", config.p2p_listen.host + ":" + std::to_string(link->listenPort())}};
  std::string fields = ready_fields.dump();
  CCAL_TRY(writeReadyFile(ready_file, fields.substr(1, fields.size() - 2)));
  log->info("{} ({}) ready: p2p {}, api {}", config.name, config.x500, config.p2p_listen.toString(),
            api->address());
  return Status::success();
}

// The flow runtime over this member's messaging and vault, with every flow
// it runs registered. Executor thread, before Delivery::start().
Status Node::Impl::openFlows() {
  FlowService::Options options;
  options.delivery = delivery.get();
  options.executor = &executor;
  options.clock = &executor;
  options.store = &vault->store();
  options.runtime.self = config.x500;
  options.runtime.flows_running_max = config.flows_running_max;
  options.runtime.sessions_per_flow_max = config.flows_sessions_per_flow_max;
  options.runtime.messages_waiting_per_flow_max = config.flows_messages_waiting_per_flow_max;
  options.runtime.subflow_depth_max = config.flows_subflow_depth_max;
  options.runtime.flow_timeout_micros = static_cast<int64_t>(config.flows_timeout_micros);
  options.runtime.finished_flows_listed_max = config.flows_finished_listed_max;
  options.runtime.log = [this](std::string_view line) { log->warn("flows: {}", line); };
  options.runtime.ended =
      flows::lockReleaser(*vault, [this](std::string_view line) { log->warn("flows: {}", line); });
  flows = std::make_unique<FlowService>(std::move(options));
  // Every flow this member runs, responders before the flows that initiate them.
  CCAL_TRY(registerDiagnosticFlows(*flows));
  notary_gateway = std::make_unique<ClientNotaryGateway>(
      executor, [this](std::string_view name) -> std::optional<ClientNotaryGateway::Cluster> {
        const NotaryInfo* info = map->notary(name);
        notary::NotaryClient* client = notary ? notary->clientOf(name) : nullptr;
        if (info == nullptr || client == nullptr) return std::nullopt;
        return ClientNotaryGateway::Cluster{client, info->validating};
      });
  flow_services = flowServicesOf(*map, config.x500, *identity, *vault, contracts, *notary_gateway);
  workers = std::make_unique<WorkerPool>(WorkerPool::defaultThreads());
  flow_services.parallel = workers.get();
  if (config.role == Role::regulator) {
    // A regulator observes: it records what finality sends it (all visible), never
    // signs (no signing key in its flow services: a sign request is refused) and
    // starts no deal (each deal flow answers forbidden).
    flow_services.keys.clear();
    CCAL_TRY(flows::registerBuiltinFlows(flows->runtime(), flow_services));
    for (const flows::DealFlowSpec& spec : flows::dealFlowSpecs()) {
      CCAL_TRY(flows->runtime().registerFlow(std::string(spec.flow), refuseAsRegulator));
    }
  } else {
    flows::addDealChecks(flow_services);
    CCAL_TRY(flows::registerBuiltinFlows(flows->runtime(), flow_services));
    flows::DealConfig deals;
    // With one notary cluster in the network, new states go to it unless a flow names another.
    if (map->parameters().notaries.size() == 1) deals.notary = map->parameters().notaries.front().name;
    CCAL_TRY(flows::registerDealFlows(flows->runtime(), flow_services, deals));
  }
  Status started = flows->start();
  if (!started.ok()) {
    return Error{started.error().code, "flow runtime: resuming the flows stored in " +
                                           config.vault_dir.string() + ": " +
                                           started.error().message};
  }
  auto released = flows::releaseLocksOfEndedFlows(flows->runtime(), *vault);
  if (!released) {
    return Error{released.error().code, "releasing the soft locks of ended flows in " +
                                            config.vault_dir.string() + ": " +
                                            released.error().message};
  }
  if (*released > 0)
    log->info("flows: released {} soft locks held by flows no longer running", *released);
  const auto& stats = flows->runtime().stats();
  if (stats.flows_resumed > 0) {
    log->info("flows: resumed {} unfinished flows ({} journaled events replayed)",
              stats.flows_resumed, stats.events_replayed);
  }
  return Status::success();
}

std::vector<ApiPeer> Node::Impl::peers() const {
  std::map<std::string, TlsPeerStatus, std::less<>> link_peers;
  for (auto& p : link->peers()) link_peers.emplace(p.peer, p);
  std::vector<ApiPeer> out;
  for (const auto& member : map->members()) {
    if (member->name == config.x500) continue;
    ApiPeer peer;
    peer.legal_name = member->name;
    if (!member->addresses.empty()) peer.address = member->addresses.front().toString();
    auto it = link_peers.find(member->name);
    if (it != link_peers.end()) {
      switch (it->second.outbound) {
        case TlsPeerStatus::Outbound::up: peer.state = PeerLinkState::connected; break;
        case TlsPeerStatus::Outbound::connecting:
        case TlsPeerStatus::Outbound::backoff: peer.state = PeerLinkState::connecting; break;
        case TlsPeerStatus::Outbound::idle: peer.state = PeerLinkState::disconnected; break;
      }
    }
    auto pending = messages->pending(member->name, vault::message_listing_max);
    if (pending) peer.outbox_messages = pending->size();
    out.push_back(std::move(peer));
  }
  return out;
}

void Node::Impl::onMessage(std::string_view peer, const flows::MessageId& id, ByteView payload) {
  std::string from(peer);
  bool for_flows = false;
  auto decoded = decodeMessage<schema::p2p::P2pMessage>(
      payload, "p2p message", Canonical::not_required,
      [&](schema::p2p::P2pMessage::Reader message) -> Status {
        switch (message.which()) {
          case schema::p2p::P2pMessage::DIAGNOSTIC: {
            auto d = message.getDiagnostic();
            if (tallies.size() >= diagnostic_streams_max) tallies.erase(tallies.begin());
            auto stream =
                ccal::readText(d.getStream(), "diagnostic stream", diagnostic_stream_bytes_max);
            if (!stream) return stream.error();
            auto& tally = tallies[{from, std::move(stream).value()}];
            uint64_t sequence = d.getSequence();
            if (!tally.started) {
              tally.started = true;
              tally.first = tally.next = sequence;
            }
            if (sequence == tally.next) {
              ++tally.delivered;
              ++tally.next;
            } else if (sequence < tally.next) {
              ++tally.repeated;
            } else {
              ++tally.gaps;
              tally.next = sequence + 1;
            }
            return Status::success();
          }
          case schema::p2p::P2pMessage::NODE_INFO:
            onNodeInfo(from, asByteView(message.getNodeInfo()));
            return Status::success();
          case schema::p2p::P2pMessage::FLOW_SESSION:
            if (!flows) {
              return Error{Errc::not_found, "a flow session message, and a notary replica runs no flows"};
            }
            // The runtime consumes it once journaled.
            flows->onSessionMessage(from, id, asByteView(message.getFlowSession()));
            for_flows = true;
            return Status::success();
        }
        return Error{Errc::malformed, "unknown message kind"};
      });
  if (!decoded.ok()) {
    ++messages_malformed;
    log->warn("dropped a message from {}: {}", from, decoded.error().message);
  }
  if (for_flows) return;
  delivery->consume(peer, id, [this, from](const Status& status) {
    if (!status.ok()) log->error("cannot consume a message from {}: {}", from, status.error().message);
  });
}



// Finds each member's node-info file and, when this member's advertised
// address differs from its node info in the map, signs a newer one (serial
// + 1), takes it into the map and writes it over its file.
Status Node::Impl::publishOwnNodeInfo() {
  std::error_code ec;
  for (fs::directory_iterator it(config.node_infos_dir, ec), end; !ec && it != end;
       it.increment(ec)) {
    if (!it->is_regular_file()) continue;
    std::ifstream in(it->path(), std::ios::binary);
    Bytes bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto signed_info = SignedNodeInfo::decode(bytes);
    if (!signed_info) continue;  // the map refused such files at load already
    auto info = NodeInfo::decode(signed_info->raw);
    if (info) node_info_files[info->name] = it->path();
  }
  auto self = map->memberByName(config.x500);
  CCAL_ASSERT(self != nullptr);
  auto own_file = node_info_files.find(config.x500);
  fs::path path = own_file != node_info_files.end() ? own_file->second
                                                    : config.node_infos_dir / config.name;
  bool moved = self->addresses.size() != 1 || !(self->addresses.front() == config.p2p_advertised);
  if (moved) {
    auto signed_info = signOwnNodeInfo(config, self->serial + 1);
    if (!signed_info) return signed_info.error();
    own_node_info = signed_info->encode();
    auto accepted = map->update(own_node_info);
    if (!accepted) return accepted.error();
    CCAL_TRY(writeFileAtomically(path, own_node_info));
    node_info_files[config.x500] = path;
    log->info("advertised address is now {} (node info serial {})",
              config.p2p_advertised.toString(), self->serial + 1);
  } else {
    std::ifstream in(path, std::ios::binary);
    own_node_info.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  return Status::success();
}

// Sends our node info to every member through exactly-once messaging. The
// id names the serial, so announcing again after a restart is a duplicate
// the peer drops, and a newer serial is a new message.
void Node::Impl::announceNodeInfo() {
  for (const auto& member : map->members()) {
    if (member->name != config.x500) announceNodeInfoTo(member->name);
  }
}

void Node::Impl::announceNodeInfoTo(const std::string& member) {
  auto self = map->memberByName(config.x500);
  Bytes payload = buildCanonical<schema::p2p::P2pMessage>(
      [&](auto root) { root.setNodeInfo(asData(own_node_info)); });
  std::string text =
      "ccal.node-info\n" + config.x500 + "\n" + member + "\n" + std::to_string(self->serial);
  delivery->send(
      member, SecureHash::of(asBytes(text)), payload, [this, member](const Status& status) {
        if (!status.ok())
          log->warn("cannot queue our node info for {}: {}", member, status.error().message);
      });
}

// A peer's node info: taken into the map when it verifies and is newer,
// and written over the member's file so that a restart keeps it.
void Node::Impl::onNodeInfo(const std::string& from, ByteView signed_info) {
  auto accepted = map->update(signed_info);
  if (!accepted) {
    if (accepted.error().code != Errc::conflict) {
      log->warn("refused a node info from {}: {}", from, accepted.error().message);
    }
    return;  // an older or equal serial: nothing new
  }
  const auto& info = **accepted;
  if (info.name != from) {
    log->info("{} forwarded the node info of {}", from, info.name);
  }
  auto file = node_info_files.find(info.name);
  fs::path path = file != node_info_files.end()
                      ? file->second
                      : config.node_infos_dir / ("member-" + SecureHash::of(asBytes(info.name)).hex().substr(0, 16));
  auto written = writeFileAtomically(path, signed_info);
  if (!written.ok()) {
    log->error("{}", written.error().message);
    return;
  }
  node_info_files[info.name] = path;
  log->info("{} is now at {} (node info serial {})", info.name,
            info.addresses.empty() ? std::string("-") : info.addresses.front().toString(),
            info.serial);
}

void Node::Impl::addRoutes() {
  // Diagnostics of exactly-once messaging: send a numbered stream to a peer,
  // and see what arrived. `ccal peer send` and the multi-process tests use it.
  api->addAsyncRoute(
      HttpMethod::post, "/api/v1/messages/diagnostic", ApiRole::operator_,
      [this](ApiRequest request, ApiReply reply) {
        const json& body = request.body;
        if (!body.is_object() || !body.contains("to") || !body["to"].is_string()) {
          return reply(ApiResponse::error(400, "bad_request", "'to' (a member's X.500 name) is required"));
        }
        std::string to = body["to"];
        std::string stream = body.value("stream", std::string("default"));
        std::string text = body.value("text", std::string());
        uint64_t start = 0, count = 1;
        try {
          start = body.value("start", uint64_t{0});
          count = body.value("count", uint64_t{1});
        } catch (const json::exception&) {
          return reply(ApiResponse::error(400, "bad_request", "'start' and 'count' are numbers"));
        }
        auto peer = map->memberByName(to);
        if (!peer || peer->name == config.x500) {
          return reply(ApiResponse::error(404, "not_found", "'" + to + "' is not a peer in the network map"));
        }
        to = peer->name;  // the canonical spelling, which the link, the outbox and the ids use
        if (count == 0 || count > diagnostic_messages_per_request_max) {
          return reply(ApiResponse::error(
              400, "bad_request",
              "'count' must be 1.." + std::to_string(diagnostic_messages_per_request_max)));
        }
        if (stream.size() > diagnostic_stream_bytes_max || stream.find('\0') != std::string::npos) {
          return reply(ApiResponse::error(400, "bad_request",
                                          "'stream' must be at most " +
                                              std::to_string(diagnostic_stream_bytes_max) +
                                              " bytes, without a NUL"));
        }
        if (text.size() > diagnostic_text_bytes_max) {
          return reply(ApiResponse::error(413, "too_large", "'text' is over " +
                                                                std::to_string(diagnostic_text_bytes_max) +
                                                                " bytes"));
        }
        struct Pending {
          uint64_t left;
          std::optional<Error> error;
          ApiReply reply;
          json ids = json::array();
        };
        auto pending = std::make_shared<Pending>(Pending{count, std::nullopt, std::move(reply)});
        for (uint64_t i = 0; i < count; ++i) {
          uint64_t sequence = start + i;
          Bytes payload = buildCanonical<schema::p2p::P2pMessage>([&](auto root) {
            auto d = root.initDiagnostic();
            d.setStream(stream);
            d.setSequence(sequence);
            d.setText(text);
          });
          auto id = diagnosticId(config.x500, to, stream, sequence);
          delivery->send(to, id, std::move(payload), [pending](const Status& status) {
            if (!status.ok() && !pending->error) pending->error = status.error();
            if (--pending->left > 0) return;
            if (pending->error) return pending->reply(ApiResponse::fromError(*pending->error));
            pending->reply(ApiResponse::ok({{"queued", true}}));
          });
        }
      });

  api->addRoute(HttpMethod::get, "/api/v1/messages/diagnostic", ApiRole::read_only,
                [this](const ApiRequest&) {
                  json streams = json::array();
                  for (const auto& [key, tally] : tallies) {
                    streams.push_back({{"from", key.first},
                                       {"stream", key.second},
                                       {"first", tally.first},
                                       {"delivered", tally.delivered},
                                       {"next", tally.next},
                                       {"repeated", tally.repeated},
                                       {"gaps", tally.gaps}});
                  }
                  const auto& s = delivery->stats();
                  json stats = {{"messages_sent", s.messages_sent},
                                {"messages_retransmitted", s.messages_retransmitted},
                                {"messages_acknowledged", s.messages_acknowledged},
                                {"messages_stored", s.messages_stored},
                                {"messages_duplicate", s.messages_duplicate},
                                {"messages_delivered", s.messages_delivered},
                                {"messages_over_waiting_max", s.messages_over_waiting_max},
                                {"ack_frames_sent", s.ack_frames_sent},
                                {"store_failures", s.store_failures},
                                {"frames_malformed", s.frames_malformed},
                                {"payloads_malformed", messages_malformed}};
                  return ApiResponse::ok({{"streams", streams}, {"delivery", stats}});
                });

  // Whether the messages 0..count-1 of a stream from a peer are stored here
  // (durably: the message store's id log of the peer's recent seqs, which
  // survives restarts, keeps the last vault::received_ids_kept_max) and
  // consumed (no longer in the inbox). `arrived_out_of_order` counts messages
  // whose wire seqs are not in the stream's order.
  api->addRoute(
      HttpMethod::post, "/api/v1/messages/diagnostic/check", ApiRole::read_only,
      [this](const ApiRequest& request) {
        const json& body = request.body;
        if (!body.is_object() || !body.contains("from") || !body["from"].is_string() ||
            !body.contains("count") || !body["count"].is_number_unsigned()) {
          return ApiResponse::error(400, "bad_request",
                                    "'from' (a member's X.500 name) and 'count' are required");
        }
        std::string from = body["from"];
        // The canonical spelling, which the store and the ids use (any spelling is accepted).
        if (auto member = map->memberByName(from)) {
          from = member->name;
        } else if (auto parsed = X500Name::parse(from)) {
          from = parsed->toString();
        }
        std::string stream = body.value("stream", std::string("default"));
        uint64_t count = body["count"];
        if (count > 10 * diagnostic_messages_per_request_max) {
          return ApiResponse::error(400, "bad_request", "'count' is too large");
        }
        // id -> (incarnation, seq) of what the id log holds, and the ids still in the inbox.
        std::unordered_map<flows::MessageId, std::pair<uint64_t, uint64_t>, SecureHashHasher> seen;
        std::unordered_map<flows::MessageId, bool, SecureHashHasher> waiting;
        for (uint64_t inc = 0, seq = 0;;) {
          auto page = messages->receivedIds(from, vault::message_listing_max, inc, seq);
          if (!page) return ApiResponse::fromError(page.error());
          for (const auto& r : *page) {
            seen[r.id] = {r.incarnation, r.seq};
            inc = r.incarnation;
            seq = r.seq + 1;
          }
          if (page->size() < vault::message_listing_max) break;
        }
        for (uint64_t inc = 0, seq = 0;;) {
          auto page = messages->unconsumed(from, vault::message_listing_max, inc, seq);
          if (!page) return ApiResponse::fromError(page.error());
          for (const auto& m : *page) {
            waiting[m.id] = true;
            inc = m.incarnation;
            seq = m.seq + 1;
          }
          if (page->size() < vault::message_listing_max) break;
        }
        json missing = json::array();
        uint64_t stored = 0, consumed = 0, arrived_out_of_order = 0;
        std::pair<uint64_t, uint64_t> last_place{0, 0};
        for (uint64_t sequence = 0; sequence < count; ++sequence) {
          const auto id = diagnosticId(from, config.x500, stream, sequence);
          auto it = seen.find(id);
          if (it == seen.end()) {
            if (missing.size() < 20) missing.push_back(sequence);
            continue;
          }
          ++stored;
          if (waiting.count(id) == 0) ++consumed;
          if (stored > 1 && it->second <= last_place) ++arrived_out_of_order;
          last_place = it->second;
        }
        return ApiResponse::ok({{"stored", stored},
                                {"consumed", consumed},
                                {"arrived_out_of_order", arrived_out_of_order},
                                {"missing_first", missing}});
      });
}

// On the executor, every files_reread_interval_micros while the node runs.
void Node::Impl::rereadFiles() {
  reread_timer = executor.runAfter(files_reread_interval_micros, [this] { rereadFiles(); });
  // Node infos first: a member whose TLS certificate was replaced (`ccal network rotate-tls`)
  // is known by its new one before the lists revoking the old one apply.
  rereadNodeInfos();
  if (!config.crls_file.empty()) rereadCrls();
}

// Node-info files that are new or changed since the last look (size or
// modification time) are taken into the map when they verify and are newer
// than what it holds; a refused file is logged once (until it changes).
void Node::Impl::rereadNodeInfos() {
  std::error_code ec;
  size_t files = 0;
  for (fs::directory_iterator it(config.node_infos_dir, ec), end; !ec && it != end;
       it.increment(ec)) {
    std::error_code stat_ec;
    if (!it->is_regular_file(stat_ec) || stat_ec) continue;
    if (++files > NetworkMapLimits::members_max) {
      log->error("{} holds more than {} files: the rest are not read",
                 config.node_infos_dir.string(), NetworkMapLimits::members_max);
      break;
    }
    const fs::path path = it->path();
    const uintmax_t size = it->file_size(stat_ec);
    if (stat_ec) continue;
    const fs::file_time_type modified = it->last_write_time(stat_ec);
    if (stat_ec) continue;
    const auto stamp = std::make_pair(size, modified);
    auto seen = node_info_stamps.find(path);
    if (seen != node_info_stamps.end() && seen->second == stamp) continue;
    node_info_stamps[path] = stamp;
    if (!node_infos_scanned) continue;  // at start: what the map was loaded from
    auto bytes = readFileBounded(path, NetworkMapLimits::node_info_bytes_max + 1024);
    if (!bytes) {
      log->warn("node info not read: {}", bytes.error().toString());
      continue;
    }
    const bool known_before = [&] {
      auto sni = SignedNodeInfo::decode(asBytes(*bytes));
      if (!sni) return false;
      auto info = NodeInfo::decode(sni->raw);
      return info && map->memberByName(info->name) != nullptr;
    }();
    auto accepted = map->update(asBytes(*bytes));
    if (!accepted) {
      // An equal or older serial (our own file, rewritten; a copy of a node
      // info a peer sent us) is not news.
      if (accepted.error().code != Errc::conflict || !known_before) {
        log->warn("node info {} refused: {}", path.string(), accepted.error().toString());
      }
      continue;
    }
    const auto& info = **accepted;
    node_info_files[info.name] = path;
    const std::string at =
        info.addresses.empty() ? std::string("-") : info.addresses.front().toString();
    if (known_before) {
      log->info("node info of {} updated: serial {}, at {} (from {})", info.name, info.serial, at,
                path.string());
      continue;
    }
    log->info("{} joined the network at {} (node info from {})", info.name, at, path.string());
    if (info.name != config.x500) {
      (void)link->connect(info.name);
      announceNodeInfoTo(info.name);
    }
  }
  if (ec) log->warn("{}: {}", config.node_infos_dir.string(), ec.message());
  node_infos_scanned = true;
}

void Node::Impl::rereadCrls() {
  // One bounded read; a file that stays the same (or stays unreadable) is not applied or logged
  // again.
  const std::string file = config.crls_file.string();
  auto text = readFileBounded(config.crls_file, NetworkMap::crls_file_bytes_max);
  std::string seen = text ? *text : "(not read) " + text.error().toString();
  if (seen == crls_text) return;
  crls_text = std::move(seen);
  auto lists = text ? NetworkMap::parseCrls(*text, file) : Result<std::vector<Crl>>(text.error());
  if (!lists) {
    log->error("revocation lists not reloaded, the ones in use stay: {}", lists.error().toString());
    return;
  }
  const size_t count = lists->size();
  auto revoked = map->replaceCrls(std::move(lists).value());
  if (!revoked) {
    log->error("revocation lists of {} not applied, the ones in use stay: {}", file,
               revoked.error().toString());
    return;
  }
  std::string names;
  for (const auto& n : *revoked) {
    names += (names.empty() ? "" : "; ") + n;
    if (n == config.x500) {
      log->error(
          "the revocation lists of {} revoke this member's own certificates: every peer refuses it",
          file);
    }
  }
  const size_t closed = link->recheckPeers();
  // A warning when it cut someone off; a new member's empty list (add-member) is news only.
  log->log(names.empty() && closed == 0 ? spdlog::level::info : spdlog::level::warn,
           "revocation lists reloaded from {}: {} lists; members revoked and removed from the map: "
           "{}; connections closed: {}",
           file, count, names.empty() ? "none" : names, closed);
}

void Node::Impl::stop() {
  if (stopped) return;
  stopped = true;
  if (!ready_file.empty()) {
    std::error_code ec;
    fs::remove(ready_file, ec);
  }
  if (executor.running()) {
    executor.runSync([&] {
      if (api) api->stop();
      if (reread_timer != 0) executor.cancel(reread_timer);
      reread_timer = 0;
    });
  }
  if (link) link->stop();
  if (vault) vault->waitForWrites();  // flows' vault writes post their completions back
  if (flows) flows->waitForStore();
  if (delivery) delivery->waitForStore();
  if (notary) notary->quiesce();
  executor.stop();
  if (notary) notary->recordCleanStop();
  // The notary's Store drains its queued writes while the replica and state
  // machine they use are alive; then everything over the link goes, then the link.
  if (notary) notary->stopStore();
  flows.reset();  // its runtime sends through delivery
  notary_gateway.reset();
  delivery.reset();
  notary.reset();
  mux.reset();
  link.reset();
  api.reset();
  vault_api.reset();
  vault.reset();  // waits for queued writes, closes LMDB
  messages.reset();
  if (log) {
    log->info("{} stopped", config.name);
    log->flush();
  }
}

Node::Node(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Node::~Node() { stop(); }
void Node::stop() { impl_->stop(); }
uint16_t Node::p2pPort() const { return impl_->link ? impl_->link->listenPort() : 0; }
std::string Node::apiAddress() const { return impl_->api ? impl_->api->address() : std::string(); }

Result<std::unique_ptr<Node>> Node::start(const NodeConfig& config) {
  auto impl = std::make_unique<Impl>();
  impl->config = config;
  Status opened = impl->open();
  if (!opened.ok()) {
    impl->stop();
    return opened.error();
  }
  return std::unique_ptr<Node>(new Node(std::move(impl)));
}

int runNode(const fs::path& config_file) {
  // SIGTERM and SIGINT are taken by sigwait below: block them before any
  // thread starts, so every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  auto config = loadNodeConfig(config_file);
  if (!config) {
    std::fprintf(stderr, "ccal node run: %s\n", config.error().message.c_str());
    return 2;
  }
  auto node = Node::start(*config);
  if (!node) {
    std::fprintf(stderr, "ccal node run: %s: %s\n", config->name.c_str(),
                 node.error().message.c_str());
    return 1;
  }
  int received = 0;
  sigwait(&signals, &received);
  spdlog::default_logger()->flush();
  (*node)->stop();
  return 0;
}

}  // namespace ccal::node
