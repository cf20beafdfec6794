#!/usr/bin/env python3
"""Formats scripts/bench-fuse.sh's rows: a table on stdout, summary lines starting with "fuse ", fuse.json and
(if gnuplot is installed) fuse.png in the results folder.

Row file: tab-separated NAME UNIT BETTER PRL PEER LIMIT TARGET NOTE. TARGET is one of
  peer>=X | limit>=X | several of peer>=X, limit>=X, row:NAME>=X joined by & | value<X | row:NAME>=X | row:NAME<=X | cache | cache>=X | -
"row:NAME<=X" bounds prlfuse's figure by X times prlfuse's figure in row NAME (a time against its yardstick).
"limit>=X" on a lower-is-better row means prlfuse <= limit / X (the limit column holds the ceiling).
Cache rows hold cache on in the prlfuse column and cache off in the peer column.
"""
import json
import os
import shutil
import subprocess
import sys


def num(s):
    try:
        return None if s in ("", "null", "None") else float(s)
    except ValueError:
        return None


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def fmt(v, unit=""):
    if v is None:
        return "-"
    if unit == "s":
        return f"{v:.3f}"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}"


def main():
    rows_path, out_dir = sys.argv[1], sys.argv[2]
    machine = {}
    args = sys.argv[3:]
    for i in range(0, len(args), 2):
        if args[i] == "--machine":
            k, _, v = args[i + 1].partition("=")
            machine[k] = v

    rows = []
    for line in open(rows_path):
        f = line.rstrip("\n").split("\t")
        if len(f) < 8:
            continue
        rows.append(dict(name=f[0], unit=f[1], better=f[2], prlfuse=num(f[3]), peer=num(f[4]), limit=num(f[5]),
                         target=f[6], note=f[7]))
    by_name = {r["name"]: r for r in rows}

    def evaluate(r, t):
        """(wanted text, met) of one peer>=X, limit>=X or row:NAME>=X target of a higher-is-better row."""
        col, _, x = t.partition(">=")
        if col.startswith("row:"):
            other = col[4:]
            have = r["ratio_row"] = ratio(r["prlfuse"], by_name.get(other, {}).get("prlfuse"))
            shown = f" ({have:.2f}x)" if have is not None else ""
            return f">= {float(x):g}x {other}{shown}", have is not None and have >= float(x)
        have = r["ratio_peer"] if col == "peer" else r["ratio_limit"]
        return f">= {float(x):g}x {col}", have is not None and have >= float(x)

    for r in rows:
        p, lower = r["prlfuse"], r["better"] == "lower"
        # Ratios are "how many times better prlfuse is": for lower-is-better rows, other / prlfuse.
        r["ratio_peer"] = ratio(r["peer"], p) if lower else ratio(p, r["peer"])
        r["ratio_limit"] = ratio(r["limit"], p) if lower else ratio(p, r["limit"])
        t, met, want = r["target"], None, None
        if "&" in t:
            # Several targets at once: met when every one is.
            parts = [evaluate(r, x) for x in t.split("&")]
            want = " and ".join(w for w, _ in parts)
            met = all(m for _, m in parts)
        elif t.startswith("peer>="):
            want = float(t[6:]); met = r["ratio_peer"] is not None and r["ratio_peer"] >= want
            want = f">= {want:g}x peer"
        elif t.startswith("limit>="):
            want = float(t[7:]); met = r["ratio_limit"] is not None and r["ratio_limit"] >= want
            want = f"<= {r['limit']:g} {r['unit']}" if lower else f">= {want:g}x limit"
        elif t.startswith("value<"):
            want = float(t[6:]); met = p is not None and p < want
            want = f"< {want:g} {r['unit']}"
        elif t.startswith("row:"):
            at_most = "<=" in t
            other, _, x = t[4:].partition("<=" if at_most else ">=")
            o = by_name.get(other, {})
            r["ratio_row"] = ratio(p, o.get("prlfuse"))
            # The same quotient for the other columns, so a reader sees whether the peer holds the relation too.
            r["ratio_row_peer"] = ratio(r["peer"], o.get("peer"))
            r["ratio_row_limit"] = ratio(r["limit"], o.get("limit"))
            op = "<=" if at_most else ">="
            met = r["ratio_row"] is not None and (r["ratio_row"] <= float(x) if at_most else r["ratio_row"] >= float(x))
            want = f"{op} {float(x):g}x {other} ({fmt(r['ratio_row'])}x)" if r["ratio_row"] is not None else f"{op} {x}x {other}"
        elif t.startswith("cache"):
            x = t[7:] if t.startswith("cache>=") else None
            if x:
                met = r["ratio_peer"] is not None and r["ratio_peer"] >= float(x)
                want = f"on/off >= {float(x):g}"
            else:
                want = "on/off (shows the gain)"
        r["target_text"], r["met"] = want, met

    def cells(r):
        cache = r["target"].startswith("cache")
        return [r["name"] + (" [on/off]" if cache else ""), r["unit"], fmt(r["prlfuse"], r["unit"]),
                fmt(r["peer"], r["unit"]), fmt(r["limit"], r["unit"]),
                "-" if r["ratio_peer"] is None else f"{r['ratio_peer']:.2f}",
                "-" if r["ratio_limit"] is None else f"{r['ratio_limit']:.2f}",
                r["target_text"] or "-", "" if r["met"] is None else ("MET" if r["met"] else "MISSED")]

    header = ["figure", "unit", "prlfuse", "peer(qsd)", "limit", "prl/peer", "prl/limit", "target", ""]
    table = [header] + [cells(r) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    print()
    print("== FUSE benchmark: prlfuse vs qemu-storage-daemon FUSE export (peer) vs raw in page cache (limit) ==")
    print("   ratios are 'times better than': for seconds and MiB, other/prlfuse; medians of "
          f"{machine.get('runs', '?')} runs")
    for row in table:
        print("  ".join(c.rjust(w) if i in (2, 3, 4, 5, 6) else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip())
    print()
    for r in rows:
        print(f"  {r['name']}: {r['note']}")
    print()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()))
    print()
    for r in rows:
        c = cells(r)
        print(f"fuse {r['name']} ({r['unit']}): prlfuse {c[2]}, peer {c[3]}, limit {c[4]}, "
              f"prlfuse/peer {c[5]}, prlfuse/limit {c[6]}" + (f", target {c[7]}: {c[8]}" if c[8] else ""))

    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "fuse.json"), "w") as fh:
        json.dump({"machine": machine, "rows": rows}, fh, indent=2)
        fh.write("\n")

    gnuplot = shutil.which("gnuplot")
    if not gnuplot:
        print("fuse chart: gnuplot not installed, no PNG (apt-get install gnuplot-nox)")
        return
    dat = os.path.join(out_dir, "fuse-chart.dat")
    with open(dat, "w") as fh:
        for r in rows:
            if r["ratio_peer"] is None and r["ratio_limit"] is None:
                continue
            label = r["name"].replace("_", "-") + (" (on/off)" if r["target"].startswith("cache") else "")
            fh.write(f"\"{label}\" {r['ratio_peer'] if r['ratio_peer'] is not None else 'NaN'} "
                     f"{r['ratio_limit'] if r['ratio_limit'] is not None else 'NaN'}\n")
    png = os.path.join(out_dir, "fuse.png")
    script = f"""
set terminal pngcairo size 1400,700 font ',10'
set output '{png}'
set title 'prlfuse: times better than qemu-storage-daemon (peer) and raw file in page cache (limit); 1 = equal'
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set logscale y 2
set yrange [0.0625:64]
set grid ytics
set xtics rotate by -35 scale 0
set key top right
plot '{dat}' using 2:xtic(1) title 'prlfuse / peer', '' using 3 title 'prlfuse / limit', 1 with lines lt -1 notitle
"""
    res = subprocess.run([gnuplot], input=script, text=True, capture_output=True)
    os.remove(dat)
    print(f"fuse chart: {png}" if res.returncode == 0 else f"fuse chart: gnuplot failed: {res.stderr.strip()}")


if __name__ == "__main__":
    main()
