// What storing an inbound message before its PUBACK costs (docs/remote-config.md §8): put() +
// remove() pairs per second through store::InboxStore (WAL, synchronous=FULL: one fsync'd
// commit each), against the ceiling measured in the same run: the raw SQLite loop of one
// fsync'd single-row INSERT and DELETE on its own file.
//
//   bench_inbox [--n N] [--bytes B] [--dir DIR]
//
// Prints "RESULT inbox <pairs/s> raw <pairs/s> ratio <r> bytes <inbox B> <raw B>", the last two
// what each wrote to storage per message (/proc/self/io write_bytes over its loop).
#include <sqlite3.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "agent/store/inbox.h"

namespace {

double seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

// What this process caused to be written to storage so far (page-cache pages it dirtied, direct
// writes' bytes).
long long writeBytes() {
  std::FILE* f = std::fopen("/proc/self/io", "r");
  if (f == nullptr) {
    return 0;
  }
  char key[64];
  long long value = 0;
  long long out = 0;
  while (std::fscanf(f, "%63s %lld", key, &value) == 2) {
    if (std::string(key) == "write_bytes:") {
      out = value;
    }
  }
  std::fclose(f);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  int n = 2000;
  std::size_t bytes = 600;  // a command or a small profile update
  std::string dir = "/tmp/bench-inbox-" + std::to_string(::getpid());
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string arg = argv[i];
    if (arg == "--n") {
      n = std::atoi(argv[i + 1]);
    } else if (arg == "--bytes") {
      bytes = static_cast<std::size_t>(std::atoll(argv[i + 1]));
    } else if (arg == "--dir") {
      dir = argv[i + 1];
    }
  }
  std::filesystem::create_directories(dir);
  const std::string payload(bytes, 'p');

  omniedge::store::InboxOptions o;
  o.dir = dir;
  auto inbox = omniedge::store::InboxStore::open(o);
  if (!inbox) {
    std::fprintf(stderr, "%s\n", inbox.error().message.c_str());
    return 1;
  }
  long long written = writeBytes();
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < n; ++i) {
    auto id = (*inbox)->put("omniedge/v1/t/s/cmd", payload);
    if (!id || !(*inbox)->remove(*id)) {
      std::fprintf(stderr, "inbox failed\n");
      return 1;
    }
  }
  const double inbox_rate = n / seconds(start);
  const long long inbox_bytes = (writeBytes() - written) / n;

  sqlite3* db = nullptr;
  sqlite3_open((dir + "/raw.db").c_str(), &db);
  sqlite3_exec(db,
               "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
               "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, topic TEXT, payload BLOB);",
               nullptr, nullptr, nullptr);
  sqlite3_stmt* ins = nullptr;
  sqlite3_stmt* del = nullptr;
  sqlite3_prepare_v2(db, "INSERT INTO t(topic, payload) VALUES(?, ?)", -1, &ins, nullptr);
  sqlite3_prepare_v2(db, "DELETE FROM t WHERE id = ?", -1, &del, nullptr);
  written = writeBytes();
  start = std::chrono::steady_clock::now();
  for (int i = 0; i < n; ++i) {
    sqlite3_bind_text(ins, 1, "omniedge/v1/t/s/cmd", -1, SQLITE_STATIC);
    sqlite3_bind_blob(ins, 2, payload.data(), static_cast<int>(payload.size()), SQLITE_STATIC);
    sqlite3_step(ins);
    sqlite3_reset(ins);
    sqlite3_bind_int64(del, 1, sqlite3_last_insert_rowid(db));
    sqlite3_step(del);
    sqlite3_reset(del);
  }
  const double raw_rate = n / seconds(start);
  const long long raw_bytes = (writeBytes() - written) / n;
  sqlite3_finalize(ins);
  sqlite3_finalize(del);
  sqlite3_close(db);
  inbox->reset();
  std::filesystem::remove_all(dir);
  std::printf("RESULT inbox %.0f raw %.0f ratio %.2f bytes %lld %lld\n", inbox_rate, raw_rate,
              inbox_rate / raw_rate, inbox_bytes, raw_bytes);
  return 0;
}
