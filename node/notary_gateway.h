#pragma once
// How a member node's flows notarise: flows::NotaryGateway (what the
// built-in flows call, through a journaled ctx.call) over the node's
// notary::NotaryClient of each cluster in the network map.
//
// A request the flow built (filtered for a non-validating cluster, whole
// with its inputs' transactions for a validating one) is encoded as the
// cluster's NotarisationRequest and submitted; the client's answer --
// replica signatures that fulfil the cluster's key, or the conflicts that
// f+1 replicas agreed on -- becomes a flows::NotaryAnswer. A request whose
// form does not fit the cluster (filtered for a validating one, whole for a
// non-validating one) or names a notary the map does not have is answered
// with an error naming it, without asking any replica. Asking again for the
// same transaction gives the same answer (the replicas answer a transaction
// they have notarised with its signatures), as the flows need after a crash.
//
// Threading: notarise() may be called on any thread; the client runs on
// the executor, and `done` runs there.

#include <functional>
#include <optional>
#include <string_view>

#include "flows/io.h"
#include "flows/services.h"
#include "notary/notary_client.h"

namespace ccal::node {

class ClientNotaryGateway final : public flows::NotaryGateway {
 public:
  struct Cluster {
    notary::NotaryClient* client = nullptr;
    bool validating = false;
  };
  // The cluster named by an X.500 name (any spelling the map accepts), or nullopt.
  using Lookup = std::function<std::optional<Cluster>(std::string_view notary_x500)>;

  ClientNotaryGateway(flows::Executor& executor, Lookup lookup);

  Result<bool> validating(const Party& notary) const override;
  void notarise(const Party& notary, flows::NotaryRequest request, Done done) override;

  // The client's verified result as the flows' answer.
  static flows::NotaryAnswer answerOf(const notary::NotarisationResult& result);

 private:
  void notariseOnExecutor(const Party& notary, flows::NotaryRequest request, Done done);

  flows::Executor& executor_;
  Lookup lookup_;
};

}  // namespace ccal::node
