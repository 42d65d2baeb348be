#!/usr/bin/env python3
"""Fixtures for the cartridge-format and pickle tests, written by REAL torch.save.

Outputs (committed):
  tests/fixtures/cartridge_formats/*.pt      cartridges in every form torch / the
                                             Cartridges code writes, plus fault and
                                             malicious files
  tests/fixtures/cartridge_formats/expected.json
                                             per file: expected dimensions, or the
                                             expected error (code and a substring)
  tests/fixtures/pickle/cases.json           pickles from Python's own pickle module
                                             (protocols 2..5) with the expected value
                                             tree, or the expected error

Values: every key/value element is given by a formula (exactly representable in
bf16, fp16 and fp32, so the C++ tests recompute it):

    value(which, layer, head, token, dim) =
        ((which*17 + layer*31 + head*13 + token*7 + dim*3) % 61 - 30) / 8
    which = 0 for keys, 1 for values; token counts frozen tokens first.

Files whose values are not given by the formula (NaN/inf patterns) carry their
raw element bit patterns in expected.json.

The Cartridges training code (HazyResearch/cartridges, cartridges/cache.py,
TrainableCache.save) saves
    torch.save({"trainable_keys": ParameterList, "trainable_values": ParameterList,
                "frozen_keys": ParameterList, "frozen_values": ParameterList}, path)
with nn.Parameter(x[:, :, :n_frozen].contiguous()) (frozen, requires_grad=False)
and nn.Parameter(x[:, :, n_frozen:].contiguous()); older versions named the frozen
part fixed_keys / fixed_values. make_trainable_cache() below mirrors it.

Writer round trip (files written by OUR C++ writer, verified here with torch.load):
    python tools/make_cartridge_fixtures.py --cartserve build/bin/cartserve
runs `cartserve cartridge convert` to produce written_by_cartserve*.pt /
.safetensors from the torch-written fixtures, then loads each with torch.load
(weights_only=False, and weights_only=True, adding nn.ParameterList to the safe
globals for the ParameterList layout) / safetensors and checks every element
against the formula. Without --cartserve, existing written_by_cartserve* files
are only verified. The C++ test (cartridge_formats) re-creates these files with
the current writer and requires byte equality with the committed ones, so a
writer change fails the tests until this procedure is run again.

Deterministic: run it again and the files are identical (torch.save output depends
only on the content).
"""

import argparse
import collections
import io
import json
import math
import os
import pickle
import struct
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "cartridge_formats"
PICKLE_OUT = ROOT / "tests" / "fixtures" / "pickle"

L, H, TF, TT, D = 2, 2, 3, 5, 4  # layers, kv heads, frozen tokens, trainable tokens, head_dim
T = TF + TT

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


def formula(which, layer, tokens=T, token0=0, dtype=torch.float32):
    """(1, H, tokens, D) tensor of the formula for tokens token0..token0+tokens-1."""
    x = torch.empty(1, H, tokens, D, dtype=torch.float32)
    for h in range(H):
        for t in range(tokens):
            for d in range(D):
                tok = token0 + t
                x[0, h, t, d] = ((which * 17 + layer * 31 + h * 13 + tok * 7 + d * 3) % 61 - 30) / 8
    return x.to(dtype)


def full_kv(dtype, tokens=T):
    keys = [formula(0, l, tokens, dtype=dtype) for l in range(L)]
    values = [formula(1, l, tokens, dtype=dtype) for l in range(L)]
    return keys, values


def make_trainable_cache(init_keys, init_values, num_frozen):
    """The dict TrainableCache.save writes (cartridges/cache.py)."""
    frozen_keys = nn.ParameterList(
        [nn.Parameter(k[:, :, :num_frozen].contiguous()) for k in init_keys] if num_frozen else [])
    frozen_values = nn.ParameterList(
        [nn.Parameter(v[:, :, :num_frozen].contiguous()) for v in init_values] if num_frozen else [])
    for p in list(frozen_keys) + list(frozen_values):
        p.requires_grad = False
    trainable_keys = nn.ParameterList([nn.Parameter(k[:, :, num_frozen:].contiguous()) for k in init_keys])
    trainable_values = nn.ParameterList([nn.Parameter(v[:, :, num_frozen:].contiguous()) for v in init_values])
    return {
        "trainable_keys": trainable_keys,
        "trainable_values": trainable_values,
        "frozen_keys": frozen_keys,
        "frozen_values": frozen_values,
    }


def split_lists(keys, values, num_frozen, names=("frozen_keys", "frozen_values")):
    d = {
        "trainable_keys": [k[:, :, num_frozen:].contiguous() for k in keys],
        "trainable_values": [v[:, :, num_frozen:].contiguous() for v in values],
    }
    if num_frozen:
        d[names[0]] = [k[:, :, :num_frozen].contiguous() for k in keys]
        d[names[1]] = [v[:, :, :num_frozen].contiguous() for v in values]
    return d


def save(obj, name, **kwargs):
    """torch.save(obj, path) (deterministic: torch derives .data/serialization_id from the
    content), then check the file loads in torch."""
    path = OUT / name
    torch.save(obj, path, **kwargs)
    torch.load(path, weights_only=False)
    return path


def save_no_load(obj, name):
    """torch.save without ever torch.load(weights_only=False) of the result (it would run code)."""
    path = OUT / name
    torch.save(obj, path)
    return path


EXPECTED = {}


def expect_ok(name, *, dtype, frozen=TF, tokens=T, layout=None, token_ids=None, bits=None,
              protocol=2):
    e = {"ok": True, "num_layers": L, "num_kv_heads": H, "head_dim": D, "num_tokens": tokens,
         "num_frozen_tokens": frozen, "dtype": dtype, "values": "formula" if bits is None else "bits",
         "pickle_protocol": protocol}
    if bits is not None:
        e["bits"] = bits
    if layout:
        e["layout"] = layout
    if token_ids is not None:
        e["token_ids"] = token_ids
    EXPECTED[name] = e


def expect_error(name, code, substring):
    EXPECTED[name] = {"ok": False, "code": code, "message": substring}


def weights_only_refuses(path):
    try:
        torch.load(path, weights_only=True)
    except Exception:
        return True
    return False


def make_fake_cartridges_module():
    """A module named cartridges.cache with TrainableCache / AttnConfig as in the repo."""
    pkg = types.ModuleType("cartridges")
    mod = types.ModuleType("cartridges.cache")
    pkg.cache = mod
    sys.modules["cartridges"] = pkg
    sys.modules["cartridges.cache"] = mod
    src = '''
import itertools
from dataclasses import dataclass
import torch
import torch.nn as nn

@dataclass
class AttnConfig:
    n_layers: int
    n_heads: int
    head_dim: int

class TrainableCache(nn.Module):
    def __init__(self, config, init_keys, init_values, num_frozen_tokens):
        super().__init__()
        self.config = config
        self._keys = [None] * config.n_layers
        self._values = [None] * config.n_layers
        self._num_tokens = 0
        self._num_init_tokens = init_keys[0].shape[2]
        self._num_frozen_tokens = num_frozen_tokens
        self._num_trainable_tokens = self._num_init_tokens - num_frozen_tokens
        self.register_buffer("_seq_ids", torch.full((self._num_init_tokens,), -1, dtype=torch.long))
        self.frozen_keys = nn.ParameterList(
            [nn.Parameter(k[:, :, :num_frozen_tokens].contiguous()) for k in init_keys]
            if num_frozen_tokens else [])
        self.frozen_values = nn.ParameterList(
            [nn.Parameter(v[:, :, :num_frozen_tokens].contiguous()) for v in init_values]
            if num_frozen_tokens else [])
        for p in itertools.chain(self.frozen_keys, self.frozen_values):
            p.requires_grad = False
        self.trainable_keys = nn.ParameterList(
            [nn.Parameter(k[:, :, num_frozen_tokens:].contiguous()) for k in init_keys])
        self.trainable_values = nn.ParameterList(
            [nn.Parameter(v[:, :, num_frozen_tokens:].contiguous()) for v in init_values])
'''
    exec(src, mod.__dict__)
    for cls in (mod.AttnConfig, mod.TrainableCache):
        cls.__module__ = "cartridges.cache"
    return mod


class EvilSystem:
    def __reduce__(self):
        return (os.system, ("echo cartserve-fixture-must-never-run",))


class EvilEval:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


def make_cartridge_fixtures():
    OUT.mkdir(parents=True, exist_ok=True)
    for p in OUT.glob("*.pt"):
        if not p.name.startswith("written_by_cartserve"):
            p.unlink()

    # --- the Cartridges code's form: dict of ParameterList, bf16 / fp16 / fp32 ---
    for tag, dt in DTYPES.items():
        keys, values = full_kv(dt)
        save(make_trainable_cache(keys, values, TF), f"params_{tag}.pt")
        expect_ok(f"params_{tag}.pt", dtype=DTYPE_NAMES[dt],
                  layout="dict: trainable_* as ParameterList, frozen_* as ParameterList")

    keys, values = full_kv(torch.bfloat16)
    # --- plain lists of tensors ---
    save(split_lists(keys, values, TF), "lists_bf16.pt")
    expect_ok("lists_bf16.pt", dtype="bfloat16", layout="dict: trainable_* as list, frozen_* as list")
    # --- older names fixed_keys / fixed_values ---
    d = make_trainable_cache(keys, values, TF)
    save({"trainable_keys": d["trainable_keys"], "trainable_values": d["trainable_values"],
          "fixed_keys": d["frozen_keys"], "fixed_values": d["frozen_values"]}, "fixed_bf16.pt")
    expect_ok("fixed_bf16.pt", dtype="bfloat16",
              layout="dict: trainable_* as ParameterList, fixed_* as ParameterList")
    # --- {"cache": ...} ---
    save({"cache": split_lists(keys, values, TF), "step": 100, "lr": 0.02}, "cache_wrapped.pt")
    expect_ok("cache_wrapped.pt", dtype="bfloat16",
              layout="cache.dict: trainable_* as list, frozen_* as list")
    # --- no frozen tokens: empty ParameterLists (what TrainableCache.save writes) / absent ---
    save(make_trainable_cache(keys, values, 0), "no_frozen_empty.pt")
    expect_ok("no_frozen_empty.pt", dtype="bfloat16", frozen=0,
              layout="dict: trainable_* as ParameterList")
    save(split_lists(keys, values, 0), "no_frozen_missing.pt")
    expect_ok("no_frozen_missing.pt", dtype="bfloat16", frozen=0, layout="dict: trainable_* as list")
    # --- tuples and a single frozen token (the usual attention sink) ---
    d = split_lists(keys, values, 1)
    save({k: tuple(v) for k, v in d.items()}, "tuples_one_frozen.pt")
    expect_ok("tuples_one_frozen.pt", dtype="bfloat16", frozen=1,
              layout="dict: trainable_* as list, frozen_* as list")
    # --- non-contiguous views: transposed keys, values as views into one shared storage ---
    big = torch.empty(L, 1, H, T, D, dtype=torch.float16)
    for l in range(L):
        big[l] = formula(1, l, dtype=torch.float16)[0]
    tkeys, tvals, fkeys, fvals = [], [], [], []
    for l in range(L):
        kt = formula(0, l, dtype=torch.float16).transpose(2, 3).contiguous().transpose(2, 3)
        assert not kt.is_contiguous()
        fkeys.append(kt[:, :, :TF])
        tkeys.append(kt[:, :, TF:])
        v = big[l]
        fvals.append(v[:, :, :TF])
        tvals.append(v[:, :, TF:])
        assert not tvals[-1].is_contiguous() and tvals[-1].storage_offset() > 0
    save({"trainable_keys": tkeys, "trainable_values": tvals, "frozen_keys": fkeys,
          "frozen_values": fvals}, "noncontig_fp16.pt")
    expect_ok("noncontig_fp16.pt", dtype="float16", layout="dict: trainable_* as list, frozen_* as list")
    # --- pickle protocols 4 and 5 (torch.save's pickle_protocol) ---
    save(make_trainable_cache(keys, values, TF), "proto4_params.pt", pickle_protocol=4)
    expect_ok("proto4_params.pt", dtype="bfloat16", protocol=4,
              layout="dict: trainable_* as ParameterList, frozen_* as ParameterList")
    save(split_lists(keys, values, TF), "proto5_lists.pt", pickle_protocol=5)
    expect_ok("proto5_lists.pt", dtype="bfloat16", protocol=5,
              layout="dict: trainable_* as list, frozen_* as list")
    # --- the object form: a pickled cartridges.cache.TrainableCache instance ---
    mod = make_fake_cartridges_module()
    kf, vf = full_kv(torch.float32)
    obj = mod.TrainableCache(mod.AttnConfig(L, H, D), kf, vf, TF)
    save(obj, "object_trainable_cache.pt")
    expect_ok("object_trainable_cache.pt", dtype="float32",
              layout="object cartridges.cache.TrainableCache: trainable_* as ParameterList, "
                     "frozen_* as ParameterList")
    # --- parameters / tensors carrying Python attributes: torch pickles them through
    #     _rebuild_parameter_with_state and torch._tensor._rebuild_from_type_v2 ---
    d = split_lists(keys, values, TF)
    for k in ("trainable_keys", "trainable_values"):
        params = []
        for x in d[k]:
            p = nn.Parameter(x)
            p.note = "trained"
            params.append(p)
        d[k] = params
    for k in ("frozen_keys", "frozen_values"):
        for x in d[k]:
            x.layer_tag = 7
    save(d, "attributes_state.pt")
    expect_ok("attributes_state.pt", dtype="bfloat16", layout="dict: trainable_* as list, frozen_* as list")
    # --- token ids (int64 tensor) ---
    d = split_lists(keys, values, TF)
    d["token_ids"] = torch.arange(100, 100 + T, dtype=torch.int64)
    save(d, "token_ids.pt")
    expect_ok("token_ids.pt", dtype="bfloat16", token_ids=list(range(100, 100 + T)),
              layout="dict: trainable_* as list, frozen_* as list")
    # --- NaN / inf / -0 must pass through bit-exactly ---
    for tag, dt, int_dt in (("bf16", torch.bfloat16, torch.int16), ("fp32", torch.float32, torch.int32)):
        k, v = full_kv(dt)
        specials = torch.tensor([float("nan"), float("inf"), float("-inf"), -0.0, 1e-40 if dt == torch.float32 else 0.0],
                                dtype=dt)
        k[0][0, 0, 0, :4] = specials[:4]
        v[1][0, 1, 7, 1:] = specials[1:4]
        k[1][0, 1, 2, 3] = specials[4]
        neg_nan = -torch.tensor(float("nan"), dtype=torch.float32)
        v[0][0, 0, 4, 0] = neg_nan.to(dt)
        save(split_lists(k, v, TF), f"nan_{tag}.pt")
        mask = 0xFFFF if int_dt == torch.int16 else 0xFFFFFFFF
        bits = {"keys": [[int(x) & mask for x in t[0].contiguous().view(int_dt).flatten().tolist()] for t in k],
                "values": [[int(x) & mask for x in t[0].contiguous().view(int_dt).flatten().tolist()] for t in v]}
        expect_ok(f"nan_{tag}.pt", dtype=DTYPE_NAMES[dt], bits=bits,
                  layout="dict: trainable_* as list, frozen_* as list")
    # --- deflated archive (torch never compresses; other tools may rewrite archives) ---
    src = zipfile.ZipFile(OUT / "params_bf16.pt")
    with zipfile.ZipFile(OUT / "deflated_params_bf16.pt", "w", compression=zipfile.ZIP_DEFLATED) as zdst:
        for info in src.infolist():
            data = src.read(info.filename)
            zi = zipfile.ZipInfo(info.filename.replace("params_bf16/", "deflated_params_bf16/"),
                                 date_time=(1980, 1, 1, 0, 0, 0))
            zi.compress_type = zipfile.ZIP_DEFLATED
            zdst.writestr(zi, data)
    torch.load(OUT / "deflated_params_bf16.pt", weights_only=False)
    expect_ok("deflated_params_bf16.pt", dtype="bfloat16",
              layout="dict: trainable_* as ParameterList, frozen_* as ParameterList")

    # --- fault cases: valid torch files, invalid cartridges ---
    good = split_lists(keys, values, TF)
    d = dict(good)
    del d["trainable_values"]
    save(d, "missing_values.pt")
    expect_error("missing_values.pt", "Corrupt", "has no 'trainable_values'")
    d = dict(good)
    d["trainable_values"] = good["trainable_values"] + [good["trainable_values"][0]]
    save(d, "layer_count_mismatch.pt")
    expect_error("layer_count_mismatch.pt", "Corrupt", "trainable_keys has 2 layers but trainable_values has 3")
    d = dict(good)
    d["trainable_keys"] = [good["trainable_keys"][0], good["trainable_keys"][1][:, :, :4]]
    save(d, "shape_mismatch.pt")
    expect_error("shape_mismatch.pt", "Corrupt", "trainable_keys[1] has shape [1, 2, 4, 4]")
    d = dict(good)
    d["frozen_values"] = good["frozen_values"][:1]
    save(d, "frozen_layer_mismatch.pt")
    expect_error("frozen_layer_mismatch.pt", "Corrupt", "frozen_values has 1")
    d = dict(good)
    del d["frozen_values"]
    save(d, "frozen_without_values.pt")
    expect_error("frozen_without_values.pt", "Corrupt", "has 'frozen_keys' without 'frozen_values'")
    d = dict(good)
    d["frozen_keys"] = [x.float() for x in good["frozen_keys"]]
    save(d, "dtype_mismatch.pt")
    expect_error("dtype_mismatch.pt", "Corrupt", "frozen_keys[0] has dtype float32")
    d = dict(good)
    d["trainable_keys"] = [good["trainable_keys"][0], "not a tensor"]
    save(d, "not_a_tensor.pt")
    expect_error("not_a_tensor.pt", "Corrupt", "trainable_keys[1] is str 'not a tensor'")
    d = dict(good)
    d["trainable_keys"] = [x[0] for x in good["trainable_keys"]][:1] + [torch.zeros(5, 4, dtype=torch.bfloat16)]
    save(d, "bad_rank.pt")
    expect_error("bad_rank.pt", "Corrupt", "trainable_keys[1] has shape [5, 4]")
    save({k: [x.double() for x in v] for k, v in good.items()}, "fp64.pt")
    expect_error("fp64.pt", "Unsupported", "float64")
    save([good["trainable_keys"], good["trainable_values"]], "top_level_list.pt")
    expect_error("top_level_list.pt", "Corrupt", "top-level value is list of 2")
    save({"weights": torch.zeros(3)}, "unrelated_dict.pt")
    expect_error("unrelated_dict.pt", "Corrupt", "has no 'trainable_keys' (keys: weights)")

    # --- malicious pickles (torch.load(weights_only=True) refuses them as well) ---
    d = dict(good)
    d["meta"] = {"note": "looks harmless", "hook": EvilSystem()}
    p = save_no_load(d, "evil_os_system.pt")
    assert weights_only_refuses(p)
    expect_error("evil_os_system.pt", "PermissionDenied", "posix.system")
    d = dict(good)
    d["trainable_values"] = list(good["trainable_values"]) + [EvilEval()]
    p = save_no_load(d, "evil_builtins_eval.pt")
    assert weights_only_refuses(p)
    expect_error("evil_builtins_eval.pt", "PermissionDenied", "builtins.eval")
    gadget_mod = types.ModuleType("payload")
    exec("class Gadget:\n    def __init__(self):\n        self.cmd = 'rm -rf /'\n", gadget_mod.__dict__)
    gadget_mod.Gadget.__module__ = "payload"
    sys.modules["payload"] = gadget_mod
    d = dict(good)
    d["frozen_keys"] = [good["frozen_keys"][0], gadget_mod.Gadget()]
    p = save_no_load(d, "evil_unknown_class.pt")
    assert weights_only_refuses(p)
    expect_error("evil_unknown_class.pt", "PermissionDenied", "payload.Gadget")
    d = dict(good)
    d["seed_fn"] = torch.manual_seed
    p = save_no_load(d, "evil_torch_function.pt")
    assert weights_only_refuses(p)
    expect_error("evil_torch_function.pt", "PermissionDenied", "torch.random.manual_seed")

    (OUT / "expected.json").write_text(json.dumps(EXPECTED, indent=1, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------
# Pickle cases from Python's pickle module (independent reference).

def encode(v):
    """The expected-value encoding shared with tests/unit/pickle/pickle_test.cpp."""
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return {"float": struct.pack(">d", v).hex()}
    if isinstance(v, str):
        return v
    if isinstance(v, bytearray):
        return {"bytearray": bytes(v).hex()}
    if isinstance(v, bytes):
        return {"bytes": v.hex()}
    if isinstance(v, tuple):
        return {"tuple": [encode(x) for x in v]}
    if isinstance(v, list):
        return [encode(x) for x in v]
    if isinstance(v, collections.OrderedDict):
        return {"odict": [[encode(k), encode(x)] for k, x in v.items()]}
    if isinstance(v, dict):
        return {"dict": [[encode(k), encode(x)] for k, x in v.items()]}
    if isinstance(v, frozenset):
        return {"frozenset": [encode(x) for x in v]}
    if isinstance(v, set):
        return {"set": [encode(x) for x in v]}
    raise TypeError(type(v))


class Unknown:
    pass


Unknown.__module__ = "somepkg.mod"
_somepkg = types.ModuleType("somepkg")
_somepkg.mod = types.ModuleType("somepkg.mod")
_somepkg.mod.Unknown = Unknown
sys.modules["somepkg"] = _somepkg
sys.modules["somepkg.mod"] = _somepkg.mod


def make_pickle_cases():
    PICKLE_OUT.mkdir(parents=True, exist_ok=True)
    shared = [1, 2]
    values = {
        "scalars": [None, True, False, 0, 1, 255, 256, 65535, 65536, -1, -256, 2**31 - 1, -2**31,
                    2**31, -2**31 - 1, 2**40, 2**63 - 1, -2**63, 0.5, -0.0, 1e300, -2.5e-310,
                    float("inf"), float("-inf")],
        "nan": [float("nan")],
        "strings": ["", "a", "héllo ✓", "x" * 300, "\n\x00zero"],
        "nested": {"a": [1, (2, 3), {"b": None}], "c": ((), [], {}), "d": (1,), "e": (1, 2),
                   "f": (1, 2, 3), "g": (1, 2, 3, 4)},
        "int_keys": {1: "one", -5: "minus five", (1, 2): "tuple key"},
        "long_list": list(range(2500)),
        "big_dict": {f"k{i}": i for i in range(1500)},
        "shared_refs": [shared, shared, (shared,)],
        "ordered_dict": collections.OrderedDict([("z", 1), ("a", 2), ("m", [3])]),
        "sets": [{1, 2, 3}, frozenset({"x"}), set()],
        "repeated_key": None,  # filled below (dict with duplicate SETITEM)
    }
    cases = []
    for name, v in values.items():
        if v is None and name == "repeated_key":
            continue
        for proto in (2, 3, 4, 5):
            data = pickle.dumps(v, protocol=proto)
            cases.append({"name": f"{name}_p{proto}", "protocol": proto, "hex": data.hex(),
                          "expected": encode(v)})
    for proto in (3, 4, 5):
        v = [b"", b"abc", bytes(range(256)) * 2]
        cases.append({"name": f"bytes_p{proto}", "protocol": proto,
                      "hex": pickle.dumps(v, protocol=proto).hex(), "expected": encode(v)})
    v = [bytearray(b"xyz")]
    cases.append({"name": "bytearray_p5", "protocol": 5, "hex": pickle.dumps(v, protocol=5).hex(),
                  "expected": encode(v)})
    # Errors.
    errors = [
        ("os_system_p2", pickle.dumps(EvilSystem(), protocol=2), "PermissionDenied", "posix.system"),
        ("eval_p4", pickle.dumps(EvilEval(), protocol=4), "PermissionDenied", "builtins.eval"),
        ("unknown_class_p2", pickle.dumps(Unknown(), protocol=2), "PermissionDenied", "somepkg.mod.Unknown"),
        ("unknown_class_p5", pickle.dumps([1, {"k": Unknown()}], protocol=5), "PermissionDenied",
         "somepkg.mod.Unknown"),
        ("bytes_p2_codecs", pickle.dumps(b"abc", protocol=2), "PermissionDenied", "_codecs.encode"),
        ("too_big_int", pickle.dumps(2**64, protocol=2), "OutOfRange", "does not fit in int64"),
        ("too_small_int", pickle.dumps(-2**63 - 1, protocol=4), "OutOfRange", "does not fit in int64"),
        ("protocol0", pickle.dumps([1, 2], protocol=0), "Unsupported", "protocol 0"),
    ]
    buffers = []
    oob = pickle.dumps(pickle.PickleBuffer(b"out of band"), protocol=5, buffer_callback=buffers.append)
    errors.append(("out_of_band_p5", oob, "Unsupported", "out-of-band"))
    for name, data, code, msg in errors:
        cases.append({"name": name, "hex": data.hex(), "error": {"code": code, "message": msg}})
    (PICKLE_OUT / "cases.json").write_text(
        "[\n" + ",\n".join(json.dumps(c, separators=(",", ":")) for c in cases) + "\n]\n")


# ---------------------------------------------------------------------------
# Verification of files written by cartserve.

def check_formula(keys, values, frozen_and_trainable, dtype):
    """keys/values: per layer (1, H, T, D) tensors after cat(frozen, trainable)."""
    assert len(keys) == L and len(values) == L
    for l in range(L):
        for which, t in ((0, keys[l]), (1, values[l])):
            want = formula(which, l, dtype=dtype)
            assert t.dtype == dtype, (t.dtype, dtype)
            assert t.shape == want.shape, (t.shape, want.shape)
            assert torch.equal(t, want), (which, l)


def verify_written(cartserve):
    written = {
        "written_by_cartserve.pt": ("params_bf16.pt", []),
        "written_by_cartserve_lists.pt": ("params_bf16.pt", ["--pt-layout", "tensorlist"]),
        "written_by_cartserve_fp32.pt": ("nan_bf16.pt", ["--dtype", "fp32"]),
        "written_by_cartserve_ids.pt": ("token_ids.pt", []),
        "written_by_cartserve.safetensors": ("params_bf16.pt", []),
    }
    if cartserve:
        for out, (src, extra) in written.items():
            cmd = [cartserve, "cartridge", "convert", str(OUT / src), str(OUT / out)] + extra
            print("+", " ".join(cmd))
            subprocess.run(cmd, check=True)
    n = 0
    for out, (src, extra) in written.items():
        path = OUT / out
        if not path.exists():
            print(f"skip {out}: not present")
            continue
        n += 1
        if out.endswith(".safetensors"):
            from safetensors import safe_open
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata()
                assert meta["format"] == "cartserve.cartridge", meta
                m = json.loads(meta["cartridge"])
                assert m == {"format_version": 1, "num_layers": L, "num_kv_heads": H, "head_dim": D,
                             "num_tokens": T, "num_frozen_tokens": TF, "dtype": "bfloat16",
                             "has_token_ids": False}, m
                keys = [f.get_tensor(f"keys.{l}").unsqueeze(0) for l in range(L)]
                values = [f.get_tensor(f"values.{l}").unsqueeze(0) for l in range(L)]
                assert sorted(f.keys()) == sorted([f"keys.{l}" for l in range(L)] + [f"values.{l}" for l in range(L)])
            check_formula(keys, values, T, torch.bfloat16)
            print(f"ok {out}: safetensors, formula values match")
            continue
        loads = [("weights_only=False", lambda: torch.load(path, weights_only=False))]
        if "--pt-layout" in extra:
            loads.append(("weights_only=True", lambda: torch.load(path, weights_only=True)))
        else:
            def safe_load():
                with torch.serialization.safe_globals([nn.ParameterList]):
                    return torch.load(path, weights_only=True)
            loads.append(("weights_only=True + safe_globals([ParameterList])", safe_load))
        for label, load in loads:
            d = load()
            assert set(d.keys()) >= {"trainable_keys", "trainable_values", "frozen_keys", "frozen_values"}
            kind = list if "--pt-layout" in extra else nn.ParameterList
            for k in ("trainable_keys", "trainable_values", "frozen_keys", "frozen_values"):
                assert isinstance(d[k], kind), (k, type(d[k]))
            if kind is nn.ParameterList:
                for k in ("trainable_keys", "trainable_values", "frozen_keys", "frozen_values"):
                    assert len(d[k]) == L and all(type(p) is nn.Parameter for p in d[k]), k
                assert all(p.requires_grad for p in d["trainable_keys"])
                assert not any(p.requires_grad for p in d["frozen_keys"])
            keys = [torch.cat([f, t], dim=2).detach() for f, t in zip(d["frozen_keys"], d["trainable_keys"])]
            values = [torch.cat([f, t], dim=2).detach() for f, t in zip(d["frozen_values"], d["trainable_values"])]
            if src == "nan_bf16.pt":
                exp = json.loads((OUT / "expected.json").read_text())["nan_bf16.pt"]["bits"]
                for l in range(L):
                    for t, bits in ((keys[l], exp["keys"][l]), (values[l], exp["values"][l])):
                        want = torch.tensor(bits, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()
                        got = t[0].flatten()
                        assert t.dtype == torch.float32
                        same = (got == want) | (torch.isnan(got) & torch.isnan(want))
                        assert bool(same.all()), (l,)
                        # signs (incl. -0.0 and -NaN) survive the cast
                        assert torch.equal(torch.signbit(got), torch.signbit(want))
            else:
                check_formula(keys, values, T, torch.bfloat16)
            if src == "token_ids.pt":
                assert d["token_ids"].dtype == torch.int32
                assert d["token_ids"].tolist() == list(range(100, 100 + T))
            # Cartridges' own loader logic: TrainableCache.from_pretrained requires these keys.
            print(f"ok {out}: torch.load({label}) loads, values match")
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cartserve", help="path of the cartserve binary: (re)write and verify written_by_cartserve*")
    ap.add_argument("--verify-only", action="store_true", help="only verify written_by_cartserve* files")
    args = ap.parse_args()
    torch.manual_seed(0)
    if not args.verify_only:
        make_cartridge_fixtures()
        make_pickle_cases()
        print(f"wrote {len(EXPECTED)} cartridge fixtures to {OUT} and pickle cases to {PICKLE_OUT}")
    n = verify_written(args.cartserve)
    print(f"verified {n} files written by cartserve")


if __name__ == "__main__":
    main()
