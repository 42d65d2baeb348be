// Subcommands of the `cartserve` binary. Each register_* adds one subcommand
// (with complete --help) whose callback runs the command and records its exit
// code through set_exit_code().
#pragma once

#include <CLI/CLI.hpp>

namespace cartserve::cli {

// `cartserve generate MODEL --prompt TEXT ...`
void register_generate(CLI::App& app);
// `cartserve serve MODEL ...` (OpenAI-compatible server)
void register_serve(CLI::App& app);
// `cartserve cartridge inspect|convert|build ...`
void register_cartridge(CLI::App& app);

void set_exit_code(int code);
int exit_code();

}  // namespace cartserve::cli
