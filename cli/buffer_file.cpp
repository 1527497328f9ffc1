#include "cli/buffer_file.h"

#include <cstdio>
#include <memory>

#include "agent/store/body_codec.h"
#include "agent/store/buffer_sqlite.h"

namespace omniedge::cli {
namespace {

using Stmt = std::unique_ptr<sqlite3_stmt, decltype(&sqlite3_finalize)>;

std::string text(sqlite3_stmt* st, int col) {
  const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(st, col));
  return p != nullptr ? std::string(p, static_cast<std::size_t>(sqlite3_column_bytes(st, col)))
                      : std::string();
}

}  // namespace

Result<BufferFile> BufferFile::open(const std::filesystem::path& dir) {
  auto opened = store::openBufferReadOnly(dir);
  if (!opened) {
    return opened.error();
  }
  return BufferFile(std::move(opened->db), opened->mode);
}

bool BufferFile::hasTable(const std::string& name) const {
  sqlite3_stmt* raw = nullptr;
  if (sqlite3_prepare_v2(db(), "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", -1,
                         &raw, nullptr) != SQLITE_OK) {
    return false;
  }
  Stmt st(raw, &sqlite3_finalize);
  sqlite3_bind_text(raw, 1, name.c_str(), -1, SQLITE_TRANSIENT);
  return sqlite3_step(raw) == SQLITE_ROW;
}

std::optional<int64_t> BufferFile::integer(const std::string& sql) const {
  sqlite3_stmt* raw = nullptr;
  if (sqlite3_prepare_v2(db(), sql.c_str(), -1, &raw, nullptr) != SQLITE_OK) {
    return std::nullopt;
  }
  Stmt st(raw, &sqlite3_finalize);
  if (sqlite3_step(raw) != SQLITE_ROW || sqlite3_column_type(raw, 0) == SQLITE_NULL) {
    return std::nullopt;
  }
  return sqlite3_column_int64(raw, 0);
}

int64_t BufferFile::maxSeq() const {
  int64_t seq = integer(store::detail::hasRunColumn(db())
                            ? "SELECT seq + n - 1 FROM events ORDER BY seq DESC LIMIT 1"
                            : "SELECT max(seq) FROM events")
                    .value_or(0);
  if (hasTable("delivered")) {
    seq = std::max(seq, integer("SELECT max(seq) FROM delivered").value_or(0));
  }
  return seq;
}

int64_t BufferFile::pendingEvents() const {
  return integer(store::detail::hasRunColumn(db()) ? "SELECT sum(n) FROM events"
                                                   : "SELECT count(*) FROM events")
      .value_or(0);
}

Result<void> BufferFile::scan(const Scan& scan,
                              const std::function<bool(BufferRow&&)>& visit) const {
  // Two ordered walks merged here: a UNION with ORDER BY would sort the whole buffer first.
  struct Walk {
    Stmt st{nullptr, &sqlite3_finalize};
    bool pending = true;
    bool has_row = false;
    int64_t seq = 0;
  };
  std::vector<Walk> walks;
  for (const char* table : {"events", "delivered"}) {
    const bool pending = std::string(table) == "events";
    if (!pending && (scan.pending_only || !hasTable(table))) {
      continue;
    }
    // A row of several events (schema version 6) starts at most kMaxRunEvents - 1 seqs before
    // the first of its events the scan wants; its events are picked out below.
    const bool runs = pending && store::detail::hasRunColumn(db());
    const std::string sql =
        std::string("SELECT seq, type, body, received_ms, id, ") + (runs ? "n" : "1") + " FROM " +
        table + " WHERE seq > ?1 AND seq < ?2 AND type GLOB ?3 AND received_ms >= ?4 " +
        "AND received_ms < ?5 ORDER BY seq " + (scan.newest_first ? "DESC" : "ASC");
    sqlite3_stmt* raw = nullptr;
    if (sqlite3_prepare_v2(db(), sql.c_str(), -1, &raw, nullptr) != SQLITE_OK) {
      return makeError("io", std::string("reading the buffer: ") + sqlite3_errmsg(db()));
    }
    Walk w;
    w.st.reset(raw);
    w.pending = pending;
    sqlite3_bind_int64(
        raw, 1,
        runs ? scan.after_seq - static_cast<int64_t>(store::kMaxRunEvents - 1) : scan.after_seq);
    sqlite3_bind_int64(raw, 2, scan.before_seq);
    sqlite3_bind_text(raw, 3, scan.glob.c_str(), -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(raw, 4, scan.since_ms);
    sqlite3_bind_int64(raw, 5, scan.until_ms);
    walks.push_back(std::move(w));
  }
  const auto step = [this](Walk& w) -> Result<void> {
    const int rc = sqlite3_step(w.st.get());
    w.has_row = rc == SQLITE_ROW;
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
      return makeError("io", std::string("reading the buffer: ") + sqlite3_errmsg(db()));
    }
    w.seq = w.has_row ? sqlite3_column_int64(w.st.get(), 0) : 0;
    return {};
  };
  for (auto& w : walks) {
    if (auto r = step(w); !r) {
      return r;
    }
  }
  for (;;) {
    Walk* next = nullptr;
    for (auto& w : walks) {
      if (w.has_row &&
          (next == nullptr || (scan.newest_first ? w.seq > next->seq : w.seq < next->seq))) {
        next = &w;
      }
    }
    if (next == nullptr) {
      return {};
    }
    sqlite3_stmt* st = next->st.get();
    if (const int64_t n = sqlite3_column_int64(st, 5); n > 1) {
      const auto* p = static_cast<const char*>(sqlite3_column_blob(st, 2));
      auto events =
          store::unpackRun(std::string_view(p != nullptr ? p : "",
                                            static_cast<std::size_t>(sqlite3_column_bytes(st, 2))),
                           n);
      if (!events) {
        std::fprintf(stderr, "omniedge: events seq %lld to %lld skipped: %s\n",
                     static_cast<long long>(next->seq), static_cast<long long>(next->seq + n - 1),
                     events.error().message.c_str());
      }
      const std::string type = text(st, 1);
      const int64_t received_ms = sqlite3_column_int64(st, 3);
      for (int64_t i = 0; events && i < n; ++i) {
        const int64_t k = scan.newest_first ? n - 1 - i : i;
        const int64_t seq = next->seq + k;
        if (seq <= scan.after_seq || seq >= scan.before_seq) {
          continue;
        }
        auto& e = (*events)[static_cast<std::size_t>(k)];
        if (!visit(BufferRow{seq, type, std::move(e.json), received_ms, next->pending})) {
          return {};
        }
      }
      if (auto r = step(*next); !r) {
        return r;
      }
      continue;
    }
    auto body = store::bodyColumn(st, 2, 4);
    if (next->seq <= scan.after_seq) {
      // A single row below the scan's start, read only because a run might have begun there.
    } else if (!body) {
      // One damaged body must not hide the rest of the buffer from a technician: said, skipped.
      std::fprintf(stderr, "omniedge: event seq %lld skipped: %s\n",
                   static_cast<long long>(next->seq), body.error().message.c_str());
    } else {
      BufferRow row{next->seq, text(st, 1), std::move(*body), sqlite3_column_int64(st, 3),
                    next->pending};
      if (!visit(std::move(row))) {
        return {};
      }
    }
    if (auto r = step(*next); !r) {
      return r;
    }
  }
}

}  // namespace omniedge::cli
