#include "cli/console/console.h"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace omniedge::console {
namespace {

using nlohmann::json;

std::string header(const kiosk::HttpResponse& res, const std::string& name) {
  for (const auto& [n, v] : res.headers) {
    if (n == name) {
      return v;
    }
  }
  return "";
}

kiosk::HttpResponse get(Console& console, const std::string& path) {
  kiosk::HttpRequest req;
  req.method = "GET";
  req.path = path;
  req.target = req.path;
  kiosk::HttpResponse res;
  console.handler()(req, res);
  return res;
}

struct Fake {
  std::vector<store::RecentEvent> ring = {
      {1, "agent.started", R"({"id":"e1","type":"agent.started","source":"agent"})"},
      {2, "kiosk.view",
       R"({"id":"e2","type":"kiosk.view","source":"kiosk:door","occurred_at":"2026-12-02T05:00:00.000Z",)"
       R"("customer":{"loyalty_id":"LOY-SECRET-1","email_sha256":"ab12"},"data":{"name":"Jane"}})"}};

  ConsoleSources sources() {
    return {[] {
              return json{{"store_id", "store-7"}, {"queue", {{"pending", 3}}}};
            },
            [] {
              return json{{"interval_s", 10}};
            },
            [this](int64_t after, std::size_t limit) {
              std::vector<store::RecentEvent> out;
              for (const auto& e : ring) {
                if (e.seq > after) {
                  out.push_back(e);
                }
              }
              if (out.size() > limit) {
                out.erase(out.begin(), out.end() - static_cast<std::ptrdiff_t>(limit));
              }
              return out;
            }};
  }
};

TEST_CASE("the console's event list shows no customer identifier and no data", "[unit][console]") {
  Fake fake;
  const json summary = json::parse(eventSummary(fake.ring[1]));
  CHECK(summary == json{{"seq", 2},
                        {"id", "e2"},
                        {"type", "kiosk.view"},
                        {"source", "kiosk:door"},
                        {"occurred_at", "2026-12-02T05:00:00.000Z"},
                        {"customer", true}});
  CHECK(eventSummary(fake.ring[1]).find("LOY-SECRET-1") == std::string::npos);
  CHECK(json::parse(eventSummary({3, "x.y", "not json"})) == json{{"seq", 3}, {"type", "x.y"}});
}

TEST_CASE("the console serves its page with a strict policy and the agent's own status",
          "[unit][console]") {
  Fake fake;
  Console console(fake.sources(), {});

  auto page = get(console, "/console");
  CHECK(page.status == 200);
  CHECK(page.content_type == "text/html; charset=utf-8");
  CHECK(page.body.find("id=\"queue-total\"") != std::string::npos);
  CHECK(page.body.find("<script src=\"/console/app.js\"") != std::string::npos);
  // Nothing from elsewhere: no URL with a scheme in the page, script or style.
  for (const char* asset : {"/console", "/console/app.js", "/console/app.css"}) {
    INFO(asset);
    auto res = get(console, asset);
    CHECK(res.status == 200);
    CHECK(res.body.find("http://") == std::string::npos);
    CHECK(res.body.find("https://") == std::string::npos);
    CHECK(header(res, "Content-Security-Policy").find("script-src 'self'") != std::string::npos);
    CHECK(header(res, "X-Content-Type-Options") == "nosniff");
  }
  // Text goes into the page as text only (textContent), never parsed as markup.
  const std::string script = get(console, "/console/app.js").body;
  for (const char* sink : {"innerHTML", "outerHTML =", "insertAdjacentHTML", "document.write"}) {
    INFO(sink);
    CHECK(script.find(sink) == std::string::npos);
  }

  auto status = get(console, "/console/status.json");
  CHECK(status.status == 200);
  CHECK(json::parse(status.body) == json{{"store_id", "store-7"}, {"queue", {{"pending", 3}}}});
  CHECK(json::parse(get(console, "/console/history.json").body) == json{{"interval_s", 10}});
  CHECK(get(console, "/console/nothing").status == 404);
}

TEST_CASE("the console's event streams start with the recent events and are bounded in number",
          "[unit][console]") {
  Fake fake;
  ConsoleOptions options;
  options.max_streams = 2;
  Console console(fake.sources(), options);

  auto first = get(console, "/console/events");
  CHECK(first.status == 200);
  CHECK(first.content_type == "text/event-stream");
  REQUIRE(first.stream != nullptr);
  CHECK(first.body.find("event: recent\nid: 1\n") != std::string::npos);
  CHECK(first.body.find("id: 2\n") != std::string::npos);
  CHECK(first.body.find("LOY-SECRET-1") == std::string::npos);
  auto second = get(console, "/console/events");
  REQUIRE(second.stream != nullptr);
  CHECK(console.openStreams() == 2);

  auto third = get(console, "/console/events");
  CHECK(third.status == 503);
  CHECK(third.stream == nullptr);
  CHECK(header(third, "Retry-After") == "5");

  SECTION("a page that left frees its place") {
    first.stream.reset();  // the server lets a stream go when its client leaves
    CHECK(console.openStreams() == 1);
    CHECK(get(console, "/console/events").status == 200);
  }
}

}  // namespace
}  // namespace omniedge::console
