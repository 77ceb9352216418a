#!/usr/bin/env python3
"""Every code block copied into tests/consumer/docs_snippets.cpp (or an instances/*.cpp source) between `// BEGIN <file>` and
`// END <file>` must appear verbatim (same lines, in order) in that file, so the compiled copy and
the documentation cannot drift apart. Usage: check_docs_snippets.py <repo root>."""
import pathlib
import re
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
# docs_snippets.cpp, and the compiled sources docs quote whole (instances/: separate instantiation)
sources = [root / "tests" / "consumer" / "docs_snippets.cpp", *sorted((root / "instances").glob("*.cpp"))]
blocks = [b for p in sources for b in re.findall(r"// BEGIN (\S+)\n(.*?)\n\s*// END \1", p.read_text(encoding="utf-8"), re.S)]
bad = []
for name, body in blocks:
    doc = (root / name).read_text(encoding="utf-8")
    lines = [l.rstrip() for l in body.splitlines() if l.strip()]
    if "\n".join(lines) not in "\n".join(l.rstrip() for l in doc.splitlines()):
        bad.append(f"{name}: the block copied into docs_snippets.cpp is not in the document:\n  " + "\n  ".join(lines))
for b in bad:
    print(b)
print(f"checked {len(blocks)} snippets; {len(bad)} differ")
sys.exit(1 if bad or not blocks else 0)
