"""Render the README's performance table from bench/results/*.json.

    python bench/table.py            # print the markdown
    python bench/table.py --readme   # rewrite the block between the bench markers in README.md

Benchmarks that put `case` and `impl` in extra_info are compared side by side: each row shows
its median and its speed-up over the baseline impl of the same case measured in the same run
(`eager` or `ref`).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
BASELINES = ("eager", "ref")
CONFIG_KEYS = ("preset", "batch", "dtype", "steps", "threads", "shape", "seq_len", "workers", "mode")


def fmt_time(s: float) -> str:
    return f"{s * 1e6:.1f} µs" if s < 1e-3 else f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


def case_impl(b: dict) -> tuple[str | None, str | None]:
    """(case, impl) from extra_info, else (group, the first part of the test id): kernel benchmarks
    are grouped by op and shape and named test_op[impl-shape]."""
    e = b.get("extra_info", {})
    if "case" in e:
        return e["case"], e.get("impl")
    if b.get("group") and "[" in b["name"]:
        return b["group"], b["name"].split("[", 1)[1].rstrip("]").split("-")[0]
    return None, None


def rows_for(doc: dict) -> list[str]:
    benches = doc["benchmarks"]
    base = {}
    for b in benches.values():
        case, impl = case_impl(b)
        if impl in BASELINES:
            base[case] = b["median_s"]
    out = []
    for key in sorted(benches, key=lambda k: (benches[k].get("group") or "", k)):
        b = benches[key]
        e = b.get("extra_info", {})
        cfg = ", ".join(f"{k}={e[k]}" for k in CONFIG_KEYS if k in e)
        rate = ""
        if "items_per_call" in e:
            rate = f"{e['items_per_call'] / b['median_s']:,.0f} {e.get('unit', 'items')}/s"
        ratio = ""
        case, impl = case_impl(b)
        if case in base and impl not in BASELINES:
            ratio = f"{base[case] / b['median_s']:.2f}x"
        out.append(f"| {b.get('group') or ''} | {b['name']} | {cfg} | {fmt_time(b['median_s'])} | {rate} | {ratio} |")
    return out


def render() -> str:
    parts = []
    for path in sorted((ROOT / "bench" / "results").glob("*.json")):
        doc = json.loads(path.read_text())
        parts.append(f"**{doc['device']}** (`{path.relative_to(ROOT)}`, made by `{doc.get('command', 'pytest bench/')}`)\n")
        parts.append("| group | benchmark | config | median | rate | vs baseline |")
        parts.append("|---|---|---|---|---|---|")
        parts += rows_for(doc)
        parts.append("")
    return "\n".join(parts) if parts else "_no results yet: run `python -m pytest bench/`_\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readme", action="store_true", help="rewrite the table block in README.md in place")
    args = ap.parse_args()
    table = render()
    if not args.readme:
        print(table)
        return
    readme = ROOT / "README.md"
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme}: markers {BEGIN} / {END} not found; add them where the table belongs")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    tmp = readme.with_suffix(".md.tmp")
    tmp.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")
    os.replace(tmp, readme)


if __name__ == "__main__":
    main()
