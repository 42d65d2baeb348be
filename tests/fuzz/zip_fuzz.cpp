// The zip reader on arbitrary bytes: open_bytes, then every entry read
// (STORED spans and DEFLATE inflation with its CRC check) and verified.
#include <cstddef>
#include <cstdint>

#include "formats/zip_reader.h"
#include "fuzz_util.h"

using namespace cartserve;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::quiet_logs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ZipLimits limits;
  limits.max_read_bytes = uint64_t{1} << 26;
  auto zip = ZipReader::open_bytes({data, size}, "fuzz.zip", limits);
  if (!zip.ok()) return 0;
  for (const ZipEntry& e : zip->entries()) {
    if (zip->find(e.name) != &e) __builtin_trap();  // names are unique
    if (e.data_offset > size || e.compressed_size > size - e.data_offset) __builtin_trap();
    if (auto span = zip->stored_span(e); span.ok()) {
      if (span->size() != e.compressed_size) __builtin_trap();
      (void)zip->verify_crc(e);
    }
    auto bytes = zip->read(e);
    if (bytes.ok() && bytes->size() != e.uncompressed_size) __builtin_trap();
  }
  return 0;
}
