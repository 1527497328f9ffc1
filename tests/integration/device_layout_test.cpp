// The CLI on a store device: the daemon runs as its own unprivileged user (as
// systemd/omniedge.service runs it), the technician is root or a member of the service's group,
// and reading never changes the data dir. Needs root (setpriv, chown) and, for the device
// paths, a private mount namespace (unshare -m); skipped with a message otherwise.
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <tuple>

#include "tests/support/agent_process.h"
#include "tests/support/broker.h"
#include "tests/support/command.h"
#include "tests/support/net.h"
#include "tests/support/temp_dir.h"

using namespace std::chrono_literals;
using nlohmann::json;
using omniedge::testing::AgentProcess;
using omniedge::testing::CommandOutput;
using omniedge::testing::MosquittoBroker;
using omniedge::testing::readFile;
using omniedge::testing::RunAs;
using omniedge::testing::Subscriber;
using omniedge::testing::TempDir;

namespace fs = std::filesystem;

namespace {

// The service's user and group, and a technician in that group (no passwd entries needed).
constexpr unsigned kService = 6001;
constexpr unsigned kTechnician = 6002;
constexpr unsigned kStranger = 6003;

const RunAs kDaemonUser{kService, kService, {}, "027"};  // UMask=0027 as in the unit
const RunAs kTechnicianUser{kTechnician, kTechnician, {kService}, ""};

bool unshareWorks() {
  return omniedge::testing::runCommand({"/usr/bin/unshare", "-m", "/bin/true"}, {}, 10s)
             .exit_code == 0;
}

std::vector<std::string> lines(const std::string& text) {
  std::vector<std::string> out;
  std::size_t start = 0;
  for (std::size_t nl; (nl = text.find('\n', start)) != std::string::npos; start = nl + 1) {
    out.push_back(text.substr(start, nl - start));
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

// Every file of a directory: name -> size, mtime (ns), owner, group, mode.
using Snapshot = std::map<std::string, std::tuple<int64_t, int64_t, unsigned, unsigned, unsigned>>;
Snapshot snapshot(const fs::path& dir) {
  Snapshot s;
  const auto add = [&s](const fs::path& p, const std::string& name) {
    struct stat st {};
    if (lstat(p.c_str(), &st) == 0) {
      s[name] = {st.st_size, st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec, st.st_uid,
                 st.st_gid, st.st_mode};
    }
  };
  add(dir, ".");
  for (const auto& e : fs::directory_iterator(dir)) {
    add(e.path(), e.path().filename().string());
  }
  return s;
}

std::string describe(const Snapshot& s) {
  std::string out;
  for (const auto& [name, v] : s) {
    out += name + " size " + std::to_string(std::get<0>(v)) + " mtime " +
           std::to_string(std::get<1>(v)) + " uid " + std::to_string(std::get<2>(v)) + " gid " +
           std::to_string(std::get<3>(v)) + " mode " + std::to_string(std::get<4>(v)) + "\n";
  }
  return out;
}

// status, tail, export and doctor as `as` (root when empty): every one of `ids` must be seen.
void readEverything(const fs::path& data, const fs::path& out_dir, const std::string& who,
                    const std::optional<RunAs>& as, const std::set<std::string>& ids,
                    const std::vector<std::string>& wrap = {}) {
  const std::map<std::string, std::string> env = {{"OMNIEDGE_DATA_DIR", data.string()}};
  const auto run = [&](std::vector<std::string> args) {
    if (wrap.empty()) {
      return omniedge::testing::omniedge(args, env, as);
    }
    std::vector<std::string> argv = wrap;
    if (as) {
      const auto p = as->prefix();
      argv.insert(argv.end(), p.begin(), p.end());
    }
    argv.push_back(OMNIEDGE_BINARY);
    argv.insert(argv.end(), args.begin(), args.end());
    return omniedge::testing::runCommand(argv, env);
  };
  INFO("as " << who);
  auto status = run({"status", "--json"});
  INFO("status: " << status.out << status.err);
  REQUIRE(status.exit_code == 0);
  const auto s = json::parse(status.out);
  CHECK(s["daemon"] == "down");
  REQUIRE(s.contains("queue"));
  CHECK(s["queue"]["pending"].get<int64_t>() >= static_cast<int64_t>(ids.size()));
  CHECK(s["disk"]["unclean_shutdown"] == true);

  auto tail = run({"tail", "-n", "1000", "--json"});
  INFO("tail: " << tail.err);
  CHECK(tail.exit_code == 0);
  const auto tailed = idsIn(tail.out);
  for (const auto& id : ids) {
    CHECK(tailed.count(id) == 1);
  }

  const std::string file = (out_dir / ("export-" + who + ".jsonl")).string();
  auto exported = run({"export", "--out", file});
  INFO("export: " << exported.out << exported.err);
  CHECK(exported.exit_code == 0);
  const auto in_file = idsIn(readFile(file));
  for (const auto& id : ids) {
    CHECK(in_file.count(id) == 1);
  }

  auto doctor = run({"doctor"});
  INFO("doctor: " << doctor.out << doctor.err);
  CHECK_THAT(doctor.out, Catch::Contains("buffer integrity: quick_check ok"));
}

}  // namespace

TEST_CASE(
    "after a SIGKILL the CLI reads every event from the WAL, as root and as a read-only "
    "member of the service's group, changes no file, and the daemon then delivers all",
    "[integration][cli][fault]") {
  if (geteuid() != 0) {
    WARN("skipped: needs root to run the daemon and the technician as their own uids");
    return;
  }
  MosquittoBroker broker(false);
  TempDir tmp;
  fs::permissions(tmp.path(), fs::perms(0755));
  const fs::path data = tmp / "data";
  const fs::path out = tmp / "out";
  fs::create_directories(data);
  fs::create_directories(out);
  fs::permissions(out, fs::perms(0777));
  REQUIRE(chown(data.c_str(), kService, kService) == 0);
  fs::permissions(data, fs::perms(0750));

  AgentProcess agent(data, {{"OMNIEDGE_MQTT_URL", broker.url()},
                            {"OMNIEDGE_MQTT_RECONNECT_MIN", "1"},
                            {"OMNIEDGE_MQTT_RECONNECT_MAX", "2"}});
  agent.setLauncher(kDaemonUser.prefix());
  REQUIRE(agent.start());
  std::set<std::string> ids;
  for (const char* type : {"kiosk.view", "kiosk.tap", "kiosk.cart_view"}) {
    json a = json::array();
    for (int i = 0; i < 20; ++i) {
      a.push_back({{"type", type}, {"data", {{"n", i}}}});
    }
    auto [code, body] = agent.post("/v1/events", a.dump());
    REQUIRE(code == 202);
    // Named: a range-for over a member of a temporary reads freed memory (ASan).
    const json answer = json::parse(body);
    for (const auto& id : answer["ids"]) {
      ids.insert(id.get<std::string>());
    }
  }
  agent.kill9();
  // The crash left the events in the WAL: nothing checkpointed them into buffer.db.
  REQUIRE(fs::file_size(data / "buffer.db-wal") > 0);
  const Snapshot before = snapshot(data);
  for (const auto& [name, v] : before) {
    CHECK(std::get<2>(v) == kService);  // everything the daemon's own
  }

  readEverything(data, out, "root", std::nullopt, ids);
  readEverything(data, out, "technician", kTechnicianUser, ids);
  // And on a read-only mount of the data dir.
  if (!unshareWorks()) {
    WARN("read-only mount skipped: unshare -m is not permitted here");
  } else {
    const std::string ro =
        "d=$1; shift; mount --bind \"$d\" \"$d\" && mount -o remount,bind,ro \"$d\" && "
        "exec \"$@\"";
    const std::vector<std::string> wrap = {"/usr/bin/unshare", "-m", "/bin/sh", "-c", ro, "sh",
                                           data.string()};
    readEverything(data, out, "root-ro", std::nullopt, ids, wrap);
    readEverything(data, out, "technician-ro", kTechnicianUser, ids, wrap);
  }
  const Snapshot after = snapshot(data);
  INFO("before:\n" << describe(before) << "after:\n" << describe(after));
  CHECK(after == before);

  // The daemon, as its own user, starts on the same data dir and loses nothing.
  broker.start();
  Subscriber sub(broker.url(), "omniedge/v1/+/+/events");
  REQUIRE(agent.start());
  CHECK(omniedge::testing::waitForAllIds(sub, {ids.begin(), ids.end()}, 60s) == 0);
  CHECK(agent.stop() == 0);

  // After a clean stop there is no WAL: the file alone, read as immutable, still changes
  // nothing.
  const Snapshot clean = snapshot(data);
  CHECK(clean.count("buffer.db-wal") == 0);
  auto status = omniedge::testing::omniedge(
      {"status", "--json"}, {{"OMNIEDGE_DATA_DIR", data.string()}}, kTechnicianUser);
  REQUIRE(status.exit_code == 0);
  CHECK(json::parse(status.out)["buffer"]["read"] == "immutable");
  CHECK(snapshot(data) == clean);
}

TEST_CASE(
    "on a device, bare `omniedge status` finds the service's configuration, socket and "
    "buffer, and says where it looked when the daemon is down",
    "[integration][cli]") {
  if (geteuid() != 0) {
    WARN("skipped: needs root to mount the device layout and run the daemon as its own uid");
    return;
  }
  if (!unshareWorks()) {
    WARN("skipped: unshare -m is not permitted here (no private mount namespace)");
    return;
  }
  MosquittoBroker broker;
  TempDir tmp;
  fs::permissions(tmp.path(), fs::perms(0755));
  const int http_port = omniedge::testing::freePort();
  // /etc/omniedge (root's), /run/omniedge and /var/lib/omniedge (the service's), as systemd
  // and the package make them.
  tmp.write("etc/omniedge.conf", "[store]\nid = store-dev\n[mqtt]\nurl = " + broker.url() +
                                     "\n[http]\nlisten = 127.0.0.1:" + std::to_string(http_port) +
                                     "\n");
  fs::permissions(tmp / "etc" / "omniedge.conf", fs::perms(0644));
  for (const char* d : {"run", "state"}) {
    fs::create_directories(tmp / d);
    REQUIRE(chown((tmp / d).c_str(), kService, kService) == 0);
    fs::permissions(tmp / d, fs::perms(0750));
  }
  for (const char* d :
       {"upper/etc", "upper/run", "upper/varlib", "work/etc", "work/run", "work/varlib"}) {
    fs::create_directories(tmp / d);
  }
  const std::string bin = OMNIEDGE_BINARY;
  const std::string t = tmp.path().string();
  const std::string bare = "env -i PATH=/usr/bin:/bin HOME=/ " + bin;
  const std::string tech = "setpriv --reuid=6002 --regid=6002 --groups=6001 " + bare;
  const std::string stranger = "setpriv --reuid=6003 --regid=6003 --clear-groups " + bare;
  // Overlays make the mount points exist without touching the host's /etc, /run, /var/lib.
  const std::string script = R"(
set -u
T=")" + t + R"("
for d in etc:/etc run:/run varlib:/var/lib; do
  name=${d%%:*}; where=${d#*:}
  mount -t overlay overlay -o lowerdir=$where,upperdir=$T/upper/$name,workdir=$T/work/$name $where || exit 90
done
mkdir -p /etc/omniedge /run/omniedge /var/lib/omniedge
mount --bind $T/etc /etc/omniedge && mount --bind $T/run /run/omniedge &&
  mount --bind $T/state /var/lib/omniedge || exit 91
chown 6001:6001 /run/omniedge /var/lib/omniedge
# The daemon as systemd starts it: its own user, UMask=0027, STATE_ and RUNTIME_DIRECTORY.
setpriv --reuid=6001 --regid=6001 --clear-groups env -i PATH=/usr/bin:/bin \
  STATE_DIRECTORY=/var/lib/omniedge RUNTIME_DIRECTORY=/run/omniedge \
  sh -c 'umask 027 && exec ")" +
                             bin + R"(" run --config /etc/omniedge/omniedge.conf' \
  >$T/daemon.log 2>&1 &
daemon=$!
for i in $(seq 1 200); do [ -S /run/omniedge/omniedge.sock ] && break; sleep 0.1; done
echo "== technician-send"; )" +
                             tech + R"( send-test-event --timeout 30; echo "rc=$?"
echo "== root"; )" + bare + R"( status; echo "rc=$?"
echo "== technician"; )" + tech +
                             R"( status; echo "rc=$?"
echo "== stranger"; )" + stranger +
                             R"( status 2>&1; echo "rc=$?"
echo "== config"; )" + tech + R"( config show; echo "rc=$?"
kill -TERM $daemon; wait $daemon; echo "daemon exit $?"
echo "== down"; )" + bare + R"( status; echo "rc=$?"
echo "== down-technician"; )" +
                             tech + R"( status; echo "rc=$?"
echo "== down-flush"; )" + tech +
                             R"( flush 2>&1; echo "rc=$?"
echo "== files"; ls -ln /var/lib/omniedge
)";
  auto r = omniedge::testing::runCommand({"/usr/bin/unshare", "-m", "/bin/bash", "-c", script}, {},
                                         120s);
  INFO("output:\n"
       << r.out << "\nerrors:\n"
       << r.err << "\ndaemon log:\n"
       << readFile(tmp / "daemon.log"));
  REQUIRE(r.exit_code == 0);
  // Sections by their "== name" lines.
  std::map<std::string, std::string> part;
  std::string current;
  for (const auto& l : lines(r.out)) {
    if (l.rfind("== ", 0) == 0) {
      current = l.substr(3);
    } else {
      part[current] += l + "\n";
    }
  }
  for (const char* who : {"root", "technician"}) {
    INFO(who << ":\n" << part[who]);
    CHECK_THAT(part[who], Catch::Contains("daemon running"));
    CHECK_THAT(part[who], Catch::Contains("store-dev"));
    CHECK_THAT(part[who], Catch::Contains("in /var/lib/omniedge"));
    CHECK_THAT(part[who], Catch::Contains("mqtt connected"));
    CHECK_THAT(part[who], Catch::Contains("rc=0"));
  }
  CHECK_THAT(part["technician-send"], Catch::Contains("delivered"));
  CHECK_THAT(part["technician-send"], Catch::Contains("rc=0"));
  // Not in the group: told why, not a bare "connection refused".
  CHECK_THAT(part["stranger"], Catch::Contains("/run/omniedge/omniedge.sock: permission denied"));
  CHECK_THAT(part["stranger"], Catch::Contains("member of the service's group"));
  CHECK(part["stranger"].find("DOWN") == std::string::npos);
  CHECK_THAT(part["config"], Catch::Contains("# configuration /etc/omniedge/omniedge.conf"));
  CHECK_THAT(part["config"], Catch::Contains("store-dev"));
  CHECK_THAT(part["config"], Catch::Contains("/var/lib/omniedge"));
  CHECK_THAT(r.out, Catch::Contains("daemon exit 0"));
  for (const char* who : {"down", "down-technician"}) {
    INFO(who << ":\n" << part[who]);
    CHECK_THAT(part[who], Catch::Contains("daemon DOWN"));
    CHECK_THAT(part[who], Catch::Contains("/run/omniedge/omniedge.sock"));
    CHECK_THAT(part[who], Catch::Contains("/var/lib/omniedge/omniedge.sock"));
    CHECK_THAT(part[who], Catch::Contains("systemctl status omniedge"));
    CHECK_THAT(part[who], Catch::Contains("store-dev"));
    CHECK_THAT(part[who], Catch::Contains("rc=0"));
  }
  CHECK_THAT(part["down-flush"], Catch::Contains("not running"));
  CHECK_THAT(part["down-flush"], Catch::Contains("rc=3"));
  // Everything in the data dir is the service's, group-readable, nothing world-readable.
  for (const auto& l : lines(part["files"])) {
    if (l.rfind("total", 0) == 0 || l.empty()) {
      continue;
    }
    INFO(l);
    CHECK_THAT(l, Catch::Contains(" 6001 6001 "));
    CHECK(l[7] == '-');  // no read for others
  }
}
