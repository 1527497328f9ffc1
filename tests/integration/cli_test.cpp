// The technician's side through the real binary: every command's help and exit codes, the
// control socket under malformed and slow clients, and tail, import, export and status as a
// technician meets them.
#include <poll.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "tests/support/agent_process.h"
#include "tests/support/broker.h"
#include "tests/support/command.h"
#include "tests/support/temp_dir.h"

using namespace std::chrono_literals;
using nlohmann::json;
using omniedge::testing::AgentProcess;
using omniedge::testing::CommandOutput;
using omniedge::testing::MosquittoBroker;
using omniedge::testing::Subscriber;
using omniedge::testing::TempDir;

namespace {

constexpr const char* kEvents = "omniedge/v1/+/+/events";

std::map<std::string, std::string> envFor(const MosquittoBroker& broker) {
  return {{"OMNIEDGE_MQTT_URL", broker.url()},
          {"OMNIEDGE_MQTT_RECONNECT_MIN", "1"},
          {"OMNIEDGE_MQTT_RECONNECT_MAX", "2"}};
}

std::string eventsArray(int n, const std::string& type = "kiosk.view", std::size_t pad = 100) {
  json a = json::array();
  for (int i = 0; i < n; ++i) {
    a.push_back({{"type", type}, {"data", {{"n", i}, {"pad", std::string(pad, 'p')}}}});
  }
  return a.dump();
}

std::vector<std::string> acceptedIds(const std::string& body) {
  return json::parse(body)["ids"].get<std::vector<std::string>>();
}

std::vector<std::string> lines(const std::string& text) {
  std::vector<std::string> out;
  std::size_t start = 0;
  for (std::size_t nl; (nl = text.find('\n', start)) != std::string::npos; start = nl + 1) {
    out.push_back(text.substr(start, nl - start));
  }
  if (start < text.size()) {
    out.push_back(text.substr(start));
  }
  return out;
}

std::set<std::string> idsIn(const std::string& json_lines) {
  std::set<std::string> ids;
  for (const auto& l : lines(json_lines)) {
    auto j = json::parse(l, nullptr, false);
    if (j.is_object() && j.contains("id")) {
      ids.insert(j["id"].get<std::string>());
    }
  }
  return ids;
}

// Sends `bytes` as is on the control socket; returns the answer (up to EOF), "" when none
// came within `timeout`.
std::string rawRequest(const std::string& socket_path, const std::string& bytes,
                       bool close_write = true, std::chrono::milliseconds timeout = 10s) {
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", socket_path.c_str());
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return "(connect failed)";
  }
  std::size_t off = 0;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::string answer;
  while (off < bytes.size()) {
    pollfd p{fd, POLLOUT | POLLIN, 0};
    if (poll(&p, 1, 1000) <= 0) {
      break;
    }
    if ((p.revents & POLLIN) != 0) {
      break;  // answered before taking everything (a request too large)
    }
    const ssize_t n = send(fd, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
    if (n <= 0) {
      break;
    }
    off += static_cast<std::size_t>(n);
  }
  if (close_write) {
    shutdown(fd, SHUT_WR);
  }
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                          deadline - std::chrono::steady_clock::now())
                          .count();
    pollfd p{fd, POLLIN, 0};
    if (left <= 0 || poll(&p, 1, static_cast<int>(left)) <= 0) {
      break;
    }
    char buf[4096];
    const ssize_t n = read(fd, buf, sizeof(buf));
    if (n <= 0) {
      break;
    }
    answer.append(buf, static_cast<std::size_t>(n));
  }
  close(fd);
  return answer;
}

json answerOf(const std::string& raw) {
  auto j = json::parse(raw, nullptr, false);
  return j.is_discarded() ? json{{"unparsable", raw}} : j;
}

bool daemonAlive(const AgentProcess& agent) { return agent.running() && kill(agent.pid(), 0) == 0; }

}  // namespace

TEST_CASE("every command's --help lists its options and each error class has its exit code",
          "[integration][cli]") {
  TempDir tmp;
  const std::string data = (tmp / "data").string();
  const std::string out = (tmp / "out.jsonl").string();
  tmp.write("bad.conf", "[mqtt]\nurl = ftp://broker\n[bogus]\nkey = 1\n");
  tmp.write("events.jsonl", "{\"type\":\"kiosk.view\"}\n");
  const std::string bad = (tmp / "bad.conf").string();
  const std::string events = (tmp / "events.jsonl").string();
  const std::map<std::string, std::string> env = {{"OMNIEDGE_DATA_DIR", data}};

  struct Row {
    std::vector<std::string> args;
    int code;
    std::vector<std::string> says;  // each must appear in stdout (code 0) or stderr (else)
  };
  const std::vector<Row> rows = {
      // help, for every command
      {{"--help"}, 0, {"usage: omniedge <command>", "send-test-event", "Exit codes"}},
      {{"-h"}, 0, {"usage: omniedge <command>"}},
      {{"help"}, 0, {"usage: omniedge <command>"}},
      {{"help", "status"}, 0, {"usage: omniedge status", "--json"}},
      {{"help", "config", "show"}, 0, {"usage: omniedge config show", "--json"}},
      {{"run", "--help"}, 0, {"usage: omniedge run", "--config", "--mqtt.url"}},
      {{"status", "--help"}, 0, {"usage: omniedge status [--json]", "--json"}},
      {{"tail", "--help"}, 0, {"--lines", "--type", "--follow", "--json"}},
      {{"flush", "--help"}, 0, {"--wait"}},
      {{"export", "--help"}, 0, {"--out", "--since", "--until", "--pending-only", "--force"}},
      {{"import", "--help"}, 0, {"usage: omniedge import FILE", "blank lines"}},
      {{"send-test-event", "--help"}, 0, {"--type", "--timeout"}},
      {{"doctor", "--help"}, 0, {"--json", "quick_check"}},
      {{"config", "--help"}, 0, {"config show", "config validate FILE"}},
      {{"config", "show", "--help"}, 0, {"usage: omniedge config show", "--json"}},
      {{"config", "validate", "--help"}, 0, {"usage: omniedge config validate FILE"}},
      {{"version", "--help"}, 0, {"usage: omniedge version"}},
      {{"version"}, 0, {"omniedge ", "sqlite"}},
      // usage errors: 2
      {{}, 2, {"usage: omniedge <command>"}},
      {{"nosuch"}, 2, {"unknown command 'nosuch'"}},
      {{"help", "nosuch"}, 2, {"no command 'nosuch'"}},
      {{"status", "extra"}, 2, {"takes no arguments, got 'extra'"}},
      {{"version", "extra"}, 2, {"takes no arguments"}},
      {{"doctor", "--bogus"}, 2, {"unrecognised option '--bogus'"}},
      {{"tail", "-n", "-1"}, 2, {"-n/--lines must be 0 or more, got -1"}},
      {{"tail", "-n", "many"}, 2, {"'many'", "--lines"}},
      {{"flush", "--wait", "-3"}, 2, {"--wait SECONDS must be 0 or more, got -3"}},
      {{"send-test-event", "--timeout", "-1"}, 2, {"--timeout SECONDS must be 0 or more"}},
      {{"export"}, 2, {"--out FILE is required"}},
      {{"export", "--out", out, "--since", "yesterday"}, 2, {"'yesterday' is not an RFC 3339"}},
      {{"export", "--out", out, "--since", "2026-01-02T00:00:00Z", "--until",
        "2026-01-01T00:00:00Z"},
       2,
       {"--since 2026-01-02T00:00:00Z is not before --until 2026-01-01T00:00:00Z"}},
      {{"import"}, 2, {"missing argument", "usage: omniedge import FILE"}},
      {{"import", events, events}, 2, {"too many arguments"}},
      {{"config"}, 2, {"which one?"}},
      {{"config", "nosuch"}, 2, {"no subcommand 'nosuch'"}},
      {{"config", "validate"}, 2, {"missing argument"}},
      // a bad configuration: 78, naming the key, in every command that reads one
      {{"run", "--config", bad}, 78, {"mqtt.url", "bogus.key"}},
      {{"status", "--config", bad}, 78, {"mqtt.url", bad}},
      {{"tail", "--config", bad}, 78, {"mqtt.url"}},
      {{"flush", "--config", bad}, 78, {"mqtt.url"}},
      {{"export", "--out", out, "--config", bad}, 78, {"mqtt.url"}},
      {{"import", events, "--config", bad}, 78, {"mqtt.url"}},
      {{"send-test-event", "--config", bad}, 78, {"mqtt.url"}},
      {{"doctor", "--config", bad}, 78, {"mqtt.url"}},
      {{"config", "show", "--config", bad}, 78, {"mqtt.url"}},
      {{"config", "validate", bad}, 78, {"mqtt.url", "invalid"}},
      {{"status", "--config", (tmp / "missing.conf").string()}, 78, {"missing.conf"}},
      {{"status", "--buffer.max_bytes", "lots"}, 78, {"buffer.max_bytes", "lots"}},
      // the daemon needed and absent: 3, saying where it looked and what to try
      {{"flush"}, 3, {"not running", data + "/omniedge.sock", "systemctl status omniedge"}},
      {{"flush", "--wait", "1"}, 3, {"--config FILE"}},
      {{"send-test-event"}, 3, {"not running", "systemctl status omniedge"}},
  };
  for (const auto& row : rows) {
    std::string line;
    for (const auto& a : row.args) {
      line += " " + a;
    }
    auto r = omniedge::testing::omniedge(row.args, env);
    INFO("omniedge" << line << "\nstdout: " << r.out << "\nstderr: " << r.err);
    CHECK(r.exit_code == row.code);
    for (const auto& s : row.says) {
      CHECK_THAT(row.code == 0 ? r.out : r.err, Catch::Contains(s));
    }
  }
  // A bad value in the environment is a configuration error too.
  auto r = omniedge::testing::omniedge({"status"}, {{"OMNIEDGE_BUFFER_MAX_BYTES", "abc"}});
  CHECK(r.exit_code == 78);
  CHECK_THAT(r.err, Catch::Contains("OMNIEDGE_BUFFER_MAX_BYTES"));
}

TEST_CASE("send-test-event with a bad type is a usage error naming the type",
          "[integration][cli]") {
  MosquittoBroker broker(false);
  TempDir tmp;
  AgentProcess agent(tmp / "data", envFor(broker));
  REQUIRE(agent.start());
  auto r = agent.cli({"send-test-event", "--type", "BAD", "--timeout", "0"});
  INFO(r.out);
  CHECK(r.exit_code == 2);
  CHECK_THAT(r.out, Catch::Contains("--type 'BAD'"));
  CHECK_THAT(r.out, Catch::Contains("lower-case dotted words"));
}

TEST_CASE(
    "malformed control requests are answered with the field at fault and never stop the "
    "daemon",
    "[integration][cli]") {
  MosquittoBroker broker(false);
  TempDir tmp;
  AgentProcess agent(tmp / "data", envFor(broker));
  REQUIRE(agent.start());
  const std::string sock = (tmp / "data" / "omniedge.sock").string();

  struct Case {
    std::string request;
    std::string says;
  };
  const std::vector<Case> cases = {
      {R"({"cmd": 1})", "field 'cmd' must be a string"},
      {R"({"limit": 3})", "field 'cmd' must be a string"},
      {R"({"cmd":"tail","limit":"x"})",
       "field 'limit' must be an integer from 0 to 1000, got \"x\""},
      {R"({"cmd":"tail","limit":-1})", "field 'limit' must be an integer"},
      {R"({"cmd":"tail","limit":1e300})", "field 'limit' must be an integer"},
      {R"({"cmd":"tail","after_seq":1.5})", "field 'after_seq' must be an integer"},
      {R"({"cmd":"tail","type":7})", "field 'type' must be a string"},
      {R"({"cmd":"tail","lines":3})", "unknown field 'lines'"},
      {R"({"cmd":"status","x":null})", "unknown field 'x'"},
      {R"({"cmd":"import","events":"x"})", "field 'events' must be an array"},
      {R"({"cmd":"import","events":[1]})", "events[0]"},
      {R"({"cmd":"import","events":[{"type":5}]})", "type must be a string"},
      {R"({"cmd":"import","events":[],"dry_run":"yes"})", "field 'dry_run' must be true or false"},
      {R"({"cmd":"test_event","type":["a"]})", "field 'type' must be a string"},
      {R"({"cmd":"nope"})", "unknown command 'nope'"},
      {R"([1,2])", "must be a JSON object"},
      {R"("status")", "must be a JSON object"},
      {"{\"cmd\":\"st\xff\xfe\"}", "not JSON"},
      {std::string("\x00\x01\x02\xff binary", 12), "not JSON"},
      {"{\"cmd\":", "not JSON"},
      {std::string(100000, '['), "deeper than 72"},
  };
  for (const auto& c : cases) {
    const auto raw = rawRequest(sock, c.request + "\n");
    INFO("request: " << json(c.request).dump(-1, ' ', false, json::error_handler_t::replace)
                     << "\nanswer: " << raw);
    const auto a = answerOf(raw);
    CHECK(a.value("ok", true) == false);
    CHECK_THAT(a.value("error", std::string()), Catch::Contains(c.says));
    REQUIRE(daemonAlive(agent));
  }
  // No newline: the end of the connection ends the request.
  CHECK(answerOf(rawRequest(sock, R"({"cmd":"status"})"))["ok"] == true);
  // A line larger than the limit.
  const auto huge = answerOf(rawRequest(sock, std::string(2 << 20, ' ') + "\n"));
  CHECK_THAT(huge.value("error", std::string()), Catch::Contains("larger than 1 MiB"));
  // Nothing at all, connection held open: answered at the deadline, not kept forever.
  const auto silent = answerOf(rawRequest(sock, "", false));
  CHECK_THAT(silent.value("error", std::string()), Catch::Contains("request not complete"));
  REQUIRE(daemonAlive(agent));
  auto status = agent.cli({"status"});
  CHECK(status.exit_code == 0);
  CHECK_THAT(status.out, Catch::Contains("daemon running"));
}

TEST_CASE("clients that trickle bytes or say nothing cannot keep the technician out",
          "[integration][cli]") {
  MosquittoBroker broker(false);
  TempDir tmp;
  AgentProcess agent(tmp / "data", envFor(broker));
  REQUIRE(agent.start());
  const std::string sock = (tmp / "data" / "omniedge.sock").string();

  std::atomic<bool> stop{false};
  std::atomic<int> connections{0};
  std::vector<std::thread> tricklers;
  for (int i = 0; i < 40; ++i) {
    tricklers.emplace_back([&] {
      // Each reconnects as soon as it is answered or dropped, one byte every 20 ms.
      while (!stop.load()) {
        const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", sock.c_str());
        if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
          ++connections;
          // 16 bytes at one per 200 ms: longer than the daemon waits for a request.
          const std::string slow = R"({"cmd":"status"})";
          for (std::size_t k = 0; k < slow.size() && !stop.load(); ++k) {
            if (send(fd, &slow[k], 1, MSG_NOSIGNAL) != 1) {
              break;
            }
            std::this_thread::sleep_for(200ms);
          }
        }
        close(fd);
      }
    });
  }
  // Meanwhile the technician asks, again and again, and is always answered, until every
  // trickler has been cut off at least once and come back.
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  int asked = 0;
  while ((asked < 5 || connections.load() < 80) && std::chrono::steady_clock::now() < deadline) {
    auto r = agent.cli({"status", "--json"});
    INFO(r.out);
    REQUIRE(r.exit_code == 0);
    CHECK(json::parse(r.out)["daemon"] == "running");
    ++asked;
  }
  stop.store(true);
  for (auto& t : tricklers) {
    t.join();
  }
  CHECK(connections.load() >= 80);
  CHECK(daemonAlive(agent));

  // More silent connections than the daemon serves at once: the oldest give way.
  std::vector<int> idle;
  for (int i = 0; i < 100; ++i) {
    const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", sock.c_str());
    REQUIRE(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
    (void)!send(fd, "{", 1, MSG_NOSIGNAL);
    idle.push_back(fd);
  }
  auto r = agent.cli({"status", "--json"});
  INFO(r.out);
  CHECK(r.exit_code == 0);
  CHECK(json::parse(r.out)["daemon"] == "running");
  // Each idle client got an answer (busy, given way, or timed out), none hangs forever.
  for (const int fd : idle) {
    pollfd p{fd, POLLIN, 0};
    CHECK(poll(&p, 1, 10000) == 1);
    char buf[512] = {0};
    const ssize_t n = read(fd, buf, sizeof(buf) - 1);
    CHECK(n > 0);
    CHECK_THAT(std::string(buf), Catch::Contains("\"ok\":false"));
    close(fd);
  }
  CHECK(daemonAlive(agent));
}

TEST_CASE(
    "tail: -n 0 --follow prints only new events, columns align, and -n beyond the "
    "daemon's memory says so",
    "[integration][cli]") {
  MosquittoBroker broker(false);
  TempDir tmp;
  AgentProcess agent(tmp / "data", envFor(broker));
  REQUIRE(agent.start());
  REQUIRE(agent.post("/v1/events", eventsArray(3, "kiosk.view")).first == 202);
  REQUIRE(agent.post("/v1/events", eventsArray(2, "kiosk.cart_view")).first == 202);

  SECTION("columns are aligned to their widths") {
    auto r = agent.cli({"tail", "-n", "5"});
    REQUIRE(r.exit_code == 0);
    const auto rows = lines(r.out);
    REQUIRE(rows.size() == 5);
    // The id column (a UUID) starts at the same place on every line.
    const auto id_at = [](const std::string& row) { return row.find("-7"); };
    for (const auto& row : rows) {
      INFO(r.out);
      CHECK(id_at(row) == id_at(rows.front()));
    }
  }
  SECTION("more than the daemon keeps in memory") {
    auto r = omniedge::testing::omniedge({"tail", "-n", "5000", "--json"},
                                         {{"OMNIEDGE_DATA_DIR", agent.dataDir().string()}});
    CHECK(r.exit_code == 0);
    CHECK_THAT(r.err, Catch::Contains("more than the 1000 recent events the daemon keeps"));
    CHECK(lines(r.out).size() == 6);  // five posted and agent.started
  }
  SECTION("-n 0 --follow") {
    const std::set<std::string> before = idsIn(agent.cli({"tail", "-n", "100", "--json"}).out);
    REQUIRE(before.size() == 6);
    omniedge::testing::BackgroundCommand follow(
        {OMNIEDGE_BINARY, "tail", "-n", "0", "--follow", "--json"},
        {{"OMNIEDGE_DATA_DIR", agent.dataDir().string()}}, (tmp / "follow.out").string());
    // Post until tail shows something (it may not have looked yet), then two more.
    std::set<std::string> posted;
    std::set<std::string> seen;
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    while (seen.empty() && std::chrono::steady_clock::now() < deadline) {
      auto [status, body] = agent.post("/v1/events", eventsArray(1, "kiosk.tap"));
      REQUIRE(status == 202);
      posted.insert(acceptedIds(body).front());
      std::this_thread::sleep_for(100ms);
      seen = idsIn(follow.output());
    }
    auto [status, body] = agent.post("/v1/events", eventsArray(2, "kiosk.tap"));
    REQUIRE(status == 202);
    const auto last_two = acceptedIds(body);
    posted.insert(last_two.begin(), last_two.end());
    while ((seen.count(last_two[0]) == 0 || seen.count(last_two[1]) == 0) &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(50ms);
      seen = idsIn(follow.output());
    }
    follow.stop();
    INFO(follow.output());
    CHECK(seen.count(last_two[0]) == 1);
    CHECK(seen.count(last_two[1]) == 1);
    for (const auto& id : seen) {
      CHECK(posted.count(id) == 1);  // nothing from before tail started
      CHECK(before.count(id) == 0);
    }
  }
}

TEST_CASE(
    "import: blank lines skipped, a bad line named and nothing imported, with the daemon "
    "down as well as up",
    "[integration][cli]") {
  MosquittoBroker broker;
  Subscriber sub(broker.url(), kEvents);
  TempDir tmp;
  const auto data = tmp / "data";
  const std::map<std::string, std::string> env = {{"OMNIEDGE_DATA_DIR", data.string()},
                                                  {"OMNIEDGE_STORE_ID", "store-042"}};
  const std::string good =
      "{\"id\":\"imp-1\",\"type\":\"kiosk.view\",\"occurred_at\":\"2026-11-22T13:00:00Z\"}\n"
      "\n"
      "{\"id\":\"imp-2\",\"type\":\"pos.transaction\",\"data\":{\"total\":3}}\n"
      "   \n"
      "{\"id\":\"imp-3\",\"type\":\"kiosk.view\",\"customer\":{\"email\":\" Ann@Example.COM \"}}\n";
  tmp.write("good.jsonl", good);
  tmp.write("bad.jsonl", good + "{\"id\":\"imp-4\",\"type\":\"Not A Type\"}\n");
  tmp.write("shape.jsonl", good + "{\"id\":\"imp-5\",\"type\":\"kiosk.view\",\"customer\":7}\n");
  const auto count = [&] {
    const auto status = json::parse(omniedge::testing::omniedge({"status", "--json"}, env).out);
    return status.contains("queue") ? status["queue"].value("pending", int64_t{-1}) : 0;
  };

  // The daemon is down: straight into the buffer.
  auto bad = omniedge::testing::omniedge({"import", (tmp / "bad.jsonl").string()}, env);
  INFO(bad.out << bad.err);
  CHECK(bad.exit_code == 1);
  CHECK_THAT(bad.err, Catch::Contains("line 6 (type)"));
  CHECK_THAT(bad.err, Catch::Contains("nothing was imported"));
  CHECK(bad.out.find("imported") == std::string::npos);
  CHECK(count() == 0);
  tmp.write("deep.jsonl",
            good + "{\"type\":\"kiosk.view\",\"data\":{\"a\":" + std::string(100000, '[') + "\n");
  auto deep = omniedge::testing::omniedge({"import", (tmp / "deep.jsonl").string()}, env);
  CHECK(deep.exit_code == 1);
  CHECK_THAT(deep.err, Catch::Contains("line 6: nests deeper than 64 levels"));
  // A number beyond a double is the JSON library's out_of_range, not a parse_error: still an
  // answer naming the line, never an uncaught exception (found by tools/fuzz on the daemon).
  tmp.write("huge.jsonl", good + "{\"type\":\"kiosk.view\",\"data\":{\"n\":1e400}}\n");
  auto huge = omniedge::testing::omniedge({"import", (tmp / "huge.jsonl").string()}, env);
  CHECK(huge.exit_code == 1);
  CHECK_THAT(huge.err, Catch::Contains("line 6: not JSON") && Catch::Contains("1e400"));
  auto shape = omniedge::testing::omniedge({"import", (tmp / "shape.jsonl").string()}, env);
  CHECK(shape.exit_code == 1);
  CHECK_THAT(shape.err, Catch::Contains("line 6: customer must be an object"));

  auto ok = omniedge::testing::omniedge({"import", (tmp / "good.jsonl").string()}, env);
  INFO(ok.out << ok.err);
  REQUIRE(ok.exit_code == 0);
  CHECK_THAT(ok.out, Catch::Contains("imported 3 events"));
  CHECK_THAT(ok.out, Catch::Contains("3 new, 0 already present"));
  CHECK_THAT(ok.out, Catch::Contains("the daemon is not running"));
  CHECK_THAT(ok.out, Catch::Contains("2 blank lines skipped"));
  CHECK(count() == 3);
  auto again = omniedge::testing::omniedge({"import", (tmp / "good.jsonl").string()}, env);
  CHECK_THAT(again.out, Catch::Contains("0 new, 3 already present"));
  // Events without an id get one the agent makes (stored without an index entry); read back
  // from an export while they are still pending, they are recognised all the same.
  tmp.write("noid.jsonl", "{\"type\":\"kiosk.view\"}\n{\"type\":\"kiosk.search\"}\n");
  auto noid = omniedge::testing::omniedge({"import", (tmp / "noid.jsonl").string()}, env);
  CHECK_THAT(noid.out, Catch::Contains("2 new, 0 already present"));
  {
    auto r = omniedge::testing::omniedge({"export", "--out", (tmp / "all.jsonl").string()}, env);
    REQUIRE(r.exit_code == 0);
    auto back = omniedge::testing::omniedge({"import", (tmp / "all.jsonl").string()}, env);
    INFO(back.out << back.err);
    CHECK_THAT(back.out, Catch::Contains("0 new, 5 already present"));
  }
  CHECK(count() == 5);
  // The raw e-mail address was hashed on the way in, as the daemon would have.
  {
    std::ifstream in(data / "buffer.db", std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    CHECK(ss.str().find("Ann@Example") == std::string::npos);
  }
  // The file packs bodies, so raw bytes alone cannot show it: the events as export reads them.
  {
    const auto exported = tmp / "imported.jsonl";
    auto r = omniedge::testing::omniedge({"export", "--out", exported.string()}, env);
    INFO(r.out << r.err);
    REQUIRE(r.exit_code == 0);
    const std::string text = tmp.read("imported.jsonl");
    CHECK(text.find("\"id\":\"imp-3\"") != std::string::npos);
    CHECK(text.find("Ann@Example") == std::string::npos);
    CHECK(text.find("ann@example") == std::string::npos);
    CHECK(text.find("email_sha256") != std::string::npos);
  }

  // The daemon comes up and delivers what was imported while it was down.
  AgentProcess agent(data, envFor(broker));
  REQUIRE(agent.start());
  CHECK(omniedge::testing::waitForAllIds(sub, {"imp-1", "imp-2", "imp-3"}, 30s) == 0);

  // Through the daemon: the same checks, the same messages.
  auto bad_up = agent.cli({"import", (tmp / "bad.jsonl").string()});
  CHECK(bad_up.exit_code == 1);
  CHECK_THAT(bad_up.out, Catch::Contains("line 6 (type)"));
  tmp.write("more.jsonl", "{\"id\":\"imp-9\",\"type\":\"kiosk.view\"}\n");
  auto up = agent.cli({"import", (tmp / "more.jsonl").string()});
  CHECK(up.exit_code == 0);
  CHECK_THAT(up.out, Catch::Contains("through the daemon: 1 new"));
  CHECK(omniedge::testing::waitForAllIds(sub, {"imp-9"}, 30s) == 0);
}

TEST_CASE("export and tail read packed bodies, and skip and name one that no longer unpacks",
          "[integration][cli]") {
  MosquittoBroker broker(false);  // nothing is delivered: every event stays in the buffer
  TempDir tmp;
  AgentProcess agent(tmp / "data", envFor(broker));
  REQUIRE(agent.start());
  for (int i = 0; i < 3; ++i) {
    json e =
        json::array({{{"type", "kiosk.search"},
                      {"data", {{"n", i}, {"query", "gift card pickup locker store hours"}}}}});
    REQUIRE(agent.post("/v1/events", e.dump()).first == 202);
  }
  REQUIRE(agent.stop() == 0);

  // The second search's body, damaged under SQLite: still a BLOB, no longer a whole frame.
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open((tmp / "data" / "buffer.db").c_str(), &db) == SQLITE_OK);
  CHECK(sqlite3_exec(db,
                     "UPDATE events SET body = CAST(substr(body, 1, 30) AS BLOB) WHERE seq = "
                     "(SELECT seq FROM events WHERE type = 'kiosk.search' AND typeof(body) = "
                     "'blob' ORDER BY seq LIMIT 1 OFFSET 1)",
                     nullptr, nullptr, nullptr) == SQLITE_OK);
  CHECK(sqlite3_changes(db) == 1);
  sqlite3_close(db);

  const std::string out = (tmp / "out.jsonl").string();
  auto r = agent.cli({"export", "--out", out});
  INFO(r.out);
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.out, Catch::Contains("skipped: a packed body does not unpack"));
  int searches = 0;
  for (const auto& line : lines(tmp.read("out.jsonl"))) {
    const auto e = json::parse(line);  // every line the JSON it was, unpacked
    if (e["type"] == "kiosk.search") {
      CHECK(e["data"]["query"] == "gift card pickup locker store hours");
      CHECK(e["data"]["n"] != 1);
      ++searches;
    }
  }
  CHECK(searches == 2);

  auto tail = agent.cli({"tail", "-n", "10"});
  INFO(tail.out);
  CHECK_THAT(tail.out, Catch::Contains("gift card pickup locker store hours"));
}

TEST_CASE("export keeps an existing file unless --force and says why it wrote nothing",
          "[integration][cli]") {
  MosquittoBroker broker;
  TempDir tmp;
  AgentProcess agent(tmp / "data", envFor(broker));
  REQUIRE(agent.start());
  REQUIRE(agent.post("/v1/events", eventsArray(4)).first == 202);
  REQUIRE(agent.cli({"flush", "--wait", "30"}).exit_code == 0);

  const std::string out = (tmp / "out.jsonl").string();
  auto empty = agent.cli({"export", "--out", out});
  INFO(empty.out);
  CHECK(empty.exit_code == 0);
  CHECK_THAT(empty.out, Catch::Contains("exported 0 events"));
  CHECK_THAT(empty.out, Catch::Contains("buffer.retain_delivered = 0"));

  tmp.write("out.jsonl", "precious\n");
  auto refused = agent.cli({"export", "--out", out});
  CHECK(refused.exit_code == 1);
  CHECK_THAT(refused.out, Catch::Contains("add --force"));
  CHECK(tmp.read("out.jsonl") == "precious\n");

  broker.stop();
  REQUIRE(agent.post("/v1/events", eventsArray(2)).first == 202);
  auto forced = agent.cli({"export", "--out", out, "--force"});
  CHECK(forced.exit_code == 0);
  CHECK_THAT(forced.out, Catch::Contains("exported 2 events"));
  CHECK(lines(tmp.read("out.jsonl")).size() == 2);
}

TEST_CASE("status text: IEC sizes, ages, the WAL, a full buffer, and where it looked when down",
          "[integration][cli]") {
  MosquittoBroker broker(false);
  TempDir tmp;
  auto env = envFor(broker);
  env["OMNIEDGE_BUFFER_MAX_BYTES"] = "1MiB";
  env["OMNIEDGE_BUFFER_MIN_FREE_DISK"] = "0";
  AgentProcess agent(tmp / "data", env);
  REQUIRE(agent.start());
  // Fill the buffer with kiosk events (never evicted) until the agent pushes back. Random text,
  // so that the buffer's packing cannot shrink them to nothing.
  uint64_t x = 88172645463325252ULL;
  const auto noisy = [&] {
    json a = json::array();
    for (int e = 0; e < 20; ++e) {
      std::string pad(8000, ' ');
      for (auto& c : pad) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"[x % 62];
      }
      a.push_back({{"type", "kiosk.view"}, {"data", {{"n", e}, {"pad", pad}}}});
    }
    return a.dump();
  };
  int status = 202;
  for (int i = 0; i < 200 && status == 202; ++i) {
    status = agent.post("/v1/events", noisy()).first;
  }
  REQUIRE(status == 503);
  auto up = agent.cli({"status"});
  INFO(up.out);
  CHECK(up.exit_code == 0);
  CHECK_THAT(up.out, Catch::Contains("daemon running"));
  CHECK_THAT(up.out, Catch::Contains("mqtt DISCONNECTED for"));
  CHECK_THAT(up.out, Catch::Contains("oldest pending"));
  CHECK_THAT(up.out, Catch::Contains(" KiB") || Catch::Contains(" MiB"));
  CHECK_THAT(up.out, Catch::Contains("of 1.0 MiB allowed"));
  CHECK_THAT(up.out, Catch::Contains("FULL for "));
  CHECK_THAT(up.out, Catch::Contains("new POS and kiosk events are refused"));
  CHECK_THAT(up.out, Catch::Contains("appends refused"));
  CHECK(up.out.find(" MB") == std::string::npos);
  CHECK(up.out.find(" KB") == std::string::npos);
  CHECK(up.out.find("T0") == std::string::npos);  // ages, not raw timestamps

  agent.kill9();
  auto down = agent.cli({"status"});
  INFO(down.out);
  CHECK(down.exit_code == 0);
  CHECK_THAT(down.out, Catch::Contains("daemon DOWN"));
  CHECK_THAT(down.out, Catch::Contains((tmp / "data" / "omniedge.sock").string()));
  CHECK_THAT(down.out, Catch::Contains("systemctl status omniedge"));
  CHECK_THAT(down.out, Catch::Contains("unclean shutdown"));
  CHECK_THAT(down.out, Catch::Contains("WAL"));
}
