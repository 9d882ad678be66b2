// Kill -9 while the vault records: a child process records issues and moves
// (consuming earlier outputs, locking and selecting) and reports every
// transaction id whose record() returned ok; the parent SIGKILLs it at a
// random moment, reopens the same vault and checks that every acknowledged
// transaction is there and that every index and count agrees exactly with
// the stored states (Vault::checkConsistency). The directory is kept across
// iterations, so each run also starts from what earlier crashes left.
//
// CCAL_CRASH_SEED and CCAL_CRASH_ITERATIONS override the seed and the count.

#include <doctest/doctest.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <thread>

#include "ledger/testing.h"
#include "test/support/temp_dir.h"
#include "vault/vault.h"

using namespace ccal;
using namespace ccal::testing;
using namespace ccal::vault;

namespace {

uint64_t envOr(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  return v ? std::strtoull(v, nullptr, 10) : fallback;
}

struct World {
  KeyPair alice = testKey(1), bank = testKey(3), notary_key = testKey(9);
  Party alice_party = testParty("Haikou Fishing Cooperative", alice);
  Party bank_party = testParty("Hainan Rural Bank", bank);
  Party notary = testParty("CCAL Notary", notary_key);
  ContractRegistry registry;
  World() { registry.add(std::make_unique<TestTokenContract>()); }

  TestToken token(uint64_t n, int64_t amount) {
    return TestToken{alice_party.owningKey, bank_party.owningKey, amount, "CNY", int64_t(n),
                     "REF-" + std::to_string(n), SecureHash::of(asBytes(std::to_string(n)))};
  }
};

std::unique_ptr<Vault> open(World& w, const std::string& path) {
  VaultConfig config;
  config.store.path = path;
  config.store.durable = true;
  auto v = Vault::open(config, w.registry, {w.alice.publicKey()});
  REQUIRE_MESSAGE(v.ok(), v.error().toString());
  return std::move(v).value();
}

// The child: records until killed; writes each acknowledged id to `fd`.
[[noreturn]] void recordForever(const std::string& path, int fd, uint64_t seed) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  World w;
  VaultConfig config;
  config.store.path = path;
  auto opened = Vault::open(config, w.registry, {w.alice.publicKey()});
  if (!opened) std::_Exit(3);
  auto& vault = **opened;
  std::mt19937_64 rng(seed);
  for (uint64_t n = seed * 1'000'000;; ++n) {
    // Spend what selection finds (when there is enough), else issue.
    LockId flow = SecureHash::of(asBytes("flow " + std::to_string(n)));
    auto picked = vault.selectFungible(flow, "CNY", std::nullopt, 15);
    TransactionBuilder b(w.notary);
    if (picked.ok() && rng() % 3 != 0) {
      for (const auto& s : picked->states) b.addInput(s.ref);
      b.addOutput(tokenState(w.notary, w.token(n, picked->total)));
      b.addCommand(Command{"ccal.test.Token.Move", {}, {w.alice_party.owningKey}});
    } else {
      if (picked.ok()) (void)vault.release(flow);
      for (int i = 0; i < 3; ++i) b.addOutput(tokenState(w.notary, w.token(n, 10)));
      b.addCommand(Command{"ccal.test.Token.Issue", {}, {w.bank_party.owningKey}});
    }
    SignedTransaction stx(b.build().value());
    stx.signWith(w.alice).signWith(w.bank).signWith(w.notary_key);
    if (!vault.record(stx, RecordMode::only_relevant).ok()) std::_Exit(4);
    if (::write(fd, stx.id().bytes().data(), 32) != 32) std::_Exit(5);
  }
}

}  // namespace

TEST_CASE("kill -9 while recording: acknowledged transactions stay, indexes stay consistent") {
  const uint64_t seed = envOr("CCAL_CRASH_SEED", std::random_device{}());
  const int iterations = static_cast<int>(envOr("CCAL_CRASH_ITERATIONS", 10));
  std::printf("vault record crash test: seed %llu (replay with CCAL_CRASH_SEED=%llu), %d iterations\n",
              static_cast<unsigned long long>(seed), static_cast<unsigned long long>(seed),
              iterations);
  std::mt19937_64 rng(seed);
  TempDir dir("ccal-record-crash");
  std::vector<SecureHash> acknowledged;
  for (int it = 0; it < iterations; ++it) {
    CAPTURE(it);
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    uint64_t child_seed = rng() % 1'000'000 + 1;
    pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      ::close(fds[0]);
      recordForever(dir.path, fds[1], child_seed);
    }
    ::close(fds[1]);
    auto run_for = std::chrono::milliseconds(100 + rng() % 400);
    std::this_thread::sleep_for(run_for);
    ::kill(child, SIGKILL);
    // Every id the child wrote before it died was acknowledged as durable.
    uint8_t buf[32];
    size_t got = 0;
    for (;;) {
      ssize_t n = ::read(fds[0], buf + got, sizeof(buf) - got);
      if (n <= 0) break;
      got += static_cast<size_t>(n);
      if (got == sizeof(buf)) {
        acknowledged.push_back(SecureHash::fromBytes(ByteView(buf, 32)).value());
        got = 0;
      }
    }
    ::close(fds[0]);
    int wstatus = 0;
    REQUIRE(::waitpid(child, &wstatus, 0) == child);
    REQUIRE_MESSAGE(WIFSIGNALED(wstatus), "the child stopped by itself, status " << wstatus);

    World w;
    auto vault = open(w, dir.path);
    for (const auto& id : acknowledged) {
      CHECK_MESSAGE(vault->hasTransaction(id), "acknowledged transaction " << id.hex() << " lost");
    }
    Status consistent = vault->checkConsistency();
    CHECK_MESSAGE(consistent.ok(), (consistent.ok() ? "" : consistent.error().toString()));
    // Locks left by killed flows are released by recovery, as a node would.
    CHECK(vault->releaseAllExcept({}).ok());
    CHECK(vault->checkConsistency().ok());
  }
  std::printf("  %zu acknowledged transactions checked\n", acknowledged.size());
  CHECK(!acknowledged.empty());
}
