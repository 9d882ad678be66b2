#include "ledger/states.h"

#include <algorithm>
#include <optional>

namespace ccal {

namespace {

Result<Bytes> readData(capnp::Data::Reader d, std::string_view field, uint32_t max_bytes) {
  if (d.size() > max_bytes) {
    return makeError(Errc::too_large, std::string(field) + " is " + std::to_string(d.size()) +
                                          " bytes, over the limit of " + std::to_string(max_bytes));
  }
  return Bytes(d.begin(), d.end());
}

Result<std::vector<Key>> readKeys(capnp::List<schema::Key>::Reader list, std::string_view field,
                                  uint32_t max_count) {
  if (list.size() > max_count) {
    return makeError(Errc::too_large, std::string(field) + " has " + std::to_string(list.size()) +
                                          " keys, over the limit of " + std::to_string(max_count));
  }
  std::vector<Key> keys;
  keys.reserve(list.size());
  for (auto k : list) {
    auto key = Key::read(k);
    if (!key) return makeError(key.error().code, std::string(field) + ": " + key.error().message);
    keys.push_back(std::move(key).value());
  }
  return keys;
}

void writeKeys(capnp::List<schema::Key>::Builder list, const std::vector<Key>& keys) {
  for (size_t i = 0; i < keys.size(); ++i) keys[i].write(list[i]);
}


}  // namespace

std::string StateRef::toString() const { return txId.hex() + ":" + std::to_string(index); }

Result<StateRef> readStateRef(schema::StateRef::Reader reader) {
  auto id = SecureHash::fromBytes(asByteView(reader.getTxId()));
  if (!id) return makeError(id.error().code, "state ref tx id: " + id.error().message);
  return StateRef{*id, reader.getIndex()};
}

void writeStateRef(schema::StateRef::Builder builder, const StateRef& ref) {
  builder.setTxId(asData(ref.txId.view()));
  builder.setIndex(ref.index);
}

Result<Party> readParty(schema::Party::Reader reader, const ComponentLimits& limits) {
  auto name = readText(reader.getName(), "party name", limits.name_bytes_max);
  if (!name) return name.error();
  if (name->empty()) return makeError(Errc::malformed, "party name is empty");
  if (!reader.hasOwningKey()) return makeError(Errc::malformed, "party has no owning key");
  auto key = Key::read(reader.getOwningKey());
  if (!key) return makeError(key.error().code, "party owning key: " + key.error().message);
  return Party{std::move(name).value(), std::move(key).value()};
}

void writeParty(schema::Party::Builder builder, const Party& party) {
  builder.setName(party.name);
  party.owningKey.write(builder.initOwningKey());
}

Result<TransactionState> readTransactionState(schema::TransactionState::Reader reader,
                                              const ComponentLimits& limits) {
  TransactionState s;
  auto contract = readText(reader.getContract(), "contract name", limits.name_bytes_max);
  if (!contract) return contract.error();
  if (contract->empty()) return makeError(Errc::malformed, "state has no contract name");
  s.contract = std::move(contract).value();
  auto type = readText(reader.getStateType(), "state type", limits.name_bytes_max);
  if (!type) return type.error();
  if (type->empty()) return makeError(Errc::malformed, "state has no state type");
  s.stateType = std::move(type).value();
  auto data = readData(reader.getData(), "state data", limits.state_data_bytes_max);
  if (!data) return data.error();
  s.data = std::move(data).value();
  auto participants = readKeys(reader.getParticipants(), "participants", limits.participants_max);
  if (!participants) return participants.error();
  s.participants = std::move(participants).value();
  if (!reader.hasNotary()) return makeError(Errc::malformed, "state has no notary");
  auto notary = readParty(reader.getNotary(), limits);
  if (!notary) return makeError(notary.error().code, "state notary: " + notary.error().message);
  s.notary = std::move(notary).value();
  if (reader.getHasEncumbrance()) {
    s.encumbrance = reader.getEncumbrance();
  } else if (reader.getEncumbrance() != 0) {
    return makeError(Errc::not_canonical, "encumbrance index set without hasEncumbrance");
  }
  auto constraint = reader.getConstraint();
  switch (constraint.which()) {
    case schema::ContractConstraint::HASH: {
      auto hash = SecureHash::fromBytes(asByteView(constraint.getHash()));
      if (!hash) return makeError(hash.error().code, "contract constraint: " + hash.error().message);
      s.constraint.codeHash = *hash;
      break;
    }
    case schema::ContractConstraint::ALWAYS_ACCEPT:
      s.constraint.alwaysAccept = true;
      break;
    default:
      return makeError(Errc::malformed, "unknown contract constraint kind");
  }
  return s;
}

void writeTransactionState(schema::TransactionState::Builder b, const TransactionState& s) {
  b.setContract(s.contract);
  b.setStateType(s.stateType);
  b.setData(asData(s.data));
  writeKeys(b.initParticipants(static_cast<unsigned>(s.participants.size())), s.participants);
  writeParty(b.initNotary(), s.notary);
  if (s.encumbrance) {
    b.setHasEncumbrance(true);
    b.setEncumbrance(*s.encumbrance);
  }
  if (s.constraint.alwaysAccept) {
    b.initConstraint().setAlwaysAccept();
  } else {
    b.initConstraint().setHash(asData(s.constraint.codeHash.view()));
  }
}

Bytes encodeStateRef(const StateRef& ref) {
  return buildCanonical<schema::StateRef>([&](auto b) { writeStateRef(b, ref); });
}

Bytes encodeTransactionState(const TransactionState& state) {
  return buildCanonical<schema::TransactionState>([&](auto b) { writeTransactionState(b, state); });
}

Bytes encodeCommandValue(const Command& command) {
  return buildCanonical<schema::Command>([&](auto b) {
    b.setType(command.type);
    b.setData(asData(command.data));
  });
}

Bytes encodeCommandSigners(const Command& command) {
  return buildCanonical<schema::CommandSigners>([&](auto b) {
    writeKeys(b.initSigners(static_cast<unsigned>(command.signers.size())), command.signers);
  });
}

Bytes encodeParty(const Party& party) {
  return buildCanonical<schema::Party>([&](auto b) { writeParty(b, party); });
}

Bytes encodeTimeWindow(const TimeWindow& w) {
  return buildCanonical<schema::TimeWindow>([&](auto b) {
    if (w.fromMicros) {
      b.setHasFrom(true);
      b.setFromMicros(*w.fromMicros);
    }
    if (w.untilMicros) {
      b.setHasUntil(true);
      b.setUntilMicros(*w.untilMicros);
    }
  });
}

// Attachment ids and the parameters hash share one layout (a single Data field).
Bytes encodeHashComponent(const SecureHash& hash) {
  return buildCanonical<schema::AttachmentId>([&](auto b) { b.setHash(asData(hash.view())); });
}

Result<StateRef> decodeStateRef(ByteView bytes) {
  return decodeMessage<schema::StateRef>(bytes, "state ref", Canonical::required,
                                         [](auto r) { return readStateRef(r); });
}

Result<TransactionState> decodeTransactionState(ByteView bytes, const ComponentLimits& limits) {
  return decodeMessage<schema::TransactionState>(
      bytes, "output state", Canonical::required,
      [&](auto r) { return readTransactionState(r, limits); });
}

Result<Command> decodeCommandValue(ByteView bytes, const ComponentLimits& limits) {
  return decodeMessage<schema::Command>(
      bytes, "command", Canonical::required, [&](auto r) -> Result<Command> {
        auto type = readText(r.getType(), "command type", limits.name_bytes_max);
        if (!type) return type.error();
        if (type->empty()) return makeError(Errc::malformed, "command has no type");
        auto data = readData(r.getData(), "command data", limits.command_data_bytes_max);
        if (!data) return data.error();
        return Command{std::move(type).value(), std::move(data).value(), {}};
      });
}

Result<std::vector<Key>> decodeCommandSigners(ByteView bytes, const ComponentLimits& limits) {
  return decodeMessage<schema::CommandSigners>(
      bytes, "command signers", Canonical::required,
      [&](auto r) -> Result<std::vector<Key>> {
        auto keys = readKeys(r.getSigners(), "command signers", limits.signers_max);
        if (!keys) return keys.error();
        if (keys->empty()) return makeError(Errc::malformed, "a command has no signers");
        return keys;
      });
}

Result<Party> decodeParty(ByteView bytes, const ComponentLimits& limits) {
  // Most parties decoded in a row are the same one (a notary's name and
  // composite key in every transaction and notarisation request it sees):
  // the last successful decode on this thread is kept, and the same bytes
  // under the same limits give the same Party without decoding again.
  struct Last {
    Bytes bytes;
    ComponentLimits limits;
    Party party;
  };
  thread_local std::optional<Last> last;
  if (last && last->limits == limits &&
      std::equal(bytes.begin(), bytes.end(), last->bytes.begin(), last->bytes.end())) {
    return last->party;
  }
  auto party = decodeMessage<schema::Party>(bytes, "party", Canonical::required,
                                            [&](auto r) { return readParty(r, limits); });
  if (party) last = Last{Bytes(bytes.begin(), bytes.end()), limits, *party};
  return party;
}

Result<TimeWindow> decodeTimeWindow(ByteView bytes) {
  return decodeMessage<schema::TimeWindow>(
      bytes, "time window", Canonical::required, [](auto r) -> Result<TimeWindow> {
        TimeWindow w;
        if (r.getHasFrom()) w.fromMicros = r.getFromMicros();
        if (r.getHasUntil()) w.untilMicros = r.getUntilMicros();
        if ((!r.getHasFrom() && r.getFromMicros() != 0) ||
            (!r.getHasUntil() && r.getUntilMicros() != 0)) {
          return makeError(Errc::not_canonical, "a time window bound is set but marked absent");
        }
        if (!w.fromMicros && !w.untilMicros) {
          return makeError(Errc::malformed, "a time window needs at least one bound");
        }
        if (w.fromMicros && w.untilMicros && *w.fromMicros >= *w.untilMicros) {
          return makeError(Errc::malformed, "a time window's start is not before its end");
        }
        return w;
      });
}

Result<SecureHash> decodeHashComponent(ByteView bytes, std::string_view what) {
  return decodeMessage<schema::AttachmentId>(
      bytes, what, Canonical::required, [&](auto r) -> Result<SecureHash> {
        auto h = SecureHash::fromBytes(asByteView(r.getHash()));
        if (!h) return makeError(h.error().code, std::string(what) + ": " + h.error().message);
        return h;
      });
}

}  // namespace ccal
