// The restricted unpickler on arbitrary bytes, with the allowlist torch files
// get and a persistent_load that accepts any id (so BINPERSID paths run).
// Properties: no crash, leak or runaway input; a refused stream is an error
// value; an accepted one renders.
#include <cstddef>
#include <cstdint>

#include "cartridge/cartridge_io.h"
#include "formats/pickle.h"
#include "formats/torch_pt.h"
#include "fuzz_util.h"

using namespace cartserve;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::quiet_logs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const pickle::Allowlist allowlist = torch_pt_allowlist(cartridge_object_classes());
  pickle::Options opts;
  opts.allowlist = &allowlist;
  opts.label = "fuzz";
  if (size > 0 && (data[0] & 1)) {
    opts.persistent_load = [](pickle::Document& doc,
                              const pickle::Value& pid) -> Result<const pickle::Value*> {
      if (pid.kind == pickle::Kind::kNone) {
        return Status(ErrorCode::kCorrupt, "persistent id None refused");
      }
      pickle::Value* v = doc.make(pickle::Kind::kStr);
      v->text = pid.describe();
      return v;
    };
  }
  auto doc = pickle::unpickle({data, size}, opts);
  if (doc.ok()) {
    const std::string s = pickle::to_debug_string(doc->root());
    if (s.empty()) __builtin_trap();  // a value always renders as something
    (void)doc->root().describe();
  } else if (doc.status().message().empty()) {
    __builtin_trap();  // refusals say why
  }
  return 0;
}
