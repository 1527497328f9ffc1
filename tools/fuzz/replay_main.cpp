// Runs a fuzz target's LLVMFuzzerTestOneInput over inputs without libFuzzer, for
// `tools/fuzz/run --replay` (what scripts/test runs): built with g++ and ASan + UBSan from the
// same source lists as the fuzzers, so that a target whose sources no longer link, or a seed
// that once failed and fails again, stops the suite instead of waiting for the next fuzzing run.
//
//   <target> FILE_OR_FOLDER...
//
// The empty input first (as libFuzzer does), then every file named and every regular file in
// every folder named (in name order), each once and whole (libFuzzer's -max_len only bounds
// what it generates). A failed FUZZ_CHECK aborts, as under libFuzzer. Prints "replayed N
// inputs" (the empty one counted) and exits 0, or 2 when an input cannot be read.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
// Only some targets set up state first (a journal, a socket pair): weak, null when absent.
extern "C" __attribute__((weak)) int LLVMFuzzerInitialize(int* argc, char*** argv);

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  std::vector<fs::path> inputs;
  for (int i = 1; i < argc; ++i) {
    const fs::path p(argv[i]);
    if (fs::is_directory(p)) {
      std::vector<fs::path> in_dir;
      for (const auto& e : fs::directory_iterator(p)) {
        if (e.is_regular_file()) {
          in_dir.push_back(e.path());
        }
      }
      std::sort(in_dir.begin(), in_dir.end());
      inputs.insert(inputs.end(), in_dir.begin(), in_dir.end());
    } else {
      inputs.push_back(p);
    }
  }
  if (LLVMFuzzerInitialize != nullptr) {
    LLVMFuzzerInitialize(&argc, &argv);
  }
  LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(""), 0);
  for (const auto& p : inputs) {
    std::ifstream in(p, std::ios::binary);
    if (!in) {
      std::fprintf(stderr, "replay: cannot read %s\n", p.c_str());
      return 2;
    }
    const std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(data.data()), data.size());
  }
  std::printf("replayed %zu inputs\n", inputs.size() + 1);
  return 0;
}
