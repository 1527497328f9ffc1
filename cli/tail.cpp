// `omniedge tail`: the newest events, from the daemon's ring of recent events (delivered ones
// included) and the buffer file (pending ones, and delivered ones buffer.retain_delivered
// keeps); from the file alone, read-only, when no daemon answers.
#include <algorithm>
#include <chrono>
#include <iostream>
#include <map>
#include <thread>

#include "cli/buffer_file.h"
#include "cli/commands.h"
#include "cli/format.h"
#include "cli/json_view.h"

namespace omniedge::cli {
namespace {

using nlohmann::json;

constexpr std::size_t kDataWidth = 100;

struct Printer {
  bool json_lines = false;
  Columns columns;

  void add(const BufferRow& r) {
    if (json_lines) {
      std::cout << r.body << "\n";
      return;
    }
    auto e = json::parse(r.body, nullptr, false);
    if (e.is_discarded() || !e.is_object()) {
      columns.add({"?", r.type, "", "", r.body});
      return;
    }
    std::string data = member(e, "data").is_null()
                           ? "{}"
                           : e["data"].dump(-1, ' ', false, json::error_handler_t::replace);
    if (data.size() > kDataWidth) {
      data = data.substr(0, kDataWidth - 3) + "...";
    }
    columns.add(
        {str(e, "occurred_at"), str(e, "type", r.type), str(e, "id"), str(e, "source"), data});
  }
  void flush() {
    columns.print(std::cout);
    std::cout.flush();
  }
};

// The newest `limit` rows with seq < before_seq from the file, oldest first.
std::vector<BufferRow> newestFromFile(const BufferFile& file, const std::string& glob,
                                      int64_t limit, int64_t before_seq, std::string& error) {
  std::vector<BufferRow> rows;
  if (limit <= 0) {
    return rows;
  }
  Scan scan;
  scan.glob = glob;
  scan.before_seq = before_seq;
  scan.newest_first = true;
  auto r = file.scan(scan, [&](BufferRow&& row) {
    rows.push_back(std::move(row));
    return static_cast<int64_t>(rows.size()) < limit;
  });
  if (!r) {
    error = r.error().message;
  }
  std::reverse(rows.begin(), rows.end());
  return rows;
}

// Rows from the daemon's tail answer.
std::vector<BufferRow> rowsOf(const json& answer) {
  std::vector<BufferRow> rows;
  const json& events = member(answer, "events");
  if (events.is_array()) {
    for (const auto& e : events) {
      rows.push_back(BufferRow{num(e, "seq"), str(e, "type"), str(e, "body"), 0, true});
    }
  }
  return rows;
}

int run(const CommandSpec& spec, const Invocation& inv) {
  const int64_t n = inv.vm["lines"].as<int64_t>();
  if (n < 0) {
    return usageError(spec, "-n/--lines must be 0 or more, got " + std::to_string(n));
  }
  const std::string glob = inv.vm["type"].as<std::string>();
  auto loaded = loadConfig(spec, inv);
  if (!loaded) {
    return kConfigError;
  }
  const std::filesystem::path dir = loaded->cfg.str("data.dir");
  Daemon daemon(*loaded);
  Printer printer;
  printer.json_lines = inv.has("json");
  int64_t last = 0;  // the highest seq already considered

  // The daemon's ring holds kMaxRing events; it says how many in ring_size.
  constexpr int64_t kMaxRing = 1000;
  auto recent = daemon.request({{"cmd", "tail"}, {"limit", std::min(n, kMaxRing)}, {"type", glob}});
  const bool up = recent && flag(*recent, "ok");
  std::vector<BufferRow> rows;
  std::string file_error;
  if (up) {
    const int64_t ring = num(*recent, "ring_size", kMaxRing);
    {
      rows = rowsOf(*recent);
      last = num(*recent, "last_seq");
      // Older events than the ring holds (or all, after a restart emptied it) from the file.
      const int64_t oldest_in_ring = num(*recent, "ring_oldest_seq");
      const int64_t missing = n - static_cast<int64_t>(rows.size());
      if (missing > 0) {
        if (auto file = BufferFile::open(dir)) {
          auto older = newestFromFile(*file, glob, missing,
                                      oldest_in_ring > 0 ? oldest_in_ring : last + 1, file_error);
          rows.insert(rows.begin(), older.begin(), older.end());
        }
      }
      if (n > ring) {
        std::cerr << "omniedge tail: -n " << n << " is more than the " << ring
                  << " recent events the daemon keeps in memory; older events come from the "
                     "buffer file, which keeps delivered events only with "
                     "buffer.retain_delivered ("
                  << rows.size() << " found)\n";
      }
    }
  } else {
    auto file = BufferFile::open(dir);
    if (!file) {
      std::cerr << "omniedge tail: the daemon does not answer and " << file.error().message << "\n"
                << daemon.whereLooked("  ");
      return kFailure;
    }
    rows = newestFromFile(*file, glob, n, INT64_MAX, file_error);
    last = file->maxSeq();
  }
  if (!file_error.empty()) {
    std::cerr << "omniedge tail: " << file_error << "\n";
    return kFailure;
  }
  for (const auto& r : rows) {
    printer.add(r);
    last = std::max(last, r.seq);
  }
  printer.flush();
  if (!inv.has("follow")) {
    return kOk;
  }
  // Follow: poll whichever answers, the daemon or the file, for seq > last.
  for (;;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
    std::vector<BufferRow> fresh;
    auto more =
        daemon.request({{"cmd", "tail"}, {"after_seq", last}, {"limit", 1000}, {"type", glob}});
    if (more && flag(*more, "ok")) {
      fresh = rowsOf(*more);
      // Events that did not match the glob are behind us too.
      last = std::max(last, num(*more, "last_seq"));
    } else if (auto file = BufferFile::open(dir)) {
      Scan scan;
      scan.glob = glob;
      scan.after_seq = last;
      (void)file->scan(scan, [&](BufferRow&& row) {
        fresh.push_back(std::move(row));
        return fresh.size() < 1000;
      });
    }
    for (const auto& r : fresh) {
      printer.add(r);
      last = std::max(last, r.seq);
    }
    printer.flush();
  }
}

}  // namespace

Command tailCommand() {
  CommandSpec spec;
  spec.name = "tail";
  spec.synopsis = "[-n N] [--type GLOB] [--follow] [--json]";
  spec.summary = "the newest events (from the daemon, or read-only from the buffer)";
  spec.details =
      "Columns: occurred_at, type, id, source, data (cut at 100 characters; --json prints\n"
      "each whole envelope). With the daemon running, recent events come from its memory\n"
      "(the last 1000, delivered ones included) and older ones from the buffer file; with it\n"
      "down, from the file alone (pending events, and delivered ones only with\n"
      "buffer.retain_delivered). `-n 0 --follow` prints only events that arrive from now on.";
  spec.options = [](po::options_description& o) {
    o.add_options()("lines,n", po::value<int64_t>()->default_value(20)->value_name("N"),
                    "how many of the newest events to print (0 or more)")(
        "type", po::value<std::string>()->default_value("*")->value_name("GLOB"),
        "only types matching this glob, e.g. 'pos.*'")(
        "follow,f", "keep printing new events until interrupted (Ctrl-C)")(
        "json", "print each event's JSON envelope, one per line");
  };
  return {spec, run};
}

}  // namespace omniedge::cli
