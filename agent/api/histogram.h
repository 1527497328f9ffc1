// A fixed-bucket latency histogram for Prometheus: lock-free, no allocation when observing.
#pragma once

#include <array>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace omniedge {

/// Durations (an uplink batch's publish → PUBACK, an HTTPS request → 2xx) counted into fixed
/// buckets, exposed as a Prometheus histogram (`_bucket{le=…}`, `_sum`, `_count`).
/// Thread: any; observe() is a few relaxed atomic adds (no lock, no allocation), so it can sit on
/// the sync threads' paths; a snapshot taken while others observe may lag them by an
/// observation, but its count always equals its +Inf bucket.
class LatencyHistogram {
 public:
  /// Upper bounds in microseconds (le, seconds: 0.005 … 60), chosen for batches that take
  /// milliseconds on a LAN and seconds over a congested store uplink.
  static constexpr std::array<uint64_t, 14> kBoundsUs = {
      5'000,     10'000,    25'000,    50'000,     100'000,    250'000,    500'000,
      1'000'000, 2'500'000, 5'000'000, 10'000'000, 20'000'000, 30'000'000, 60'000'000};

  struct Snapshot {
    std::array<uint64_t, kBoundsUs.size() + 1> cumulative{};  // by bound, then +Inf
    uint64_t count = 0;                                       // == cumulative.back()
    double sum_seconds = 0;
  };

  /// Counts one duration; a negative one (a clock step) counts as zero. Never blocks.
  void observe(std::chrono::steady_clock::duration d) noexcept {
    const auto us_signed = std::chrono::duration_cast<std::chrono::microseconds>(d).count();
    const uint64_t us = us_signed > 0 ? static_cast<uint64_t>(us_signed) : 0;
    std::size_t i = 0;
    while (i < kBoundsUs.size() && us > kBoundsUs[i]) {
      ++i;
    }
    buckets_[i].fetch_add(1, std::memory_order_relaxed);
    sum_us_.fetch_add(us, std::memory_order_relaxed);
  }

  /// The counts so far, cumulative as Prometheus wants them. Thread: any; never blocks.
  Snapshot snapshot() const noexcept {
    Snapshot s;
    uint64_t running = 0;
    for (std::size_t i = 0; i < buckets_.size(); ++i) {
      running += buckets_[i].load(std::memory_order_relaxed);
      s.cumulative[i] = running;
    }
    s.count = running;
    s.sum_seconds = static_cast<double>(sum_us_.load(std::memory_order_relaxed)) / 1e6;
    return s;
  }

  /// Appends the samples (no `# HELP`/`# TYPE`: the caller writes those once per family) of
  /// `name` with `labels` (`key="value",…` without braces, may be empty) to `out`.
  void appendSamples(std::string& out, std::string_view name, std::string_view labels) const {
    const Snapshot s = snapshot();
    const std::string sep = labels.empty() ? "" : ",";
    const std::string braces = labels.empty() ? std::string() : "{" + std::string(labels) + "}";
    for (std::size_t i = 0; i <= kBoundsUs.size(); ++i) {
      out += name;
      out += "_bucket{";
      out += labels;
      out += sep;
      out += "le=\"";
      out += i < kBoundsUs.size() ? formatSeconds(kBoundsUs[i]) : std::string("+Inf");
      out += "\"} ";
      out += std::to_string(s.cumulative[i]);
      out += '\n';
    }
    out += name;
    out += "_sum";
    out += braces;
    out += ' ';
    char sum[32];
    const auto written = std::to_chars(sum, sum + sizeof(sum), s.sum_seconds);  // shortest form
    out.append(sum, written.ptr);
    out += '\n';
    out += name;
    out += "_count";
    out += braces;
    out += ' ';
    out += std::to_string(s.count);
    out += '\n';
  }

  /// A bound as Prometheus writes `le` (shortest decimal: "0.005", "1", "2.5").
  static std::string formatSeconds(uint64_t us) {
    std::string s = std::to_string(us / 1'000'000);
    uint64_t frac = us % 1'000'000;
    if (frac != 0) {
      std::string digits = std::to_string(frac);
      digits.insert(0, 6 - digits.size(), '0');
      while (digits.back() == '0') {
        digits.pop_back();
      }
      s += '.' + digits;
    }
    return s;
  }

 private:
  std::array<std::atomic<uint64_t>, kBoundsUs.size() + 1> buckets_{};
  std::atomic<uint64_t> sum_us_{0};
};

}  // namespace omniedge
