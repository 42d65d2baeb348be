// `cartserve cartridge inspect FILE` and `cartserve cartridge convert IN OUT`.
// Errors print one line to stderr and exit with code 1.
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "cartridge/cartridge_io.h"
#include "core/progress.h"
#include "core/sha256.h"
#include "server/cli.h"

namespace cartserve::cli {

namespace {

struct InspectArgs {
  std::string file;
  bool json = false;
  bool no_checksum = false;
};

struct ConvertArgs {
  std::string in;
  std::string out;
  std::string dtype;
  std::string pt_layout = "parameterlist";
};

int fail(const Status& s) {
  std::fprintf(stderr, "error: %s\n", s.message().c_str());
  return 1;
}

int run_inspect(const InspectArgs& a) {
  CartridgeFileInfo info;
  auto data = load_cartridge(a.file, &info);
  if (!data.ok()) return fail(data.status());
  std::string checksum;
  if (!a.no_checksum) {
    auto sum = sha256_file_hex(a.file);
    if (!sum.ok()) return fail(sum.status());
    checksum = *sum;
  }
  const CartridgeData& c = *data;
  const uint64_t kv_bytes = c.nbytes();
  if (a.json) {
    nlohmann::json j = {
        {"file", a.file},
        {"format", cartridge_format_name(info.format)},
        {"layout", info.layout},
        {"num_layers", c.num_layers},
        {"num_kv_heads", c.num_kv_heads},
        {"head_dim", c.head_dim},
        {"num_tokens", c.num_tokens},
        {"num_frozen_tokens", c.num_frozen_tokens},
        {"num_trainable_tokens", c.num_tokens - c.num_frozen_tokens},
        {"dtype", dtype_name(c.dtype)},
        {"kv_bytes", kv_bytes},
        {"file_bytes", info.file_bytes},
        {"has_token_ids", !c.token_ids.empty()},
    };
    if (info.format == CartridgeFormat::kTorchPt) j["pickle_protocol"] = info.pickle_protocol;
    if (!a.no_checksum) j["sha256"] = checksum;
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  std::string format = cartridge_format_name(info.format);
  if (info.format == CartridgeFormat::kTorchPt) {
    format += fmt::format(" (torch.save zip, pickle protocol {})", info.pickle_protocol);
  }
  std::printf("file:        %s\n", a.file.c_str());
  std::printf("format:      %s\n", format.c_str());
  std::printf("layout:      %s\n", info.layout.c_str());
  std::printf("layers:      %d\n", c.num_layers);
  std::printf("kv heads:    %d\n", c.num_kv_heads);
  std::printf("head_dim:    %d\n", c.head_dim);
  std::printf("tokens:      %d (%d frozen + %d trainable)\n", c.num_tokens, c.num_frozen_tokens,
              c.num_tokens - c.num_frozen_tokens);
  std::printf("dtype:       %s\n", dtype_name(c.dtype));
  std::printf("kv bytes:    %s (%llu)\n", format_bytes(kv_bytes).c_str(),
              static_cast<unsigned long long>(kv_bytes));
  std::printf("file bytes:  %s (%llu)\n", format_bytes(info.file_bytes).c_str(),
              static_cast<unsigned long long>(info.file_bytes));
  if (!a.no_checksum) std::printf("sha256:      %s\n", checksum.c_str());
  if (c.token_ids.empty()) {
    std::printf("token ids:   no\n");
  } else {
    std::printf("token ids:   yes (%zu)\n", c.token_ids.size());
  }
  return 0;
}

int run_convert(const ConvertArgs& a) {
  auto out_format = cartridge_format_for_path(a.out);
  if (!out_format.ok()) return fail(out_format.status());
  std::error_code ec;
  if (std::filesystem::equivalent(a.in, a.out, ec)) {
    return fail(
        make_error(ErrorCode::kInvalidArgument, "input and output are the same file '{}'", a.in));
  }
  PtCartridgeLayout layout = PtCartridgeLayout::kParameterList;
  if (a.pt_layout == "tensorlist") {
    layout = PtCartridgeLayout::kTensorList;
  } else if (a.pt_layout != "parameterlist") {
    return fail(make_error(ErrorCode::kInvalidArgument,
                           "--pt-layout '{}' (expected parameterlist or tensorlist)", a.pt_layout));
  }
  CartridgeFileInfo info;
  auto data = load_cartridge(a.in, &info);
  if (!data.ok()) return fail(data.status());
  CartridgeData c = std::move(*data);
  if (!a.dtype.empty()) {
    const auto dt = parse_dtype(a.dtype);
    if (!dt) {
      return fail(make_error(ErrorCode::kInvalidArgument,
                             "--dtype '{}' (expected bf16, fp16 or fp32)", a.dtype));
    }
    auto cast = cast_cartridge(c, *dt);
    if (!cast.ok()) return fail(cast.status());
    c = std::move(*cast);
  }
  const Status s = *out_format == CartridgeFormat::kTorchPt ? save_cartridge_pt(a.out, c, layout)
                                                            : save_cartridge_safetensors(a.out, c);
  if (!s.ok()) return fail(s);
  std::printf(
      "%s (%s) -> %s (%s): %d layers, %d kv heads, head_dim %d, %d tokens (%d frozen), "
      "%s\n",
      a.in.c_str(), cartridge_format_name(info.format), a.out.c_str(),
      cartridge_format_name(*out_format), c.num_layers, c.num_kv_heads, c.head_dim, c.num_tokens,
      c.num_frozen_tokens, dtype_name(c.dtype));
  return 0;
}

}  // namespace

void register_cartridge(CLI::App& app) {
  auto* sub = app.add_subcommand(
      "cartridge",
      "Inspect and convert cartridge files (precomputed KV caches: .pt, .safetensors)");
  sub->require_subcommand(1);

  auto inspect_args = std::make_shared<InspectArgs>();
  auto* inspect = sub->add_subcommand(
      "inspect",
      "Load a cartridge (.pt from torch.save, read without executing its pickle; or "
      "cartserve .safetensors) and print layers, kv heads, head_dim, tokens (frozen and "
      "trainable), dtype, sizes, SHA-256 of the file and whether token ids are stored");
  inspect->add_option("FILE", inspect_args->file, "Cartridge file (.pt, .pth, .safetensors)")
      ->required();
  inspect->add_flag("--json", inspect_args->json, "Print one JSON object instead of text");
  inspect->add_flag("--no-checksum", inspect_args->no_checksum,
                    "Skip the SHA-256 of the file (faster on large files)");
  inspect->callback([inspect_args] { set_exit_code(run_inspect(*inspect_args)); });

  auto convert_args = std::make_shared<ConvertArgs>();
  auto* convert = sub->add_subcommand(
      "convert",
      "Convert a cartridge between .pt and .safetensors (the format of OUT comes from its "
      "extension: .pt/.pth/.bin/.torch or .safetensors); OUT is replaced atomically");
  convert->add_option("IN", convert_args->in, "Input cartridge (.pt or .safetensors)")->required();
  convert->add_option("OUT", convert_args->out, "Output cartridge (.pt or .safetensors)")
      ->required();
  convert->add_option("--dtype", convert_args->dtype,
                      "Cast keys/values to bf16, fp16 or fp32 (default: keep)");
  convert
      ->add_option("--pt-layout", convert_args->pt_layout,
                   "For .pt output: 'parameterlist' (as the Cartridges training code saves; "
                   "default) or 'tensorlist' (plain lists, loadable with "
                   "torch.load(weights_only=True) without extra safe globals)")
      ->capture_default_str();
  convert->callback([convert_args] { set_exit_code(run_convert(*convert_args)); });
}

}  // namespace cartserve::cli
