// A temporary directory removed at the end of the test.
#pragma once

#include <filesystem>
#include <string>

namespace omniedge::testing {

class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }
  /// Writes `content` to `name` (relative), creating parent folders.
  void write(const std::string& name, const std::string& content) const;
  std::string read(const std::string& name) const;
  bool exists(const std::string& name) const;

 private:
  std::filesystem::path path_;
};

/// The whole file; empty when it cannot be read (a log not written yet).
std::string readFile(const std::filesystem::path& path);

}  // namespace omniedge::testing
