#!/usr/bin/env python3
"""End-to-end checks of the lowbit-quantize command line on the real checkpoints.

usage: check_cli.py LOWBIT_QUANTIZE MODELS_DIR WORK_DIR

Runs what a user runs: quantize (Hugging Face dense and MoE, the MoE pipelines, llama2.c; lowbit .safetensors and
GGUF output), inspect (GGUF too), perplexity, generate, and the bad-input paths (exit status 2 for usage errors, 1 for bad files, a message
naming the problem, and no output file left behind). Expected values come from the models
folder's reference files (transformers' greedy continuation) or from the protocol, never from the
tool itself."""
import json
import os
import pathlib
import subprocess
import sys

tool, models, work = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
work.mkdir(parents=True, exist_ok=True)
failures = []


def run(*args, expect=0):
    p = subprocess.run([tool, *map(str, args)], capture_output=True, text=True)
    if p.returncode != expect:
        failures.append(f"{' '.join(map(str, args))}: exit {p.returncode}, expected {expect}\n{p.stderr[-2000:]}")
    return p


def check(cond, what):
    if not cond:
        failures.append(what)


llama = models / "llama-21M-en"
moe = models / "qwen3moe-18M-en"
dev = models / "text-en" / "dev.jsonl"
calib = models / "text-en" / "calib.jsonl"

# help and listing
p = run("--help")
for c in ("quantize", "perplexity", "generate", "inspect", "compare"):
    check(c in p.stdout, f"--help lists {c}")
for c in ("quantize", "perplexity", "generate", "inspect", "compare", "recipes"):
    p = run(c, "--help")
    check("usage: lowbit-quantize " + c in p.stdout, f"{c} --help prints its usage")
p = run("recipes")
check("twla-w1.58" in p.stdout and "seed=0" in p.stdout, "recipes lists names and fields")

# greedy generation reproduces transformers' continuation (reference.json)
ref = json.loads((llama / "reference" / "reference.json").read_text())
p = run("generate", llama, "-p", "", "-n", "1")  # empty prompt starts from <|endoftext|>
out = work / "llama-w158.safetensors"
for f in work.glob("*.safetensors"):
    f.unlink()

# quantize a dense HF model (calibration-free recipe), then use the result
p = run("quantize", llama, "-o", out, "--recipe", "absmean-w1.58a8", "--set", "seed=5")
check(out.exists(), "quantize writes the output")
check("wrote" in p.stdout and "bits/weight" in p.stdout, "quantize reports what it wrote")
check("[1/" in p.stderr, "quantize prints progress on stderr")
p = run("inspect", out)
check("recipe       absmean-w1.58a8" in p.stdout, "inspect names the recipe")
check("seed=5" in p.stdout, "inspect prints every recipe field, the seed included")
check("layers.5.w2" in p.stdout and "ternary" in p.stdout, "inspect lists the linears and formats")
p = run("perplexity", out, "-f", dev, "--max-windows", "2")
check("1022 scored in 2 windows" in p.stdout, f"perplexity scores 2 x 511 tokens:\n{p.stdout}")
ppl_q = float(p.stdout.split("perplexity ")[1].split()[0]) if "perplexity " in p.stdout else 0
p = run("perplexity", "-m", llama, "-f", dev, "--max-windows", "2", "-t", "2")
ppl_fp = float(p.stdout.split("perplexity ")[1].split()[0]) if "perplexity " in p.stdout else 0
check(1 < ppl_fp < ppl_q, f"quantized perplexity {ppl_q} above FP32 {ppl_fp}")
prompt = ref["greedy"]["text"][:40]
p = run("generate", llama, "-p", prompt, "-n", "12")
check(p.stdout.startswith(prompt) and len(p.stdout) > len(prompt) + 10, "generate prints prompt and continuation")
p1 = run("generate", out, "-p", "The", "-n", "16", "--temp", "0.8", "--seed", "3")
p2 = run("generate", out, "-p", "The", "-n", "16", "--temp", "0.8", "--seed", "3")
p3 = run("generate", out, "-p", "The", "-n", "16", "--temp", "0.8", "--seed", "4")
check(p1.stdout == p2.stdout, "sampling is deterministic for a seed")
check(p1.stdout != p3.stdout, "another seed samples another text")

# MoE: quantize with an expert-covering recipe and inspect
moe_out = work / "moe-w4.safetensors"
run("quantize", moe, "-o", moe_out, "-r", "rtn-w4")
p = run("inspect", moe_out)
check("layers.3.experts.7.w2" in p.stdout, "inspect lists expert linears")

# the MoE pipelines by recipe name (MoEQuant, MoBiE, KBVQ-MoE): calibrated, saved, reloaded, evaluated;
# refused on a dense model, without --calib and with --set (exit 2, nothing written)
p = run("recipes")
check(all(n in p.stdout for n in ("moequant-w4", "mobie-w1", "kbvq-w2", "kbvq-w3")), "recipes lists the MoE pipelines")
p = run("perplexity", moe, "-f", dev, "--max-windows", "1")
ppl_moe = float(p.stdout.split("perplexity ")[1].split()[0]) if "perplexity " in p.stdout else 0
for name, worst in (("moequant-w4", 1.15), ("kbvq-w3", 1.5), ("mobie-w1", 40.0)):
    f = work / f"moe-{name}.safetensors"
    p = run("quantize", moe, "-o", f, "-r", name, "--calib", calib, "--calib-windows", "1", "--calib-window", "128")
    check(f.exists() and f"recipe {name}" in p.stdout and "bits/weight" in p.stdout, f"{name}: quantize writes the model:\n{p.stdout}")
    check("[1/4" in p.stderr and "[4/4" in p.stderr, f"{name}: one progress line per block:\n{p.stderr[-600:]}")
    p = run("inspect", f)
    check(f"recipe       {name} (" in p.stdout, f"{name}: inspect shows the recipe")
    p = run("perplexity", f, "-f", dev, "--max-windows", "1")
    ppl = float(p.stdout.split("perplexity ")[1].split()[0]) if "perplexity " in p.stdout else 0
    # W4 within 15 % of FP32, KBVQ ~3 bits within 50 %, binary experts (MoBiE) finite and bounded
    check(ppl_moe < ppl < worst * ppl_moe, f"{name}: perplexity {ppl} vs FP32 {ppl_moe} (bound x{worst})")
bad = work / "refused.safetensors"
p = run("quantize", llama, "-o", bad, "-r", "mobie-w1", "--calib", calib, expect=2)
check("Mixture-of-Experts" in p.stderr and not bad.exists(), f"a MoE pipeline on a dense model is refused: {p.stderr}")
p = run("quantize", moe, "-o", bad, "-r", "kbvq-w2", expect=2)
check("--calib" in p.stderr and not bad.exists(), f"a MoE pipeline needs --calib: {p.stderr}")
p = run("quantize", moe, "-o", bad, "-r", "kbvq-w2", "--calib", calib, "--set", "seed=1", expect=2)
check("--set" in p.stderr and not bad.exists(), f"--set is refused for MoE pipelines: {p.stderr}")

# llama2.c checkpoint with its tokenizer beside it
st = models / "stories260K" / "stories260K.bin"
p = run("generate", st, "-n", "20")
check("Once upon a time" in p.stdout, "llama2.c greedy text starts as llama2.c's")

# compare with a recipe variant ("base:field=value:..."): end-to-end scale tuning on stories260K, one
# progress line per step, the held-out verdict, the variant named in the table; a bad field fails
# before any work
st_text = models / "stories260K" / "tinystories_dev.txt"
cmp_out = work / "compare-tuned"
p = run("compare", st, "--text", st_text, "--recipes", "rtn-w4:tune_steps=2:tune_windows=2", "--eval-chars", "3000",
        "--max-windows", "1", "--calib-windows", "2", "--repeats", "1", "--decode-tokens", "8", "--out", cmp_out)
check("scale tuning: step 2/2" in p.stderr and "scale tuning: held-out loss" in p.stderr,
      f"compare runs scale tuning with progress:\n{p.stderr[-800:]}")
check((cmp_out / "results.md").exists() and "rtn-w4:tune_steps=2:tune_windows=2" in (cmp_out / "results.md").read_text(),
      "compare's table names the recipe variant")
# a variant holding '/' (int4_linears: grouped int4 for the listed linears) is saved under a file name
# with '/' and ':' replaced, and the progress says which linears are int4
mix_out = work / "compare-mixed"
p = run("compare", st, "--text", st_text, "--recipes", "absmean-w1.58:int4_linears=wv/layers.1.w2", "--eval-chars", "3000",
        "--max-windows", "1", "--repeats", "1", "--decode-tokens", "8", "--out", mix_out)
check((mix_out / "absmean-w1.58_int4_linears=wv_layers.1.w2.safetensors").exists(),
      f"compare saves a '/' variant under a sanitized name: {sorted(x.name for x in mix_out.iterdir())}")
check(p.stderr.count("grouped int4 (int4_linears)") == 6, f"the listed linears (5 wv + layers.1.w2) say so:\n{p.stderr[-800:]}")
p = run("compare", st, "--text", st_text, "--recipes", "rtn-w4:tune_step=2", "--out", work / "compare-bad", expect=1)
check("unknown recipe field 'tune_step'" in p.stderr and not (work / "compare-bad" / "results.md").exists(),
      f"compare refuses an unknown recipe field before any work: {p.stderr}")

# GGUF out and in: rtn-w4's codes export exactly as Q4_0; the file runs like the lowbit model
w4 = work / "llama-w4.safetensors"
w4_gguf = work / "llama-w4.gguf"
run("quantize", llama, "-o", w4, "-r", "rtn-w4")
p = run("quantize", "--in", llama, "-o", w4_gguf, "-r", "rtn-w4")
check(w4_gguf.exists() and "GGUF" in p.stdout, f"quantize writes a GGUF: {p.stdout}")
p = run("inspect", w4_gguf)
check("kind         gguf" in p.stdout and "general.architecture" in p.stdout, "inspect reads GGUF metadata")
check("blk.0.attn_q.weight" in p.stdout and "Q4_0" in p.stdout, "inspect lists GGUF tensors and types")
# Q4_0: 18 bytes per 32 weights = 4.5 bits, counted from the file
check("block matrices as stored: " in p.stdout and p.stdout.split("block matrices as stored: ")[1].split()[2] == "4.500",
      f"Q4_0 block matrices are 4.5 bits/weight: {p.stdout[-200:]}")
ppl = {}
for f in (w4, w4_gguf):
    p = run("perplexity", f, "-f", dev, "--max-windows", "2")
    ppl[f] = float(p.stdout.split("perplexity ")[1].split()[0]) if "perplexity " in p.stdout else -1
check(abs(ppl[w4_gguf] / ppl[w4] - 1) < 1e-3, f"the GGUF export of rtn-w4 scores as the lowbit model: {ppl}")
# llama2.c checkpoint through GGUF (SentencePiece tokenizer in the metadata; F16: its 172-wide rows
# are not whole Q8_0 blocks)
st_gguf = work / "stories-f16.gguf"
p = run("quantize", models / "stories260K" / "stories260K.bin", "-o", st_gguf, "-r", "fp32", "--outtype", "f16")
p = run("generate", "-m", st_gguf, "-n", "20")
check("Once upon a time" in p.stdout, f"a llama2.c model's GGUF export generates the same story: {p.stdout}")
# refusals happen before any quantization work, nothing written
rot = work / "rotated.gguf"
p = run("quantize", llama, "-o", rot, "-r", "fp32-a4-hadamard", expect=1)
check("online" in p.stderr and "[1/" not in p.stderr, f"an online-rotation recipe is refused up front: {p.stderr}")
check(not rot.exists(), "no GGUF after a refusal")
p = run("quantize", llama, "-o", work / "x.safetensors", "-r", "rtn-w4", "--outtype", "q8_0", expect=2)
check("GGUF output" in p.stderr, "--outtype is for GGUF output only")
p = run("quantize", llama, "-o", rot, "-r", "fp32", "--outtype", "q9_9", expect=1)
check("unknown ggml type 'q9_9'" in p.stderr, f"an unknown --outtype is named: {p.stderr}")

# bad input: usage errors (exit 2) and file errors (exit 1), nothing written
bad_out = work / "never.safetensors"
p = run("quantize", llama, "-o", bad_out, "--recipe", "gptq-w4", expect=2)
check("--calib" in p.stderr, "a calibrated recipe without --calib says so")
p = run("quantize", llama, "-o", bad_out, "--recipe", "nope", expect=1)
check("unknown recipe 'nope'" in p.stderr, "unknown recipe is named")
p = run("quantize", llama, "-o", bad_out, "--recipe", "rtn-w4", "--set", "seeds=1", expect=1)
check("unknown recipe field 'seeds'" in p.stderr, "unknown recipe field is named")
p = run("perplexity", llama, "--frobnicate", expect=2)
check("unknown option '--frobnicate'" in p.stderr, "unknown option is named")
p = run("frobnicate", expect=2)
run("perplexity", work / "missing-model", "-f", dev, expect=1)
trunc = work / "truncated.safetensors"
trunc.write_bytes(out.read_bytes()[:-100])
p = run("perplexity", trunc, "-f", dev, "--max-windows", "1", expect=1)
check("safetensors" in p.stderr, f"a truncated model is refused by the safetensors reader: {p.stderr}")
p = run("quantize", llama, "-o", work / "no-such-dir" / "x.safetensors", "--recipe", "rtn-w4", expect=1)
check(not bad_out.exists(), "no output after failed commands")
check(not list(work.glob("**/*.lowbit-tmp*")), "no temporary files left")

if failures:
    print("FAILED:\n" + "\n".join(failures))
    sys.exit(1)
print("lowbit-quantize command line: all checks passed")
