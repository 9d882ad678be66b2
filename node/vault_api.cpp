#include "node/vault_api.h"

#include "contracts/credit_record.h"
#include "flows/loan_flows.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdio>
#include <ctime>

#include "ledger/assert.h"
#include "node/api_server.h"

namespace ccal::node {

using nlohmann::json;

namespace {

Error badQuery(std::string message) { return Error{Errc::bad_query, std::move(message)}; }

std::string lower(std::string_view text) {
  std::string out(text);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// Every state type the registered contracts declare, in name order.
std::vector<std::string> knownStateTypes(const ContractRegistry& registry) {
  std::vector<std::string> types;
  for (const std::string& name : registry.names()) {
    const Contract* contract = registry.find(name);
    if (contract == nullptr) continue;
    for (const auto& schema : contract->stateSchemas()) types.emplace_back(schema->stateType());
  }
  std::sort(types.begin(), types.end());
  return types;
}

std::string joined(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : ", ") + item;
  return out;
}

std::optional<int64_t> parseInt(std::string_view text) {
  int64_t out = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  if (ec != std::errc() || end != text.data() + text.size() || text.empty()) return std::nullopt;
  return out;
}

// Days since 1970-01-01 of a civil date, and back (Howard Hinnant's algorithms).
int64_t daysFromCivil(int64_t y, int64_t m, int64_t d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const int64_t yoe = y - era * 400;
  const int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

void civilFromDays(int64_t z, int64_t& y, int64_t& m, int64_t& d) {
  z += 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const int64_t doe = z - era * 146097;
  const int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const int64_t mp = (5 * doy + 2) / 153;
  d = doy - (153 * mp + 2) / 5 + 1;
  m = mp < 10 ? mp + 3 : mp - 9;
  y = yoe + era * 400 + (m <= 2);
}

// A field value from JSON, checked against the field's declared type.
Result<FieldValue> fieldValueOf(const json& value, const FieldDecl& field, const VaultPartyDirectory& parties) {
  const std::string where = "field '" + field.name + "' (" + fieldTypeName(field.type) + ")";
  switch (field.type) {
    case FieldType::int64:
      if (value.is_number_unsigned() && value.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
        return badQuery(where + ": " + value.dump() + " is above the largest int64");
      }
      if (value.is_number_integer()) return FieldValue(value.get<int64_t>());
      if (value.is_string()) {
        if (auto n = parseInt(value.get<std::string>())) return FieldValue(*n);
      }
      return badQuery(where + ": " + value.dump() + " is not an integer");
    case FieldType::text:
      if (value.is_string()) return FieldValue(value.get<std::string>());
      return badQuery(where + ": " + value.dump() + " is not a string");
    case FieldType::time:
      if (value.is_number_unsigned() && value.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
        return badQuery(where + ": " + value.dump() + " is above the largest time in microseconds");
      }
      if (value.is_number_integer()) return FieldValue(value.get<int64_t>());
      if (value.is_string()) {
        auto micros = parseTimeMicros(value.get<std::string>());
        if (micros) return FieldValue(*micros);
        return badQuery(where + ": " + micros.error().message);
      }
      return badQuery(where + ": " + value.dump() +
                      " is not a time (microseconds, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ)");
    case FieldType::hash: {
      if (!value.is_string()) return badQuery(where + ": " + value.dump() + " is not a string");
      const std::string text = value.get<std::string>();
      if (text.size() == 64 && text.find('=') == std::string::npos) {
        auto hash = SecureHash::fromHex(text);
        if (hash) return FieldValue(*hash);
      }
      if (parties.byName) {
        if (auto party = parties.byName(text)) return FieldValue(party->owningKey.hash());
      }
      return badQuery(where + ": '" + text + "' is neither 64 hex digits nor a party the network knows");
    }
  }
  return badQuery(where + ": unknown field type");
}

Result<vault::FieldOp> fieldOpOf(std::string_view op) {
  using vault::FieldOp;
  if (op == "=" || op == "==" || op == "eq") return FieldOp::eq;
  if (op == "<" || op == "lt") return FieldOp::lt;
  if (op == "<=" || op == "le") return FieldOp::le;
  if (op == ">" || op == "gt") return FieldOp::gt;
  if (op == ">=" || op == "ge") return FieldOp::ge;
  if (op == "between") return FieldOp::between;
  if (op == "in") return FieldOp::in;
  return badQuery("unknown op '" + std::string(op) + "' (=, <, <=, >, >=, between, in)");
}

Result<std::string> optionalText(const json& body, const char* key) {
  if (!body.contains(key) || body[key].is_null()) return std::string();
  if (!body[key].is_string()) return badQuery("'" + std::string(key) + "' must be a string");
  return body[key].get<std::string>();
}

json fieldJson(const FieldValue& value, FieldType type, const VaultPartyDirectory& parties) {
  switch (type) {
    case FieldType::int64: return std::get<int64_t>(value);
    case FieldType::text: return std::get<std::string>(value);
    case FieldType::time: return isoTime(std::get<int64_t>(value));
    case FieldType::hash: {
      const SecureHash& hash = std::get<SecureHash>(value);
      if (parties.nameOfKeyHash) {
        if (auto name = parties.nameOfKeyHash(hash)) return *name;
      }
      return hash.hex();
    }
  }
  return nullptr;
}

std::string keyName(const Key& key, const VaultPartyDirectory& parties) {
  if (parties.nameOfKeyHash) {
    if (auto name = parties.nameOfKeyHash(key.hash())) return *name;
  }
  return key.describe();
}

// The declared fields of a state, as the API answers them (an error text
// when its data does not decode).
json stateFieldsJson(const TransactionState& state, const ContractRegistry& registry,
                     const VaultPartyDirectory& parties) {
  json fields = json::object();
  const StateSchema* schema = registry.schemaFor(state.stateType);
  if (schema == nullptr) return fields;
  auto view = schema->view(state);
  if (!view) return json{{"error", view.error().message}};
  const auto decls = schema->fields();
  for (const auto& field : view->fields) {
    const std::string& name = field.first;  // not a structured binding: clang 14 cannot capture one
    auto decl = std::find_if(decls.begin(), decls.end(), [&](const FieldDecl& d) { return d.name == name; });
    if (decl == decls.end()) continue;
    fields[name] = fieldJson(field.second, decl->type, parties);
  }
  return fields;
}

json outputJson(const TransactionState& state, const ContractRegistry& registry, const VaultPartyDirectory& parties) {
  json participants = json::array();
  for (const Key& k : state.participants) participants.push_back(keyName(k, parties));
  return json{{"type", state.stateType},
              {"contract", state.contract},
              {"notary", state.notary.name},
              {"participants", std::move(participants)},
              {"fields", stateFieldsJson(state, registry, parties)}};
}

}  // namespace

std::string isoTime(int64_t micros) {
  int64_t days = micros / 86'400'000'000LL;
  int64_t rest = micros % 86'400'000'000LL;
  if (rest < 0) {
    rest += 86'400'000'000LL;
    --days;
  }
  int64_t y = 0, m = 0, d = 0;
  civilFromDays(days, y, m, d);
  const int64_t seconds = rest / 1'000'000, fraction = rest % 1'000'000;
  char text[64];
  if (fraction == 0) {
    std::snprintf(text, sizeof text, "%04lld-%02lld-%02lldT%02lld:%02lld:%02lldZ", static_cast<long long>(y),
                  static_cast<long long>(m), static_cast<long long>(d), static_cast<long long>(seconds / 3600),
                  static_cast<long long>(seconds / 60 % 60), static_cast<long long>(seconds % 60));
  } else {
    std::snprintf(text, sizeof text, "%04lld-%02lld-%02lldT%02lld:%02lld:%02lld.%06lldZ", static_cast<long long>(y),
                  static_cast<long long>(m), static_cast<long long>(d), static_cast<long long>(seconds / 3600),
                  static_cast<long long>(seconds / 60 % 60), static_cast<long long>(seconds % 60),
                  static_cast<long long>(fraction));
  }
  return text;
}

Result<int64_t> parseTimeMicros(std::string_view text) {
  if (auto n = parseInt(text)) return *n;
  auto bad = [&] {
    return badQuery("'" + std::string(text) + "' is not a time (microseconds, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ)");
  };
  if (text.size() != 10 && text.size() != 20) return bad();
  if (text[4] != '-' || text[7] != '-') return bad();
  auto y = parseInt(text.substr(0, 4)), m = parseInt(text.substr(5, 2)), d = parseInt(text.substr(8, 2));
  if (!y || !m || !d || *m < 1 || *m > 12 || *d < 1) return bad();
  const bool leap = (*y % 4 == 0 && *y % 100 != 0) || *y % 400 == 0;
  static constexpr int64_t month_days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (*d > month_days[*m - 1] + (*m == 2 && leap ? 1 : 0)) {
    return badQuery("'" + std::string(text) + "': " + std::to_string(*y) + "-" +
                    std::string(text.substr(5, 2)) + " has no day " + std::to_string(*d));
  }
  int64_t micros = daysFromCivil(*y, *m, *d) * 86'400'000'000LL;
  if (text.size() == 20) {
    if (text[10] != 'T' || text[13] != ':' || text[16] != ':' || text[19] != 'Z') return bad();
    auto hh = parseInt(text.substr(11, 2)), mm = parseInt(text.substr(14, 2)), ss = parseInt(text.substr(17, 2));
    if (!hh || !mm || !ss || *hh > 23 || *mm > 59 || *ss > 59) return bad();
    micros += ((*hh * 60 + *mm) * 60 + *ss) * 1'000'000LL;
  }
  return micros;
}

Result<std::string> resolveStateType(const ContractRegistry& registry, std::string_view type) {
  if (registry.schemaFor(type) != nullptr) return std::string(type);
  const std::vector<std::string> known = knownStateTypes(registry);
  const std::string alias = lower(type);
  std::vector<std::string> matches;
  for (const std::string& t : known) {
    const std::string last = lower(t.substr(t.rfind('.') + 1));
    if (last == alias || last == alias + "state") matches.push_back(t);
  }
  if (matches.size() == 1) return matches.front();
  if (matches.empty()) {
    return badQuery("unknown state type '" + std::string(type) + "' (known: " + joined(known) + ")");
  }
  return badQuery("state type '" + std::string(type) + "' is ambiguous: " + joined(matches));
}

Result<vault::Query> parseVaultQuery(const json& body, const ContractRegistry& registry,
                                     const VaultPartyDirectory& parties, uint32_t page_size_max) {
  using vault::Criteria;
  if (!body.is_object()) return Error{Errc::malformed, "the body must be a JSON object"};
  static const std::vector<std::string> keys = {"type",        "status",    "relevance", "fields", "participant",
                                                "linear_id",   "page_size", "page",      "cursor", "sort"};
  for (const auto& [key, value] : body.items()) {
    if (std::find(keys.begin(), keys.end(), key) == keys.end()) {
      return badQuery("unknown key '" + key + "' (" + joined(keys) + ")");
    }
  }
  vault::Query query;
  std::optional<Criteria> criteria;
  auto add = [&](Criteria c) { criteria = criteria ? std::move(*criteria) && std::move(c) : std::move(c); };

  auto type_text = optionalText(body, "type");
  if (!type_text) return type_text.error();
  std::string type;
  const StateSchema* schema = nullptr;
  if (!type_text->empty()) {
    auto resolved = resolveStateType(registry, *type_text);
    if (!resolved) return resolved.error();
    type = *resolved;
    schema = registry.schemaFor(type);
    CCAL_ASSERT(schema != nullptr);
    add(Criteria::stateType(type));
  }

  auto status = optionalText(body, "status");
  if (!status) return status.error();
  if (status->empty() || *status == "unconsumed") {
    query.status = vault::StatusFilter::unconsumed;
  } else if (*status == "consumed") {
    query.status = vault::StatusFilter::consumed;
  } else if (*status == "all") {
    query.status = vault::StatusFilter::all;
  } else {
    return badQuery("unknown status '" + *status + "' (unconsumed, consumed, all)");
  }

  auto relevance = optionalText(body, "relevance");
  if (!relevance) return relevance.error();
  if (relevance->empty() || *relevance == "all") {
    query.relevance = vault::RelevanceFilter::all;
  } else if (*relevance == "participant") {
    query.relevance = vault::RelevanceFilter::participant;
  } else if (*relevance == "observed") {
    query.relevance = vault::RelevanceFilter::observed;
  } else {
    return badQuery("unknown relevance '" + *relevance + "' (participant, observed, all)");
  }

  if (body.contains("fields") && !body["fields"].is_null()) {
    const json& fields = body["fields"];
    if (!fields.is_array()) return badQuery("'fields' must be an array of {name, op, value(s)}");
    if (fields.size() > vault_query_fields_max) {
      return badQuery("'fields' has " + std::to_string(fields.size()) + " conditions, at most " +
                      std::to_string(vault_query_fields_max));
    }
    if (!fields.empty() && schema == nullptr) return badQuery("'fields' needs a 'type' whose fields they are");
    const std::vector<FieldDecl> decls = schema ? schema->fields() : std::vector<FieldDecl>{};
    for (size_t i = 0; i < fields.size(); ++i) {
      const json& f = fields[i];
      const std::string where = "fields[" + std::to_string(i) + "]";
      if (!f.is_object() || !f.contains("name") || !f["name"].is_string()) {
        return badQuery(where + " must be an object with a string 'name'");
      }
      const std::string name = f["name"].get<std::string>();
      auto decl = std::find_if(decls.begin(), decls.end(), [&](const FieldDecl& d) { return d.name == name; });
      if (decl == decls.end()) {
        std::vector<std::string> names;
        for (const auto& d : decls) names.push_back(d.name);
        return badQuery("unknown field '" + name + "' of " + type + " (declared: " + joined(names) + ")");
      }
      const std::string op_text = f.contains("op") && f["op"].is_string() ? f["op"].get<std::string>() : "=";
      if (f.contains("op") && !f["op"].is_string()) return badQuery(where + ": 'op' must be a string");
      auto op = fieldOpOf(op_text);
      if (!op) return op.error();
      std::vector<FieldValue> values;
      const bool many = *op == vault::FieldOp::between || *op == vault::FieldOp::in;
      if (many) {
        const json* list = f.contains("values") ? &f["values"] : (f.contains("value") ? &f["value"] : nullptr);
        if (list == nullptr || !list->is_array()) {
          return badQuery(where + ": op '" + op_text + "' takes 'values', an array");
        }
        if (*op == vault::FieldOp::between && list->size() != 2) {
          return badQuery(where + ": 'between' takes two values, not " + std::to_string(list->size()));
        }
        if (list->empty() || list->size() > vault_query_values_max) {
          return badQuery(where + ": 'in' takes 1.." + std::to_string(vault_query_values_max) + " values");
        }
        for (const json& v : *list) {
          auto value = fieldValueOf(v, *decl, parties);
          if (!value) return value.error();
          values.push_back(std::move(*value));
        }
      } else {
        if (!f.contains("value")) return badQuery(where + ": op '" + op_text + "' takes one 'value'");
        auto value = fieldValueOf(f["value"], *decl, parties);
        if (!value) return value.error();
        values.push_back(std::move(*value));
      }
      add(Criteria::field(type, name, *op, std::move(values)));
    }
  }

  auto participant = optionalText(body, "participant");
  if (!participant) return participant.error();
  if (!participant->empty()) {
    std::optional<Party> party = parties.byName ? parties.byName(*participant) : std::nullopt;
    if (!party) return badQuery("participant '" + *participant + "' is not a party the network knows");
    add(Criteria::participant(party->owningKey));
  }

  auto linear_id = optionalText(body, "linear_id");
  if (!linear_id) return linear_id.error();
  if (!linear_id->empty()) {
    auto id = SecureHash::fromHex(*linear_id);
    if (!id) return badQuery("linear_id '" + *linear_id + "' is not 64 hex digits");
    add(Criteria::linearId(*id));
  }
  query.criteria = criteria ? std::move(*criteria) : Criteria::all();

  query.page_size = vault_query_page_size_default;
  if (body.contains("page_size")) {
    const json& size = body["page_size"];
    if (!size.is_number_integer() || size.get<int64_t>() < 1 || size.get<int64_t>() > page_size_max) {
      return badQuery("page_size must be 1.." + std::to_string(page_size_max) + ", not " + size.dump());
    }
    query.page_size = size.get<uint32_t>();
  }
  if (body.contains("page")) {
    const json& page = body["page"];
    if (!page.is_number_integer() || page.get<int64_t>() < 1 || page.get<int64_t>() > UINT32_MAX) {
      return badQuery("page must be a positive integer, not " + page.dump());
    }
    query.page_number = page.get<uint32_t>();
  }
  auto cursor = optionalText(body, "cursor");
  if (!cursor) return cursor.error();
  if (!cursor->empty()) {
    if (cursor->size() > vault_query_cursor_bytes_max) return badQuery("cursor is too long");
    if (query.page_number != 1) return badQuery("give 'page' or 'cursor', not both");
    query.cursor = *cursor;
  }

  if (body.contains("sort") && !body["sort"].is_null()) {
    const json& sort = body["sort"];
    if (sort.is_string()) {
      std::string by = sort.get<std::string>();
      query.sort.descending = !by.empty() && by[0] == '-';
      query.sort.by = query.sort.descending ? by.substr(1) : by;
    } else if (sort.is_object() && sort.contains("by") && sort["by"].is_string()) {
      query.sort.by = sort["by"].get<std::string>();
      if (sort.contains("descending")) {
        if (!sort["descending"].is_boolean()) return badQuery("sort.descending must be true or false");
        query.sort.descending = sort["descending"].get<bool>();
      }
    } else {
      return badQuery("sort must be \"field\", \"-field\" or {\"by\", \"descending\"}");
    }
    if (query.sort.by.empty()) return badQuery("sort names no field");
  }
  return query;
}

json vaultStateJson(const vault::VaultState& s, const ContractRegistry& registry, const VaultPartyDirectory& parties) {
  json out = outputJson(s.state, registry, parties);
  out["ref"] = s.ref.toString();
  out["status"] = s.status == vault::StateStatus::unconsumed ? "unconsumed" : "consumed";
  out["relevance"] = s.relevance == vault::Relevance::participant ? "participant" : "observed";
  out["recorded"] = isoTime(s.recordedMicros);
  if (s.consumedBy) out["consumed_by"] = s.consumedBy->hex();
  if (s.consumedMicros) out["consumed"] = isoTime(*s.consumedMicros);
  return out;
}

Result<json> VaultApi::query(const json& body) const {
  auto query = parseVaultQuery(body, registry_, parties_);
  if (!query) return query.error();
  auto page = vault_.query(*query);
  if (!page) return page.error();
  json states = json::array();
  for (const auto& s : page->states) states.push_back(vaultStateJson(s, registry_, parties_));
  return json{{"total", page->total},
              {"page", page->page_number},
              {"has_more", page->has_more},
              {"next_cursor", page->next_cursor},
              {"states", std::move(states)}};
}

Result<json> VaultApi::transaction(std::string_view id_hex) const {
  auto id = SecureHash::fromHex(id_hex);
  if (!id) return Error{Errc::malformed, "'" + std::string(id_hex) + "' is not a transaction id (64 hex digits)"};
  auto stx = vault_.transaction(*id);
  if (!stx) return stx.error();
  if (!*stx) return Error{Errc::not_found, "transaction " + id->hex() + " is not in this vault"};
  const WireTransaction& tx = (*stx)->tx();
  json inputs = json::array(), references = json::array(), outputs = json::array(), commands = json::array(),
       signatures = json::array();
  for (const StateRef& r : tx.inputs()) inputs.push_back(r.toString());
  for (const StateRef& r : tx.references()) references.push_back(r.toString());
  for (size_t i = 0; i < tx.outputs().size(); ++i) {
    json o = outputJson(tx.outputs()[i], registry_, parties_);
    o["index"] = i;
    o["ref"] = StateRef{*id, static_cast<uint32_t>(i)}.toString();
    outputs.push_back(std::move(o));
  }
  for (const Command& c : tx.commands()) {
    json signers = json::array();
    for (const Key& k : c.signers) signers.push_back(keyName(k, parties_));
    commands.push_back({{"type", c.type}, {"signers", std::move(signers)}});
  }
  for (const auto& sig : (*stx)->signatures()) signatures.push_back(keyName(Key(sig.by()), parties_));
  json out = {{"id", id->hex()},         {"inputs", std::move(inputs)},     {"references", std::move(references)},
              {"outputs", std::move(outputs)}, {"commands", std::move(commands)}, {"signed_by", std::move(signatures)}};
  out["notary"] = tx.notary() ? json(tx.notary()->name) : json(nullptr);
  if (tx.timeWindow()) {
    json window = json::object();
    if (tx.timeWindow()->fromMicros) window["from"] = isoTime(*tx.timeWindow()->fromMicros);
    if (tx.timeWindow()->untilMicros) window["until"] = isoTime(*tx.timeWindow()->untilMicros);
    out["time_window"] = std::move(window);
  }
  return out;
}

void VaultApi::addRoutes(ApiServer& api) {
  api.addRoute(HttpMethod::post, "/api/v1/vault/query", ApiRole::read_only, [this](const ApiRequest& request) {
    auto answer = query(request.body);
    if (!answer) return ApiResponse::fromError(answer.error());
    return ApiResponse::ok(std::move(*answer));
  });
  api.addRoute(HttpMethod::get, "/api/v1/credit/report", ApiRole::read_only,
               [this](const ApiRequest& request) {
                 auto subject = request.queryParam("subject");
                 if (!subject || subject->empty()) {
                   return ApiResponse::error(400, "malformed", "'subject' (a party's X.500 name) is required");
                 }
                 auto answer = creditReport(*subject);
                 if (!answer) return ApiResponse::fromError(answer.error());
                 return ApiResponse::ok(std::move(*answer));
               });
  api.addRoute(HttpMethod::get, "/api/v1/vault/transactions/{id}", ApiRole::read_only,
               [this](const ApiRequest& request) {
                 auto answer = transaction(request.param("id"));
                 if (!answer) return ApiResponse::fromError(answer.error());
                 return ApiResponse::ok(std::move(*answer));
               });
}

Result<nlohmann::json> VaultApi::creditReport(std::string_view subject) const {
  auto party = parties_.byName ? parties_.byName(subject) : std::nullopt;
  if (!party) {
    return makeError(Errc::bad_query, "no party '" + std::string(subject.substr(0, 200)) +
                                          "' in the network map (give its X.500 name)");
  }
  auto report = flows::creditReportFromVault(vault_, party->owningKey);
  if (!report) return report.error();
  nlohmann::json out = nlohmann::json::parse(contracts::creditReportJson(*report), nullptr, false);
  if (!out.is_object()) out = nlohmann::json::object();
  out["subject"] = party->name;
  out["text"] = contracts::describeCreditReport(*report);
  return out;
}

}  // namespace ccal::node
