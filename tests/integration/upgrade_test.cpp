// Upgrades as a technician meets them: the real binary on a data dir an older omniedge left
// (tests/fixtures/schema/) delivers what was pending, and on a file a newer omniedge wrote it
// refuses to start, says why, and leaves the file as it was.
#include <catch2/catch.hpp>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "agent/store/schema.h"
#include "tests/support/agent_process.h"
#include "tests/support/broker.h"
#include "tests/support/temp_dir.h"

using namespace std::chrono_literals;
using nlohmann::json;
using omniedge::testing::AgentProcess;
using omniedge::testing::MosquittoBroker;
using omniedge::testing::Subscriber;
using omniedge::testing::TempDir;
namespace fs = std::filesystem;

namespace {

const fs::path kFixtures = fs::path(OMNIEDGE_SOURCE_DIR) / "tests/fixtures/schema";

void copyFixture(const std::string& name, const fs::path& to) {
  fs::create_directories(to.parent_path());
  fs::copy_file(kFixtures / name, to, fs::copy_options::overwrite_existing);
  fs::permissions(to, fs::perms::owner_read | fs::perms::owner_write, fs::perm_options::add);
}

std::string bytesOf(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// SQLite's header keeps user_version big-endian at offset 60: a newer omniedge's file, made
// without opening it through SQLite.
void stampVersion(const fs::path& file, uint32_t version) {
  std::fstream f(file, std::ios::binary | std::ios::in | std::ios::out);
  REQUIRE(f.good());
  f.seekp(60);
  const char be[4] = {static_cast<char>(version >> 24), static_cast<char>(version >> 16),
                      static_cast<char>(version >> 8), static_cast<char>(version)};
  f.write(be, 4);
}

uint32_t headerVersion(const fs::path& file) {
  const std::string b = bytesOf(file);
  REQUIRE(b.size() >= 64);
  const auto* u = reinterpret_cast<const unsigned char*>(b.data());
  return (uint32_t{u[60]} << 24) | (uint32_t{u[61]} << 16) | (uint32_t{u[62]} << 8) | u[63];
}

}  // namespace

TEST_CASE(
    "the daemon on a buffer a newer omniedge wrote exits 78 with the reason and changes "
    "nothing",
    "[integration][schema]") {
  TempDir tmp;
  const fs::path data = tmp / "data";
  copyFixture("buffer-ac89e2e.db", data / "buffer.db");
  stampVersion(data / "buffer.db", 7);
  const std::string before = bytesOf(data / "buffer.db");
  AgentProcess agent(data, {});

  auto run = agent.cli({"run"});
  CHECK(run.exit_code == 78);
  const std::string said =
      (data / "buffer.db").string() + " has schema version 7, but this omniedge (";
  CHECK_THAT(run.out, Catch::Contains(said));
  CHECK_THAT(run.out, Catch::Contains("written by a newer omniedge. It was not changed"));
  CHECK(bytesOf(data / "buffer.db") == before);
  CHECK(!fs::exists(data / "buffer.db-wal"));
  CHECK(!fs::exists(data / "buffer.db-journal"));
  CHECK(!fs::exists(data / "buffer.lock"));
  // Nothing else was made or upgraded either.
  CHECK(!fs::exists(data / "profiles.db"));
  CHECK(!fs::exists(data / "inbox.db"));

  // The technician's view says the same, with the daemon down.
  auto status = agent.cli({"status", "--json"});
  const json doc = json::parse(status.out, nullptr, false);
  REQUIRE(doc.is_object());
  CHECK_THAT(doc["buffer"].value("error", ""), Catch::Contains(said));
  CHECK(bytesOf(data / "buffer.db") == before);
}

TEST_CASE("the daemon started on the first buffer layout delivers the events it left pending",
          "[integration][schema]") {
  MosquittoBroker broker;
  Subscriber sub(broker.url(), "omniedge/v1/#");
  TempDir tmp;
  const fs::path data = tmp / "data";
  copyFixture("buffer-7bdb017.db", data / "buffer.db");
  AgentProcess agent(data, {{"OMNIEDGE_MQTT_URL", broker.url()},
                            {"OMNIEDGE_MQTT_RECONNECT_MIN", "1"},
                            {"OMNIEDGE_MQTT_RECONNECT_MAX", "2"}});

  // Before the daemon runs, status reads the old layout as it is: three pending.
  auto status = agent.cli({"status", "--json"});
  const json doc = json::parse(status.out, nullptr, false);
  REQUIRE(doc.is_object());
  CHECK(doc["queue"].value("pending", -1) == 3);

  REQUIRE(agent.start());
  CHECK(omniedge::testing::waitForAllIds(
            sub,
            {"0189a000-0000-7000-8000-000000000003", "0189a000-0000-7000-8000-000000000004",
             "0189a000-0000-7000-8000-000000000005"},
            60s) == 0);
  CHECK(agent.stop() == 0);
  CHECK_THAT(agent.log(), Catch::Contains("upgraded from schema version 0 to " +
                                          std::to_string(omniedge::store::schema::kBuffer)));
}

TEST_CASE(
    "a newer profiles.db stops the start before the older buffer is upgraded, and doctor "
    "names it",
    "[integration][schema]") {
  TempDir tmp;
  const fs::path data = tmp / "data";
  copyFixture("buffer-865295e.db", data / "buffer.db");
  copyFixture("profiles-4f1a2ed.db", data / "profiles.db");
  stampVersion(data / "profiles.db", 5);
  const std::string buffer_before = bytesOf(data / "buffer.db");
  const std::string profiles_before = bytesOf(data / "profiles.db");
  AgentProcess agent(data, {});

  auto run = agent.cli({"run"});
  CHECK(run.exit_code == 78);
  const std::string said =
      (data / "profiles.db").string() + " has schema version 5, but this omniedge (";
  CHECK_THAT(run.out, Catch::Contains(said));
  CHECK(bytesOf(data / "buffer.db") == buffer_before);  // still version 0, not upgraded
  CHECK(headerVersion(data / "buffer.db") == 0);
  CHECK(bytesOf(data / "profiles.db") == profiles_before);

  auto doctor = agent.cli({"doctor"});
  CHECK(doctor.exit_code != 0);
  CHECK_THAT(doctor.out, Catch::Contains("schema versions: " + said));
}
