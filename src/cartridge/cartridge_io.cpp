// Format detection, dispatch and dtype casting for cartridge files; the
// formats themselves are in cartridge_pt.cpp and cartridge_safetensors.cpp.
#include "cartridge/cartridge_io.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <new>

namespace cartserve {

const char* cartridge_format_name(CartridgeFormat f) {
  return f == CartridgeFormat::kTorchPt ? "pt" : "safetensors";
}

Result<CartridgeFormat> cartridge_format_for_path(const std::string& path) {
  std::string ext = std::filesystem::path(path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (ext == ".pt" || ext == ".pth" || ext == ".bin" || ext == ".torch") {
    return CartridgeFormat::kTorchPt;
  }
  if (ext == ".safetensors") return CartridgeFormat::kSafetensors;
  return make_error(ErrorCode::kInvalidArgument,
                    "'{}': unknown cartridge extension '{}' (expected .pt, .pth, .bin, .torch "
                    "or .safetensors)",
                    path, ext);
}

Result<CartridgeData> load_cartridge(const std::string& path, CartridgeFileInfo* info,
                                     const CartridgeLoadOptions& options) {
  // Sniff the first bytes: torch.save files are zip archives ("PK\3\4").
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) {
    std::error_code ec;
    const bool exists = std::filesystem::exists(path, ec);
    return make_error(exists ? ErrorCode::kIo : ErrorCode::kNotFound, "cannot open cartridge '{}'",
                      path);
  }
  unsigned char magic[4] = {0, 0, 0, 0};
  const size_t n = std::fread(magic, 1, 4, f);
  std::fclose(f);
  if (n == 0) return make_error(ErrorCode::kCorrupt, "cartridge '{}' is empty", path);
  if (n == 4 && magic[0] == 'P' && magic[1] == 'K' && magic[2] == 3 && magic[3] == 4) {
    return load_cartridge_pt(path, info, options);
  }
  auto by_ext = cartridge_format_for_path(path);
  if (by_ext.ok() && *by_ext == CartridgeFormat::kTorchPt) {
    return make_error(ErrorCode::kCorrupt,
                      "'{}' is not a zip archive (torch.save format); legacy (pre-1.6) torch "
                      "files are not supported",
                      path);
  }
  return load_cartridge_safetensors(path, info);
}

Status save_cartridge(const std::string& path, const CartridgeData& data) {
  CS_ASSIGN_OR_RETURN(CartridgeFormat fmt, cartridge_format_for_path(path));
  return fmt == CartridgeFormat::kTorchPt ? save_cartridge_pt(path, data)
                                          : save_cartridge_safetensors(path, data);
}

CartridgeLoader cartridge_file_loader(const CartridgeLoadOptions& options) {
  return [options](const std::string& path) { return load_cartridge(path, nullptr, options); };
}

const std::vector<std::string>& cartridge_object_classes() {
  static const std::vector<std::string> classes = {
      "cartridges.cache.TrainableCache",  // TrainableCache(nn.Module) of HazyResearch/cartridges
      "cartridges.cache.AttnConfig",      // its `config` attribute (a dataclass)
  };
  return classes;
}

Result<CartridgeData> cast_cartridge(const CartridgeData& data, DType dtype) {
  if (dtype != DType::kF32 && dtype != DType::kF16 && dtype != DType::kBF16) {
    return make_error(ErrorCode::kUnsupported, "cartridge dtype {} (bf16, fp16 or fp32 only)",
                      dtype_name(dtype));
  }
  CartridgeData out = data;
  out.dtype = dtype;
  try {
    for (auto& t : out.keys)
      t = t.to(dtype);
    for (auto& t : out.values)
      t = t.to(dtype);
  } catch (const std::bad_alloc&) {
    return make_error(ErrorCode::kResourceExhausted, "out of memory casting a cartridge to {}",
                      dtype_name(dtype));
  }
  return out;
}

}  // namespace cartserve
