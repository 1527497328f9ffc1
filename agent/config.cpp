#include "agent/config.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <boost/any.hpp>
#include <boost/program_options/value_semantic.hpp>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "agent/omni/trigger_rules.h"

namespace omniedge::config {
namespace {

namespace po = boost::program_options;

constexpr int64_t kUnbounded = std::numeric_limits<int64_t>::max();
constexpr int64_t kKiB = 1024;
constexpr int64_t kMiB = 1024 * kKiB;
constexpr int64_t kGiB = 1024 * kMiB;
// Durations are capped so that converting them to milliseconds or nanoseconds cannot overflow.
constexpr int64_t kTenYears = 10LL * 365 * 24 * 3600;
constexpr std::string_view kEnvPrefix = "OMNIEDGE_";
constexpr std::string_view kConfigFileEnv = "OMNIEDGE_CONFIG";

enum class Kind { kString, kInt, kBool, kDuration, kBytes, kEnum, kList, kUrl, kHostPort };

// Validates and normalises a string value (or a list item); the error message is the reason only.
using Check = Result<std::string> (*)(std::string_view value);

struct KeyDef {
  std::string_view name = {};
  Kind kind = Kind::kString;
  std::string_view default_value = {};  // ignored when computed_default
  bool remote = false;
  std::string_view help = {};
  int64_t min = 0;
  int64_t max = kUnbounded;
  std::string_view choices = {};  // enum values or URL schemes, '|'-separated
  bool allow_empty = false;       // url: "" means "off"
  Check check = nullptr;          // string: the value; list: each item
  bool computed_default = false;  // store.id and data.dir depend on the host
};

Error reason(std::string message) { return makeError("config", std::move(message)); }

bool isIdChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '.' || c == '_' || c == '-';
}

Result<std::string> checkId(std::string_view v) {
  if (v.empty() || v.size() > 64 || !std::all_of(v.begin(), v.end(), isIdChar)) {
    return reason("must be 1 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-'");
  }
  return std::string(v);
}

Result<std::string> checkNotEmpty(std::string_view v) {
  if (v.empty()) {
    return reason("must not be empty");
  }
  return std::string(v);
}

Result<std::string> checkCountryCode(std::string_view v) {
  if (!v.empty() && v.front() == '+') {
    v.remove_prefix(1);
  }
  const bool digits = std::all_of(
      v.begin(), v.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); });
  if (v.size() > 3 || !digits) {
    return reason("must be a calling code of 1 to 3 digits (e.g. 44) or empty");
  }
  return std::string(v);
}

Result<std::string> checkRegion(std::string_view v) {
  if (v.empty()) {
    return std::string();
  }
  if (v.size() != 2 || !std::isalpha(static_cast<unsigned char>(v[0])) ||
      !std::isalpha(static_cast<unsigned char>(v[1]))) {
    return reason("must be a two-letter country code (ISO 3166 alpha-2, e.g. GB) or empty");
  }
  std::string upper(v);
  std::transform(upper.begin(), upper.end(), upper.begin(),
                 [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
  return upper;
}

Result<std::string> checkZone(std::string_view v) {
  const auto eq = v.find('=');
  if (eq == std::string_view::npos || eq == 0 || eq + 1 == v.size()) {
    return reason("item \"" + std::string(v) + "\" is not scanner=zone");
  }
  return std::string(v);
}

// beacon.scanner_offsets: "scanner=dB", dB a decimal number from -40 to 40.
Result<std::string> checkScannerOffset(std::string_view v) {
  const auto eq = v.find('=');
  double db = 0;
  bool ok = eq != std::string_view::npos && eq != 0 && eq + 1 < v.size();
  if (ok) {
    std::string_view number = v.substr(eq + 1);
    if (number.front() == '+') {
      number.remove_prefix(1);
    }
    const auto [end, ec] = std::from_chars(number.data(), number.data() + number.size(), db);
    ok = ec == std::errc() && end == number.data() + number.size() && db >= -40 && db <= 40;
  }
  if (!ok) {
    return reason("item \"" + std::string(v) +
                  "\" is not scanner=dB (dB a number from -40 to 40, e.g. kitchen=-4.5)");
  }
  return std::string(v);
}

std::string lower(std::string_view s);

// One node of mqtt.url's list (a broker cluster): an MQTT URL like any url-kind value.
Result<std::string> checkMqttUrl(std::string_view v) {
  const std::string item = "item \"" + std::string(v) + "\": ";
  const auto sep = v.find("://");
  if (sep == std::string_view::npos) {
    return reason(item +
                  "not a URL; expected scheme://host[:port] with scheme mqtt, mqtts, ws "
                  "or wss");
  }
  const std::string scheme = lower(v.substr(0, sep));
  if (scheme != "mqtt" && scheme != "mqtts" && scheme != "ws" && scheme != "wss") {
    return reason(item + "scheme \"" + scheme +
                  "\" is not allowed here; use mqtt, mqtts, ws or wss");
  }
  auto url = parseUrl(v);
  if (!url) {
    return reason(item + url.error().message);
  }
  return std::string(v);
}

// consent.on_refusal: "channel=drop|anonymise" (channel: an event type's first word); a sale
// (pos) is always kept, anonymised.
Result<std::string> checkConsentAction(std::string_view v) {
  const auto eq = v.find('=');
  if (eq == std::string_view::npos || eq == 0) {
    return reason("item \"" + std::string(v) + "\" is not channel=drop or channel=anonymise");
  }
  const std::string_view channel = v.substr(0, eq);
  const std::string_view action = v.substr(eq + 1);
  if (!std::all_of(channel.begin(), channel.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
      })) {
    return reason("item \"" + std::string(v) +
                  "\": the channel must be an event type's first word (beacon, kiosk, pos, ...)");
  }
  if (action != "drop" && action != "anonymise") {
    return reason("item \"" + std::string(v) + "\": the action must be drop or anonymise");
  }
  if (channel == "pos" && action == "drop") {
    return reason("item \"" + std::string(v) +
                  "\": a sale is always kept (anonymised); pos can only be anonymise");
  }
  return std::string(v);
}

// The single definition of every key. Keep sorted by section; names are section.key.
constexpr auto kKeys = std::to_array<KeyDef>({
    {.name = "store.id",
     .kind = Kind::kString,
     .help =
         "This store's id, used in MQTT topics and events (default: the host name, lower-cased)",
     .check = checkId,
     .computed_default = true},
    {.name = "store.tenant",
     .kind = Kind::kString,
     .default_value = "default",
     .help = "Tenant (retailer) this store belongs to",
     .check = checkId},
    {.name = "data.dir",
     .kind = Kind::kString,
     .help = "Directory for the buffer, profile cache and applied config (default: "
             "$STATE_DIRECTORY, else ./omniedge-data)",
     .check = checkNotEmpty,
     .computed_default = true},

    {.name = "mqtt.url",
     .kind = Kind::kList,
     .default_value = "mqtt://127.0.0.1:1883",
     .remote = true,
     .help = "Uplink MQTT broker; a comma-separated list names the nodes of a broker cluster, "
             "tried in turn (mqtt://, mqtts://, ws://, wss://)",
     .min = 1,
     .check = checkMqttUrl},
    {.name = "mqtt.client_id",
     .kind = Kind::kString,
     .help = "MQTT client id (empty: derived by the agent)"},
    {.name = "mqtt.username", .kind = Kind::kString, .help = "MQTT user name"},
    {.name = "mqtt.password_file", .kind = Kind::kString, .help = "File holding the MQTT password"},
    {.name = "mqtt.ca_file",
     .kind = Kind::kString,
     .remote = true,
     .help = "CA certificates for the broker (PEM)"},
    {.name = "mqtt.cert_file",
     .kind = Kind::kString,
     .remote = true,
     .help = "Client certificate for mutual TLS to the broker (PEM)"},
    {.name = "mqtt.key_file",
     .kind = Kind::kString,
     .remote = true,
     .help = "Client private key (PEM)"},
    {.name = "mqtt.keepalive",
     .kind = Kind::kDuration,
     .default_value = "30",
     .remote = true,
     .help = "MQTT keep-alive interval",
     .min = 5,
     .max = 3600},
    {.name = "mqtt.version",
     .kind = Kind::kEnum,
     .default_value = "auto",
     .remote = true,
     .help = "MQTT protocol version (auto: try 5, fall back to 3.1.1)",
     .choices = "auto|3.1.1|5"},
    {.name = "mqtt.reconnect_min",
     .kind = Kind::kDuration,
     .default_value = "1",
     .remote = true,
     .help = "Shortest reconnect back-off",
     .min = 1,
     .max = 3600},
    {.name = "mqtt.reconnect_max",
     .kind = Kind::kDuration,
     .default_value = "120",
     .remote = true,
     .help = "Longest reconnect back-off",
     .min = 1,
     .max = 86400},
    {.name = "mqtt.max_packet_bytes",
     .kind = Kind::kBytes,
     .default_value = "0",
     .remote = true,
     .help = "Largest MQTT packet the uplink broker takes; batches stay below it and a larger "
             "event is quarantined, never sent (0: what an MQTT 5 broker announces, else "
             "128KiB). With MQTT 3.1.1 set it to the broker's limit (mosquitto "
             "message_size_limit): such a broker acknowledges and drops larger messages",
     .max = 268435455},

    {.name = "https.base_url",
     .kind = Kind::kUrl,
     .remote = true,
     .help = "Central HTTPS service (empty: HTTPS uplink off)",
     .choices = "https|http",
     .allow_empty = true},
    {.name = "https.ca_file",
     .kind = Kind::kString,
     .remote = true,
     .help = "CA certificates for HTTPS (PEM)"},
    {.name = "https.cert_file",
     .kind = Kind::kString,
     .remote = true,
     .help = "Client certificate for mutual TLS over HTTPS (PEM)"},
    {.name = "https.key_file",
     .kind = Kind::kString,
     .remote = true,
     .help = "Client private key for HTTPS (PEM)"},
    {.name = "https.insecure_skip_verify",
     .kind = Kind::kBool,
     .default_value = "false",
     .help = "Do not verify the server certificate (unsafe; doctor warns)"},
    {.name = "https.pinned_pubkey",
     .kind = Kind::kString,

     .help = "Pin the server's public key: a PEM or DER public key file, or "
             "sha256//BASE64[;sha256//BASE64...] (empty: no pinning)"},
    {.name = "https.timeout",
     .kind = Kind::kDuration,
     .default_value = "30",
     .remote = true,
     .help = "Longest an HTTPS request may take before it is retried",
     .min = 1,
     .max = 600},
    {.name = "https.failover_after",
     .kind = Kind::kDuration,
     .default_value = "10",
     .remote = true,
     .help = "After MQTT has been unreachable this long, HTTPS sends every batch",
     .min = 0,
     .max = 86400},

    {.name = "http.listen",
     .kind = Kind::kHostPort,
     .default_value = "127.0.0.1:8787",
     .help = "Address of the local kiosk API"},
    {.name = "http.tokens_file",
     .kind = Kind::kString,
     .help = "Bearer tokens for the kiosk API (needed off loopback): one token per line, "
             "'#' starts a comment. A token writes kiosk.* events only, unless its line grants "
             "more: '<token> channels=kiosk,beacon' (channels: kiosk, beacon, pos; agent.* "
             "comes only from the agent). Without tokens (loopback) callers write kiosk.* only"},
    {.name = "http.max_connections",
     .kind = Kind::kInt,
     .default_value = "256",
     .help = "Kiosk API connections open at once; beyond, idle or unfinished ones are closed "
             "to make room, else the newcomer gets 503",
     .min = 8,
     .max = 65536},
    {.name = "http.workers",
     .kind = Kind::kInt,
     .default_value = "8",
     .help = "Kiosk API requests handled at once (an idle connection holds none)",
     .min = 1,
     .max = 256},
    {.name = "http.header_timeout",
     .kind = Kind::kDuration,
     .default_value = "10",
     .help = "Time a client has to send a request's line and headers, from its first byte "
             "(slow clients get 408)",
     .min = 1,
     .max = 3600},
    {.name = "http.body_timeout",
     .kind = Kind::kDuration,
     .default_value = "30",
     .help = "Time a client has to send a request body once its headers are in",
     .min = 1,
     .max = 3600},
    {.name = "http.keepalive_timeout",
     .kind = Kind::kDuration,
     .default_value = "10",
     .help = "Idle time after which a kept-alive kiosk API connection is closed",
     .min = 1,
     .max = 3600},
    {.name = "http.max_header_bytes",
     .kind = Kind::kBytes,
     .default_value = "16KiB",
     .help = "Largest request line plus headers (larger: 431)",
     .min = kKiB,
     .max = kMiB},
    {.name = "http.max_headers",
     .kind = Kind::kInt,
     .default_value = "64",
     .help = "Most header fields in one request (more: 431)",
     .min = 8,
     .max = 1000},
    {.name = "http.max_body_bytes",
     .kind = Kind::kBytes,
     .default_value = "8MiB",
     .help = "Largest request body (larger: 413)",
     .min = 64 * kKiB,
     .max = 256 * kMiB},

    {.name = "profiles.max_bytes",
     .kind = Kind::kBytes,
     .default_value = "4MiB",
     .help = "Memory for cached customer profiles; the least recently used leave memory first "
             "and are read back from profiles.db when asked for",
     .min = 64 * kKiB,
     .max = kGiB},
    {.name = "profiles.max_disk_bytes",
     .kind = Kind::kBytes,
     .default_value = "64MiB",
     .help = "Largest size of the profiles kept in profiles.db; the ones the centre has not "
             "mentioned for the longest go first (a resync brings them back)",
     .min = kMiB,
     .max = 64 * kGiB},

    // Store-visit journeys and attribution (agent/omni/visits.h, docs/omnichannel.md).
    {.name = "visits.enabled",
     .kind = Kind::kBool,
     .default_value = "true",
     .help = "Join a customer's beacon, kiosk and POS events into visit.summary events and add "
             "data.attribution to their POS transactions"},
    {.name = "visits.timeout",
     .kind = Kind::kDuration,
     .default_value = "1800",
     .help = "A visit without beacon.exit closes after no event of its customer for this long",
     .min = 1,
     .max = 7 * 24 * 3600},
    {.name = "visits.max_bytes",
     .kind = Kind::kBytes,
     .default_value = "8MiB",
     .help = "Largest size of the open visits (memory and visits.db); past it the visit heard "
             "of least recently closes first (closed_by capacity)",
     .min = 64 * kKiB,
     .max = kGiB},

    {.name = "buffer.max_bytes",
     .kind = Kind::kBytes,
     .default_value = "1GiB",
     .help = "Largest size of the event buffer",
     .min = kMiB},
    {.name = "buffer.min_free_disk",
     .kind = Kind::kBytes,
     .default_value = "256MiB",
     .help = "Free disk space to leave; low-priority events are evicted below it"},
    {.name = "buffer.synchronous",
     .kind = Kind::kEnum,
     .default_value = "full",
     .help = "SQLite synchronous mode (full: accepted events survive a power cut)",
     .choices = "full|normal"},
    {.name = "buffer.retain_delivered",
     .kind = Kind::kDuration,
     .default_value = "0",
     .help = "How long delivered events are kept for tail and export",
     .max = kTenYears},
    {.name = "buffer.recent_max_bytes",
     .kind = Kind::kBytes,
     .default_value = "1MiB",
     .help = "Most bytes of event bodies kept in memory for tail (the last 1000 events at most)",
     .min = 0,
     .max = 64 * kMiB},
    {.name = "buffer.commit_window_us",
     .kind = Kind::kInt,
     .default_value = "2000",
     .help = "Microseconds the buffer may wait for small requests from several producers to "
             "share one commit (less flash wear; adds at most this to their latency); 0: never",
     .min = 0,
     .max = 100000},
    {.name = "buffer.max_event_bytes",
     .kind = Kind::kBytes,
     .default_value = "65536",
     .help = "Largest accepted event (JSON)",
     .min = kKiB,
     .max = kMiB},

    {.name = "sync.batch_max_events",
     .kind = Kind::kInt,
     .default_value = "1000",
     .remote = true,
     .help = "Most events in one uplink batch",
     .min = 1,
     .max = 100000},
    {.name = "sync.batch_max_bytes",
     .kind = Kind::kBytes,
     .default_value = "1MiB",
     .remote = true,
     .help = "Largest uplink batch before compression",
     .min = 4 * kKiB,
     .max = 64 * kMiB},
    {.name = "sync.compression",
     .kind = Kind::kEnum,
     .default_value = "gzip",
     .remote = true,
     .help = "Compression of uplink batches",
     .choices = "none|gzip|zstd"},
    {.name = "sync.max_inflight",
     .kind = Kind::kInt,
     .default_value = "4",
     .remote = true,
     .help = "Batches sent but not yet acknowledged",
     .min = 1,
     .max = 64},
    {.name = "sync.max_bytes_per_sec",
     .kind = Kind::kBytes,
     .default_value = "0",
     .remote = true,
     .help = "Uplink bandwidth cap (0: unlimited)"},
    {.name = "sync.backfill_threshold",
     .kind = Kind::kInt,
     .default_value = "100000",
     .remote = true,
     .help = "Pending events above which the backlog is sent over HTTPS",
     .min = 1},
    {.name = "sync.profile_resync_after",
     .kind = Kind::kDuration,
     .default_value = "3600",
     .remote = true,
     .help = "After an MQTT disconnection this long, ask the HTTPS profile snapshot for the "
             "changes (also this often while MQTT stays down)",
     .min = 1,
     .max = 30 * 86400},
    {.name = "sync.status_interval",
     .kind = Kind::kDuration,
     .default_value = "60",
     .remote = true,
     .help = "How often the status message is refreshed",
     .min = 5,
     .max = 86400},

    {.name = "sync.inbound_max_bytes",
     .kind = Kind::kBytes,
     .default_value = "16MiB",
     .help = "Messages from the centre (profiles, config, commands) stored in data.dir/inbox.db "
             "before the broker is acknowledged and until they are handled; a message beyond "
             "is handled from memory only (a crash may lose it)",
     .min = kMiB,
     .max = kGiB},

    {.name = "config.verify_key_file",
     .kind = Kind::kString,
     .help =
         "Ed25519 public key (PEM) remote config must be signed with (empty: unsigned accepted)"},
    {.name = "config.rollback_after",
     .kind = Kind::kDuration,
     .default_value = "120",
     .remote = true,
     .help = "Roll back a remote config if the uplink is not back within this time",
     .min = 10,
     .max = 86400},

    {.name = "identity.hmac_key_file",
     .kind = Kind::kString,
     .help = "Tenant key for hashing e-mail addresses and phone numbers (HMAC-SHA256)"},
    {.name = "identity.default_region",
     .kind = Kind::kString,
     .help = "Country (ISO 3166 alpha-2, e.g. GB, IT) of phone numbers written without a "
             "country code; empty: such numbers are refused",
     .check = checkRegion},
    {.name = "identity.default_country_code",
     .kind = Kind::kString,
     .help = "Older form of identity.default_region: the calling code (e.g. 44) of phone numbers "
             "without one; identity.default_region wins when both are set",
     .check = checkCountryCode},
    {.name = "identity.phone_module",
     .kind = Kind::kString,
     .help = "The phone number module (libphonenumber), loaded on the first phone number "
             "(empty: lib/omniedge/omniedge-phone.so beside the binary's directory)"},
    {.name = "identity.data_pii",
     .kind = Kind::kEnum,
     .default_value = "hash",
     .remote = true,
     .help = "E-mail addresses and phone numbers found in an event's data: hash (replaced by "
             "their keyed hash), reject (the event is refused naming the field), off",
     .choices = "hash|reject|off"},

    // Consent and erasure (docs/omnichannel.md, privacy model).
    {.name = "consent.on_refusal",
     .kind = Kind::kList,
     .default_value = "beacon=drop",
     .remote = true,
     .help = "What a refusal of tracking does to a customer's events still buffered, per channel "
             "(an event type's first word): drop or anonymise (identity removed); channels not "
             "listed are anonymised; pos is always anonymise (a sale is kept)",
     .check = checkConsentAction},

    {.name = "log.level",
     .kind = Kind::kEnum,
     .default_value = "info",
     .remote = true,
     .help = "Log level",
     .choices = "trace|debug|info|warn|error|critical|off"},

    // Driver keys named by the contract (§2, §8).
    {.name = "pos.spool_dir",
     .kind = Kind::kString,
     .help = "POS spool directory (empty: POS driver off)"},
    {.name = "pos.keep_processed",
     .kind = Kind::kBool,
     .default_value = "true",
     .help = "Keep ingested POS files in processed/ for pos.keep_processed_days (false: delete "
             "them once durable)"},
    {.name = "pos.keep_processed_days",
     .kind = Kind::kInt,
     .default_value = "7",
     .help = "Days ingested POS files stay in processed/ (they may hold customer e-mails); "
             "0: delete them once durable",
     .min = 0,
     .max = 3650},
    {.name = "pos.rescan_interval",
     .kind = Kind::kDuration,
     .default_value = "10",
     .help = "Seconds between full rescans of the POS spool (inotify does the rest)",
     .min = 1,
     .max = 3600},
    {.name = "pos.max_file_bytes",
     .kind = Kind::kBytes,
     .default_value = "64MiB",
     .help = "Largest POS spool file read; a bigger one goes to rejected/ unread",
     .min = kKiB,
     .max = kGiB},
    {.name = "pos.max_parse_memory",
     .kind = Kind::kBytes,
     .default_value = "128MiB",
     .help = "Memory one POS file may take to parse besides its own bytes; a file that needs "
             "more goes to rejected/",
     .min = kMiB,
     .max = 16 * kGiB},
    {.name = "beacon.mqtt_url",
     .kind = Kind::kUrl,
     .help = "Store-local MQTT broker the BLE gateways publish to (empty: beacon driver off)",
     .choices = "mqtt|mqtts|ws|wss",
     .allow_empty = true},
    {.name = "beacon.topics",
     .kind = Kind::kList,
     .default_value = "home/+/BTtoMQTT/#,espresense/devices/#",
     .help = "Topics with beacon sightings"},
    {.name = "beacon.zones",
     .kind = Kind::kList,
     .remote = true,
     .help = "Scanners grouped into zones: scanner=zone,... (unnamed scanners are their own zone)",
     .check = checkZone},
    {.name = "beacon.exit_after",
     .kind = Kind::kDuration,
     .default_value = "30",
     .remote = true,
     .help = "Seconds unseen before beacon.exit",
     .min = 1,
     .max = 3600},
    {.name = "beacon.enter_after_sightings",
     .kind = Kind::kInt,
     .default_value = "3",
     .remote = true,
     .help = "Sightings (from any scanners) needed, besides beacon.window, before beacon.enter",
     .min = 1,
     .max = 100},
    {.name = "beacon.window",
     .kind = Kind::kDuration,
     .default_value = "5",
     .remote = true,
     .help = "Seconds of evidence from every scanner gathered after a device is first heard "
             "before its beacon.enter and zone are decided",
     .min = 1,
     .max = 600},
    {.name = "beacon.switch_margin_db",
     .kind = Kind::kInt,
     .default_value = "6",
     .remote = true,
     .help = "A new zone must be nearer than the current one by this much path loss (dB; 6 dB "
             "is about 1.7x the distance) for beacon.switch_hold before a zone change",
     .min = 0,
     .max = 40},
    {.name = "beacon.switch_hold",
     .kind = Kind::kDuration,
     .default_value = "5",
     .remote = true,
     .help = "Seconds a nearer zone must hold the margin before a zone change (the minimum dwell)",
     .min = 0,
     .max = 600},
    {.name = "beacon.scanner_offsets",
     .kind = Kind::kList,
     .remote = true,
     .help = "Per-scanner RSSI corrections in dB: scanner=dB,... (+ for a scanner that hears too "
             "weakly, e.g. in a cabinet); applied to gateway distances too",
     .check = checkScannerOffset},
    {.name = "beacon.max_message_bytes",
     .kind = Kind::kBytes,
     .default_value = "64KiB",
     .help = "Largest gateway message; larger ones are refused and counted",
     .min = kKiB,
     .max = 16 * kMiB},
    {.name = "beacon.queue_max_bytes",
     .kind = Kind::kBytes,
     .default_value = "4MiB",
     .help = "Gateway messages waiting to be decoded; more are dropped and counted",
     .min = 64 * kKiB,
     .max = kGiB},
    {.name = "beacon.pending_max_bytes",
     .kind = Kind::kBytes,
     .default_value = "4MiB",
     .help = "Presence events kept while the buffer refuses them; the oldest beyond are dropped, "
             "counted and reported as agent.data_dropped",
     .min = 64 * kKiB,
     .max = kGiB},
    {.name = "beacon.max_state_bytes",
     .kind = Kind::kBytes,
     .default_value = "8MiB",
     .help = "Memory of the presence engine (devices, per-scanner estimates, scanners); new "
             "devices beyond are refused and counted",
     .min = 64 * kKiB,
     .max = kGiB},
    {.name = "beacon.ignore_prefixes",
     .kind = Kind::kList,
     .remote = true,
     .help = "Identity prefixes never tracked: staff badges, asset tags (ibeacon:<uuid>,...)"},
    {.name = "beacon.max_tracked",
     .kind = Kind::kInt,
     .default_value = "10000",
     .remote = true,
     .help = "Most identities tracked at once; more are refused and counted",
     .min = 1,
     .max = 1000000},
    {.name = "beacon.qos",
     .kind = Kind::kInt,
     .default_value = "0",
     .help = "QoS of the subscription to the gateways' topics",
     .min = 0,
     .max = 1},
    // ---- triggers (agent/omni/triggers.h, docs/omnichannel.md) ----
    {.name = "triggers.rules",
     .kind = Kind::kString,
     .remote = true,
     .help = "Local trigger rules: a JSON array of {id, on, when, emit, show, rate_limit, "
             "holdout} (docs/omnichannel.md); empty: none",
     .check = omni::checkTriggerRules},
    {.name = "triggers.max_state_bytes",
     .kind = Kind::kBytes,
     .default_value = "4MiB",
     .help = "Memory for what triggers keep per customer (rate limits, profile facts); the "
             "oldest go first beyond it",
     .min = 64 * kKiB,
     .max = kGiB},
    {.name = "triggers.stream_max_connections",
     .kind = Kind::kInt,
     .default_value = "32",
     .help = "Kiosk streams (GET /v1/stream) open at once; more are answered 503",
     .min = 1,
     .max = 1024},

    {.name = "console.sample_interval",
     .kind = Kind::kDuration,
     .default_value = "10",
     .help = "Seconds between two samples of the web console's plots (ingested, delivered, "
             "queue depth); 360 are kept: an hour at the default",
     .min = 1,
     .max = 3600},
    {.name = "console.max_streams",
     .kind = Kind::kInt,
     .default_value = "8",
     .help = "Web console pages following the live events (GET /console/events) at once; more "
             "are answered 503",
     .min = 1,
     .max = 256},
});

[[noreturn]] void die(const std::string& message) {
  std::fprintf(stderr, "omniedge: config: %s (programming error)\n", message.c_str());
  std::abort();
}

const KeyDef* findKey(std::string_view name) {
  for (const auto& def : kKeys) {
    if (def.name == name) {
      return &def;
    }
  }
  return nullptr;
}

const KeyDef& knownKey(std::string_view name) {
  const KeyDef* def = findKey(name);
  if (def == nullptr) {
    die("unknown key '" + std::string(name) + "'");
  }
  return *def;
}

std::string envName(std::string_view key) {
  std::string out(kEnvPrefix);
  for (char c : key) {
    out += c == '.' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  }
  return out;
}

// OMNIEDGE_MQTT_URL -> mqtt.url for every key; built once, checked for collisions.
const std::map<std::string, const KeyDef*>& envTable() {
  static const auto table = [] {
    std::map<std::string, const KeyDef*> t;
    for (const auto& def : kKeys) {
      if (!t.emplace(envName(def.name), &def).second) {
        die("two keys map to the environment variable " + envName(def.name));
      }
    }
    return t;
  }();
  return table;
}

std::string_view trim(std::string_view s) {
  const auto is_space = [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; };
  while (!s.empty() && is_space(s.front())) {
    s.remove_prefix(1);
  }
  while (!s.empty() && is_space(s.back())) {
    s.remove_suffix(1);
  }
  return s;
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) {
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return out;
}

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  while (true) {
    const auto pos = s.find(sep);
    out.push_back(s.substr(0, pos));
    if (pos == std::string_view::npos) {
      return out;
    }
    s.remove_prefix(pos + 1);
  }
}

std::string joinChoices(std::string_view choices, std::string_view last_sep) {
  const auto items = split(choices, '|');
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) {
      out += i + 1 == items.size() ? last_sep : ", ";
    }
    out += items[i];
  }
  return out;
}

// Values in messages are quoted and escaped like JSON strings, whatever bytes they hold.
std::string quote(std::string_view value) {
  return nlohmann::json(std::string(value))
      .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string humanBytes(int64_t v) {
  if (v > 0 && v % kGiB == 0) {
    return std::to_string(v / kGiB) + "GiB";
  }
  if (v > 0 && v % kMiB == 0) {
    return std::to_string(v / kMiB) + "MiB";
  }
  if (v > 0 && v % kKiB == 0) {
    return std::to_string(v / kKiB) + "KiB";
  }
  return std::to_string(v);
}

// A whole decimal number, optionally with a leading '+'.
Result<int64_t> parseWhole(std::string_view s) {
  if (!s.empty() && s.front() == '+') {
    s.remove_prefix(1);
  }
  if (s.empty() || s.front() == '+') {
    return reason("not a whole number");
  }
  int64_t v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec == std::errc::result_out_of_range) {
    return reason("too large");
  }
  if (ec != std::errc() || end != s.data() + s.size()) {
    return reason("not a whole number");
  }
  return v;
}

// Seconds: a whole number, optionally followed by s, m, h or d ("90", "90s", "5m", "2h", "7d").
Result<int64_t> parseSeconds(std::string_view s) {
  static constexpr auto kUnits = std::to_array<std::pair<std::string_view, int64_t>>({
      {"", 1},
      {"s", 1},
      {"m", 60},
      {"h", 3600},
      {"d", 86400},
  });
  if (!s.empty() && s.front() == '+') {
    s.remove_prefix(1);
  }
  size_t digits = 0;
  while (digits < s.size() && std::isdigit(static_cast<unsigned char>(s[digits])) != 0) {
    ++digits;
  }
  const std::string unit = lower(trim(s.substr(digits)));
  for (const auto& [name, factor] : kUnits) {
    if (digits > 0 && unit == name) {
      auto number = parseWhole(s.substr(0, digits));
      if (!number) {
        return number;
      }
      if (*number > kUnbounded / factor) {
        return reason("too large");
      }
      return *number * factor;
    }
  }
  return reason("not a whole number of seconds (optionally followed by s, m, h or d: 90, 5m, 2h)");
}

Result<int64_t> parseBytes(std::string_view s) {
  static constexpr auto kSuffixes = std::to_array<std::pair<std::string_view, int64_t>>({
      {"", 1},
      {"b", 1},
      {"k", kKiB},
      {"kb", kKiB},
      {"kib", kKiB},
      {"m", kMiB},
      {"mb", kMiB},
      {"mib", kMiB},
      {"g", kGiB},
      {"gb", kGiB},
      {"gib", kGiB},
  });

  const auto bad = [] {
    return reason(
        "not a byte size (a whole number, optionally followed by K, M, G, KB, MB, GB, "
        "KiB, MiB or GiB; all powers of 1024)");
  };
  size_t digits = 0;
  while (digits < s.size() && std::isdigit(static_cast<unsigned char>(s[digits])) != 0) {
    ++digits;
  }
  if (digits == 0) {
    return bad();
  }
  auto number = parseWhole(s.substr(0, digits));
  if (!number) {
    return number;
  }
  const std::string suffix = lower(trim(s.substr(digits)));
  for (const auto& [name, factor] : kSuffixes) {
    if (suffix == name) {
      if (*number > kUnbounded / factor) {
        return reason("too large");
      }
      return *number * factor;
    }
  }
  return bad();
}

bool isHostChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '.' || c == '-' || c == '_';
}

bool isIpv6Char(char c) {
  return std::isxdigit(static_cast<unsigned char>(c)) != 0 || c == ':' || c == '.' || c == '%';
}

// host[:port] or [v6][:port]; `port` is left alone when absent.
Result<void> parseAuthority(std::string_view text, std::string& host, uint16_t& port,
                            bool& has_port, int64_t min_port) {
  std::string_view port_text;
  has_port = false;
  if (!text.empty() && text.front() == '[') {
    const auto close = text.find(']');
    if (close == std::string_view::npos) {
      return reason("IPv6 address is missing its closing ']'");
    }
    const auto inside = text.substr(1, close - 1);
    if (inside.empty() || !std::all_of(inside.begin(), inside.end(), isIpv6Char) ||
        inside.find(':') == std::string_view::npos) {
      return reason("\"" + std::string(inside) + "\" is not an IPv6 address");
    }
    host = std::string(inside);
    const auto rest = text.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') {
        return reason("unexpected \"" + std::string(rest) + "\" after the IPv6 address");
      }
      has_port = true;
      port_text = rest.substr(1);
    }
  } else {
    const auto colon = text.find(':');
    if (colon != std::string_view::npos && text.find(':', colon + 1) != std::string_view::npos) {
      return reason("an IPv6 address must be in brackets, like [::1]");
    }
    host = std::string(text.substr(0, colon));
    if (colon != std::string_view::npos) {
      has_port = true;
      port_text = text.substr(colon + 1);
    }
    if (host.empty()) {
      return reason("the host is missing");
    }
    if (!std::all_of(host.begin(), host.end(), isHostChar)) {
      return reason("\"" + host + "\" is not a host name or IP address");
    }
  }
  if (has_port) {
    auto number = parseWhole(port_text);
    const bool digits_only =
        !port_text.empty() && std::all_of(port_text.begin(), port_text.end(), [](char c) {
          return std::isdigit(static_cast<unsigned char>(c)) != 0;
        });
    if (!digits_only || !number || *number < min_port || *number > 65535) {
      return reason("port \"" + std::string(port_text) + "\" is not a number from " +
                    std::to_string(min_port) + " to 65535");
    }
    port = static_cast<uint16_t>(*number);
  }
  return {};
}

std::string describe(Origin origin, const std::string& detail, int line) {
  switch (origin) {
    case Origin::kDefault:
      return "default";
    case Origin::kFile:
      return "file " + detail + (line > 0 ? " line " + std::to_string(line) : "");
    case Origin::kEnv:
      return "environment " + detail;
    case Origin::kFlag:
      return "flag " + detail;
    case Origin::kRemote:
      return detail.empty() ? "remote config" : "remote config " + detail;
  }
  return "?";
}

// The number of single-character edits between a and b, for "did you mean" hints.
size_t editDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) {
    row[j] = j;
  }
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// "; did you mean X?" when a known name is close to `name`, else "".
std::string suggestion(std::string_view name, bool env) {
  std::string best;
  size_t best_distance = 3;
  for (const auto& def : kKeys) {
    const std::string candidate = env ? envName(def.name) : std::string(def.name);
    const size_t d = editDistance(lower(name), lower(candidate));
    if (d < best_distance) {
      best_distance = d;
      best = candidate;
    }
  }
  return best.empty() ? "" : "; did you mean " + best + "?";
}

std::string hostNameDefault() {
  std::array<char, 256> buf = {};
  std::string name;
  if (gethostname(buf.data(), buf.size() - 1) == 0) {
    name = lower(buf.data());
  }
  // A host name may hold characters a store id may not; the default must always be valid.
  for (auto& c : name) {
    if (!isIdChar(c)) {
      c = '-';
    }
  }
  if (name.size() > 64) {
    name.resize(64);
  }
  return name.empty() ? "omniedge" : name;
}

Result<std::string> normalise(const KeyDef& def, std::string_view raw) {
  const std::string_view v = trim(raw);
  switch (def.kind) {
    case Kind::kString:
      return def.check != nullptr ? def.check(v) : Result<std::string>(std::string(v));
    case Kind::kInt:
    case Kind::kDuration:
    case Kind::kBytes: {
      const bool bytes = def.kind == Kind::kBytes;
      const bool seconds = def.kind == Kind::kDuration;
      auto number = bytes ? parseBytes(v) : seconds ? parseSeconds(v) : parseWhole(v);
      if (!number) {
        return number.error();
      }
      if (*number < def.min || *number > def.max) {
        const auto show = [&](int64_t n) { return bytes ? humanBytes(n) : std::to_string(n); };
        std::string message = def.max == kUnbounded
                                  ? "must be at least " + show(def.min)
                                  : "must be between " + show(def.min) + " and " + show(def.max);
        return reason(message + (seconds ? " seconds" : ""));
      }
      return std::to_string(*number);
    }
    case Kind::kBool: {
      const std::string b = lower(v);
      if (b == "true" || b == "yes" || b == "on" || b == "1") {
        return std::string("true");
      }
      if (b == "false" || b == "no" || b == "off" || b == "0") {
        return std::string("false");
      }
      return reason("not a boolean (use true/false, yes/no, on/off or 1/0)");
    }
    case Kind::kEnum: {
      for (const auto choice : split(def.choices, '|')) {
        if (lower(v) == lower(choice)) {
          return std::string(choice);
        }
      }
      return reason("must be one of " + joinChoices(def.choices, ", "));
    }
    case Kind::kList: {
      std::string out;
      for (const auto item : split(v, ',')) {
        const auto trimmed = trim(item);
        if (trimmed.empty()) {
          continue;
        }
        std::string normal(trimmed);
        if (def.check != nullptr) {
          auto checked = def.check(trimmed);
          if (!checked) {
            return checked;
          }
          normal = std::move(*checked);
        }
        out += (out.empty() ? "" : ",") + normal;
      }
      if (out.empty() && def.min > 0) {
        return reason("must name at least one item");
      }
      return out;
    }
    case Kind::kUrl: {
      if (v.empty() && def.allow_empty) {
        return std::string();
      }
      const auto sep = v.find("://");
      if (sep == std::string_view::npos) {
        return reason("not a URL; expected scheme://host[:port] with scheme " +
                      joinChoices(def.choices, " or "));
      }
      const std::string scheme = lower(v.substr(0, sep));
      const auto allowed = split(def.choices, '|');
      if (std::find(allowed.begin(), allowed.end(), scheme) == allowed.end()) {
        return reason("scheme \"" + scheme + "\" is not allowed here; use " +
                      joinChoices(def.choices, " or "));
      }
      auto url = parseUrl(v);
      if (!url) {
        return url.error();
      }
      return std::string(v);
    }
    case Kind::kHostPort: {
      auto hp = parseHostPort(v);
      if (!hp) {
        return hp.error();
      }
      return std::string(v);
    }
  }
  return reason("unsupported kind");
}

std::string valueName(const KeyDef& def) {
  switch (def.kind) {
    case Kind::kInt:
      return "N";
    case Kind::kDuration:
      return "SECONDS";
    case Kind::kBytes:
      return "BYTES";
    case Kind::kBool:
      return "BOOL";
    case Kind::kEnum:
      return std::string(def.choices);
    case Kind::kList:
      return "A,B,...";
    case Kind::kUrl:
      return "URL";
    case Kind::kHostPort:
      return "HOST:PORT";
    case Kind::kString:
      break;
  }
  return def.name.ends_with("_file") || def.name.ends_with("_dir") || def.name.ends_with(".dir")
             ? "PATH"
             : "VALUE";
}

std::string helpText(const KeyDef& def) {
  std::vector<std::string> notes;
  const bool bytes = def.kind == Kind::kBytes;
  if ((def.kind == Kind::kInt || def.kind == Kind::kDuration || bytes) &&
      (def.min != 0 || def.max != kUnbounded)) {
    const auto show = [&](int64_t n) { return bytes ? humanBytes(n) : std::to_string(n); };
    std::string range =
        def.max == kUnbounded ? ">= " + show(def.min) : show(def.min) + ".." + show(def.max);
    notes.push_back(range + (def.kind == Kind::kDuration ? " s" : ""));
  }
  if (def.kind == Kind::kUrl) {
    notes.push_back(joinChoices(def.choices, " or "));
  }
  if (!def.computed_default && !def.default_value.empty()) {
    notes.push_back("default: " + std::string(def.default_value));
  }
  if (def.remote) {
    notes.emplace_back("remote-settable");
  }
  std::string out(def.help);
  if (!notes.empty()) {
    out += " [";
    for (size_t i = 0; i < notes.size(); ++i) {
      out += (i > 0 ? "; " : "") + notes[i];
    }
    out += "]";
  }
  return out;
}

nlohmann::json typedValue(const KeyDef& def, const std::string& value) {
  switch (def.kind) {
    case Kind::kInt:
    case Kind::kDuration:
    case Kind::kBytes:
      return std::strtoll(value.c_str(), nullptr, 10);
    case Kind::kBool:
      return value == "true";
    case Kind::kList: {
      auto array = nlohmann::json::array();
      if (!value.empty()) {
        for (const auto item : split(value, ',')) {
          array.push_back(std::string(item));
        }
      }
      return array;
    }
    default:
      return value;
  }
}

// One `key = value` line of a config file.
struct FileLine {
  std::string key;
  std::string value;
  int line;
};

// INI as Boost.Program_options reads it ([section], key = value, full-line '#' or ';' comments),
// except that '#' starts a comment only at the start of a line or after a space: MQTT topic
// filters such as home/+/BTtoMQTT/# must survive, and Boost's parser cuts every value at its '#'.
void parseIni(const std::string& path, const std::string& text, std::vector<FileLine>& lines,
              std::vector<Error>& errors) {
  std::istringstream in(text);
  std::string raw;
  std::string section;
  int number = 0;
  std::map<std::string, int> seen;
  while (std::getline(in, raw)) {
    ++number;
    std::string_view line = raw;
    if (number == 1 && line.starts_with("\xEF\xBB\xBF")) {
      line.remove_prefix(3);
    }
    line = trim(line);
    if (line.empty() || line.front() == '#' || line.front() == ';') {
      continue;
    }
    const std::string where = "file " + path + " line " + std::to_string(number);
    if (line.front() == '[') {
      const auto name = trim(line.substr(1, line.size() - 1 - (line.back() == ']' ? 1 : 0)));
      if (line.back() != ']' || name.empty()) {
        errors.push_back(makeError("config", where + ": " + quote(line) + " is not a [section]"));
      }
      section = std::string(name);
      continue;
    }
    const auto eq = line.find('=');
    if (eq == std::string_view::npos) {
      errors.push_back(makeError("config", where +
                                               ": expected \"key = value\", \"[section]\" or a "
                                               "comment, got " +
                                               quote(line)));
      continue;
    }
    const std::string name(trim(line.substr(0, eq)));
    std::string_view value = trim(line.substr(eq + 1));
    for (size_t i = 0; i < value.size(); ++i) {
      if (value[i] == '#' && (i == 0 || std::isspace(static_cast<unsigned char>(value[i - 1])))) {
        value = trim(value.substr(0, i));
        break;
      }
    }
    if (value.size() >= 2 && value.front() == '"' && value.back() == '"') {
      value = value.substr(1, value.size() - 2);
    }
    if (section.empty()) {
      std::string hint;
      for (const auto& def : kKeys) {
        if (def.name.substr(def.name.find('.') + 1) == name) {
          hint = "; did you mean " + std::string(def.name) + " ([" +
                 std::string(def.name.substr(0, def.name.find('.'))) + "] " + name + " = ...)?";
          break;
        }
      }
      errors.push_back(makeError(
          "config",
          name + " = " + quote(value) + " (from " + where + "): outside any [section]" + hint,
          name));
      continue;
    }
    const std::string key = section + "." + name;
    if (const auto [it, fresh] = seen.emplace(key, number); !fresh) {
      errors.push_back(makeError("config",
                                 key + " = " + quote(value) + " (from " + where +
                                     "): given twice in the file (first on line " +
                                     std::to_string(it->second) + ")",
                                 key));
      continue;
    }
    lines.push_back(FileLine{key, std::string(value), number});
  }
}

Result<std::string> readFile(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    return makeError("config", "cannot read config file " + path + ": it is a directory");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return makeError("config", "cannot read config file " + path + ": " + std::strerror(errno));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) {
    return makeError("config", "cannot read config file " + path + ": read error");
  }
  return text.str();
}

}  // namespace

// Applies layers to a Config, collecting every error instead of stopping at the first.
class Builder {
 public:
  Builder() = default;
  explicit Builder(Config base) : config_(std::move(base)) {}

  void defaults(const std::vector<std::pair<std::string, std::string>>& env) {
    std::string state_dir;
    for (const auto& [name, value] : env) {
      if (name == "STATE_DIRECTORY") {
        // systemd joins several StateDirectory= entries with ':'; the first is ours.
        state_dir = std::string(trim(split(value, ':').front()));
      }
    }
    for (const auto& def : kKeys) {
      std::string value(def.default_value);
      if (def.name == "store.id") {
        value = hostNameDefault();
      } else if (def.name == "data.dir") {
        value = state_dir.empty() ? "./omniedge-data" : state_dir;
      }
      auto normal = normalise(def, value);
      if (!normal) {
        die("default of " + std::string(def.name) + " " + quote(value) + ": " +
            normal.error().message);
      }
      config_.entries_[std::string(def.name)] = Entry{std::move(*normal), Origin::kDefault, ""};
    }
  }

  void file(const std::string& path) {
    auto text = readFile(path);
    if (!text) {
      errors_.push_back(text.error());
      return;
    }
    std::vector<FileLine> lines;
    parseIni(path, *text, lines, errors_);
    for (const auto& line : lines) {
      const KeyDef* def = findKey(line.key);
      if (def == nullptr) {
        unknown(line.key, line.value, describe(Origin::kFile, path, line.line),
                suggestion(line.key, false), line.key);
        continue;
      }
      set(*def, line.value, Origin::kFile, path, line.line);
    }
  }

  void env(const std::vector<std::pair<std::string, std::string>>& vars) {
    for (const auto& [name, value] : vars) {
      if (!name.starts_with(kEnvPrefix) || name == kConfigFileEnv) {
        continue;
      }
      const auto it = envTable().find(name);
      if (it == envTable().end()) {
        errors_.push_back(makeError("config",
                                    "unknown variable " + name + " = " + quote(value) +
                                        " (from environment): it names no key" +
                                        suggestion(name, true),
                                    name));
        continue;
      }
      set(*it->second, value, Origin::kEnv, name, 0);
    }
  }

  void flags(const std::vector<std::pair<std::string, std::string>>& given_flags) {
    for (const auto& [given, value] : given_flags) {
      const std::string key = given.starts_with("--") ? given.substr(2) : given;
      const KeyDef* def = findKey(key);
      if (def == nullptr) {
        unknown(key, value, "flag --" + key, suggestion(key, false), key);
        continue;
      }
      set(*def, value, Origin::kFlag, "--" + key, 0);
    }
  }

  void remote(const std::map<std::string, std::string>& settings,
              const std::map<std::string, std::string>& details) {
    for (const auto& [key, value] : settings) {
      const KeyDef* def = findKey(key);
      if (def == nullptr) {
        unknown(key, value, "remote config", suggestion(key, false), key);
        continue;
      }
      if (!def->remote) {
        errors_.push_back(makeError("config",
                                    key + " = " + quote(value) +
                                        " (from remote config): not remote-settable; set it in "
                                        "the config file, environment or flags",
                                    key));
        continue;
      }
      const auto detail = details.find(key);
      set(*def, value, Origin::kRemote, detail == details.end() ? "" : detail->second, 0);
    }
  }

  Result<Config> finish() {
    // Keys whose values only make sense together.
    notAbove("mqtt.reconnect_min", "mqtt.reconnect_max");
    notAbove("buffer.max_event_bytes", "sync.batch_max_bytes");
    if (errors_.empty()) {
      return std::move(config_);
    }
    Error combined = errors_.front();
    for (size_t i = 1; i < errors_.size(); ++i) {
      combined.message += "\n" + errors_[i].message;
    }
    return combined;
  }

 private:
  void set(const KeyDef& def, const std::string& raw, Origin origin, const std::string& detail,
           int line) {
    auto normal = normalise(def, raw);
    if (!normal) {
      errors_.push_back(makeError("config",
                                  std::string(def.name) + " = " + quote(raw) + " (from " +
                                      describe(origin, detail, line) +
                                      "): " + normal.error().message,
                                  std::string(def.name)));
      return;
    }
    config_.entries_[std::string(def.name)] = Entry{std::move(*normal), origin, detail};
  }

  void unknown(const std::string& key, const std::string& value, const std::string& where,
               const std::string& hint, const std::string& field) {
    errors_.push_back(makeError(
        "config", "unknown key " + key + " = " + quote(value) + " (from " + where + ")" + hint,
        field));
  }

  void notAbove(std::string_view low_key, std::string_view high_key) {
    const Entry& low = config_.entry(low_key);
    const Entry& high = config_.entry(high_key);
    if (std::strtoll(low.value.c_str(), nullptr, 10) <=
        std::strtoll(high.value.c_str(), nullptr, 10)) {
      return;
    }
    // Blame the key set by the later layer: that is the one the operator just changed.
    const bool blame_low = low.origin >= high.origin;
    const auto show = [](std::string_view key, const Entry& e) {
      return std::string(key) + " = " + e.value + " (from " + describe(e.origin, e.detail, 0) + ")";
    };
    errors_.push_back(makeError(
        "config", show(low_key, low) + " must not be greater than " + show(high_key, high),
        std::string(blame_low ? low_key : high_key)));
  }

  Config config_;
  std::vector<Error> errors_;
};

std::string_view originName(Origin origin) {
  switch (origin) {
    case Origin::kDefault:
      return "default";
    case Origin::kFile:
      return "file";
    case Origin::kEnv:
      return "env";
    case Origin::kFlag:
      return "flag";
    case Origin::kRemote:
      return "remote";
  }
  return "?";
}

const Entry& Config::entry(std::string_view key) const {
  const auto it = entries_.find(std::string(key));
  if (it == entries_.end()) {
    die("unknown key '" + std::string(key) + "'");
  }
  return it->second;
}

const std::string& Config::str(std::string_view key) const { return entry(key).value; }

int64_t Config::integer(std::string_view key) const {
  const KeyDef& def = knownKey(key);
  if (def.kind != Kind::kInt && def.kind != Kind::kDuration && def.kind != Kind::kBytes) {
    die("integer() of non-numeric key '" + std::string(key) + "'");
  }
  return std::strtoll(entry(key).value.c_str(), nullptr, 10);
}

bool Config::boolean(std::string_view key) const {
  if (knownKey(key).kind != Kind::kBool) {
    die("boolean() of non-boolean key '" + std::string(key) + "'");
  }
  return entry(key).value == "true";
}

std::vector<std::string> Config::list(std::string_view key) const {
  if (knownKey(key).kind != Kind::kList) {
    die("list() of non-list key '" + std::string(key) + "'");
  }
  std::vector<std::string> out;
  const std::string& value = entry(key).value;
  if (!value.empty()) {
    for (const auto item : split(value, ',')) {
      out.emplace_back(item);
    }
  }
  return out;
}

std::string Config::toText() const {
  constexpr size_t kMaxValueWidth = 40;
  // Sizes as they are written in a file (1GiB), not as a count of bytes.
  const auto shown = [](const std::string& key, const Entry& e) {
    if (e.value.empty()) {
      return std::string("\"\"");
    }
    return knownKey(key).kind == Kind::kBytes ? humanBytes(std::stoll(e.value)) : e.value;
  };
  size_t key_width = 0;
  size_t value_width = 0;
  for (const auto& [key, e] : entries_) {
    key_width = std::max(key_width, key.size());
    value_width = std::max(value_width, std::min(kMaxValueWidth, shown(key, e).size()));
  }
  std::string out;
  for (const auto& [key, e] : entries_) {
    std::string value = shown(key, e);
    std::string line = key + std::string(key_width - key.size(), ' ') + " = " + value;
    if (value.size() < value_width) {
      line += std::string(value_width - value.size(), ' ');
    }
    line +=
        "   (" + std::string(originName(e.origin)) + (e.detail.empty() ? "" : " " + e.detail) + ")";
    out += line + "\n";
  }
  return out;
}

nlohmann::json Config::toJson() const {
  auto out = nlohmann::json::object();
  for (const auto& [key, e] : entries_) {
    out[key] = {{"value", typedValue(knownKey(key), e.value)},
                {"origin", std::string(originName(e.origin))},
                {"detail", e.detail}};
  }
  return out;
}

Result<Config> Config::withRemote(const std::map<std::string, std::string>& settings,
                                  const std::map<std::string, std::string>& details) const {
  Builder builder(*this);
  builder.remote(settings, details);
  return builder.finish();
}

Result<Config> load(const Inputs& in) {
  Builder builder;
  builder.defaults(in.env);
  if (!in.file.empty()) {
    builder.file(in.file);
  }
  builder.env(in.env);
  builder.flags(in.flags);
  return builder.finish();
}

Result<Config> validateFile(const std::string& path) {
  // Only the file is validated, but data.dir's default still follows systemd's STATE_DIRECTORY.
  std::vector<std::pair<std::string, std::string>> env;
  for (auto& var : processEnvironment()) {
    if (var.first == "STATE_DIRECTORY") {
      env.push_back(std::move(var));
    }
  }
  Builder builder;
  builder.defaults(env);
  builder.file(path);
  return builder.finish();
}

std::vector<std::pair<std::string, std::string>> processEnvironment() {
  std::vector<std::pair<std::string, std::string>> out;
  for (char** var = environ; var != nullptr && *var != nullptr; ++var) {
    const std::string_view text(*var);
    const auto eq = text.find('=');
    if (eq == std::string_view::npos) {
      continue;
    }
    out.emplace_back(std::string(text.substr(0, eq)), std::string(text.substr(eq + 1)));
  }
  return out;
}

void addFlags(po::options_description& desc) {
  for (const auto& def : kKeys) {
    // The name is a literal from the table, hence NUL-terminated; Boost copies the strings.
    desc.add_options()(def.name.data(), po::value<std::string>()->value_name(valueName(def)),
                       helpText(def).c_str());
  }
}

std::vector<std::pair<std::string, std::string>> flagsFrom(const po::variables_map& vm) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& def : kKeys) {
    const auto it = vm.find(std::string(def.name));
    if (it == vm.end() || it->second.defaulted() || it->second.empty()) {
      continue;
    }
    if (const auto* value = boost::any_cast<std::string>(&it->second.value())) {
      out.emplace_back(std::string(def.name), *value);
    }
  }
  return out;
}

bool isRemoteSettable(std::string_view key) {
  const KeyDef* def = findKey(key);
  return def != nullptr && def->remote;
}

Result<Url> parseUrl(std::string_view text) {
  static constexpr auto kSchemes = std::to_array<std::pair<std::string_view, uint16_t>>({
      {"mqtt", 1883},
      {"mqtts", 8883},
      {"ws", 80},
      {"wss", 443},
      {"http", 80},
      {"https", 443},
  });

  text = trim(text);
  const auto sep = text.find("://");
  if (sep == std::string_view::npos || sep == 0) {
    return reason("not a URL (expected scheme://host[:port][/path])");
  }
  Url url;
  url.scheme = lower(text.substr(0, sep));
  const auto known = std::find_if(kSchemes.begin(), kSchemes.end(),
                                  [&](const auto& s) { return s.first == url.scheme; });
  if (known == kSchemes.end()) {
    return reason("unsupported scheme \"" + url.scheme + "\"");
  }
  url.port = known->second;
  std::string_view rest = text.substr(sep + 3);
  const auto path_start = rest.find_first_of("/?#");
  const auto authority = rest.substr(0, path_start);
  if (path_start != std::string_view::npos) {
    url.path = std::string(rest.substr(path_start));
    if (url.path.front() != '/') {
      url.path.insert(0, "/");
    }
  }
  if (authority.find('@') != std::string_view::npos) {
    return reason(
        "a user name or password does not belong in the URL; use the key's "
        "username/password_file settings");
  }
  if (authority.find_first_of(" \t") != std::string_view::npos) {
    return reason("the host contains a space");
  }
  bool has_port = false;
  auto parsed = parseAuthority(authority, url.host, url.port, has_port, 1);
  if (!parsed) {
    return parsed.error();
  }
  return url;
}

Result<HostPort> parseHostPort(std::string_view text) {
  text = trim(text);
  HostPort out;
  bool has_port = false;
  auto parsed = parseAuthority(text, out.host, out.port, has_port, 0);
  if (!parsed) {
    return parsed.error();
  }
  if (!has_port) {
    return reason("expected host:port, e.g. 127.0.0.1:8787 or [::1]:8787");
  }
  return out;
}

}  // namespace omniedge::config
