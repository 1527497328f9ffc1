#include <catch2/catch.hpp>
#include <sstream>

#include "agent/api/time.h"
#include "cli/format.h"
#include "cli/status.h"

using nlohmann::json;
using omniedge::formatRfc3339Ms;
using omniedge::cli::nowMs;

namespace {

std::string render(const json& status) {
  std::ostringstream out;
  omniedge::cli::printStatusText(status, out);
  return out.str();
}

std::string ago(int64_t seconds) { return formatRfc3339Ms(nowMs() - seconds * 1000); }

}  // namespace

TEST_CASE("status text: ages, IEC sizes, and what the uplink, buffer and drivers report",
          "[unit][cli]") {
  const json status = {
      {"daemon", "running"},
      {"pid", 4242},
      {"version", "0.1.0"},
      {"uptime_s", 3725},
      {"store_id", "store-042"},
      {"tenant", "acme"},
      {"config_version", 3},
      {"uplink",
       {{"mqtt",
         {{"state", "disconnected"},
          {"since", ago(300)},
          {"url", "mqtts://broker:8883"},
          {"last_error", "broker unreachable at broker:8883: is it running? `omniedge doctor`"},
          {"last_error_resolved", false},
          {"next_attempt_at", formatRfc3339Ms(nowMs() + 20000)}}},
        {"https", {{"state", "not_configured"}}}}},
      {"queue",
       {{"pending", 42},
        {"high", 40},
        {"normal", 2},
        {"low", 0},
        {"bytes", 12390},
        {"oldest_pending_age_s", 12}}},
      {"quarantine", {{"events", 2}, {"latest_reason", "larger than the broker takes"}}},
      {"rates", {{"ingest_per_s", 10.25}, {"delivery_per_s", 0.0}}},
      {"drivers",
       json::array({{{"name", "kiosk-http"}, {"state", "running"}, {"listen", "127.0.0.1:8787"}},
                    {{"name", "pos-spool"},
                     {"state", "running"},
                     {"errors", 3},
                     {"input_errors", 1},
                     {"last_error", "0001.xml: line 3: not POSLog"},
                     {"counters", {{"files", 12}}}}})},
      {"profiles",
       {{"in_memory", 120},
        {"memory_bytes", 300000},
        {"memory_max_bytes", 8 << 20},
        {"on_disk", 5000},
        {"disk_bytes", 2 << 20},
        {"local_carts", 3}}},
      {"counters", {{"rejected_full", 17}, {"evicted", 0}}},
      {"disk",
       {{"data_dir", "/var/lib/omniedge"},
        {"buffer_file_bytes", 4 << 20},
        {"wal_bytes", 3 << 19},
        {"buffer_used_bytes", 1 << 30},
        {"buffer_cap_bytes", 1 << 30},
        {"free_bytes", 5LL << 30},
        {"buffer_full", true},
        {"full_since", ago(60)},
        {"last_full_refusal_at", ago(2)},
        {"wal_kept", true},
        {"wal_kept_reason", "syncing buffer.db after a checkpoint failed (disk I/O error)"},
        {"unclean_shutdown_before_start", true}}},
  };
  const std::string text = render(status);
  INFO(text);
  CHECK_THAT(text, Catch::Contains("daemon running (pid 4242, up 1h 2m)"));
  CHECK_THAT(text, Catch::Contains("mqtt DISCONNECTED for 5m"));
  CHECK_THAT(text, Catch::Contains("broker unreachable at broker:8883: is it running?"));
  CHECK_THAT(text,
             Catch::Contains("; next attempt in 2") || Catch::Contains("; next attempt in 19s"));
  CHECK_THAT(text, Catch::Contains("https not configured"));
  CHECK_THAT(text, Catch::Contains("42 pending (high 40, normal 2, low 0), 12.1 KiB"));
  CHECK_THAT(text, Catch::Contains("oldest pending 12s"));
  CHECK_THAT(text, Catch::Contains("2 events refused by the centre"));
  CHECK_THAT(text, Catch::Contains("larger than the broker takes"));
  CHECK_THAT(text, Catch::Contains("3 errors (1 bad input); last error: 0001.xml: line 3"));
  CHECK_THAT(text, Catch::Contains("12 files"));
  CHECK_THAT(text, Catch::Contains("4.0 MiB file + 1.5 MiB WAL in /var/lib/omniedge"));
  CHECK_THAT(text, Catch::Contains("1.0 GiB of 1.0 GiB allowed"));
  CHECK_THAT(text, Catch::Contains("FULL for 1m: new POS and kiosk events are refused"));
  CHECK_THAT(text, Catch::Contains("17 appends refused, the last 2s ago"));
  CHECK_THAT(text, Catch::Contains("started after an unclean shutdown"));
  CHECK_THAT(text, Catch::Contains("WAL KEPT: syncing buffer.db after a checkpoint failed (disk "
                                   "I/O error); the WAL grows until a restart"));
  CHECK_THAT(text, Catch::Contains("120 in memory (293.0 KiB of 8.0 MiB), 5,000 on disk"));
  CHECK(text.find("T0") == std::string::npos);  // no raw timestamps
}

TEST_CASE("status text: an error the uplink recovered from is not shown", "[unit][cli]") {
  const json status = {{"daemon", "running"},
                       {"uplink",
                        {{"mqtt",
                          {{"state", "connected"},
                           {"since", ago(180)},
                           {"url", "mqtt://b:1883"},
                           {"last_error", "connection lost"},
                           {"last_error_resolved", true},
                           {"events_delivered", 1234567}}}}}};
  const std::string text = render(status);
  INFO(text);
  CHECK_THAT(text, Catch::Contains("mqtt connected for 3m to mqtt://b:1883"));
  CHECK_THAT(text, Catch::Contains("1,234,567 events delivered"));
  CHECK(text.find("connection lost") == std::string::npos);
}

TEST_CASE("status text: missing or mistyped fields leave their part out", "[unit][cli]") {
  for (const json& status :
       {json::object(), json::array(), json{{"daemon", 1}},
        json{{"daemon", "running"},
             {"uplink", 5},
             {"queue", "x"},
             {"drivers", json::array({1, "a", json::object()})},
             {"disk", {{"buffer_file_bytes", "big"}, {"buffer_full", "yes"}}},
             {"quarantine", {{"events", "many"}}}},
        json{{"daemon", "down"}, {"looked_at", {1, 2}}, {"disk", {{"unclean_shutdown", true}}}}}) {
    INFO(status.dump());
    std::string text;
    CHECK_NOTHROW(text = render(status));
    CHECK_THAT(text, Catch::Contains("omniedge "));
  }
}
