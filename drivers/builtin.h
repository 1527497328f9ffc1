// The one explicit list of built-in drivers that run as Sources (no static self-registration).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "agent/api/result.h"
#include "agent/api/source.h"

namespace omniedge::drivers {

/// What the drivers need from the configuration (drivers cannot see agent/config).
struct BuiltinSettings {
  std::string store_id;
  std::string buffer_epoch;  // the buffer's epoch, named in drop reports (issue 14 point 7)
  // POS spool (pos.*): off when spool_dir is empty.
  std::string pos_spool_dir;
  bool pos_keep_processed = true;
  int pos_keep_processed_days = 7;
  int pos_rescan_interval_s = 10;
  int64_t pos_max_file_bytes = int64_t{64} << 20;
  int64_t pos_max_parse_memory = int64_t{128} << 20;
  // Beacon gateways (beacon.*): off when mqtt_url is empty.
  std::string beacon_mqtt_url;
  std::vector<std::string> beacon_topics;
  std::vector<std::string> beacon_zones;  // "scanner=zone"
  int64_t beacon_exit_after_s = 30;
  int beacon_enter_after_sightings = 3;
  std::vector<std::string> beacon_ignore_prefixes;
  int64_t beacon_max_tracked = 10000;
  int beacon_qos = 0;
  int64_t beacon_window_s = 5;
  int beacon_switch_margin_db = 6;
  int64_t beacon_switch_hold_s = 5;
  std::vector<std::string> beacon_scanner_offsets;  // "scanner=dB"
  int64_t beacon_max_message_bytes = 64 * 1024;
  int64_t beacon_queue_max_bytes = 4 << 20;
  int64_t beacon_pending_max_bytes = 4 << 20;
  int64_t beacon_max_state_bytes = 8 << 20;
};

/// Every source the settings switch on. Thread: the owner's, at start-up. Fails with "config"
/// naming the key when a setting cannot be used (e.g. a malformed beacon.zones item).
Result<std::vector<std::unique_ptr<Source>>> makeBuiltinSources(const BuiltinSettings& settings);

}  // namespace omniedge::drivers
