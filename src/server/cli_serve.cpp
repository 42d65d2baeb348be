#include "server/cli.h"

#include <cstdio>

namespace cartserve::cli {

void register_serve(CLI::App& app) {
  auto* sub = app.add_subcommand("serve", "(not implemented yet)");
  sub->allow_extras();
  sub->callback([] {
    std::fprintf(stderr, "cartserve serve: not implemented yet\n");
    set_exit_code(2);
  });
}

}  // namespace cartserve::cli
