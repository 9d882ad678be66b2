// Vault queries: validation, planning over the indexes, filtering, sorting,
// paging, and tracking.
//
// Plan: the criteria tree produces candidate states (their state keys, which
// end every index key) from indexes only —
// a leaf scans its index range; an AND scans its most selective indexable
// child and filters by the rest; an OR unites its children. Candidates are
// then loaded and checked against the whole tree, the status and the
// relevance filters. When the whole query is one index range whose order is
// the requested order (the common "states of a type, newest first" or "by a
// declared field"), the page streams from the index without materialising
// the rest, and the total comes from a maintained count or a key-only scan
// (filtered by status through ix_consumed_key where the index is
// status-free).
//
// Paging by cursor: a page's next_cursor holds a fingerprint of the query
// and the sort key of its last state: in a streamed index, the index key
// after its fixed prefix (sort value, then the state key, which orders ties
// by recording); in the general plan, the sort value then the ref. The next
// page seeks to that key in the streamed index, or starts after it in the
// sorted candidates, so no earlier page is read again.

#include <algorithm>
#include <map>

#include "vault/vault_internal.h"

namespace ccal::vault {

namespace {

using Kind = Criteria::Kind;

Error badQuery(const std::string& why) { return makeError(Errc::bad_query, why); }

const char* opName(FieldOp op) {
  switch (op) {
    case FieldOp::eq: return "=";
    case FieldOp::lt: return "<";
    case FieldOp::le: return "<=";
    case FieldOp::gt: return ">";
    case FieldOp::ge: return ">=";
    case FieldOp::between: return "between";
    case FieldOp::in: return "in";
  }
  return "?";
}

int compareValues(const FieldValue& a, const FieldValue& b) {
  CCAL_ASSERT(a.index() == b.index());
  if (a < b) return -1;
  if (b < a) return 1;
  return 0;
}

bool fieldMatches(FieldOp op, const std::vector<FieldValue>& values, const FieldValue& v) {
  switch (op) {
    case FieldOp::eq: return compareValues(v, values[0]) == 0;
    case FieldOp::lt: return compareValues(v, values[0]) < 0;
    case FieldOp::le: return compareValues(v, values[0]) <= 0;
    case FieldOp::gt: return compareValues(v, values[0]) > 0;
    case FieldOp::ge: return compareValues(v, values[0]) >= 0;
    case FieldOp::between:
      return compareValues(v, values[0]) >= 0 && compareValues(v, values[1]) <= 0;
    case FieldOp::in:
      for (const auto& x : values)
        if (compareValues(v, x) == 0) return true;
      return false;
  }
  return false;
}

// A half-open key range [begin, end) in one index; end empty means "to the end".
struct Range {
  std::string_view db;
  Bytes begin;
  std::optional<Bytes> end;
};

Bytes fieldBase(const std::string& type, const std::string& name) { return fieldPrefix(type, name); }

Bytes with(const Bytes& base, const FieldValue& v) {
  Bytes k = base;
  keys::appendField(k, v);
  return k;
}

Range prefixRange(std::string_view db, Bytes prefix) {
  auto end = keys::prefixEnd(prefix);
  return Range{db, std::move(prefix), std::move(end)};
}

// The index ranges that hold every state a leaf can match. Only ix_type
// has a range per status; the other indexes hold every status in one range
// (their keys say nothing of it) and the caller filters.
std::vector<Range> leafRanges(const Criteria& c, StatusFilter status) {
  std::vector<Range> out;
  switch (c.kind()) {
    case Kind::all:
      out.push_back(prefixRange(ix_recorded, Bytes{}));
      break;
    case Kind::state_type:
      for (StateStatus s : statusesOf(status)) {
        Bytes p{statusByte(s)};
        keys::appendText(p, c.text());
        out.push_back(prefixRange(ix_type, std::move(p)));
      }
      break;
    case Kind::participant:
    case Kind::linear_id: {
      Bytes p;
      keys::appendHash(p, c.hash());
      out.push_back(prefixRange(c.kind() == Kind::participant ? ix_participant : ix_linear, p));
      break;
    }
    case Kind::recorded: {
      Bytes b, e;
      keys::appendInt(b, c.from());
      keys::appendInt(e, c.until());
      out.push_back(Range{ix_recorded, b, e});
      break;
    }
    case Kind::consumed: {
      if (status == StatusFilter::unconsumed) break;  // only consumed states match
      Bytes b, e;
      keys::appendInt(b, c.from());
      keys::appendInt(e, c.until());
      out.push_back(Range{ix_consumed, b, e});
      break;
    }
    case Kind::field: {
      Bytes base = fieldBase(c.text(), c.fieldName());
      const auto& v = c.values();
      switch (c.op()) {
        case FieldOp::eq: out.push_back(prefixRange(ix_field, with(base, v[0]))); break;
        case FieldOp::in:
          for (const auto& x : v) out.push_back(prefixRange(ix_field, with(base, x)));
          break;
        case FieldOp::lt: out.push_back(Range{ix_field, base, with(base, v[0])}); break;
        case FieldOp::le: out.push_back(Range{ix_field, base, keys::prefixEnd(with(base, v[0]))}); break;
        case FieldOp::gt:
          out.push_back(Range{ix_field, *keys::prefixEnd(with(base, v[0])), keys::prefixEnd(base)});
          break;
        case FieldOp::ge: out.push_back(Range{ix_field, with(base, v[0]), keys::prefixEnd(base)}); break;
        case FieldOp::between:
          out.push_back(Range{ix_field, with(base, v[0]), keys::prefixEnd(with(base, v[1]))});
          break;
      }
      break;
    }
    case Kind::and_:
    case Kind::or_:
      CCAL_ASSERT_MSG(false, "leafRanges of a composite criterion");
  }
  return out;
}

// Lower is more selective, as a rough guide for choosing an AND's driver.
int selectivityRank(const Criteria& c) {
  switch (c.kind()) {
    case Kind::linear_id: return 1;
    case Kind::field:
      return c.op() == FieldOp::eq || c.op() == FieldOp::in ? 2 : 4;
    case Kind::participant: return 3;
    case Kind::recorded:
    case Kind::consumed: return 5;
    case Kind::state_type: return 6;
    case Kind::or_: return 7;
    case Kind::and_: return 7;
    case Kind::all: return 9;
  }
  return 9;
}

template <class Fn>
void scanRange(const Vault& v, const ReadTxn& r, const Range& range, Fn&& fn) {
  Cursor c = r.cursor(VaultAccess::db(v, range.db));
  for (bool ok = c.seek(range.begin); ok; ok = c.next()) {
    ByteView k = c.key();
    if (range.end && !std::lexicographical_compare(k.begin(), k.end(), range.end->begin(),
                                                   range.end->end())) {
      break;
    }
    if (!fn(k)) break;
  }
}

}  // namespace

// --- validation ---------------------------------------------------------------

static Status validate(const Vault& v, const Criteria& c, int depth) {
  if (depth > 16) return badQuery("criteria nested deeper than 16 levels");
  switch (c.kind()) {
    case Kind::and_:
    case Kind::or_:
      if (c.children().size() > 64) return badQuery("more than 64 criteria in one and/or");
      for (const auto& child : c.children()) CCAL_TRY(validate(v, child, depth + 1));
      return {};
    case Kind::state_type:
      if (c.text().empty()) return badQuery("an empty state type");
      return {};
    case Kind::recorded:
    case Kind::consumed:
      if (c.from() > c.until()) return badQuery("a time range whose start is after its end");
      return {};
    case Kind::field: {
      const StateSchema* schema = v.registry().schemaFor(c.text());
      if (schema == nullptr) {
        return badQuery("state type '" + c.text() + "' declares no queryable fields (unknown type)");
      }
      std::optional<FieldDecl> decl;
      std::string known;
      for (const auto& f : schema->fields()) {
        if (f.name == c.fieldName()) decl = f;
        known += (known.empty() ? "" : ", ") + f.name;
      }
      if (!decl) {
        return badQuery("state type '" + c.text() + "' has no field '" + c.fieldName() +
                        "' (it declares: " + known + ")");
      }
      size_t n = c.values().size();
      bool arity_ok = c.op() == FieldOp::between ? n == 2
                      : c.op() == FieldOp::in    ? n >= 1 && n <= 1024
                                                 : n == 1;
      if (!arity_ok) {
        return badQuery(std::string("operator ") + opName(c.op()) + " on field '" +
                        c.fieldName() + "' got " + std::to_string(n) + " values");
      }
      for (const auto& value : c.values()) {
        if (!fieldValueMatches(decl->type, value)) {
          return badQuery("field '" + c.fieldName() + "' is " + fieldTypeName(decl->type) +
                          ", but the query compares it with " + describeFieldValue(value));
        }
      }
      if (c.op() == FieldOp::between && compareValues(c.values()[0], c.values()[1]) > 0) {
        return badQuery("between on field '" + c.fieldName() + "' has its bounds reversed");
      }
      return {};
    }
    default:
      return {};
  }
}

// The state type a query is about, when its criteria pin one (for sorting by a field).
static std::optional<std::string> pinnedType(const Criteria& c) {
  if (c.kind() == Kind::state_type || c.kind() == Kind::field) return c.text();
  if (c.kind() == Kind::and_) {
    for (const auto& child : c.children())
      if (auto t = pinnedType(child)) return t;
  }
  if (c.kind() == Kind::or_) {
    // Every alternative must pin the same type.
    std::optional<std::string> common;
    for (const auto& child : c.children()) {
      auto t = pinnedType(child);
      if (!t || (common && *common != *t)) return std::nullopt;
      common = t;
    }
    return common;
  }
  return std::nullopt;
}

// --- matching -----------------------------------------------------------------

static bool matchesWith(const Vault& v, const Criteria& c, const VaultState& vs,
                        std::optional<StateView>& view) {
  switch (c.kind()) {
    case Kind::all: return true;
    case Kind::state_type: return vs.state.stateType == c.text();
    case Kind::participant:
      for (const auto& p : vs.state.participants) {
        if (p.hash() == c.hash()) return true;
        if (!p.isSingle()) {
          for (const auto& leaf : p.leafKeys())
            if (Key(leaf).hash() == c.hash()) return true;
        }
      }
      return false;
    case Kind::recorded: return vs.recordedMicros >= c.from() && vs.recordedMicros < c.until();
    case Kind::consumed:
      return vs.consumedMicros && *vs.consumedMicros >= c.from() && *vs.consumedMicros < c.until();
    case Kind::linear_id:
    case Kind::field: {
      if (c.kind() == Kind::field && vs.state.stateType != c.text()) return false;
      if (!view) {
        auto computed = VaultAccess::viewOf(v, vs.state);
        if (!computed) return false;
        view = std::move(computed).value();
      }
      if (c.kind() == Kind::linear_id) return view->linearId && *view->linearId == c.hash();
      for (const auto& [name, value] : view->fields) {
        if (name == c.fieldName() && value.index() == c.values()[0].index() &&
            fieldMatches(c.op(), c.values(), value)) {
          return true;
        }
      }
      return false;
    }
    case Kind::and_:
      for (const auto& child : c.children())
        if (!matchesWith(v, child, vs, view)) return false;
      return true;
    case Kind::or_:
      for (const auto& child : c.children())
        if (matchesWith(v, child, vs, view)) return true;
      return false;
  }
  return false;
}

bool VaultAccess::matches(const Vault& v, const Criteria& criteria, const VaultState& vs) {
  std::optional<StateView> view;
  return matchesWith(v, criteria, vs, view);
}

// --- candidates ---------------------------------------------------------------

// Adds to `out` every ref the criteria can match; false when over `limit`.
static bool candidates(const Vault& v, const ReadTxn& r, const Criteria& c, StatusFilter status,
                       std::vector<StateKey>& out, size_t limit) {
  if (c.kind() == Kind::and_) {
    // Range conditions on one field narrow each other: intersect their key
    // ranges (same index, same prefix), so "a <= x && x <= b" scans [a, b].
    std::map<std::pair<std::string, std::string>, std::vector<Range>> by_field;
    const Criteria* driver = nullptr;
    for (const auto& child : c.children()) {
      if (child.kind() == Kind::field && child.op() != FieldOp::in) {
        auto ranges = leafRanges(child, status);
        auto [it, fresh] = by_field.try_emplace({child.text(), child.fieldName()}, ranges);
        if (!fresh) {
          for (size_t i = 0; i < ranges.size(); ++i) {
            Range& have = it->second[i];
            have.begin = std::max(have.begin, ranges[i].begin);
            if (ranges[i].end && (!have.end || *ranges[i].end < *have.end)) have.end = ranges[i].end;
          }
        }
      }
      if (driver == nullptr || selectivityRank(child) < selectivityRank(*driver)) driver = &child;
    }
    // Among the intersected field ranges and the best-ranked child, scan the
    // one with the fewest keys (counted up to a cap, keys only).
    constexpr size_t estimate_cap = 4096;
    auto estimate = [&](const std::vector<Range>& ranges) {
      size_t n = 0;
      for (const auto& range : ranges) {
        if (range.end && !(range.begin < *range.end)) continue;
        scanRange(v, r, range, [&](ByteView) { return ++n < estimate_cap; });
      }
      return n;
    };
    const std::vector<Range>* best = nullptr;
    size_t best_n = 0;
    for (const auto& [field, ranges] : by_field) {
      size_t n = estimate(ranges);
      if (best == nullptr || n < best_n) {
        best = &ranges;
        best_n = n;
      }
    }
    bool driver_is_leaf = driver->kind() != Kind::and_ && driver->kind() != Kind::or_;
    if (best != nullptr && !(driver_is_leaf && driver->kind() != Kind::field &&
                             estimate(leafRanges(*driver, status)) < best_n)) {
      bool within = true;
      for (const auto& range : *best) {
        if (range.end && !(range.begin < *range.end)) continue;
        scanRange(v, r, range, [&](ByteView key) {
          if (out.size() >= limit) return within = false;
          out.push_back(keys::stateKeyFromKeyEnd(key));
          return true;
        });
      }
      return within;
    }
    return candidates(v, r, *driver, status, out, limit);
  }
  if (c.kind() == Kind::or_) {
    for (const auto& child : c.children())
      if (!candidates(v, r, child, status, out, limit)) return false;
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
    return true;
  }
  bool within = true;
  for (const auto& range : leafRanges(c, status)) {
    scanRange(v, r, range, [&](ByteView key) {
      if (out.size() >= limit) {
        within = false;
        return false;
      }
      out.push_back(keys::stateKeyFromKeyEnd(key));
      return true;
    });
  }
  return within;
}

// --- cursors ------------------------------------------------------------------

namespace {

constexpr uint8_t cursor_version = 1;
constexpr size_t cursor_fingerprint_bytes = 16;
constexpr size_t cursor_position_bytes_max = 1024;  // a sort key: a field value and a ref

// What a query is, as bytes: a cursor belongs to exactly one.
void describe(Bytes& out, const Criteria& c) {
  out.push_back(static_cast<uint8_t>(c.kind()));
  keys::appendText(out, c.text());
  keys::appendText(out, c.fieldName());
  out.push_back(static_cast<uint8_t>(c.op()));
  keys::appendBe64(out, c.values().size());
  for (const auto& value : c.values()) {
    out.push_back(static_cast<uint8_t>(value.index()));
    keys::appendField(out, value);
  }
  keys::appendHash(out, c.hash());
  keys::appendInt(out, c.from());
  keys::appendInt(out, c.until());
  keys::appendBe64(out, c.children().size());
  for (const auto& child : c.children()) describe(out, child);
}

Bytes fingerprintOf(const Query& q) {
  Bytes d{cursor_version, static_cast<uint8_t>(q.status), static_cast<uint8_t>(q.relevance),
          static_cast<uint8_t>(q.sort.descending ? 1 : 0)};
  keys::appendText(d, q.sort.by);
  describe(d, q.criteria);
  SecureHash h = SecureHash::of(d);
  return Bytes(h.view().begin(), h.view().begin() + cursor_fingerprint_bytes);
}

std::string encodeCursor(const Bytes& fingerprint, uint32_t page_number, ByteView position) {
  Bytes raw{cursor_version};
  append(raw, fingerprint);
  appendU32(raw, page_number);
  append(raw, position);
  return toHex(raw);
}

struct CursorPosition {
  uint32_t page_number = 1;
  Bytes position;  // the sort key of the last state of the page before
};

Result<CursorPosition> decodeCursor(const std::string& text, const Bytes& fingerprint) {
  auto malformed = [](const std::string& why) {
    return makeError(Errc::bad_query, "malformed cursor: " + why +
                                          " (pass back a Page's next_cursor unchanged)");
  };
  const size_t head = 1 + cursor_fingerprint_bytes + 4;
  if (text.size() % 2 != 0 || text.size() < 2 * head ||
      text.size() > 2 * (head + cursor_position_bytes_max)) {
    return malformed("a cursor is " + std::to_string(2 * head) + " to " +
                     std::to_string(2 * (head + cursor_position_bytes_max)) +
                     " hex digits, this one has " + std::to_string(text.size()));
  }
  Bytes raw;
  raw.reserve(text.size() / 2);
  auto digit = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  for (size_t i = 0; i < text.size(); i += 2) {
    int hi = digit(text[i]), lo = digit(text[i + 1]);
    if (hi < 0 || lo < 0) return malformed("not lower-case hex at character " + std::to_string(i));
    raw.push_back(static_cast<uint8_t>(hi << 4 | lo));
  }
  if (raw[0] != cursor_version) {
    return malformed("version " + std::to_string(raw[0]) + ", this vault makes version " +
                     std::to_string(cursor_version));
  }
  if (!std::equal(fingerprint.begin(), fingerprint.end(), raw.begin() + 1)) {
    return makeError(Errc::bad_query,
                     "the cursor belongs to a different query (its criteria, status, relevance "
                     "or sort differ): start again from page 1 of this query");
  }
  CursorPosition out;
  const uint8_t* n = raw.data() + 1 + cursor_fingerprint_bytes;
  out.page_number = static_cast<uint32_t>(n[0]) | static_cast<uint32_t>(n[1]) << 8 |
                    static_cast<uint32_t>(n[2]) << 16 | static_cast<uint32_t>(n[3]) << 24;
  if (out.page_number < 2) return malformed("page number " + std::to_string(out.page_number));
  out.position.assign(raw.begin() + head, raw.end());
  if (out.position.size() < keys::state_key_bytes) return malformed("no position");
  return out;
}

// The order-preserving sort key of a state: the sort value, then its state
// key (so ties in the sort value are ordered by recording, as in the
// indexes, and every key is distinct); for a field, ties go by recording
// time then state key, as in ix_field; by "ref", the ref alone. Absent
// values (an unconsumed state's consumed time, a missing field) sort first.
Bytes sortKeyOf(const std::string& by, const VaultState& vs, StateKey state,
                const std::optional<FieldValue>& field_value) {
  Bytes k;
  if (by == "recorded") {
    keys::appendInt(k, vs.recordedMicros);
  } else if (by == "consumed") {
    k.push_back(vs.consumedMicros ? 1 : 0);
    keys::appendInt(k, vs.consumedMicros.value_or(0));
  } else if (by != "ref") {
    k.push_back(field_value ? 1 : 0);
    if (field_value) keys::appendField(k, *field_value);
    keys::appendInt(k, vs.recordedMicros);
  }
  if (by == "ref") {
    keys::appendRef(k, vs.ref);
  } else {
    keys::appendStateKey(k, state);
  }
  return k;
}

bool lessBytes(ByteView a, ByteView b) {
  return std::lexicographical_compare(a.begin(), a.end(), b.begin(), b.end());
}

}  // namespace

// --- the query ----------------------------------------------------------------

Result<Page> Vault::query(const Query& q) const {
  if (q.page_size == 0 || q.page_size > config_.page_size_max) {
    return badQuery("page size " + std::to_string(q.page_size) + " is outside 1.." +
                    std::to_string(config_.page_size_max));
  }
  if (q.page_number == 0) return badQuery("page numbers start at 1");
  if (!q.cursor.empty() && q.page_number != 1) {
    return badQuery("a query gives a cursor or a page number, not both (page number " +
                    std::to_string(q.page_number) + " with a cursor)");
  }
  CCAL_TRY(validate(*this, q.criteria, 0));
  const std::string& by = q.sort.by;
  std::optional<FieldType> sort_field_type;
  if (by != "recorded" && by != "consumed" && by != "ref") {
    auto type = pinnedType(q.criteria);
    const StateSchema* schema = type ? registry_.schemaFor(*type) : nullptr;
    if (schema != nullptr) {
      for (const auto& f : schema->fields())
        if (f.name == by) sort_field_type = f.type;
    }
    if (!sort_field_type) {
      return badQuery("cannot sort by '" + by +
                      "': sort by recorded, consumed, ref, or a declared field of the state type "
                      "the criteria name");
    }
  }
  const Bytes fingerprint = fingerprintOf(q);
  std::optional<CursorPosition> after;
  if (!q.cursor.empty()) {
    auto decoded = decodeCursor(q.cursor, fingerprint);
    if (!decoded) return decoded.error();
    after = std::move(decoded).value();
  }

  ReadTxn r = store_->read();
  const uint64_t skip = after ? 0 : static_cast<uint64_t>(q.page_number - 1) * q.page_size;
  Page page;
  page.page_number = after ? after->page_number : q.page_number;

  // Streaming: one index range already in the sort order — one leaf, or an
  // AND of ranges on the field the page is sorted by (intersected). Keys in
  // the range are the range's fixed prefix followed by the sort key (for a
  // field, without the sort key's presence byte).
  const Criteria& c = q.criteria;
  std::optional<Range> stream;
  Bytes stream_prefix;  // what every key of the streamed range begins with
  const bool field_sort = sort_field_type.has_value();
  if (q.relevance == RelevanceFilter::all) {
    bool leaf_streams = (c.kind() == Kind::state_type && by == "recorded" &&
                         q.status != StatusFilter::all) ||
                        (c.kind() == Kind::all && by == "recorded") ||
                        (c.kind() == Kind::recorded && by == "recorded") ||
                        (c.kind() == Kind::field && by == c.fieldName() && c.op() != FieldOp::in);
    if (leaf_streams) {
      auto ranges = leafRanges(c, q.status);
      CCAL_ASSERT(ranges.size() == 1);
      stream = ranges[0];
    } else if (c.kind() == Kind::and_) {
      bool same_field = true;
      for (const auto& child : c.children()) {
        same_field = same_field && child.kind() == Kind::field && child.op() != FieldOp::in &&
                     child.fieldName() == by && child.text() == c.children()[0].text();
      }
      if (same_field) {
        for (const auto& child : c.children()) {
          Range range = leafRanges(child, q.status)[0];
          if (!stream) {
            stream = range;
            continue;
          }
          stream->begin = std::max(stream->begin, range.begin);
          if (range.end && (!stream->end || *range.end < *stream->end)) stream->end = range.end;
        }
        // An empty intersection streams nothing.
        if (stream->end && !(stream->begin < *stream->end)) stream->end = stream->begin;
      }
    }
    if (stream) {
      if (c.kind() == Kind::state_type) {
        stream_prefix = countKey(statusesOf(q.status)[0], c.text());  // status | type
      } else if (field_sort) {
        const Criteria& f = c.kind() == Kind::and_ ? c.children()[0] : c;
        stream_prefix = fieldBase(f.text(), f.fieldName());
      }
    }
  }
  if (stream) {
    const Range& range = *stream;
    // A status-free index is filtered by the consumed-ref index (not at all
    // while nothing is consumed, or when every status is asked for).
    const bool filter_status = !statusKeyed(range.db) && q.status != StatusFilter::all;
    const bool none_consumed = filter_status &&
                               r.entries(VaultAccess::db(*this, ix_consumed_key)) == 0;
    auto passes = [&](ByteView key) {
      if (!filter_status) return true;
      if (none_consumed) return q.status == StatusFilter::unconsumed;
      return VaultAccess::isConsumedKey(*this, r, key) == (q.status == StatusFilter::consumed);
    };
    // The total: a maintained count for a whole type, else count the keys.
    if (c.kind() == Kind::state_type) {
      page.total = readCount(r.get(VaultAccess::db(*this, db_counts),
                                   countKey(statusesOf(q.status)[0], c.text())));
    } else {
      scanRange(*this, r, range, [&](ByteView key) {
        if (passes(key)) ++page.total;
        return true;
      });
    }
    // Where the page starts: after the cursor's key, else at the range's end.
    std::optional<Bytes> from;
    if (after) {
      ByteView position = after->position;
      if (field_sort) {
        if (position.empty() || position[0] != 1) {
          return badQuery("malformed cursor: not a position in this query's field order");
        }
        position = position.subspan(1);
      }
      from = stream_prefix;
      append(*from, position);
    }
    std::vector<Bytes> page_keys;
    const uint64_t want = skip + q.page_size + 1;
    uint64_t seen = 0;
    auto collect = [&](ByteView key) {
      if (!passes(key)) return true;
      if (seen++ >= skip) page_keys.emplace_back(key.begin(), key.end());
      return seen < want;
    };
    Cursor cur = r.cursor(VaultAccess::db(*this, range.db));
    if (!q.sort.descending) {
      bool ok = cur.seek(from && lessBytes(range.begin, *from) ? *from : range.begin);
      if (ok && from && std::equal(cur.key().begin(), cur.key().end(), from->begin(), from->end())) {
        ok = cur.next();
      }
      for (; ok; ok = cur.next()) {
        ByteView k = cur.key();
        if (range.end && !lessBytes(k, *range.end)) break;
        if (!collect(k)) break;
      }
    } else {
      // Walk backwards from the end of the range (or from the cursor's key).
      std::optional<Bytes> end = range.end;
      if (from && (!end || lessBytes(*from, *end))) end = from;
      bool ok = end ? cur.seek(*end) : false;
      ok = ok ? cur.prev() : cur.last();
      for (; ok; ok = cur.prev()) {
        ByteView k = cur.key();
        if (lessBytes(k, range.begin)) break;
        if (end && !lessBytes(k, *end)) continue;  // seek landed on the end key itself
        if (!collect(k)) break;
      }
    }
    for (size_t i = 0; i < page_keys.size() && page.states.size() < q.page_size; ++i) {
      auto stored = VaultAccess::load(*this, r, keys::stateKeyFromKeyEnd(page_keys[i]));
      if (!stored) return stored.error();
      CCAL_ASSERT_MSG(stored->has_value(), "an index names a state that is not stored");
      page.states.push_back((*stored)->vs);
    }
    page.has_more = page_keys.size() > page.states.size();
    if (page.has_more) {
      const Bytes& last = page_keys[page.states.size() - 1];
      Bytes position;
      if (field_sort) position.push_back(1);
      position.insert(position.end(), last.begin() + stream_prefix.size(), last.end());
      page.next_cursor = encodeCursor(fingerprint, page.page_number + 1, position);
    }
    return page;
  }

  // General plan: candidates from indexes, then filter, sort and page.
  std::vector<StateKey> refs;
  if (!candidates(*this, r, c, q.status, refs, config_.query_candidates_max)) {
    return badQuery("the query would examine more than " +
                    std::to_string(config_.query_candidates_max) +
                    " states; narrow it with a state type, a field or a time range");
  }
  std::sort(refs.begin(), refs.end());
  refs.erase(std::unique(refs.begin(), refs.end()), refs.end());
  struct Row {
    VaultState vs;
    Bytes sort_key;
  };
  std::vector<Row> rows;
  for (const auto& ref : refs) {
    // Candidates from status-free indexes: the consumed-key index answers
    // the status without decoding the state.
    if (q.status != StatusFilter::all &&
        VaultAccess::isConsumed(*this, r, ref) != (q.status == StatusFilter::consumed)) {
      continue;
    }
    auto stored = VaultAccess::load(*this, r, ref);
    if (!stored) return stored.error();
    if (!stored->has_value()) continue;
    const VaultState& vs = (*stored)->vs;
    if (!statusPasses(q.status, vs.status)) continue;
    if (q.relevance == RelevanceFilter::participant && vs.relevance != Relevance::participant) continue;
    if (q.relevance == RelevanceFilter::observed && vs.relevance != Relevance::observed) continue;
    std::optional<StateView> view;
    if (!matchesWith(*this, c, vs, view)) continue;
    std::optional<FieldValue> sort_value;
    if (sort_field_type) {
      if (!view) {
        auto computed = VaultAccess::viewOf(*this, vs.state);
        if (computed) view = std::move(computed).value();
      }
      if (view) {
        for (const auto& [name, value] : view->fields)
          if (name == by) sort_value = value;
      }
    }
    Bytes key = sortKeyOf(by, vs, (*stored)->key, sort_value);
    rows.push_back(Row{vs, std::move(key)});
  }
  auto less = [](const Row& a, const Row& b) { return lessBytes(a.sort_key, b.sort_key); };
  if (q.sort.descending) {
    std::sort(rows.begin(), rows.end(), [&](const Row& a, const Row& b) { return less(b, a); });
  } else {
    std::sort(rows.begin(), rows.end(), less);
  }
  page.total = rows.size();
  size_t first = skip;
  if (after) {
    // The first row past the cursor's position in the sort order.
    auto past = std::partition_point(rows.begin(), rows.end(), [&](const Row& row) {
      return q.sort.descending ? !lessBytes(row.sort_key, after->position)
                               : !lessBytes(after->position, row.sort_key);
    });
    first = static_cast<size_t>(past - rows.begin());
  }
  for (size_t i = first; i < rows.size() && page.states.size() < q.page_size; ++i) {
    page.states.push_back(rows[i].vs);
  }
  page.has_more = first + page.states.size() < rows.size();
  if (page.has_more) {
    page.next_cursor = encodeCursor(fingerprint, page.page_number + 1,
                                    rows[first + page.states.size() - 1].sort_key);
  }
  return page;
}

// --- tracking -----------------------------------------------------------------

Result<std::pair<Page, Vault::TrackId>> Vault::track(
    const Query& q, std::function<void(const VaultUpdate&)> on_update) {
  // Register first, then take the snapshot: an update that lands in between
  // is seen twice (in the snapshot and as an update) rather than missed.
  TrackId id;
  {
    std::lock_guard<std::mutex> guard(trackers_mutex_);
    id = next_track_id_++;
    trackers_.emplace(id, Tracker{q, std::move(on_update)});
  }
  auto page = query(q);
  if (!page) {
    untrack(id);
    return page.error();
  }
  return std::make_pair(std::move(page).value(), id);
}

void Vault::untrack(TrackId id) {
  std::lock_guard<std::mutex> guard(trackers_mutex_);
  trackers_.erase(id);
}

}  // namespace ccal::vault
