#!/usr/bin/env python3
"""Fixtures for tests/unit/formats, made by independent references.

GGUF files are written by gguf-py (GGUFWriter) and their expected fp32 values
come from gguf-py's own dequantizer (gguf.quants.dequantize); safetensors
files are written by the Python `safetensors` package (torch API). Nothing
here uses cartserve code, except the last step, which checks that a file
written by cartserve's writer (committed by the C++ test, see
cartserve_written.safetensors below) loads in Python safetensors.

Outputs (tests/fixtures/formats/):
  types.gguf / types.gguf.json      every metadata value type, one tensor per
                                    ggml type we read (+ one we do not: Q5_K)
  smollm2_ref.json                  key metadata, all tensor infos and a few
                                    dequantized rows of the real test model
  st_types.safetensors / .json      every safetensors dtype we read
  st_sharded/                       two shards + model.safetensors.index.json
  st_single/model.safetensors       a one-file checkpoint folder

Run again any time: /work/venv-tools/bin/python tools/make_formats_fixtures.py
Deterministic (fixed seeds). The real-model part needs the SmolLM2 GGUF
(scripts/setup.sh); pass --skip-model to leave smollm2_ref.json as it is.
"""

import argparse
import json
import os
import struct
import sys
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType as QT
from gguf import GGUFReader, GGUFValueType, GGUFWriter
from gguf import quants as gq
from safetensors import safe_open
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "formats"
MODEL = Path(
    os.environ.get(
        "CARTSERVE_TEST_MODEL",
        Path.home() / ".cache/cartserve/models/SmolLM2-135M-Instruct.Q4_1.gguf",
    )
)


def f32_list(a):
    # float32 -> Python float (a double) is exact; json writes the shortest
    # repr that parses back to the same double, hence to the same float32.
    return [float(x) for x in np.asarray(a, dtype=np.float32).reshape(-1)]


# ---------------------------------------------------------------- GGUF types


def k_quant_blocks(rng, qtype, n_blocks):
    """Random K-quant super-blocks with small, finite fp16 scales."""
    if qtype == QT.Q4_K:  # [d f16][dmin f16][scales 12][qs 128]
        blocks = rng.integers(0, 256, size=(n_blocks, 144), dtype=np.uint8)
        d = rng.uniform(1e-3, 2e-2, size=n_blocks).astype(np.float16)
        dmin = rng.uniform(1e-3, 2e-2, size=n_blocks).astype(np.float16)
        blocks[:, 0:2] = d.view(np.uint8).reshape(n_blocks, 2)
        blocks[:, 2:4] = dmin.view(np.uint8).reshape(n_blocks, 2)
        return blocks
    if qtype == QT.Q6_K:  # [ql 128][qh 64][scales i8 16][d f16]
        blocks = rng.integers(0, 256, size=(n_blocks, 210), dtype=np.uint8)
        d = rng.uniform(1e-3, 2e-2, size=n_blocks).astype(np.float16)
        blocks[:, 208:210] = d.view(np.uint8).reshape(n_blocks, 2)
        return blocks
    if qtype == QT.Q5_K:  # only the size matters: we do not dequantize it
        return rng.integers(0, 256, size=(n_blocks, 176), dtype=np.uint8)
    raise ValueError(qtype)


def make_types_gguf():
    rng = np.random.default_rng(20240601)
    path = OUT / "types.gguf"
    w = GGUFWriter(str(path), arch="llama")
    w.add_custom_alignment(64)  # not the default 32: the reader must honour it
    meta = {}  # key -> (type name, expected value) for the JSON

    def kv(key, value, vtype, sub=None, expect=None):
        w.add_key_value(key, value, vtype, sub_type=sub)
        meta[key] = {"type": vtype.name, "value": value if expect is None else expect}

    kv("test.u8", 200, GGUFValueType.UINT8)
    kv("test.i8", -100, GGUFValueType.INT8)
    kv("test.u16", 60000, GGUFValueType.UINT16)
    kv("test.i16", -30000, GGUFValueType.INT16)
    kv("test.u32", 4000000000, GGUFValueType.UINT32)
    kv("test.i32", -2000000000, GGUFValueType.INT32)
    kv("test.u64", 2**63 + 5, GGUFValueType.UINT64)  # beyond int64: get_int -> OutOfRange
    kv("test.u64_small", 2**40 + 3, GGUFValueType.UINT64)
    kv("test.i64", -(2**62) - 7, GGUFValueType.INT64)
    kv("test.f32", 0.1, GGUFValueType.FLOAT32, expect=float(np.float32(0.1)))
    kv("test.f64", 3.141592653589793, GGUFValueType.FLOAT64)
    kv("test.bool_true", True, GGUFValueType.BOOL)
    kv("test.bool_false", False, GGUFValueType.BOOL)
    kv("test.string", "h\u00e9llo \u2713 w\u00f6rld \U0001f600", GGUFValueType.STRING)
    kv("test.empty_string", "", GGUFValueType.STRING)
    kv("test.arr_str", ["a", "", "\u00fcber", "<|im_end|>"], GGUFValueType.ARRAY,
       GGUFValueType.STRING)
    kv("test.arr_i32", [1, -2, 2147483647, -2147483648], GGUFValueType.ARRAY, GGUFValueType.INT32)
    kv("test.arr_u8", [0, 1, 255], GGUFValueType.ARRAY, GGUFValueType.UINT8)
    kv("test.arr_f32", [0.5, -1.25, 1e-3], GGUFValueType.ARRAY, GGUFValueType.FLOAT32,
       expect=[float(np.float32(x)) for x in [0.5, -1.25, 1e-3]])
    kv("test.arr_f64", [1e-300, -2.5], GGUFValueType.ARRAY, GGUFValueType.FLOAT64)
    kv("test.arr_bool", [True, False, True], GGUFValueType.ARRAY, GGUFValueType.BOOL)
    kv("test.arr_nested", [[1, 2], [3], [4, 5, 6]], GGUFValueType.ARRAY, GGUFValueType.ARRAY)

    tensors = {}  # name -> dict(type, ne, expected)

    def add_float(name, arr, qtype):
        # arr is [rows, cols] row-major; ggml ne = [cols, rows].
        if qtype == QT.F32:
            data = arr.astype(np.float32)
            w.add_tensor(name, data)
            ref = gq.dequantize(data.view(np.uint8), QT.F32)
        elif qtype == QT.F16:
            data = arr.astype(np.float16)
            w.add_tensor(name, data)
            ref = gq.dequantize(data.view(np.uint8), QT.F16)
        elif qtype == QT.F64:
            data = arr.astype(np.float64)
            w.add_tensor(name, data)
            ref = data.astype(np.float32)  # numpy's double -> float rounding
        else:  # BF16 and block types through gguf-py's quantizer
            data = gq.quantize(arr.astype(np.float32), qtype)
            w.add_tensor(name, data, raw_dtype=qtype)
            ref = gq.dequantize(data, qtype)
        tensors[name] = {"type": qtype.name, "ne": [arr.shape[1], arr.shape[0]], "expected": ref}

    def add_kquant(name, rows, cols, qtype):
        blocks = k_quant_blocks(rng, qtype, rows * cols // 256)
        data = blocks.reshape(rows, -1)
        w.add_tensor(name, data, raw_dtype=qtype)
        ref = gq.dequantize(data, qtype) if qtype != QT.Q5_K else None
        tensors[name] = {"type": qtype.name, "ne": [cols, rows], "expected": ref}

    add_float("t.f32", rng.standard_normal((3, 64)), QT.F32)
    add_float("t.f16", rng.standard_normal((2, 64)), QT.F16)
    add_float("t.bf16", rng.standard_normal((2, 64)), QT.BF16)
    add_float("t.f64", rng.standard_normal((2, 8)), QT.F64)
    add_float("t.q8_0", rng.standard_normal((4, 64)), QT.Q8_0)
    add_float("t.q4_0", rng.standard_normal((4, 64)), QT.Q4_0)
    add_float("t.q4_1", rng.standard_normal((4, 64)) + 0.3, QT.Q4_1)
    add_kquant("t.q4_k", 2, 512, QT.Q4_K)
    add_kquant("t.q6_k", 2, 512, QT.Q6_K)
    add_kquant("t.q5_k", 1, 256, QT.Q5_K)  # valid ggml type we cannot dequantize

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    # Layout facts straight from gguf-py's reader, for the structural checks.
    r = GGUFReader(str(path))
    infos = []
    for t in r.tensors:
        infos.append({
            "name": t.name,
            "type": t.tensor_type.name,
            "type_id": int(t.tensor_type),
            "ne": [int(x) for x in t.shape],
            "offset": int(t.data_offset - r.data_offset),
            "nbytes": int(t.n_bytes),
        })
    first_info = r.tensors[0].field
    last_info = r.tensors[-1].field
    sections = {  # byte ranges of the file's sections, for the truncation tests
        "header": [0, 24],
        "kv": [24, int(first_info.offset)],
        "tensor_infos": [int(first_info.offset),
                         int(last_info.offset + sum(p.nbytes for p in last_info.parts))],
        "data": [int(r.data_offset), int(max(i["offset"] + i["nbytes"] for i in infos)
                                         + r.data_offset)],
    }
    for name, t in tensors.items():
        t["expected"] = None if t["expected"] is None else f32_list(t["expected"])
    doc = {
        "note": "written by tools/make_formats_fixtures.py with gguf-py; expected values from "
                "gguf.quants.dequantize (exact float32)",
        "version": 3,
        "alignment": 64,
        "data_offset": int(r.data_offset),
        "n_kv": len(r.fields) - 3,  # GGUFReader lists the header fields too
        "file_size": path.stat().st_size,
        "sections": sections,
        "metadata": meta,
        "tensor_infos": infos,
        "tensors": tensors,
    }
    (OUT / "types.gguf.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {path} ({path.stat().st_size} bytes)")


# ---------------------------------------------------------------- real model


def make_model_ref():
    r = GGUFReader(str(MODEL))
    f = r.fields

    def val(key):
        return f[key].contents()

    tokens = val("tokenizer.ggml.tokens")
    merges = val("tokenizer.ggml.merges")
    meta = {
        "general.architecture": val("general.architecture"),
        "general.name": val("general.name"),
        "llama.block_count": val("llama.block_count"),
        "llama.context_length": val("llama.context_length"),
        "llama.embedding_length": val("llama.embedding_length"),
        "llama.feed_forward_length": val("llama.feed_forward_length"),
        "llama.attention.head_count": val("llama.attention.head_count"),
        "llama.attention.head_count_kv": val("llama.attention.head_count_kv"),
        "llama.rope.freq_base": val("llama.rope.freq_base"),
        "llama.attention.layer_norm_rms_epsilon": val("llama.attention.layer_norm_rms_epsilon"),
        "llama.vocab_size": val("llama.vocab_size"),
        "tokenizer.ggml.model": val("tokenizer.ggml.model"),
        "tokenizer.ggml.pre": val("tokenizer.ggml.pre"),
        "tokenizer.ggml.bos_token_id": val("tokenizer.ggml.bos_token_id"),
        "tokenizer.ggml.eos_token_id": val("tokenizer.ggml.eos_token_id"),
        "tokenizer.ggml.add_bos_token": val("tokenizer.ggml.add_bos_token"),
        "tokenizer.chat_template": val("tokenizer.chat_template"),
    }
    infos = [{
        "name": t.name,
        "type": t.tensor_type.name,
        "ne": [int(x) for x in t.shape],
        "offset": int(t.data_offset - r.data_offset),
    } for t in r.tensors]

    def rows_of(name, rows):
        t = next(t for t in r.tensors if t.name == name)
        full = gq.dequantize(np.asarray(t.data), t.tensor_type)  # [ne1, ne0] float32
        full = full.reshape(int(t.shape[1]) if len(t.shape) > 1 else 1, int(t.shape[0]))
        return {
            "type": t.tensor_type.name,
            "rows": rows,
            "values": [f32_list(full[i]) for i in rows],
            "sum": float(full.astype(np.float64).sum()),
            "abs_sum": float(np.abs(full.astype(np.float64)).sum()),
        }

    doc = {
        "note": "SmolLM2-135M-Instruct.Q4_1.gguf read by gguf-py GGUFReader; values from "
                "gguf.quants.dequantize (exact float32); sums in float64",
        "version": int(r.fields["GGUF.version"].contents()),
        "n_tensors": len(r.tensors),
        "n_kv": len(r.fields) - 3,
        "data_offset": int(r.data_offset),
        "metadata": meta,
        "n_tokens": len(tokens),
        "tokens_head": tokens[:8],
        "tokens_tail": tokens[-3:],
        "n_merges": len(merges),
        "merges_head": merges[:5],
        "token_type_head": [int(x) for x in val("tokenizer.ggml.token_type")[:8]],
        "tensor_infos": infos,
        "dequant": {
            "token_embd.weight": rows_of("token_embd.weight", [0, 1, 2, 1000, 49151]),
            "blk.0.attn_q.weight": rows_of("blk.0.attn_q.weight", [0, 1, 288, 575]),
            "blk.29.ffn_down.weight": rows_of("blk.29.ffn_down.weight", [0, 575]),
            "blk.0.attn_norm.weight": rows_of("blk.0.attn_norm.weight", [0]),
        },
    }
    (OUT / "smollm2_ref.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT / 'smollm2_ref.json'}")


# ---------------------------------------------------------------- safetensors


def st_tensors():
    # Values exactly representable in every dtype they are stored in.
    return {
        "f32": torch.tensor([[0.5, -1.25, 3.0], [1e-3, -7.5, 65536.0]], dtype=torch.float32),
        "f16": torch.tensor([0.25, -2.0, 1024.0, 65504.0], dtype=torch.float16),
        "bf16": torch.tensor([1.0, -0.5, 3.140625, 1e30], dtype=torch.bfloat16),
        "f64": torch.tensor([1e-300, -2.5], dtype=torch.float64),
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 200, 255], dtype=torch.uint8),
        "i16": torch.tensor([-32768, 12345], dtype=torch.int16),
        "i32": torch.tensor([[-(2**31), 7], [2**31 - 1, 0]], dtype=torch.int32),
        "i64": torch.tensor([-(2**62), 2**40 + 1], dtype=torch.int64),
        "bool": torch.tensor([True, False, True], dtype=torch.bool),
        "scalar": torch.tensor(42.5, dtype=torch.float32),
        "empty": torch.zeros((0, 3), dtype=torch.float32),
    }


def expected_of(t):
    if t.dtype == torch.bool:
        vals = [int(x) for x in t.reshape(-1).tolist()]
    elif t.dtype.is_floating_point:
        vals = [float(x) for x in t.to(torch.float64).reshape(-1).tolist()]
    else:
        vals = [int(x) for x in t.reshape(-1).tolist()]
    return {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape), "values": vals}


def make_safetensors():
    ts = st_tensors()
    # One key only: the reference writer emits __metadata__ in HashMap order.
    meta = {"note": "h\u00e9llo"}
    save_file(ts, str(OUT / "st_types.safetensors"), metadata=meta)
    doc = {
        "note": "written by Python safetensors (torch API); values exact",
        "metadata": meta,
        "tensors": {k: expected_of(v) for k, v in ts.items()},
    }
    (OUT / "st_types.safetensors.json").write_text(
        json.dumps(doc, indent=1, ensure_ascii=False) + "\n")

    # Sharded folder, laid out as transformers' save_pretrained does.
    g = torch.Generator().manual_seed(7)
    shard_dir = OUT / "st_sharded"
    shard_dir.mkdir(exist_ok=True)
    shard1 = {
        "model.embed_tokens.weight": torch.randn(8, 4, generator=g).to(torch.bfloat16),
        "model.layers.0.input_layernorm.weight": torch.randn(4, generator=g),
    }
    shard2 = {
        "model.layers.0.mlp.up_proj.weight": torch.randn(6, 4, generator=g).to(torch.float16),
        "model.norm.weight": torch.randn(4, generator=g),
    }
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    save_file(shard1, str(shard_dir / names[0]), metadata={"format": "pt"})
    save_file(shard2, str(shard_dir / names[1]), metadata={"format": "pt"})
    weight_map = {k: names[0] for k in shard1} | {k: names[1] for k in shard2}
    total = sum(t.numel() * t.element_size() for t in (shard1 | shard2).values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (shard_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (OUT / "st_sharded.json").write_text(json.dumps(
        {k: expected_of(v) for k, v in (shard1 | shard2).items()}, indent=1) + "\n")

    single = OUT / "st_single"
    single.mkdir(exist_ok=True)
    save_file({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)},
              str(single / "model.safetensors"))
    print("wrote safetensors fixtures")


# Content the C++ test (formats_safetensors_test.cpp, WriterMatchesCommittedFixture)
# writes with cartserve's writer; keep the two in sync.
def cartserve_written_expected():
    return {
        "a": torch.tensor([[-1.0, -0.5, 0.0], [0.5, 1.0, 1.5]], dtype=torch.float32),
        "b": torch.tensor([1.0, -2.0, 0.5, 3.140625], dtype=torch.bfloat16),
        "c": torch.tensor([1, -1, 2**40], dtype=torch.int64),
        "d": torch.tensor([0, 1, 2, 3, 4], dtype=torch.uint8),
        "e": torch.tensor([[0.25, -0.5], [1024.0, 65504.0]], dtype=torch.float16),
        "empty": torch.zeros((0,), dtype=torch.float32),
    }, {"format": "pt", "source": "cartserve"}


def check_cartserve_written():
    path = OUT / "cartserve_written.safetensors"
    if not path.exists():
        print(f"NOTE: {path} not there yet: run the C++ test with CARTSERVE_UPDATE_FIXTURES=1 "
              "(see tests/unit/formats/safetensors_test.cpp), then run this script again")
        return False
    want, want_meta = cartserve_written_expected()
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == want_meta, f.metadata()
        assert sorted(f.keys()) == sorted(want), f.keys()
        for k, v in want.items():
            got = f.get_tensor(k)
            assert got.dtype == v.dtype and got.shape == v.shape, (k, got.dtype, got.shape)
            assert torch.equal(got, v), (k, got, v)
    # The header must also be what the reference expects byte-wise: length
    # prefix, JSON padded with spaces to a multiple of 8.
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0 and raw[8:8 + n].decode("utf-8").rstrip(" ").endswith("}")
    print(f"verified {path} with Python safetensors {__import__('safetensors').__version__}")
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--skip-model", action="store_true", help="do not touch smollm2_ref.json")
    ap.add_argument("--check-only", action="store_true",
                    help="only verify cartserve_written.safetensors")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if not args.check_only:
        make_types_gguf()
        make_safetensors()
        if not args.skip_model:
            if not MODEL.exists():
                sys.exit(f"{MODEL} is missing: run scripts/setup.sh or pass --skip-model")
            make_model_ref()
    check_cartserve_written()


if __name__ == "__main__":
    main()
