// safetensors writer: builds the JSON header, then streams tensor data into a
// temporary file beside the target, fsyncs it and renames it into place, so a
// reader never sees a partial file and no copy of the data is made in memory.
#include <algorithm>
#include <nlohmann/json.hpp>
#include <numeric>
#include <set>

#include "core/atomic_file.h"
#include "formats/safetensors.h"

namespace cartserve {

Status write_safetensors(const std::string& path,
                         const std::vector<std::pair<std::string, TensorView>>& tensors,
                         const std::map<std::string, std::string>& metadata) {
  using nlohmann::ordered_json;
  // Validate names and views first: nothing touches the disk on bad input.
  std::set<std::string_view> seen;
  for (const auto& [name, v] : tensors) {
    if (name.empty() || name == "__metadata__") {
      return make_error(ErrorCode::kInvalidArgument, "write '{}': invalid tensor name '{}'", path,
                        name);
    }
    if (!seen.insert(name).second) {
      return make_error(ErrorCode::kInvalidArgument, "write '{}': duplicate tensor name '{}'", path,
                        name);
    }
    for (int64_t d : v.shape) {
      if (d < 0) {
        return make_error(ErrorCode::kInvalidArgument, "write '{}': tensor '{}' has shape {}", path,
                          name, shape_to_string(v.shape));
      }
    }
    if (v.nbytes() > 0 && v.data == nullptr) {
      return make_error(ErrorCode::kInvalidArgument, "write '{}': tensor '{}' has no data", path,
                        name);
    }
  }

  // Data order: element size descending, stable; offsets contiguous.
  std::vector<size_t> order(tensors.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return dtype_size(tensors[a].second.dtype) > dtype_size(tensors[b].second.dtype);
  });
  std::vector<std::pair<uint64_t, uint64_t>> offsets(tensors.size());
  uint64_t pos = 0;
  for (size_t i : order) {
    const uint64_t n = tensors[i].second.nbytes();
    offsets[i] = {pos, pos + n};
    pos += n;
  }

  ordered_json header = ordered_json::object();
  if (!metadata.empty()) {
    ordered_json meta = ordered_json::object();
    for (const auto& [k, v] : metadata)
      meta[k] = v;
    header["__metadata__"] = std::move(meta);
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorView& v = tensors[i].second;
    ordered_json e = ordered_json::object();
    e["dtype"] = safetensors_dtype_name(v.dtype);
    e["shape"] = v.shape;
    e["data_offsets"] = {offsets[i].first, offsets[i].second};
    header[tensors[i].first] = std::move(e);
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    return make_error(ErrorCode::kInvalidArgument, "write '{}': header not encodable: {}", path,
                      e.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');  // data starts 8-byte aligned
  const uint64_t header_len = text.size();

  CS_ASSIGN_OR_RETURN(AtomicFile f, AtomicFile::create(path));
  CS_RETURN_IF_ERROR(f.write(&header_len, 8));
  CS_RETURN_IF_ERROR(f.write(text.data(), text.size()));
  for (size_t i : order) {
    const TensorView& v = tensors[i].second;
    CS_RETURN_IF_ERROR(f.write(v.data, v.nbytes()));
  }
  return f.commit();
}

}  // namespace cartserve
