#!/usr/bin/env python3
"""include/lowbit/lowbit.hpp includes every maths header include/lowbit/*.hpp (and nothing from io/ or
model/). Usage: check_umbrella.py <repo root>."""
import pathlib
import re
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
inc = root / "include" / "lowbit"
text = (inc / "lowbit.hpp").read_text(encoding="utf-8")
got = set(re.findall(r"#include <lowbit/([^>]+)>", text))
want = {p.name for p in inc.glob("*.hpp")} - {"lowbit.hpp"}
bad = [f"lowbit.hpp misses <lowbit/{h}>" for h in sorted(want - got)]
bad += [f"lowbit.hpp includes <lowbit/{h}>, not a flat maths header" for h in sorted(got - want)]
for b in bad:
    print(b)
print(f"umbrella header: {len(got)} includes, {len(bad)} problems")
sys.exit(1 if bad else 0)
