#pragma once
// A network of real `ccal` processes for tests and benchmarks: writes the
// network spec (members on loopback ports of a PortBlock, notary clusters)
// and bootstraps it with `ccal network bootstrap`. The including target
// defines CCAL_BINARY (see network_processes.h).

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "test/support/network_processes.h"
#include "test/support/ports.h"

namespace ccal::testing {

struct SpecMember {
  std::string name;  // folder name
  std::string x500;
  std::string role = "node";  // node | regulator | notary-replica
};

struct SpecNotary {
  std::string name;
  std::string x500;
  uint32_t f = 0;
  bool validating = false;
  std::vector<std::string> replicas;  // member folder names, 3f+1
};

struct SpecObserver {
  std::string observer;               // member folder name
  std::vector<std::string> parties;   // member folder names
  std::vector<std::string> contracts;  // contract names
};

// Writes DIR/spec.toml -- member i listens for peers on ports.at(i) and
// serves its API on ports.at(members.size() + i) -- and bootstraps it into
// DIR/net. What `ccal network bootstrap` printed when it fails.
inline CcalRun bootstrapTestNetwork(const std::filesystem::path& dir, const std::vector<SpecMember>& members,
                                    const std::vector<SpecNotary>& notaries, const PortBlock& ports,
                                    const std::vector<SpecObserver>& observers = {}) {
  std::ofstream spec(dir / "spec.toml");
  spec << "[network]\nroot = \"O=Test Root, L=Haikou, C=CN\"\n"
          "doorman = \"O=Test Doorman, L=Haikou, C=CN\"\n"
          "network_map = \"O=Test Map, L=Haikou, C=CN\"\n";
  const int count = static_cast<int>(members.size());
  for (int i = 0; i < count; ++i) {
    const SpecMember& m = members[static_cast<size_t>(i)];
    spec << "\n[[nodes]]\nname = \"" << m.name << "\"\nx500 = \"" << m.x500 << "\"\nrole = \"" << m.role
         << "\"\np2p = \"127.0.0.1:" << ports.at(i) << "\"\napi = \"127.0.0.1:" << ports.at(count + i)
         << "\"\n";
  }
  auto list = [&](const std::vector<std::string>& items) {
    spec << "[";
    for (size_t i = 0; i < items.size(); ++i) spec << (i > 0 ? ", " : "") << "\"" << items[i] << "\"";
    spec << "]";
  };
  for (const SpecNotary& n : notaries) {
    spec << "\n[[notaries]]\nname = \"" << n.name << "\"\nx500 = \"" << n.x500 << "\"\nf = " << n.f
         << "\nvalidating = " << (n.validating ? "true" : "false") << "\nreplicas = ";
    list(n.replicas);
    spec << "\n";
  }
  for (const SpecObserver& o : observers) {
    spec << "\n[[observers]]\nobserver = \"" << o.observer << "\"\nparties = ";
    list(o.parties);
    spec << "\ncontracts = ";
    list(o.contracts);
    spec << "\nall_transactions = false\n";
  }
  spec.close();
  return runCcalCapturing("network bootstrap --spec " + (dir / "spec.toml").string() + " --out " +
                          (dir / "net").string());
}

}  // namespace ccal::testing
