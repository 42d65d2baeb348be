// `cartserve cartridge inspect FILE`, `cartserve cartridge convert IN OUT` and
// `cartserve cartridge build MODEL --text FILE -o OUT`.
// Errors print one line to stderr and exit with code 1.
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "cartridge/cartridge_id.h"
#include "cartridge/cartridge_io.h"
#include "cartridge/manifest.h"
#include "core/mapped_file.h"
#include "core/progress.h"
#include "core/sha256.h"
#include "model/model.h"
#include "server/cli.h"
#include "server/serving_stack.h"

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

struct BuildArgs {
  std::string model;
  std::string text_file;
  std::string out;
  std::string cartridge_id;
  std::string dtype = "bf16";
  bool raw = false;
  bool no_manifest = false;
  int block_size = 16;
  std::string device = "cpu";
  int32_t tensor_parallel_size = 1;
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

// "dir/doc.pt" -> "dir/doc.manifest.json"
std::string manifest_path_for(const std::string& out) {
  std::filesystem::path p(out);
  return (p.parent_path() / (p.stem().string() + ".manifest.json")).string();
}

int run_build(const BuildArgs& a) {
  auto dtype = parse_dtype(a.dtype);
  if (!dtype || (*dtype != DType::kBF16 && *dtype != DType::kF16 && *dtype != DType::kF32)) {
    return fail(Status(ErrorCode::kInvalidArgument, "--dtype must be bf16, fp16 or fp32"));
  }
  if (auto f = cartridge_format_for_path(a.out); !f.ok()) return fail(f.status());
  if (!a.no_manifest) {
    // Checked before the model is loaded: the id (given, or the output's name).
    const std::string id =
        a.cartridge_id.empty() ? std::filesystem::path(a.out).stem().string() : a.cartridge_id;
    Status valid = validate_cartridge_id(
        id, a.cartridge_id.empty() ? "the id taken from the output name" : "--id");
    if (!valid.ok()) return fail(valid);
  }
  auto text = read_file(a.text_file);
  if (!text.ok()) return fail(text.status());
  ServeOptions so;
  so.model = a.model;
  so.device = a.device;
  so.tensor_parallel_size = a.tensor_parallel_size;
  if (auto st = so.validate(); !st.ok()) return fail(st);
  auto model = load_model_for(so);
  if (!model.ok()) return fail(model.status());
  CartridgeBuildOptions o;
  o.raw = a.raw;
  o.dtype = *dtype;
  o.device = a.device;
  o.tensor_parallel_size = a.tensor_parallel_size;
  auto data = build_cartridge(**model, *text, o);
  if (!data.ok()) return fail(data.status());
  if (auto st = save_cartridge(a.out, *data); !st.ok()) return fail(st);
  std::string manifest_note;
  if (!a.no_manifest) {
    ManifestOptions mo;
    mo.cartridge_id = a.cartridge_id;
    mo.model_id = (*model)->config.model_id;
    mo.block_size = a.block_size;
    mo.source_document = a.text_file;
    auto m = manifest_from_cartridge(*data, a.out, mo);
    if (!m.ok()) return fail(m.status());
    const std::string mpath = manifest_path_for(a.out);
    if (auto st = write_manifest(mpath, *m); !st.ok()) return fail(st);
    manifest_note = " and " + mpath;
  }
  std::printf("built cartridge %s%s: %d tokens (%s), %d layers x %d kv heads x %d, %s, %s\n",
              a.out.c_str(), manifest_note.c_str(), data->num_tokens,
              a.raw ? "raw text" : "chat system turn", data->num_layers, data->num_kv_heads,
              data->head_dim, dtype_name(data->dtype), format_bytes(data->nbytes()).c_str());
  return 0;
}

}  // namespace

void register_cartridge(CLI::App& app) {
  auto* sub = app.add_subcommand(
      "cartridge",
      "Build, inspect and convert cartridge files (precomputed KV caches: .pt, .safetensors)");
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

  auto build_args = std::make_shared<BuildArgs>();
  auto* build = sub->add_subcommand(
      "build",
      "Build a prefilled cartridge from a document: the model's KV cache over the text, with "
      "the token ids stored (the canary of the reference system)");
  build->add_option("MODEL", build_args->model, "Model: a .gguf file or a Hugging Face folder")
      ->required();
  build->add_option("--text", build_args->text_file, "The document (UTF-8 text file)")->required();
  build
      ->add_option("-o,--output", build_args->out,
                   "Output cartridge (.pt or .safetensors, by extension); a manifest is written "
                   "beside it as <name>.manifest.json")
      ->required();
  build->add_option("--id", build_args->cartridge_id,
                    "cartridge_id in the manifest (default: the output name)");
  build->add_option("--dtype", build_args->dtype, "bf16 (default), fp16 or fp32")
      ->capture_default_str();
  build->add_flag("--raw", build_args->raw,
                  "Take the text as is instead of wrapping it as the system turn of the chat "
                  "template");
  build
      ->add_option("--block-size", build_args->block_size,
                   "Block size recorded in the manifest (the server's --block-size)")
      ->capture_default_str();
  build->add_flag("--no-manifest", build_args->no_manifest, "Do not write the manifest");
  build->add_option("--device", build_args->device, "Where the document is prefilled: cpu or cuda")
      ->default_val("cpu")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  build
      ->add_option("--tensor-parallel-size", build_args->tensor_parallel_size,
                   "Ranks the prefill is sharded over: 1, 2, 4 or 8 (the file is whole)")
      ->default_val(1)
      ->check(CLI::PositiveNumber);
  build->callback([build_args] { set_exit_code(run_build(*build_args)); });
}

}  // namespace cartserve::cli
