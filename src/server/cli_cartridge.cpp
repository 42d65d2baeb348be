#include "server/cli.h"

#include <cstdio>

namespace cartserve::cli {

void register_cartridge(CLI::App& app) {
  auto* sub = app.add_subcommand("cartridge", "(not implemented yet)");
  sub->allow_extras();
  sub->callback([] {
    std::fprintf(stderr, "cartserve cartridge: not implemented yet\n");
    set_exit_code(2);
  });
}

}  // namespace cartserve::cli
