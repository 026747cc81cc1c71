#!/usr/bin/env python3
"""bench/plot.py: the tables and the chart of bench/compare.sh.

    python3 bench/plot.py RESULTS.jsonl [--meta META.txt] [--png OUT.png]
                          [--benchmarks BENCHMARKS.md]

RESULTS.jsonl has one line per run, as compare.sh writes them:
{"case", "c", "phase": "throughput"|"sellout", "busy_before", "report": {...}}
where the report is `flashsale-loadtest --json`'s (or the same fields for
redis-benchmark). Prints the figures as Markdown; --png draws throughput and
p99 against concurrency (matplotlib); --benchmarks puts the figures into
BENCHMARKS.md, between the section D markers (section D is added at the end
when the file has none).
"""

import argparse
import json
import re
import sys

CASES = [
    ("naive", "naive: read, then write back read - n (no lock)"),
    ("naive-decrement", "naive: read, then stock = stock - n (no lock)"),
    ("rowlock", "row lock: SELECT ... FOR UPDATE, UPDATE, INSERT"),
    ("conditional", "conditional UPDATE ... WHERE stock >= n"),
    ("flashsale", "flashsale gateway"),
    ("redis", "limit: redis-benchmark EVALSHA reserve.lua"),
]
LABEL = dict(CASES)
BEGIN = "<!-- bench/compare.sh: figures begin (generated; do not edit by hand) -->"
END = "<!-- bench/compare.sh: figures end -->"
HEADING = "## D. Why flashsale: the row lock, a naive store and flashsale, side by side"

# The targets, at c=64.
TARGET_C = 64
TARGET_VS_ROWLOCK = 25.0
TARGET_VS_REDIS = 0.7


def load(path):
    runs = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            runs[(r["case"], int(r["c"]), r["phase"])] = r
    return runs


def fmt_int(v):
    return "{:,}".format(int(round(v)))


def fmt_ms(v):
    if v is None:
        return "-"
    return "%.2f" % v if v < 10 else "%.1f" % v


def markdown(runs, meta):
    concs = sorted({c for (_, c, _) in runs})
    cases = [c for c, _ in CASES if any(k[0] == c for k in runs)]
    out = []
    if meta:
        out.append(meta.strip().replace("\n", "  \n"))
        out.append("")
    sell = next((r["report"] for k, r in sorted(runs.items()) if k[2] == "sellout" and k[0] != "redis"), None)
    what = (
        "Sell-out run: %s reserves of 1 unit on %s units (%s buyers), the stock read during the storm."
        % (fmt_int(sell["requests"]), fmt_int(sell["stock"]), fmt_int(sell["customers"]))
        if sell
        else ""
    )
    out.append(
        "Throughput run: reserves of 1 unit for the whole duration on a sale too large to "
        "sell out (every answer a 201). " + what
    )
    out.append("")
    out.append(
        "| case | c | req/s | p50 ms | p99 ms | sell-out: units granted | oversold units "
        "| lowest stock seen | negative readings | counter drift (throughput run) |"
    )
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for case in cases:
        for c in concs:
            t = runs.get((case, c, "throughput"))
            s = runs.get((case, c, "sellout"))
            if not t and not s:
                continue
            tr = t["report"] if t else {}
            sr = s["report"] if s else {}
            lat = tr.get("latency_ms", {})
            busy = " *" if t and t.get("busy_before", 0) > 20 else ""
            low = sr.get("min_available_seen")
            out.append(
                "| %s | %d | %s%s | %s | %s | %s of %s | %s | %s | %s | %s |"
                % (
                    case,
                    c,
                    fmt_int(tr["throughput"]) if "throughput" in tr else "-",
                    busy,
                    fmt_ms(lat.get("p50")),
                    fmt_ms(lat.get("p99")),
                    fmt_int(sr["units_granted"]) if "units_granted" in sr else "-",
                    fmt_int(sr["stock"]) if "stock" in sr else "-",
                    ("**%s**" % fmt_int(sr["oversold_units"])) if sr.get("oversold_units") else "0",
                    ("**%d**" % low) if low is not None and low < 0 else ("-" if low is None else "%d" % low),
                    ("**%d**" % sr["negative_stock_seen"]) if sr.get("negative_stock_seen") else "0",
                    ("**%+d**" % tr["stock_drift"]) if tr.get("stock_drift") else "0",
                )
            )
    out.append("")
    out.append(
        "`oversold units`: units granted (201s) beyond the stock in the sell-out run; the "
        "orders in Postgres say the same for the baselines. `lowest stock seen`: the lowest "
        "`available` of any reading of `GET /v1/sales/{id}` during or after the sell-out run "
        "(for redis: the counter at the end). `negative readings`: readings with a negative "
        "figure. `counter drift`: available + held + sold - total after the throughput run, "
        "units the counter lost (lost updates). A run marked * started while the machine was "
        "busy with something else (over 20% of a core)."
    )
    out.append("")

    # req/s by concurrency, one row per case
    out.append("req/s by concurrency (p99 ms in brackets):")
    out.append("")
    out.append("| case | " + " | ".join("c=%d" % c for c in concs) + " |")
    out.append("|---|" + "---:|" * len(concs))
    for case in cases:
        cells = []
        for c in concs:
            t = runs.get((case, c, "throughput"))
            if t and "throughput" in t["report"]:
                cells.append(
                    "%s (%s)" % (fmt_int(t["report"]["throughput"]), fmt_ms(t["report"]["latency_ms"].get("p99")))
                )
            else:
                cells.append("-")
        out.append("| %s | %s |" % (LABEL.get(case, case), " | ".join(cells)))
    out.append("")

    # targets
    def tput(case, c):
        t = runs.get((case, c, "throughput"))
        return t["report"].get("throughput") if t else None

    out.append("| target (c=%d) | measured | met |" % TARGET_C)
    out.append("|---|---|---|")
    fs, rl, rd = tput("flashsale", TARGET_C), tput("rowlock", TARGET_C), tput("redis", TARGET_C)
    if fs and rl:
        r = fs / rl
        out.append(
            "| flashsale >= %gx the row lock | %.1fx (%s vs %s req/s) | %s |"
            % (TARGET_VS_ROWLOCK, r, fmt_int(fs), fmt_int(rl), "yes" if r >= TARGET_VS_ROWLOCK else "**no**")
        )
    if fs and rd:
        r = fs / rd
        out.append(
            "| flashsale >= %gx raw Redis | %.2fx (%s vs %s calls/s) | %s |"
            % (TARGET_VS_REDIS, r, fmt_int(fs), fmt_int(rd), "yes" if r >= TARGET_VS_REDIS else "**no**")
        )
    fs_over = [runs[k]["report"].get("oversold_units", 0) for k in runs if k[0] == "flashsale" and k[2] == "sellout"]
    fs_broken = [b for k in runs if k[0] == "flashsale" for b in runs[k]["report"].get("broken", [])]
    if fs_over:
        out.append(
            "| flashsale: zero oversold units, no invariant broken (every run) | %d oversold, %d broken | %s |"
            % (sum(fs_over), len(fs_broken), "yes" if sum(fs_over) == 0 and not fs_broken else "**no**")
        )
    for case in ("naive", "naive-decrement"):
        over = {c: runs[(case, c, "sellout")]["report"].get("oversold_units", 0)
                for c in concs if (case, c, "sellout") in runs}
        if over:
            shown = [c for c in over if c >= 16]
            out.append(
                "| %s visibly oversells (c >= 16) | %s | %s |"
                % (case, ", ".join("c=%d: %d" % (c, over[c]) for c in sorted(over)),
                   "yes" if shown and all(over[c] > 0 for c in shown) else "**no**")
            )
    out.append("")
    return "\n".join(out) + "\n"


def chart(runs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    concs = sorted({c for (_, c, _) in runs})
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 6))
    styles = {
        "naive": ("tab:red", "x", ":"),
        "naive-decrement": ("tab:pink", "+", ":"),
        "rowlock": ("tab:brown", "s", "-"),
        "conditional": ("tab:orange", "D", "-"),
        "flashsale": ("tab:blue", "o", "-"),
        "redis": ("tab:gray", "^", "--"),
    }
    for case, label in CASES:
        xs, tp, p99 = [], [], []
        for c in concs:
            t = runs.get((case, c, "throughput"))
            if t and t["report"].get("throughput"):
                xs.append(c)
                tp.append(t["report"]["throughput"])
                p99.append(t["report"]["latency_ms"].get("p99"))
        if not xs:
            continue
        color, marker, ls = styles.get(case, (None, "o", "-"))
        left.plot(xs, tp, marker=marker, linestyle=ls, color=color, label=label)
        right.plot(xs, p99, marker=marker, linestyle=ls, color=color, label=label)
    for ax, title, unit in ((left, "throughput", "reserves per second"), (right, "p99 latency", "ms")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(concs)
        ax.set_xticklabels([str(c) for c in concs])
        ax.set_xlabel("concurrency (requests in flight)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = left.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=9, frameon=False)
    fig.suptitle("flashsale vs Postgres stock baselines (same load generator; redis-benchmark for the limit)")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=120)


def splice(path, block):
    with open(path) as f:
        text = f.read()
    generated = "%s\n\n%s\n%s\n" % (BEGIN, block.rstrip("\n"), END)
    if BEGIN in text and END in text:
        a = text.index(BEGIN)
        b = text.index(END) + len(END)
        if b < len(text) and text[b] == "\n":
            b += 1
        text = text[:a] + generated + text[b:]
    else:
        m = re.search(r"^## D\..*$", text, flags=re.M)
        if m:
            nxt = re.search(r"^## ", text[m.end():], flags=re.M)
            at = m.end() + nxt.start() if nxt else len(text)
            text = text[:at].rstrip("\n") + "\n\n" + generated + ("\n" + text[at:] if nxt else "")
        else:
            text = text.rstrip("\n") + "\n\n" + HEADING + "\n\n" + generated
    with open(path, "w") as f:
        f.write(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results")
    ap.add_argument("--meta")
    ap.add_argument("--png")
    ap.add_argument("--benchmarks")
    args = ap.parse_args()
    runs = load(args.results)
    if not runs:
        sys.exit("no runs in %s" % args.results)
    meta = open(args.meta).read() if args.meta else ""
    block = markdown(runs, meta)
    if args.png:
        chart(runs, args.png)
        with open(args.png, "rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                sys.exit("%s is not a PNG" % args.png)
    if args.benchmarks:
        splice(args.benchmarks, block)
    sys.stdout.write(block)


if __name__ == "__main__":
    main()
