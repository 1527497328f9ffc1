// omniedge: the in-store edge agent. main() only hands over to the CLI.
#include <cstdio>
#include <exception>

#include "agent/resident.h"
#include "cli/cli.h"

int main(int argc, char** argv) {
  omniedge::configureSqliteMemory();  // before any database is opened
  try {
    return omniedge::runCli(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "omniedge: %s\n", e.what());
    return 78;
  }
}
