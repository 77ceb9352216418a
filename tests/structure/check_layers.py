#!/usr/bin/env python3
"""Layer rule of lowbit's tree (docs/design.md, "Layers"):
- the maths headers (include/lowbit/*.hpp, detail/, arch/) never include the model layer
  (include/lowbit/model/) nor the file formats (include/lowbit/io/), which sit above them;
- io/ never includes the model layer;
- tools/ and examples/ never include the tests' support folder.
Exits non-zero listing every violation."""
import pathlib
import re
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
inc = root / "include" / "lowbit"
include_re = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', re.M)
bad = []


def includes(path):
    return include_re.findall(path.read_text(encoding="utf-8"))


maths = list(inc.glob("*.hpp")) + list((inc / "detail").glob("*.hpp")) + list((inc / "arch").glob("*.hpp"))
for h in maths:
    for i in includes(h):
        if i.startswith("lowbit/model/") or i.startswith("lowbit/io/"):
            bad.append(f"{h.relative_to(root)} includes {i} (maths headers sit below io/ and model/)")
for h in (inc / "io").glob("*.hpp"):
    for i in includes(h):
        if i.startswith("lowbit/model/"):
            bad.append(f"{h.relative_to(root)} includes {i} (io/ sits below the model layer)")
for folder in ("tools", "examples"):
    for src in (root / folder).rglob("*.[ch]pp"):
        for i in includes(src):
            if i in ("models.hpp", "gaussian_matrix.hpp", "random_codes.hpp") or "tests/support" in i:
                bad.append(f"{src.relative_to(root)} includes {i} from tests/support")
if not maths:
    bad.append("no maths headers found: wrong root?")
for b in bad:
    print("layer violation:", b)
print(f"checked {len(maths)} maths headers; {len(bad)} violations")
sys.exit(1 if bad else 0)
