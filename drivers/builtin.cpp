#include "drivers/builtin.h"

#include "drivers/beacon/beacon_source.h"
#include "drivers/pos/pos_spool_source.h"

namespace omniedge::drivers {

Result<std::vector<std::unique_ptr<Source>>> makeBuiltinSources(const BuiltinSettings& settings) {
  std::vector<std::unique_ptr<Source>> sources;
  if (!settings.pos_spool_dir.empty()) {
    pos::PosSpoolOptions o;
    o.spool_dir = settings.pos_spool_dir;
    o.store_id = settings.store_id;
    o.keep_processed = settings.pos_keep_processed;
    o.keep_processed_days = settings.pos_keep_processed_days;
    o.rescan_interval_s = settings.pos_rescan_interval_s;
    o.max_file_bytes = static_cast<std::size_t>(settings.pos_max_file_bytes);
    o.max_parse_memory = static_cast<std::size_t>(settings.pos_max_parse_memory);
    sources.push_back(pos::makePosSpool(std::move(o)));
  }
  if (!settings.beacon_mqtt_url.empty()) {
    auto zones = beacon::parseZones(settings.beacon_zones);
    if (!zones) {
      return makeError("config", "beacon.zones: " + zones.error().message, "beacon.zones");
    }
    auto offsets = beacon::parseScannerOffsets(settings.beacon_scanner_offsets);
    if (!offsets) {
      return makeError("config", "beacon.scanner_offsets: " + offsets.error().message,
                       "beacon.scanner_offsets");
    }
    beacon::BeaconOptions o;
    o.mqtt_url = settings.beacon_mqtt_url;
    o.topics = settings.beacon_topics;
    o.qos = settings.beacon_qos;
    o.client_id = "omniedge-beacon-" + settings.store_id;
    o.buffer_epoch = settings.buffer_epoch;
    o.presence.zones = std::move(*zones);
    o.presence.exit_after_ms = settings.beacon_exit_after_s * 1000;
    o.presence.enter_after_sightings = settings.beacon_enter_after_sightings;
    o.presence.ignore_prefixes = settings.beacon_ignore_prefixes;
    o.presence.max_tracked = static_cast<std::size_t>(settings.beacon_max_tracked);
    o.presence.scanner_offsets = std::move(*offsets);
    o.presence.window_ms = settings.beacon_window_s * 1000;
    o.presence.switch_margin_db = settings.beacon_switch_margin_db;
    o.presence.switch_hold_ms = settings.beacon_switch_hold_s * 1000;
    o.presence.max_state_bytes = static_cast<std::size_t>(settings.beacon_max_state_bytes);
    o.max_message_bytes = static_cast<std::size_t>(settings.beacon_max_message_bytes);
    o.queue_max_bytes = static_cast<std::size_t>(settings.beacon_queue_max_bytes);
    o.pending_max_bytes = static_cast<std::size_t>(settings.beacon_pending_max_bytes);
    sources.push_back(beacon::makeBeaconSource(std::move(o)));
  }
  return sources;
}

}  // namespace omniedge::drivers
