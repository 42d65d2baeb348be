// The cartridge manifest (JSON) on arbitrary text: parse + validate, then the
// properties: what parses writes back and parses to the same manifest, and
// realigning to another block size keeps it valid.
#include <cstddef>
#include <cstdint>

#include "cartridge/manifest.h"
#include "fuzz_util.h"

using namespace cartserve;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::quiet_logs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto m = parse_manifest(fuzz::as_text(data, size));
  if (!m.ok()) return 0;
  if (!m->validate().ok()) __builtin_trap();  // parse_manifest validates
  const std::string text = manifest_to_string(*m);
  auto again = parse_manifest(text);
  if (!again.ok() || !(*again == *m)) __builtin_trap();
  (void)m->kv_bytes();
  ServedModelInfo model{"org/model", 2, 2, 64};
  (void)m->model_mismatches(model);
  (void)m->validate_against_model(model);
  for (int32_t bs : {1, 16, 256}) {
    (void)m->validate_block_size(bs);
    const CartridgeManifest r = m->realigned(bs);
    if (r.num_tokens_aligned > r.num_tokens_raw || r.num_blocks * bs != r.num_tokens_aligned) {
      __builtin_trap();
    }
  }
  return 0;
}
