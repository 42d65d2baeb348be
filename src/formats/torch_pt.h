// Reader for torch.save files (the zip format of torch >= 1.6): a zip archive
// `<archive>/data.pkl` (the pickled object), `<archive>/data/<key>` (raw
// little-endian storages), `<archive>/version`, `<archive>/byteorder`, ...
//
// The pickle goes through the restricted unpickler (formats/pickle.h) with an
// allowlist of exactly the globals torch writes for tensors, parameters and
// containers (torch_pt_allowlist()), plus caller-named classes that become
// inert attribute records (NEWOBJ + BUILD, nothing executed). Storages
// (BINPERSID ('storage', <StorageType>, key, location, numel)) resolve to zip
// entries; each tensor node (torch._utils._rebuild_tensor_v2 and friends) is
// decoded into a PtTensor (also tensors and parameters with Python attributes,
// pickled through _rebuild_from_type_v2 / _rebuild_parameter_with_state, whose
// attributes are ignored) with dtype, shape, strides, storage offset and a
// zero-copy span of its storage.
//
// NOTE: every tensor is validated at open: storage entry size == numel *
// element size, ranks <= 16, sizes and strides >= 0, and the furthest element
// addressed by (offset, shape, strides) inside the storage (checked
// arithmetic). A tensor that passes can be read without over-reading.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "formats/pickle.h"
#include "formats/zip_reader.h"

namespace cartserve {

struct PtTensor {
  DType dtype = DType::kF32;
  Shape shape;
  std::vector<int64_t> strides;      // in elements
  int64_t storage_offset = 0;        // in elements
  std::string storage_key;           // data/<key> in the archive
  std::span<const uint8_t> storage;  // the whole storage (numel * element size bytes)
  bool is_parameter = false;         // built by _rebuild_parameter* / Parameter
  bool requires_grad = false;

  int64_t numel() const { return shape_numel(shape); }
  bool is_contiguous() const;
};

struct PtOpenOptions {
  // Extra classes (module.name) accepted as inert attribute records.
  std::vector<std::string> extra_classes;
  // Verify the CRC-32 of every storage that a tensor references (one pass over
  // the data; off for zero-copy inspection of large files).
  bool verify_crc = true;
  pickle::Limits pickle_limits;
  ZipLimits zip_limits;
};

// The allowlist used for torch files: collections.OrderedDict, builtins.set /
// frozenset, torch.Size, torch._utils._rebuild_tensor(_v2),
// _rebuild_parameter(_with_state), torch._tensor._rebuild_from_type_v2 with
// torch.Tensor, torch.nn.parameter.Parameter,
// torch.nn.modules.container.ParameterList, the torch.<Type>Storage classes
// and dtype constants (torch.bfloat16, ...).
pickle::Allowlist torch_pt_allowlist(const std::vector<std::string>& extra_classes = {});

class PtFile {
 public:
  PtFile() = default;
  PtFile(PtFile&&) noexcept = default;
  PtFile& operator=(PtFile&&) noexcept = default;

  static Result<PtFile> open(const std::string& path, const PtOpenOptions& options = {});
  // `bytes` must outlive the PtFile.
  static Result<PtFile> open_bytes(std::span<const uint8_t> bytes, std::string label,
                                   const PtOpenOptions& options = {});

  const pickle::Value& root() const { return doc_.root(); }
  const pickle::Document& document() const { return doc_; }
  // The tensor a value stands for (tensor or parameter node), else nullptr.
  const PtTensor* tensor(const pickle::Value& v) const;
  const std::string& archive_name() const { return archive_name_; }
  const std::string& label() const { return zip_.label(); }
  int pickle_protocol() const { return doc_.protocol(); }
  const std::string& version() const { return version_; }  // content of `version`, trimmed
  size_t tensor_count() const { return tensors_.size(); }

 private:
  Status load(const PtOpenOptions& options);
  Status decode_tensors(const pickle::Value& v, int depth, const std::string& path);

  ZipReader zip_;
  std::string archive_name_;
  std::string version_;
  std::vector<std::vector<uint8_t>> owned_;  // data.pkl / storages that had to be inflated
  pickle::Document doc_;
  std::unordered_map<const pickle::Value*, PtTensor> tensors_;
  struct Storage {
    DType dtype;
    std::string key;
    uint64_t numel;
    std::span<const uint8_t> bytes;
  };
  std::unordered_map<const pickle::Value*, Storage> storages_;
  std::unordered_map<std::string, std::span<const uint8_t>> storage_bytes_;  // key -> bytes
  bool verify_crc_ = true;
};

// Copies `t` (any strides) into `dst`, laid out row-major with `dst_strides`
// (elements), i.e. element idx goes to dst + sum(idx[i] * dst_strides[i]).
// `dst` must hold the furthest element addressed (the caller sizes it).
void pt_copy_strided(const PtTensor& t, void* dst, std::span<const int64_t> dst_strides);

// A contiguous copy of `t` (kResourceExhausted above `max_bytes`).
Result<Tensor> pt_materialize(const PtTensor& t, uint64_t max_bytes = uint64_t{16} << 30);

}  // namespace cartserve
