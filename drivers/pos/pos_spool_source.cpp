#include "drivers/pos/pos_spool_source.h"

#include <fcntl.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <stdio.h>  // renameat2
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>
#include <limits>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include "drivers/pos/poslog_xml.h"
#include "drivers/pos/transaction.h"
#include "drivers/pos/transaction_json.h"

namespace omniedge::pos {

namespace fs = std::filesystem;

namespace {

constexpr int kMaxWaitMs = 500;
constexpr int64_t kWorkBudgetMs = 1000;  // poll() starts no new file after this
constexpr int kMaxNameAttempts = 1000;   // processed/day-1.xml ... day-999.xml

int64_t steadyMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int64_t wallNs() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

int64_t mtimeNs(const struct stat& st) {
  return static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
}

std::string errnoText(int err) { return std::strerror(err); }

bool endsWithIgnoreCase(std::string_view text, std::string_view suffix) {
  if (text.size() < suffix.size()) {
    return false;
  }
  const std::string_view tail = text.substr(text.size() - suffix.size());
  return std::equal(tail.begin(), tail.end(), suffix.begin(),
                    [](char a, char b) { return (a | 0x20) == (b | 0x20); });
}

enum class Format { kNone, kXml, kJson, kJsonLines };

// *.xml, *.json, *.jsonl; never dotfiles (rsync and editors write those), *.tmp or *.part.
Format formatOf(std::string_view name) {
  if (name.empty() || name.front() == '.') {
    return Format::kNone;
  }
  if (endsWithIgnoreCase(name, ".xml")) {
    return Format::kXml;
  }
  if (endsWithIgnoreCase(name, ".jsonl")) {
    return Format::kJsonLines;
  }
  if (endsWithIgnoreCase(name, ".json")) {
    return Format::kJson;
  }
  return Format::kNone;
}

// A file that cannot be of its format, told from its first bytes: after a UTF-8 byte order
// mark, whitespace and empty lines, XML starts with '<' and JSON (and JSON Lines) with '{' or
// '['. nullopt when it may be of its format, or when the first bytes cannot tell (a UTF-16 or
// UTF-32 file, nothing but whitespace so far): the parser decides.
std::optional<ParseError> wrongStart(Format format, std::string_view head) {
  if (format == Format::kNone || head.empty()) {
    return std::nullopt;
  }
  const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(head[i]); };
  std::size_t i = 0;
  if (head.starts_with("\xEF\xBB\xBF")) {
    i = 3;
  } else if (byte(0) == 0xFF || byte(0) == 0xFE || byte(0) == 0x00 ||
             (head.size() > 1 && byte(1) == 0x00)) {
    return std::nullopt;  // a UTF-16 or UTF-32 mark, or such text without one
  }
  std::size_t line = 1;
  for (; i < head.size(); ++i) {
    const char c = head[i];
    if (c == '\n') {
      ++line;
    } else if (c != ' ' && c != '\t' && c != '\r') {
      break;
    }
  }
  if (i == head.size()) {
    return std::nullopt;
  }
  const char c = head[i];
  const bool xml = format == Format::kXml;
  if (xml ? c == '<' : (c == '{' || c == '[')) {
    return std::nullopt;
  }
  std::array<char, 8> hex{};
  std::snprintf(hex.data(), hex.size(), "0x%02X", byte(i));
  const std::string found =
      c > ' ' && c < 0x7F ? std::string("'") + c + "'" : std::string("byte ") + hex.data();
  return ParseError{xml ? "invalid_xml" : "invalid_json",
                    std::string(xml ? "malformed XML" : "malformed JSON") + ": it starts with " +
                        found + " at byte " + std::to_string(i) + " where " +
                        (xml ? "'<'" : "'{' or '['") +
                        " must be (the rest of the file was not read)",
                    line,
                    {}};
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) {
      ::close(fd_);
    }
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

Result<void> fsyncDir(const fs::path& dir) {
  const Fd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() < 0 || ::fsync(fd.get()) != 0) {
    return makeError("io", "cannot fsync " + dir.string() + ": " + errnoText(errno));
  }
  return {};
}

// "day.xml", then "day-1.xml", "day-2.xml", ...: a name already taken is never overwritten.
std::string candidateName(const std::string& name, int attempt) {
  if (attempt == 0) {
    return name;
  }
  const std::size_t dot = name.find_last_of('.');
  const std::string suffix = "-" + std::to_string(attempt);
  if (dot == std::string::npos || dot == 0) {
    return name + suffix;
  }
  return name.substr(0, dot) + suffix + name.substr(dot);
}

// Moves from_dir/name into to_dir under a free name; returns that name.
Result<std::string> moveUnique(const fs::path& from_dir, const std::string& name,
                               const fs::path& to_dir) {
  const fs::path from = from_dir / name;
  for (int attempt = 0; attempt < kMaxNameAttempts; ++attempt) {
    const std::string target_name = candidateName(name, attempt);
    const fs::path target = to_dir / target_name;
    if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, target.c_str(), RENAME_NOREPLACE) == 0) {
      return target_name;
    }
    const int err = errno;
    if (err == EEXIST) {
      continue;
    }
    if (err == EINVAL || err == ENOSYS) {
      // A file system without RENAME_NOREPLACE: check, then rename (the spool has one reader).
      std::error_code ec;
      if (fs::exists(target, ec)) {
        continue;
      }
      if (::rename(from.c_str(), target.c_str()) == 0) {
        return target_name;
      }
    }
    return makeError(
        "io", "cannot move " + from.string() + " to " + target.string() + ": " + errnoText(errno));
  }
  return makeError("io", "cannot move " + from.string() + ": " + std::to_string(kMaxNameAttempts) +
                             " names taken in " + to_dir.string());
}

Result<void> writeFileSynced(const fs::path& path, const std::string& content) {
  const Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (fd.get() < 0) {
    return makeError("io", "cannot write " + path.string() + ": " + errnoText(errno));
  }
  std::size_t done = 0;
  while (done < content.size()) {
    const ssize_t n = ::write(fd.get(), content.data() + done, content.size() - done);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      return makeError("io", "cannot write " + path.string() + ": " + errnoText(errno));
    }
    done += static_cast<std::size_t>(n);
  }
  if (::fsync(fd.get()) != 0) {
    return makeError("io", "cannot fsync " + path.string() + ": " + errnoText(errno));
  }
  return {};
}

// The writer's refusal of a file's events, in the terms of the file: the transaction (its
// workstation and sequence, its line and element) and the field it was made of.
ParseError refusedByWriter(const Error& error, const std::vector<Transaction>& transactions) {
  ParseError out = explainRefusal(error, transactions, /*indexed=*/false);
  const std::size_t close = error.field.find(']');
  if (error.field.size() < 3 || error.field.front() != '[' || close == std::string::npos) {
    out.reason = "the agent refused the events: " + error.message;
    return out;
  }
  const std::size_t index = std::strtoull(error.field.c_str() + 1, nullptr, 10);
  if (index >= transactions.size()) {
    out.reason = "the agent refused the events: " + error.message;
    return out;
  }
  const Transaction& tx = transactions[index];
  if (out.element.empty()) {
    out.reason = "the agent refused " + out.reason;  // "the event of transaction 161 of ..."
    out.element = tx.source_element;
  } else {
    out.reason = "the agent refused transaction " + tx.sequence + " of workstation " +
                 tx.workstation + ": " + out.reason;
    out.element =
        tx.source_element.empty() ? out.element : tx.source_element + " (" + out.element + ")";
  }
  return out;
}

// Sets a file's mtime to now: processed/ keeps files for pos.keep_processed_days from when they
// were processed, not from when the till wrote them (rename keeps the mtime).
void touch(const fs::path& path) {
  if (::utimensat(AT_FDCWD, path.c_str(), nullptr, AT_SYMLINK_NOFOLLOW) != 0) {
    spdlog::warn("pos: cannot set the time of {}: {}", path.string(), errnoText(errno));
  }
}

}  // namespace

struct PosSpoolSource::Candidate {
  std::string name;
  int64_t mtime_ns = 0;
  int64_t size = 0;
};

PosSpoolSource::PosSpoolSource(PosSpoolOptions options)
    : options_(std::move(options)),
      processed_dir_(options_.spool_dir / "processed"),
      rejected_dir_(options_.spool_dir / "rejected") {}

PosSpoolSource::~PosSpoolSource() {
  closeWatch();
  if (wake_fd_ >= 0) {
    ::close(wake_fd_);
  }
}

std::string_view PosSpoolSource::name() const { return "pos"; }

PosSpoolStats PosSpoolSource::stats() const {
  std::lock_guard lock(stats_mu_);
  return stats_;
}

SourceHealth PosSpoolSource::health() const {
  std::lock_guard lock(stats_mu_);
  SourceHealth health;
  health.input_errors = stats_.files_rejected;
  health.last_input_error = stats_.last_rejected;
  health.counters = {{"files_processed", stats_.files_processed},
                     {"files_rejected", stats_.files_rejected},
                     {"budget_refusals", stats_.budget_refusals},
                     {"events", stats_.events},
                     {"duplicates", stats_.duplicates},
                     {"retries", stats_.retries},
                     {"processed_pruned", stats_.processed_pruned}};
  return health;
}

void PosSpoolSource::closeWatch() {
  if (inotify_fd_ >= 0) {
    ::close(inotify_fd_);
  }
  inotify_fd_ = -1;
  watch_ = -1;
  set_up_ = false;
}

Result<void> PosSpoolSource::setUp() {
  std::error_code ec;
  for (const fs::path& dir : {options_.spool_dir, processed_dir_, rejected_dir_}) {
    fs::create_directories(dir, ec);
    if (ec || !fs::is_directory(dir, ec)) {
      return makeError("io", "cannot use the POS spool directory " + dir.string() + ": " +
                                 (ec ? ec.message() : std::string("not a directory")));
    }
  }
  if (wake_fd_ < 0) {
    wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  }
  if (inotify_fd_ < 0) {
    inotify_fd_ = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  }
  if (inotify_fd_ >= 0) {
    watch_ = ::inotify_add_watch(
        inotify_fd_, options_.spool_dir.c_str(),
        IN_MOVED_TO | IN_CLOSE_WRITE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR);
  }
  if (watch_ < 0) {
    // Rescans alone still find every file, only later.
    spdlog::warn("pos: no inotify watch on {} ({}): relying on rescans every {} s",
                 options_.spool_dir.string(), errnoText(errno), options_.rescan_interval_s);
  }
  set_up_ = true;
  dirty_ = true;
  return {};
}

bool PosSpoolSource::drainEvents() {
  if (inotify_fd_ < 0) {
    return false;
  }
  alignas(inotify_event) std::array<char, 16384> buffer{};
  bool any = false;
  bool lost = false;
  while (true) {
    const ssize_t n = ::read(inotify_fd_, buffer.data(), buffer.size());
    if (n <= 0) {
      break;
    }
    any = true;
    for (ssize_t at = 0; at < n;) {
      inotify_event event{};
      std::memcpy(&event, buffer.data() + at, sizeof(event));
      const char* name = buffer.data() + at + sizeof(inotify_event);
      at += static_cast<ssize_t>(sizeof(inotify_event) + event.len);
      if ((event.mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF)) != 0) {
        lost = true;
      }
      if (event.len == 0) {
        continue;
      }
      const std::string file(name, strnlen(name, event.len));
      if ((event.mask & IN_MOVED_TO) != 0) {
        renamed_.insert(file);
      } else if ((event.mask & IN_CLOSE_WRITE) != 0) {
        renamed_.erase(file);  // written in place: it must settle first
      }
    }
  }
  if (any) {
    dirty_ = true;
  }
  if (lost) {
    spdlog::warn("pos: the spool directory {} was removed or moved; watching it again",
                 options_.spool_dir.string());
    closeWatch();
  }
  return any;
}

bool PosSpoolSource::wait(std::stop_token stop, int timeout_ms) {
  if (stop.stop_requested()) {
    return false;
  }
  const int wake = wake_fd_;
  std::stop_callback on_stop(stop, [wake] {
    const uint64_t one = 1;
    [[maybe_unused]] const ssize_t n = ::write(wake, &one, sizeof(one));
  });
  std::array<pollfd, 2> fds{pollfd{inotify_fd_, POLLIN, 0}, pollfd{wake_fd_, POLLIN, 0}};
  const int n = ::poll(fds.data(), fds.size(), std::clamp(timeout_ms, 0, kMaxWaitMs));
  if (n <= 0) {
    return false;
  }
  if ((fds[1].revents & POLLIN) != 0) {
    uint64_t count = 0;
    [[maybe_unused]] const ssize_t r = ::read(wake_fd_, &count, sizeof(count));
  }
  return (fds[0].revents & POLLIN) != 0;
}

Result<void> PosSpoolSource::poll(EventWriter& out, std::stop_token stop) {
  try {
    if (!set_up_) {
      auto ready = setUp();
      if (!ready) {
        wait(stop, kMaxWaitMs);
        return ready;
      }
    }
    drainEvents();
    int64_t now = steadyMs();
    if (now >= next_prune_ms_) {
      next_prune_ms_ = now + static_cast<int64_t>(std::max(options_.prune_interval_s, 1)) * 1000;
      pruneProcessed();
    }
    if (now < retry_at_ms_) {
      wait(stop, static_cast<int>(std::min<int64_t>(retry_at_ms_ - now, kMaxWaitMs)));
      return {};
    }
    if (now >= next_rescan_ms_) {
      dirty_ = true;
    }
    if (dirty_) {
      auto handled = scanAndProcess(out, stop);
      if (!handled) {
        return handled.error();
      }
      if (*handled > 0) {
        return {};
      }
    }
    int timeout = kMaxWaitMs;
    if (dirty_ && next_settle_ms_ > 0) {
      timeout = static_cast<int>(std::clamp<int64_t>(next_settle_ms_ - steadyMs(), 1, kMaxWaitMs));
    }
    wait(stop, timeout);
    if (stop.stop_requested() || !set_up_) {
      return {};
    }
    drainEvents();
    now = steadyMs();
    if (dirty_ && now >= retry_at_ms_) {
      auto handled = scanAndProcess(out, stop);
      if (!handled) {
        return handled.error();
      }
    }
    return {};
  } catch (const std::exception& e) {
    dirty_ = true;
    return makeError("io", std::string("the POS spool failed: ") + e.what());
  }
}

bool PosSpoolSource::settled(const Candidate& file, int64_t now_ms) {
  if (renamed_.count(file.name) > 0) {
    return true;  // an atomic rename: complete
  }
  const int64_t settle_ns = static_cast<int64_t>(options_.settle_ms) * 1000000;
  const int64_t age_ns = wallNs() - file.mtime_ns;
  if (age_ns >= settle_ns) {
    return true;
  }
  // Not modified for settle_ms by the wall clock, or seen unchanged that long by ours (which
  // also covers an mtime in the future).
  auto [it, inserted] =
      seen_.try_emplace(file.name, Observation{file.size, file.mtime_ns, now_ms, now_ms});
  Observation& seen = it->second;
  if (!inserted && (seen.size != file.size || seen.mtime_ns != file.mtime_ns)) {
    seen = Observation{file.size, file.mtime_ns, now_ms, seen.first_ms};
  }
  if (now_ms - seen.since_ms >= options_.settle_ms) {
    return true;
  }
  const int64_t ready_at =
      std::min(now_ms + (settle_ns - age_ns) / 1000000 + 1, seen.since_ms + options_.settle_ms);
  next_settle_ms_ = next_settle_ms_ == 0 ? ready_at : std::min(next_settle_ms_, ready_at);
  return false;
}

Result<std::size_t> PosSpoolSource::scanAndProcess(EventWriter& out, std::stop_token stop) {
  const int64_t start = steadyMs();
  dirty_ = false;
  next_settle_ms_ = 0;
  next_rescan_ms_ = start + static_cast<int64_t>(std::max(options_.rescan_interval_s, 1)) * 1000;

  std::vector<Candidate> files;
  std::error_code ec;
  fs::directory_iterator it(options_.spool_dir, ec);
  if (ec) {
    closeWatch();
    return makeError("io", "cannot read the POS spool directory " + options_.spool_dir.string() +
                               ": " + ec.message());
  }
  std::set<std::string> present;
  for (; it != fs::directory_iterator(); it.increment(ec)) {
    std::string file_name = it->path().filename().string();
    if (formatOf(file_name) == Format::kNone) {
      continue;
    }
    struct stat st {};
    if (::lstat(it->path().c_str(), &st) != 0) {
      continue;
    }
    present.insert(file_name);
    files.push_back(Candidate{std::move(file_name), mtimeNs(st), static_cast<int64_t>(st.st_size)});
  }
  if (ec) {
    dirty_ = true;  // a partial listing: what is missing is seen by the next scan
  }
  std::erase_if(renamed_, [&](const std::string& n) { return present.count(n) == 0; });
  std::erase_if(seen_, [&](const auto& entry) { return present.count(entry.first) == 0; });
  std::sort(files.begin(), files.end(), [](const Candidate& a, const Candidate& b) {
    return a.mtime_ns != b.mtime_ns ? a.mtime_ns < b.mtime_ns : a.name < b.name;
  });

  std::size_t handled = 0;
  // Write order: a newer file waits while an older one settles (written in place, or found at
  // start-up without a rename seen: after a restart the files a till renamed meanwhile would
  // otherwise overtake it), but only through the older file's first 2 x settle_ms, so that one
  // that keeps changing never holds the channel.
  bool older_settling = false;
  for (const Candidate& file : files) {
    const int64_t now = steadyMs();
    if (stop.stop_requested() || now - start > kWorkBudgetMs) {
      dirty_ = true;
      break;
    }
    if (!settled(file, now)) {
      dirty_ = true;
      const auto seen = seen_.find(file.name);
      older_settling = older_settling || (seen != seen_.end() &&
                                          now - seen->second.first_ms < 2 * options_.settle_ms);
      continue;
    }
    if (older_settling) {
      dirty_ = true;  // read at the next scan, when the older one has settled
      continue;
    }
    auto outcome = processFile(file, out);
    if (!outcome) {
      dirty_ = true;
      retry_at_ms_ = steadyMs() + options_.retry_backoff_ms;
      return outcome.error();
    }
    if (*outcome == Outcome::kSkipped) {
      dirty_ = true;
      continue;
    }
    seen_.erase(file.name);
    ++handled;
    if (*outcome == Outcome::kCrashed) {
      dirty_ = true;
      break;
    }
  }
  return handled;
}

Result<PosSpoolSource::Outcome> PosSpoolSource::processFile(const Candidate& file,
                                                            EventWriter& out) {
  const fs::path path = options_.spool_dir / file.name;
  const Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
  if (fd.get() < 0) {
    const int err = errno;
    if (err == ENOENT) {
      return Outcome::kSkipped;  // gone since the scan
    }
    if (err == ELOOP || err == EACCES || err == EPERM) {
      auto rejected =
          reject(file.name, ParseError{"unreadable",
                                       err == ELOOP ? "a symbolic link, not a regular file"
                                                    : "cannot be read: " + errnoText(err),
                                       0,
                                       {}});
      if (!rejected) {
        return rejected.error();
      }
      return Outcome::kDone;
    }
    return makeError("io", "cannot open " + path.string() + ": " + errnoText(err));
  }
  struct stat before {};
  if (::fstat(fd.get(), &before) != 0) {
    return makeError("io", "cannot stat " + path.string() + ": " + errnoText(errno));
  }
  std::optional<ParseError> refused;
  if (!S_ISREG(before.st_mode)) {
    refused = ParseError{"unreadable", "not a regular file", 0, {}};
  } else if (static_cast<uint64_t>(before.st_size) > options_.max_file_bytes) {
    refused = ParseError{"too_large",
                         "the file is " + std::to_string(before.st_size) + " bytes; files up to " +
                             std::to_string(options_.max_file_bytes) +
                             " bytes are read (pos.max_file_bytes; split the day into several "
                             "files)",
                         0,
                         {}};
  } else if (before.st_size == 0) {
    refused = ParseError{"empty", "the file is empty", 0, {}};
  }
  if (refused) {
    auto rejected = reject(file.name, *refused, refused->code == "too_large");
    if (!rejected) {
      return rejected.error();
    }
    return Outcome::kDone;
  }
  if (before.st_size != file.size || mtimeNs(before) != file.mtime_ns) {
    return Outcome::kSkipped;  // still being written: the next scan sees it again
  }

  // Refused from its first bytes when they cannot begin its format, before the whole file is
  // read into memory (a 60 MiB file of random bytes took 79 MB of memory to refuse).
  std::array<char, 4096> head{};
  const ssize_t head_bytes = ::pread(fd.get(), head.data(), head.size(), 0);
  if (head_bytes > 0) {
    if (auto wrong =
            wrongStart(formatOf(file.name), {head.data(), static_cast<std::size_t>(head_bytes)})) {
      auto rejected = reject(file.name, *wrong, false);
      if (!rejected) {
        return rejected.error();
      }
      return Outcome::kDone;
    }
  }

  std::string content(static_cast<std::size_t>(before.st_size), '\0');
  std::size_t done = 0;
  while (done < content.size()) {
    const ssize_t n = ::read(fd.get(), content.data() + done, content.size() - done);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      return makeError("io", "cannot read " + path.string() + ": " + errnoText(errno));
    }
    if (n == 0) {
      return Outcome::kSkipped;  // truncated while we read
    }
    done += static_cast<std::size_t>(n);
  }
  struct stat after {};
  if (::fstat(fd.get(), &after) != 0 || after.st_size != before.st_size ||
      mtimeNs(after) != mtimeNs(before)) {
    return Outcome::kSkipped;
  }

  Parsed parsed;
  switch (formatOf(file.name)) {
    case Format::kXml:
      parsed = parsePosLog(std::move(content), options_.max_parse_memory);
      break;
    case Format::kJsonLines:
      parsed = parseJsonLines(content, options_.max_parse_memory);
      break;
    default:
      parsed = parseJsonTransactions(content, std::numeric_limits<std::size_t>::max(), nullptr,
                                     options_.max_parse_memory);
      break;
  }
  std::string().swap(content);
  if (parsed.error) {
    const bool over_budget = parsed.error->code == "too_large";
    if (over_budget) {
      parsed.error->reason += " (pos.max_parse_memory; split the file into several)";
    }
    auto rejected = reject(file.name, *parsed.error, over_budget);
    if (!rejected) {
      return rejected.error();
    }
    return Outcome::kDone;
  }

  std::vector<Event> events;
  events.reserve(parsed.transactions.size());
  for (const Transaction& tx : parsed.transactions) {
    events.push_back(toEvent(tx, options_.store_id));
  }
  const std::size_t count = events.size();
  AppendOutcome appended;
  if (count > 0) {
    Result<AppendOutcome> result = makeError("io", "not appended");
    try {
      result = out.append(std::move(events));
    } catch (const std::exception& e) {
      result = makeError("io", std::string("the writer failed: ") + e.what());
    }
    if (!result) {
      const Error& error = result.error();
      if (error.code == "invalid" || error.code == "too_large") {
        auto rejected = reject(file.name, refusedByWriter(error, parsed.transactions));
        if (!rejected) {
          return rejected.error();
        }
        return Outcome::kDone;
      }
      countError(file.name + ": " + error.message + " (kept for a retry)", false);
      return Error{error.code, "pos: " + file.name + " kept for a retry: " + error.message,
                   error.field};
    }
    appended = std::move(*result);
  }
  {
    std::lock_guard lock(stats_mu_);
    stats_.events += count;
    stats_.duplicates += appended.duplicates;
  }
  if (options_.crash_after_append) {
    return Outcome::kCrashed;
  }
  auto finished = finish(file.name);
  if (!finished) {
    return finished.error();
  }
  spdlog::info("pos: {}: {} events ({} already stored){}", file.name, count, appended.duplicates,
               parsed.skipped > 0
                   ? ", " + std::to_string(parsed.skipped) + " other transactions skipped"
                   : std::string());
  return Outcome::kDone;
}

Result<void> PosSpoolSource::finish(const std::string& file_name) {
  renamed_.erase(file_name);
  if (options_.keep_processed && options_.keep_processed_days > 0) {
    auto moved = moveUnique(options_.spool_dir, file_name, processed_dir_);
    if (!moved) {
      return moved.error();
    }
    touch(processed_dir_ / *moved);
    if (auto synced = fsyncDir(processed_dir_); !synced) {
      return synced;
    }
  } else if (::unlink((options_.spool_dir / file_name).c_str()) != 0 && errno != ENOENT) {
    return makeError("io", "cannot delete " + (options_.spool_dir / file_name).string() + ": " +
                               errnoText(errno));
  }
  if (auto synced = fsyncDir(options_.spool_dir); !synced) {
    return synced;
  }
  std::lock_guard lock(stats_mu_);
  ++stats_.files_processed;
  return {};
}

void PosSpoolSource::pruneProcessed() {
  if (!options_.keep_processed || options_.keep_processed_days <= 0) {
    return;  // finish() deletes files; what an older version kept is left to the operator
  }
  const int64_t cutoff_ns =
      wallNs() - static_cast<int64_t>(options_.keep_processed_days) * 86400 * 1000000000;
  std::error_code ec;
  fs::directory_iterator it(processed_dir_, ec);
  uint64_t pruned = 0;
  for (; !ec && it != fs::directory_iterator(); it.increment(ec)) {
    struct stat st {};
    if (::lstat(it->path().c_str(), &st) != 0 || !S_ISREG(st.st_mode) || mtimeNs(st) >= cutoff_ns) {
      continue;
    }
    if (::unlink(it->path().c_str()) == 0) {
      ++pruned;
    } else if (errno != ENOENT) {
      spdlog::warn("pos: cannot delete {}: {}", it->path().string(), errnoText(errno));
    }
  }
  if (ec) {
    spdlog::warn("pos: cannot list {}: {}", processed_dir_.string(), ec.message());
  }
  if (pruned > 0) {
    spdlog::info("pos: deleted {} files processed more than {} days ago", pruned,
                 options_.keep_processed_days);
    std::lock_guard lock(stats_mu_);
    stats_.processed_pruned += pruned;
  }
}

Result<void> PosSpoolSource::reject(const std::string& file_name, const ParseError& error,
                                    bool over_budget) {
  const std::string why = describe(error);
  renamed_.erase(file_name);
  auto moved = moveUnique(options_.spool_dir, file_name, rejected_dir_);
  if (!moved) {
    return moved.error();
  }
  if (auto written = writeFileSynced(rejected_dir_ / (*moved + ".error"), why); !written) {
    return written;
  }
  if (auto synced = fsyncDir(rejected_dir_); !synced) {
    return synced;
  }
  if (auto synced = fsyncDir(options_.spool_dir); !synced) {
    return synced;
  }
  // One line for the log and status: "day.xml: why (line 3, element Transaction/...)".
  // Both through forPeople(): valid UTF-8 for the status JSON, short even for random bytes.
  std::string one_line = forPeople(error.reason);
  if (error.line > 0 || !error.element.empty()) {
    one_line += " (";
    one_line += error.line > 0 ? "line " + std::to_string(error.line) : "";
    one_line += error.line > 0 && !error.element.empty() ? ", " : "";
    one_line += error.element.empty() ? "" : "element " + forPeople(error.element);
    one_line += ")";
  }
  spdlog::warn("pos: {} rejected (moved to rejected/{}): {}", file_name, *moved, one_line);
  countError(file_name + ": " + one_line, true);
  // Refused for its size alone (pos.max_file_bytes, pos.max_parse_memory): counted apart, as a
  // sign the limits may need raising rather than the till fixing.
  if (over_budget) {
    std::lock_guard lock(stats_mu_);
    ++stats_.budget_refusals;
  }
  return {};
}

void PosSpoolSource::countError(const std::string& text, bool rejected) {
  // File names are bytes too (a till writing Latin-1 names): status needs valid UTF-8.
  std::string message = forPeople(text, 1000);
  std::lock_guard lock(stats_mu_);
  if (rejected) {
    ++stats_.files_rejected;
    stats_.last_rejected = message;
  } else {
    ++stats_.retries;
  }
  stats_.last_error = message;
}

std::unique_ptr<Source> makePosSpool(PosSpoolOptions options) {
  return std::make_unique<PosSpoolSource>(std::move(options));
}

}  // namespace omniedge::pos
