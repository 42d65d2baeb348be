// safetensors reader (mmap, zero-copy views) and writer; sharded checkpoints
// through model.safetensors.index.json.
// Format: u64 little-endian header size N, N bytes of JSON
// {"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}},
// then the data buffer (offsets relative to its start).
//
// NOTE: offsets, shapes and dtypes are validated at open (inside the buffer,
// size == numel * dtype size, no overlap); views of a valid file never over-read.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/mapped_file.h"
#include "core/status.h"
#include "core/tensor.h"

namespace cartserve {

// safetensors dtype names: "F32", "F16", "BF16", "F64", "I8", "U8", "I16", "I32", "I64", "BOOL".
const char* safetensors_dtype_name(DType dtype);
// nullopt for any other name (also for valid names we do not read, e.g. "F8_E4M3").
std::optional<DType> parse_safetensors_dtype(std::string_view name);

struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::kF32;
  Shape shape;
  uint64_t begin = 0;  // offsets into the data buffer
  uint64_t end = 0;
};

class SafetensorsFile {
 public:
  static Result<SafetensorsFile> open(const std::string& path);

  const std::vector<SafetensorsEntry>& entries() const { return entries_; }  // in data order
  const SafetensorsEntry* find(std::string_view name) const;
  // Borrows the mapping: valid while this file lives. The data pointer is
  // aligned to the element size when the writer keeps offsets aligned (ours
  // and the reference writer do); consumers of foreign files must not assume it.
  TensorView view(const SafetensorsEntry& e) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return file_.path(); }

 private:
  MappedFile file_;
  uint64_t data_start_ = 0;
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, size_t, std::less<>> index_;
  std::map<std::string, std::string> metadata_;
};

// A checkpoint folder: model.safetensors, or shards listed by
// model.safetensors.index.json ("weight_map": {tensor: file}).
class SafetensorsSet {
 public:
  static Result<SafetensorsSet> open_dir(const std::string& dir);

  // kNotFound names the tensor and the folder.
  Result<TensorView> get(std::string_view name) const;
  bool contains(std::string_view name) const;
  std::vector<std::string> names() const;  // sorted
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t, std::less<>> where_;  // tensor -> index in files_
};

// Writes a safetensors file atomically (temporary file + rename), streaming
// the tensor data (no second copy in memory). Header: JSON with
// "__metadata__" first (when not empty), then the tensors in the given order,
// padded with spaces to a multiple of 8 bytes as the reference writer does.
// Data: contiguous, larger element sizes first (stable), so every tensor is
// aligned to its element size. kInvalidArgument for an empty, duplicate or
// reserved ("__metadata__") name, a name that is not UTF-8, or a null view.
Status write_safetensors(const std::string& path,
                         const std::vector<std::pair<std::string, TensorView>>& tensors,
                         const std::map<std::string, std::string>& metadata = {});

}  // namespace cartserve
