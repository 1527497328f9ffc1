#include "agent/config.h"

#include <algorithm>
#include <array>
#include <boost/program_options/parsers.hpp>
#include <catch2/catch.hpp>
#include <cctype>
#include <cstdlib>
#include <string>
#include <vector>

#include "tests/support/temp_dir.h"

using Catch::Matchers::Contains;
using omniedge::config::Config;
using omniedge::config::Inputs;
using omniedge::config::load;
using omniedge::config::Origin;
using omniedge::testing::TempDir;

namespace {

// Loads and requires success, so a failing test shows the configuration error.
Config loadOk(const Inputs& in) {
  auto result = load(in);
  INFO((result ? std::string() : result.error().message));
  REQUIRE(result.has_value());
  return std::move(result).value();
}

// Loads and requires failure; returns the error.
omniedge::Error loadError(const Inputs& in) {
  auto result = load(in);
  REQUIRE_FALSE(result.has_value());
  CHECK(result.error().code == "config");
  return result.error();
}

Inputs withFlag(const std::string& key, const std::string& value) {
  Inputs in;
  in.flags = {{key, value}};
  return in;
}

}  // namespace

TEST_CASE("with no file, environment or flags every key has its built-in default",
          "[unit][config]") {
  const Config config = loadOk({});

  CHECK(config.str("mqtt.url") == "mqtt://127.0.0.1:1883");
  CHECK(config.str("http.listen") == "127.0.0.1:8787");
  CHECK(config.str("store.tenant") == "default");
  CHECK(config.str("data.dir") == "./omniedge-data");
  CHECK(config.str("mqtt.version") == "auto");
  CHECK(config.integer("mqtt.keepalive") == 30);
  CHECK(config.integer("buffer.max_bytes") == 1024LL * 1024 * 1024);
  CHECK(config.str("buffer.max_bytes") == "1073741824");
  CHECK(config.integer("buffer.min_free_disk") == 256LL * 1024 * 1024);
  CHECK(config.integer("sync.batch_max_bytes") == 1024LL * 1024);
  CHECK(config.str("sync.compression") == "gzip");
  CHECK_FALSE(config.boolean("https.insecure_skip_verify"));
  CHECK(config.str("https.base_url").empty());
  CHECK(config.str("log.level") == "info");
  for (const auto& [key, entry] : config.entries()) {
    INFO(key);
    CHECK(entry.origin == Origin::kDefault);
    CHECK(entry.detail.empty());
  }

  const std::string& store_id = config.str("store.id");
  CHECK_FALSE(store_id.empty());
  CHECK(store_id.size() <= 64);
  for (char c : store_id) {
    INFO(store_id);
    CHECK((std::islower(static_cast<unsigned char>(c)) ||
           std::isdigit(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-'));
  }
}

TEST_CASE("data.dir defaults to STATE_DIRECTORY when systemd sets it", "[unit][config]") {
  Inputs in;
  SECTION("one directory") {
    in.env = {{"STATE_DIRECTORY", "/var/lib/omniedge"}};
    const Config config = loadOk(in);
    CHECK(config.str("data.dir") == "/var/lib/omniedge");
    CHECK(config.entry("data.dir").origin == Origin::kDefault);
  }
  SECTION("several directories: the first") {
    in.env = {{"STATE_DIRECTORY", "/var/lib/omniedge:/var/lib/other"}};
    CHECK(loadOk(in).str("data.dir") == "/var/lib/omniedge");
  }
  SECTION("still a default: the file overrides it") {
    TempDir dir;
    dir.write("omniedge.conf", "[data]\ndir = /srv/omniedge\n");
    in.file = (dir / "omniedge.conf").string();
    in.env = {{"STATE_DIRECTORY", "/var/lib/omniedge"}};
    CHECK(loadOk(in).str("data.dir") == "/srv/omniedge");
  }
}

TEST_CASE("a later layer wins over an earlier one and records where the value came from",
          "[unit][config]") {
  TempDir dir;
  dir.write("omniedge.conf",
            "# store settings\n"
            "[store]\n"
            "tenant = acme\n"
            "\n"
            "[mqtt]\n"
            "keepalive = 40\n"
            "url = mqtts://broker.example:8883 # the central broker\n"
            "[log]\n"
            "level = debug\n");
  const std::string path = (dir / "omniedge.conf").string();
  Inputs in;
  in.file = path;
  in.env = {{"PATH", "/usr/bin"},
            {"OMNIEDGE_CONFIG", "/etc/omniedge/omniedge.conf"},
            {"OMNIEDGE_MQTT_KEEPALIVE", "50"},
            {"OMNIEDGE_LOG_LEVEL", "warn"}};
  in.flags = {{"mqtt.keepalive", "60"}};

  const Config config = loadOk(in);

  CHECK(config.str("store.tenant") == "acme");
  CHECK(config.entry("store.tenant").origin == Origin::kFile);
  CHECK(config.entry("store.tenant").detail == path);
  CHECK(config.str("mqtt.url") == "mqtts://broker.example:8883");
  CHECK(config.str("log.level") == "warn");
  CHECK(config.entry("log.level").origin == Origin::kEnv);
  CHECK(config.entry("log.level").detail == "OMNIEDGE_LOG_LEVEL");
  CHECK(config.integer("mqtt.keepalive") == 60);
  CHECK(config.entry("mqtt.keepalive").origin == Origin::kFlag);
  CHECK(config.entry("mqtt.keepalive").detail == "--mqtt.keepalive");
  CHECK(config.entry("http.listen").origin == Origin::kDefault);
}

TEST_CASE("an unknown key is an error naming the key, the value and the layer", "[unit][config]") {
  TempDir dir;
  Inputs in;

  SECTION("file: the path, the line and a suggestion") {
    dir.write("omniedge.conf", "[mqtt]\nkeepalive = 30\nurll = mqtt://x\n");
    in.file = (dir / "omniedge.conf").string();
    const auto error = loadError(in);
    CHECK(error.field == "mqtt.urll");
    CHECK(error.message == "unknown key mqtt.urll = \"mqtt://x\" (from file " + in.file +
                               " line 3); did you mean mqtt.url?");
  }
  SECTION("file: an unknown section") {
    dir.write("omniedge.conf", "[mqttt]\nurl = mqtt://x\n");
    in.file = (dir / "omniedge.conf").string();
    CHECK_THAT(loadError(in).message, Contains("unknown key mqttt.url") && Contains("line 2"));
  }
  SECTION("environment: the variable") {
    in.env = {{"OMNIEDGE_MQTT_URLL", "mqtt://x"}};
    const auto error = loadError(in);
    CHECK(error.field == "OMNIEDGE_MQTT_URLL");
    CHECK_THAT(error.message, Contains("OMNIEDGE_MQTT_URLL") && Contains("\"mqtt://x\"") &&
                                  Contains("environment") && Contains("OMNIEDGE_MQTT_URL?"));
  }
  SECTION("flag: the flag") {
    in.flags = {{"mqtt.urll", "mqtt://x"}};
    const auto error = loadError(in);
    CHECK(error.field == "mqtt.urll");
    CHECK_THAT(error.message,
               Contains("unknown key mqtt.urll = \"mqtt://x\" (from flag --mqtt.urll)"));
  }
}

TEST_CASE("config file syntax errors name the file and the line", "[unit][config]") {
  TempDir dir;
  Inputs in;
  in.file = (dir / "omniedge.conf").string();

  SECTION("a key outside any section") {
    dir.write("omniedge.conf", "url = mqtt://x\n[mqtt]\nkeepalive = 30\n");
    const auto error = loadError(in);
    CHECK(error.field == "url");
    CHECK_THAT(error.message, Contains("line 1") && Contains("outside any [section]") &&
                                  Contains("did you mean mqtt.url"));
  }
  SECTION("a key given twice") {
    dir.write("omniedge.conf", "[mqtt]\nkeepalive = 30\n\nkeepalive = 40\n");
    const auto error = loadError(in);
    CHECK(error.field == "mqtt.keepalive");
    CHECK_THAT(error.message, Contains("line 4") && Contains("given twice") && Contains("line 2"));
  }
  SECTION("a line that is neither") {
    dir.write("omniedge.conf", "[mqtt]\nkeepalive 30\n");
    CHECK_THAT(loadError(in).message, Contains(in.file + " line 2") && Contains("key = value"));
  }
  SECTION("every problem is reported, one per line") {
    dir.write("omniedge.conf", "[mqtt]\nkeepalive = abc\nversion = 4\n");
    const auto error = loadError(in);
    CHECK(error.field == "mqtt.keepalive");
    CHECK_THAT(error.message, Contains("mqtt.keepalive") && Contains("\nmqtt.version"));
  }
}

TEST_CASE("a missing config file is an error naming its path", "[unit][config]") {
  TempDir dir;
  Inputs in;
  in.file = (dir / "nowhere.conf").string();
  CHECK_THAT(loadError(in).message, Contains(in.file) && Contains("No such file"));
}

TEST_CASE("bad values are errors naming the key, the value, the layer and the reason",
          "[unit][config]") {
  SECTION("duration from the environment") {
    Inputs in;
    in.env = {{"OMNIEDGE_MQTT_KEEPALIVE", "abc"}};
    const auto error = loadError(in);
    CHECK(error.field == "mqtt.keepalive");
    CHECK(error.message ==
          "mqtt.keepalive = \"abc\" (from environment OMNIEDGE_MQTT_KEEPALIVE): not a whole number "
          "of seconds (optionally followed by s, m, h or d: 90, 5m, 2h)");
  }
  SECTION("duration out of range") {
    CHECK(
        loadError(withFlag("mqtt.keepalive", "2")).message ==
        "mqtt.keepalive = \"2\" (from flag --mqtt.keepalive): must be between 5 and 3600 seconds");
  }
  SECTION("int") {
    CHECK_THAT(loadError(withFlag("sync.max_inflight", "four")).message,
               Contains("sync.max_inflight = \"four\"") && Contains("not a whole number"));
    CHECK_THAT(loadError(withFlag("sync.max_inflight", "65")).message,
               Contains("must be between 1 and 64"));
    CHECK_THAT(loadError(withFlag("sync.max_inflight", "1.5")).message,
               Contains("not a whole number"));
    CHECK_THAT(loadError(withFlag("sync.backfill_threshold", "99999999999999999999")).message,
               Contains("too large"));
  }
  SECTION("enum") {
    const auto error = loadError(withFlag("mqtt.version", "4"));
    CHECK(error.field == "mqtt.version");
    CHECK_THAT(error.message,
               Contains("mqtt.version = \"4\"") && Contains("one of auto, 3.1.1, 5"));
  }
  SECTION("bool") {
    CHECK_THAT(loadError(withFlag("https.insecure_skip_verify", "maybe")).message,
               Contains("not a boolean"));
  }
  SECTION("bytes") {
    CHECK_THAT(loadError(withFlag("buffer.max_bytes", "lots")).message,
               Contains("buffer.max_bytes = \"lots\"") && Contains("not a byte size"));
    CHECK_THAT(loadError(withFlag("buffer.max_bytes", "10T")).message, Contains("not a byte size"));
    CHECK_THAT(loadError(withFlag("buffer.max_bytes", "512K")).message,
               Contains("must be at least 1MiB"));
    CHECK_THAT(loadError(withFlag("sync.batch_max_bytes", "128MiB")).message,
               Contains("must be between 4KiB and 64MiB"));
  }
  SECTION("url") {
    CHECK_THAT(loadError(withFlag("mqtt.url", "http://broker:80")).message,
               Contains("mqtt.url = \"http://broker:80\"") &&
                   Contains("scheme \"http\" is not allowed here; use mqtt, mqtts, ws or wss"));
    CHECK_THAT(loadError(withFlag("mqtt.url", "broker:1883")).message, Contains("not a URL"));
    CHECK_THAT(loadError(withFlag("mqtt.url", "mqtt://:1883")).message,
               Contains("the host is missing"));
    CHECK_THAT(loadError(withFlag("mqtt.url", "mqtt://broker:99999")).message,
               Contains("port \"99999\" is not a number from 1 to 65535"));
    CHECK_THAT(loadError(withFlag("mqtt.url", "mqtt://::1:1883")).message,
               Contains("must be in brackets"));
    CHECK_THAT(loadError(withFlag("mqtt.url", "mqtt://user:pw@broker")).message,
               Contains("does not belong in the URL"));
    CHECK_THAT(loadError(withFlag("https.base_url", "mqtt://broker")).message,
               Contains("use https or http"));
  }
  SECTION("hostport") {
    CHECK_THAT(loadError(withFlag("http.listen", "localhost")).message,
               Contains("http.listen = \"localhost\"") && Contains("expected host:port"));
    CHECK_THAT(loadError(withFlag("http.listen", "0.0.0.0:70000")).message,
               Contains("port \"70000\" is not a number from 0 to 65535"));
    CHECK_THAT(loadError(withFlag("http.listen", "::1:8787")).message,
               Contains("must be in brackets"));
  }
  SECTION("strings with a charset") {
    CHECK_THAT(loadError(withFlag("store.id", "store 42")).message,
               Contains("store.id = \"store 42\"") && Contains("1 to 64 characters"));
    CHECK_THAT(loadError(withFlag("store.tenant", "")).message, Contains("1 to 64 characters"));
    CHECK_THAT(loadError(withFlag("identity.default_country_code", "4444")).message,
               Contains("1 to 3 digits"));
  }
  SECTION("values that only make sense together") {
    const auto error = loadError(withFlag("mqtt.reconnect_min", "300"));
    CHECK(error.field == "mqtt.reconnect_min");
    CHECK_THAT(error.message, Contains("must not be greater than mqtt.reconnect_max = 120"));
  }
}

TEST_CASE("good values of each kind are accepted and normalised", "[unit][config]") {
  SECTION("byte sizes: plain numbers and binary suffixes in any case") {
    const std::vector<std::pair<std::string, int64_t>> cases = {
        {"0", 0},
        {"1024", 1024},
        {"4K", 4096},
        {"4kb", 4096},
        {"4KiB", 4096},
        {"4 kib", 4096},
        {"2M", 2 * 1024 * 1024},
        {"2mb", 2 * 1024 * 1024},
        {"2MiB", 2 * 1024 * 1024},
        {"3G", 3LL * 1024 * 1024 * 1024},
        {"3gB", 3LL * 1024 * 1024 * 1024},
        {"3GiB", 3LL * 1024 * 1024 * 1024},
    };
    for (const auto& [text, bytes] : cases) {
      INFO(text);
      const Config config = loadOk(withFlag("sync.max_bytes_per_sec", text));
      CHECK(config.integer("sync.max_bytes_per_sec") == bytes);
      CHECK(config.str("sync.max_bytes_per_sec") == std::to_string(bytes));
    }
  }
  SECTION("durations: whole seconds, or with s, m, h or d as a technician writes them") {
    const std::vector<std::pair<std::string, int64_t>> cases = {
        {"90", 90}, {"90s", 90}, {"5m", 300}, {"5 M", 300}, {"2h", 7200}, {"7d", 604800}};
    for (const auto& [text, seconds] : cases) {
      INFO(text);
      const Config config = loadOk(withFlag("buffer.retain_delivered", text));
      CHECK(config.integer("buffer.retain_delivered") == seconds);
      CHECK(config.str("buffer.retain_delivered") == std::to_string(seconds));
    }
    CHECK_THAT(loadError(withFlag("http.body_timeout", "1.5m")).message,
               Contains("http.body_timeout = \"1.5m\"") &&
                   Contains("not a whole number of seconds (optionally followed by s, m, h or d"));
    CHECK_THAT(loadError(withFlag("http.body_timeout", "2h")).message,
               Contains("must be between 1 and 3600 seconds"));
  }
  SECTION("booleans") {
    for (const std::string yes : {"true", "yes", "on", "1", "TRUE", "Yes"}) {
      INFO(yes);
      const Config config = loadOk(withFlag("https.insecure_skip_verify", yes));
      CHECK(config.boolean("https.insecure_skip_verify"));
      CHECK(config.str("https.insecure_skip_verify") == "true");
    }
    for (const std::string no : {"false", "no", "off", "0"}) {
      INFO(no);
      CHECK_FALSE(
          loadOk(withFlag("https.insecure_skip_verify", no)).boolean("https.insecure_skip_verify"));
    }
  }
  SECTION("enums take their canonical spelling") {
    CHECK(loadOk(withFlag("log.level", "DEBUG")).str("log.level") == "debug");
    CHECK(loadOk(withFlag("mqtt.version", "3.1.1")).str("mqtt.version") == "3.1.1");
  }
  SECTION("numbers are trimmed and normalised") {
    CHECK(loadOk(withFlag("mqtt.keepalive", " +045 ")).str("mqtt.keepalive") == "45");
  }
  SECTION("urls") {
    for (const std::string url :
         {"mqtt://broker", "mqtts://broker.example:8883", "ws://10.0.0.1:9001/mqtt",
          "wss://[2001:db8::1]:443/mqtt", "MQTT://Broker:1883"}) {
      INFO(url);
      CHECK(loadOk(withFlag("mqtt.url", url)).str("mqtt.url") == url);
    }
    CHECK(loadOk(withFlag("https.base_url", "https://central.example/api")).str("https.base_url") ==
          "https://central.example/api");
  }
  SECTION("host:port") {
    CHECK(loadOk(withFlag("http.listen", "0.0.0.0:0")).str("http.listen") == "0.0.0.0:0");
    CHECK(loadOk(withFlag("http.listen", "[::1]:8787")).str("http.listen") == "[::1]:8787");
  }
  SECTION("a country code with a plus") {
    CHECK(loadOk(withFlag("identity.default_country_code", "+44"))
              .str("identity.default_country_code") == "44");
  }
}

TEST_CASE("URLs and host:port pairs parse into their parts", "[unit][config]") {
  auto url = omniedge::config::parseUrl("wss://[2001:db8::1]/mqtt");
  REQUIRE(url.has_value());
  CHECK(url->scheme == "wss");
  CHECK(url->host == "2001:db8::1");
  CHECK(url->port == 443);
  CHECK(url->path == "/mqtt");

  url = omniedge::config::parseUrl("mqtt://broker.example:1884");
  REQUIRE(url.has_value());
  CHECK(url->host == "broker.example");
  CHECK(url->port == 1884);
  CHECK(url->path.empty());

  CHECK(omniedge::config::parseUrl("mqtts://broker")->port == 8883);
  CHECK_FALSE(omniedge::config::parseUrl("gopher://x").has_value());

  auto hp = omniedge::config::parseHostPort("[::1]:8787");
  REQUIRE(hp.has_value());
  CHECK(hp->host == "::1");
  CHECK(hp->port == 8787);
  CHECK_FALSE(omniedge::config::parseHostPort(":8787").has_value());
  CHECK_FALSE(omniedge::config::parseHostPort("[::1]8787").has_value());
}

TEST_CASE("lists are comma-separated with spaces trimmed and empty items dropped in every layer",
          "[unit][config]") {
  const std::vector<std::string> expected = {"home/+/BTtoMQTT/#", "espresense/devices/#"};
  CHECK(loadOk({}).list("beacon.topics") == expected);

  SECTION("file: '#' in a value is not a comment") {
    TempDir dir;
    dir.write("omniedge.conf",
              "[beacon]\ntopics = a/#, ,b/+/c  # two filters\nzones = s1=door, s2=till\n");
    Inputs in;
    in.file = (dir / "omniedge.conf").string();
    const Config config = loadOk(in);
    CHECK(config.list("beacon.topics") == std::vector<std::string>{"a/#", "b/+/c"});
    CHECK(config.str("beacon.topics") == "a/#,b/+/c");
    CHECK(config.list("beacon.zones") == std::vector<std::string>{"s1=door", "s2=till"});
  }
  SECTION("environment") {
    Inputs in;
    in.env = {{"OMNIEDGE_BEACON_TOPICS", " x/#,,y/# ,"}};
    CHECK(loadOk(in).list("beacon.topics") == std::vector<std::string>{"x/#", "y/#"});
  }
  SECTION("flag, and an empty list") {
    CHECK(loadOk(withFlag("beacon.topics", " , ")).list("beacon.topics").empty());
  }
  SECTION("a bad item") {
    CHECK_THAT(loadError(withFlag("beacon.zones", "s1=door,s2")).message,
               Contains("beacon.zones") && Contains("\"s2\" is not scanner=zone"));
  }
}

TEST_CASE("the remote layer takes only known, remote-settable keys with good values",
          "[unit][config]") {
  const Config base = loadOk(withFlag("sync.compression", "none"));

  SECTION("a remote-settable key wins over a flag") {
    auto remote = base.withRemote({{"sync.compression", "zstd"}, {"sync.max_inflight", "8"}});
    REQUIRE(remote.has_value());
    CHECK(remote->str("sync.compression") == "zstd");
    CHECK(remote->entry("sync.compression").origin == Origin::kRemote);
    CHECK(remote->integer("sync.max_inflight") == 8);
    CHECK(base.str("sync.compression") == "none");
  }
  SECTION("a key that is not remote-settable rejects the whole set") {
    auto remote =
        base.withRemote({{"sync.max_inflight", "8"}, {"mqtt.password_file", "/etc/shadow"}});
    REQUIRE_FALSE(remote.has_value());
    CHECK(remote.error().field == "mqtt.password_file");
    CHECK_THAT(remote.error().message, Contains("mqtt.password_file") &&
                                           Contains("not remote-settable") &&
                                           Contains("remote config"));
  }
  SECTION("each remote value says which document set it") {
    auto remote = base.withRemote({{"log.level", "debug"}, {"sync.max_inflight", "8"}},
                                  {{"log.level", "v5 for this store"}});
    REQUIRE(remote.has_value());
    CHECK(remote->entry("log.level").detail == "v5 for this store");
    CHECK(remote->entry("sync.max_inflight").detail.empty());
    CHECK_THAT(remote->toText(), Contains("(remote v5 for this store)"));
    CHECK(remote->toJson()["log.level"]["origin"] == "remote");
    auto bad = base.withRemote({{"log.level", "loud"}}, {{"log.level", "v6 for all stores"}});
    CHECK_THAT(bad.error().message, Contains("(from remote config v6 for all stores)"));
  }
  SECTION("an unknown key") {
    auto remote = base.withRemote({{"sync.max_inflightt", "8"}});
    REQUIRE_FALSE(remote.has_value());
    CHECK(remote.error().field == "sync.max_inflightt");
    CHECK_THAT(remote.error().message,
               Contains("unknown key sync.max_inflightt = \"8\" (from remote config)"));
  }
  SECTION("a bad value") {
    auto remote = base.withRemote({{"log.level", "loud"}});
    REQUIRE_FALSE(remote.has_value());
    CHECK(remote.error().field == "log.level");
    CHECK_THAT(remote.error().message, Contains("log.level = \"loud\" (from remote config)"));
  }
  SECTION("remote values are checked against the others") {
    auto remote = base.withRemote({{"mqtt.reconnect_max", "0"}});
    REQUIRE_FALSE(remote.has_value());
    remote = base.withRemote({{"mqtt.reconnect_min", "500"}});
    REQUIRE_FALSE(remote.has_value());
    CHECK(remote.error().field == "mqtt.reconnect_min");
  }
  CHECK(omniedge::config::isRemoteSettable("log.level"));
  CHECK(omniedge::config::isRemoteSettable("sync.batch_max_events"));
  // A new broker or certificate, for the centre to move stores (issue 14); never what would
  // move the data, the identity, a secret, or the key that checks the config itself.
  CHECK(omniedge::config::isRemoteSettable("mqtt.url"));
  CHECK(omniedge::config::isRemoteSettable("mqtt.cert_file"));
  CHECK(omniedge::config::isRemoteSettable("beacon.zones"));
  for (const char* key : {"data.dir", "identity.hmac_key_file", "config.verify_key_file",
                          "mqtt.password_file", "mqtt.client_id", "store.id", "store.tenant",
                          "http.listen", "http.tokens_file", "buffer.max_bytes"}) {
    INFO(key);
    CHECK_FALSE(omniedge::config::isRemoteSettable(key));
  }
  CHECK_FALSE(omniedge::config::isRemoteSettable("no.such_key"));
}

TEST_CASE("the text and JSON views show each value with its origin", "[unit][config]") {
  Inputs in;
  in.env = {{"OMNIEDGE_MQTT_KEEPALIVE", "45"}};
  in.flags = {{"https.insecure_skip_verify", "yes"}, {"beacon.topics", "a/#,b/#"}};
  const Config config = loadOk(in);

  const auto json = config.toJson();
  CHECK(json["mqtt.keepalive"]["value"] == 45);
  CHECK(json["mqtt.keepalive"]["origin"] == "env");
  CHECK(json["mqtt.keepalive"]["detail"] == "OMNIEDGE_MQTT_KEEPALIVE");
  CHECK(json["https.insecure_skip_verify"]["value"] == true);
  CHECK(json["https.insecure_skip_verify"]["origin"] == "flag");
  CHECK(json["beacon.topics"]["value"] == nlohmann::json::array({"a/#", "b/#"}));
  CHECK(json["buffer.max_bytes"]["value"] == 1073741824);
  // mqtt.url is a list of broker nodes (issue 14): one node is an array of one.
  CHECK(json["mqtt.url"]["value"] == nlohmann::json::array({"mqtt://127.0.0.1:1883"}));
  CHECK(json["mqtt.url"]["origin"] == "default");
  CHECK(json.size() == config.entries().size());

  const std::string text = config.toText();
  CHECK_THAT(text, Contains("mqtt.keepalive") && Contains("= 45 ") &&
                       Contains("(env OMNIEDGE_MQTT_KEEPALIVE)\n") &&
                       Contains("(flag --https.insecure_skip_verify)\n") &&
                       Contains("(default)\n"));
  CHECK(std::count(text.begin(), text.end(), '\n') == static_cast<long>(config.entries().size()));
  // Aligned: with no value longer than the width cap, every "(origin" is in the same column.
  std::vector<size_t> columns;
  size_t start = 0;
  while (start < text.size()) {
    const size_t end = text.find('\n', start);
    const std::string line = text.substr(start, end - start);
    columns.push_back(line.rfind("   ("));
    start = end + 1;
  }
  REQUIRE_FALSE(columns.empty());
  CHECK(
      std::all_of(columns.begin(), columns.end(), [&](size_t c) { return c == columns.front(); }));
}

TEST_CASE("validateFile checks a file on top of the defaults only", "[unit][config]") {
  TempDir dir;
  SECTION("a good file") {
    dir.write("good.conf", "[store]\nid = store-042\n[buffer]\nmax_bytes = 2GiB\n");
    auto config = omniedge::config::validateFile((dir / "good.conf").string());
    REQUIRE(config.has_value());
    CHECK(config->str("store.id") == "store-042");
    CHECK(config->integer("buffer.max_bytes") == 2LL * 1024 * 1024 * 1024);
  }
  SECTION("a bad file: every problem named") {
    dir.write("bad.conf", "[store]\nid = store 42\n[sync]\ncompression = brotli\n");
    const std::string path = (dir / "bad.conf").string();
    auto config = omniedge::config::validateFile(path);
    REQUIRE_FALSE(config.has_value());
    CHECK(config.error().field == "store.id");
    CHECK_THAT(config.error().message,
               Contains("store.id = \"store 42\" (from file " + path + " line 2)") &&
                   Contains("sync.compression = \"brotli\" (from file " + path + " line 4)"));
  }
  SECTION("a missing file") {
    CHECK_FALSE(omniedge::config::validateFile((dir / "missing.conf").string()).has_value());
  }
}

TEST_CASE("command-line flags come from Boost.Program_options with one option per key",
          "[unit][config]") {
  namespace po = boost::program_options;
  po::options_description desc("Configuration");
  omniedge::config::addFlags(desc);
  CHECK(desc.find_nothrow("mqtt.url", false) != nullptr);
  CHECK(desc.find_nothrow("sync.compression", false) != nullptr);
  CHECK_THAT(desc.find("sync.compression", false).description(), Contains("remote-settable"));

  const std::array<const char*, 4> argv = {"omniedge", "--mqtt.url", "mqtts://b:8883",
                                           "--sync.compression=zstd"};
  po::variables_map vm;
  po::store(po::parse_command_line(static_cast<int>(argv.size()), argv.data(), desc), vm);
  po::notify(vm);
  const auto flags = omniedge::config::flagsFrom(vm);
  CHECK(flags == std::vector<std::pair<std::string, std::string>>{{"mqtt.url", "mqtts://b:8883"},
                                                                  {"sync.compression", "zstd"}});
  Inputs in;
  in.flags = flags;
  const Config config = loadOk(in);
  CHECK(config.entry("mqtt.url").detail == "--mqtt.url");
}

TEST_CASE("processEnvironment returns the process environment as pairs", "[unit][config]") {
  REQUIRE(setenv("OMNIEDGE_CONFIG_TEST_PROBE", "a=b", 1) == 0);
  const auto env = omniedge::config::processEnvironment();
  unsetenv("OMNIEDGE_CONFIG_TEST_PROBE");
  CHECK(std::find(env.begin(), env.end(),
                  std::pair<std::string, std::string>{"OMNIEDGE_CONFIG_TEST_PROBE", "a=b"}) !=
        env.end());
}
