// cartserve: an LLM inference server built around cartridges.
#include <cstdio>
#include <exception>

#include "core/logging.h"
#include "server/cli.h"
#include "server/version.h"

int main(int argc, char** argv) {
  cartserve::init_logging_from_env();
  CLI::App app{"cartserve " CARTSERVE_VERSION_STRING
               ": an LLM inference server built around cartridges (precomputed KV caches)"};
  app.require_subcommand(1);
  app.set_version_flag("--version", CARTSERVE_VERSION_STRING);
  cartserve::cli::register_generate(app);
  cartserve::cli::register_serve(app);
  cartserve::cli::register_cartridge(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  // Handlers run as parse callbacks and store their exit code.
  return cartserve::cli::exit_code();
}
