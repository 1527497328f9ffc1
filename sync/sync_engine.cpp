#include "sync/sync_engine.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <exception>
#include <utility>

namespace omniedge::sync {
namespace {

using std::chrono::milliseconds;
using std::chrono::steady_clock;

constexpr uint64_t kStatusTag = 0;
constexpr char kOfflineStatus[] = R"({"state":"offline"})";
constexpr char kFallbackOnlineStatus[] = R"({"state":"online"})";
constexpr milliseconds kIdleWait{200};         // waitForNewer() cannot be interrupted: keep short
constexpr milliseconds kIdleWaitInflight{20};  // nothing to read, PUBACKs to collect
constexpr milliseconds kSignalWait{200};
constexpr milliseconds kOfflinePubackWait{400};
constexpr milliseconds kDisconnectWait{100};
constexpr int kMaxBackoffDoublings = 30;

int64_t nowMs() {
  return std::chrono::duration_cast<milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

SyncEngine::SyncEngine(Outbox& outbox, MqttOptions mqtt, SyncOptions options,
                       std::function<std::string()> status_json, InboundHandler on_message)
    : outbox_(outbox),
      mqtt_(std::move(mqtt)),
      options_(std::move(options)),
      status_json_(std::move(status_json)),
      on_message_(std::move(on_message)) {}

SyncEngine::~SyncEngine() { stop(); }

void SyncEngine::start() {
  if (thread_.joinable()) {
    return;
  }
  {
    std::lock_guard lock(status_mu_);
    status_.connected = false;
    status_.since_ms = nowMs();
  }
  thread_ = std::jthread([this](std::stop_token stop) { run(stop); });
}

void SyncEngine::stop() {
  if (!thread_.joinable()) {
    return;
  }
  thread_.request_stop();  // also wakes the condition_variable_any waits
  thread_.join();
}

void SyncEngine::flushNow() {
  {
    std::lock_guard lock(mu_);
    flush_ = true;
  }
  cv_.notify_all();
}

SyncStatus SyncEngine::status() const {
  std::lock_guard lock(status_mu_);
  return status_;
}

void SyncEngine::run(std::stop_token stop) {
  const double rate = static_cast<double>(options_.max_bytes_per_sec);
  tokens_ = rate;
  tokens_at_ = steady_clock::now();
  int attempt = 0;
  bool back_off = false;  // the first connect is immediate; every later one waits first
  while (!stop.stop_requested()) {
    handleDeliveries();
    handleInbound();
    if (session_up_ && !link_->connected()) {
      handleLoss("connection lost");
    }
    if (!session_up_) {
      if (back_off) {
        waitSignal(stop, backoffDelay(attempt), false);
        attempt = std::min(attempt + 1, kMaxBackoffDoublings);
        if (stop.stop_requested()) {
          break;
        }
      }
      back_off = true;
      if (connectOnce(stop)) {
        attempt = 0;
      }
      continue;
    }
    if (steady_clock::now() >= status_due_) {
      publishStatus();
    }
    if (inflight_ >= std::max(1, options_.max_inflight)) {
      waitSignal(stop, kSignalWait, true);
      continue;
    }
    if (const int64_t wait_ms = throttleWaitMs(); wait_ms > 0) {
      waitSignal(stop, std::min(milliseconds(wait_ms), kSignalWait), true);
      continue;
    }
    if (!sendNextBatch()) {
      waitIdle();
    }
  }
  shutdown();
}

bool SyncEngine::connectOnce(std::stop_token stop) {
  if (!link_) {
    link_ = std::make_unique<MqttLink>(mqtt_);
    link_->setHandlers(
        [this](uint64_t tag, bool ok, const std::string& error) {
          {
            std::lock_guard lock(mu_);
            deliveries_.push_back(Delivery{tag, ok, error});
          }
          cv_.notify_all();
        },
        [this](const std::string& cause) {
          {
            std::lock_guard lock(mu_);
            lost_ = true;
            lost_cause_ = cause;
          }
          cv_.notify_all();
        },
        [this](std::string topic, std::string payload) {
          {
            std::lock_guard lock(mu_);
            inbound_.emplace_back(std::move(topic), std::move(payload));
          }
          cv_.notify_all();
        });
  }
  auto connected = link_->connect(MqttMessage{topic("status"), kOfflineStatus, true}, stop);
  // Late PUBACKs of the previous connection were queued before its client went away.
  handleDeliveries();
  sent_.clear();
  if (!connected) {
    if (connected.error().code != "stopping") {
      setError("connect " + mqtt_.url + ": " + connected.error().message);
      spdlog::warn("sync: connect to {} failed: {}", mqtt_.url, connected.error().message);
    }
    return false;
  }
  {
    std::lock_guard lock(mu_);
    lost_ = false;  // about an earlier connection; a loss of this one shows in connected()
  }
  ++connection_;
  session_up_ = true;
  inflight_ = 0;
  read_seq_ = 0;
  {
    std::lock_guard lock(status_mu_);
    if (connection_ > 1) {
      ++status_.reconnects;
    }
  }
  setConnected(true);
  publishInflight();
  spdlog::info("sync: connected to {} (MQTT protocol level {})", mqtt_.url, link_->protocolLevel());
  publishStatus();
  if (!options_.inbound.empty()) {
    std::vector<std::string> topics;
    for (const auto& leaf : options_.inbound) {
      topics.push_back(topic(leaf.c_str()));
    }
    if (auto r = link_->subscribe(topics, milliseconds(5000)); !r) {
      setError("subscribe: " + r.error().message);
      spdlog::warn("sync: subscribing to {} inbound topics failed: {}", topics.size(),
                   r.error().message);
    }
  }
  return true;
}

void SyncEngine::handleInbound() {
  std::deque<std::pair<std::string, std::string>> messages;
  {
    std::lock_guard lock(mu_);
    messages.swap(inbound_);
  }
  const std::string root = mqtt_.topic_root + "/";
  for (auto& [t, payload] : messages) {
    if (on_message_ && t.rfind(root, 0) == 0) {
      on_message_(t.substr(root.size()), payload);
    }
  }
}

void SyncEngine::handleDeliveries() {
  std::deque<Delivery> deliveries;
  bool lost = false;
  std::string cause;
  {
    std::lock_guard lock(mu_);
    deliveries.swap(deliveries_);
    lost = lost_;
    lost_ = false;
    cause = std::move(lost_cause_);
  }
  std::string failure;
  uint64_t acked = 0;
  uint64_t delivered = 0;
  for (const auto& d : deliveries) {
    if (d.tag == kStatusTag) {
      continue;
    }
    auto it = sent_.find(d.tag);
    if (it == sent_.end()) {
      continue;
    }
    const InFlight batch = it->second;
    sent_.erase(it);
    const bool current = session_up_ && batch.connection == connection_;
    if (current) {
      --inflight_;
    }
    if (d.ok) {
      // A forgotten batch's PUBACK counts too: the broker has those events.
      outbox_.acknowledge(batch.first_seq, batch.last_seq);
      ++acked;
      delivered += batch.count;
    } else if (current && failure.empty()) {
      failure = d.error;
    }
  }
  if (acked != 0) {
    std::lock_guard lock(status_mu_);
    status_.batches_acked += acked;
    status_.events_delivered += delivered;
  }
  if (!deliveries.empty()) {
    publishInflight();
  }
  if (!failure.empty()) {
    // The broker refused a batch (or Paho gave up on it): resend from the buffer on a new
    // connection, after a backoff, rather than spinning on it.
    dropConnection("publish failed: " + failure);
  } else if (lost && session_up_ && !link_->connected()) {
    handleLoss(cause);
  }
}

void SyncEngine::handleLoss(const std::string& cause) {
  if (!session_up_) {
    return;
  }
  session_up_ = false;
  inflight_ = 0;  // forgotten; their entries stay in sent_ for late PUBACKs
  read_seq_ = 0;  // resend everything still pending
  setError(cause);
  setConnected(false);
  publishInflight();
  spdlog::warn("sync: connection to {} lost: {}", mqtt_.url, cause);
}

void SyncEngine::dropConnection(const std::string& cause) {
  if (link_) {
    link_->disconnect(milliseconds(0));
  }
  handleLoss(cause);
}

void SyncEngine::publishStatus() {
  status_due_ = steady_clock::now() + std::chrono::seconds(std::max(1, options_.status_interval_s));
  std::string doc;
  try {
    doc = status_json_ ? status_json_() : std::string(kFallbackOnlineStatus);
  } catch (const std::exception& e) {
    setError(std::string("status document: ") + e.what());
    doc = kFallbackOnlineStatus;
  }
  auto published = link_->publish(MqttMessage{topic("status"), std::move(doc), true}, kStatusTag);
  if (!published) {
    setError("publish status: " + published.error().message);
  }
}

bool SyncEngine::sendNextBatch() {
  auto events = outbox_.readPending(read_seq_, options_.batch_max_events, options_.batch_max_bytes);
  if (!events) {
    setError("read outbox: " + events.error().message);
    return false;
  }
  if (events->empty()) {
    return false;
  }
  auto batch = buildBatch(*events, options_.store_id, options_.agent_version, options_.compression);
  if (!batch) {
    setError("build batch: " + batch.error().message);
    return false;
  }
  const uint64_t tag = next_tag_++;
  const std::size_t bytes = batch->payload.size();
  sent_[tag] = InFlight{batch->first_seq, batch->last_seq, batch->count, connection_};
  auto published =
      link_->publish(MqttMessage{topic("events"), std::move(batch->payload), false}, tag);
  if (!published) {
    sent_.erase(tag);
    dropConnection("publish batch: " + published.error().message);
    return true;
  }
  read_seq_ = batch->last_seq;
  ++inflight_;
  tokens_ -= static_cast<double>(bytes);
  {
    std::lock_guard lock(status_mu_);
    ++status_.batches_sent;
    status_.bytes_sent += bytes;
    status_.inflight = inflight_;
  }
  return true;
}

void SyncEngine::waitIdle() {
  // Ask for anything newer than what was read or acknowledged-and-gone, so that a buffer whose
  // newest rows were already delivered does not wake us at once.
  const int64_t after = std::max(read_seq_, newest_seen_);
  const milliseconds timeout = inflight_ > 0 ? kIdleWaitInflight : kIdleWait;
  newest_seen_ = outbox_.waitForNewer(after, static_cast<int>(timeout.count()));
}

void SyncEngine::waitSignal(std::stop_token stop, milliseconds timeout, bool any_news) {
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, stop, timeout, [&] {
    return flush_ || (any_news && (!deliveries_.empty() || lost_ || !inbound_.empty()));
  });
  flush_ = false;
}

milliseconds SyncEngine::backoffDelay(int attempt) {
  const int64_t min_ms = std::max(1, mqtt_.reconnect_min_ms);
  const int64_t max_ms = std::max<int64_t>(min_ms, mqtt_.reconnect_max_ms);
  int64_t cap = min_ms;
  for (int i = 0; i < attempt && cap < max_ms; ++i) {
    cap *= 2;
  }
  cap = std::min(cap, max_ms);
  std::uniform_int_distribution<int64_t> full_jitter(0, cap);
  return milliseconds(full_jitter(rng_));
}

int64_t SyncEngine::throttleWaitMs() {
  if (options_.max_bytes_per_sec <= 0) {
    return 0;
  }
  const double rate = static_cast<double>(options_.max_bytes_per_sec);
  const auto now = steady_clock::now();
  const double elapsed_s = std::chrono::duration<double>(now - tokens_at_).count();
  tokens_at_ = now;
  // A bucket of one second's worth; a batch larger than that just runs it into debt.
  tokens_ = std::min(rate, tokens_ + elapsed_s * rate);
  if (tokens_ >= 0) {
    return 0;
  }
  return static_cast<int64_t>(std::ceil(-tokens_ / rate * 1000.0));
}

void SyncEngine::shutdown() {
  if (link_ && session_up_ && link_->connected()) {
    // A clean DISCONNECT discards the will, so say "offline" ourselves. Its PUBACK also comes
    // after those of every batch before it: collect them so fewer events are sent twice.
    auto published = link_->publishAndWait(MqttMessage{topic("status"), kOfflineStatus, true},
                                           kOfflinePubackWait);
    if (!published) {
      setError("publish offline status: " + published.error().message);
    }
    handleDeliveries();
    link_->disconnect(kDisconnectWait);
  }
  session_up_ = false;
  link_.reset();
  handleDeliveries();  // what the link dropped on its way out: nothing to resend now
  sent_.clear();
  inflight_ = 0;
  read_seq_ = 0;
  {
    std::lock_guard lock(mu_);
    deliveries_.clear();
    lost_ = false;
    flush_ = false;
  }
  setConnected(false);
  publishInflight();
}

void SyncEngine::setConnected(bool connected) {
  std::lock_guard lock(status_mu_);
  if (status_.connected != connected) {
    status_.connected = connected;
    status_.since_ms = nowMs();
  }
}

void SyncEngine::setError(const std::string& error) {
  std::lock_guard lock(status_mu_);
  status_.last_error = error;
}

void SyncEngine::publishInflight() {
  std::lock_guard lock(status_mu_);
  status_.inflight = inflight_;
}

std::string SyncEngine::topic(const char* leaf) const { return mqtt_.topic_root + "/" + leaf; }

}  // namespace omniedge::sync
