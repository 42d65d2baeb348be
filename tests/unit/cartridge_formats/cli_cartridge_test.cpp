// `cartserve cartridge inspect|convert`, run in-process through the same
// CLI11 registration main() uses.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "cartridge/cartridge_io.h"
#include "core/sha256.h"
#include "server/cli.h"
#include "test_util.h"
#include "unit/cartridge_formats/fixture_values.h"

namespace cartserve {
namespace {

using cartserve::testing::fixture_path;
using cartserve::testing::TempDir;

std::string fx(const std::string& name) {
  return fixture_path("cartridge_formats/" + name);
}

struct CliRun {
  int code = -1;
  std::string out, err;
};

CliRun run_cli(std::vector<std::string> args) {
  CLI::App app{"cartserve"};
  app.require_subcommand(1);
  cli::register_cartridge(app);
  cli::set_exit_code(0);
  std::vector<std::string> argv_s = {"cartserve"};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<const char*> argv;
  for (const auto& a : argv_s)
    argv.push_back(a.c_str());
  CliRun r;
  ::testing::internal::CaptureStdout();
  ::testing::internal::CaptureStderr();
  try {
    app.parse(static_cast<int>(argv.size()), argv.data());
    r.code = cli::exit_code();
  } catch (const CLI::ParseError& e) {
    r.code = app.exit(e);
  }
  std::fflush(stdout);
  r.out = ::testing::internal::GetCapturedStdout();
  r.err = ::testing::internal::GetCapturedStderr();
  return r;
}

TEST(CliCartridge, InspectText) {
  const CliRun r = run_cli({"cartridge", "inspect", fx("params_bf16.pt")});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("layers:      2\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("kv heads:    2\n"), std::string::npos);
  EXPECT_NE(r.out.find("head_dim:    4\n"), std::string::npos);
  EXPECT_NE(r.out.find("tokens:      8 (3 frozen + 5 trainable)\n"), std::string::npos);
  EXPECT_NE(r.out.find("dtype:       bfloat16\n"), std::string::npos);
  EXPECT_NE(r.out.find("kv bytes:    512 B (512)\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("pickle protocol 2"), std::string::npos);
  EXPECT_NE(r.out.find("token ids:   no\n"), std::string::npos);
  EXPECT_NE(r.out.find("sha256:      " + *sha256_file_hex(fx("params_bf16.pt"))),
            std::string::npos);
}

TEST(CliCartridge, InspectJson) {
  const CliRun r = run_cli({"cartridge", "inspect", "--json", fx("token_ids.pt")});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["num_layers"], 2);
  EXPECT_EQ(j["num_kv_heads"], 2);
  EXPECT_EQ(j["head_dim"], 4);
  EXPECT_EQ(j["num_tokens"], 8);
  EXPECT_EQ(j["num_frozen_tokens"], 3);
  EXPECT_EQ(j["num_trainable_tokens"], 5);
  EXPECT_EQ(j["dtype"], "bfloat16");
  EXPECT_EQ(j["has_token_ids"], true);
  EXPECT_EQ(j["format"], "pt");
  EXPECT_EQ(j["kv_bytes"], 512);
  EXPECT_EQ(j["sha256"], *sha256_file_hex(fx("token_ids.pt")));
  const CliRun n = run_cli({"cartridge", "inspect", "--json", "--no-checksum", fx("token_ids.pt")});
  EXPECT_FALSE(nlohmann::json::parse(n.out).contains("sha256"));
}

TEST(CliCartridge, ErrorsExitWithOne) {
  CliRun r = run_cli({"cartridge", "inspect", fx("evil_os_system.pt")});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("error: "), std::string::npos);
  EXPECT_NE(r.err.find("posix.system"), std::string::npos) << r.err;
  EXPECT_TRUE(r.out.empty());
  r = run_cli({"cartridge", "inspect", "/nonexistent/c.pt"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("/nonexistent/c.pt"), std::string::npos);
  TempDir dir;
  r = run_cli({"cartridge", "convert", fx("params_bf16.pt"), dir.file("x.txt")});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("unknown cartridge extension '.txt'"), std::string::npos) << r.err;
  r = run_cli({"cartridge", "convert", fx("params_bf16.pt"), dir.file("x.pt"), "--dtype", "int4"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("--dtype 'int4'"), std::string::npos);
  r = run_cli({"cartridge", "convert", fx("params_bf16.pt"), dir.file("x.pt"), "--dtype", "int8"});
  EXPECT_EQ(r.code, 1);
  r = run_cli({"cartridge", "convert", fx("params_bf16.pt"), dir.file("x.pt"), "--pt-layout", "x"});
  EXPECT_EQ(r.code, 1);
  r = run_cli({"cartridge", "convert", fx("params_bf16.pt"), fx("params_bf16.pt")});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("same file"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(dir.file("x.pt")));
}

TEST(CliCartridge, ConvertRoundTripAndCast) {
  TempDir dir;
  CliRun r = run_cli({"cartridge", "convert", fx("params_bf16.pt"), dir.file("a.safetensors")});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("-> " + dir.file("a.safetensors") + " (safetensors)"), std::string::npos);
  r = run_cli(
      {"cartridge", "convert", dir.file("a.safetensors"), dir.file("b.pt"), "--dtype", "fp16"});
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cli({"cartridge", "inspect", "--json", dir.file("b.pt")});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["dtype"], "float16");
  EXPECT_EQ(j["num_frozen_tokens"], 3);
  auto c = load_cartridge(dir.file("b.pt"));
  ASSERT_TRUE(c.ok());
  // Values are the fixture formula (exact in fp16).
  for (int l = 0; l < 2; ++l) {
    for (int i = 0; i < 2 * 8 * 4; ++i) {
      const int h = i / 32, t = (i / 4) % 8, d = i % 4;
      EXPECT_EQ(fp16_to_f32(c->values[l].data<uint16_t>()[i]),
                cartserve::testing::fixture_value(1, l, h, t, d));
    }
  }
  r = run_cli(
      {"cartridge", "convert", dir.file("b.pt"), dir.file("c.pt"), "--pt-layout", "tensorlist"});
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cli({"cartridge", "inspect", dir.file("c.pt")});
  EXPECT_NE(r.out.find("trainable_* as list"), std::string::npos) << r.out;
}

TEST(CliCartridge, HelpTexts) {
  CliRun r = run_cli({"cartridge", "--help"});
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("inspect"), std::string::npos);
  EXPECT_NE(r.out.find("convert"), std::string::npos);
  r = run_cli({"cartridge", "convert", "--help"});
  EXPECT_NE(r.out.find("--dtype"), std::string::npos);
  EXPECT_NE(r.out.find("--pt-layout"), std::string::npos);
  r = run_cli({"cartridge", "inspect", "--help"});
  EXPECT_NE(r.out.find("--json"), std::string::npos);
  EXPECT_NE(r.out.find("without executing"), std::string::npos);
}

}  // namespace
}  // namespace cartserve
