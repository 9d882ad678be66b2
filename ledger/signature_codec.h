#pragma once
// The one encoding of a DigitalSignature (schemas/ledger.capnp), shared by
// every message that carries one: transactions, notary replies, the network
// map.

#include "ledger/canonical_writer.h"
#include "ledger/crypto.h"
#include "schemas/ledger.capnp.h"

namespace ccal {

void writeSignature(schema::DigitalSignature::Builder builder, const DigitalSignature& signature);
// The same signature in canonical form, pointed to from `pointer_word` of a
// message being written directly (ledger/canonical_writer.h).
void writeSignature(CanonicalWriter& out, size_t pointer_word, const DigitalSignature& signature);
// Checks the key, scheme, version, length and the batch proof's shape;
// errors name the part that is wrong.
Result<DigitalSignature> readSignature(schema::DigitalSignature::Reader reader);

}  // namespace ccal
