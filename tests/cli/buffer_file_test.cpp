// The CLI's read of the buffer file without the daemon (cli/buffer_file.h): export and tail see
// every event of a row of several events under its own seq, in either order, from any seq on,
// with the pending ones and the delivered ones kept merged in seq order.
#include "cli/buffer_file.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "agent/api/uuid.h"
#include "agent/store/buffer.h"
#include "tests/support/temp_dir.h"

using omniedge::cli::BufferFile;
using omniedge::cli::BufferRow;
using omniedge::cli::Scan;
using omniedge::store::Buffer;
using omniedge::store::BufferOptions;
using omniedge::store::IdOrigin;
using omniedge::store::StoredEvent;
using omniedge::testing::TempDir;

TEST_CASE("the CLI reads each event of a row of several under its own seq, both ways, from any seq",
          "[unit][cli]") {
  TempDir dir;
  BufferOptions o;
  o.dir = dir.path();
  o.min_free_disk = 0;
  o.retain_delivered_s = 3600;
  std::vector<StoredEvent> request;  // one kiosk request: ids the agent made, one receipt time
  for (int i = 0; i < 70; ++i) {
    StoredEvent e;
    e.id = omniedge::makeUuidV7(1764843302481);
    e.id_origin = IdOrigin::kAgent;
    e.type = "kiosk.view";
    e.priority = omniedge::priorityOf(e.type);
    e.received_at_ms = 1764843302484;
    e.body = R"({"id":")" + e.id + R"(","type":"kiosk.view","data":{"sku":"SKU-)" +
             std::to_string(1000 + i) + R"(","screen":"detail"}})";
    request.push_back(std::move(e));
  }
  int64_t first = 0;
  {
    auto b = Buffer::open(o);
    REQUIRE(b.has_value());
    REQUIRE((*b)->append(request).has_value());
    auto pending = (*b)->readPending(0, 1000, 1 << 20);
    REQUIRE(pending.has_value());
    REQUIRE(pending->size() == 70);
    first = pending->front().seq;
    // Delivered and kept: seqs 20 to 29 of the request, cut out of the rows that held them.
    (*b)->acknowledge(first + 20, first + 29);
    (*b)->syncAcknowledgements();
    (*b)->close();
  }
  auto file = BufferFile::open(dir.path());
  REQUIRE(file.has_value());
  CHECK(file->maxSeq() == first + 69);
  CHECK(file->pendingEvents() == 60);
  // Fewer rows than events: the request is stored as rows of several.
  CHECK(file->integer("SELECT count(*) FROM events").value_or(0) < 10);

  auto scanned = [&](Scan scan) {
    std::vector<BufferRow> rows;
    auto r = file->scan(scan, [&](BufferRow&& row) {
      rows.push_back(std::move(row));
      return true;
    });
    REQUIRE(r.has_value());
    return rows;
  };
  auto expect = [&](const std::vector<BufferRow>& rows, std::vector<int> want) {
    REQUIRE(rows.size() == want.size());
    for (std::size_t k = 0; k < want.size(); ++k) {
      INFO("row " << k);
      const auto i = static_cast<std::size_t>(want[k]);
      CHECK(rows[k].seq == first + want[k]);
      CHECK(rows[k].body == request[i].body);
      CHECK(rows[k].type == "kiosk.view");
      CHECK(rows[k].received_ms == 1764843302484);
      CHECK(rows[k].pending == (want[k] < 20 || want[k] > 29));
    }
  };
  auto range = [](int from, int to, bool down = false) {  // [from, to)
    std::vector<int> v;
    for (int i = from; i < to; ++i) {
      v.push_back(i);
    }
    if (down) {
      std::reverse(v.begin(), v.end());
    }
    return v;
  };
  expect(scanned(Scan{}), range(0, 70));
  Scan tail;
  tail.newest_first = true;
  expect(scanned(tail), range(0, 70, true));
  // From seqs inside rows of several events, and up to one.
  for (const int after : {3, 19, 33, 40, 63, 68}) {
    INFO("after " << after);
    Scan from;
    from.after_seq = first + after;
    expect(scanned(from), range(after + 1, 70));
    Scan before;
    before.before_seq = first + after;
    before.newest_first = true;
    expect(scanned(before), range(0, after, true));
  }
  Scan pending_only;
  pending_only.pending_only = true;
  std::vector<int> pending = range(0, 20);
  for (int i = 30; i < 70; ++i) {
    pending.push_back(i);
  }
  expect(scanned(pending_only), pending);
}
