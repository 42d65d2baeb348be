// Writer for torch.save-compatible files. Values (dicts with str keys, lists,
// tuples, scalars, tensors, nn.Parameters, nn.ParameterLists) are pickled
// with protocol 2 exactly as torch.save(obj) pickles them, storages go to
// `<archive>/data/<key>` (one per tensor, contiguous, 64-byte aligned), and
// the records torch writes are added: data.pkl, .format_version,
// .storage_alignment, byteorder, data/*, version, .data/serialization_id.
//
// What torch.load accepts:
//  - plain containers of tensors: weights_only=True and weights_only=False;
//  - ParameterList: weights_only=False, or weights_only=True after
//    torch.serialization.add_safe_globals([torch.nn.ParameterList]) (the same
//    as for a file torch.save itself wrote; the pickled module state is the
//    one torch 2.x writes).
// The output is deterministic (fixed timestamps, serialization id derived from
// the content), so equal inputs give byte-identical files.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"

namespace cartserve {

struct PtValue {
  enum class Kind {
    kNone,
    kBool,
    kInt,
    kFloat,
    kStr,
    kList,
    kTuple,
    kDict,
    kTensor,
    kParameterList
  };
  Kind kind = Kind::kNone;
  bool boolean = false;
  int64_t integer = 0;
  double real = 0.0;
  std::string text;
  std::vector<PtValue> items;                            // kList, kTuple, kParameterList
  std::vector<std::pair<std::string, PtValue>> entries;  // kDict (str keys, in order)
  TensorView tensor;           // kTensor: contiguous data, shape as it will be saved
  bool parameter = false;      // kTensor: save as nn.Parameter
  bool requires_grad = false;  // kTensor

  static PtValue none() { return {}; }
  static PtValue from_bool(bool v);
  static PtValue from_int(int64_t v);
  static PtValue from_float(double v);
  static PtValue from_str(std::string v);
  static PtValue list(std::vector<PtValue> items = {});
  static PtValue tuple(std::vector<PtValue> items = {});
  static PtValue dict(std::vector<std::pair<std::string, PtValue>> entries = {});
  static PtValue from_tensor(TensorView t, bool requires_grad = false);
  static PtValue parameter_of(TensorView t, bool requires_grad);
  // items must be parameters (or tensors, which are saved as parameters).
  static PtValue parameter_list(std::vector<PtValue> params);
};

struct PtSaveOptions {
  // Archive prefix of the records; empty: the file name without its extension
  // (as torch.save names it), "archive" for in-memory output.
  std::string archive_name;
};

Status save_torch_pt(const std::string& path, const PtValue& root,
                     const PtSaveOptions& options = {});
// The same file as bytes.
Result<std::vector<uint8_t>> torch_pt_bytes(const PtValue& root, const PtSaveOptions& options = {});

}  // namespace cartserve
