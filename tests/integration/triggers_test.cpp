// Local triggers against the real binary (docs/omnichannel.md): profiles pushed on R/profiles,
// rules pushed by a signed remote config (tools/central-sim), kiosks subscribed to
// GET /v1/stream with a real socket, customers walking in through a gateway bridge's token.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "tests/support/agent_process.h"
#include "tests/support/broker.h"
#include "tests/support/central_sim.h"
#include "tests/support/temp_dir.h"

using namespace std::chrono_literals;
using Catch::Matchers::Contains;
using nlohmann::json;
using omniedge::testing::AgentProcess;
using omniedge::testing::centralSim;
using omniedge::testing::MosquittoBroker;
using omniedge::testing::publishMqtt;
using omniedge::testing::TempDir;

namespace {

constexpr const char* kStore = "store-042";
constexpr const char* kRoot = "omniedge/v1/default/store-042";
constexpr const char* kBridge = "bridge-token-0123456789abcdef";
constexpr const char* kKiosk = "kiosk-entrance-0123456789abcdef";
constexpr const char* kShoes = "kiosk-shoes-0123456789abcdef";
constexpr int kCustomers = 12;

template <class F>
bool eventually(F&& f, std::chrono::seconds timeout = 20s) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (f()) {
      return true;
    }
    std::this_thread::sleep_for(50ms);
  }
  return f();
}

// A kiosk listening on GET /v1/stream over a plain socket: what it read so far, as text.
class StreamClient {
 public:
  StreamClient(int port, const std::string& target, const std::string& token) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd_ >= 0);
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(static_cast<uint16_t>(port));
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd_, reinterpret_cast<sockaddr*>(&to), sizeof(to)) == 0);
    const std::string request = "GET " + target +
                                " HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n"
                                "Authorization: Bearer " +
                                token + "\r\n\r\n";
    REQUIRE(::send(fd_, request.data(), request.size(), MSG_NOSIGNAL) ==
            static_cast<ssize_t>(request.size()));
  }
  ~StreamClient() { ::close(fd_); }
  StreamClient(const StreamClient&) = delete;
  StreamClient& operator=(const StreamClient&) = delete;

  /// Reads until `text` holds `needle` (true), or `within` passed or the server closed (false).
  bool waitFor(const std::string& needle, std::chrono::milliseconds within = 20s) {
    const auto deadline = std::chrono::steady_clock::now() + within;
    while (text_.find(needle) == std::string::npos) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) {
        return false;
      }
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) {
        return false;
      }
      char buf[4096];
      const ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
      if (n <= 0) {
        return false;
      }
      text_.append(buf, static_cast<std::size_t>(n));
    }
    return true;
  }

  /// The data of every `event: engagement` frame read so far.
  std::vector<json> engagements() const {
    std::vector<json> out;
    std::size_t at = 0;
    while ((at = text_.find("event: engagement\ndata: ", at)) != std::string::npos) {
      at += std::string_view("event: engagement\ndata: ").size();
      const std::size_t end = text_.find("\n\n", at);
      if (end == std::string::npos) {
        break;
      }
      out.push_back(json::parse(text_.substr(at, end - at)));
      at = end;
    }
    return out;
  }

  const std::string& text() const { return text_; }

 private:
  int fd_ = -1;
  std::string text_;
};

std::string walkIn(int customer, const std::string& zone) {
  return json{{"type", "beacon.enter"},
              {"customer", {{"beacon", "ibeacon:u:1:" + std::to_string(customer)}}},
              {"data", {{"zone", zone}, {"scanner", "s-" + zone}}}}
      .dump();
}

// Every event the centre got from the agent's buffer so far, from the batches on R/events.
std::vector<json> delivered(const omniedge::testing::Subscriber& sub) {
  std::vector<json> events;
  for (const auto& m : sub.messages()) {
    if (m.topic != std::string(kRoot) + "/events") {
      continue;
    }
    json batch = json::parse(m.payload);
    for (json& e : batch["events"]) {
      events.push_back(std::move(e));
    }
  }
  return events;
}

}  // namespace

TEST_CASE(
    "a trigger pushed by remote config reaches the kiosk stream of the zone a gold customer "
    "with a cart walks into, except for the held-out customers, whose events say holdout",
    "[integration][triggers]") {
  MosquittoBroker broker;
  omniedge::testing::Subscriber centre(broker.url(), "omniedge/v1/#");
  TempDir tmp;
  auto keys = centralSim({"keygen", "--out", (tmp / "keys").string()});
  REQUIRE(keys.exit_code == 0);
  const std::string signing_key = json::parse(keys.out)["private_key"].get<std::string>();
  std::ofstream(tmp / "tokens") << kBridge << " channels=kiosk,beacon\n"
                                << kKiosk << "\n"
                                << kShoes << " zones=shoes\n";
  // A fixed tenant key: the hold-out is then the same on every run (and in every store).
  tmp.write("hmac.key", "tenant-hmac-key-for-the-trigger-test-0123");
  AgentProcess agent(
      tmp / "data",
      {{"OMNIEDGE_MQTT_URL", broker.url()},
       {"OMNIEDGE_MQTT_RECONNECT_MIN", "1"},
       {"OMNIEDGE_MQTT_RECONNECT_MAX", "2"},
       {"OMNIEDGE_STORE_ID", kStore},
       {"OMNIEDGE_CONFIG_VERIFY_KEY_FILE", json::parse(keys.out)["public_key"].get<std::string>()},
       {"OMNIEDGE_IDENTITY_HMAC_KEY_FILE", (tmp / "hmac.key").string()},
       {"OMNIEDGE_HTTP_TOKENS_FILE", (tmp / "tokens").string()}});
  agent.setBearerToken(kBridge);
  INFO("log: " << agent.log());
  REQUIRE(agent.start());
  REQUIRE(eventually([&] {
    auto r = agent.cli({"status", "--json"});
    return r.exit_code == 0 && json::parse(r.out)["uplink"]["mqtt"]["state"] == "connected";
  }));

  // The centre pushes the profiles: gold customers with items in their app cart, and one silver.
  json upserts = json::array();
  for (int i = 0; i < kCustomers; ++i) {
    upserts.push_back(
        {{"id", "c-" + std::to_string(i)},
         {"keys", {"loyalty:L-" + std::to_string(i), "ibeacon:u:1:" + std::to_string(i)}},
         {"tier", "gold"},
         {"segments", {"vip"}},
         {"cart",
          {{"items", {{{"sku", "SKU-" + std::to_string(i)}, {"qty", 1}, {"channel", "app"}}}}}}});
  }
  upserts.push_back({{"id", "c-silver"},
                     {"keys", {"loyalty:L-S", "ibeacon:u:1:99"}},
                     {"tier", "silver"},
                     {"cart", {{"items", {{{"sku", "SKU-S"}, {"qty", 1}}}}}}});
  publishMqtt(broker.url(), std::string(kRoot) + "/profiles",
              json{{"upserts", upserts}, {"cursor", "rev-1"}}.dump());
  REQUIRE(eventually([&] {
    return agent.get("/v1/customers/loyalty:L-" + std::to_string(kCustomers - 1)).first == 200;
  }));

  // ... and the rules, signed: half of the customers are held out of the cart welcome.
  const json rules = json::array({{{"id", "gold-cart-welcome"},
                                   {"on", "beacon.enter"},
                                   {"when", {{"tier", {"gold"}}, {"cart_not_empty", true}}},
                                   {"emit", "engagement.cart_reminder"},
                                   {"show", {{"kind", "cart"}}},
                                   {"rate_limit", "1/4h"},
                                   {"holdout", 0.5}}});
  auto published = centralSim({"config", "--mqtt", broker.url(), "--tenant", "default", "--store",
                               kStore, "--version", "1", "--key", signing_key, "--settings",
                               json{{"triggers.rules", rules.dump()}}.dump()});
  REQUIRE(published.exit_code == 0);
  // Applied by the daemon (not only stored): the rule is in force.
  REQUIRE(eventually([&] {
    return agent.get("/metrics").second.find("omniedge_triggers_rules 1\n") != std::string::npos;
  }));
  {
    auto r = agent.cli({"config", "show", "--json"});
    REQUIRE(r.exit_code == 0);
    CHECK(json::parse(r.out)["triggers.rules"]["origin"] == "remote");
  }

  // Kiosks subscribe: one at the entrance, one whose token only follows the shoe zone.
  StreamClient entrance(agent.httpPort(), "/v1/stream?zone=entrance", kKiosk);
  REQUIRE(entrance.waitFor(": subscribed\n\n"));
  CHECK_THAT(entrance.text(), Contains("HTTP/1.1 200") && Contains("text/event-stream"));
  StreamClient shoes(agent.httpPort(), "/v1/stream", kShoes);
  REQUIRE(shoes.waitFor(": subscribed\n\n"));

  // A token restricted to its zones cannot follow another.
  {
    StreamClient sneaky(agent.httpPort(), "/v1/stream?zone=entrance", kShoes);
    REQUIRE(sneaky.waitFor("\r\n\r\n"));
    CHECK_THAT(sneaky.text(), Contains("HTTP/1.1 403"));
  }

  // Customers walk in at the entrance; a silver one too, who no rule is for.
  for (int i = 0; i < kCustomers; ++i) {
    REQUIRE(agent.post("/v1/events", walkIn(i, "entrance")).first == 202);
  }
  REQUIRE(agent.post("/v1/events", walkIn(99, "entrance")).first == 202);

  // The centre gets (from the buffer) an engagement event for every gold customer, held out or
  // not.
  std::vector<json> engagements;
  std::vector<std::string> types;
  const bool all_there = eventually([&] {
    engagements.clear();
    types.clear();
    for (json& e : delivered(centre)) {
      types.push_back(e["type"].get<std::string>());
      if (e["type"] == "engagement.cart_reminder") {
        engagements.push_back(std::move(e));
      }
    }
    return engagements.size() >= static_cast<std::size_t>(kCustomers);
  });
  {
    INFO("delivered: " << json(types).dump());
    INFO("metrics: " << agent.get("/metrics").second);
    REQUIRE(all_there);
  }
  REQUIRE(engagements.size() == static_cast<std::size_t>(kCustomers));
  std::set<std::string> held;
  std::set<std::string> not_held;
  for (const json& e : engagements) {
    INFO(e.dump());
    CHECK(e["data"]["rule"] == "gold-cart-welcome");
    CHECK(e["data"]["zone"] == "entrance");
    CHECK(e["data"]["trigger"]["type"] == "beacon.enter");
    CHECK(e["data"]["rule_version"].get<std::string>().size() == 16);
    const std::string id = e["customer"]["profile_id"];
    (e["data"]["holdout"].get<bool>() ? held : not_held).insert(id);
  }
  INFO("held out: " << json(held).dump() << "; shown: " << json(not_held).dump());
  REQUIRE_FALSE(held.empty());
  REQUIRE_FALSE(not_held.empty());

  // The entrance kiosk shows exactly the customers not held out, with their app cart.
  REQUIRE(eventually([&] {
    entrance.waitFor("\n\n\n", 100ms);  // reads what has come
    return entrance.engagements().size() >= not_held.size();
  }));
  std::set<std::string> shown;
  for (const json& frame : entrance.engagements()) {
    INFO(frame.dump());
    CHECK(frame["type"] == "engagement.cart_reminder");
    CHECK(frame["zone"] == "entrance");
    const std::string id = frame["customer"]["profile_id"];
    CHECK(frame["customer"]["key"] == "loyalty:L-" + id.substr(2));
    CHECK(frame["cart"]["items"][0]["sku"] == "SKU-" + id.substr(2));
    shown.insert(id);
  }
  CHECK(shown == not_held);
  CHECK(entrance.engagements().size() == not_held.size());

  // The shoe kiosk saw nothing of the entrance; a customer shown in its zone reaches it.
  const std::string someone = *not_held.begin();
  const int n = std::stoi(someone.substr(2));
  // The cart welcome is spent for that customer (1/4h); a greeting for the shoe zone is added,
  // this time with the rules as a JSON array in the signed document rather than a string.
  const json more = json::array({rules[0],
                                 {{"id", "shoes-hello"},
                                  {"on", "beacon.enter"},
                                  {"when", {{"zone", {"shoes"}}, {"segments_any", {"vip"}}}},
                                  {"emit", "engagement.hello"},
                                  {"show", {{"kind", "greeting"}}}}});
  REQUIRE(centralSim({"config", "--mqtt", broker.url(), "--tenant", "default", "--store", kStore,
                      "--version", "2", "--key", signing_key, "--settings",
                      json{{"triggers.rules", more}}.dump()})
              .exit_code == 0);
  REQUIRE(eventually([&] {
    return agent.get("/metrics").second.find("omniedge_triggers_rules 2\n") != std::string::npos;
  }));
  REQUIRE(agent.post("/v1/events", walkIn(n, "shoes")).first == 202);
  REQUIRE(shoes.waitFor("engagement.hello"));
  const auto shoe_frames = shoes.engagements();
  REQUIRE(shoe_frames.size() == 1);
  CHECK(shoe_frames[0]["rule"] == "shoes-hello");
  CHECK(shoe_frames[0]["zone"] == "shoes");
  CHECK(shoe_frames[0]["customer"]["profile_id"] == someone);
  CHECK(shoe_frames[0]["show"]["kind"] == "greeting");

  // The metrics count what happened.
  agent.setBearerToken(kKiosk);
  const auto metrics = agent.get("/metrics").second;
  CHECK_THAT(metrics, Contains("omniedge_triggers_total{outcome=\"held_out\"} " +
                               std::to_string(held.size())));
  CHECK_THAT(metrics, Contains("omniedge_http_streams_open 2"));
}

TEST_CASE("trigger rules with an error are refused as a whole, naming the rule and field",
          "[integration][triggers]") {
  TempDir tmp;
  AgentProcess agent(tmp / "data", {});
  const json rules = json::array({{{"id", "ok"}, {"on", "beacon.enter"}, {"emit", "engagement.a"}},
                                  {{"id", "bad"},
                                   {"on", "beacon.enter"},
                                   {"emit", "engagement.b"},
                                   {"when", {{"tier", "gold"}}}}});
  tmp.write("omniedge.conf", "[triggers]\nrules = " + rules.dump() + "\n");
  auto r = agent.cli({"config", "validate", (tmp / "omniedge.conf").string()});
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.out, Contains("triggers.rules[1].when.tier: must be an array of non-empty strings"));
}
