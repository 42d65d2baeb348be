#!/usr/bin/env python3
"""Reference values of the chained prefix-cache block hashes (src/kv/prefix_hash.h).

Independent of the C++ code: the byte layout is rebuilt here from its spec
(little-endian; root = XXH3-128("cartserve-prefix-root" || int64 e || salt);
block = XXH3-128(parent.lo || parent.hi || int32 token ids)) with the Python
`xxhash` package. Deterministic; writes tests/fixtures/kv/prefix_hash.json.
"""
import json
import pathlib
import struct

import xxhash

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "kv" / "prefix_hash.json"


def h128(data: bytes):
    d = xxhash.xxh3_128_intdigest(data)
    return d & ((1 << 64) - 1), d >> 64


def root(salt: bytes, num_external: int):
    return h128(b"cartserve-prefix-root" + struct.pack("<q", num_external) + salt)


def block(parent, tokens):
    return h128(struct.pack("<QQ", *parent) + struct.pack(f"<{len(tokens)}i", *tokens))


def chain(salt, num_external, tokens, leading_offset, block_size):
    parent = root(salt, num_external)
    out, start = [], 0
    length = block_size - leading_offset
    while start + length <= len(tokens):
        parent = block(parent, tokens[start:start + length])
        out.append(parent)
        start += length
        length = block_size
    return out


def hexs(h):
    return [f"{h[0]:016x}", f"{h[1]:016x}"]


def main():
    tokens = [(i * 7919 + 13) % 50000 for i in range(37)] + [-5, 2**31 - 1]
    cases = []
    for salt, e, off, bs in [(b"", 0, 0, 4), (b"", 0, 0, 16), (b"cartridge-sha256:abc", 0, 0, 4),
                             (b"cartridge-sha256:abc", 21, 1, 4), (b"\x00\xff salt", 5, 3, 8)]:
        cases.append({
            "salt_hex": salt.hex(),
            "num_external_tokens": e,
            "leading_offset": off,
            "block_size": bs,
            "root": hexs(root(salt, e)),
            "blocks": [hexs(h) for h in chain(salt, e, tokens, off, bs)],
        })
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"tokens": tokens, "cases": cases}, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
