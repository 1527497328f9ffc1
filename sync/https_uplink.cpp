#include "sync/https_uplink.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <utility>

#include "agent/api/thread_name.h"

namespace omniedge::sync {
namespace {

using std::chrono::milliseconds;
using std::chrono::steady_clock;

constexpr milliseconds kIdleWait{200};
constexpr int kMaxSkips = 64;
constexpr std::size_t kMaxPageBytes = 32u << 20;
constexpr int kMaxPagesPerRun = 1000;
constexpr int kMaxDoublings = 30;

int64_t nowMs() {
  return std::chrono::duration_cast<milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

enum class Answer { kDelivered, kRetry, kLinkRefused, kBatchRefused };

Answer classify(long status) {  // NOLINT(runtime/int)
  if ((status >= 200 && status < 300) || status == 409) {
    return Answer::kDelivered;
  }
  switch (status) {
    case 408:
    case 425:
    case 429:
      return Answer::kRetry;
    case 401:
    case 403:
    case 404:
    case 405:
    case 407:
    case 421:
    case 426:
      return Answer::kLinkRefused;
    default:
      break;
  }
  if (status >= 400 && status < 500) {
    return Answer::kBatchRefused;
  }
  return Answer::kRetry;  // 5xx, and anything unexpected (1xx, 3xx: no redirects followed)
}

// The centre's own words, when it gave any: {"error": {"message": "...", "field": "..."}}.
std::string serverMessage(const std::string& body) {
  auto j = nlohmann::json::parse(body, nullptr, false);
  if (j.is_object() && j.contains("error") && j["error"].is_object()) {
    const auto& e = j["error"];
    std::string m = e.value("message", "");
    if (e.contains("field") && e["field"].is_string() && !e["field"].get<std::string>().empty()) {
      m += " (field " + e["field"].get<std::string>() + ")";
    }
    if (!m.empty()) {
      return m;
    }
  }
  std::string text = body.substr(0, 200);
  std::replace(text.begin(), text.end(), '\n', ' ');
  return text;
}

}  // namespace

HttpsUplink::HttpsUplink(Outbox& outbox, HttpsOptions options, std::shared_ptr<ClaimBook> claims,
                         std::shared_ptr<RateLimit> rate, ProfilesHandler on_profiles)
    : outbox_(outbox),
      options_(std::move(options)),
      claims_(std::move(claims)),
      rate_(std::move(rate)),
      on_profiles_(std::move(on_profiles)),
      events_path_("/v1/stores/" + HttpsClient::escape(options_.store_id) + "/events:batch"),
      profiles_path_("/v1/stores/" + HttpsClient::escape(options_.store_id) + "/profiles") {
  status_.base_url = options_.client.base_url;
}

HttpsUplink::~HttpsUplink() { stop(); }

void HttpsUplink::start() {
  if (thread_.joinable()) {
    return;
  }
  thread_ = std::jthread([this](std::stop_token stop) {
    nameThisThread("oe-https");
    run(stop);
  });
}

void HttpsUplink::stop() {
  if (!thread_.joinable()) {
    return;
  }
  thread_.request_stop();
  thread_.join();
}

void HttpsUplink::flushNow() {
  {
    std::lock_guard lock(mu_);
    flush_ = true;
  }
  cv_.notify_all();
}

void HttpsUplink::noteProfileCursor(std::string cursor) {
  std::lock_guard lock(mu_);
  mqtt_cursor_ = std::move(cursor);
}

void HttpsUplink::requestProfileResync() {
  {
    std::lock_guard lock(mu_);
    resync_requested_ = true;
    flush_ = true;
  }
  {
    std::lock_guard lock(status_mu_);
    status_.profiles_pending = true;
  }
  cv_.notify_all();
}

HttpsStatus HttpsUplink::status() const {
  std::lock_guard lock(status_mu_);
  return status_;
}

void HttpsUplink::run(std::stop_token stop) {
  setState("idle");
  auto client = HttpsClient::create(options_.client);
  if (!client) {
    setState("unavailable");
    setError(client.error().message);
    spdlog::error("https: {}", client.error().message);
    return;
  }
  client_ = std::move(*client);
  spdlog::info("https: uplink to {} ready ({})", options_.client.base_url,
               HttpsClient::libraryVersion());
  loadCursor();
  while (!stop.stop_requested()) {
    const int64_t now = nowMs();
    if (const uint64_t g = claims_->generation(); g != generation_) {
      generation_ = g;
      cursor_ = 0;  // seqs came back to the pool: read from the head again
    }
    if (steady_clock::now() < backoff_until_) {
      dropFloor();
      waitSignal(stop, std::min(kIdleWait, std::chrono::duration_cast<milliseconds>(
                                               backoff_until_ - steady_clock::now())));
      continue;
    }
    trackMqtt(now);
    bool profiles = false;
    std::optional<std::string> pushed;
    {
      std::lock_guard lock(mu_);
      profiles = !options_.cursor_file.empty() && (resync_requested_ || profiles_due_);
      pushed.swap(mqtt_cursor_);
    }
    // R/profiles moved the centre's cursor on: a later snapshot asks only for what came after.
    // Not in the middle of a snapshot run, whose own pages say where it is.
    if (pushed && !options_.cursor_file.empty() && profiles_complete_ && !profiles &&
        *pushed != profile_cursor_ && saveCursor(*pushed, true)) {
      profile_cursor_ = *pushed;
      std::lock_guard lock(status_mu_);
      status_.profiles_cursor = profile_cursor_;
    }
    if (profiles) {
      fetchProfiles(stop);
      continue;
    }
    const Mode mode = decide(now);
    if (mode == Mode::kIdle) {
      dropFloor();
      setState("idle");
      waitSignal(stop, kIdleWait);
      continue;
    }
    setState(mode == Mode::kBackfill ? "backfill" : "failover");
    if (const int64_t wait = rate_->waitMs(); wait > 0) {
      waitSignal(stop, std::min(milliseconds(wait), kIdleWait));
      continue;
    }
    if (!sendNext(mode, stop)) {
      (void)outbox_.waitForNewer(cursor_, static_cast<int>(kIdleWait.count()));
    }
  }
  dropFloor();
  claims_->releaseAll(Uplink::kHttps);
  setState("stopped");
}

HttpsUplink::Mode HttpsUplink::decide(int64_t now_ms) {
  if (!claims_->mqttUp()) {
    round_active_ = false;
    // A moment's grace at start and after a loss: MQTT usually connects within it.
    return now_ms - claims_->mqttChangedMs() >= options_.failover_after_ms ? Mode::kFailover
                                                                           : Mode::kIdle;
  }
  if (round_active_) {
    return Mode::kBackfill;
  }
  if (newBacklog()) {
    startRound();
    return Mode::kBackfill;
  }
  return Mode::kIdle;
}

bool HttpsUplink::newBacklog() {
  const int64_t pending = options_.pending_count ? options_.pending_count() : 0;
  if (pending <= options_.backfill_threshold) {
    return false;
  }
  // Over the threshold with nothing below the next floor that the last round did not take:
  // the rest is the newest threshold's worth, MQTT's (a round now would only spin).
  const int64_t newest = outbox_.waitForNewer(std::numeric_limits<int64_t>::max(), 0);
  return newest - options_.backfill_threshold > done_floor_;
}

void HttpsUplink::startRound() {
  // The backlog HTTPS takes from the head is what exceeds the threshold; MQTT sends the newest
  // threshold's worth and what comes after (sync/claims.h). Over the threshold, the head is
  // below this floor.
  const int64_t newest = outbox_.waitForNewer(std::numeric_limits<int64_t>::max(), 0);
  floor_ = std::max<int64_t>(0, newest - options_.backfill_threshold);
  done_floor_ = floor_;
  claims_->setFloor(floor_);
  round_active_ = true;
  cursor_ = 0;
  std::lock_guard lock(status_mu_);
  status_.floor_seq = floor_;
}

void HttpsUplink::dropFloor() {
  round_active_ = false;
  if (floor_ != 0) {
    floor_ = 0;
    claims_->setFloor(0);
    std::lock_guard lock(status_mu_);
    status_.floor_seq = 0;
  }
}

bool HttpsUplink::sendNext(Mode mode, std::stop_token stop) {
  const int64_t limit = mode == Mode::kBackfill ? floor_ : std::numeric_limits<int64_t>::max();
  for (int skips = 0; skips < kMaxSkips; ++skips) {
    auto events = outbox_.readPending(cursor_, options_.batch_max_events, options_.batch_max_bytes);
    if (!events) {
      fail("read outbox: " + events.error().message, -1);
      return true;
    }
    events->erase(std::find_if(events->begin(), events->end(),
                               [&](const PendingEvent& e) { return e.seq > limit; }),
                  events->end());
    if (events->empty()) {
      if (mode == Mode::kBackfill) {
        // The round's backlog is taken: another round if it is still over the threshold.
        if (newBacklog()) {
          startRound();
          return true;
        }
        dropFloor();
      }
      return false;
    }
    const int64_t first = events->front().seq;
    const auto grant = claims_->claim(Uplink::kHttps, first, events->back().seq);
    if (!grant.granted) {
      cursor_ = grant.last;  // in flight on MQTT: not ours
      continue;
    }
    events->erase(std::find_if(events->begin(), events->end(),
                               [&](const PendingEvent& e) { return e.seq > grant.last; }),
                  events->end());
    return post(first, *events, stop);
  }
  return true;
}

bool HttpsUplink::post(int64_t first, std::vector<PendingEvent>& events, std::stop_token stop) {
  auto batch = buildBatch(events, options_.store_id, options_.agent_version, Compression::kGzip,
                          options_.space);
  if (!batch) {
    claims_->release(Uplink::kHttps, first);
    fail("build batch: " + batch.error().message, -1);
    return true;
  }
  const int64_t last = batch->last_seq;
  const std::size_t count = batch->count;
  rate_->spend(static_cast<int64_t>(batch->payload.size()));
  ++request_no_;
  {
    std::lock_guard lock(status_mu_);
    ++status_.requests;
    status_.bytes_sent += batch->payload.size();
  }
  const auto sent_at = std::chrono::steady_clock::now();
  auto answer = client_->post(events_path_, batch->payload, "gzip", stop);
  if (!answer) {
    claims_->release(Uplink::kHttps, first);
    cursor_ = 0;
    if (answer.error().code != "stopping") {
      fail(answer.error().message, -1);
    }
    return true;
  }
  {
    std::lock_guard lock(status_mu_);
    status_.last_status_code = answer->status;
  }
  const std::string url = options_.client.base_url + events_path_;
  switch (classify(answer->status)) {
    case Answer::kDelivered:
      if (options_.metrics) {
        ChannelTally channels;
        for (const PendingEvent& e : events) {
          channels.add(channelOfBody(e.body));
        }
        options_.metrics->delivered(channels);
        options_.metrics->batchLatency(Link::kHttps)
            .observe(std::chrono::steady_clock::now() - sent_at);
      }
      onDelivered(last, count, answer->status);  // status first: it is what tests read
      outbox_.acknowledge(first, last);
      claims_->done(Uplink::kHttps, first);
      break;
    case Answer::kBatchRefused:
      claims_->done(Uplink::kHttps, first);
      onRefused(first, last, count,
                "the centre refused it: HTTP " + std::to_string(answer->status) + " " +
                    serverMessage(answer->body));
      break;
    case Answer::kLinkRefused:
      claims_->release(Uplink::kHttps, first);
      cursor_ = 0;
      fail("the centre at " + url + " answered HTTP " + std::to_string(answer->status) + " (" +
               serverMessage(answer->body) + ")" +
               (answer->status == 404 || answer->status == 405
                    ? ": check https.base_url"
                    : ": it does not accept this agent; check the client certificate "
                      "(https.cert_file: its CN must be the store id if the centre checks it) "
                      "and store.id"),
           answer->retry_after_s);
      break;
    case Answer::kRetry:
      claims_->release(Uplink::kHttps, first);
      cursor_ = 0;
      fail("the centre at " + url + " answered HTTP " + std::to_string(answer->status) + " (" +
               serverMessage(answer->body) + "); retrying with backoff",
           answer->retry_after_s);
      break;
  }
  return true;
}

void HttpsUplink::onDelivered(int64_t last, std::size_t count,
                              long status) {  // NOLINT(runtime/int)
  cursor_ = std::max(cursor_, last);
  attempt_ = 0;
  std::lock_guard lock(status_mu_);
  ++status_.batches;
  status_.events += count;
  if (status == 409) {
    ++status_.batches_conflict;
  }
  if (!status_.last_error.empty()) {
    if (!status_.last_error_resolved) {
      ++status_.recoveries;
    }
    status_.last_error_resolved = true;
  }
}

void HttpsUplink::onRefused(int64_t first, int64_t last, std::size_t count,
                            const std::string& reason) {
  // Contract §6: the batch goes to the quarantine table, kept and reported upstream with its
  // ranges (agent.data_quarantined), listed by `status`, sent again by `retry-quarantine`. The
  // next batches go on: one bad batch never stops the rest.
  spdlog::error("https: batch of {} events (seq {}-{}) quarantined: {}", count, first, last,
                reason);
  outbox_.quarantine(first, last, reason);
  cursor_ = std::max(cursor_, last);
  std::lock_guard lock(status_mu_);
  ++status_.batches_refused;
  status_.quarantined += count;
  status_.last_error = "the centre at " + options_.client.base_url + events_path_ + " refused " +
                       std::to_string(count) + " events (seq " + std::to_string(first) + "-" +
                       std::to_string(last) + "), moved to the quarantine: " + reason +
                       "; `omniedge retry-quarantine` sends them again";
  status_.last_error_ms = nowMs();
  status_.last_error_resolved = false;
}

void HttpsUplink::fail(const std::string& error, int64_t retry_after_s) {
  const int64_t min_ms = std::max(1, options_.retry_min_ms);
  const int64_t max_ms = std::max<int64_t>(min_ms, options_.retry_max_ms);
  int64_t cap = min_ms;
  for (int i = 0; i < attempt_ && cap < max_ms; ++i) {
    cap *= 2;
  }
  cap = std::min(cap, max_ms);
  attempt_ = std::min(attempt_ + 1, kMaxDoublings);
  int64_t delay = std::uniform_int_distribution<int64_t>(0, cap)(rng_);
  if (retry_after_s >= 0) {
    delay = std::min(retry_after_s * 1000, max_ms);  // the centre says when
  }
  backoff_until_ = steady_clock::now() + milliseconds(delay);
  dropFloor();
  setError(error);
  setState("backoff");
  {
    std::lock_guard lock(status_mu_);
    status_.next_attempt_ms = nowMs() + delay;
  }
  spdlog::warn("https: {}", error);
}

void HttpsUplink::trackMqtt(int64_t now_ms) {
  const bool up = claims_->mqttUp();
  if (!up) {
    if (mqtt_was_up_ || mqtt_down_since_ms_ == 0) {
      mqtt_down_since_ms_ = claims_->mqttChangedMs();
    }
    // With MQTT down, R/profiles cannot arrive: ask for the changes now and then.
    if (now_ms - mqtt_down_since_ms_ >= options_.profile_resync_after_ms &&
        now_ms - profiles_polled_ms_ >= options_.profile_resync_after_ms) {
      std::lock_guard lock(mu_);
      profiles_due_ = true;
    }
  } else if (!mqtt_was_up_ && mqtt_down_since_ms_ != 0 &&
             now_ms - mqtt_down_since_ms_ >= options_.profile_resync_after_ms) {
    // Back after a long disconnection: the broker may not have kept everything for us.
    std::lock_guard lock(mu_);
    profiles_due_ = true;
  }
  mqtt_was_up_ = up;
}

void HttpsUplink::loadCursor() {
  if (options_.cursor_file.empty()) {
    return;
  }
  std::ifstream in(options_.cursor_file);
  bool due = true;  // first start: no cursor yet
  if (in) {
    std::stringstream ss;
    ss << in.rdbuf();
    auto j = nlohmann::json::parse(ss.str(), nullptr, false);
    if (j.is_object() && j.contains("cursor") && j["cursor"].is_string()) {
      profile_cursor_ = j["cursor"].get<std::string>();
      profiles_complete_ = j.value("complete", false);
      due = !profiles_complete_;  // a snapshot a restart interrupted goes on
    }
  }
  std::lock_guard lock(mu_);
  profiles_due_ = profiles_due_ || due;
  std::lock_guard status_lock(status_mu_);
  status_.profiles_pending = due;
  status_.profiles_cursor = profile_cursor_;
}

bool HttpsUplink::saveCursor(const std::string& cursor, bool complete) {
  const std::filesystem::path tmp = options_.cursor_file.string() + ".tmp";
  const std::string text = nlohmann::json{{"cursor", cursor}, {"complete", complete}}.dump() + "\n";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    return false;
  }
  const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) &&
                  ::fsync(fd) == 0;
  ::close(fd);
  std::error_code ec;
  if (ok) {
    std::filesystem::rename(tmp, options_.cursor_file, ec);
  }
  return ok && !ec;
}

void HttpsUplink::fetchProfiles(std::stop_token stop) {
  bool full = false;
  {
    std::lock_guard lock(mu_);
    full = resync_requested_;
    resync_requested_ = false;
    profiles_due_ = false;
  }
  if (full) {
    profile_cursor_.clear();
    (void)saveCursor("", false);  // a restart in the middle goes on from where it was
    profiles_complete_ = false;
  }
  auto requeue = [&] {
    std::lock_guard lock(mu_);
    profiles_due_ = true;
  };
  profiles_polled_ms_ = nowMs();
  for (int page = 0; page < kMaxPagesPerRun && !stop.stop_requested(); ++page) {
    const std::string path = profiles_path_ + "?cursor=" + HttpsClient::escape(profile_cursor_);
    auto answer = client_->get(path, kMaxPageBytes, stop);
    if (!answer || answer->status != 200) {
      requeue();
      if (!answer && answer.error().code == "stopping") {
        return;
      }
      fail(answer ? "profile snapshot from " + options_.client.base_url + path + ": HTTP " +
                        std::to_string(answer->status) + " (" + serverMessage(answer->body) + ")"
                  : "profile snapshot: " + answer.error().message,
           answer ? answer->retry_after_s : -1);
      return;
    }
    auto doc = nlohmann::json::parse(answer->body, nullptr, false);
    if (!doc.is_object() || !doc.contains("next_cursor") || !doc["next_cursor"].is_string()) {
      requeue();
      fail("profile snapshot from " + options_.client.base_url + path +
               ": the answer is not a page ({\"profiles\": [...], \"next_cursor\": \"...\"})",
           -1);
      return;
    }
    nlohmann::json message = {
        {"upserts", doc.contains("profiles") && doc["profiles"].is_array()
                        ? doc["profiles"]
                        : nlohmann::json::array()},
        {"deletes", doc.contains("deletes") && doc["deletes"].is_array() ? doc["deletes"]
                                                                         : nlohmann::json::array()},
        {"cursor", doc["next_cursor"]}};
    const std::size_t n = message["upserts"].size() + message["deletes"].size();
    if (on_profiles_ && n > 0) {
      if (auto r = on_profiles_(message.dump()); !r) {
        // A page the cache cannot take would be refused again: say so and go on.
        setError("profile snapshot page refused by the profile cache: " + r.error().message);
        spdlog::error("https: profile page refused: {}", r.error().message);
      }
    }
    profile_cursor_ = doc["next_cursor"].get<std::string>();
    const bool more = doc.value("has_more", n > 0);
    (void)saveCursor(profile_cursor_, !more);
    profiles_complete_ = !more;
    {
      std::lock_guard lock(status_mu_);
      ++status_.profile_pages;
      status_.profiles_received += message["upserts"].size();
      status_.profiles_cursor = profile_cursor_;
    }
    if (!more) {
      std::lock_guard lock(status_mu_);
      status_.profiles_last_ms = nowMs();
      status_.profiles_pending = false;
      return;
    }
  }
  requeue();  // more pages than one run takes: the next turn goes on
}

void HttpsUplink::waitSignal(std::stop_token stop, milliseconds timeout) {
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, stop, timeout, [&] { return flush_; });
  if (flush_) {
    flush_ = false;
    backoff_until_ = {};
  }
}

void HttpsUplink::setState(const char* state) {
  std::lock_guard lock(status_mu_);
  if (status_.state != state) {
    status_.state = state;
    status_.since_ms = nowMs();
    if (status_.state != "backoff") {
      status_.next_attempt_ms = 0;
    }
  }
}

void HttpsUplink::setError(const std::string& error) {
  std::lock_guard lock(status_mu_);
  status_.last_error = error;
  status_.last_error_ms = nowMs();
  status_.last_error_resolved = false;
}

void HttpsUplink::setResolved() {
  std::lock_guard lock(status_mu_);
  if (!status_.last_error.empty()) {
    status_.last_error_resolved = true;
  }
}

}  // namespace omniedge::sync
