// torch .pt files (zip + restricted pickle + storages) on arbitrary bytes:
// PtFile::open_bytes, every tensor read through pt_materialize, and the
// cartridge reader on the same bytes.
#include <cstddef>
#include <cstdint>

#include "cartridge/cartridge_io.h"
#include "formats/torch_pt.h"
#include "fuzz_util.h"

using namespace cartserve;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::quiet_logs();
  return 0;
}

namespace {

// Visits every value reachable from `v` (bounded: the tree may hold cycles).
void visit(const PtFile& f, const pickle::Value& v, int depth, int& budget) {
  if (depth > 32 || --budget < 0) return;
  if (const PtTensor* t = f.tensor(v)) {
    (void)t->is_contiguous();
    auto m = pt_materialize(*t, uint64_t{1} << 24);
    if (m.ok() && m->numel() != t->numel()) __builtin_trap();
    return;
  }
  for (const pickle::Value* c : v.items)
    visit(f, *c, depth + 1, budget);
  for (const auto& [k, c] : v.entries) {
    visit(f, *k, depth + 1, budget);
    visit(f, *c, depth + 1, budget);
  }
  if (v.args) visit(f, *v.args, depth + 1, budget);
  if (v.state) visit(f, *v.state, depth + 1, budget);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::span<const uint8_t> bytes(data, size);
  PtOpenOptions opts;
  opts.extra_classes = cartridge_object_classes();
  opts.zip_limits.max_read_bytes = uint64_t{1} << 26;
  auto f = PtFile::open_bytes(bytes, "fuzz.pt", opts);
  if (f.ok()) {
    int budget = 100000;
    visit(*f, f->root(), 0, budget);
  }
  CartridgeFileInfo info;
  auto c = load_cartridge_pt_bytes(bytes, "fuzz.pt", &info);
  if (c.ok()) (void)c->validate();
  return 0;
}
