// openReadOnly(): the CLI's way into the buffer (declared in buffer.h).
#include <sqlite3.h>

#include "agent/store/buffer.h"

namespace omniedge::store {

namespace fs = std::filesystem;

Result<std::shared_ptr<sqlite3>> openReadOnly(const fs::path& dir) {
  const fs::path file = dir / "buffer.db";
  if (!fs::exists(file)) {
    return makeError("not_found", "no buffer at " + file.string());
  }
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(file.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
    std::string msg =
        "open " + file.string() + ": " + (db != nullptr ? sqlite3_errmsg(db) : "out of memory");
    sqlite3_close(db);
    return makeError("io", msg);
  }
  sqlite3_busy_timeout(db, 2000);
  return std::shared_ptr<sqlite3>(db, [](sqlite3* p) { sqlite3_close(p); });
}

}  // namespace omniedge::store
