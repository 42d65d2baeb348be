#include "server/cli.h"

#include <cstdio>

namespace cartserve::cli {

void register_generate(CLI::App& app) {
  auto* sub = app.add_subcommand("generate", "(not implemented yet)");
  sub->allow_extras();
  sub->callback([] {
    std::fprintf(stderr, "cartserve generate: not implemented yet\n");
    set_exit_code(2);
  });
}

}  // namespace cartserve::cli
