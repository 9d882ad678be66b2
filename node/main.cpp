// The `ccal` command: the composition root of a CCAL node.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <iostream>

#include "node/bootstrap.h"
#include "node/ledger_demo.h"

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

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"CCAL Ledger: a notarised-states ledger for the cooperative economy", "ccal"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "ccal 0.1.0");

  std::string out_dir = "build/demo";
  auto* demo = app.add_subcommand("demo", "Run the demonstration of what CCAL does today");
  demo->add_option("--out", out_dir, "Folder for the demo's certificates and keys")
      ->capture_default_str();

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

  CLI11_PARSE(app, argc, argv);
  if (demo->parsed()) return ccal::node::runLedgerDemo(out_dir);
  if (bootstrap->parsed()) return runBootstrap(spec_file, bootstrap_out, force, json);
  return 0;
}
