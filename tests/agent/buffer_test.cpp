#include "agent/store/buffer.h"

#include <sqlite3.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <future>
#include <random>
#include <set>
#include <thread>

#include "agent/api/uuid.h"
#include "agent/store/buffer_sqlite.h"
#include "tests/support/temp_dir.h"

using omniedge::Priority;
using omniedge::store::Buffer;
using omniedge::store::BufferOptions;
using omniedge::store::StoredEvent;
using omniedge::testing::TempDir;

namespace {

StoredEvent makeEvent(const std::string& type, std::size_t body_size = 200, int64_t ms = 1000) {
  StoredEvent e;
  e.id = omniedge::makeUuidV7(1700000000000 + ms);
  e.type = type;
  e.priority = omniedge::priorityOf(type);
  e.received_at_ms = 1700000000000 + ms;
  e.body = "{\"id\":\"" + e.id + "\",\"pad\":\"" + std::string(body_size, 'x') + "\"}";
  return e;
}

// One kiosk request of `n` events whose ids the agent made, received at one time: what
// Buffer::append packs into rows of several (32 to a row).
std::vector<StoredEvent> agentRequest(int n, int64_t ms) {
  std::vector<StoredEvent> request;
  for (int i = 0; i < n; ++i) {
    request.push_back(makeEvent("kiosk.view", 300, ms));
    request.back().id_origin = omniedge::store::IdOrigin::kAgent;
  }
  return request;
}

// The options every test here starts from.
BufferOptions optionsFor(const TempDir& dir, int64_t max_bytes = 1LL << 30) {
  BufferOptions o;
  o.dir = dir.path();
  o.max_bytes = max_bytes;
  o.min_free_disk = 0;
  // Capacity, WAL sizes and spills are counted here in the bodies' JSON bytes (padding that
  // zstd would shrink to nothing); packed bodies have their own tests (body_codec_test.cpp).
  o.pack_bodies = false;
  return o;
}

std::unique_ptr<Buffer> openWith(const BufferOptions& o) {
  auto b = Buffer::open(o);
  REQUIRE(b.has_value());
  return std::move(*b);
}

std::unique_ptr<Buffer> openBuffer(const TempDir& dir, int64_t max_bytes = 1LL << 30) {
  return openWith(optionsFor(dir, max_bytes));
}

int64_t pendingTotal(const Buffer& b) {
  const auto s = b.stats();
  return s.pending[0] + s.pending[1] + s.pending[2];
}

}  // namespace

TEST_CASE("appended events are pending in order and leave only when acknowledged",
          "[unit][buffer]") {
  TempDir dir;
  auto b = openBuffer(dir);
  std::vector<StoredEvent> events;
  for (int i = 0; i < 10; ++i) {
    events.push_back(makeEvent("kiosk.view", 100, i));
  }
  auto r = b->append(events);
  REQUIRE(r.has_value());
  CHECK(r->stored == 10);
  CHECK(pendingTotal(*b) == 10);

  auto pending = b->readPending(0, 4, 1 << 20);
  REQUIRE(pending.has_value());
  REQUIRE(pending->size() == 4);
  CHECK(pending->front().body.find(events[0].id) != std::string::npos);
  CHECK(pending->at(3).seq > pending->at(0).seq);

  b->acknowledge(pending->front().seq, pending->back().seq);
  b->syncAcknowledgements();
  CHECK(pendingTotal(*b) == 6);
  auto rest = b->readPending(0, 100, 1 << 20);
  REQUIRE(rest.has_value());
  CHECK(rest->size() == 6);
  CHECK(rest->front().body.find(events[4].id) != std::string::npos);
}

TEST_CASE("readPending stops at the byte limit but always returns one event", "[unit][buffer]") {
  TempDir dir;
  auto b = openBuffer(dir);
  REQUIRE(b->append({makeEvent("kiosk.a", 1000, 1), makeEvent("kiosk.b", 1000, 2)}).has_value());
  auto one = b->readPending(0, 100, 10);
  REQUIRE(one.has_value());
  CHECK(one->size() == 1);
  auto two = b->readPending(0, 100, 5000);
  REQUIRE(two.has_value());
  CHECK(two->size() == 2);
}

TEST_CASE("a duplicate id is ignored and still acknowledged", "[unit][buffer]") {
  TempDir dir;
  auto b = openBuffer(dir);
  auto e = makeEvent("kiosk.view");
  REQUIRE(b->append({e}).has_value());
  auto again = b->append({e, makeEvent("kiosk.other", 10, 5)});
  REQUIRE(again.has_value());
  CHECK(again->stored == 1);
  CHECK(again->duplicates == 1);
  CHECK(pendingTotal(*b) == 2);
}

namespace {

// One integer the buffer file answers (read-only, beside the open buffer: WAL readers).
int64_t fileInteger(const TempDir& dir, const char* sql) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open_v2((dir.path() / "buffer.db").c_str(), &db, SQLITE_OPEN_READONLY, nullptr) ==
          SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  REQUIRE(sqlite3_prepare_v2(db, sql, -1, &st, nullptr) == SQLITE_OK);
  REQUIRE(sqlite3_step(st) == SQLITE_ROW);
  const int64_t v = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  sqlite3_close(db);
  return v;
}

// The bytes the buffer counts for the rows `where` picks (the file's own sum: each row's strings
// as stored plus kRowOverhead, docs/architecture.md "Capacity").
int64_t heldBytes(const TempDir& dir, const std::string& where) {
  const std::string sql = "SELECT coalesce(sum(" OMNIEDGE_ROW_STRINGS_SQL " + " +
                          std::to_string(omniedge::store::detail::kRowOverhead) +
                          "), 0) FROM events " + where;
  return fileInteger(dir, sql.c_str());
}

}  // namespace

TEST_CASE("ids the agent made have no index entry, and an export read back is still recognised",
          "[unit][buffer]") {
  using omniedge::store::IdOrigin;
  TempDir dir;
  BufferOptions o = optionsFor(dir);
  o.made_index_keep = std::chrono::milliseconds(0);  // dropped by the next group without exports
  auto opened = openWith(o);
  auto& b = *opened;
  std::vector<StoredEvent> made;
  for (int i = 0; i < 3; ++i) {
    made.push_back(makeEvent("kiosk.view", 100, i));
    made.back().id_origin = IdOrigin::kAgent;
  }
  auto given = makeEvent("kiosk.view", 100, 10);  // IdOrigin::kProducer
  REQUIRE(b.append(made).has_value());
  REQUIRE(b.append({given}).has_value());
  const auto index_entries = [&] {
    return fileInteger(dir,
                       "SELECT count(*) FROM events INDEXED BY events_given_id WHERE made = 0");
  };
  CHECK(fileInteger(dir, "SELECT count(*) FROM events WHERE made = 1") == 3);
  CHECK(index_entries() == 1);

  // A producer's id stays unique, whatever its origin says the second time.
  auto again = b.append({given});
  REQUIRE(again.has_value());
  CHECK(again->stored == 0);
  CHECK(again->duplicates == 1);

  // The agent's own ids read back from an export (omniedge import): recognised, not stored
  // again; an id new to the buffer is.
  std::vector<StoredEvent> exported = made;
  exported.push_back(makeEvent("kiosk.view", 100, 20));
  exported.push_back(given);
  for (auto& e : exported) {
    e.id_origin = IdOrigin::kExport;
  }
  auto imported = b.append(exported);
  REQUIRE(imported.has_value());
  CHECK(imported->stored == 1);
  CHECK(imported->duplicates == 4);
  CHECK(pendingTotal(b) == 5);
  // While imports come, the lookups have an index of the agent's own ids ...
  CHECK(fileInteger(dir, "SELECT count(*) FROM sqlite_master WHERE name = 'events_made_id'") == 1);
  // ... and an import's events are given ids from then on.
  CHECK(index_entries() == 2);

  // made_index_keep after the last import, the next commit drops it: the agent's own events are
  // again stored without any index entry.
  auto later = makeEvent("kiosk.view", 100, 30);
  later.id_origin = IdOrigin::kAgent;
  REQUIRE(b.append({later}).has_value());
  CHECK(fileInteger(dir, "SELECT count(*) FROM sqlite_master WHERE name = 'events_made_id'") == 0);
  CHECK(index_entries() == 2);
  // The next import makes it again, over the rows pending then.
  later.id_origin = IdOrigin::kExport;
  auto late = b.append({later});
  REQUIRE(late.has_value());
  CHECK(late->duplicates == 1);
  CHECK(pendingTotal(b) == 6);
  // The agent stops while it is kept: the next open drops it.
  opened.reset();
  CHECK(fileInteger(dir, "SELECT count(*) FROM sqlite_master WHERE name = 'events_made_id'") == 1);
  opened = openWith(o);
  CHECK(fileInteger(dir, "SELECT count(*) FROM sqlite_master WHERE name = 'events_made_id'") == 0);
  CHECK(fileInteger(dir,
                    "SELECT count(*) FROM pragma_integrity_check WHERE integrity_check <> "
                    "'ok'") == 0);
}

TEST_CASE("a request's runs of ids the agent made are stored in order beside given ids",
          "[unit][buffer]") {
  // Eight made ids in a row go in one statement; shorter runs, given ids (probed for
  // duplicates) and what follows them one at a time: every row where it belongs either way.
  using omniedge::store::IdOrigin;
  TempDir dir;
  BufferOptions o = optionsFor(dir);
  o.pack_bodies = true;  // packed bodies bound as BLOBs in the statement of eight
  auto b = openWith(o);
  auto pending_given = makeEvent("pos.sale", 50, 100);
  REQUIRE(b->append({pending_given}).has_value());

  std::vector<StoredEvent> events;
  for (int i = 0; i < 21; ++i) {
    if (i == 12) {
      events.push_back(pending_given);  // a duplicate in the middle of a run
      continue;
    }
    events.push_back(makeEvent(i % 2 == 0 ? "kiosk.view" : "beacon.enter", 300 + i, 200 + i));
    events.back().body += std::string(static_cast<std::size_t>(i), ' ');  // bodies of all sizes
    events.back().id_origin = i == 3 ? IdOrigin::kProducer : IdOrigin::kAgent;
  }
  auto r = b->append(events);
  REQUIRE(r.has_value());
  CHECK(r->stored == 20);
  CHECK(r->duplicates == 1);

  auto read = b->readPending(0, 100, 1 << 20);
  REQUIRE(read.has_value());
  REQUIRE(read->size() == 21);
  CHECK((*read)[0].body == pending_given.body);
  std::size_t at = 1;
  for (std::size_t i = 0; i < events.size(); ++i) {
    if (i == 12) {
      continue;
    }
    INFO("event " << i);
    CHECK((*read)[at].seq == (*read)[0].seq + static_cast<int64_t>(at));
    CHECK((*read)[at].body == events[i].body);
    ++at;
  }
  CHECK(fileInteger(dir, "SELECT count(*) FROM events WHERE made = 1") == 19);
  CHECK(fileInteger(dir, "SELECT count(*) FROM events WHERE made = 0") == 2);
  CHECK(fileInteger(dir,
                    "SELECT count(*) FROM events WHERE made = 1 AND type = 'kiosk.view' "
                    "AND prio = 1 AND received_ms BETWEEN 1700000000200 AND "
                    "1700000000220") == 10);
  CHECK(fileInteger(dir,
                    "SELECT count(*) FROM events WHERE made = 1 AND type = 'beacon.enter' "
                    "AND prio = 2 AND received_ms BETWEEN 1700000000201 AND "
                    "1700000000219") == 9);
  // Each row's columns are its own event's: received_ms grows with seq, as the events did.
  CHECK(fileInteger(dir,
                    "SELECT count(*) FROM events a JOIN events b ON b.seq = a.seq + 1 "
                    "WHERE a.made = 1 AND b.made = 1 AND b.received_ms <= a.received_ms") == 0);
  CHECK(pendingTotal(*b) == 21);
  // The counters the rows were counted in hold after a reopen too.
  b.reset();
  b = openWith(o);
  CHECK(pendingTotal(*b) == 21);
}

TEST_CASE("an import recognises the agent's own ids inside rows of several events",
          "[unit][buffer]") {
  // Ids inside a row of several events are in no index: before an import's first lookup those
  // rows become a row per event, and while imports come no new row of several is made.
  using omniedge::store::IdOrigin;
  TempDir dir;
  BufferOptions o = optionsFor(dir);
  o.pack_bodies = true;
  auto b = openWith(o);
  auto request = agentRequest(40, 77);
  REQUIRE(b->append(request).has_value());
  CHECK(fileInteger(dir, "SELECT count(*) FROM events") == 2);  // 32 + 8
  auto exported = request;
  for (auto& e : exported) {
    e.id_origin = IdOrigin::kExport;
  }
  auto imported = b->append(exported);
  REQUIRE(imported.has_value());
  CHECK(imported->stored == 0);
  CHECK(imported->duplicates == 40);
  CHECK(pendingTotal(*b) == 40);
  CHECK(fileInteger(dir, "SELECT count(*) FROM events WHERE n > 1") == 0);
  CHECK(b->stats().pending_bytes == heldBytes(dir, ""));
  // A kiosk's request meanwhile is stored a row per event, its ids found by the next import.
  auto more = request;
  for (auto& e : more) {
    e.id = omniedge::makeUuidV7(1700000000077);
  }
  REQUIRE(b->append(more).has_value());
  CHECK(fileInteger(dir, "SELECT count(*) FROM events WHERE n > 1") == 0);
  for (auto& e : more) {
    e.id_origin = IdOrigin::kExport;
  }
  auto again = b->append(more);
  REQUIRE(again.has_value());
  CHECK(again->duplicates == 40);
  auto all = b->readPendingFromFile(0, 1000, 1 << 30);
  REQUIRE(all.has_value());
  CHECK(all->size() == 80);
}

TEST_CASE("a read that stops inside a row of several events ends where the last whole row ends",
          "[unit][buffer]") {
  // A batch that ends where a row ends is acknowledged without cutting the row in two. A read
  // stops at its count or its bytes; inside a row it gives back the events of that row instead
  // (they come first in the next read), unless the row is all it has.
  TempDir dir;
  BufferOptions o = optionsFor(dir);
  o.pack_bodies = true;
  auto b = openWith(o);
  const auto request = agentRequest(100, 91);  // rows of 32, 32, 32 and 4
  REQUIRE(b->append(request).has_value());
  REQUIRE(fileInteger(dir, "SELECT count(*) FROM events") == 4);
  const int64_t first = fileInteger(dir, "SELECT min(seq) FROM events");
  for (const bool from_file : {false, true}) {
    INFO((from_file ? "from the file" : "from memory"));
    auto read = [&](int64_t after, std::size_t max_events, std::size_t max_bytes) {
      auto r = from_file ? b->readPendingFromFile(after, max_events, max_bytes)
                         : b->readPending(after, max_events, max_bytes);
      REQUIRE(r.has_value());
      return *r;
    };
    auto got = read(0, 50, 1 << 20);  // 50 stops inside the second row: the first row only
    REQUIRE(got.size() == 32);
    CHECK(got.front().seq == first);
    CHECK(got.back().seq == first + 31);
    CHECK(got.back().body == request[31].body);
    got = read(first + 31, 50, 1 << 20);  // the next read starts at the second row
    REQUIRE(got.size() == 32);
    CHECK(got.front().body == request[32].body);
    got = read(0, 1000, 1 << 20);  // everything: nothing stopped it
    CHECK(got.size() == 100);
    got = read(0, 20, 1 << 20);  // inside the first row, which is all it has: 20
    CHECK(got.size() == 20);
    got = read(first + 9, 30, 1 << 20);  // 22 to the first row's end, then 8 more: the 22
    REQUIRE(got.size() == 22);
    CHECK(got.front().seq == first + 10);
    // By bytes: room for 40 events stops inside the second row too.
    got = read(0, 1000, request[0].body.size() * 40 + 10);
    CHECK(got.size() == 32);
    got = read(first + 95, 1000, 1 << 20);  // the last row's 4
    CHECK(got.size() == 4);
  }
}

TEST_CASE("one request's events leave, move and change one by one, from memory and from the file",
          "[unit][buffer]") {
  // A hundred kiosk events of one request, ids the agent made, packed: what a kiosk posts most.
  // Whatever form the buffer gives them on disk, every operation on seq ranges cuts through the
  // request where it is told to (an acknowledgement, a quarantine of one event, an edit of one
  // event), and what stays reads back the same from memory, from the file, and after a reopen,
  // with the counts exact (docs/benchmarks.md, "Rows of several events").
  using omniedge::PendingEvent;
  using omniedge::store::EventEdit;
  using omniedge::store::IdOrigin;
  TempDir dir;
  BufferOptions o = optionsFor(dir);
  o.pack_bodies = true;
  o.retain_delivered_s = 3600;
  std::vector<StoredEvent> request;
  for (int i = 0; i < 100; ++i) {
    StoredEvent e = makeEvent("kiosk.view", 0, 500);  // one request: one received_at
    e.id_origin = IdOrigin::kAgent;
    e.body = "{\"id\":\"" + e.id + "\",\"type\":\"kiosk.view\",\"data\":{\"sku\":\"SKU-" +
             std::to_string(1000 + i) + "\",\"screen\":\"detail\",\"n\":" + std::to_string(i) +
             "}}";
    request.push_back(std::move(e));
  }
  auto b = openWith(o);
  auto r = b->append(request);
  REQUIRE(r.has_value());
  REQUIRE(r->stored == 100);
  auto all = b->readPending(0, 1000, 1 << 20);
  REQUIRE(all.has_value());
  REQUIRE(all->size() == 100);
  const int64_t first = all->front().seq;
  const int64_t bytes_all = b->stats().pending_bytes;

  // What should be pending: the request's events but those removed, in order, bodies as sent.
  std::vector<bool> gone(100, false);
  auto expectPending = [&](const std::vector<PendingEvent>& got, int64_t after) {
    std::vector<PendingEvent> want;
    for (int i = 0; i < 100; ++i) {
      if (!gone[static_cast<std::size_t>(i)] && first + i > after) {
        want.push_back(PendingEvent{first + i, request[static_cast<std::size_t>(i)].body});
      }
    }
    REQUIRE(got.size() == want.size());
    for (std::size_t k = 0; k < want.size(); ++k) {
      INFO("pending " << k);
      CHECK(got[k].seq == want[k].seq);
      CHECK(got[k].body == want[k].body);
    }
  };
  auto checkEverywhere = [&](Buffer& buf) {
    for (const int64_t after : {first - 1, first + 5, first + 45, first + 49, first + 97}) {
      INFO("after seq " << after - first << " of the request");
      auto mem = buf.readPending(after, 1000, 1 << 20);
      REQUIRE(mem.has_value());
      expectPending(*mem, after);
      auto file = buf.readPendingFromFile(after, 1000, 1 << 20);
      REQUIRE(file.has_value());
      expectPending(*file, after);
    }
    // As the uplink reads: batches of at most 7 events, or of at most ~3 bodies' bytes, each
    // ending wherever its limit falls, the next one starting after its last seq.
    for (const auto& [max_events, max_bytes] :
         {std::pair<std::size_t, std::size_t>{7, 1 << 20}, {1000, 3 * request[0].body.size()}}) {
      for (const bool from_file : {false, true}) {
        INFO("batches of " << max_events << " events, " << max_bytes << " bytes, "
                           << (from_file ? "from the file" : "from memory"));
        std::vector<PendingEvent> read;
        int64_t after = first - 1;
        for (int guard = 0; guard < 200; ++guard) {
          auto batch = from_file ? buf.readPendingFromFile(after, max_events, max_bytes)
                                 : buf.readPending(after, max_events, max_bytes);
          REQUIRE(batch.has_value());
          if (batch->empty()) {
            break;
          }
          CHECK(batch->size() <= max_events);
          after = batch->back().seq;
          read.insert(read.end(), batch->begin(), batch->end());
        }
        expectPending(read, first - 1);
      }
    }
    int64_t left = 0;
    for (bool g : gone) {
      left += g ? 0 : 1;
    }
    CHECK(pendingTotal(buf) == left);
    // The bytes counted are exactly what the rows hold.
    CHECK(buf.stats().pending_bytes == heldBytes(dir, ""));
  };

  // Acknowledged: seqs 10-40 of the request, a stretch in its middle.
  b->acknowledge(first + 10, first + 40);
  b->syncAcknowledgements();
  for (int i = 10; i <= 40; ++i) {
    gone[static_cast<std::size_t>(i)] = true;
  }
  checkEverywhere(*b);
  // Kept as delivered one by one: each acknowledged event under its own seq and id.
  CHECK(fileInteger(dir, "SELECT count(*) FROM delivered") == 31);
  CHECK(fileInteger(dir, "SELECT min(seq) FROM delivered") == first + 10);
  CHECK(fileInteger(dir, "SELECT max(seq) FROM delivered") == first + 40);
  CHECK(fileInteger(dir, "SELECT count(DISTINCT id) FROM delivered") == 31);

  // Quarantined: event 50 alone.
  b->quarantine(first + 50, first + 50, "HTTP 422: data.sku is unknown");
  b->syncAcknowledgements();
  gone[50] = true;
  checkEverywhere(*b);
  auto q = b->quarantined(10);
  REQUIRE(q.has_value());
  REQUIRE(q->size() == 1);
  CHECK(q->front().seq == first + 50);
  CHECK(q->front().id == request[50].id);
  CHECK(q->front().reason == "HTTP 422: data.sku is unknown");

  // Edited: event 60 replaced, event 70 dropped, the rest untouched.
  const std::string replaced =
      "{\"id\":\"" + request[60].id + "\",\"type\":\"kiosk.view\",\"data\":{\"sku\":\"SKU-1060\"}}";
  auto edit = b->editEvents(
      {"SKU-1060", "SKU-1070"},
      [&](const std::string&, const std::string& body) {
        EventEdit out;
        if (body.find("SKU-1060") != std::string::npos) {
          out.action = EventEdit::Action::kReplace;
          out.body = replaced;
        } else if (body.find("SKU-1070") != std::string::npos) {
          out.action = EventEdit::Action::kDrop;
        }
        return out;
      },
      /*scrub=*/false);
  REQUIRE(edit.has_value());
  CHECK(edit->pending_replaced == 1);
  CHECK(edit->pending_dropped == 1);
  REQUIRE(edit->dropped_seqs.size() == 1);
  CHECK(edit->dropped_seqs.front() == std::make_pair(first + 70, first + 70));
  request[60].body = replaced;
  gone[70] = true;
  checkEverywhere(*b);

  // The counts the buffer saved are the ones it reopens with.
  const auto before = b->stats();
  // Stored as rows of several events, the request took fewer bytes than its events alone; each
  // cut packs its parts again (an edited or quarantined event's neighbours alone), so the bytes
  // need not shrink as events leave: they are what the rows hold (checkEverywhere).
  CHECK(bytes_all < 100 * (static_cast<int64_t>(request[0].id.size()) + 40));
  b.reset();
  b = openWith(o);
  const auto after = b->stats();
  CHECK(after.pending[1] == before.pending[1]);
  CHECK(after.pending_bytes == before.pending_bytes);
  CHECK(after.quarantine_events == 1);
  checkEverywhere(*b);

  // Seqs are never given twice: the next event comes after the whole request.
  auto next = makeEvent("kiosk.view", 20, 600);
  next.id_origin = IdOrigin::kAgent;
  REQUIRE(b->append({next}).has_value());
  auto tail = b->readPending(first + 99, 10, 1 << 20);
  REQUIRE(tail.has_value());
  REQUIRE(tail->size() == 1);
  CHECK(tail->front().seq == first + 100);
  CHECK(tail->front().body == next.body);

  // And the rest acknowledged, in pieces that end inside the request: nothing stays behind.
  b->acknowledge(first, first + 3);
  b->acknowledge(first + 4, first + 66);
  b->acknowledge(first + 67, first + 100);
  b->syncAcknowledgements();
  CHECK(pendingTotal(*b) == 0);
  CHECK(b->stats().pending_bytes == 0);
  CHECK(fileInteger(dir, "SELECT count(*) FROM events") == 0);
  auto none = b->readPendingFromFile(0, 1000, 1 << 20);
  REQUIRE(none.has_value());
  CHECK(none->empty());
}

TEST_CASE("many producers at once are group-committed and none is lost", "[unit][buffer]") {
  TempDir dir;
  auto b = openBuffer(dir);
  constexpr int kThreads = 8;
  constexpr int kPerThread = 250;
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        if (b->append({makeEvent("kiosk.view", 50, t * 1000 + i)}).has_value()) {
          ++ok;
        }
      }
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  CHECK(ok == kThreads * kPerThread);
  CHECK(pendingTotal(*b) == kThreads * kPerThread);
  // Group commit: fewer transactions than appends.
  CHECK(b->stats().commits < static_cast<uint64_t>(kThreads * kPerThread));
}

TEST_CASE("a full buffer evicts low-priority events oldest-first and counts them",
          "[unit][buffer]") {
  TempDir dir;
  auto b = openBuffer(dir, 64 * 1024);
  std::vector<StoredEvent> beacons;
  for (int i = 0; i < 100; ++i) {
    beacons.push_back(makeEvent("beacon.enter", 400, i));
  }
  // 100 x ~500 bytes fill most of the 64 KiB.
  for (auto& e : beacons) {
    REQUIRE(b->append({e}).has_value());
  }
  const auto before = b->stats();
  REQUIRE(before.evicted == 0);

  // POS events must fit: the oldest beacons make room.
  std::vector<StoredEvent> sales;
  for (int i = 0; i < 40; ++i) {
    sales.push_back(makeEvent("pos.transaction", 400, 1000 + i));
  }
  for (auto& e : sales) {
    REQUIRE(b->append({e}).has_value());
  }
  const auto after = b->stats();
  CHECK(after.evicted > 0);
  CHECK(after.pending[0] == 40);
  auto report = b->takeEvictions();
  CHECK(report.events == static_cast<int64_t>(after.evicted));
  CHECK(report.oldest_received_ms == beacons.front().received_at_ms);
  CHECK(b->takeEvictions().events == 0);
  // A report that could not be sent on is taken again next time, whole.
  b->returnEvictions(report);
  auto again = b->takeEvictions();
  CHECK(again.events == report.events);
  CHECK(again.bytes == report.bytes);
  CHECK(again.oldest_received_ms == report.oldest_received_ms);

  // What remains of the beacons is the newest ones.
  auto pending = b->readPending(0, 1000, 1 << 20);
  REQUIRE(pending.has_value());
  CHECK(pending->front().body.find(beacons.front().id) == std::string::npos);
  CHECK(pending->front().body.find(beacons[after.evicted].id) != std::string::npos);
}

TEST_CASE("high-priority producers are pushed back, never dropped, when nothing can be evicted",
          "[unit][buffer]") {
  TempDir dir;
  auto b = openBuffer(dir, 32 * 1024);
  int stored = 0;
  omniedge::Error last;
  for (int i = 0; i < 200; ++i) {
    auto r = b->append({makeEvent("pos.transaction", 400, i)});
    if (!r) {
      last = r.error();
      break;
    }
    ++stored;
  }
  CHECK(last.code == "full");
  CHECK(b->stats().pending[0] == stored);
  CHECK(b->stats().rejected_full >= 1);
  // Draining makes room again.
  auto pending = b->readPending(0, 1000, 1 << 20);
  REQUIRE(pending.has_value());
  b->acknowledge(pending->front().seq, pending->back().seq);
  b->syncAcknowledgements();
  CHECK(b->append({makeEvent("pos.transaction", 400, 999)}).has_value());
}

TEST_CASE("pending events survive closing and reopening", "[unit][buffer]") {
  TempDir dir;
  std::string id;
  {
    auto b = openBuffer(dir);
    auto e = makeEvent("pos.transaction");
    id = e.id;
    REQUIRE(b->append({e}).has_value());
  }
  CHECK_FALSE(dir.exists("buffer.lock"));  // a clean shutdown
  auto b = openBuffer(dir);
  CHECK_FALSE(b->openReport().unclean_shutdown);
  CHECK(b->stats().pending[0] == 1);
  auto pending = b->readPending(0, 10, 1 << 20);
  REQUIRE(pending.has_value());
  REQUIRE(pending->size() == 1);
  CHECK(pending->front().body.find(id) != std::string::npos);
  // Sequence numbers are never reused, even after everything was delivered.
  b->acknowledge(pending->front().seq, pending->front().seq);
  b->syncAcknowledgements();
  REQUIRE(b->append({makeEvent("kiosk.x", 10, 77)}).has_value());
  auto next = b->readPending(0, 10, 1 << 20);
  REQUIRE(next.has_value());
  CHECK(next->front().seq > pending->front().seq);
}

namespace {

// The counters table as the file has it: events per priority and the seq it was saved at.
std::pair<int64_t, int64_t> savedCounters(const TempDir& dir) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open_v2((dir.path() / "buffer.db").c_str(), &db, SQLITE_OPEN_READONLY, nullptr) ==
          SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  REQUIRE(sqlite3_prepare_v2(db,
                             "SELECT coalesce(sum(events) FILTER (WHERE prio < 3), 0), "
                             "coalesce(max(events) FILTER (WHERE prio = 3), 0) FROM counters",
                             -1, &st, nullptr) == SQLITE_OK);
  REQUIRE(sqlite3_step(st) == SQLITE_ROW);
  std::pair<int64_t, int64_t> out{sqlite3_column_int64(st, 0), sqlite3_column_int64(st, 1)};
  sqlite3_finalize(st);
  sqlite3_close(db);
  return out;
}

}  // namespace

TEST_CASE("appends leave the counters table alone, and the counts stay exact in bytes",
          "[unit][buffer]") {
  TempDir dir;
  int64_t expected_bytes = 0;
  {
    auto b = openBuffer(dir);
    for (int i = 0; i < 30; ++i) {
      // Non-ASCII bodies: counted in bytes on the way in and on the way out.
      auto e = makeEvent(i % 3 == 0   ? "pos.transaction"
                         : i % 3 == 1 ? "kiosk.view"
                                      : "beacon.seen",
                         10, i);
      e.body.insert(e.body.size() - 2, "caf\u00e9 \u2603 éè☃ð");
      expected_bytes += static_cast<int64_t>(e.body.size() + e.id.size() + e.type.size()) + 40;
      REQUIRE(b->append({e}).has_value());  // one commit each
    }
    CHECK(b->stats().pending_bytes == expected_bytes);
    // 30 commits that only appended: the first saved the table (it had never been), no other.
    CHECK(savedCounters(dir).first == 1);
  }
  // A clean stop saved it.
  CHECK(savedCounters(dir) == std::pair<int64_t, int64_t>{30, 30});
  auto b = openBuffer(dir);
  CHECK(pendingTotal(*b) == 30);
  CHECK(b->stats().pending[0] == 10);
  CHECK(b->stats().pending[2] == 10);
  CHECK(b->stats().pending_bytes == expected_bytes);
  auto p = b->readPending(0, 100, 1 << 20);
  REQUIRE(p.has_value());
  REQUIRE(p->size() == 30);
  b->acknowledge(p->front().seq, p->back().seq);
  b->syncAcknowledgements();
  CHECK(pendingTotal(*b) == 0);
  CHECK(b->stats().pending_bytes == 0);  // nothing left over from characters vs bytes
  CHECK(savedCounters(dir) == std::pair<int64_t, int64_t>{0, p->back().seq});

  // Larger appends: the table is saved again before it lags by more than 4096 seqs.
  const int64_t before = savedCounters(dir).second;
  for (int round = 0; round < 6; ++round) {
    std::vector<StoredEvent> batch;
    for (int i = 0; i < 1000; ++i) {
      batch.push_back(makeEvent("kiosk.view", 20, 100 + round * 1000 + i));
    }
    REQUIRE(b->append(batch).has_value());
  }
  const auto [events, saved_at] = savedCounters(dir);
  CHECK(saved_at > before);
  CHECK(b->stats().last_seq - saved_at <= 4096);
  CHECK(events == saved_at - before);  // the table saved covers exactly the rows up to saved_at

  // As a crash leaves them: the file and its WAL copied while the buffer runs, after single
  // appends (the table lags) and a partial acknowledgement (the table saved in between).
  for (int i = 0; i < 40; ++i) {
    auto e = makeEvent(i % 2 == 0 ? "pos.transaction" : "beacon.seen", 30, 9000 + i);
    e.body.insert(e.body.size() - 2, "\u00e9 \u00fc \u2603 éü☃");
    REQUIRE(b->append({e}).has_value());
  }
  auto some = b->readPending(0, 2500, 64 << 20);
  REQUIRE(some.has_value());
  b->acknowledge(some->front().seq, some->back().seq);
  b->syncAcknowledgements();
  for (int i = 0; i < 25; ++i) {
    REQUIRE(b->append({makeEvent("kiosk.view", 40, 20000 + i)}).has_value());
  }
  const auto running = b->stats();
  TempDir crashed;
  for (const char* f : {"buffer.db", "buffer.db-wal"}) {
    std::filesystem::copy_file(dir.path() / f, crashed.path() / f);
  }
  auto after_crash = openBuffer(crashed);
  const auto st = after_crash->stats();
  for (int prio = 0; prio < 3; ++prio) {
    CHECK(st.pending[prio] == running.pending[prio]);
  }
  CHECK(st.pending_bytes == running.pending_bytes);
  CHECK(st.last_seq == running.last_seq);
  CHECK(pendingTotal(*after_crash) == 6000 + 40 + 25 - static_cast<int64_t>(some->size()));

  b.reset();
  auto again = openBuffer(dir);
  CHECK(again->stats().pending_bytes == running.pending_bytes);
  CHECK(pendingTotal(*again) == pendingTotal(*after_crash));
}

TEST_CASE("small requests from several producers share commits, a lone producer rarely waits",
          "[unit][buffer]") {
  TempDir dir;
  BufferOptions o = optionsFor(dir);
  o.commit_window = std::chrono::milliseconds(20);  // wide, so that grouping is certain here
  auto opened = openWith(o);
  auto& b = *opened;
  SECTION("a lone producer: each request waits for the one before, held only by rare probes") {
    for (int i = 0; i < 200; ++i) {
      REQUIRE(b.append({makeEvent("kiosk.view", 50, i)}).has_value());
    }
    const auto s = b.stats();
    CHECK(s.appended == 200);
    CHECK(s.commits == 200);
    // Probes at the 64th window decision (the first request has none) and, having found
    // nobody, at the 192nd: twice as many later. (Fewer when a slow disk spaces the requests
    // further apart than the window: those are no decisions.)
    CHECK(s.commit_windows <= 2);
  }
  SECTION("eight producers at once, one event per request") {
    std::vector<std::thread> producers;
    std::atomic<int> failed{0};
    for (int t = 0; t < 8; ++t) {
      producers.emplace_back([&, t] {
        for (int i = 0; i < 40; ++i) {
          if (!b.append({makeEvent("kiosk.view", 50, t * 1000 + i)}).has_value()) {
            ++failed;
          }
        }
      });
    }
    for (auto& p : producers) {
      p.join();
    }
    const auto s = b.stats();
    CHECK(failed == 0);
    CHECK(s.appended == 320);
    INFO("commits " << s.commits << ", windows " << s.commit_windows);
    CHECK(s.commit_windows > 0);
    CHECK(s.commits <= 320 / 2);  // up to 8 per commit: the window waits until all are in
  }
}

// Producers on a schedule send whether or not the one before was answered: when the disk is
// quick each request finds the writer idle and commits alone, so the writer never learns that
// waiting would group them. The probe waits for one more now and then, and raises the peak
// when one comes.
TEST_CASE("a probe of the commit window finds producers that do not wait for each other",
          "[unit][buffer]") {
  TempDir dir;
  BufferOptions o = optionsFor(dir);
  // The probe below ends by a request, long before the window would end it. (A window of a
  // second or more would count the first request's gap, taken as a second, as a close one.)
  o.commit_window = std::chrono::milliseconds(999);
  auto opened = openWith(o);
  auto& b = *opened;
  // Groups of one, nothing to wait for: 63 decisions (the first request has no gap before it
  // to measure, so no window is considered for it).
  for (int i = 0; i < 64; ++i) {
    REQUIRE(b.append({makeEvent("kiosk.view", 50, i)}).has_value());
  }
  CHECK(b.stats().commit_windows == 0);
  // The 64th decision is a probe: held for a second request.
  auto held =
      std::async(std::launch::async, [&] { return b.append({makeEvent("kiosk.view", 50, 64)}); });
  CHECK(held.wait_for(std::chrono::milliseconds(300)) == std::future_status::timeout);
  CHECK(b.stats().commits == 64);
  REQUIRE(b.append({makeEvent("kiosk.view", 50, 65)}).has_value());  // another producer
  REQUIRE(held.get().has_value());
  const auto s = b.stats();
  CHECK(s.appended == 66);
  CHECK(s.commits == 65);  // the two shared one commit
  CHECK(s.commit_windows == 1);
}

// After a lone producer's quiet spell the probes are far apart (each found nobody, and the next
// came twice as many groups later). A request queued while another producer's group is
// committed shows that two post at once: the next probe comes within 64 groups again, not after
// thousands (measured: four kiosks at 1k/s after a lone one wrote 5.2-5.5x their envelopes for
// seconds instead of 4.2x; docs/benchmarks.md, "Single events").
TEST_CASE("a request that comes during another producer's commit brings the next probe near",
          "[unit][buffer]") {
  TempDir dir;
  BufferOptions o = optionsFor(dir);
  o.commit_window = std::chrono::milliseconds(20);  // what a probe that finds nobody costs
  auto opened = openWith(o);
  auto& b = *opened;
  // A lone producer: probes at the 64th, 192nd, 448th and 960th decisions find nobody; the
  // next would come at the 1,984th.
  int id = 0;
  for (; id < 1000; ++id) {
    REQUIRE(b.append({makeEvent("kiosk.view", 50, id)}).has_value());
  }
  const uint64_t lone_windows = b.stats().commit_windows;
  CHECK(lone_windows <= 4);
  // Two producers at once, each with a large request (its bodies take tens of milliseconds to
  // pack, its commit as long): the first to be queued is taken alone, and the other is queued
  // while it is committed (or, if both were queued by then, they share one group: the peak
  // learns that without a probe).
  auto large = [&](int from) {
    std::vector<StoredEvent> events;
    for (int i = 0; i < 50000; ++i) {
      events.push_back(makeEvent("kiosk.view", 50, from + i));
    }
    return events;
  };
  auto first = std::async(std::launch::async, [&] { return b.append(large(100000)); });
  auto second = std::async(std::launch::async, [&] { return b.append(large(200000)); });
  REQUIRE(first.get().has_value());
  REQUIRE(second.get().has_value());
  // The lone producer again: a probe within 64 decisions (20 ms of waiting for nobody).
  const uint64_t before = b.stats().commit_windows;
  for (int i = 0; i < 64; ++i) {
    REQUIRE(b.append({makeEvent("kiosk.view", 50, id++)}).has_value());
  }
  INFO("windows during the lone spell " << lone_windows << ", before " << before << ", after "
                                        << b.stats().commit_windows);
  CHECK(b.stats().commit_windows >= before + 1);
}

TEST_CASE("acknowledgements alone wait to share a commit, never while someone waits for them",
          "[unit][buffer]") {
  TempDir dir;
  BufferOptions o = optionsFor(dir);
  o.ack_delay = std::chrono::seconds(30);  // far longer than any wait below
  auto opened = openWith(o);
  auto& b = *opened;
  for (int i = 0; i < 600; ++i) {
    REQUIRE(b.append({makeEvent("kiosk.view", 50, i)}).has_value());
  }
  REQUIRE(pendingTotal(b) == 600);
  // Pending counts as the writer commits; true once `want` holds within 10 s.
  auto pendingBecomes = [&](int64_t want) {
    for (int i = 0; i < 1000 && pendingTotal(b) != want; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return pendingTotal(b) == want;
  };

  SECTION("held until a request comes, then committed with it, in one commit") {
    b.acknowledge(1, 1);
    b.acknowledge(2, 2);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    CHECK(pendingTotal(b) == 600);  // still held: no commit of their own
    const uint64_t commits = b.stats().commits;
    REQUIRE(b.append({makeEvent("kiosk.view", 50, 1000)}).has_value());
    CHECK(pendingBecomes(600 - 2 + 1));
    CHECK(b.stats().commits == commits + 1);
  }
  SECTION("syncAcknowledgements() has them committed at once") {
    b.acknowledge(1, 3);
    b.syncAcknowledgements();
    CHECK(pendingTotal(b) == 597);
    b.quarantine(4, 4, "refused");
    CHECK(b.syncAcknowledgementsFor(std::chrono::seconds(10)));
    CHECK(pendingTotal(b) == 596);
  }
  SECTION("acknowledgements as wide as a drain's batches are committed as they come") {
    b.acknowledge(1, 300);
    b.acknowledge(301, 600);  // 600 seqs queued: over kAckBatchSeqs
    CHECK(pendingBecomes(0));
  }
  SECTION("close() commits what it holds") {
    b.acknowledge(1, 10);
    b.close();
    auto again = openBuffer(dir);
    CHECK(pendingTotal(*again) == 590);
  }
}

TEST_CASE("a second agent on the same data dir is refused", "[unit][buffer]") {
  TempDir dir;
  auto b = openBuffer(dir);
  BufferOptions o;
  o.dir = dir.path();
  auto second = Buffer::open(o);
  REQUIRE_FALSE(second.has_value());
  CHECK(second.error().code == "busy");
}

TEST_CASE("a corrupt buffer is moved aside, a fresh one started, and readable events salvaged",
          "[unit][buffer]") {
  TempDir dir;
  {
    auto b = openBuffer(dir);
    for (int i = 0; i < 50; ++i) {
      REQUIRE(b->append({makeEvent("pos.transaction", 1500, i)}).has_value());
    }
  }
  SECTION("garbage over the header") {
    std::fstream f(dir / "buffer.db", std::ios::in | std::ios::out | std::ios::binary);
    const std::string junk(100, '\x5a');
    f.write(junk.data(), static_cast<std::streamsize>(junk.size()));
  }
  SECTION("garbage over a page in the middle") {
    std::fstream f(dir / "buffer.db", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(4096 * 6);
    const std::string junk(4096, '\x5a');
    f.write(junk.data(), static_cast<std::streamsize>(junk.size()));
  }
  auto b = openBuffer(dir);
  const auto& report = b->openReport();
  CHECK(report.recovered);
  CHECK_FALSE(report.problem.empty());
  CHECK(std::filesystem::exists(report.moved_to));
  CHECK(b->stats().pending[0] == report.salvaged);
  // The fresh buffer works.
  REQUIRE(b->append({makeEvent("kiosk.view", 10, 9999)}).has_value());
}

TEST_CASE("an unclean shutdown is detected at the next start", "[unit][buffer]") {
  TempDir dir;
  { auto b = openBuffer(dir); }
  dir.write("buffer.lock", "");  // as a kill -9 leaves it
  auto b = openBuffer(dir);
  CHECK(b->openReport().unclean_shutdown);
  CHECK(b->openReport().integrity_checked);
  CHECK_FALSE(b->openReport().recovered);
}

TEST_CASE("delivered events are kept for buffer.retain_delivered", "[unit][buffer]") {
  TempDir dir;
  BufferOptions o;
  o.dir = dir.path();
  o.min_free_disk = 0;
  o.retain_delivered_s = 3600;
  auto opened = Buffer::open(o);
  REQUIRE(opened.has_value());
  auto& b = *opened;
  REQUIRE(b->append({makeEvent("kiosk.view")}).has_value());
  auto p = b->readPending(0, 10, 1 << 20);
  REQUIRE(p.has_value());
  b->acknowledge(p->front().seq, p->front().seq);
  b->syncAcknowledgements();
  CHECK(pendingTotal(*b) == 0);
  b->close();
  auto ro = omniedge::store::openReadOnly(dir.path());
  REQUIRE(ro.has_value());
  sqlite3_stmt* st = nullptr;
  REQUIRE(sqlite3_prepare_v2(ro->get(), "SELECT count(*) FROM delivered", -1, &st, nullptr) ==
          SQLITE_OK);
  REQUIRE(sqlite3_step(st) == SQLITE_ROW);
  CHECK(sqlite3_column_int(st, 0) == 1);
  sqlite3_finalize(st);
}

TEST_CASE("with no free disk above buffer.min_free_disk every priority is pushed back",
          "[unit][buffer]") {
  TempDir dir;
  BufferOptions o;
  o.dir = dir.path();
  o.min_free_disk = int64_t{1} << 60;  // more than any disk: no room at all
  auto opened = Buffer::open(o);
  REQUIRE(opened.has_value());
  auto& b = *opened;
  auto pos = b->append({makeEvent("pos.transaction")});
  REQUIRE_FALSE(pos.has_value());
  CHECK(pos.error().code == "full");
  auto beacon = b->append({makeEvent("beacon.enter", 200, 2)});
  REQUIRE_FALSE(beacon.has_value());
  CHECK(beacon.error().code == "full");
  CHECK(b->stats().rejected_full == 2);
}

TEST_CASE("a delivered high-priority event is not stored again when it is read a second time",
          "[unit][buffer]") {
  TempDir dir;
  auto b = openBuffer(dir);
  auto sale = makeEvent("pos.transaction");
  sale.id = "store-042:ws-1:2026-11-22:17";
  auto view = makeEvent("kiosk.view", 100, 2);
  REQUIRE(b->append({sale, view}).has_value());
  auto p = b->readPending(0, 10, 1 << 20);
  REQUIRE(p.has_value());
  b->acknowledge(p->front().seq, p->back().seq);
  b->syncAcknowledgements();
  REQUIRE(pendingTotal(*b) == 0);

  auto again = b->append({sale, view});
  REQUIRE(again.has_value());
  CHECK(again->duplicates == 1);  // the sale: delivered before
  CHECK(again->stored == 1);      // normal priority is not remembered: the centre de-duplicates
  CHECK(b->stats().pending[0] == 0);
}

TEST_CASE("sequence numbers keep growing across restarts even when everything was delivered",
          "[unit][buffer]") {
  TempDir dir;
  int64_t last = 0;
  {
    auto b = openBuffer(dir);
    REQUIRE(b->append({makeEvent("kiosk.a", 10, 1), makeEvent("kiosk.b", 10, 2)}).has_value());
    auto p = b->readPending(0, 10, 1 << 20);
    REQUIRE(p.has_value());
    last = p->back().seq;
    b->acknowledge(p->front().seq, last);
    b->syncAcknowledgements();
  }
  auto b = openBuffer(dir);
  REQUIRE(b->append({makeEvent("kiosk.c", 10, 3)}).has_value());
  auto p = b->readPending(0, 10, 1 << 20);
  REQUIRE(p.has_value());
  REQUIRE(p->size() == 1);
  CHECK(p->front().seq > last);
}

TEST_CASE("quarantined events leave the queue, are counted and summarised, and survive a restart",
          "[unit][buffer]") {
  TempDir dir;
  std::vector<StoredEvent> batch;
  for (int i = 0; i < 10; ++i) {
    batch.push_back(makeEvent(i < 2 ? "pos.transaction" : "kiosk.view", 300, 100 + i));
  }
  int64_t first = 0;
  int64_t used_before = 0;
  {
    auto b = openBuffer(dir);
    REQUIRE(b->append(batch).has_value());
    used_before = b->stats().pending_bytes;
    auto p = b->readPending(0, 100, 1 << 20);
    REQUIRE(p.has_value());
    first = p->front().seq;
    b->quarantine(first, first + 3, "HTTP 422: data.sku is required");
    b->quarantine(first + 4, first + 4, "");
    b->syncAcknowledgements();
    const auto s = b->stats();
    CHECK(s.quarantined == 5);
    CHECK(s.quarantine_events == 5);
    CHECK(s.pending[0] + s.pending[1] + s.pending[2] == 5);
    CHECK(s.pending[0] == 0);  // both sales were in the refused range
    // The bytes moved from the queue to the quarantine, exactly.
    CHECK(s.quarantine_bytes + s.pending_bytes == used_before);
    CHECK(s.quarantine_oldest_ms > 0);
    CHECK(s.quarantine_last_reason == "refused by the centre");
    CHECK(s.acknowledged == 0);
    auto rest = b->readPending(0, 100, 1 << 20);
    REQUIRE(rest.has_value());
    CHECK(rest->front().seq == first + 5);
  }
  auto b = openBuffer(dir);
  const auto s = b->stats();
  CHECK(s.quarantine_events == 5);
  CHECK(s.quarantine_bytes + s.pending_bytes == used_before);
  CHECK(s.quarantine_last_reason == "refused by the centre");
  CHECK(s.quarantined == 0);  // since this start
}

TEST_CASE("retryQuarantine moves quarantined events back to pending with new seqs",
          "[unit][buffer]") {
  TempDir dir;
  auto b = openBuffer(dir);
  std::vector<StoredEvent> batch;
  for (int i = 0; i < 6; ++i) {
    batch.push_back(makeEvent("kiosk.view", 200, 200 + i));
  }
  REQUIRE(b->append(batch).has_value());
  auto p = b->readPending(0, 100, 1 << 20);
  REQUIRE(p.has_value());
  const int64_t first = p->front().seq;
  b->quarantine(first, first + 3, "schema");
  b->syncAcknowledgements();
  REQUIRE(b->stats().quarantine_events == 4);
  const int64_t last_before = b->stats().last_seq;
  const int64_t bytes_before = b->stats().pending_bytes + b->stats().quarantine_bytes;

  auto moved = b->retryQuarantine();
  REQUIRE(moved.has_value());
  CHECK(*moved == 4);
  const auto s = b->stats();
  CHECK(s.quarantine_events == 0);
  CHECK(s.quarantine_bytes == 0);
  CHECK(s.quarantine_oldest_ms == 0);
  CHECK(s.quarantine_last_reason.empty());
  CHECK(s.quarantine_retried == 4);
  CHECK(s.pending[1] == 6);
  CHECK(s.pending_bytes == bytes_before);
  auto all = b->readPending(0, 100, 1 << 20);
  REQUIRE(all.has_value());
  REQUIRE(all->size() == 6);
  // The two that were never quarantined first, then the four again, in their old order, each
  // with a seq never given before: an old acknowledgement cannot touch them.
  CHECK(all->at(0).seq == first + 4);
  for (int i = 0; i < 4; ++i) {
    CHECK(all->at(2 + i).seq > last_before);
    CHECK(all->at(2 + i).body.find(batch[i].id) != std::string::npos);
  }
  b->acknowledge(first, first + 3);  // the old range: nothing there any more
  b->syncAcknowledgements();
  CHECK(pendingTotal(*b) == 6);
  // Nothing left: zero, not an error.
  auto none = b->retryQuarantine();
  REQUIRE(none.has_value());
  CHECK(*none == 0);
}

TEST_CASE("the tail ring is bounded by bytes as well as by count, and says what it left out",
          "[unit][buffer]") {
  TempDir dir;
  BufferOptions o;
  o.dir = dir.path();
  o.min_free_disk = 0;
  o.recent_max_bytes = 10000;
  auto opened = Buffer::open(o);
  REQUIRE(opened.has_value());
  auto& b = *opened;
  std::vector<StoredEvent> big;
  for (int i = 0; i < 30; ++i) {
    big.push_back(makeEvent("kiosk.view", 1000, 300 + i));
  }
  REQUIRE(b->append(big).has_value());
  auto tail = b->recent(0, Buffer::kRecentEvents);
  REQUIRE_FALSE(tail.empty());
  std::size_t bytes = 0;
  for (const auto& r : tail) {
    bytes += r.body.size();
  }
  CHECK(bytes <= 10000);
  CHECK(tail.size() < 30);
  // The newest are kept.
  CHECK(tail.back().body.find(big.back().id) != std::string::npos);
  const auto s = b->stats();
  CHECK(s.recent_events == tail.size());
  CHECK(s.recent_bytes == bytes);
  CHECK(s.recent_dropped == 30 - tail.size());
  // One body larger than the whole ring is not kept, and counted.
  REQUIRE(b->append({makeEvent("kiosk.view", 20000, 999)}).has_value());
  CHECK(b->stats().recent_dropped == 30 - tail.size() + 1);
  CHECK(b->recent(0, Buffer::kRecentEvents).back().body.find(big.back().id) != std::string::npos);
}

TEST_CASE("status learns the WAL's size and since when producers are refused", "[unit][buffer]") {
  TempDir dir;
  auto b = openBuffer(dir, 32 * 1024);
  REQUIRE(b->append({makeEvent("kiosk.view", 200, 1)}).has_value());
  auto s = b->stats();
  CHECK(s.wal_bytes > 0);
  CHECK(s.wal_peak_bytes >= s.wal_bytes);
  CHECK(s.file_bytes > 0);
  CHECK(s.last_full_ms == 0);
  CHECK(s.full_since_ms == 0);
  omniedge::Error refused;
  for (int i = 0; i < 200 && refused.code.empty(); ++i) {
    auto r = b->append({makeEvent("pos.transaction", 400, 10 + i)});
    if (!r) {
      refused = r.error();
    }
  }
  REQUIRE(refused.code == "full");
  s = b->stats();
  CHECK(s.last_full_ms > 0);
  CHECK(s.full_since_ms > 0);
  CHECK(s.full_since_ms <= s.last_full_ms);
  const int64_t since = s.full_since_ms;
  CHECK_FALSE(b->append({makeEvent("pos.transaction", 400, 5000)}).has_value());
  CHECK(b->stats().full_since_ms == since);  // still the same stretch of refusals
  // Room again: the next accepted request ends the stretch.
  auto p = b->readPending(0, 1000, 1 << 20);
  REQUIRE(p.has_value());
  b->acknowledge(p->front().seq, p->back().seq);
  b->syncAcknowledgements();
  REQUIRE(b->append({makeEvent("pos.transaction", 400, 6000)}).has_value());
  CHECK(b->stats().full_since_ms == 0);
  CHECK(b->stats().last_full_ms >= since);
}

TEST_CASE("releaseMemory empties the connections' page caches and the buffer goes on working",
          "[unit][buffer]") {
  TempDir dir;
  auto b = openBuffer(dir);
  std::vector<StoredEvent> events;
  for (int i = 0; i < 4000; ++i) {
    events.push_back(makeEvent("kiosk.view", 400, i));
  }
  REQUIRE(b->append(events).has_value());
  auto pending = b->readPending(0, 4000, 64 << 20);  // the reader's cache fills too
  REQUIRE(pending.has_value());
  REQUIRE(pending->size() == 4000);
  // ~2 MB of file: both caches (2,000 KiB each at most) hold hundreds of pages now.
  const int64_t before = sqlite3_memory_used();
  REQUIRE(b->releaseMemory(std::chrono::seconds(10)));
  const int64_t after = sqlite3_memory_used();
  INFO("sqlite3_memory_used before " << before << ", after " << after);
  CHECK(before - after > 1'000'000);

  REQUIRE(b->append({makeEvent("kiosk.after", 100, 5000)}).has_value());
  auto again = b->readPending(pending->back().seq, 10, 1 << 20);
  REQUIRE(again.has_value());
  REQUIRE(again->size() == 1);
  CHECK(again->front().body.find("\"pad\"") != std::string::npos);
  CHECK(pendingTotal(*b) == 4001);

  b->close();
  CHECK_FALSE(b->releaseMemory(std::chrono::milliseconds(100)));  // stopping: nothing to do
}

TEST_CASE("readPending answers from memory exactly what the file holds, whatever happened",
          "[unit][buffer]") {
  // The ring of recent events answers readPending() while the reader keeps up; the file
  // answers otherwise. Through appends (some of low priority into a small buffer, so that they
  // are evicted), acknowledgements and quarantines of ranges, the quarantine's retry, an
  // erasure, and bodies too large for the ring, both must give the same events, byte for byte.
  TempDir dir;
  BufferOptions o = optionsFor(dir, 256 * 1024);
  o.recent_max_bytes = 64 * 1024;
  o.pack_bodies = true;
  o.ack_delay = std::chrono::milliseconds(20);  // ranges queued together share a commit
  auto b = openWith(o);
  std::minstd_rand rng(20261205);
  auto pick = [&](int64_t lo, int64_t hi) {
    return lo >= hi ? lo : lo + static_cast<int64_t>(rng() % static_cast<uint64_t>(hi - lo + 1));
  };
  // Every read the sync engine could make, from memory and from the file: the same events, and
  // the counters the file's own.
  const auto compareWithFile = [&] {
    b->syncAcknowledgements();
    const int64_t now_last = b->stats().last_seq;
    for (const int64_t after : {int64_t{0}, now_last, now_last - 1,
                                pick(std::max<int64_t>(0, now_last - 300), now_last)}) {
      const auto max_events = static_cast<std::size_t>(pick(1, 300));
      const auto max_bytes = static_cast<std::size_t>(pick(1000, 200000));
      auto mem = b->readPending(after, max_events, max_bytes);
      auto file = b->readPendingFromFile(after, max_events, max_bytes);
      REQUIRE(mem.has_value());
      REQUIRE(file.has_value());
      REQUIRE(mem->size() == file->size());
      for (std::size_t i = 0; i < mem->size(); ++i) {
        REQUIRE(mem->at(i).seq == file->at(i).seq);
        REQUIRE(mem->at(i).body == file->at(i).body);
      }
    }
    // Acknowledged ranges are counted from the ring too: the counters stay the file's own.
    const auto counted = b->stats();
    for (int p = 0; p < 3; ++p) {
      const std::string where = "WHERE prio = " + std::to_string(p);
      REQUIRE(counted.pending[p] ==
              fileInteger(dir, ("SELECT coalesce(sum(n), 0) FROM events " + where).c_str()));
      REQUIRE(counted.pending_bytes_by_priority[p] == heldBytes(dir, where));
    }
  };
  int64_t ms = 0;
  int64_t rows_of_several = 0;  // appends after which the file held some
  const std::vector<std::string> types = {"kiosk.view", "beacon.enter"};
  for (int step = 0; step < 400; ++step) {
    const int64_t last = b->stats().last_seq;
    const auto what = pick(0, 19);
    if (what < 10) {
      std::vector<StoredEvent> events;
      const auto n = pick(1, 80);
      // Half of them a kiosk's request: ids the agent made, one receipt time, stored as rows of
      // several events (which every range above cuts through anywhere).
      const bool request = pick(0, 1) == 0;
      const int64_t request_ms = ++ms;
      for (int64_t i = 0; i < n; ++i) {
        const auto size =
            static_cast<std::size_t>(pick(0, 9) == 0 ? pick(20000, 70000) : pick(50, 900));
        // POS events (whose delivered ids are remembered) one in eight.
        events.push_back(makeEvent(request || pick(0, 7) != 0
                                       ? types[request ? 0 : static_cast<std::size_t>(pick(0, 1))]
                                       : "pos.transaction",
                                   size, request ? request_ms : ++ms));
        if (request) {
          events.back().id_origin = omniedge::store::IdOrigin::kAgent;
        }
      }
      (void)b->append(events);  // "full" is an answer too: nothing of it stored
      rows_of_several += fileInteger(dir, "SELECT count(*) FROM events WHERE n > 1") > 0 ? 1 : 0;
    } else if (what < 14 && last > 0) {
      const int64_t first = pick(std::max<int64_t>(1, last - 150), last);
      b->acknowledge(first, pick(first, last));
    } else if (what < 16 && last > 0) {
      const int64_t first = pick(std::max<int64_t>(1, last - 150), last);
      b->quarantine(first, pick(first, last), "schema");
    } else if (what == 18 && last > 0) {
      // Overlapping ranges in one commit: the second finds rows the first already took.
      const int64_t first = pick(std::max<int64_t>(1, last - 10), last);
      b->acknowledge(first, pick(first, last));
      b->quarantine(pick(std::max<int64_t>(1, first - 3), first), pick(first, last), "late");
    } else if (what == 16) {
      (void)b->retryQuarantine();  // "full" is an answer too
    } else if (what == 17) {
      // An erasure: drop the events whose body holds one of these ids.
      auto some = b->readPendingFromFile(std::max<int64_t>(0, last - 100), 100, 1 << 30);
      REQUIRE(some.has_value());
      std::vector<std::string> needles;
      for (std::size_t i = 0; i < some->size(); i += 7) {
        needles.push_back(some->at(i).body.substr(7, 36));
      }
      REQUIRE(
          b->editEvents(
               needles,
               [](const std::string&, const std::string&) {
                 return omniedge::store::EventEdit{omniedge::store::EventEdit::Action::kDrop, {}};
               },
               false)
              .has_value());
    }
    compareWithFile();
  }
  // However the walk went, low-priority events are evicted: they and normal ones take turns
  // filling what room is left (bodies of random hex, which packing cannot shrink), and a normal
  // one finding the buffer full takes a low one's room.
  const auto hexOf = [&](std::size_t n) {
    std::string h(n, '0');
    for (auto& c : h) {
      c = "0123456789abcdef"[rng() % 16];
    }
    return h;
  };
  for (int i = 0; i < 4000 && b->stats().evicted == 0; ++i) {
    auto e = makeEvent(i % 2 == 0 ? "beacon.enter" : "kiosk.view", 1, ++ms);
    e.body.insert(e.body.size() - 2, hexOf(900));
    std::vector<StoredEvent> events;
    events.push_back(std::move(e));
    (void)b->append(events);
  }
  compareWithFile();
  // Evictions, quarantines and the ring's bounds all happened, and the ring did answer.
  const auto s = b->stats();
  CHECK(s.evicted > 0);
  CHECK(s.quarantined > 0);
  CHECK(s.quarantine_retried > 0);
  CHECK(s.recent_dropped > 0);
  CHECK(s.reads_from_ring > 200);
  CHECK(s.reads_from_file > 400);
  // Rows of several events were there to cut.
  CHECK(rows_of_several > 0);
}
