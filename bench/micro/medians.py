#!/usr/bin/env python3
"""Print the median of every gochat-bench result left by `cargo bench` in
target/criterion (criterion's own summary line shows the slope/mean)."""
import glob
import json
import os
import sys

root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..", "target", "criterion")
for path in sorted(glob.glob(os.path.join(root, "**", "new", "estimates.json"), recursive=True)):
    bench = json.load(open(path.replace("estimates.json", "benchmark.json")))
    if not bench["group_id"].startswith(("frame_codec", "json_parse", "fanout_encode")):
        continue
    median = json.load(open(path))["median"]["point_estimate"]  # ns
    thr = bench.get("throughput") or {}
    extra = ""
    if "Bytes" in thr:
        rate = thr["Bytes"] / median * 1e9
        extra = f"{rate / 2**30:8.2f} GiB/s" if rate >= 2**30 else f"{rate / 2**20:8.0f} MiB/s"
        extra += f" ({thr['Bytes']} B)"
    elif "Elements" in thr:
        extra = f"{median / thr['Elements']:8.1f} ns per recipient"
    print(f"{bench['full_id']:66s} {median:14.1f} ns  {extra}")
