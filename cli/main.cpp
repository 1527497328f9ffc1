// omniedge: the in-store edge agent. main() only hands over to the CLI.
#include <cstdio>
#include <exception>

#include "cli/cli.h"

int main(int argc, char** argv) {
  try {
    return omniedge::runCli(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "omniedge: %s\n", e.what());
    return 78;
  }
}
