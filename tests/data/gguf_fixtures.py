#!/usr/bin/env python3
"""Golden vectors for lowbit's GGUF reader and block formats, produced by the `gguf` PyPI package
(llama.cpp's gguf-py): its GGUFWriter writes the file, gguf.quants quantizes and dequantizes.

  gguf_fixtures.py OUT.gguf [--rows N] [--real SAFETENSORS]   write the fixture file
  gguf_fixtures.py OUT.gguf --small                           the committed tests/data/gguf_fixture_small.gguf
                                                              (rows of 256, 8 rows; gguf 0.19.0, numpy 2)
  gguf_fixtures.py --seed OUT.gguf                            the fuzz seed tests/data/gguf_seed_tiny.gguf
  gguf_fixtures.py --dump FILE.gguf                           print what GGUFReader reads (for writer tests)

Fixture contents (row length 512 unless said):
  metadata  test.<type> of every scalar type, arrays of ints/floats/strings/bools, a nested array
  in.<T>    float32 rows to quantize: Gaussian at several scales, all-zero/constant/tied blocks,
            values on rounding boundaries, tiny values, powers of two, optional real bf16 weights
            (inputs whose block scale overflows float16 are left out: ggml itself stores Inf there)
  q.<T>     gguf.quants.quantize(in.<T>, T) stored with raw_dtype=T   (T: every quantizable type)
  deq.<T>   gguf.quants.dequantize(q.<T>, T)
  rq.<T>    random bytes of type T (scale fields finite), rdeq.<T> their dequantization
            (T: also the K-quants, which the package only dequantizes)
"""
import json
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q
from gguf.constants import GGML_QUANT_SIZES

QUANTIZE = [Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.TQ1_0, Q.TQ2_0, Q.MXFP4]
DEQUANT_ONLY = [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.TQ1_0, Q.TQ2_0, Q.MXFP4]
# byte offsets of the f16 scale fields per block (kept finite in random blocks)
F16_FIELDS = {Q.Q8_0: [0], Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q5_0: [0], Q.Q5_1: [0, 2], Q.Q2_K: [80, 82], Q.Q3_K: [108],
              Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208], Q.TQ1_0: [52], Q.TQ2_0: [64], Q.MXFP4: []}


def special_rows(rng, n):
    rows = []
    r = np.zeros(n, np.float32)                       # all zero
    rows.append(r)
    rows.append(np.full(n, 0.3125, np.float32))       # constant
    r = rng.standard_normal(n).astype(np.float32)
    r[::32] = 2.0
    r[1::32] = -2.0                                   # ties of |max| with both signs
    rows.append(r)
    d = np.float32(0.05)
    r = (rng.integers(-16, 16, n).astype(np.float32) + np.float32(0.5)) * d   # rounding boundaries
    rows.append(r)
    rows.append((rng.standard_normal(n) * 1e-6).astype(np.float32))           # tiny (scales round to f16 subnormals)
    r = np.float32(2.0) ** rng.integers(-14, 12, n).astype(np.float32)
    r *= np.where(rng.random(n) < 0.5, -1, 1).astype(np.float32)
    rows.append(r.astype(np.float32))                 # powers of two (MXFP4 exponent edges)
    r = rng.standard_normal(n).astype(np.float32)
    r[::32] = np.nextafter(np.float32(4.0), np.float32(0))  # amax just below a power of two
    rows.append(r)
    r = rng.standard_normal(n).astype(np.float32) * np.float32(100)
    rows.append(r)
    r = np.abs(rng.standard_normal(n)).astype(np.float32)   # one-signed blocks
    rows.append(r)
    r = -np.abs(rng.standard_normal(n)).astype(np.float32)
    rows.append(r)
    return rows


def real_rows(path, n, count):
    with open(path, "rb") as f:
        hlen = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(hlen))
        base = 8 + hlen
        for name, info in header.items():
            if name == "__metadata__" or info["dtype"] != "BF16" or len(info["shape"]) != 2 or info["shape"][1] % n:
                continue
            b0, b1 = info["data_offsets"]
            f.seek(base + b0)
            u = np.frombuffer(f.read(b1 - b0), dtype=np.uint16)
            x = (u.astype(np.uint32) << 16).view(np.float32).reshape(-1, n)
            return [x[i] for i in range(min(count, x.shape[0]))]
    return []


def write(out, n_rows, real, small=False):
    rng = np.random.default_rng(20261202)
    n = 256 if small else 512
    w = gguf.GGUFWriter(out, "lowbit-fixture")
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 65000)
    w.add_int16("test.i16", -32000)
    w.add_uint32("test.u32", 4000000000)
    w.add_int32("test.i32", -2000000000)
    w.add_float32("test.f32", 0.1)
    w.add_uint64("test.u64", 18000000000000000000)
    w.add_int64("test.i64", -9000000000000000000)
    w.add_float64("test.f64", -1.25e-300)
    w.add_bool("test.bool", True)
    w.add_string("test.string", "héllo wörld ✓")
    w.add_array("test.arr_i32", [1, -2, 3])
    w.add_array("test.arr_str", ["a", "", "Ġthe"])
    w.add_array("test.arr_f32", [0.5, -1.5])
    w.add_array("test.arr_bool", [True, False])
    w.add_key_value("test.nested", [[1, 2], [3]], gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.ARRAY)
    rows = [(rng.standard_normal(n) * s).astype(np.float32) for s in (1.0, 0.02, 3e-3, 50.0)]
    rows += special_rows(rng, n)
    for _ in range(max(0, n_rows - len(rows))):
        rows.append((rng.standard_normal(n) * np.float32(rng.choice([0.01, 0.1, 1.0]))).astype(np.float32))
    if real:
        rows += real_rows(real, n, 8)
    if small:
        rows = rows[:2] + rows[4:10]
    x = np.stack(rows).astype(np.float32)
    for t in QUANTIZE:
        q = gguf.quants.quantize(x, t)
        d = gguf.quants.dequantize(q, t).astype(np.float32)
        w.add_tensor(f"in.{t.name}", x)
        if t in (Q.F16,):
            w.add_tensor(f"q.{t.name}", q)
        else:
            w.add_tensor(f"q.{t.name}", q, raw_dtype=t)
        w.add_tensor(f"deq.{t.name}", d)
    for t in DEQUANT_ONLY:
        bs, ts = GGML_QUANT_SIZES[t]
        nb = 4 * n // bs
        raw = rng.integers(0, 256, (nb, ts), dtype=np.uint8)
        for off in F16_FIELDS[t]:
            raw[:, off:off + 2] = (rng.standard_normal(nb) * 0.01).astype(np.float16).view(np.uint8).reshape(nb, 2)
        raw = raw.reshape(4, -1)
        w.add_tensor(f"rq.{t.name}", raw, raw_dtype=t)
        w.add_tensor(f"rdeq.{t.name}", gguf.quants.dequantize(raw, t).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def seed(out):
    """A tiny GGUF (about 1 KB) seeding the fuzz target: every metadata type and a few small tensors."""
    rng = np.random.default_rng(1)
    w = gguf.GGUFWriter(out, "llama")
    w.add_uint32("llama.block_count", 1)
    w.add_float32("llama.rope.freq_base", 10000.0)
    w.add_bool("b", False)
    w.add_int64("i", -3)
    w.add_array("tokenizer.ggml.tokens", ["a", "b", "ab"])
    w.add_array("tokenizer.ggml.token_type", [1, 1, 3])
    w.add_key_value("n", [[1], [2, 3]], gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.ARRAY)
    x = rng.standard_normal((2, 256)).astype(np.float32)
    w.add_tensor("f", x[:, :8].copy())
    for t in (Q.Q4_0, Q.TQ2_0, Q.MXFP4):
        w.add_tensor(f"q.{t.name}", gguf.quants.quantize(x[:1], t), raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def dump(path):
    r = gguf.GGUFReader(path)
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        t = f.types[0].name if f.types else "?"
        try:
            v = f.contents()
        except Exception as e:  # noqa: BLE001
            v = f"<{e}>"
        print("kv", k, t, json.dumps(v, ensure_ascii=False), sep="\t")
    for t in r.tensors:
        data = np.asarray(t.data).view(np.uint8)
        print("tensor", t.name, t.tensor_type.name, ",".join(str(int(s)) for s in t.shape),
              int(t.data_offset), int(data.astype(np.uint64).sum()), sep="\t")


if __name__ == "__main__":
    a = sys.argv[1:]
    if a and a[0] == "--dump":
        dump(a[1])
    elif a and a[0] == "--seed":
        seed(a[1])
    else:
        rows = int(a[a.index("--rows") + 1]) if "--rows" in a else 16
        real = a[a.index("--real") + 1] if "--real" in a else None
        write(a[0], rows, real, "--small" in a)
