#!/usr/bin/env python3
"""Compile-time budget of lowbit's headers (issue 17; CTest `compile_time_budget`, label structure).

    compile_budget.py --budgets tests/structure/compile_budget.txt --include DIR --cxx g++
                      --flags-file FILE [--jobs 2] [--report out.md] [--only HEADER ...]

Every header under DIR/lowbit/ is compiled alone, one translation unit each, in the form
`#include <h>` twice (so it also checks that the header is self-contained and that its include guard
works: this test replaces the old `self_contained_headers` object library), with the flags of
lowbit's tests (FILE: one flag per line, written by tests/CMakeLists.txt). The measure is the
compiler's CPU time (user + system of the driver and everything it waited for, from wait4), not wall
time, and its peak RSS.

Budgets (seconds, per header class) and the safety margin are in the data file (compile_budget.txt).
They are figures for the reference machine, on which `#include <Eigen/Dense>` alone costs the data
file's `reference` seconds. The test compiles that reference translation unit among the
headers five times (first, at each quarter, last, so it shares their load) and divides every measured
time by slowdown = max(1, median(reference) / reference seconds): a slower or busier machine raises
every figure by about the same factor, and that is what the normalisation removes. A header whose
first measurement is over its limit is compiled twice more (beside a reference each time) and judged
on the median of its three times: one noisy compile does not fail CI, a header that is really over
does. A header fails when normalised time > budget × margin; between budget and budget × margin it
is reported as a warning.
Exit status 1 names every failing header with its class, time, budget and limit.
"""
import argparse
import concurrent.futures
import fnmatch
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def parse_budgets(path):
    """Returns (classes {name: seconds}, rules [(pattern, class, own_limit or None, comment, line)],
    margin, (reference_header, reference_seconds))."""
    classes, rules, margin, reference = {}, [], None, None
    for lineno, raw in enumerate(pathlib.Path(path).read_text().splitlines(), 1):
        text, _, comment = raw.partition("#")
        f = text.split()
        if not f:
            continue
        where = f"{path}:{lineno}"
        if f[0] == "class":
            if len(f) != 3:
                sys.exit(f"{where}: expected 'class NAME SECONDS'")
            classes[f[1]] = float(f[2])
        elif f[0] == "margin":
            margin = float(f[1])
        elif f[0] == "reference":
            reference = (f[1], float(f[2]))
        else:
            if len(f) not in (2, 3):
                sys.exit(f"{where}: expected 'HEADER CLASS [OWN_LIMIT_SECONDS]'")
            if f[1] not in classes:
                sys.exit(f"{where}: unknown class '{f[1]}' (declare it first with 'class {f[1]} SECONDS')")
            own = float(f[2]) if len(f) == 3 else None
            if own is not None and not comment.strip().startswith("over budget (issue 17)"):
                sys.exit(f"{where}: an own limit needs the comment '# over budget (issue 17): why'")
            rules.append((f[0], f[1], own, comment.strip(), where))
    if margin is None or reference is None or not classes:
        sys.exit(f"{path}: needs 'margin', 'reference' and at least one 'class' line")
    return classes, rules, margin, reference


def classify(header, rules):
    """Exact entries win over patterns; among patterns the first match wins."""
    for pat, cls, own, comment, where in rules:
        if pat == header:
            return cls, own, comment
    for pat, cls, own, comment, where in rules:
        if any(c in pat for c in "*?[") and fnmatch.fnmatchcase(header, pat):
            return cls, own, comment
    return None


def compile_tu(cxx, flags, source_text, tmp, tag):
    """Compiles one TU; returns (cpu seconds, peak RSS MB, returncode, stderr text)."""
    tu = pathlib.Path(tmp) / f"{tag}.cpp"
    tu.write_text(source_text)
    err_path = pathlib.Path(tmp) / f"{tag}.err"
    with open(err_path, "w") as err:
        p = subprocess.Popen([cxx, *flags, "-c", str(tu), "-o", os.devnull], stdout=err, stderr=err)
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
    return ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024.0, p.returncode, err_path.read_text()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budgets", required=True)
    ap.add_argument("--include", required=True, help="folder holding lowbit/")
    ap.add_argument("--cxx", required=True)
    ap.add_argument("--flags-file", required=True, help="compiler flags, one per line")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--report", help="also write the table (Markdown) here")
    ap.add_argument("--only", nargs="*", help="headers to measure (default: all)")
    a = ap.parse_args()

    classes, rules, margin, (ref_header, ref_seconds) = parse_budgets(a.budgets)
    inc = pathlib.Path(a.include).resolve()
    flags = []
    for line in pathlib.Path(a.flags_file).read_text().splitlines():
        line = line.strip()
        if not line or line in ("-I", "-isystem", "-D"):
            continue
        if line in ("-I/usr/include", "-I/usr/local/include"):
            continue  # the compiler's own system folders: GCC ignores them on the command line anyway
        if line.startswith("-I") and pathlib.Path(line[2:]).resolve() != inc:
            line = "-isystem" + line[2:]  # third-party headers: as CMake passes imported targets' folders
        flags.append(line)

    headers = sorted(str(p.relative_to(inc)) for p in (inc / "lowbit").rglob("*.hpp"))
    problems = []
    exact = {pat for pat, *_ in rules if not any(c in pat for c in "*?[")}
    for pat in sorted(exact - set(headers)):
        problems.append(f"{pat}: listed in {a.budgets} but not found under {inc}")
    plan = []
    for h in headers:
        c = classify(h, rules)
        if c is None:
            problems.append(f"{h}: no class in {a.budgets} (add a line 'HEADER CLASS')")
        elif not a.only or h in a.only:
            plan.append((h, *c))
    if problems:
        print("\n".join(problems))
        return 1

    # The reference TU five times: first, at each quarter and last in the queue.
    ref_src = f"#include <{ref_header}>\n"
    def hdr_src(h):
        return f"#include <{h}>\n#include <{h}> // include guard works\n"
    jobs = [("ref", None, ref_src)]
    quarters = {len(plan) * q // 4 for q in (1, 2, 3)}
    for i, (h, *_) in enumerate(plan):
        if i in quarters:
            jobs.append(("ref", None, ref_src))
        jobs.append(("hdr", h, hdr_src(h)))
    jobs.append(("ref", None, ref_src))

    results, refs, lock = {}, [], threading.Lock()
    retried = {}
    start = time.monotonic()
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        def measure(job_list, tag):
            def run(i, job):
                kind, h, src = job
                cpu, rss, rc, err = compile_tu(a.cxx, flags, src, tmp, f"{tag}{i}")
                with lock:
                    if kind == "ref":
                        if rc != 0:
                            problems.append(f"reference <{ref_header}> failed to compile:\n{err[-2000:]}")
                        refs.append(cpu)
                    elif h in results:
                        retried.setdefault(h, [results[h][0]]).append(cpu)
                        print(f"  {h} (again): {cpu:.1f} s CPU", flush=True)
                    else:
                        results[h] = (cpu, rss, rc, err)
                        print(f"  {h}: {cpu:.1f} s CPU, {rss:.0f} MB{'' if rc == 0 else ' (does not compile)'}", flush=True)
            with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:
                list(pool.map(lambda ij: run(*ij), enumerate(job_list)))

        measure(jobs, "tu")
        if not problems:
            # Second look at headers over their limit: twice more, each beside a reference compile.
            slow = max(1.0, statistics.median(refs) / ref_seconds)
            over = [h for h, cls, own, _ in plan if results[h][2] == 0
                    and results[h][0] / slow > (own if own is not None else classes[cls]) * margin]
            again = []
            for h in over:
                again += [("hdr", h, hdr_src(h)), ("ref", None, ref_src)] * 2
            measure(again, "re")
            for h in over:
                cpu, rss, rc, err = results[h]
                results[h] = (statistics.median(retried[h]), rss, rc, err)
    wall = time.monotonic() - start
    load1 = os.getloadavg()[0]
    if problems:
        print("\n".join(problems))
        return 1

    ref_median = statistics.median(refs)
    slowdown = max(1.0, ref_median / ref_seconds)
    lines = [f"compile-time budget: {len(plan)} headers, {a.jobs} jobs, {wall:.0f} s wall, "
             f"load average {load0:.1f} -> {load1:.1f}",
             f"reference <{ref_header}>: {', '.join(f'{r:.2f}' for r in refs)} s CPU (median {ref_median:.2f}; "
             f"{ref_seconds:g} s on the reference machine) -> slowdown {slowdown:.2f}; margin {margin:g}x",
             "", "| header | class | CPU s | normalised s | budget s | limit s | peak RSS MB | |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    failures, warnings = [], []
    for h, cls, own, comment in plan:
        cpu, rss, rc, err = results[h]
        budget = own if own is not None else classes[cls]
        limit = budget * margin
        norm = cpu / slowdown
        mark = ""
        if rc != 0:
            mark = "DOES NOT COMPILE"
            failures.append(f"{h} does not compile on its own (or twice: include guard):\n{err[-3000:]}")
        elif norm > limit:
            mark = "FAIL"
            failures.append(f"{h} (class {cls}): {norm:.1f} s normalised ({cpu:.1f} s CPU / slowdown "
                            f"{slowdown:.2f}) > limit {limit:.1f} s = budget {budget:g} s x margin {margin:g}")
        elif norm > budget:
            mark = "over budget, within margin"
            warnings.append(f"{h} (class {cls}): {norm:.1f} s normalised > budget {budget:g} s (limit {limit:.1f} s)")
        if h in retried:
            mark = (mark + "; " if mark else "") + "median of " + ", ".join(f"{t:.1f}" for t in retried[h]) + " s"
        if own is not None:
            mark = (mark + "; " if mark else "") + comment
        lines.append(f"| `{h}` | {cls} | {cpu:.1f} | {norm:.1f} | {budget:g} | {limit:.1f} | {rss:.0f} | {mark} |")
    total = sum(results[h][0] for h, *_ in plan)
    lines += ["", f"total CPU {total:.0f} s ({total / slowdown:.0f} s normalised)"]
    print("\n".join(lines))
    if a.report:
        pathlib.Path(a.report).write_text("\n".join(lines) + "\n")
    for w in warnings:
        print("warning:", w)
    for f in failures:
        print("FAILED:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
