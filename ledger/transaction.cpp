#include "ledger/transaction.h"

#include <algorithm>
#include <set>

#include "ledger/merkle.h"

namespace ccal {

namespace {

constexpr std::string_view signature_domain = "CCAL transaction signature";

Error componentError(ComponentGroup g, size_t index, const Error& e) {
  return makeError(e.code, std::string(componentGroupName(g)) + "[" + std::to_string(index) +
                               "]: " + e.message);
}

Status checkCount(ComponentGroup g, size_t count, uint32_t max) {
  if (count > max) {
    return makeError(Errc::too_large, std::string(componentGroupName(g)) + " has " +
                                          std::to_string(count) + " components, over the limit of " +
                                          std::to_string(max));
  }
  return {};
}


}  // namespace

const char* componentGroupName(ComponentGroup group) {
  switch (group) {
    case ComponentGroup::inputs: return "inputs";
    case ComponentGroup::references: return "references";
    case ComponentGroup::outputs: return "outputs";
    case ComponentGroup::commands: return "commands";
    case ComponentGroup::attachments: return "attachments";
    case ComponentGroup::notary: return "notary";
    case ComponentGroup::time_window: return "time window";
    case ComponentGroup::signers: return "signers";
    case ComponentGroup::parameters: return "parameters";
  }
  return "unknown group";
}

Bytes signableBytes(const SecureHash& tx_id, uint16_t version) {
  // Sized up front (and filled by copy) rather than grown: it is built on
  // every signature check.
  Bytes out(signature_domain.size() + 2 + SecureHash::size_bytes);
  std::copy(signature_domain.begin(), signature_domain.end(), out.begin());
  out[signature_domain.size()] = static_cast<uint8_t>(version);
  out[signature_domain.size() + 1] = static_cast<uint8_t>(version >> 8);
  std::copy(tx_id.bytes().begin(), tx_id.bytes().end(), out.begin() + signature_domain.size() + 2);
  return out;
}

Result<WireTransaction> WireTransaction::fromGroups(Groups groups, ByteView privacy_salt,
                                                    const TransactionLimits& limits) {
  if (privacy_salt.size() != privacy_salt_bytes) {
    return makeError(Errc::bad_length, "privacy salt is 32 bytes, got " +
                                           std::to_string(privacy_salt.size()));
  }
  WireTransaction tx;
  tx.groups_ = std::move(groups);
  std::copy(privacy_salt.begin(), privacy_salt.end(), tx.salt_.begin());
  CCAL_TRY(tx.decodeComponents(limits));
  tx.computeId();
  return tx;
}

Status WireTransaction::decodeComponents(const TransactionLimits& limits) {
  using G = ComponentGroup;
  const auto& cl = limits.component;
  CCAL_TRY(checkCount(G::inputs, group(G::inputs).size(), limits.inputs_max));
  CCAL_TRY(checkCount(G::references, group(G::references).size(), limits.references_max));
  CCAL_TRY(checkCount(G::outputs, group(G::outputs).size(), limits.outputs_max));
  CCAL_TRY(checkCount(G::commands, group(G::commands).size(), limits.commands_max));
  CCAL_TRY(checkCount(G::signers, group(G::signers).size(), limits.commands_max));
  CCAL_TRY(checkCount(G::attachments, group(G::attachments).size(), limits.attachments_max));
  CCAL_TRY(checkCount(G::notary, group(G::notary).size(), 1));
  CCAL_TRY(checkCount(G::time_window, group(G::time_window).size(), 1));
  CCAL_TRY(checkCount(G::parameters, group(G::parameters).size(), 1));

  auto refs = [&](G g, std::vector<StateRef>& out) -> Status {
    const auto& list = group(g);
    out.reserve(list.size());
    for (size_t i = 0; i < list.size(); ++i) {
      auto ref = decodeStateRef(list[i]);
      if (!ref) return componentError(g, i, ref.error());
      out.push_back(*ref);
    }
    return {};
  };
  CCAL_TRY(refs(G::inputs, inputs_));
  CCAL_TRY(refs(G::references, references_));

  const auto& outputs = group(G::outputs);
  outputs_.reserve(outputs.size());
  for (size_t i = 0; i < outputs.size(); ++i) {
    auto state = decodeTransactionState(outputs[i], cl);
    if (!state) return componentError(G::outputs, i, state.error());
    outputs_.push_back(std::move(state).value());
  }

  const auto& commands = group(G::commands);
  const auto& signers = group(G::signers);
  if (commands.size() != signers.size()) {
    return makeError(Errc::invalid_transaction,
                     std::to_string(commands.size()) + " commands but " +
                         std::to_string(signers.size()) + " signer lists");
  }
  if (commands.empty()) return makeError(Errc::invalid_transaction, "a transaction needs a command");
  commands_.reserve(commands.size());
  for (size_t i = 0; i < commands.size(); ++i) {
    auto command = decodeCommandValue(commands[i], cl);
    if (!command) return componentError(G::commands, i, command.error());
    auto keys = decodeCommandSigners(signers[i], cl);
    if (!keys) return componentError(G::signers, i, keys.error());
    command->signers = std::move(keys).value();
    commands_.push_back(std::move(command).value());
  }

  const auto& attachments = group(G::attachments);
  for (size_t i = 0; i < attachments.size(); ++i) {
    auto hash = decodeHashComponent(attachments[i], "attachment");
    if (!hash) return componentError(G::attachments, i, hash.error());
    attachments_.push_back(*hash);
  }
  if (!group(G::notary).empty()) {
    auto notary = decodeParty(group(G::notary)[0], cl);
    if (!notary) return componentError(G::notary, 0, notary.error());
    notary_ = std::move(notary).value();
  }
  if (!group(G::time_window).empty()) {
    auto window = decodeTimeWindow(group(G::time_window)[0]);
    if (!window) return componentError(G::time_window, 0, window.error());
    time_window_ = *window;
  }
  if (!group(G::parameters).empty()) {
    auto hash = decodeHashComponent(group(G::parameters)[0], "network parameters hash");
    if (!hash) return componentError(G::parameters, 0, hash.error());
    parameters_hash_ = *hash;
  }

  // Ledger rules that need no other transaction.
  auto invalid = [](std::string why) { return makeError(Errc::invalid_transaction, std::move(why)); };
  std::set<StateRef> seen;
  for (const auto& ref : inputs_) {
    if (!seen.insert(ref).second) return invalid("input " + ref.toString() + " appears twice");
  }
  for (const auto& ref : references_) {
    if (!seen.insert(ref).second) {
      return invalid("reference " + ref.toString() + " appears twice or is also an input");
    }
  }
  std::set<SecureHash> seen_attachments(attachments_.begin(), attachments_.end());
  if (seen_attachments.size() != attachments_.size()) return invalid("an attachment appears twice");
  if (!notary_ && (!inputs_.empty() || !references_.empty())) {
    return invalid("a transaction with inputs or references must name a notary");
  }
  if (!notary_ && time_window_) return invalid("a transaction with a time window must name a notary");
  for (size_t i = 0; i < outputs_.size(); ++i) {
    const auto& out = outputs_[i];
    if (notary_ && !(out.notary == *notary_)) {
      return invalid("output " + std::to_string(i) + " names notary '" + out.notary.name +
                     "', not the transaction's notary '" + notary_->name + "'");
    }
    if (out.encumbrance && (*out.encumbrance >= outputs_.size() || *out.encumbrance == i)) {
      return invalid("output " + std::to_string(i) + " has encumbrance index " +
                     std::to_string(*out.encumbrance) + ", which is not another output");
    }
  }
  return {};
}

SecureHash computeTransactionId(const WireTransaction::Groups& groups, ByteView privacy_salt,
                                std::array<SecureHash, component_group_count>* group_hashes) {
  std::array<SecureHash, component_group_count> hashes;
  std::vector<SecureHash> leaves;
  for (uint32_t g = 0; g < component_group_count; ++g) {
    const auto& components = groups[g];
    leaves.clear();
    for (uint32_t i = 0; i < components.size(); ++i) {
      leaves.push_back(merkle::leaf(merkle::nonce(privacy_salt, g, i), components[i]));
    }
    hashes[g] = merkle::group(static_cast<uint32_t>(components.size()), merkle::root(leaves));
  }
  if (group_hashes != nullptr) *group_hashes = hashes;
  return merkle::root(hashes);
}

void WireTransaction::computeId() { id_ = computeTransactionId(groups_, privacySalt(), &group_hashes_); }

void WireTransaction::write(schema::WireTransaction::Builder builder) const {
  unsigned present = 0;
  for (const auto& g : groups_) present += g.empty() ? 0 : 1;
  auto groups = builder.initComponentGroups(present);
  unsigned at = 0;
  for (uint32_t g = 0; g < component_group_count; ++g) {
    if (groups_[g].empty()) continue;
    auto out = groups[at++];
    out.setGroupIndex(g);
    auto components = out.initComponents(static_cast<unsigned>(groups_[g].size()));
    for (size_t i = 0; i < groups_[g].size(); ++i) components.set(i, asData(groups_[g][i]));
  }
  builder.setPrivacySalt(asData(privacySalt()));
}

Bytes WireTransaction::encode() const {
  return buildCanonical<schema::WireTransaction>([&](auto b) { write(b); });
}

Result<WireTransaction> WireTransaction::read(schema::WireTransaction::Reader reader,
                                              const TransactionLimits& limits) {
  Groups groups;
  int64_t last = -1;
  for (auto group : reader.getComponentGroups()) {
    uint32_t g = group.getGroupIndex();
    if (g >= component_group_count) {
      return makeError(Errc::malformed, "unknown component group index " + std::to_string(g));
    }
    if (static_cast<int64_t>(g) <= last) {
      return makeError(Errc::not_canonical, "component groups are not in ascending order");
    }
    last = g;
    auto components = group.getComponents();
    if (components.size() == 0) {
      return makeError(Errc::not_canonical,
                       std::string("empty component group ") +
                           componentGroupName(static_cast<ComponentGroup>(g)) + " is present");
    }
    auto& out = groups[g];
    out.reserve(components.size());
    for (auto c : components) out.emplace_back(c.begin(), c.end());
  }
  return fromGroups(std::move(groups), asByteView(reader.getPrivacySalt()), limits);
}

Result<WireTransaction> WireTransaction::decode(ByteView bytes, const TransactionLimits& limits) {
  ReadLimits read_limits;
  read_limits.message_bytes_max = limits.transaction_bytes_max;
  return decodeMessage<schema::WireTransaction>(
      bytes, "transaction", Canonical::required, [&](auto r) { return read(r, limits); },
      read_limits);
}

bool WireTransaction::needsNotarySignature() const {
  return notary_ && (!inputs_.empty() || !references_.empty() || time_window_);
}

std::vector<Key> WireTransaction::requiredSigningKeys() const {
  std::vector<Key> keys;
  for (const auto& c : commands_) {
    for (const auto& k : c.signers) {
      if (std::find(keys.begin(), keys.end(), k) == keys.end()) keys.push_back(k);
    }
  }
  if (needsNotarySignature() &&
      std::find(keys.begin(), keys.end(), notary_->owningKey) == keys.end()) {
    keys.push_back(notary_->owningKey);
  }
  return keys;
}

// --- builder -----------------------------------------------------------------

TransactionBuilder& TransactionBuilder::setNotary(Party notary) {
  notary_ = std::move(notary);
  return *this;
}
TransactionBuilder& TransactionBuilder::addInput(const StateRef& ref) {
  inputs_.push_back(ref);
  return *this;
}
TransactionBuilder& TransactionBuilder::addReference(const StateRef& ref) {
  references_.push_back(ref);
  return *this;
}
TransactionBuilder& TransactionBuilder::addOutput(TransactionState state) {
  outputs_.push_back(std::move(state));
  return *this;
}
TransactionBuilder& TransactionBuilder::addCommand(Command command) {
  commands_.push_back(std::move(command));
  return *this;
}
TransactionBuilder& TransactionBuilder::addAttachment(const SecureHash& hash) {
  attachments_.push_back(hash);
  return *this;
}
TransactionBuilder& TransactionBuilder::setTimeWindow(const TimeWindow& window) {
  time_window_ = window;
  return *this;
}
TransactionBuilder& TransactionBuilder::setNetworkParametersHash(const SecureHash& hash) {
  parameters_hash_ = hash;
  return *this;
}
TransactionBuilder& TransactionBuilder::setPrivacySalt(ByteView salt) {
  salt_ = Bytes(salt.begin(), salt.end());
  return *this;
}

Result<WireTransaction> TransactionBuilder::build(const TransactionLimits& limits) const {
  using G = ComponentGroup;
  WireTransaction::Groups groups;
  auto at = [&](G g) -> std::vector<Bytes>& { return groups[static_cast<uint32_t>(g)]; };
  for (const auto& r : inputs_) at(G::inputs).push_back(encodeStateRef(r));
  for (const auto& r : references_) at(G::references).push_back(encodeStateRef(r));
  for (const auto& s : outputs_) at(G::outputs).push_back(encodeTransactionState(s));
  for (const auto& c : commands_) {
    at(G::commands).push_back(encodeCommandValue(c));
    at(G::signers).push_back(encodeCommandSigners(c));
  }
  for (const auto& a : attachments_) at(G::attachments).push_back(encodeHashComponent(a));
  if (notary_) at(G::notary).push_back(encodeParty(*notary_));
  if (time_window_) at(G::time_window).push_back(encodeTimeWindow(*time_window_));
  if (parameters_hash_) at(G::parameters).push_back(encodeHashComponent(*parameters_hash_));
  Bytes salt = salt_ ? *salt_ : randomBytes(privacy_salt_bytes);
  return WireTransaction::fromGroups(std::move(groups), salt, limits);
}

}  // namespace ccal
