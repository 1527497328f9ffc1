// What the sync engine sees of the durable inbound queue: messages from the centre (profiles,
// config, commands) are stored here before the broker is acknowledged, and deleted once handled.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "agent/api/result.h"

namespace omniedge {

struct InboundMessage {
  int64_t id = 0;  // increasing in arrival order, never reused
  std::string topic;
  std::string payload;
};

/// At least once into the store's own state: Paho acknowledges a QoS 1 message (PUBACK) when
/// its message callback returns, so the callback put()s the message here first; the sync thread
/// handles it and only then remove()s it. A crash between the two handles it again after the
/// restart, so every handler must be idempotent (profiles are upserts, config is versioned,
/// commands are executed at most once by their id).
class Inbox {
 public:
  virtual ~Inbox() = default;

  /// Stores one message durably (a committed, fsynced transaction) and returns its id.
  /// Thread: Paho's callback thread (any). Blocks for one commit (milliseconds). Fails "full"
  /// when the stored messages would pass the byte bound, or "io".
  virtual Result<int64_t> put(std::string_view topic, std::string_view payload) = 0;

  /// The oldest stored messages, at most `max`, in arrival order. Thread: the sync thread.
  /// Fails "io".
  virtual Result<std::vector<InboundMessage>> pending(std::size_t max) = 0;

  /// Deletes a handled message. Thread: the sync thread. Fails "io" (it is then handled again
  /// after a restart: harmless, handlers are idempotent).
  virtual Result<void> remove(int64_t id) = 0;
};

}  // namespace omniedge
