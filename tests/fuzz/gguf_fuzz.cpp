// GGUF on arbitrary bytes: header, metadata (every key through every typed
// getter), tensor infos and data (dequantized), the model config and the
// tokenizer built from the metadata.
#include <cstddef>
#include <cstdint>

#include "formats/gguf.h"
#include "fuzz_util.h"
#include "model/config.h"
#include "tokenizer/tokenizer.h"

using namespace cartserve;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::quiet_logs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static fuzz::MemFile file;
  auto g = GgufFile::open(file.write({data, size}));
  if (!g.ok()) return 0;
  for (const std::string& k : g->keys()) {
    if (g->find(k) == nullptr) __builtin_trap();
    (void)g->get_string(k);
    (void)g->get_int(k);
    (void)g->get_float(k);
    (void)g->get_bool(k);
    (void)g->get_string_array(k);
    (void)g->get_int_array(k);
    (void)g->get_float_array(k);
  }
  for (const GgufTensorInfo& t : g->tensors()) {
    if (g->find_tensor(t.name) == nullptr) __builtin_trap();
    const auto bytes = g->tensor_bytes(t);
    if (bytes.size() != t.nbytes) __builtin_trap();
    if (t.nbytes <= (size_t{1} << 20)) {
      auto f = g->load_f32(t);
      if (f.ok() && f->numel() != shape_numel(t.shape())) __builtin_trap();
    }
  }
  (void)config_from_gguf(*g);
  if (auto tok = read_gguf_tokenizer_data(*g); tok.ok()) {
    if (auto t = Tokenizer::from_gguf(*tok); t.ok()) {
      const auto ids = t->encode("Hello, world! <|im_start|> 123");
      (void)t->decode(ids);
    }
  }
  return 0;
}
