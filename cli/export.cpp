// `omniedge export`: buffered events as JSON Lines (gzip when FILE ends in .gz), read-only from
// the buffer file, the technician's way out when a store is offline for days.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <iostream>

#include "agent/api/time.h"
#include "cli/buffer_file.h"
#include "cli/commands.h"
#include "cli/format.h"

namespace omniedge::cli {
namespace {

namespace fs = std::filesystem;

// Writes to a temporary file beside FILE and puts it in place only when complete, so a failed
// export never leaves half a file under FILE's name (nor destroys the one --force replaces).
class Output {
 public:
  ~Output() {
    if (gz_ != nullptr) {
      gzclose(gz_);
    } else if (fd_ >= 0) {
      ::close(fd_);
    }
    if (!tmp_.empty()) {
      ::unlink(tmp_.c_str());
    }
  }

  Result<void> open(const std::string& path, bool gzip) {
    path_ = path;
    const fs::path parent = fs::path(path).parent_path();
    tmp_ = ((parent.empty() ? fs::path(".") : parent) /
            ("." + fs::path(path).filename().string() + ".tmp-XXXXXX"))
               .string();
    fd_ = ::mkstemp(tmp_.data());
    if (fd_ < 0) {
      const std::string err = std::strerror(errno);
      tmp_.clear();
      return makeError("io", "cannot write beside " + path + ": " + err);
    }
    ::fchmod(fd_, 0640);  // events carry hashed identities: not for everyone to read
    if (gzip) {
      gz_ = gzdopen(fd_, "wb6");
      if (gz_ == nullptr) {
        return makeError("io", "cannot start gzip for " + path);
      }
    }
    return {};
  }

  Result<void> write(const std::string& data) {
    if (gz_ != nullptr) {
      if (gzwrite(gz_, data.data(), static_cast<unsigned>(data.size())) !=
          static_cast<int>(data.size())) {
        return makeError("io", "writing " + path_ + " failed");
      }
      return {};
    }
    std::size_t off = 0;
    while (off < data.size()) {
      const ssize_t n = ::write(fd_, data.data() + off, data.size() - off);
      if (n < 0 && errno == EINTR) {
        continue;
      }
      if (n <= 0) {
        return makeError("io", "writing " + path_ + ": " + std::strerror(errno));
      }
      off += static_cast<std::size_t>(n);
    }
    return {};
  }

  /// Flushes, syncs and moves the file to its name; without `replace`, never over an existing
  /// file (link() fails if one appeared meanwhile).
  Result<void> commit(bool replace) {
    if (gz_ != nullptr) {
      // Complete the gzip stream now, so that fsync below covers all of it.
      if (gzflush(gz_, Z_FINISH) != Z_OK) {
        return makeError("io", "writing " + path_ + " failed");
      }
    }
    if (::fsync(fd_) != 0) {
      return makeError("io", "writing " + path_ + ": " + std::strerror(errno));
    }
    if (gz_ != nullptr) {
      const int rc = gzclose(gz_);
      gz_ = nullptr;
      fd_ = -1;
      if (rc != Z_OK) {
        return makeError("io", "writing " + path_ + " failed");
      }
    } else {
      ::close(fd_);
      fd_ = -1;
    }
    if (replace) {
      if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
        return makeError("io", "cannot write " + path_ + ": " + std::strerror(errno));
      }
    } else if (::link(tmp_.c_str(), path_.c_str()) != 0) {
      const int err = errno;
      if (err == EEXIST) {
        return makeError("exists", path_ + " appeared meanwhile; add --force to overwrite it");
      }
      // File systems without hard links (a FAT USB stick): check, then rename.
      std::error_code ec;
      if (fs::exists(path_, ec)) {
        return makeError("exists", path_ + " appeared meanwhile; add --force to overwrite it");
      }
      if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
        return makeError("io", "cannot write " + path_ + ": " + std::strerror(errno));
      }
    } else {
      ::unlink(tmp_.c_str());
    }
    tmp_.clear();
    return {};
  }

 private:
  std::string path_;
  std::string tmp_;
  int fd_ = -1;
  gzFile gz_ = nullptr;
};

// Why an export found nothing, in words.
std::string whyEmpty(const BufferFile& file, const config::Config& cfg, const Scan& scan) {
  const int64_t pending = file.integer("SELECT count(*) FROM events").value_or(0);
  const int64_t retained =
      file.hasTable("delivered") ? file.integer("SELECT count(*) FROM delivered").value_or(0) : 0;
  if (pending == 0 && retained == 0) {
    if (cfg.integer("buffer.retain_delivered") == 0) {
      return "nothing is pending (everything was delivered) and delivered events are not kept "
             "(buffer.retain_delivered = 0)";
    }
    return "the buffer is empty: nothing is pending, and no delivered event is still within "
           "buffer.retain_delivered";
  }
  if (scan.pending_only && pending == 0) {
    return "nothing is pending (--pending-only): everything was delivered";
  }
  return std::to_string(pending) + " pending and " + std::to_string(retained) +
         " retained delivered events are in the buffer, none received in the time range given";
}

int run(const CommandSpec& spec, const Invocation& inv) {
  if (!inv.has("out")) {
    return usageError(spec, "--out FILE is required");
  }
  const std::string out = inv.vm["out"].as<std::string>();
  if (out.empty()) {
    return usageError(spec, "--out FILE is empty");
  }
  Scan scan;
  scan.pending_only = inv.has("pending-only");
  for (const char* key : {"since", "until"}) {
    if (inv.has(key)) {
      const std::string text = inv.vm[key].as<std::string>();
      auto t = parseRfc3339(text);
      if (!t) {
        return usageError(spec, std::string("--") + key + " '" + text +
                                    "' is not an RFC 3339 time, e.g. 2026-11-22T13:00:00Z");
      }
      (std::string(key) == "since" ? scan.since_ms : scan.until_ms) = *t;
    }
  }
  if (scan.since_ms >= scan.until_ms) {
    return usageError(spec, "--since " + inv.vm["since"].as<std::string>() +
                                " is not before --until " + inv.vm["until"].as<std::string>());
  }
  auto loaded = loadConfig(spec, inv);
  if (!loaded) {
    return kConfigError;
  }
  const bool force = inv.has("force");
  std::error_code ec;
  if (!force && fs::exists(out, ec)) {
    std::cerr << "omniedge export: " << out
              << " exists; add --force to overwrite it (or choose another --out)\n";
    return kFailure;
  }
  auto file = BufferFile::open(loaded->cfg.str("data.dir"));
  if (!file) {
    std::cerr << "omniedge export: " << file.error().message << "\n";
    return kFailure;
  }
  const bool gz = out.size() > 3 && out.compare(out.size() - 3, 3, ".gz") == 0;
  Output output;
  if (auto r = output.open(out, gz); !r) {
    std::cerr << "omniedge export: " << r.error().message << "\n";
    return kFailure;
  }
  // A progress line on a terminal, for exports that take a while.
  const bool progress = ::isatty(STDERR_FILENO) == 1;
  int64_t total = -1;
  if (progress) {
    total = file->pendingEvents();
    if (!scan.pending_only && file->hasTable("delivered")) {
      total += file->integer("SELECT count(*) FROM delivered").value_or(0);
    }
  }
  auto last_progress = std::chrono::steady_clock::now();
  int64_t n = 0;
  Result<void> written;
  std::string batch;
  auto scanned = file->scan(scan, [&](BufferRow&& row) {
    batch += row.body;
    batch += '\n';
    ++n;
    if (batch.size() >= (1 << 20)) {
      written = output.write(batch);
      batch.clear();
      if (!written) {
        return false;
      }
    }
    if (progress && std::chrono::steady_clock::now() - last_progress > std::chrono::seconds(1)) {
      last_progress = std::chrono::steady_clock::now();
      std::cerr << "\rexported " << thousands(n) << " of at most " << thousands(total)
                << " events..." << std::flush;
    }
    return true;
  });
  if (written && !batch.empty()) {
    written = output.write(batch);
  }
  if (progress && n > 0) {
    std::cerr << "\r\033[K" << std::flush;
  }
  if (!scanned || !written) {
    std::cerr << "omniedge export: " << (!scanned ? scanned.error() : written.error()).message
              << " (nothing written to " << out << ")\n";
    return kFailure;
  }
  if (auto r = output.commit(force); !r) {
    std::cerr << "omniedge export: " << r.error().message << "\n";
    return kFailure;
  }
  std::cout << "exported " << thousands(n) << (n == 1 ? " event" : " events") << " to " << out;
  if (n == 0) {
    std::cout << ": " << whyEmpty(*file, loaded->cfg, scan);
  }
  std::cout << "\n";
  return kOk;
}

}  // namespace

Command exportCommand() {
  CommandSpec spec;
  spec.name = "export";
  spec.synopsis = "--out FILE [--since T] [--until T] [--pending-only] [--force]";
  spec.summary = "write buffered events as JSON Lines (gzip if FILE ends in .gz)";
  spec.details =
      "Reads the buffer file read-only (with the daemon running or not) and writes every\n"
      "pending event, and the delivered ones buffer.retain_delivered keeps, one envelope per\n"
      "line, in the order they were received. `omniedge import FILE` takes the file back.\n"
      "Times are RFC 3339 (2026-11-22T13:00:00Z) and compare with when the agent received\n"
      "each event. An existing FILE is kept unless --force; FILE appears only once complete.";
  spec.options = [](po::options_description& o) {
    o.add_options()("out,o", po::value<std::string>()->value_name("FILE"),
                    "where to write (required; .gz: gzip-compressed)")(
        "since", po::value<std::string>()->value_name("T"), "events received at or after T")(
        "until", po::value<std::string>()->value_name("T"), "events received before T")(
        "pending-only", "only events not delivered yet")("force", "overwrite FILE if it exists");
  };
  return {spec, run};
}

}  // namespace omniedge::cli
