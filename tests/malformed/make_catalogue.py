#!/usr/bin/env python3
"""Writes lowbit's catalogue of malformed model files into the folder given as argv[1] (CTest runs it
at test time into the build folder: no binary file is committed) and its manifest `manifest.tsv`.

Every entry is one file or folder that a real lowbit loader must refuse with a given exception class
and a message naming the fault; tests/test_malformed.cpp calls the loader of each entry. Manifest
columns (tab-separated, one entry a line, '#' starts a comment):

    name    loader    expected exception class    message fragment    [export output path]

`loader` is one of the driver's names (safetensors, sharded, hf_config, hf_model, bpe_tokenizer,
llama2c, llama2c_tokenizer, gguf, gguf_model, lowbit_model, open_model, export_gguf,
save_quantized); class `none` marks a valid baseline that must load (each corruption below starts
from one, so the fault is the only difference). For an export entry the fifth column names the file
the export would write: it must not exist afterwards, nor any temporary file beside it.

Python 3 standard library only.
"""
import json
import math
import os
import shutil
import struct
import sys

OUT = sys.argv[1] if len(sys.argv) > 1 else "malformed"
ENTRIES = []
U64_MAX = (1 << 64) - 1


def entry(name, loader, cls, fragment, output=""):
    ENTRIES.append((name, loader, cls, fragment, output))


def put(rel, data):
    path = os.path.join(OUT, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode("utf-8"))
    return rel


def f32(values):
    return struct.pack("<%df" % len(values), *values)


# --- safetensors --------------------------------------------------------------------------------
def st_bytes(tensors, metadata=None, raw_header=None, header_len=None):
    """tensors: list of (name, dtype, shape, data bytes). Offsets are laid out contiguously."""
    if raw_header is None:
        h = {}
        if metadata:
            h["__metadata__"] = metadata
        at = 0
        for name, dtype, shape, data in tensors:
            h[name] = {"dtype": dtype, "shape": shape, "data_offsets": [at, at + len(data)]}
            at += len(data)
        raw_header = json.dumps(h, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if isinstance(raw_header, str):
        raw_header = raw_header.encode("utf-8")
    raw_header += b" " * ((8 - len(raw_header) % 8) % 8)
    n = len(raw_header) if header_len is None else header_len
    return struct.pack("<Q", n) + raw_header + b"".join(t[3] for t in tensors)


def safetensors_entries():
    good = st_bytes([("a", "F32", [2, 3], f32([1, 2, 3, 4, 5, 6])), ("b", "U8", [4], b"\x01\x02\x03\x04")],
                    {"format": "pt"})
    header_len = struct.unpack("<Q", good[:8])[0]
    entry(put("st/valid.safetensors", good), "safetensors", "none", "")
    # truncated at every section boundary: inside the length, at its end, inside the header, at the
    # end of the header, inside the data
    entry(put("st/trunc_in_length.safetensors", good[:5]), "safetensors", "format_error", "truncated")
    entry(put("st/trunc_after_length.safetensors", good[:8]), "safetensors", "format_error", "")
    entry(put("st/trunc_in_header.safetensors", good[:8 + header_len // 2]), "safetensors", "format_error", "")
    entry(put("st/trunc_after_header.safetensors", good[:8 + header_len]), "safetensors", "format_error", "")
    entry(put("st/trunc_in_data.safetensors", good[:-3]), "safetensors", "format_error", "")
    entry(put("st/trailing_bytes.safetensors", good + b"\0" * 8), "safetensors", "format_error", "")
    # sizes and offsets overflowing 64-bit arithmetic
    entry(put("st/header_len_u64_max.safetensors", struct.pack("<Q", U64_MAX) + good[8:]), "safetensors",
          "format_error", "")
    entry(put("st/offset_u64_max.safetensors",
              st_bytes([], raw_header='{"a":{"dtype":"U8","shape":[1],"data_offsets":[18446744073709551615,0]}}')),
          "safetensors", "format_error", "")
    entry(put("st/offset_wraps.safetensors",
              st_bytes([], raw_header='{"a":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0]}}')),
          "safetensors", "format_error", "")
    entry(put("st/shape_product_overflows.safetensors",
              st_bytes([], raw_header='{"a":{"dtype":"F64","shape":[4294967296,4294967296,2],"data_offsets":[0,0]}}')),
          "safetensors", "format_error", "")
    entry(put("st/offset_beyond_u64.safetensors",
              st_bytes([], raw_header='{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,18446744073709551616]}}')),
          "safetensors", "format_error", "")
    # wrong dtypes, duplicate names, mismatched byte counts, bad UTF-8
    entry(put("st/unknown_dtype.safetensors", st_bytes([("a", "F33", [1], f32([1]))])), "safetensors",
          "format_error", "F33")
    entry(put("st/duplicate_name.safetensors",
              st_bytes([], raw_header='{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
                                      '"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}') + b"\1\2"),
          "safetensors", "format_error", "")
    entry(put("st/size_disagrees_with_shape.safetensors", st_bytes([("a", "F32", [2, 3], f32([1, 2, 3, 4, 5]))])),
          "safetensors", "format_error", "")
    entry(put("st/bad_utf8_name.safetensors",
              st_bytes([], raw_header=b'{"a\xff":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}') + b"\1"),
          "safetensors", "format_error", "")
    entry(put("st/not_json.safetensors", st_bytes([], raw_header="[1,2,3]")), "safetensors", "format_error", "")


# --- sharded checkpoint (index + shards) -------------------------------------------------------
def sharded_entries():
    s1 = st_bytes([("x", "F32", [2], f32([1, 2]))])
    s2 = st_bytes([("y", "F32", [2], f32([3, 4]))])

    def folder(name, index, shards):
        for fname, data in shards.items():
            put("sharded/%s/%s" % (name, fname), data)
        put("sharded/%s/model.safetensors.index.json" % name, index if isinstance(index, str) else json.dumps(index))
        return "sharded/" + name

    wm = {"x": "model-00001-of-00002.safetensors", "y": "model-00002-of-00002.safetensors"}
    both = {wm["x"]: s1, wm["y"]: s2}
    entry(folder("valid", {"metadata": {}, "weight_map": wm}, both), "sharded", "none", "")
    entry(folder("missing_shard", {"weight_map": wm}, {wm["x"]: s1}), "sharded", "format_error", "model-00002-of-00002")
    entry(folder("parent_path", {"weight_map": {"x": "../evil.safetensors"}}, {}), "sharded", "format_error", "")
    entry(folder("wrong_shard", {"weight_map": {"x": wm["y"], "y": wm["x"]}}, both), "sharded", "format_error", "")
    entry(folder("tensor_in_two_shards", {"weight_map": wm}, {wm["x"]: s1, wm["y"]: st_bytes(
        [("x", "F32", [2], f32([1, 2])), ("y", "F32", [2], f32([3, 4]))])}), "sharded", "format_error", "")
    entry(folder("unlisted_tensor", {"weight_map": {"x": wm["x"]}}, {wm["x"]: st_bytes(
        [("x", "F32", [2], f32([1, 2])), ("z", "F32", [2], f32([3, 4]))])}), "sharded", "format_error", "'z'")
    entry(folder("index_truncated", json.dumps({"weight_map": wm})[:25], both), "sharded", "format_error", "")
    entry(folder("index_value_not_string", {"weight_map": {"x": 7}}, both), "sharded", "format_error", "")
    entry(folder("shard_truncated", {"weight_map": wm}, {wm["x"]: s1, wm["y"]: s2[:-2]}), "sharded",
          "format_error", "model-00002-of-00002")


# --- Hugging Face config.json and checkpoint folder --------------------------------------------
CFG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8, "intermediate_size": 16,
       "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 8,
       "max_position_embeddings": 16, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True,
       "bos_token_id": 0, "eos_token_id": 1, "hidden_act": "silu"}


def hf_tensors(cfg):
    d, h, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = d // cfg["num_attention_heads"]
    kv = hd * cfg["num_key_value_heads"]
    shapes = {"model.embed_tokens.weight": [v, d], "model.norm.weight": [d]}
    p = "model.layers.0."
    shapes.update({p + "input_layernorm.weight": [d], p + "post_attention_layernorm.weight": [d],
                   p + "self_attn.q_proj.weight": [d, d], p + "self_attn.k_proj.weight": [kv, d],
                   p + "self_attn.v_proj.weight": [kv, d], p + "self_attn.o_proj.weight": [d, d],
                   p + "mlp.gate_proj.weight": [h, d], p + "mlp.down_proj.weight": [d, h],
                   p + "mlp.up_proj.weight": [h, d]})
    out = []
    for name in sorted(shapes):
        n = math.prod(shapes[name])
        out.append([name, "F32", shapes[name], f32([0.01 * ((i * 7) % 13 - 6) + (1 if "norm" in name else 0)
                                                   for i in range(n)])])
    return out


def hf_folder(name, cfg=None, tensors=None, config_text=None):
    cfg = CFG if cfg is None else cfg
    tensors = hf_tensors(cfg) if tensors is None else tensors
    put("hf/%s/config.json" % name, config_text if config_text is not None else json.dumps(cfg))
    put("hf/%s/model.safetensors" % name, st_bytes([tuple(t) for t in tensors]))
    return "hf/" + name


def with_tensor(name, fn):
    ts = hf_tensors(CFG)
    for t in ts:
        if t[0] == name:
            fn(t)
    return ts


def hf_entries():
    entry(put("config/valid.json", json.dumps(CFG)), "hf_config", "none", "")
    text = json.dumps(CFG)
    entry(put("config/truncated.json", text[: len(text) // 2]), "hf_config", "format_error", "config.json")
    entry(put("config/empty.json", ""), "hf_config", "format_error", "")
    entry(put("config/layers_overflow.json", json.dumps(dict(CFG, num_hidden_layers=2 ** 63))), "hf_config",
          "format_error", "num_hidden_layers")
    entry(put("config/layers_beyond_u64.json", text.replace('"num_hidden_layers": 1', '"num_hidden_layers": 1e400')),
          "hf_config", "format_error", "")
    entry(put("config/negative_vocab.json", json.dumps(dict(CFG, vocab_size=-8))), "hf_config", "format_error",
          "vocab_size")
    entry(put("config/hidden_size_string.json", json.dumps(dict(CFG, hidden_size="8"))), "hf_config", "format_error",
          "hidden_size")
    entry(put("config/heads_not_multiple.json", json.dumps(dict(CFG, num_key_value_heads=3))), "hf_config",
          "format_error", "num_key_value_heads")
    entry(put("config/unsupported_type.json", json.dumps(dict(CFG, model_type="gpt2"))), "hf_config", "format_error",
          "gpt2")
    entry(put("config/bad_utf8.json", text.encode("utf-8").replace(b'"llama"', b'"ll\xc3\x28ma"')), "hf_config",
          "format_error", "")

    entry(hf_folder("valid"), "hf_model", "none", "")
    # shapes disagreeing with config.json
    entry(hf_folder("shape_vs_config", cfg=dict(CFG, intermediate_size=24), tensors=hf_tensors(CFG)), "hf_model",
          "format_error", "config.json implies")
    ts = with_tensor("model.layers.0.self_attn.q_proj.weight", lambda t: t.__setitem__(2, [4, 16]))
    entry(hf_folder("transposed_q", tensors=ts), "hf_model", "format_error", "q_proj")
    # NaN / Inf weights (the loader checks every float tensor)
    ts = with_tensor("model.layers.0.mlp.up_proj.weight", lambda t: t.__setitem__(3, f32([math.nan]) + t[3][4:]))
    entry(hf_folder("nan_weight", tensors=ts), "hf_model", "numeric_error", "NaN or Inf")
    ts = with_tensor("model.norm.weight", lambda t: t.__setitem__(3, t[3][:-4] + f32([math.inf])))
    entry(hf_folder("inf_norm", tensors=ts), "hf_model", "numeric_error", "NaN or Inf")
    # wrong dtype: integer weights
    ts = with_tensor("model.embed_tokens.weight", lambda t: t.__setitem__(1, "I32"))
    entry(hf_folder("int_weights", tensors=ts), "hf_model", "format_error", "embed_tokens")
    # an empty tensor where config.json implies [8, 8]
    ts = with_tensor("model.layers.0.self_attn.o_proj.weight", lambda t: (t.__setitem__(2, [0, 8]), t.__setitem__(3, b"")))
    entry(hf_folder("empty_tensor", tensors=ts), "hf_model", "format_error", "o_proj")
    ts = [t for t in hf_tensors(CFG) if t[0] != "model.layers.0.mlp.down_proj.weight"]
    entry(hf_folder("missing_tensor", tensors=ts), "hf_model", "format_error", "down_proj")
    ts = hf_tensors(CFG) + [["model.layers.1.mlp.up_proj.weight", "F32", [1], f32([0])]]
    entry(hf_folder("extra_layer", tensors=ts), "hf_model", "format_error", "model.layers.1")
    entry(hf_folder("config_truncated", config_text=json.dumps(CFG)[:40]), "hf_model", "format_error", "config.json")
    entry(hf_folder("nan_weight_open_model", tensors=with_tensor(
        "model.layers.0.mlp.up_proj.weight", lambda t: t.__setitem__(3, f32([math.nan]) + t[3][4:]))),
          "open_model", "numeric_error", "NaN or Inf")


# --- tokenizer.json ------------------------------------------------------------------------------
def bpe_json(vocab=None, merges=None, model_type="BPE", added=None):
    return json.dumps({"version": "1.0", "added_tokens": added or [], "normalizer": None,
                       "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
                       "decoder": {"type": "ByteLevel"},
                       "model": {"type": model_type, "vocab": vocab or {"a": 0, "b": 1, "ab": 2},
                                 "merges": ["a b"] if merges is None else merges}}, ensure_ascii=False)


def tokenizer_json_entries():
    entry(put("tok/valid.json", bpe_json()), "bpe_tokenizer", "none", "")
    entry(put("tok/truncated.json", bpe_json()[:60]), "bpe_tokenizer", "format_error", "")
    entry(put("tok/bad_utf8_vocab.json", bpe_json().encode("utf-8").replace(b'"ab"', b'"a\xff"')), "bpe_tokenizer",
          "format_error", "")
    entry(put("tok/overlong_utf8.json", bpe_json().encode("utf-8").replace(b'"ab"', b'"\xc0\xaf"')), "bpe_tokenizer",
          "format_error", "")
    entry(put("tok/merge_unknown_token.json", bpe_json(merges=["a z"])), "bpe_tokenizer", "format_error", "")
    entry(put("tok/duplicate_id.json", bpe_json(vocab={"a": 0, "b": 0, "ab": 2})), "bpe_tokenizer", "format_error", "")
    entry(put("tok/id_overflows.json", bpe_json(vocab={"a": 0, "b": 1, "ab": 2 ** 64})), "bpe_tokenizer",
          "format_error", "")
    entry(put("tok/wordpiece.json", bpe_json(model_type="WordPiece")), "bpe_tokenizer", "format_error", "WordPiece")
    entry(put("tok/added_token_bad_utf8.json",
              bpe_json(added=[{"id": 3, "content": "<s>", "special": True}]).encode("utf-8").replace(b"<s>", b"<\xed\xa0\x80>")),
          "bpe_tokenizer", "format_error", "")


# --- llama2.c checkpoint and tokenizer -----------------------------------------------------------
LC = (8, 16, 1, 2, 1, 8, 4)  # dim, hidden, layers, heads, kv heads, vocab, seq_len


def llama2c_bytes(h=LC, tweak=None):
    dim, hid, nl, nh, nkv, vocab, seq = h
    kvd = dim // nh * nkv
    n = abs(vocab) * dim + nl * dim * 2 + dim + nl * dim * dim * 2 + nl * kvd * dim * 2 + nl * hid * dim * 3
    n += seq * (dim // nh)
    if vocab < 0:
        n += abs(vocab) * dim
    vals = [0.01 * ((i * 5) % 11 - 5) for i in range(n)]
    if tweak:
        tweak(vals)
    return struct.pack("<7i", *h) + f32(vals)


def llama2c_tok_bytes(pieces, max_len=5, raw=None):
    out = struct.pack("<i", max_len)
    for i, p in enumerate(pieces):
        out += struct.pack("<fi", -float(i), len(p)) + p
    return out if raw is None else raw(out)


def llama2c_entries():
    good = llama2c_bytes()
    entry(put("llama2c/valid.bin", good), "llama2c", "none", "")
    entry(put("llama2c/trunc_header.bin", good[:10]), "llama2c", "format_error", "header needs 28")
    entry(put("llama2c/trunc_after_header.bin", good[:28]), "llama2c", "format_error", "truncated")
    entry(put("llama2c/trunc_in_weights.bin", good[:-4]), "llama2c", "format_error", "truncated")
    entry(put("llama2c/trailing_bytes.bin", good + b"\0\0\0\0"), "llama2c", "format_error", "trailing bytes")
    entry(put("llama2c/dim_negative.bin", struct.pack("<i", -8) + good[4:]), "llama2c", "format_error", "'dim'")
    entry(put("llama2c/sizes_overflow.bin", struct.pack("<7i", 1 << 20, 1 << 20, 1 << 20, 1 << 10, 1 << 10, 1 << 20, 1 << 20)),
          "llama2c", "format_error", "tensor sizes overflow")
    entry(put("llama2c/heads_not_divisor.bin", llama2c_bytes((8, 16, 1, 3, 1, 8, 4))), "llama2c", "format_error",
          "multiple of n_heads")
    entry(put("llama2c/nan_weight.bin", llama2c_bytes(tweak=lambda v: v.__setitem__(100, math.nan))),
          "llama2c", "format_error", "tensor 'wq' contains NaN or Inf")

    tok = [b"<unk>", b"<s>", b"</s>", b" ", b"a", b"b", b" a", b"ab"]
    valid_tok = llama2c_tok_bytes(tok)
    entry(put("llama2c/tok_valid.bin", valid_tok), "llama2c_tokenizer", "none", "")
    entry(put("llama2c/tok_trunc_header.bin", valid_tok[:3]), "llama2c_tokenizer", "format_error", "header needs 4")
    entry(put("llama2c/tok_trunc_in_token.bin", valid_tok[:-1]), "llama2c_tokenizer", "format_error",
          "truncated inside token 7")
    entry(put("llama2c/tok_trunc_in_token_header.bin", valid_tok + b"\0\0\0"), "llama2c_tokenizer", "format_error",
          "truncated in the header of token 8")
    entry(put("llama2c/tok_negative_length.bin",
              llama2c_tok_bytes(tok[:2]) + struct.pack("<fi", 0.0, -1)), "llama2c_tokenizer", "format_error",
          "length -1 of token 2")
    entry(put("llama2c/tok_length_int_max.bin",
              llama2c_tok_bytes(tok[:2]) + struct.pack("<fi", 0.0, 2 ** 31 - 1)), "llama2c_tokenizer", "format_error",
          "outside [0, max_token_length")
    entry(put("llama2c/tok_nan_score.bin", llama2c_tok_bytes(tok[:2]) + struct.pack("<fi", math.nan, 1) + b"a"),
          "llama2c_tokenizer", "format_error", "NaN or Inf")
    entry(put("llama2c/tok_max_len_zero.bin", llama2c_tok_bytes(tok, max_len=0)), "llama2c_tokenizer", "format_error",
          "max_token_length 0")
    # open_model: a llama2.c checkpoint whose tokenizer beside it has more tokens than the model
    put("open/llama2c_vocab/model.bin", good)
    put("open/llama2c_vocab/tokenizer.bin", llama2c_tok_bytes(tok + [b"c", b"d"]))
    entry("open/llama2c_vocab/model.bin", "open_model", "format_error", "")


# --- GGUF ----------------------------------------------------------------------------------------
GT = {"u8": 0, "i8": 1, "u16": 2, "i16": 3, "u32": 4, "i32": 5, "f32": 6, "bool": 7, "str": 8, "arr": 9, "u64": 10,
      "i64": 11, "f64": 12}


def gstr(s):
    b = s if isinstance(s, bytes) else s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def gguf_bytes(kv, tensors, version=3, n_tensors=None, n_kv=None, alignment=32, sections=None):
    """kv: list of (key, type name, packed value bytes); tensors: list of (name, dims, ggml type, data)."""
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                                 len(kv) if n_kv is None else n_kv)
    kvb = b"".join(gstr(k) + struct.pack("<I", GT[t]) + v for k, t, v in kv)
    info, data, off = b"", b"", 0
    for name, dims, gtype, payload in tensors:
        info += gstr(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        info += struct.pack("<IQ", gtype, off)
        padded = payload + b"\0" * ((alignment - len(payload) % alignment) % alignment)
        data += padded
        off += len(padded)
    pre = head + kvb + info
    pad = b"\0" * ((alignment - len(pre) % alignment) % alignment)
    if sections is not None:
        sections.update(head=len(head), kv=len(head) + len(kvb), info=len(pre), data=len(pre) + len(pad))
    return pre + pad + data


def gguf_entries():
    kv = [("general.architecture", "str", gstr("llama")), ("general.alignment", "u32", struct.pack("<I", 32))]
    tensors = [("a", [4], 0, f32([1, 2, 3, 4])), ("b", [8, 2], 0, f32(list(range(16))))]
    cut = {}
    good = gguf_bytes(kv, tensors, sections=cut)
    entry(put("gguf/valid.gguf", good), "gguf", "none", "")
    entry(put("gguf/bad_magic.gguf", b"GGUG" + good[4:]), "gguf", "format_error", "")
    entry(put("gguf/version_1.gguf", gguf_bytes(kv, tensors, version=1)), "gguf", "format_error", "")
    # truncated at every section boundary (and inside each)
    for label, at in (("in_magic", 2), ("after_magic", 4), ("in_counts", 12), ("after_counts", cut["head"]),
                      ("in_kv", cut["head"] + 10), ("after_kv", cut["kv"]), ("in_tensor_info", cut["kv"] + 9),
                      ("after_tensor_info", cut["info"]), ("after_padding", cut["data"]), ("in_data", len(good) - 40)):
        entry(put("gguf/trunc_%s.gguf" % label, good[:at]), "gguf", "format_error", "")
    # counts, lengths, dimensions and offsets overflowing 64-bit arithmetic
    entry(put("gguf/n_tensors_u64_max.gguf", gguf_bytes(kv, tensors, n_tensors=U64_MAX)), "gguf", "format_error", "")
    entry(put("gguf/n_kv_u64_max.gguf", gguf_bytes(kv, tensors, n_kv=U64_MAX)), "gguf", "format_error", "")
    entry(put("gguf/key_length_u64_max.gguf", good[:cut["head"]] + struct.pack("<Q", U64_MAX) + good[cut["head"] + 8:]),
          "gguf", "format_error", "")
    entry(put("gguf/array_length_u64_max.gguf",
              gguf_bytes(kv + [("x.arr", "arr", struct.pack("<IQ", GT["u32"], U64_MAX))], tensors)), "gguf",
          "format_error", "")
    entry(put("gguf/dims_product_overflows.gguf",
              gguf_bytes(kv, [("a", [2 ** 32, 2 ** 32, 4], 0, f32([1, 2, 3, 4]))])), "gguf", "format_error", "")
    entry(put("gguf/offset_u64_max.gguf",
              gguf_bytes(kv, tensors).replace(gstr("b") + struct.pack("<I", 2) + struct.pack("<QQ", 8, 2) +
                                              struct.pack("<IQ", 0, 32),
                                              gstr("b") + struct.pack("<I", 2) + struct.pack("<QQ", 8, 2) +
                                              struct.pack("<IQ", 0, U64_MAX - 31))), "gguf", "format_error", "")
    entry(put("gguf/unknown_tensor_type.gguf", gguf_bytes(kv, [("a", [4], 99, f32([1, 2, 3, 4]))])), "gguf",
          "format_error", "")
    entry(put("gguf/unknown_value_type.gguf", gguf_bytes(kv, tensors)[:cut["head"]] + gstr("k") + struct.pack("<I", 13)),
          "gguf", "format_error", "")
    entry(put("gguf/duplicate_key.gguf", gguf_bytes(kv + [kv[0]], tensors)), "gguf", "format_error", "")
    entry(put("gguf/duplicate_tensor.gguf", gguf_bytes(kv, tensors + [tensors[0]])), "gguf", "format_error", "")
    entry(put("gguf/alignment_not_power_of_2.gguf",
              gguf_bytes([kv[0], ("general.alignment", "u32", struct.pack("<I", 24))], tensors, alignment=24)), "gguf",
          "format_error", "alignment")
    entry(put("gguf/bool_byte_2.gguf", gguf_bytes(kv + [("x.flag", "bool", b"\x02")], tensors)), "gguf",
          "format_error", "")
    entry(put("gguf/key_bad_utf8.gguf", gguf_bytes(kv + [(b"x.\xff", "u8", b"\x01")], tensors)), "gguf",
          "format_error", "")
    entry(put("gguf/zero_dims.gguf", gguf_bytes(kv, [("a", [], 0, b"")])), "gguf", "format_error", "")
    entry(put("gguf/q8_partial_block.gguf", gguf_bytes(kv, [("a", [16], 8, b"\0" * 18)])), "gguf", "format_error", "")
    # the model importer on a valid container of the wrong architecture / without tensors
    entry(put("gguf/arch_gpt2.gguf", gguf_bytes([("general.architecture", "str", gstr("gpt2"))], tensors)),
          "gguf_model", "format_error", "gpt2")
    entry(put("gguf/nan_llama_tensor.gguf", gguf_bytes(kv, [("token_embd.weight", [4], 0, f32([1, math.nan, 3, 4]))])),
          "gguf_model", "format_error", "")
    entry(put("gguf/llama_without_tensors.gguf", gguf_bytes([("general.architecture", "str", gstr("llama"))], [])),
          "gguf_model", "format_error", "")
    entry(put("gguf/trunc_open_model.gguf", good[:cut["info"]]), "open_model", "format_error", "")


# --- lowbit saved model (save_quantized_model's safetensors) --------------------------------------
MODEL_FIELDS = {"architecture": "llama", "dim": "8", "hidden_dim": "16", "n_layers": "1", "n_heads": "2",
                "n_kv_heads": "1", "vocab_size": "8", "seq_len": "16", "head_dim": "4", "norm_eps": "1e-05",
                "rope_theta": "10000", "rope": "rotate_half", "qk_norm": "false", "attention_bias": "false",
                "n_experts": "0", "n_experts_per_token": "0", "moe_hidden_dim": "0", "norm_topk_prob": "true",
                "bos_token": "0", "stop_token": "1"}
INT4_RECIPE = "weights=int4;solver=rtn;rotation=none;activation=fp32"
LINEARS = {"wq": (8, 8), "wk": (4, 8), "wv": (4, 8), "wo": (8, 8), "w1": (16, 8), "w2": (8, 16), "w3": (16, 8)}


def lowbit_model(fields=None, drop_meta=(), tweak=None, meta_extra=None):
    fields = dict(MODEL_FIELDS, **(fields or {}))
    meta = {"lowbit.version": "0,1,0", "lowbit.recipe": "fp32",
            "lowbit.recipe_fields": "weights=fp32;solver=rtn;rotation=none;activation=fp32",
            "lowbit.model": ";".join("%s=%s" % kv for kv in fields.items())}
    ones = lambda n: f32([1.0] * n)
    tensors = {"token_embedding": ("F32", [8, 8], f32([0.01 * (i % 7) for i in range(64)])),
               "classifier": ("F32", [8, 8], f32([0.02 * (i % 5) for i in range(64)])),
               "rms_final": ("F32", [1, 8], ones(8)),
               "layers.0.rms_att": ("F32", [1, 8], ones(8)), "layers.0.rms_ffn": ("F32", [1, 8], ones(8))}
    for slot, (r, c) in LINEARS.items():
        n = "layers.0." + slot
        meta[n + ".format"] = "dense"
        meta[n + ".shape"] = "%d,%d" % (r, c)
        meta[n + ".dense_bits"] = "32"
        tensors[n + ".weight"] = ("F32", [r, c], f32([0.01 * ((i * 3) % 7 - 3) for i in range(r * c)]))
    meta.update(meta_extra or {})
    for k in drop_meta:
        meta.pop(k)
    if tweak:
        tweak(meta, tensors)
    return st_bytes([(k, v[0], v[1], v[2]) for k, v in sorted(tensors.items())], meta)


def lowbit_entries():
    entry(put("lowbit/valid.safetensors", lowbit_model()), "lowbit_model", "none", "")
    entry(put("lowbit/valid_open_model.safetensors", lowbit_model()), "open_model", "none", "")
    entry(put("lowbit/plain_safetensors.safetensors", st_bytes([("a", "F32", [1], f32([1]))])), "lowbit_model",
          "format_error", "metadata 'lowbit.recipe' is missing")
    entry(put("lowbit/no_model_fields.safetensors", lowbit_model(drop_meta=["lowbit.model"])), "lowbit_model",
          "format_error", "lowbit.model")
    entry(put("lowbit/dim_overflow.safetensors", lowbit_model({"dim": "99999999999999999999"})), "lowbit_model",
          "format_error", "dim")
    entry(put("lowbit/unknown_field.safetensors", lowbit_model(meta_extra={
        "lowbit.model": ";".join("%s=%s" % kv for kv in MODEL_FIELDS.items()) + ";colour=blue"})), "lowbit_model",
          "format_error", "unknown keys")
    entry(put("lowbit/bad_recipe.safetensors", lowbit_model(meta_extra={"lowbit.recipe_fields": "weights=int77"})),
          "lowbit_model", "format_error", "recipe")

    def nan_norm(meta, t):
        t["rms_final"] = ("F32", [1, 8], f32([1.0] * 7 + [math.nan]))
    entry(put("lowbit/nan_rms_final.safetensors", lowbit_model(tweak=nan_norm)), "lowbit_model", "format_error",
          "holds NaN or Inf")

    def shape_meta(meta, t):
        meta["layers.0.w1.shape"] = "8,16"
    entry(put("lowbit/shape_vs_model.safetensors", lowbit_model(tweak=shape_meta)), "lowbit_model", "format_error",
          "lowbit.model implies")

    def int4_recipe(meta):
        # an int4 recipe whose other linears are counted dense fallbacks: the loader accepts the
        # recipe, so the entries below reach the codes checks
        meta["lowbit.recipe_fields"] = INT4_RECIPE
        for slot in LINEARS:
            meta["layers.0." + slot + ".dense_bits"] = "4.5"

    def codes_f32(meta, t):
        int4_recipe(meta)
        meta["layers.0.wq.format"] = "int4"
        t.pop("layers.0.wq.weight")
        t["layers.0.wq.codes"] = ("F32", [32], f32([0] * 32))
        t["layers.0.wq.scale"] = ("F16", [8], b"\0\x3c" * 8)
    entry(put("lowbit/codes_wrong_dtype.safetensors", lowbit_model(tweak=codes_f32)), "lowbit_model", "format_error",
          "must be U8")

    def codes_short(meta, t):
        int4_recipe(meta)
        meta["layers.0.wq.format"] = "int4"
        t.pop("layers.0.wq.weight")
        t["layers.0.wq.codes"] = ("U8", [100], b"\x88" * 100)
        t["layers.0.wq.scale"] = ("F16", [8], b"\0\x3c" * 8)
    entry(put("lowbit/codes_wrong_size.safetensors", lowbit_model(tweak=codes_short)), "lowbit_model", "format_error",
          "layers.0.wq")

    def embedding_empty(meta, t):
        t["token_embedding"] = ("F32", [0, 8], b"")
    entry(put("lowbit/empty_embedding.safetensors", lowbit_model(tweak=embedding_empty)), "lowbit_model",
          "format_error", "token_embedding is 0x8")

    def nan_classifier(meta, t):
        t["classifier"] = ("F32", [8, 8], f32([0.5] * 63 + [math.inf]))
    entry(put("lowbit/inf_classifier.safetensors", lowbit_model(tweak=nan_classifier)), "lowbit_model",
          "format_error", "'classifier' holds NaN or Inf")

    def nan_dense(meta, t):
        t["layers.0.wk.weight"] = ("F32", [4, 8], f32([math.nan] * 32))
    entry(put("lowbit/nan_dense_linear.safetensors", lowbit_model(tweak=nan_dense)), "lowbit_model",
          "format_error", "'layers.0.wk.weight' holds NaN or Inf")

    def rank1_lowrank(t, a_half):
        # a rank-1 low-rank term on layers.0.wo: a = 8 copies of the fp16 `a_half`, b = ones
        t["layers.0.wo.lowrank_a"] = ("F16", [8, 1], a_half * 8)
        t["layers.0.wo.lowrank_b"] = ("F16", [1, 8], b"\0\x3c" * 8)

    def inf_lowrank(meta, t):
        rank1_lowrank(t, b"\0\x7c")  # +Inf
    entry(put("lowbit/inf_lowrank.safetensors", lowbit_model(tweak=inf_lowrank)), "lowbit_model",
          "format_error", "'layers.0.wo.lowrank_a' holds NaN or Inf")

    # the recorded recipe would not produce the stored layers (docs/reliability.md, "Saved models reload as saved")
    entry(put("lowbit/recipe_vs_layers.safetensors", lowbit_model(meta_extra={"lowbit.recipe_fields": INT4_RECIPE})),
          "lowbit_model",
          "format_error", "is stored as 'dense', but recipe weights=int4")

    def lowrank_without_recipe(meta, t):
        rank1_lowrank(t, b"\0\x3c")  # 1.0
    entry(put("lowbit/lowrank_vs_recipe.safetensors", lowbit_model(tweak=lowrank_without_recipe)), "lowbit_model",
          "format_error", "rank-1 correction, recipe low_rank=0")

    def missing_weight(meta, t):
        t.pop("layers.0.w2.weight")
    entry(put("lowbit/missing_weight.safetensors", lowbit_model(tweak=missing_weight)), "lowbit_model",
          "format_error", "layers.0.w2.weight")
    entry(put("lowbit/trunc_open_model.safetensors", lowbit_model()[:200]), "open_model", "format_error", "")


# --- exports: the writer must leave no output behind when it fails ----------------------------------
def export_entries():
    # a malformed input: the export fails while loading, before anything is written
    entry("llama2c/trunc_in_weights.bin", "export_gguf", "format_error", "truncated", "exports/from_truncated.gguf")
    entry("hf/nan_weight", "export_gguf", "numeric_error", "NaN or Inf", "exports/from_nan.gguf")
    entry("lowbit/shape_vs_model.safetensors", "save_quantized", "format_error", "lowbit.model implies",
          "exports/from_bad_lowbit.safetensors")
    # a valid input but an output folder that does not exist: the writer fails on create
    tok = [b"<unk>", b"<s>", b"</s>", b" ", b"a", b"b", b" a", b"ab"]
    put("exports/in_llama2c/model.bin", llama2c_bytes())
    put("exports/in_llama2c/tokenizer.bin", llama2c_tok_bytes(tok))
    entry("exports/in_llama2c/model.bin", "export_gguf", "format_error", "cannot create", "exports/missing/out.gguf")
    entry("lowbit/valid.safetensors", "save_quantized", "format_error", "cannot create",
          "exports/missing/out.safetensors")


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    safetensors_entries()
    sharded_entries()
    hf_entries()
    tokenizer_json_entries()
    llama2c_entries()
    gguf_entries()
    lowbit_entries()
    export_entries()
    with open(os.path.join(OUT, "manifest.tsv"), "w", encoding="utf-8") as f:
        f.write("# name\tloader\texpected exception class\tmessage fragment\texport output\n")
        for e in ENTRIES:
            f.write("\t".join(e) + "\n")
    bad = sum(1 for e in ENTRIES if e[2] != "none")
    print("lowbit malformed catalogue: %d entries (%d malformed, %d valid baselines) in %s"
          % (len(ENTRIES), bad, len(ENTRIES) - bad, OUT))


if __name__ == "__main__":
    main()
