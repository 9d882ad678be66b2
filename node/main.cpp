// The `ccal` command: the composition root of a CCAL node.
#include <CLI/CLI.hpp>

#include <cstdio>

#include "node/ledger_demo.h"

int main(int argc, char** argv) {
  CLI::App app{"CCAL Ledger: a notarised-states ledger for the cooperative economy", "ccal"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "ccal 0.1.0");

  std::string out_dir = "build/demo";
  auto* demo = app.add_subcommand("demo", "Run the demonstration of what CCAL does today");
  demo->add_option("--out", out_dir, "Folder for the demo's certificates and keys")
      ->capture_default_str();

  CLI11_PARSE(app, argc, argv);
  if (demo->parsed()) return ccal::node::runLedgerDemo(out_dir);
  return 0;
}
