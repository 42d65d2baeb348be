#include "core/sha256.h"

#include <gtest/gtest.h>

#include <string>

namespace cartserve {
namespace {

// Vectors from FIPS 180-4 examples / NIST CAVS.
TEST(Sha256, KnownVectors) {
  EXPECT_EQ(sha256_hex(std::string_view("")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex(std::string_view("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(
      sha256_hex(std::string_view("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")),
      "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

TEST(Sha256, StreamingEqualsOneShot) {
  std::string data;
  for (int i = 0; i < 1000; ++i)
    data += static_cast<char>(i * 7 + 3);
  Sha256 s;
  for (size_t off = 0; off < data.size(); off += 37)
    s.update(data.substr(off, 37));
  EXPECT_EQ(Sha256::hex(s.finish()), sha256_hex(std::string_view(data)));
  Sha256 million;
  const std::string a(1000, 'a');
  for (int i = 0; i < 1000; ++i)
    million.update(a);
  EXPECT_EQ(Sha256::hex(million.finish()),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

}  // namespace
}  // namespace cartserve
