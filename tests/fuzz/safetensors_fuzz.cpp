// safetensors on arbitrary bytes: the header (JSON), entries and views, and
// the cartridge reader over the same file (metadata manifest vs tensors).
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "cartridge/cartridge_io.h"
#include "formats/safetensors.h"
#include "fuzz_util.h"

using namespace cartserve;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::quiet_logs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static fuzz::MemFile file;
  const std::string& path = file.write({data, size});
  auto f = SafetensorsFile::open(path);
  if (f.ok()) {
    uint64_t sum = 0;
    for (const SafetensorsEntry& e : f->entries()) {
      if (f->find(e.name) != &e) __builtin_trap();
      if (e.begin > e.end || e.end > size) __builtin_trap();
      const TensorView v = f->view(e);
      const size_t n = e.end - e.begin;
      if (n > 0) {
        // Touch the first and last byte: a view must lie inside the file.
        const auto* p = static_cast<const uint8_t*>(v.data);
        sum += p[0] + p[n - 1];
      }
    }
    (void)sum;
    for (const auto& [k, v] : f->metadata())
      (void)k, (void)v;
  }
  CartridgeFileInfo info;
  auto c = load_cartridge_safetensors(path, &info);
  if (c.ok()) (void)c->validate();
  return 0;
}
