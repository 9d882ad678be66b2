#include "flows/builtin_messages.h"

#include <algorithm>

#include "ledger/capnp_io.h"
#include "ledger/signature_codec.h"
#include "schemas/builtin_flows.capnp.h"

namespace ccal::flows {

namespace {

using Kind = BuiltinMessage::Kind;
namespace sb = schema::builtin;

Bytes bytesOf(capnp::Data::Reader d) { return Bytes(d.begin(), d.end()); }

Result<SecureHash> hashOf(capnp::Data::Reader d, const std::string& what) {
  auto h = SecureHash::fromBytes(asByteView(d));
  if (!h) return makeError(Errc::malformed, what + " is not a 32-byte hash");
  return h;
}

template <class List>
Status checkCount(const List& list, uint32_t max, const std::string& what) {
  if (list.size() > max) {
    return makeError(Errc::too_large, std::to_string(list.size()) + " " + what +
                                          " is over the limit of " + std::to_string(max));
  }
  return {};
}

Result<std::vector<DigitalSignature>> readSignatures(
    capnp::List<schema::DigitalSignature>::Reader list, uint32_t max) {
  if (auto s = checkCount(list, max, "signatures"); !s) return s.error();
  std::vector<DigitalSignature> out;
  for (uint32_t i = 0; i < list.size(); ++i) {
    auto sig = readSignature(list[i]);
    if (!sig) {
      return makeError(sig.error().code,
                       "signature " + std::to_string(i) + ": " + sig.error().message);
    }
    out.push_back(std::move(sig).value());
  }
  return out;
}

Result<std::vector<std::string>> readNames(capnp::List<capnp::Text>::Reader list,
                                           const BuiltinMessageLimits& limits, const std::string& what) {
  if (auto s = checkCount(list, limits.list_entries_max, what); !s) return s.error();
  std::vector<std::string> out;
  for (uint32_t i = 0; i < list.size(); ++i) {
    if (list[i].size() == 0)
      return makeError(Errc::malformed, what + " " + std::to_string(i) + " is empty");
    auto name = readText(list[i], what + " " + std::to_string(i), limits.party_name_bytes_max);
    if (!name) return name.error();
    out.push_back(std::move(name).value());
  }
  return out;
}

void writeNames(capnp::List<capnp::Text>::Builder list, const std::vector<std::string>& names) {
  for (uint32_t i = 0; i < names.size(); ++i) list.set(i, names[i]);
}

void writeSignatures(capnp::List<schema::DigitalSignature>::Builder list,
                     const std::vector<DigitalSignature>& sigs) {
  for (uint32_t i = 0; i < sigs.size(); ++i) writeSignature(list[i], sigs[i]);
}

Kind kindOf(sb::BuiltinMessage::Which which) {
  switch (which) {
    case sb::BuiltinMessage::SIGN_REQUEST: return Kind::sign_request;
    case sb::BuiltinMessage::SIGNATURES: return Kind::signatures;
    case sb::BuiltinMessage::FETCH: return Kind::fetch;
    case sb::BuiltinMessage::TRANSACTIONS: return Kind::transactions;
    case sb::BuiltinMessage::FINALITY: return Kind::finality;
    case sb::BuiltinMessage::RECORDED: return Kind::recorded;
  }
  return Kind::recorded;
}

std::string kindList(const std::vector<Kind>& kinds) {
  std::string out;
  for (size_t i = 0; i < kinds.size(); ++i) {
    if (i > 0) out += i + 1 == kinds.size() ? " or " : ", ";
    out += builtinMessageKindName(kinds[i]);
  }
  return out;
}

}  // namespace

const char* builtinMessageKindName(BuiltinMessage::Kind kind) {
  switch (kind) {
    case Kind::sign_request: return "a sign request";
    case Kind::signatures: return "signatures";
    case Kind::fetch: return "a fetch request";
    case Kind::transactions: return "transactions";
    case Kind::finality: return "a finality request";
    case Kind::recorded: return "a recorded answer";
  }
  return "an unknown message";
}

Bytes encodeBuiltinMessage(const BuiltinMessage& m) {
  return buildCanonical<sb::BuiltinMessage>([&](auto b) {
    switch (m.kind) {
      case Kind::sign_request: {
        auto r = b.initSignRequest();
        r.setCheck(m.check);
        CCAL_ASSERT(m.stx.has_value());
        r.setTransaction(asData(m.stx->encode()));
        writeNames(r.initObservers(static_cast<uint32_t>(m.observers.size())), m.observers);
        break;
      }
      case Kind::signatures:
        writeSignatures(b.initSignatures(static_cast<uint32_t>(m.signatures.size())), m.signatures);
        break;
      case Kind::fetch: {
        auto l = b.initFetch(static_cast<uint32_t>(m.ids.size()));
        for (uint32_t i = 0; i < m.ids.size(); ++i) {
          l.set(i, kj::ArrayPtr<const kj::byte>(m.ids[i].bytes().data(), 32));
        }
        break;
      }
      case Kind::transactions: {
        auto l = b.initTransactions(static_cast<uint32_t>(m.transactions.size()));
        for (uint32_t i = 0; i < m.transactions.size(); ++i) l.set(i, asData(m.transactions[i]));
        break;
      }
      case Kind::finality: {
        auto f = b.initFinality();
        CCAL_ASSERT(m.stx.has_value());
        f.setTransaction(asData(m.stx->encode()));
        f.setObserver(m.observer);
        writeNames(f.initRecipients(static_cast<uint32_t>(m.recipients.size())), m.recipients);
        break;
      }
      case Kind::recorded: b.setRecorded(); break;
    }
  });
}

Result<BuiltinMessage> decodeBuiltinMessage(ByteView bytes, const std::vector<Kind>& accepted,
                                            const BuiltinMessageLimits& limits) {
  ReadLimits read_limits;
  read_limits.message_bytes_max =
      static_cast<size_t>(limits.transaction.transaction_bytes_max) * 2 + (64u << 10);
  return decodeMessage<sb::BuiltinMessage>(
      bytes, "built-in flow message", Canonical::required,
      [&](sb::BuiltinMessage::Reader r) -> Result<BuiltinMessage> {
        BuiltinMessage m;
        m.kind = kindOf(r.which());
        if (std::find(accepted.begin(), accepted.end(), m.kind) == accepted.end()) {
          return makeError(Errc::malformed,
                           std::string(builtinMessageKindName(m.kind)) + " where " +
                               kindList(accepted) + " was expected");
        }
        switch (m.kind) {
          case Kind::sign_request: {
            auto q = r.getSignRequest();
            CCAL_TRY_ASSIGN(
                m.check, readText(q.getCheck(), "the check's name", limits.check_name_bytes_max));
            auto stx = SignedTransaction::decode(asByteView(q.getTransaction()), limits.transaction);
            if (!stx) return makeError(stx.error().code, "transaction: " + stx.error().message);
            m.stx = std::move(stx).value();
            auto observers = readNames(q.getObservers(), limits, "observer");
            if (!observers) return observers.error();
            m.observers = std::move(observers).value();
            break;
          }
          case Kind::signatures: {
            auto sigs = readSignatures(r.getSignatures(), limits.list_entries_max);
            if (!sigs) return sigs.error();
            m.signatures = std::move(sigs).value();
            break;
          }
          case Kind::fetch: {
            auto l = r.getFetch();
            if (auto s = checkCount(l, limits.list_entries_max, "ids"); !s) return s.error();
            for (uint32_t i = 0; i < l.size(); ++i) {
              auto h = hashOf(l[i], "id " + std::to_string(i));
              if (!h) return h.error();
              m.ids.push_back(*h);
            }
            break;
          }
          case Kind::transactions: {
            auto l = r.getTransactions();
            if (auto s = checkCount(l, limits.list_entries_max, "transactions"); !s) {
              return s.error();
            }
            for (uint32_t i = 0; i < l.size(); ++i) m.transactions.push_back(bytesOf(l[i]));
            break;
          }
          case Kind::finality: {
            auto f = r.getFinality();
            auto stx = SignedTransaction::decode(asByteView(f.getTransaction()), limits.transaction);
            if (!stx) return makeError(stx.error().code, "transaction: " + stx.error().message);
            m.stx = std::move(stx).value();
            m.observer = f.getObserver();
            auto recipients = readNames(f.getRecipients(), limits, "recipient");
            if (!recipients) return recipients.error();
            m.recipients = std::move(recipients).value();
            break;
          }
          case Kind::recorded: break;
        }
        return m;
      },
      read_limits);
}

Bytes encodeIdList(const std::vector<SecureHash>& ids) {
  return buildCanonical<sb::IdList>([&](auto b) {
    auto l = b.initIds(static_cast<uint32_t>(ids.size()));
    for (uint32_t i = 0; i < ids.size(); ++i) {
      l.set(i, kj::ArrayPtr<const kj::byte>(ids[i].bytes().data(), 32));
    }
  });
}

Result<std::vector<SecureHash>> decodeIdList(ByteView bytes) {
  return decodeMessage<sb::IdList>(
      bytes, "id list", Canonical::required, [](auto r) -> Result<std::vector<SecureHash>> {
        std::vector<SecureHash> out;
        auto l = r.getIds();
        for (uint32_t i = 0; i < l.size(); ++i) {
          auto h = hashOf(l[i], "id " + std::to_string(i));
          if (!h) return h.error();
          out.push_back(*h);
        }
        return out;
      });
}

Bytes encodeTransactionList(const std::vector<std::optional<SignedTransaction>>& txs) {
  return buildCanonical<sb::TransactionList>([&](auto b) {
    auto l = b.initTransactions(static_cast<uint32_t>(txs.size()));
    for (uint32_t i = 0; i < txs.size(); ++i) {
      if (txs[i]) {
        l.set(i, asData(txs[i]->encode()));
      } else {
        l.set(i, kj::ArrayPtr<const kj::byte>());
      }
    }
  });
}

Result<std::vector<std::optional<SignedTransaction>>> decodeTransactionList(ByteView bytes) {
  ReadLimits read_limits;
  read_limits.message_bytes_max = 256u << 20;
  read_limits.traversal_words_max = 64u << 20;
  return decodeMessage<sb::TransactionList>(
      bytes, "transaction list", Canonical::required,
      [](auto r) -> Result<std::vector<std::optional<SignedTransaction>>> {
        std::vector<std::optional<SignedTransaction>> out;
        auto l = r.getTransactions();
        for (uint32_t i = 0; i < l.size(); ++i) {
          if (l[i].size() == 0) {
            out.emplace_back(std::nullopt);
            continue;
          }
          auto stx = SignedTransaction::decode(asByteView(l[i]));
          if (!stx) {
            return makeError(stx.error().code,
                             "transaction " + std::to_string(i) + ": " + stx.error().message);
          }
          out.emplace_back(std::move(stx).value());
        }
        return out;
      },
      read_limits);
}

Bytes encodeNotaryAnswer(const NotaryAnswer& a) {
  return buildCanonical<sb::NotaryAnswer>([&](auto b) {
    writeSignatures(b.initSignatures(static_cast<uint32_t>(a.signatures.size())), a.signatures);
    auto l = b.initConflicts(static_cast<uint32_t>(a.conflicts.size()));
    for (uint32_t i = 0; i < a.conflicts.size(); ++i) {
      writeStateRef(l[i].initRef(), a.conflicts[i].ref);
      l[i].setConsumedBy(kj::ArrayPtr<const kj::byte>(a.conflicts[i].consumedBy.bytes().data(), 32));
    }
  });
}

Result<NotaryAnswer> decodeNotaryAnswer(ByteView bytes) {
  return decodeMessage<sb::NotaryAnswer>(
      bytes, "notary answer", Canonical::required, [](auto r) -> Result<NotaryAnswer> {
        NotaryAnswer a;
        auto sigs = readSignatures(r.getSignatures(), 1024);
        if (!sigs) return sigs.error();
        a.signatures = std::move(sigs).value();
        auto l = r.getConflicts();
        for (uint32_t i = 0; i < l.size(); ++i) {
          auto ref = readStateRef(l[i].getRef());
          if (!ref) return ref.error();
          auto by = hashOf(l[i].getConsumedBy(), "conflict " + std::to_string(i));
          if (!by) return by.error();
          a.conflicts.push_back({*ref, *by});
        }
        return a;
      });
}

}  // namespace ccal::flows
