// The control socket: how the CLI talks to the running daemon (one JSON request per line,
// one JSON answer per line) over a Unix socket of mode 0660 in the runtime directory.
#pragma once

#include <atomic>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "agent/api/result.h"

namespace omniedge {

class ControlServer {
 public:
  /// Answers one request; runs on the control thread, so it must return quickly.
  using Handler = std::function<nlohmann::json(const nlohmann::json& request)>;

  ControlServer(std::filesystem::path socket_path, Handler handler);
  ~ControlServer();
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  /// Binds the socket (replacing a stale one) and serves on its own thread.
  Result<void> start();
  /// Stops within ~200 ms and removes the socket file.
  void stop();

 private:
  void loop();
  std::filesystem::path path_;
  Handler handler_;
  int fd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace omniedge
