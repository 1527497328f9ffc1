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
    beacon::BeaconOptions o;
    o.mqtt_url = settings.beacon_mqtt_url;
    o.topics = settings.beacon_topics;
    o.qos = settings.beacon_qos;
    o.client_id = "omniedge-beacon-" + settings.store_id;
    o.presence.zones = std::move(*zones);
    o.presence.exit_after_ms = settings.beacon_exit_after_s * 1000;
    o.presence.enter_after_sightings = settings.beacon_enter_after_sightings;
    o.presence.ignore_prefixes = settings.beacon_ignore_prefixes;
    o.presence.max_tracked = static_cast<std::size_t>(settings.beacon_max_tracked);
    sources.push_back(beacon::makeBeaconSource(std::move(o)));
  }
  return sources;
}

}  // namespace omniedge::drivers
