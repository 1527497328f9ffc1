// `omniedge import FILE`: re-ingests an export (JSON Lines, .gz allowed). Two passes: the first
// checks every line as the daemon's ingest would (nothing is stored if any line is bad, and the
// error names the line and the field), the second stores. Through the daemon when it answers;
// when it does not, straight into the buffer through the same Ingest (same checks, same PII
// hashing, same configuration), holding the buffer's lock like the daemon.
#include <grp.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <cstring>
#include <iostream>

#include "agent/agent.h"
#include "agent/api/clock.h"
#include "agent/ingest/envelope.h"
#include "agent/ingest/ingest.h"
#include "agent/ingest/pii.h"
#include "agent/store/buffer.h"
#include "agent/store/profile_cache.h"
#include "cli/commands.h"
#include "cli/format.h"
#include "cli/json_view.h"
#include "cli/remote_config_cli.h"

namespace omniedge::cli {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// A chunk stays well below the control socket's 1 MiB request limit.
constexpr std::size_t kChunkEvents = 500;
constexpr std::size_t kChunkBytes = 256 * 1024;

/// Lines of a (possibly gzip-compressed) file, bounded in length; blank lines are skipped.
class LineReader {
 public:
  LineReader(gzFile in, std::size_t max_line) : in_(in), max_line_(max_line) {}

  /// The next non-blank line (without its end of line) into `line`; false at the end of the
  /// file or on an error (error() then says which).
  bool next(std::string& line) {
    for (;;) {
      line.clear();
      bool got_any = false;
      for (;;) {
        const char* got = gzgets(in_, buf_, sizeof(buf_));
        if (got == nullptr) {
          int code = Z_OK;
          const char* msg = gzerror(in_, &code);
          if (code != Z_OK && code != Z_BUF_ERROR) {
            error_ = std::string("reading failed: ") + msg;
            return false;
          }
          break;
        }
        got_any = true;
        line += got;
        if (line.size() > max_line_) {
          error_ = "line " + std::to_string(number_ + 1) + " is longer than " +
                   std::to_string(max_line_ / 1024) + " KiB: not an event envelope";
          return false;
        }
        if (!line.empty() && line.back() == '\n') {
          break;
        }
      }
      if (!got_any) {
        return false;  // the end
      }
      ++number_;
      while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) {
        line.pop_back();
      }
      if (number_ == 1 && line.rfind("\xEF\xBB\xBF", 0) == 0) {
        line.erase(0, 3);  // a byte-order mark from an editor
      }
      if (line.find_first_not_of(" \t") == std::string::npos) {
        ++blank_;
        continue;
      }
      return true;
    }
  }
  int64_t number() const { return number_; }
  int64_t blank() const { return blank_; }
  const std::string& error() const { return error_; }

 private:
  gzFile in_;
  std::size_t max_line_;
  char buf_[64 * 1024];
  int64_t number_ = 0;
  int64_t blank_ = 0;
  std::string error_;
};

/// Where chunks go: the daemon or the buffer itself.
class Sink {
 public:
  struct Stored {
    int64_t stored = 0;
    int64_t duplicates = 0;
    int64_t consent_dropped = 0;
  };
  /// A refusal of the i-th event of a chunk (index), or of the whole chunk (index < 0).
  struct Refusal {
    std::string message;
    std::string code;
    int64_t index = -1;
    std::string field;
  };
  virtual ~Sink() = default;
  /// Checks (dry run) or stores the chunk; a refusal as a value.
  virtual std::variant<Stored, Refusal> send(const json& events, bool dry_run) = 0;
  virtual std::string where() const = 0;
};

class DaemonSink final : public Sink {
 public:
  explicit DaemonSink(Daemon& d) : daemon_(d) {}
  std::variant<Stored, Refusal> send(const json& events, bool dry_run) override {
    json request = {{"cmd", "import"}, {"events", events}};
    if (dry_run) {
      request["dry_run"] = true;
    }
    auto answer = daemon_.request(request, 60000);
    if (!answer) {
      return Refusal{"the daemon stopped answering: " + daemon_.whereLooked(""), "unreachable", -1,
                     ""};
    }
    if (!flag(*answer, "ok")) {
      return Refusal{str(*answer, "error", "refused"), str(*answer, "code"),
                     num(*answer, "index", -1), str(*answer, "field")};
    }
    return Stored{num(*answer, "stored"), num(*answer, "duplicates"),
                  num(*answer, "consent_dropped")};
  }
  std::string where() const override { return "through the daemon"; }

 private:
  Daemon& daemon_;
};

class BufferSink final : public Sink {
 public:
  /// `pii` was made (its key read) before the caller dropped privileges.
  static Result<std::unique_ptr<BufferSink>> open(const config::Config& cfg,
                                                  std::unique_ptr<PiiHasher> pii) {
    std::unique_ptr<BufferSink> s(new BufferSink(cfg));
    s->pii_ = std::move(pii);
    const store::BufferOptions bo = bufferOptions(cfg);  // the daemon's own, agent/agent.h
    auto buffer = store::Buffer::open(bo);
    if (!buffer) {
      return buffer.error();
    }
    s->buffer_ = std::move(*buffer);
    auto profiles = openProfileCache(cfg);
    if (!profiles) {
      return profiles.error();
    }
    s->profiles_ = std::move(*profiles);
    s->ingest_ = std::make_unique<Ingest>(ingestOptions(cfg), *s->buffer_, *s->pii_, s->clock_,
                                          s->profiles_.get());
    s->reportRecovery();
    return s;
  }
  ~BufferSink() override {
    if (buffer_) {
      buffer_->close();
    }
  }

  std::variant<Stored, Refusal> send(const json& events, bool dry_run) override {
    std::vector<Event> list;
    for (std::size_t i = 0; i < events.size(); ++i) {
      auto e = eventFromEnvelope(events[i], "event");
      if (!e) {
        return Refusal{e.error().message, e.error().code, static_cast<int64_t>(i), e.error().field};
      }
      list.push_back(std::move(*e));
    }
    if (dry_run) {
      const int64_t now = clock_.nowMs();
      for (std::size_t i = 0; i < list.size(); ++i) {
        if (auto p = ingest_->prepare(list[i], i, now); !p) {
          return refusalOf(p.error(), static_cast<int64_t>(i));
        }
      }
      return Stored{};
    }
    auto r = ingest_->appendExported(std::move(list));
    if (!r) {
      return refusalOf(r.error(), -1);
    }
    return Stored{static_cast<int64_t>(r->stored), static_cast<int64_t>(r->duplicates),
                  static_cast<int64_t>(r->consent_dropped)};
  }
  std::string where() const override {
    return "straight into the buffer in " + dir_ + " (the daemon is not running)";
  }

 private:
  explicit BufferSink(const config::Config& cfg) : dir_(cfg.str("data.dir")) {}

  // Ingest names a field "[i].type".
  static Refusal refusalOf(const Error& e, int64_t fallback) {
    Refusal r{e.message, e.code, fallback, e.field};
    if (r.field.size() > 2 && r.field.front() == '[') {
      if (const auto close = r.field.find(']'); close != std::string::npos) {
        r.index = std::strtoll(r.field.c_str() + 1, nullptr, 10);
        r.field = r.field.substr(std::min(r.field.size(), close + 2));
      }
    }
    return r;
  }

  // The daemon reports a buffer it had to recover at start; opening it here did the recovery,
  // so report it here, or nobody would.
  void reportRecovery() {
    const auto& report = buffer_->openReport();
    if (!report.recovered) {
      return;
    }
    std::cerr << "omniedge import: the buffer was damaged (" << report.problem
              << "); it was moved to " << report.moved_to << " and " << report.salvaged
              << " events were saved from it\n";
    Event e;
    e.type = "agent.buffer_recovered";
    e.source = "agent";
    e.data_json = json{{"problem", report.problem},
                       {"moved_to", report.moved_to},
                       {"salvaged_events", report.salvaged},
                       {"by", "omniedge import"}}
                      .dump(-1, ' ', false, json::error_handler_t::replace);
    (void)ingest_->append({e});
  }

  std::string dir_;
  SystemClock clock_;
  std::unique_ptr<PiiHasher> pii_;
  std::unique_ptr<store::Buffer> buffer_;
  std::unique_ptr<store::ProfileCache> profiles_;
  std::unique_ptr<Ingest> ingest_;
};

// As root on a device, what the import creates in the data dir (-wal, -shm, buffer.lock,
// profiles.db) must belong to the service's user, or the daemon could not open it afterwards:
// become the data dir's owner first (after reading what only root may read).
Result<void> becomeDataDirOwner(const fs::path& dir) {
  if (::geteuid() != 0) {
    return {};
  }
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0 || st.st_uid == 0) {
    return {};  // no service user owns it (yet): the import creates what it needs as is
    return {};
  }
  if (::setgroups(0, nullptr) != 0 || ::setgid(st.st_gid) != 0 || ::setuid(st.st_uid) != 0) {
    return makeError("io", std::string("cannot become the data dir's owner (uid ") +
                               std::to_string(st.st_uid) + "): " + std::strerror(errno));
  }
  return {};
}

struct Totals {
  int64_t events = 0;
  Sink::Stored stored;
};

// One pass over the file: checks (dry run) or stores. Returns an error message naming the
// line, or "" when the whole file went through.
std::string pass(const std::string& path, std::size_t max_line, Sink& sink, bool dry_run,
                 Totals& totals, int64_t& blank) {
  gzFile in = gzopen(path.c_str(), "rb");  // reads plain files too
  if (in == nullptr) {
    return "cannot read " + path + ": " + std::strerror(errno);
  }
  LineReader reader(in, max_line);
  json chunk = json::array();
  std::vector<int64_t> chunk_lines;  // the line of each event in the chunk
  std::size_t chunk_bytes = 0;
  std::string failure;
  // Sends the chunk; a refusal becomes `failure`, naming the line it came from.
  const auto send = [&]() {
    if (chunk.empty()) {
      return;
    }
    auto outcome = sink.send(chunk, dry_run);
    if (const auto* r = std::get_if<Sink::Refusal>(&outcome)) {
      if (r->index >= 0 && r->index < static_cast<int64_t>(chunk_lines.size())) {
        failure = "line " + std::to_string(chunk_lines[static_cast<std::size_t>(r->index)]) +
                  (r->field.empty() ? "" : " (" + r->field + ")") + ": " + r->message;
      } else {
        failure = "lines " + std::to_string(chunk_lines.front()) + "-" +
                  std::to_string(chunk_lines.back()) + ": " + r->message;
      }
      return;
    }
    const auto& s = std::get<Sink::Stored>(outcome);
    totals.events += static_cast<int64_t>(chunk.size());
    totals.stored.stored += s.stored;
    totals.stored.duplicates += s.duplicates;
    totals.stored.consent_dropped += s.consent_dropped;
    chunk = json::array();
    chunk_lines.clear();
    chunk_bytes = 0;
  };
  std::string line;
  while (failure.empty() && reader.next(line)) {
    if (!jsonNestingWithin(line, kMaxEventDepth)) {
      failure = "line " + std::to_string(reader.number()) + ": nests deeper than " +
                std::to_string(kMaxEventDepth) + " levels: not an event envelope";
      break;
    }
    json j;
    try {
      j = json::parse(line);
    } catch (const json::exception& e) {
      std::string what = e.what();
      if (const auto at = what.find("] "); at != std::string::npos) {
        what = what.substr(at + 2);
      }
      failure = "line " + std::to_string(reader.number()) + ": not JSON: " + what;
      break;
    }
    // The shape is checked here, at once, with the line's number.
    if (auto e = eventFromEnvelope(j, "line " + std::to_string(reader.number())); !e) {
      failure = e.error().message;
      break;
    }
    chunk_bytes += line.size();
    chunk.push_back(std::move(j));
    chunk_lines.push_back(reader.number());
    if (chunk.size() >= kChunkEvents || chunk_bytes >= kChunkBytes) {
      send();
    }
  }
  if (failure.empty() && !reader.error().empty()) {
    failure = reader.error();
  }
  if (failure.empty()) {
    send();
  }
  blank = reader.blank();
  gzclose(in);
  return failure;
}

int run(const CommandSpec& spec, const Invocation& inv) {
  const std::string path = inv.args.at(0);
  auto loaded = loadConfig(spec, inv);
  if (!loaded) {
    return kConfigError;
  }
  const config::Config& cfg = loaded->cfg;
  {
    std::error_code ec;
    if (!fs::is_regular_file(path, ec)) {
      std::cerr << "omniedge import: " << path << ": "
                << (ec                     ? ec.message()
                    : fs::exists(path, ec) ? "not a regular file"
                                           : "no such file")
                << "\n";
      return kFailure;
    }
    if (::access(path.c_str(), R_OK) != 0) {
      std::cerr << "omniedge import: cannot read " << path << ": " << std::strerror(errno) << "\n";
      return kFailure;
    }
  }
  const std::size_t max_line =
      static_cast<std::size_t>(cfg.integer("buffer.max_event_bytes")) + 64 * 1024;
  Daemon daemon(*loaded);
  std::unique_ptr<Sink> sink;
  if (auto answer = daemon.request({{"cmd", "status"}}); answer && flag(*answer, "ok")) {
    sink = std::make_unique<DaemonSink>(daemon);
  } else {
    if (daemon.deniedAccess()) {
      std::cerr << daemon.notRunning("import");
      return kUnreachable;
    }
    // The daemon's warnings (no tenant key, no phone module) go to stderr, worded as its own.
    auto logger = spdlog::stderr_logger_mt("omniedge-import");
    logger->set_pattern("omniedge import: %v");
    spdlog::set_default_logger(logger);
    // identity.data_pii may come from the centre: hash as the daemon would.
    std::string note;
    auto pii = makePiiHasher(withAppliedRemote(cfg, note));
    if (!pii) {
      std::cerr << "omniedge import: " << pii.error().message << "\n";
      return kConfigError;
    }
    if (auto r = becomeDataDirOwner(cfg.str("data.dir")); !r) {
      std::cerr << "omniedge import: " << r.error().message << "\n";
      return kFailure;
    }
    ::umask(027);  // as systemd/omniedge.service: the service's group may read
    auto opened = BufferSink::open(cfg, std::move(*pii));
    if (!opened) {
      if (opened.error().code == "busy") {
        std::cerr << "omniedge import: a daemon holds the buffer in " << cfg.str("data.dir")
                  << " but does not answer on its control socket:\n"
                  << daemon.whereLooked("  ") << daemon.advice("  ");
        return kUnreachable;
      }
      std::cerr << "omniedge import: cannot open the buffer: " << opened.error().message << "\n";
      return kFailure;
    }
    sink = std::move(*opened);
  }

  Totals checked;
  int64_t blank = 0;
  if (auto failure = pass(path, max_line, *sink, true, checked, blank); !failure.empty()) {
    std::cerr << "omniedge import: " << path << " " << failure
              << "\nnothing was imported: fix that line (or remove it) and run the import again\n";
    return kFailure;
  }
  Totals done;
  if (auto failure = pass(path, max_line, *sink, false, done, blank); !failure.empty()) {
    std::cerr << "omniedge import: " << path << " " << failure << "\n";
    if (done.events > 0) {
      std::cerr << "the " << thousands(done.events) << " events before that chunk were imported ("
                << thousands(done.stored.stored)
                << " new); running the same import again skips them\n";
    } else {
      std::cerr << "nothing was imported\n";
    }
    return kFailure;
  }
  std::cout << "imported " << thousands(done.events) << " events from " << path << " "
            << sink->where() << ": " << thousands(done.stored.stored) << " new, "
            << thousands(done.stored.duplicates) << " already present (skipped)";
  if (done.stored.consent_dropped > 0) {
    std::cout << ", " << thousands(done.stored.consent_dropped)
              << " presence events of customers who refused tracking not kept";
  }
  if (blank > 0) {
    std::cout << "; " << blank << " blank lines skipped";
  }
  std::cout << "\n";
  return kOk;
}

}  // namespace

Command importCommand() {
  CommandSpec spec;
  spec.name = "import";
  spec.synopsis = "FILE";
  spec.summary = "re-ingest an export (ids already present are skipped)";
  spec.details =
      "FILE holds one event envelope per line (JSON Lines, as `omniedge export` writes it;\n"
      ".gz allowed); blank lines are skipped. Every line is checked first, as the daemon's\n"
      "ingest would (type, id, store, times, e-mail and phone): if one is bad, the error\n"
      "names its line and field and nothing is imported. Events go in through the daemon\n"
      "when it runs; when it does not, straight into the buffer through the same checks\n"
      "and PII hashing, holding the buffer's lock (so the daemon cannot start meanwhile;\n"
      "as root, the import runs as the data dir's owner). Importing twice is harmless.";
  spec.min_args = 1;
  spec.max_args = 1;
  return {spec, run};
}

}  // namespace omniedge::cli
