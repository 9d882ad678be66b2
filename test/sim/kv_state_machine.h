#pragma once
// A real, small state machine for the PBFT simulation tests: "consume" keys.
// A request names an id and some keys; if none of them is taken, all become
// taken by that id (reply "ok"); if any is taken by another id, nothing
// changes (reply "taken <key> <owner>"); keys taken by the same id again
// are an idempotent "ok", like re-notarising a transaction. State lives in
// LMDB sub-databases of the member's Store (kv_keys, kv_effects, kv_meta),
// each batch in one write with its effects and lastExecuted.
//
// Request body (text): "<id> <key>[,<key>...]"; a body that does not parse
// is refused before ordering with the reply "refused <why>". Effects (text, canonical):
// the "<key>=<id>\n" lines of keys the batch took, sorted.

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "notary/state_machine.h"
#include "vault/store.h"

namespace ccal::sim {

class KvStateMachine final : public notary::StateMachine {
 public:
  static const std::vector<std::string>& dbNames();
  static Bytes requestBody(const std::string& id, const std::vector<std::string>& keys);

  explicit KvStateMachine(vault::Store& store);

  Status check(const notary::Request& request) const override;
  // "refused <message>": the answer to a request check() refuses.
  Bytes rejection(const notary::Request& request, const Error& error) const override;
  using notary::StateMachine::execute;
  // decided (if given) runs on the Store's writer thread once the batch's
  // outcome is settled, with a copy of what done then carries.
  void execute(const notary::Batch& batch, std::function<void(Result<notary::Executed>)> done,
               std::function<void(const notary::Executed&)> decided) override;
  void applyEffects(uint64_t seq, ByteView effects, std::function<void(Status)> done) override;
  Result<Bytes> effects(uint64_t seq) const override;
  uint64_t lastExecuted() const override { return last_executed_.load(); }

  // The owner of every key taken (for the test's invariants).
  std::map<std::string, std::string> keys() const;
  // Blocks until every write queued so far has called its done().
  void quiesce();

 private:
  struct Parsed {
    std::string id;
    std::vector<std::string> keys;
  };
  static Result<Parsed> parse(ByteView body);
  void track(int delta);

  vault::Store& store_;
  std::atomic<uint64_t> last_executed_{0};
  uint64_t last_queued_ =
      0;              // the last batch given to execute() or applyEffects() (caller's thread)
  std::mutex mutex_;  // guards in_flight_
  std::condition_variable drained_;
  uint64_t in_flight_ = 0;
};

}  // namespace ccal::sim
