// The `ccal` command: the composition root of a CCAL node.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <functional>
#include <thread>
#include <iostream>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "node/api_client.h"
#include "node/api_users.h"
#include "node/bootstrap.h"
#include "node/config.h"
#include "node/flow_service.h"
#include "node/node.h"
#include "node/notary_service.h"
#include "node/process_control.h"
#include "node/deal_demo.h"
#include "node/ledger_demo.h"
#include "flows/deal_flows.h"
#include "node/vault_api.h"

namespace {

// `ccal network bootstrap`: prints a summary (or, with --json, network.json's content);
// on failure the error on stderr (and as {"error": {...}} on stdout with --json), exit 1.
int runBootstrap(const std::string& spec_file, const std::string& out_dir, bool force, bool json) {
  auto fail = [&](const ccal::Error& e) {
    std::cerr << "ccal network bootstrap: " << e.message << "\n";
    if (json) {
      std::cout << nlohmann::json{{"error", {{"code", ccal::errcName(e.code)}, {"message", e.message}}}}
                       .dump()
                << "\n";
    }
    return 1;
  };
  auto spec = ccal::node::loadNetworkSpec(spec_file);
  if (!spec) return fail(spec.error());
  auto result =
      ccal::node::bootstrapNetwork(*spec, out_dir, force, std::chrono::system_clock::now());
  if (!result) return fail(result.error());
  if (json) {
    std::cout << result->summary.dump(2) << "\n";
    return 0;
  }
  std::cout << "Bootstrapped " << result->spec.nodes.size() << " members into "
            << result->out_dir.string() << "\n";
  for (const auto& m : result->summary["members"]) {
    std::cout << "  " << m["name"].get<std::string>() << "  " << m["role"].get<std::string>()
              << "  p2p " << m["p2p"].get<std::string>() << "  api " << m["api"].get<std::string>()
              << "  " << m["x500"].get<std::string>() << "\n";
  }
  for (const auto& n : result->summary["notaries"]) {
    std::cout << "  notary " << n["name"].get<std::string>() << " ("
              << n["x500"].get<std::string>() << "): " << n["threshold"].get<int>()
              << " of " << n["replicas"].size() << " replicas, f = " << n["f"].get<int>()
              << (n["validating"].get<bool>() ? ", validating" : ", non-validating") << "\n";
  }
  std::cout << "Operator keys (keep them offline): "
            << result->summary["operator"].get<std::string>() << "\n";
  return 0;
}


// Prints an error (and, with --json, {"error": ...} on stdout); exit code 1.
int failWith(std::string_view command, const ccal::Error& e, bool json) {
  std::cerr << "ccal " << command << ": " << e.message << "\n";
  if (json) {
    std::cout << nlohmann::json{{"error", {{"code", ccal::errcName(e.code)}, {"message", e.message}}}}
                     .dump()
              << "\n";
  }
  return 1;
}

nlohmann::json statusesJson(const std::vector<ccal::node::MemberStatus>& statuses) {
  auto out = nlohmann::json::array();
  for (const auto& s : statuses) {
    out.push_back({{"name", s.name}, {"pid", s.pid}, {"running", s.running}, {"ready", s.ready},
                   {"detail", s.detail}});
  }
  return out;
}

int printStatuses(std::string_view command,
                  const ccal::Result<std::vector<ccal::node::MemberStatus>>& statuses, bool json) {
  if (!statuses) return failWith(command, statuses.error(), json);
  if (json) {
    std::cout << nlohmann::json{{"members", statusesJson(*statuses)}}.dump(2) << "\n";
  } else {
    for (const auto& s : *statuses) {
      std::cout << "  " << s.name << "  " << (s.pid ? "pid " + std::to_string(s.pid) : "-") << "  "
                << s.detail << "\n";
    }
  }
  return 0;
}

// How the CLI addresses a node: --dir DIR --node NAME (its config gives the
// API address and the users file an admin token), or --api URL --token T.
struct NodeAddress {
  std::string dir, node, api, token;

  void addOptions(CLI::App* command) {
    command->add_option("--dir", dir, "A bootstrapped network's folder");
    command->add_option("--node", node, "The member's name (its folder under --dir)");
    command->add_option("--api", api, "The node's control API URL, e.g. http://127.0.0.1:10001");
    command->add_option("--token", token, "A bearer token of the node's API (with --api)");
  }

  // Waits up to the server's handler timeout: a notarisation or a load may take long.
  int64_t timeout_micros = ccal::node::ApiClientOptions{}.timeout_micros;

  ccal::Result<ccal::node::ApiClient> client() const {
    ccal::node::ApiClientOptions options;
    options.timeout_micros = timeout_micros;
    if (!api.empty()) {
      if (token.empty()) return ccal::Error{ccal::Errc::malformed, "--api needs --token"};
      return ccal::node::ApiClient::create(api, token, options);
    }
    if (dir.empty() || node.empty()) {
      return ccal::Error{ccal::Errc::malformed, "name the node with --dir DIR --node NAME, or --api URL --token T"};
    }
    auto config = ccal::node::loadNodeConfig(std::filesystem::path(dir) / node / "node.toml");
    if (!config) return config.error();
    auto users = ccal::node::ApiUsers::load(config->api_users_file);
    if (!users) return users.error();
    for (const auto& user : users->users()) {
      if (user.role == ccal::node::ApiRole::admin) {
        return ccal::node::ApiClient::create("http://" + config->api_listen.toString(), user.token,
                                             options);
      }
    }
    return ccal::Error{ccal::Errc::not_found,
                       config->api_users_file.string() + " holds no admin user"};
  }

  // A member named by its folder under --dir, or an X.500 name as it is.
  std::string memberName(const std::string& name) const {
    if (!dir.empty() && name.find('=') == std::string::npos) {
      auto config = ccal::node::loadNodeConfig(std::filesystem::path(dir) / name / "node.toml");
      if (config) return config->x500;
    }
    return name;
  }
};

int printJson(std::string_view command, const ccal::Result<nlohmann::json>& result, bool json) {
  if (!result) return failWith(command, result.error(), json);
  std::cout << result->dump(2) << "\n";
  return 0;
}

// `ccal flow ...` output without --json: a flow's fields, one per line.
void printFlow(const nlohmann::json& f) {
  auto text = [&](const char* key) {
    return f.contains(key) && f[key].is_string() ? f[key].get<std::string>() : std::string();
  };
  std::string phase = text("phase");
  if (f.contains("outcome")) phase += " (" + text("outcome") + ")";
  std::cout << "id                " << text("id") << "\n"
            << "name              " << text("name") << (f.value("responder", false) ? " (responder)" : "")
            << "\n"
            << "phase             " << phase << "\n";
  if (!text("counterparty").empty()) std::cout << "counterparty      " << text("counterparty") << "\n";
  if (!text("step").empty()) std::cout << "step              " << text("step") << "\n";
  if (!text("waiting").empty() && text("phase") != "finished") std::cout << "waiting           " << text("waiting") << "\n";
  std::cout << "events journaled  " << f.value("events_journaled", uint64_t{0}) << "\n"
            << "sessions          " << f.value("sessions", uint64_t{0}) << "\n";
  if (f.contains("result")) std::cout << "result            " << f["result"].dump() << "\n";
  if (f.contains("result_text")) std::cout << "result            " << text("result_text") << "\n";
  if (f.contains("result_base64") && !f.contains("result") && !f.contains("result_text")) {
    std::cout << "result (base64)   " << text("result_base64") << "\n";
  }
  if (f.contains("transaction_id")) std::cout << "transaction       " << text("transaction_id") << "\n";
  if (f.contains("error")) {
    std::cout << "error             " << f["error"].value("code", std::string()) << ": "
              << f["error"].value("message", std::string()) << "\n";
  }
}

void printFlowList(const nlohmann::json& list) {
  const auto& flows = list["flows"];
  if (flows.empty()) std::cout << "no flows\n";
  for (const auto& f : flows) {
    std::string state = f.value("phase", std::string());
    if (f.contains("outcome")) state = f.value("outcome", std::string());
    std::cout << f.value("id", std::string()) << "  " << f.value("name", std::string()) << "  "
              << state << "  " << f.value("step", std::string()) << "\n";
  }
  if (list.value("matched", size_t{0}) > flows.size()) {
    std::cout << "(" << flows.size() << " of " << list.value("matched", size_t{0})
              << " shown; see --limit)\n";
  }
}

// Prints a flow-command result as JSON (--json) or text; an error as failWith does.
int printFlowResult(std::string_view command, const ccal::Result<nlohmann::json>& result, bool json,
                    const std::function<void(const nlohmann::json&)>& as_text) {
  if (!result) return failWith(command, result.error(), json);
  if (json) {
    std::cout << result->dump(2) << "\n";
  } else {
    as_text(*result);
  }
  return 0;
}

// A flow's key=value arguments as the body fields of POST /api/v1/flows: a
// deal flow's are validated against its spec (flows/deal_flows.h) and sent
// as its key=value lines; a party (or each of a list of parties) given by a
// member's folder name becomes its X.500 name. Another flow's become a JSON
// object (integers as numbers), its "peer" resolved the same way.
ccal::Result<nlohmann::json> flowArgsOf(const std::string& flow, const std::vector<std::string>& key_values,
                                        const std::function<std::string(const std::string&)>& x500_of) {
  const auto* spec = ccal::flows::findDealFlow(flow);
  std::vector<std::string> resolved;
  nlohmann::json object = nlohmann::json::object();
  for (const auto& kv : key_values) {
    const auto eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) {
      return ccal::Error{ccal::Errc::malformed, "argument '" + kv + "' is not key=value"};
    }
    const std::string key = kv.substr(0, eq);
    std::string value = kv.substr(eq + 1);
    if (spec != nullptr) {
      for (const auto& arg : spec->args) {
        if (arg.name != key) continue;
        if (arg.type == ccal::flows::ArgType::party) value = x500_of(value);
        if (arg.type == ccal::flows::ArgType::parties) {
          std::string joined;
          size_t start = 0;
          while (start <= value.size()) {
            size_t end = value.find(';', start);
            if (end == std::string::npos) end = value.size();
            if (!joined.empty()) joined += ';';
            joined += x500_of(value.substr(start, end - start));
            start = end + 1;
          }
          value = joined;
        }
      }
      resolved.push_back(key + "=" + value);
      continue;
    }
    if (object.contains(key)) return ccal::Error{ccal::Errc::malformed, "argument '" + key + "' is repeated"};
    if (key == "peer") value = x500_of(value);
    const bool integer = !value.empty() && value.size() <= 18 &&
                         value.find_first_not_of("0123456789", value[0] == '-' ? 1 : 0) == std::string::npos &&
                         value != "-";
    if (integer) {
      object[key] = std::stoll(value);
    } else {
      object[key] = value;
    }
  }
  if (spec == nullptr) return nlohmann::json{{"args", std::move(object)}};
  auto args = ccal::flows::parseDealArgs(flow, resolved);
  if (!args) return args.error();
  const ccal::Bytes bytes = ccal::flows::encodeDealArgs(*args);
  return nlohmann::json{{"args_base64", ccal::node::base64Encode(bytes)}};
}

// Adds what a finished flow came to: "status" completed / failed / killed
// and, for a deal flow (whose result is the id of the transaction it
// finalised), "transaction_id".
void describeFlowEnd(nlohmann::json& f) {
  const std::string outcome = f.value("outcome", std::string());
  f["status"] = outcome == "ok" ? "completed" : outcome == "killed" ? "killed" : "failed";
  if (outcome != "ok" || ccal::flows::findDealFlow(f.value("name", std::string())) == nullptr) return;
  if (!f.contains("result_base64") || !f["result_base64"].is_string()) return;
  auto result = ccal::node::base64Decode(f["result_base64"].get<std::string>());
  if (result && result->size() == 32) f["transaction_id"] = ccal::toHex(*result);
}

// `ccal vault query`: the API's query body from the command line. A
// --field is NAME OP VALUE with OP one of = < <= > >=; a value naming a
// member's folder under --dir becomes its X.500 name.
ccal::Result<nlohmann::json> vaultQueryBody(const NodeAddress& address, const std::string& type,
                                            const std::vector<std::string>& fields, const std::string& status,
                                            const std::string& participant, const std::string& sort,
                                            uint32_t limit) {
  nlohmann::json body = {{"type", type}, {"status", status}, {"page_size", limit}};
  nlohmann::json conditions = nlohmann::json::array();
  for (const std::string& field : fields) {
    size_t i = 0;
    while (i < field.size() && (std::isalnum(static_cast<unsigned char>(field[i])) || field[i] == '_')) ++i;
    std::string op;
    for (const char* candidate : {"<=", ">=", "==", "<", ">", "="}) {
      if (field.compare(i, std::strlen(candidate), candidate) == 0) {
        op = candidate;
        break;
      }
    }
    if (i == 0 || op.empty()) {
      return ccal::Error{ccal::Errc::malformed, "--field '" + field + "' is not NAME=VALUE (or NAME<VALUE, <=, >, >=)"};
    }
    const std::string value = field.substr(i + op.size());
    nlohmann::json condition = {{"name", field.substr(0, i)}, {"op", op}};
    // Integers stay text: the API reads an int64 field's decimal text, and a
    // text field's value must not turn into a number.
    condition["value"] = address.memberName(value);
    conditions.push_back(std::move(condition));
  }
  if (!conditions.empty()) body["fields"] = std::move(conditions);
  if (!participant.empty()) body["participant"] = address.memberName(participant);
  if (!sort.empty()) body["sort"] = sort;
  return body;
}

// A vault query's states as a table: ref, status, then the declared fields
// (party names shortened to their O= part, midnight times to their date).
void printVaultTable(const nlohmann::json& answer) {
  const auto& states = answer["states"];
  if (states.empty()) {
    std::cout << "no states (" << answer.value("total", uint64_t{0}) << " match)\n";
    return;
  }
  auto cell = [](const nlohmann::json& v) -> std::string {
    if (v.is_string()) {
      std::string s = v.get<std::string>();
      if (s.rfind("O=", 0) == 0) return s.substr(2, s.find(',') == std::string::npos ? std::string::npos : s.find(',') - 2);
      if (s.size() == 20 && s.compare(10, 10, "T00:00:00Z") == 0) return s.substr(0, 10);
      return s;
    }
    return v.dump();
  };
  std::vector<std::string> columns = {"REF", "STATUS"};
  for (const auto& [name, value] : states[0]["fields"].items()) columns.push_back(name);
  std::vector<std::vector<std::string>> rows;
  for (const auto& s : states) {
    std::string ref = s.value("ref", "");
    std::vector<std::string> row = {ref.substr(0, 12) + ":" + ref.substr(ref.find(':') + 1),
                                    s.value("status", "") + (s.value("relevance", "") == "observed" ? "*" : "")};
    for (size_t c = 2; c < columns.size(); ++c) {
      row.push_back(s["fields"].contains(columns[c]) ? cell(s["fields"][columns[c]]) : "");
    }
    rows.push_back(std::move(row));
  }
  std::vector<size_t> widths(columns.size());
  for (size_t c = 0; c < columns.size(); ++c) {
    widths[c] = columns[c].size();
    for (const auto& row : rows) widths[c] = std::max(widths[c], row[c].size());
  }
  auto print = [&](const std::vector<std::string>& row) {
    for (size_t c = 0; c < row.size(); ++c) {
      std::cout << row[c] << (c + 1 < row.size() ? std::string(widths[c] - row[c].size() + 2, ' ') : "");
    }
    std::cout << "\n";
  };
  std::vector<std::string> header;
  for (const auto& c : columns) {
    std::string upper = c;
    for (char& ch : upper) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
    header.push_back(upper);
  }
  print(header);
  for (const auto& row : rows) print(row);
  const uint64_t total = answer.value("total", uint64_t{0});
  std::cout << "(" << states.size() << (total > states.size() ? " of " + std::to_string(total) : std::string())
            << (total == 1 ? " state of " : " states of ") << states[0].value("type", "") << "; * observed)\n";
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"CCAL Ledger: a notarised-states ledger for the cooperative economy", "ccal"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "ccal 0.1.0");

  std::string out_dir;
  ccal::node::DealDemoOptions demo_options;
  std::string demo_spec = demo_options.spec.string();
  bool demo_core = false;
  auto* demo = app.add_subcommand(
      "demo",
      "The cooperative economy on a network of separate processes: tokens, credentials, an invoice financed "
      "once (a concurrent second financing refused by the notary) and settled, checked against every vault");
  demo->add_option("--out", out_dir,
                   "Folder for the demo network (default build/demo-run; with --core: build/demo, its PKI)");
  demo->add_option("--spec", demo_spec, "The network spec")->capture_default_str();
  demo->add_option("--port-base", demo_options.port_base,
                   "Rewrite every member's p2p and API port from this one upward (0: the spec's)")
      ->capture_default_str();
  demo->add_flag("--keep", demo_options.keep,
                 "Leave the network running; print each member's API address and admin token");
  demo->add_flag("--core", demo_core,
                 "Run the ledger core demonstration instead (PKI, transactions, filtered views, bad input)");

  auto* network = app.add_subcommand("network", "Set up and run a CCAL network");
  network->require_subcommand(1);
  std::string spec_file, bootstrap_out;
  bool force = false, json = false;
  auto* bootstrap = network->add_subcommand(
      "bootstrap",
      "Make a network's PKI, keys, signed network parameters and node infos, and a folder per "
      "member with its node.toml");
  bootstrap->add_option("--spec", spec_file, "Network spec (TOML), e.g. config/demo-network.toml")
      ->required();
  bootstrap->add_option("--out", bootstrap_out, "Folder to write the network into")->required();
  bootstrap->add_flag("--force", force,
                      "Replace an earlier bootstrap in --out (its keys and vaults are lost)");
  bootstrap->add_flag("--json", json, "Print the result as JSON");

  std::string network_dir;
  bool network_json = false;
  auto* start = network->add_subcommand(
      "start", "Start every member of a bootstrapped network in the background and wait until each is ready");
  auto* stop = network->add_subcommand("stop", "Stop every running member of a network (SIGTERM)");
  auto* status = network->add_subcommand("status", "Show which members of a network run");
  for (auto* c : {start, stop, status}) {
    c->add_option("--dir", network_dir, "The network's folder (from `ccal network bootstrap`)")->required();
    c->add_flag("--json", network_json, "Print the result as JSON");
  }
  std::string revoke_member;
  auto* revoke = network->add_subcommand(
      "revoke",
      "Revoke a member's certificates: the doorman's next revocation list, into _operator/ and "
      "every "
      "member's certs/crls.pem; running nodes drop the member within seconds");
  revoke->add_option("--dir", network_dir, "The network's folder (from `ccal network bootstrap`)")
      ->required();
  revoke->add_option("--member", revoke_member, "The member's folder name under --dir")->required();
  revoke->add_flag("--json", network_json, "Print the result as JSON");
  std::string rotate_member;
  auto* rotate_tls = network->add_subcommand(
      "rotate-tls",
      "Replace a member's TLS key: its node CA issues a certificate for a new key and revokes the "
      "old one; the member uses the new key from its next start");
  rotate_tls
      ->add_option("--dir", network_dir, "The network's folder (from `ccal network bootstrap`)")
      ->required();
  rotate_tls->add_option("--member", rotate_member, "The member's folder name under --dir")
      ->required();
  rotate_tls->add_flag("--json", network_json, "Print the result as JSON");
  ccal::node::NewMember new_member;
  auto* add_member = network->add_subcommand(
      "add-member",
      "A new member joins a running network: the doorman issues its certificates, its folder is "
      "written, its node info goes to every member (running nodes take it within seconds)");
  add_member
      ->add_option("--dir", network_dir, "The network's folder (from `ccal network bootstrap`)")
      ->required();
  add_member->add_option("--name", new_member.name, "Its folder name (a-z, 0-9, '-')")->required();
  add_member
      ->add_option("--x500", new_member.x500, "Its X.500 name, e.g. \"O=Delta Coop,L=Lyon,C=FR\"")
      ->required();
  add_member->add_option("--role", new_member.role, "node (default) or regulator");
  add_member->add_option("--p2p", new_member.p2p, "Its peer-to-peer address, host:port")
      ->required();
  add_member->add_option("--api", new_member.api, "Its control API address, host:port")->required();
  add_member->add_flag("--json", network_json, "Print the result as JSON");
  int64_t ready_timeout_millis = ccal::node::member_ready_timeout_millis_default;
  start->add_option("--timeout-ms", ready_timeout_millis, "How long to wait for each member to be ready")
      ->capture_default_str();

  auto* node_command = app.add_subcommand("node", "Run a member, or ask a running one");
  node_command->require_subcommand(1);
  std::string config_file;
  auto* node_run = node_command->add_subcommand(
      "run", "Run one member (node, regulator or notary replica) until SIGTERM or SIGINT");
  node_run->add_option("--config", config_file, "The member's node.toml")->required();
  NodeAddress address;
  bool api_json = true;
  auto* node_info = node_command->add_subcommand("info", "The node's identity, role and uptime (JSON)");
  auto* node_peers = node_command->add_subcommand("peers", "The node's peers and their connection state (JSON)");
  for (auto* c : {node_info, node_peers}) {
    address.addOptions(c);
    c->add_flag("--json", api_json, "Print JSON (the default)");
  }

  auto* message = app.add_subcommand("message", "Diagnostics of exactly-once peer messaging");
  message->require_subcommand(1);
  std::string message_peer, message_stream = "default", message_text;
  uint64_t message_count = 1, message_start = 0;
  auto* message_send = message->add_subcommand("send", "Send a numbered stream of messages to a peer");
  message_send->add_option("--to", message_peer, "The peer (folder name under --dir, or X.500)")->required();
  message_send->add_option("--start", message_start, "The first sequence number")->capture_default_str();
  message_send->add_option("--text", message_text, "Text carried by each message");
  auto* message_check = message->add_subcommand(
      "check", "Whether messages 0..count-1 of a stream from a peer are stored once, in order");
  message_check->add_option("--from", message_peer, "The sender (folder name under --dir, or X.500)")->required();
  auto* message_status = message->add_subcommand("status", "Streams received and messaging counters");
  for (auto* c : {message_send, message_check}) {
    c->add_option("--stream", message_stream, "The stream's name")->capture_default_str();
    c->add_option("--count", message_count, "How many messages")->capture_default_str();
  }
  for (auto* c : {message_send, message_check, message_status}) {
    address.addOptions(c);
    c->add_flag("--json", api_json, "Print JSON (the default)");
  }

  auto* notary = app.add_subcommand("notary", "Notarise through a member node, and the notary's status");
  notary->require_subcommand(1);
  std::string notary_name, notary_tx_file;
  std::vector<std::string> notary_dep_files;
  uint64_t notary_count = 100, notary_concurrency = 64, notary_rate = 0;
  auto* notary_notarise = notary->add_subcommand(
      "notarise", "Notarise a SignedTransaction (its canonical bytes in --tx FILE) through --node");
  notary_notarise->add_option("--tx", notary_tx_file, "File holding the SignedTransaction's canonical bytes")
      ->required();
  notary_notarise->add_option("--dep", notary_dep_files,
                              "A dependency's SignedTransaction file (validating notaries; repeatable)");
  auto* notary_load = notary->add_subcommand(
      "load", "Have --node notarise --count single-input transactions spending fresh states (load generator)");
  notary_load->add_option("--count", notary_count, "How many transactions")->capture_default_str();
  notary_load->add_option("--concurrency", notary_concurrency, "How many in flight")->capture_default_str();
  notary_load->add_option("--rate", notary_rate,
                          "Offered load in transactions per second (open loop); 0: as fast as --concurrency allows")
      ->capture_default_str();
  auto* notary_status = notary->add_subcommand(
      "status", "A replica's view, last executed batch, state digest and checkpoint; a member's counters");
  for (auto* c : {notary_notarise, notary_load}) {
    c->add_option("--notary", notary_name, "The notary's X.500 name (default: the network's only notary)");
  }
  for (auto* c : {notary_notarise, notary_load, notary_status}) {
    address.addOptions(c);
    c->add_flag("--json", api_json, "Print JSON (the default)");
  }

  auto* vault = app.add_subcommand("vault", "Query a node's vault");
  vault->require_subcommand(1);
  std::string vault_type, vault_status = "unconsumed", vault_participant, vault_sort;
  std::vector<std::string> vault_fields;
  uint32_t vault_limit = ccal::node::vault_query_page_size_default;
  bool vault_json = false;
  auto* vault_query = vault->add_subcommand(
      "query", "States of a type by the fields its contract declares queryable (POST /api/v1/vault/query)");
  vault_query->add_option("--type", vault_type,
                          "State type: ccal.token.TokenState, or an alias: token, member, receivable, ...")
      ->required();
  vault_query->add_option("--field", vault_fields,
                          "A condition NAME=VALUE (also NAME<VALUE, <=, >, >=); repeatable. A party is its "
                          "X.500 name or, with --dir, its folder name; a time YYYY-MM-DD");
  vault_query->add_option("--status", vault_status, "unconsumed | consumed | all")->capture_default_str();
  vault_query->add_option("--participant", vault_participant, "Only states this party participates in");
  vault_query->add_option("--sort", vault_sort, "A declared field to sort by; -FIELD descending");
  vault_query->add_option("--limit", vault_limit, "At most this many states (one page)")->capture_default_str();
  address.addOptions(vault_query);
  vault_query->add_flag("--json", vault_json, "Print the API's JSON answer");

  auto* credit = app.add_subcommand("credit", "Credit records of the mutual-aid loans");
  credit->require_subcommand(1);
  std::string credit_subject;
  bool credit_json = false;
  auto* credit_report = credit->add_subcommand(
      "report", "A party's credit history from what this node may see (GET /api/v1/credit/report)");
  credit_report->add_option("--subject", credit_subject, "The party: its X.500 name or, with --dir, its folder name")
      ->required();
  address.addOptions(credit_report);
  credit_report->add_flag("--json", credit_json, "Print the API's JSON answer");

  auto* flow = app.add_subcommand("flow", "Start, list, show and kill flows on a node");
  flow->require_subcommand(1);
  std::string flow_name, flow_args, flow_args_base64, flow_id, flow_state, flow_filter_name,
      flow_reason;
  int64_t flow_timeout_micros = -1;
  int64_t flow_wait_millis = 120'000;
  size_t flow_limit = ccal::node::flows_listed_default;
  bool flow_wait = false, flow_no_wait = false, flow_json = false;
  std::vector<std::string> flow_key_values;
  auto* flow_start = flow->add_subcommand(
      "start", "Start a registered flow and wait for its end (--no-wait: print its id)");
  flow_start->add_option("NAME", flow_name, "The flow's registered name, e.g. token.move")->required();
  flow_start->add_option("ARGS", flow_key_values,
                         "key=value arguments (a deal flow's, validated before it starts; with --dir a "
                         "party may be given by its member folder name)");
  flow_start->add_option("--args", flow_args,
                         "Arguments as JSON; with --dir, a \"peer\" naming a member's folder "
                         "becomes its X.500 name");
  flow_start->add_option("--args-base64", flow_args_base64, "Arguments as base64 bytes");
  flow_start->add_option("--timeout-micros", flow_timeout_micros,
                         "The flow's timeout (0: none); default: the node's flows.timeout_micros");
  flow_start->add_flag("--wait", flow_wait, "Wait until the flow ends and print it (the default)");
  flow_start->add_flag("--no-wait", flow_no_wait, "Print the flow's id once it has started; do not wait")
      ->excludes("--wait");
  flow_start->add_option("--wait-ms", flow_wait_millis, "How long to wait for the end")->capture_default_str();
  uint64_t flow_load_count = 100, flow_load_concurrency = 16, flow_load_rate = 0;
  auto* flow_load = flow->add_subcommand(
      "load", "Run COUNT flows of one kind on the node (diagnostic): rate and latency to their durable end");
  flow_load->add_option("NAME", flow_name, "The flow's registered name, e.g. token.move")->required();
  flow_load->add_option("ARGS", flow_key_values, "key=value arguments, as for flow start");
  flow_load->add_option("--count", flow_load_count, "How many flows")->capture_default_str();
  flow_load->add_option("--concurrency", flow_load_concurrency, "At most this many at once")
      ->capture_default_str();
  flow_load->add_option("--rate", flow_load_rate, "Start this many per second (0: closed loop)")
      ->capture_default_str();
  auto* flow_list = flow->add_subcommand("list", "Running and recently finished flows, newest first");
  flow_list->add_option("--state", flow_state, "running | parked | finished | ok | failed | killed");
  flow_list->add_option("--name", flow_filter_name, "Only flows of this name");
  flow_list->add_option("--limit", flow_limit, "At most this many")->capture_default_str();
  auto* flow_show = flow->add_subcommand("show", "One flow: phase, step, journal, outcome, result or error");
  auto* flow_kill = flow->add_subcommand("kill", "End a running flow as killed (its counterparties see it)");
  auto* flow_retry =
      flow->add_subcommand("retry", "Take a flow out of the hospital: run its failed service call again");
  for (auto* c : {flow_show, flow_kill, flow_retry}) {
    c->add_option("ID", flow_id, "The flow's id (64 hexadecimal digits)")->required();
  }
  flow_kill->add_option("--reason", flow_reason, "Why (shown in the flow's error)");
  for (auto* c : {flow_start, flow_load, flow_list, flow_show, flow_kill, flow_retry}) {
    address.addOptions(c);
    c->add_flag("--json", flow_json, "Print JSON");
  }

  CLI11_PARSE(app, argc, argv);
  if (demo->parsed()) {
    if (demo_core) return ccal::node::runLedgerDemo(out_dir.empty() ? "build/demo" : out_dir);
    if (!out_dir.empty()) demo_options.out = out_dir;
    demo_options.spec = demo_spec;
    return ccal::node::runDealDemo(demo_options, std::cout);
  }
  if (bootstrap->parsed()) return runBootstrap(spec_file, bootstrap_out, force, json);
  if (start->parsed()) {
    ccal::node::StartOptions options;
    options.ready_timeout_millis = ready_timeout_millis;
    return printStatuses("network start", ccal::node::startNetwork(network_dir, options), network_json);
  }
  if (stop->parsed()) return printStatuses("network stop", ccal::node::stopNetwork(network_dir), network_json);
  if (rotate_tls->parsed()) {
    auto rotated =
        ccal::node::rotateTls(network_dir, rotate_member, std::chrono::system_clock::now());
    if (!rotated) return failWith("network rotate-tls", rotated.error(), network_json);
    if (network_json) {
      std::cout << rotated->dump() << "\n";
    } else {
      std::cout
          << "New TLS certificate " << (*rotated)["new_serial"].get<std::string>() << " for "
          << (*rotated)["member"].get<std::string>() << "; certificate "
          << (*rotated)["revoked_serial"].get<std::string>()
          << " revoked. Restart the member to use its new key; running members take the change "
             "within seconds\n";
    }
    return 0;
  }
  if (add_member->parsed()) {
    auto added = ccal::node::addMember(network_dir, new_member, std::chrono::system_clock::now());
    if (!added) return failWith("network add-member", added.error(), network_json);
    if (network_json) {
      std::cout << nlohmann::json{{"added", *added}}.dump() << "\n";
    } else {
      std::cout << "Added " << (*added)["x500"].get<std::string>() << " in "
                << (*added)["config"].get<std::string>() << "; `ccal network start --dir "
                << network_dir
                << "` starts it, and running members take its node info within seconds\n";
    }
    return 0;
  }
  if (revoke->parsed()) {
    auto revoked =
        ccal::node::revokeMember(network_dir, revoke_member, std::chrono::system_clock::now());
    if (!revoked) return failWith("network revoke", revoked.error(), network_json);
    if (network_json) {
      std::cout << nlohmann::json{{"revoked", *revoked}}.dump() << "\n";
    } else {
      std::cout << "Revoked " << *revoked << "; running members drop it within seconds\n";
    }
    return 0;
  }
  if (status->parsed()) return printStatuses("network status", ccal::node::networkStatus(network_dir), network_json);
  if (node_run->parsed()) return ccal::node::runNode(config_file);
  auto call = [&](std::string_view command, auto&& fn) {
    auto client = address.client();
    if (!client) return failWith(command, client.error(), true);
    return printJson(command, fn(*client), true);
  };
  if (node_info->parsed()) return call("node info", [](auto& c) { return c.get("/api/v1/node"); });
  if (node_peers->parsed()) return call("node peers", [](auto& c) { return c.get("/api/v1/peers"); });
  if (message_status->parsed()) {
    return call("message status", [](auto& c) { return c.get("/api/v1/messages/diagnostic"); });
  }
  if (message_send->parsed()) {
    nlohmann::json body = {{"to", address.memberName(message_peer)}, {"stream", message_stream},
                           {"count", message_count}, {"start", message_start}, {"text", message_text}};
    return call("message send", [&](auto& c) { return c.post("/api/v1/messages/diagnostic", body); });
  }
  if (message_check->parsed()) {
    nlohmann::json body = {{"from", address.memberName(message_peer)}, {"stream", message_stream},
                           {"count", message_count}};
    return call("message check", [&](auto& c) { return c.post("/api/v1/messages/diagnostic/check", body); });
  }
  if (credit_report->parsed()) {
    auto client = address.client();
    if (!client) return failWith("credit report", client.error(), credit_json);
    auto answer = client->get("/api/v1/credit/report?subject=" +
                              ccal::node::ApiClient::encodeSegment(address.memberName(credit_subject)));
    if (!answer) return failWith("credit report", answer.error(), credit_json);
    if (credit_json) {
      std::cout << answer->dump(2) << "\n";
    } else {
      std::cout << "credit report of " << answer->value("subject", std::string()) << "\n"
                << answer->value("text", std::string()) << "\n";
    }
    return 0;
  }
  if (vault_query->parsed()) {
    auto body = vaultQueryBody(address, vault_type, vault_fields, vault_status, vault_participant, vault_sort,
                               vault_limit);
    if (!body) return failWith("vault query", body.error(), vault_json);
    auto client = address.client();
    if (!client) return failWith("vault query", client.error(), vault_json);
    auto answer = client->post("/api/v1/vault/query", *body);
    if (!answer) return failWith("vault query", answer.error(), vault_json);
    if (vault_json) {
      std::cout << answer->dump(2) << "\n";
    } else {
      printVaultTable(*answer);
    }
    return 0;
  }
  if (flow->parsed()) {
    std::string command = "flow " + std::string(flow_start->parsed()  ? "start"
                                                : flow_load->parsed() ? "load"
                                                : flow_list->parsed() ? "list"
                                                : flow_retry->parsed() ? "retry"
                                                : flow_show->parsed() ? "show"
                                                                      : "kill");
    const int64_t start_wait_micros =
        flow_start->parsed() && !flow_no_wait
            ? std::min<int64_t>(flow_wait_millis * 1000, ccal::node::flow_wait_micros_max)
            : 0;
    // The start answers once the flow has ended (or start_wait_micros passed).
    address.timeout_micros = std::max<int64_t>(address.timeout_micros, start_wait_micros + 15'000'000);
    if (flow_load->parsed()) address.timeout_micros = ccal::node::ApiServerOptions{}.handler_timeout_micros;
    auto client = address.client();
    if (!client) return failWith(command, client.error(), flow_json);
    auto showFlow = [&](const std::string& id) {
      auto shown = client->get("/api/v1/flows/" + ccal::node::ApiClient::encodeSegment(id));
      if (shown && (*shown)["phase"] == "finished") describeFlowEnd(*shown);
      return shown;
    };
    if (flow_show->parsed()) return printFlowResult(command, showFlow(flow_id), flow_json, printFlow);
    if (flow_load->parsed()) {
      nlohmann::json body = {{"name", flow_name},
                             {"count", flow_load_count},
                             {"concurrency", flow_load_concurrency},
                             {"rate_per_second", flow_load_rate}};
      if (!flow_key_values.empty()) {
        auto args = flowArgsOf(flow_name, flow_key_values,
                               [&](const std::string& name) { return address.memberName(name); });
        if (!args) return failWith(command, args.error(), flow_json);
        body.update(*args);
      }
      auto ran = client->post("/api/v1/flows/diagnostic/load", body);
      if (!ran) return failWith(command, ran.error(), flow_json);
      std::cout << ran->dump(2) << "\n";
      return (*ran)["completed"] == flow_load_count ? 0 : 1;
    }
    if (flow_retry->parsed()) {
      return printFlowResult(
          command,
          client->post("/api/v1/flows/" + ccal::node::ApiClient::encodeSegment(flow_id) + "/retry",
                       nlohmann::json::object()),
          flow_json, [](const nlohmann::json& r) { std::cout << "retrying " << r.value("id", std::string()) << "\n"; });
    }
    if (flow_kill->parsed()) {
      nlohmann::json body = nlohmann::json::object();
      if (!flow_reason.empty()) body["reason"] = flow_reason;
      return printFlowResult(
          command,
          client->post("/api/v1/flows/" + ccal::node::ApiClient::encodeSegment(flow_id) + "/kill", body),
          flow_json, [](const nlohmann::json& r) {
            std::cout << "killing " << r.value("id", std::string()) << "\n";
          });
    }
    if (flow_list->parsed()) {
      std::string target = "/api/v1/flows?limit=" + std::to_string(flow_limit);
      if (!flow_state.empty()) target += "&state=" + ccal::node::ApiClient::encodeSegment(flow_state);
      if (!flow_filter_name.empty()) {
        target += "&name=" + ccal::node::ApiClient::encodeSegment(flow_filter_name);
      }
      return printFlowResult(command, client->get(target), flow_json, printFlowList);
    }
    nlohmann::json body = {{"name", flow_name}};
    const int given = int(!flow_args.empty()) + int(!flow_args_base64.empty()) + int(!flow_key_values.empty());
    if (given > 1) {
      return failWith(command,
                      {ccal::Errc::malformed, "give key=value arguments, --args or --args-base64, one of them"},
                      flow_json);
    }
    if (!flow_key_values.empty()) {
      auto args = flowArgsOf(flow_name, flow_key_values,
                             [&](const std::string& name) { return address.memberName(name); });
      if (!args) return failWith(command, args.error(), flow_json);
      body.update(*args);
    }
    if (!flow_args.empty()) {
      auto args = nlohmann::json::parse(flow_args, nullptr, false);
      if (args.is_discarded()) {
        return failWith(command, {ccal::Errc::malformed, "--args is not JSON: " + flow_args.substr(0, 200)},
                        flow_json);
      }
      if (args.is_object() && args.contains("peer") && args["peer"].is_string()) {
        args["peer"] = address.memberName(args["peer"].get<std::string>());
      }
      body["args"] = std::move(args);
    }
    if (!flow_args_base64.empty()) body["args_base64"] = flow_args_base64;
    if (flow_timeout_micros >= 0) body["timeout_micros"] = flow_timeout_micros;
    if (start_wait_micros > 0) body["wait_micros"] = start_wait_micros;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(flow_wait_millis);
    auto started = client->post("/api/v1/flows", body);
    if (!started) return failWith(command, started.error(), flow_json);
    const std::string id = (*started)["id"];
    if (!flow_no_wait && (*started)["phase"] == "finished") {
      describeFlowEnd(*started);
      printFlowResult(command, started, flow_json, printFlow);
      return (*started)["outcome"] == "ok" ? 0 : 1;
    }
    if (flow_no_wait) {
      return printFlowResult(command, started, flow_json,
                             [](const nlohmann::json& r) { std::cout << r["id"].get<std::string>() << "\n"; });
    }
    for (;;) {
      auto shown = showFlow(id);
      if (!shown) return failWith(command, shown.error(), flow_json);
      if ((*shown)["phase"] == "finished") {
        describeFlowEnd(*shown);
        printFlowResult(command, shown, flow_json, printFlow);
        return (*shown)["outcome"] == "ok" ? 0 : 1;
      }
      if (std::chrono::steady_clock::now() >= deadline) {
        return failWith(command,
                        {ccal::Errc::timeout, "flow " + id + " has not ended after " +
                                                  std::to_string(flow_wait_millis) + " ms (step: " +
                                                  (*shown).value("step", std::string()) + ")"},
                        flow_json);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
  if (notary_load->parsed() || notary_notarise->parsed()) {
    address.timeout_micros = ccal::node::ApiServerOptions{}.handler_timeout_micros;
  }
  if (notary_status->parsed()) {
    return call("notary status", [](auto& c) { return c.get("/api/v1/notary/status"); });
  }
  if (notary_load->parsed()) {
    nlohmann::json body = {
        {"count", notary_count}, {"concurrency", notary_concurrency}, {"rate_per_second", notary_rate}};
    if (!notary_name.empty()) body["notary"] = notary_name;
    return call("notary load", [&](auto& c) { return c.post("/api/v1/notary/diagnostic/load", body); });
  }
  if (notary_notarise->parsed()) {
    auto readFile = [](const std::string& path) -> ccal::Result<std::string> {
      std::ifstream in(path, std::ios::binary);
      if (!in) return ccal::Error{ccal::Errc::not_found, "cannot read " + path};
      std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      return ccal::node::base64Encode(ccal::asBytes(bytes));
    };
    auto tx = readFile(notary_tx_file);
    if (!tx) return failWith("notary notarise", tx.error(), true);
    nlohmann::json body = {{"transaction", *tx}};
    if (!notary_name.empty()) body["notary"] = notary_name;
    if (!notary_dep_files.empty()) {
      body["dependencies"] = nlohmann::json::array();
      for (const auto& f : notary_dep_files) {
        auto dep = readFile(f);
        if (!dep) return failWith("notary notarise", dep.error(), true);
        body["dependencies"].push_back(*dep);
      }
    }
    return call("notary notarise", [&](auto& c) { return c.post("/api/v1/notary/notarise", body); });
  }
  return 0;
}
