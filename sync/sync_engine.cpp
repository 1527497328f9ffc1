#include "sync/sync_engine.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <exception>
#include <iterator>
#include <limits>
#include <utility>

#include "agent/api/thread_name.h"

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
constexpr std::size_t kMaxHeldEvents = 8;  // more refused alone: the broker refuses everything
constexpr std::size_t kMaxSplits = 64;
constexpr std::chrono::seconds kRightAfter{2};  // a loss this soon after a lone publish: its fault?
constexpr int kStrikesToSplit = 2;
constexpr std::chrono::seconds kDroppedAtOnce{5};
constexpr int kStrikesToHold = 3;  // a single event needs more evidence: a flaky link also drops
constexpr std::size_t kPublishOverhead = 16;  // PUBLISH header besides the topic, rounded up
constexpr double kFillTarget = 0.9;
constexpr int kMaxSkipsPerCall = 64;
// Tags of publish()ed messages: apart from batches (counting up from 1) and the status (0).
constexpr uint64_t kControlTagBase = uint64_t{1} << 62;
constexpr std::size_t kMaxControlMessages = 256;
constexpr std::size_t kMaxControlBytes = 4u << 20;
constexpr std::size_t kControlInflight = 16;
constexpr std::size_t kInboxReadBatch = 32;

bool isControlTag(uint64_t tag) { return tag >= kControlTagBase; }

// What makes a new connection necessary; the reconnect bounds apply to the next wait.
bool sameConnection(const MqttOptions& a, const MqttOptions& b) {
  return a.url == b.url && a.urls == b.urls && a.client_id == b.client_id &&
         a.username == b.username && a.password == b.password && a.ca_file == b.ca_file &&
         a.cert_file == b.cert_file && a.key_file == b.key_file && a.keepalive_s == b.keepalive_s &&
         a.version == b.version && a.topic_root == b.topic_root &&
         a.connect_timeout_s == b.connect_timeout_s && a.session_expiry_s == b.session_expiry_s &&
         a.max_packet_bytes == b.max_packet_bytes && a.proven_after_ms == b.proven_after_ms;
}

// PUBACK reason codes that are about the message itself (MQTT 5 §3.4.2.1): a smaller batch or
// leaving one event out can help. The others (not authorised, topic invalid, quota) are about
// this client and are never worked around by quarantining events.
bool isEventRefusal(int reason_code) {
  return reason_code == 0x80 || reason_code == 0x83 || reason_code == 0x95 || reason_code == 0x99;
}

std::string refusalAdvice(int reason_code, const std::string& error, const MqttOptions& mqtt,
                          const std::string& url, const std::string& topic) {
  const std::string at =
      "the broker at " + url + " refused a batch on " + topic + " (" + error + ")";
  switch (reason_code) {
    case 0x87:
      return at + ": let client id \"" + mqtt.client_id + "\" publish there in its ACL";
    case 0x90:
      return at + ": the topic is not valid on this broker; check store.tenant and store.id";
    case 0x97:
      return at + ": this client's quota is used up; lower sync.max_bytes_per_sec or raise it";
    default:
      return at;
  }
}

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
      on_message_(std::move(on_message)),
      topic_events_(mqtt_.topic_root + "/events"),
      urls_(mqtt_.urls.empty() ? std::vector<std::string>{mqtt_.url} : mqtt_.urls),
      claims_(options_.claims ? options_.claims : std::make_shared<ClaimBook>()),
      rate_(options_.rate ? options_.rate
                          : std::make_shared<RateLimit>(options_.max_bytes_per_sec)),
      next_control_tag_(kControlTagBase),
      inbound_max_bytes_(options_.inbound_max_bytes) {
  status_.url = urls_.front();
  status_.nodes = urls_.size();
}

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
  claims_->setMqttUp(false, nowMs());
  thread_ = std::jthread([this](std::stop_token stop) {
    nameThisThread("oe-sync");
    run(stop);
  });
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
  SyncStatus s;
  {
    std::lock_guard lock(status_mu_);
    s = status_;
  }
  std::lock_guard lock(mu_);
  s.control_queued = control_.size();
  return s;
}

void SyncEngine::setInbox(Inbox* inbox) { inbox_ = inbox; }

void SyncEngine::setConnectMessages(std::function<std::vector<MqttMessage>()> messages) {
  connect_messages_ = std::move(messages);
}

uint64_t SyncEngine::reconfigure(MqttOptions mqtt, SyncOptions options) {
  uint64_t generation = 0;
  inbound_max_bytes_ = options.inbound_max_bytes;
  {
    std::lock_guard lock(mu_);
    generation = ++requested_generation_;
    next_config_.emplace(std::move(mqtt), std::move(options));
  }
  cv_.notify_all();
  return generation;
}

void SyncEngine::publish(MqttMessage message, std::function<void()> on_acked) {
  {
    std::lock_guard lock(mu_);
    control_bytes_ += message.topic.size() + message.payload.size();
    control_.push_back(Outgoing{std::move(message), std::move(on_acked)});
    while (control_.size() > kMaxControlMessages ||
           (control_.size() > 1 && control_bytes_ > kMaxControlBytes)) {
      const auto& m = control_.front().message;
      control_bytes_ -= m.topic.size() + m.payload.size();
      spdlog::warn("sync: dropped an unsent message on {}: more than {} waiting", m.topic,
                   kMaxControlMessages);
      control_.pop_front();
      std::lock_guard status_lock(status_mu_);
      ++status_.control_dropped;
    }
  }
  cv_.notify_all();
}

void SyncEngine::run(std::stop_token stop) {
  bool back_off = false;  // the first connect is immediate; every later one waits first
  while (!stop.stop_requested()) {
    applyReconfigure(back_off);
    handleDeliveries();
    handleInbound();
    if (session_up_ && !link_->connected()) {
      handleLoss("connection lost");
    }
    if (!session_up_) {
      if (back_off) {
        const milliseconds delay = backoffDelay(attempt_);
        setNextAttempt(nowMs() + delay.count());
        waitSignal(stop, delay, false);
        // Only a connection that proves itself starts the backoff again from the shortest
        // delay: a broker that accepts and at once drops us is not hammered.
        attempt_ = std::min(attempt_ + 1, kMaxBackoffDoublings);
        if (stop.stop_requested()) {
          break;
        }
        bool new_settings = false;
        {
          std::lock_guard lock(mu_);
          new_settings = next_config_.has_value();
        }
        if (new_settings) {
          back_off = false;  // the next attempt, at once, uses them (a rollback, new broker)
          continue;
        }
      }
      back_off = true;
      setNextAttempt(0);
      connectOnce(stop);
      continue;
    }
    if (!proven_ &&
        steady_clock::now() - connected_at_ >= milliseconds(std::max(0, mqtt_.proven_after_ms))) {
      markProven();
    }
    if (steady_clock::now() >= status_due_) {
      publishStatus();
    }
    sendControl();
    const int max_inflight = probe_ ? 1 : std::max(1, options_.max_inflight);
    if (inflight_ >= max_inflight) {
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
    MqttOptions first = mqtt_;
    first.url = nodeUrl();
    link_ = std::make_unique<MqttLink>(first);
    link_->setHandlers(
        [this](uint64_t tag, bool ok, int reason_code, const std::string& error) {
          {
            std::lock_guard lock(mu_);
            deliveries_.push_back(Delivery{tag, ok, reason_code, error});
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
          onInboundMessage(std::move(topic), std::move(payload));
        });
  }
  link_->setUrl(nodeUrl());
  {
    std::lock_guard lock(status_mu_);
    ++status_.connect_attempts;
    status_.url = nodeUrl();
    status_.node = node_;
  }
  // connect() destroys the previous connection's client first: what it had received (PUBACKs
  // of forgotten batches) was queued by then and is applied here; nothing of it comes later.
  auto connected = link_->connect(MqttMessage{topic("status"), kOfflineStatus, true}, stop);
  handleDeliveries();
  sent_.clear();
  requeueControl();
  if (!connected) {
    if (connected.error().code != "stopping") {
      setError(connected.error().message);
      spdlog::warn("sync: {}", connected.error().message);
      nextNode();  // a cluster: the next attempt (after the same backoff) tries another node
    }
    return false;
  }
  {
    std::lock_guard lock(mu_);
    lost_ = false;  // about an earlier connection; a loss of this one shows in connected()
  }
  ++connection_;
  session_up_ = true;
  proven_ = false;
  acked_on_connection_ = false;
  connected_at_ = steady_clock::now();
  inflight_ = 0;
  read_seq_ = 0;
  resend_.clear();
  const int64_t announced = link_->brokerMaxPacketSize();
  std::string source = "default";
  max_packet_ = kSafeMaxPacketBytes;
  if (mqtt_.max_packet_bytes > 0) {
    max_packet_ = mqtt_.max_packet_bytes;
    source = "config";
  }
  if (announced > 0 && (mqtt_.max_packet_bytes <= 0 || announced < mqtt_.max_packet_bytes)) {
    max_packet_ = announced;
    source = "broker";
  }
  {
    std::lock_guard lock(status_mu_);
    if (connection_ > 1) {
      ++status_.reconnects;
    }
    status_.mqtt_version = link_->protocolLevel();
    status_.generation = generation_;
    status_.max_packet_bytes = max_packet_;
    status_.max_packet_source = source;
    max_packet_source_ = source;
  }
  setConnected(true);
  setResolved();
  publishInflight();
  spdlog::info("sync: connected to {} (MQTT protocol level {}, batches up to {} bytes from {})",
               nodeUrl(), link_->protocolLevel(), max_packet_, source);
  publishStatus();
  if (connect_messages_) {
    // After what is queued already (which they may repeat: then not again).
    auto messages = connect_messages_();
    std::lock_guard lock(mu_);
    for (auto& m : messages) {
      const bool queued = std::any_of(control_.begin(), control_.end(), [&m](const auto& q) {
        return q.message.topic == m.topic && q.message.payload == m.payload;
      });
      if (!queued) {
        control_bytes_ += m.topic.size() + m.payload.size();
        control_.push_back(Outgoing{std::move(m), {}});
      }
    }
  }
  if (!options_.inbound.empty()) {
    // Retained messages (config) come again with every SUBSCRIBE; the handler ignores a
    // document it has applied already.
    if (auto r = link_->subscribe(options_.inbound, milliseconds(5000)); !r) {
      setError("subscribe to " + nodeUrl() + ": " + r.error().message);
      spdlog::warn("sync: subscribing to {} inbound topics failed: {}", options_.inbound.size(),
                   r.error().message);
    }
  }
  return true;
}

void SyncEngine::onInboundMessage(std::string topic, std::string payload) {
  // Paho's thread. Paho sends the PUBACK when this returns: store first, so that a crash from
  // here on cannot lose the message (it is handled after the restart).
  if (inbox_ != nullptr) {
    auto stored = inbox_->put(topic, payload);
    if (stored) {
      inbox_dirty_ = true;
      cv_.notify_all();
      return;
    }
    spdlog::error(
        "sync: a message on {} ({} bytes) could not be stored before its "
        "acknowledgement ({}): handled from memory, a crash before that loses it",
        topic, payload.size(), stored.error().message);
    std::lock_guard lock(status_mu_);
    ++status_.inbound_not_durable;
  }
  {
    std::lock_guard lock(mu_);
    const std::size_t bytes = topic.size() + payload.size();
    if (inbound_bytes_ + bytes > inbound_max_bytes_.load()) {
      spdlog::error(
          "sync: dropped a message on {} ({} bytes): {} bytes of inbound messages wait "
          "already (sync.inbound_max_bytes)",
          topic, payload.size(), inbound_bytes_);
      std::lock_guard status_lock(status_mu_);
      ++status_.inbound_dropped;
      return;
    }
    inbound_bytes_ += bytes;
    inbound_.emplace_back(std::move(topic), std::move(payload));
  }
  cv_.notify_all();
}

void SyncEngine::deliverInbound(const std::string& topic, const std::string& payload) {
  if (on_message_) {
    try {
      on_message_(topic, payload);
    } catch (const std::exception& e) {
      spdlog::error("sync: handling a message on {} failed: {}", topic, e.what());
    }
  }
  std::lock_guard lock(status_mu_);
  ++status_.inbound_handled;
}

void SyncEngine::handleInbound() {
  // What the inbox holds first (arrival order; after a restart, what was stored but never
  // handled), then what could only be kept in memory.
  if (inbox_ != nullptr && inbox_dirty_.exchange(false)) {
    for (;;) {
      auto batch = inbox_->pending(kInboxReadBatch);
      if (!batch) {
        setError("inbox: " + batch.error().message);
        inbox_dirty_ = true;
        break;
      }
      for (const auto& m : *batch) {
        deliverInbound(m.topic, m.payload);
        if (auto removed = inbox_->remove(m.id); !removed) {
          // Handled again after a restart: handlers are idempotent.
          spdlog::warn("sync: inbox: {}", removed.error().message);
        }
      }
      if (batch->size() < kInboxReadBatch) {
        break;
      }
    }
  }
  std::deque<std::pair<std::string, std::string>> messages;
  {
    std::lock_guard lock(mu_);
    messages.swap(inbound_);
    inbound_bytes_ = 0;
  }
  for (auto& [t, payload] : messages) {
    deliverInbound(t, payload);
  }
}

void SyncEngine::applyReconfigure(bool& back_off) {
  std::optional<std::pair<MqttOptions, SyncOptions>> next;
  uint64_t generation = 0;
  {
    std::lock_guard lock(mu_);
    if (!next_config_) {
      return;
    }
    next.swap(next_config_);
    generation = requested_generation_;
  }
  auto& [mqtt, options] = *next;
  const bool reconnect = !sameConnection(mqtt_, mqtt) || options_.inbound != options.inbound;
  if (options.max_bytes_per_sec != options_.max_bytes_per_sec) {
    rate_->setBytesPerSec(options.max_bytes_per_sec);  // shared with the HTTPS uplink
  }
  // The seq space, the claims and the rate limit stay those shared with the HTTPS uplink.
  options.space = options_.space;
  options.claims = claims_;
  options.rate = rate_;
  options.metrics = options_.metrics;
  options_ = std::move(options);
  generation_ = generation;
  if (reconnect) {
    spdlog::info("sync: new uplink settings: reconnecting to {}",
                 mqtt.urls.empty() ? mqtt.url : mqtt.urls.front());
    closeForReconfigure();
    mqtt_ = std::move(mqtt);
    topic_events_ = mqtt_.topic_root + "/events";
    urls_ = mqtt_.urls.empty() ? std::vector<std::string>{mqtt_.url} : mqtt_.urls;
    node_ = 0;
    {
      std::lock_guard lock(status_mu_);
      status_.url = urls_.front();
      status_.node = 0;
      status_.nodes = urls_.size();
    }
    attempt_ = 0;
    back_off = false;  // connect at once with the new settings
    return;
  }
  mqtt_ = std::move(mqtt);  // only the reconnect bounds differ
  std::lock_guard lock(status_mu_);
  status_.generation = generation;
}

void SyncEngine::closeForReconfigure() {
  if (link_ && session_up_ && link_->connected()) {
    auto published = link_->publishAndWait(MqttMessage{topic("status"), kOfflineStatus, true},
                                           kOfflinePubackWait);
    if (!published) {
      setError("publish offline status: " + published.error().message);
    }
    handleDeliveries();
    if (link_) {
      link_->disconnect(kDisconnectWait);
    }
  }
  session_up_ = false;  // before the link goes: nothing below may touch it
  link_.reset();        // the next connect builds a client with the new options
  handleDeliveries();
  requeueControl();
  sent_.clear();
  inflight_ = 0;
  claims_->releaseAll(Uplink::kMqtt);  // their seqs are free for HTTPS now
  read_seq_ = 0;
  resend_.clear();
  probe_ = false;
  strike_ = {};
  setConnected(false);
  publishInflight();
}

void SyncEngine::sendControl() {
  while (control_sent_.size() < kControlInflight && session_up_ && link_->connected()) {
    Outgoing out;
    {
      std::lock_guard lock(mu_);
      if (control_.empty()) {
        return;
      }
      out = std::move(control_.front());
      control_.pop_front();
      control_bytes_ -= out.message.topic.size() + out.message.payload.size();
    }
    const uint64_t tag = next_control_tag_++;
    auto copy = out.message;
    if (auto r = link_->publish(std::move(copy), tag); !r) {
      std::lock_guard lock(mu_);
      control_bytes_ += out.message.topic.size() + out.message.payload.size();
      control_.push_front(std::move(out));
      return;  // the connection is going; it is sent again on the next one
    }
    control_sent_.emplace(tag, std::move(out));
  }
}

void SyncEngine::requeueControl() {
  if (control_sent_.empty()) {
    return;
  }
  std::lock_guard lock(mu_);
  for (auto it = control_sent_.rbegin(); it != control_sent_.rend(); ++it) {
    control_bytes_ += it->second.message.topic.size() + it->second.message.payload.size();
    control_.push_front(std::move(it->second));
  }
  control_sent_.clear();
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
    if (isControlTag(d.tag)) {
      auto it = control_sent_.find(d.tag);
      if (it == control_sent_.end()) {
        continue;
      }
      if (!d.ok && d.reason_code == 0) {
        continue;  // not answered: sent again on the next connection (requeueControl)
      }
      if (!d.ok) {
        spdlog::warn("sync: the broker refused a message on {}: {}", it->second.message.topic,
                     d.error);
        std::lock_guard lock(status_mu_);
        ++status_.control_dropped;
      } else if (it->second.on_acked) {
        it->second.on_acked();
      }
      control_sent_.erase(it);
      continue;
    }
    auto it = sent_.find(d.tag);
    if (it == sent_.end()) {
      continue;  // a batch of a connection whose client is gone: its events are resent
    }
    const InFlight batch = it->second;
    sent_.erase(it);
    const bool current = session_up_ && batch.connection == connection_;
    if (current) {
      --inflight_;
      // Delivered or refused, the claim ends (a refused range is claimed again when resent);
      // a forgotten batch's claim was released with its connection.
      claims_->done(Uplink::kMqtt, batch.first_seq);
    }
    if (d.ok) {
      // A forgotten batch's PUBACK counts too: the broker has those events.
      outbox_.acknowledge(batch.first_seq, batch.last_seq);
      ++acked;
      delivered += batch.count;
      if (options_.metrics) {
        options_.metrics->delivered(batch.channels);
        options_.metrics->batchLatency(Link::kMqtt).observe(steady_clock::now() - batch.sent_at);
      }
      onAcked(batch, d.tag, current);
    } else if (current && failure.empty()) {
      if (isEventRefusal(d.reason_code)) {
        if (!onRefused(batch, "the broker refused it: " + d.error, true)) {
          failure = "the broker at " + nodeUrl() + " refused " +
                    std::to_string(kMaxHeldEvents + 1) +
                    " events sent alone and took nothing after them (" + d.error +
                    "): it refuses every batch, not one event";
        }
      } else if (d.reason_code != 0) {
        failure = refusalAdvice(d.reason_code, d.error, mqtt_, nodeUrl(), topic("events"));
      } else {
        failure = "publish to " + nodeUrl() + " failed: " + d.error;
      }
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
    // Not something a smaller batch fixes: resend from the buffer on a new connection, after a
    // backoff, rather than spinning on it.
    dropConnection(failure);
  } else if (lost && session_up_ && !link_->connected()) {
    handleLoss(cause);
  }
}

void SyncEngine::onAcked(const InFlight& batch, uint64_t tag, bool current) {
  if (current) {
    acked_on_connection_ = true;
    probe_ = false;
    strike_ = {};
    markProven();
  }
  setResolved();
  // Split ranges that this batch covered whole are done.
  for (auto it = splits_.lower_bound(batch.first_seq);
       it != splits_.end() && it->first <= batch.last_seq;) {
    it = it->second.last_seq <= batch.last_seq ? splits_.erase(it) : std::next(it);
  }
  // The broker took a batch sent after these were refused alone: the refusal was about them.
  for (auto it = held_.begin(); it != held_.end();) {
    if (it->second.confirm_tag <= tag) {
      quarantineEvent(it->first, it->second.reason);
      it = held_.erase(it);
    } else {
      ++it;
    }
  }
  std::lock_guard lock(status_mu_);
  status_.events_held = held_.size();
}

bool SyncEngine::onRefused(const InFlight& batch, const std::string& reason, bool resend) {
  {
    std::lock_guard lock(status_mu_);
    ++status_.batches_refused;
  }
  if (batch.count > 1) {
    const std::size_t half = (batch.count + 1) / 2;
    auto [it, fresh] = splits_.try_emplace(batch.first_seq, SplitRange{batch.last_seq, half});
    if (!fresh) {
      it->second.last_seq = std::max(it->second.last_seq, batch.last_seq);
      it->second.max_events = std::min(it->second.max_events, half);
    }
    while (splits_.size() > kMaxSplits) {
      splits_.erase(std::prev(splits_.end()));  // the last in the queue: if refused, it returns
    }
    if (resend) {
      resend_.emplace_back(batch.first_seq, batch.last_seq);
    }
    spdlog::warn("sync: batch of {} events (seq {}-{}) refused, resending it in halves: {}",
                 batch.count, batch.first_seq, batch.last_seq, reason);
    std::lock_guard lock(status_mu_);
    ++status_.batches_split;
    return true;
  }
  if (resend && acked_on_connection_) {
    // The broker said no to this event alone and yes to others on this connection.
    quarantineEvent(batch.first_seq, reason + ", also when sent alone");
    return true;
  }
  if (held_.size() >= kMaxHeldEvents) {
    held_.clear();
    std::lock_guard lock(status_mu_);
    status_.events_held = 0;
    return false;
  }
  held_[batch.first_seq] = Held{reason + ", also when sent alone", next_tag_};
  spdlog::warn(
      "sync: event seq {} refused when sent alone, held back until the broker takes a "
      "later batch: {}",
      batch.first_seq, reason);
  std::lock_guard lock(status_mu_);
  status_.events_held = held_.size();
  return true;
}

void SyncEngine::strikeLoneBatch(const std::string& cause) {
  const InFlight* lone = nullptr;
  for (const auto& [tag, b] : sent_) {
    if (b.connection == connection_) {
      lone = &b;
    }
  }
  if (lone == nullptr || steady_clock::now() - lone->sent_at > kRightAfter) {
    strike_ = {};
    return;
  }
  if (strike_.first_seq != lone->first_seq) {
    strike_ = Strike{lone->first_seq, 0};
  }
  ++strike_.times;
  const int needed = lone->count > 1 ? kStrikesToSplit : kStrikesToHold;
  if (strike_.times < needed) {
    return;
  }
  strike_ = {};
  const InFlight batch = *lone;
  if (!onRefused(batch, "the broker closed the connection each time right after it (" + cause + ")",
                 false)) {
    setError("the broker at " + nodeUrl() +
             " closes the connection after every batch, even single events: check its ACL for "
             "publishing to " +
             topic("events") + " and its maximum packet size (mqtt.max_packet_bytes)");
  }
}

void SyncEngine::handleLoss(const std::string& cause) {
  if (!session_up_) {
    return;
  }
  const int inflight = inflight_;
  if (inflight == 1) {
    strikeLoneBatch(cause);
  }
  if (inflight > 0) {
    probe_ = true;  // find out which batch (if any) the broker hangs up on
  }
  // A broker that takes the connection and drops it before any batch got through: say why
  // that may be (a plain outage after a while needs no such guess).
  const bool dropped_at_once =
      !acked_on_connection_ && steady_clock::now() - connected_at_ < kDroppedAtOnce;
  const auto up_ms =
      std::chrono::duration_cast<milliseconds>(steady_clock::now() - connected_at_).count();
  session_up_ = false;
  inflight_ = 0;  // forgotten; their entries stay in sent_ until the next connect
  read_seq_ = 0;  // resend everything still pending
  resend_.clear();
  requeueControl();
  claims_->releaseAll(Uplink::kMqtt);  // their seqs are free for HTTPS now
  std::string error = "connection to " + nodeUrl() + " lost: " + cause;
  if (dropped_at_once) {
    error += fmt::format(
        " ({:.1f} s after the broker accepted it: another agent using the same mqtt.client_id "
        "\"{}\"? the broker's ACL or quota? reconnecting with a growing backoff)",
        static_cast<double>(up_ms) / 1000.0, mqtt_.client_id);
  }
  setError(error);
  setConnected(false);
  publishInflight();
  spdlog::warn("sync: {}", error);
  nextNode();  // the node may be gone: try the next one of a cluster first
}

void SyncEngine::nextNode() {
  if (urls_.size() > 1) {
    node_ = (node_ + 1) % urls_.size();
  }
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
    setError("publish status to " + nodeUrl() + ": " + published.error().message);
  }
}

std::size_t SyncEngine::readBytesCap() const {
  // Read about what fits in one packet once compressed, so that a batch rarely needs cutting.
  const double room = static_cast<double>(max_packet_) - static_cast<double>(topic_events_.size()) -
                      static_cast<double>(kPublishOverhead);
  const double guess = std::max(1.0, room * ratio_ * kFillTarget);
  return std::min(options_.batch_max_bytes, static_cast<std::size_t>(guess));
}

void SyncEngine::advanceCursor(bool resending, int64_t seq) {
  if (!resending) {
    read_seq_ = std::max(read_seq_, seq);
    return;
  }
  resend_.front().first = seq + 1;
  if (resend_.front().first > resend_.front().second) {
    resend_.pop_front();
  }
}

void SyncEngine::clipBatch(std::vector<PendingEvent>& events) const {
  const int64_t first = events.front().seq;
  int64_t end_before = std::numeric_limits<int64_t>::max();  // the batch ends before this seq
  std::size_t max_events = events.size();
  // A held event is never inside a batch: acknowledge(first, last) would take it with it.
  if (auto h = held_.upper_bound(first); h != held_.end()) {
    end_before = h->first;
  }
  for (const auto& [range_first, range] : splits_) {
    if (range_first > first) {
      end_before = std::min(end_before, range_first);  // so the range starts a batch of its own
      break;
    }
    if (range.last_seq >= first) {
      max_events = std::min(max_events, range.max_events);
      end_before = std::min(end_before, range.last_seq + 1);
    }
  }
  std::size_t n = 0;
  while (n < events.size() && n < max_events && events[n].seq < end_before) {
    ++n;
  }
  events.resize(std::max<std::size_t>(1, n));
}

bool SyncEngine::sendNextBatch() {
  if (const uint64_t g = claims_->generation(); g != claims_generation_) {
    claims_generation_ = g;
    read_seq_ = 0;  // seqs came back to the pool (HTTPS failed, a backfill ended): from the head
  }
  // During an HTTPS backfill round the backlog up to the floor is HTTPS's; the newest is ours.
  read_seq_ = std::max(read_seq_, claims_->floor());
  for (int skips = 0; skips < kMaxSkipsPerCall; ++skips) {
    const bool resending = !resend_.empty();
    const int64_t after = resending ? resend_.front().first - 1 : read_seq_;
    const int64_t upto = resending ? resend_.front().second : std::numeric_limits<int64_t>::max();
    auto events = outbox_.readPending(after, options_.batch_max_events, readBytesCap());
    if (!events) {
      setError("read outbox: " + events.error().message);
      return false;
    }
    events->erase(std::find_if(events->begin(), events->end(),
                               [&](const PendingEvent& e) { return e.seq > upto; }),
                  events->end());
    if (events->empty()) {
      if (resending) {
        resend_.pop_front();
        continue;
      }
      return false;
    }
    const int64_t first = events->front().seq;
    if (!resending && after == 0) {
      // Read from the start: split ranges wholly before the oldest pending event are done.
      while (!splits_.empty() && splits_.begin()->second.last_seq < first) {
        splits_.erase(splits_.begin());
      }
    }
    if (held_.count(first) != 0) {
      advanceCursor(resending, first);
      continue;
    }
    clipBatch(*events);
    // No seq goes out on both links at once (sync/claims.h).
    const auto grant = claims_->claim(Uplink::kMqtt, first, events->back().seq);
    if (!grant.granted) {
      advanceCursor(resending, std::min(grant.last, upto));
      continue;
    }
    events->erase(std::find_if(events->begin(), events->end(),
                               [&](const PendingEvent& e) { return e.seq > grant.last; }),
                  events->end());

    // Cut the batch until its PUBLISH fits the broker's maximum packet size; an event that
    // cannot fit alone is never sent (a 3.1.1 broker may PUBACK and drop it).
    const bool v5 = link_->protocolLevel() == 5;
    Result<Batch> batch = makeError("invalid", "not built");
    for (;;) {
      batch = buildBatch(*events, options_.store_id, options_.agent_version, options_.compression,
                         options_.space);
      if (!batch) {
        claims_->release(Uplink::kMqtt, first);
        setError("build batch: " + batch.error().message);
        return false;
      }
      const auto packet = static_cast<int64_t>(
          MqttLink::publishPacketBytes(topic_events_.size(), batch->payload.size(), v5));
      if (packet <= max_packet_) {
        break;
      }
      if (events->size() == 1) {
        claims_->done(Uplink::kMqtt, first);
        quarantineEvent(first, fmt::format("the event is {} bytes ({} as sent with {}), over the "
                                           "broker's maximum packet size of {} bytes ({})",
                                           events->front().body.size(), packet,
                                           compressionName(options_.compression), max_packet_,
                                           max_packet_source_ == "config" ? "mqtt.max_packet_bytes"
                                           : max_packet_source_ == "broker"
                                               ? "announced in its CONNACK"
                                               : "the default; set mqtt.max_packet_bytes"));
        advanceCursor(resending, first);
        return true;
      }
      const double fit = static_cast<double>(max_packet_) / static_cast<double>(packet);
      const auto n = static_cast<std::size_t>(static_cast<double>(events->size()) * fit * 0.9);
      events->resize(std::clamp<std::size_t>(n, 1, events->size() - 1));
    }
    if (!batch->payload.empty()) {
      const double r =
          static_cast<double>(batch->json_bytes) / static_cast<double>(batch->payload.size());
      ratio_ = std::max(1.0, 0.8 * ratio_ + 0.2 * r);
    }
    const uint64_t tag = next_tag_++;
    const std::size_t bytes = batch->payload.size();
    ChannelTally channels;
    if (options_.metrics) {
      for (const PendingEvent& e : *events) {
        channels.add(channelOfBody(e.body));
      }
    }
    sent_[tag] = InFlight{batch->first_seq, batch->last_seq,     batch->count,
                          connection_,      steady_clock::now(), channels};
    if (batch->last_seq < grant.last) {
      // Cut to fit the packet: the rest of the claim is free again.
      claims_->shrink(Uplink::kMqtt, first, batch->last_seq);
    }
    auto published =
        link_->publish(MqttMessage{topic_events_, std::move(batch->payload), false}, tag);
    if (!published) {
      sent_.erase(tag);
      claims_->release(Uplink::kMqtt, first);
      dropConnection("publish batch: " + published.error().message);
      return true;
    }
    advanceCursor(resending, batch->last_seq);
    ++inflight_;
    rate_->spend(static_cast<int64_t>(bytes));
    {
      std::lock_guard lock(status_mu_);
      ++status_.batches_sent;
      status_.bytes_sent += bytes;
      status_.inflight = inflight_;
    }
    return true;
  }
  return true;  // only skipped held events: the caller comes back at once
}

void SyncEngine::quarantineEvent(int64_t seq, const std::string& reason) {
  spdlog::error("sync: event seq {} quarantined: {}", seq, reason);
  {
    std::lock_guard lock(status_mu_);
    ++status_.events_quarantined;
    status_.last_quarantine_reason = reason;
    status_.last_quarantine_ms = nowMs();
  }
  outbox_.quarantine(seq, seq, reason);
}

void SyncEngine::markProven() {
  if (!proven_) {
    proven_ = true;
    attempt_ = 0;
  }
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
    return flush_ || next_config_.has_value() ||
           (any_news && (!deliveries_.empty() || lost_ || !inbound_.empty() ||
                         inbox_dirty_.load() || (session_up_ && !control_.empty())));
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

int64_t SyncEngine::throttleWaitMs() { return rate_->waitMs(); }

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
  claims_->releaseAll(Uplink::kMqtt);
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
  claims_->setMqttUp(connected, nowMs());
  std::lock_guard lock(status_mu_);
  if (status_.connected != connected) {
    status_.connected = connected;
    status_.since_ms = nowMs();
  }
}

void SyncEngine::setError(const std::string& error) {
  std::lock_guard lock(status_mu_);
  status_.last_error = error;
  status_.last_error_ms = nowMs();
  status_.last_error_resolved = false;
}

void SyncEngine::setResolved() {
  std::lock_guard lock(status_mu_);
  if (!status_.last_error.empty()) {
    status_.last_error_resolved = true;
  }
}

void SyncEngine::setNextAttempt(int64_t at_ms) {
  std::lock_guard lock(status_mu_);
  status_.next_attempt_ms = at_ms;
}

void SyncEngine::publishInflight() {
  std::lock_guard lock(status_mu_);
  status_.inflight = inflight_;
}

std::string SyncEngine::topic(const char* leaf) const { return mqtt_.topic_root + "/" + leaf; }

}  // namespace omniedge::sync
