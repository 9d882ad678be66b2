#include "node/notary_gateway.h"

#include <utility>

#include "notary/notarisation_messages.h"

namespace ccal::node {

ClientNotaryGateway::ClientNotaryGateway(flows::Executor& executor, Lookup lookup)
    : executor_(executor), lookup_(std::move(lookup)) {
  CCAL_ASSERT(lookup_ != nullptr);
}

Result<bool> ClientNotaryGateway::validating(const Party& notary) const {
  auto cluster = lookup_(notary.name);
  if (!cluster) {
    return makeError(Errc::not_found, "notary '" + notary.name + "' is not in the network map");
  }
  return cluster->validating;
}

void ClientNotaryGateway::notarise(const Party& notary, flows::NotaryRequest request, Done done) {
  CCAL_ASSERT(done != nullptr);
  executor_.post([this, notary, request = std::move(request), done = std::move(done)]() mutable {
    notariseOnExecutor(notary, std::move(request), std::move(done));
  });
}

void ClientNotaryGateway::notariseOnExecutor(const Party& notary, flows::NotaryRequest request,
                                             Done done) {
  auto cluster = lookup_(notary.name);
  if (!cluster || cluster->client == nullptr) {
    return done(makeError(Errc::not_found, "notarisation of " + request.txId.hex() + ": notary '" +
                                               notary.name + "' is not in the network map"));
  }
  Bytes body;
  if (cluster->validating) {
    if (!request.full) {
      return done(makeError(Errc::malformed, "notarisation of " + request.txId.hex() + ": notary '" +
                                                 notary.name +
                                                 "' is validating and needs the whole transaction"));
    }
    if (request.full->id() != request.txId) {
      return done(makeError(Errc::id_mismatch, "notarisation of " + request.txId.hex() +
                                                   ": the transaction sent is " + request.full->id().hex()));
    }
    body = notary::NotarisationRequest::validating(notary.name, std::move(*request.full),
                                                   std::move(request.dependencies))
               .encode();
  } else {
    if (!request.filtered) {
      return done(makeError(Errc::malformed, "notarisation of " + request.txId.hex() + ": notary '" +
                                                 notary.name +
                                                 "' is non-validating and takes the filtered transaction"));
    }
    if (request.filtered->id() != request.txId) {
      return done(makeError(Errc::id_mismatch, "notarisation of " + request.txId.hex() +
                                                   ": the filtered transaction is " +
                                                   request.filtered->id().hex()));
    }
    body = notary::NotarisationRequest::nonValidating(notary.name, std::move(*request.filtered)).encode();
  }
  cluster->client->submit(request.txId, std::move(body),
                          [done = std::move(done)](Result<notary::NotarisationResult> result) {
                            if (!result) return done(result.error());
                            done(answerOf(*result));
                          });
}

flows::NotaryAnswer ClientNotaryGateway::answerOf(const notary::NotarisationResult& result) {
  flows::NotaryAnswer answer;
  if (result.kind == notary::NotarisationResult::Kind::notarised) {
    answer.signatures = result.signatures;
    return answer;
  }
  for (const auto& c : result.conflicts) {
    // The replicas name the consuming transaction by the hash of its id
    // (notary/notarisation_messages.h: they do not reveal the id itself).
    answer.conflicts.push_back(flows::NotaryConflictInfo{c.ref, c.consumingTxIdHash});
  }
  return answer;
}

}  // namespace ccal::node
