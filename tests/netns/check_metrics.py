#!/usr/bin/env python3
"""Parses Prometheus text with prometheus_client (an independent parser) and checks samples.

usage: check_metrics.py FILE 'name{label="v",...}>N' ...
Each condition: the sample with exactly those labels (others ignored) compares with N
(>, >=, ==). Prints the checked values; exits 1 on the first failure.
"""
import re
import sys

from prometheus_client.parser import text_string_to_metric_families

text = open(sys.argv[1]).read()
samples = []
for fam in text_string_to_metric_families(text):
    for s in fam.samples:
        samples.append((s.name, s.labels, s.value))

for cond in sys.argv[2:]:
    m = re.fullmatch(r'([a-z_]+)(?:\{(.*)\})?(>=|==|>)([0-9.]+)', cond)
    if not m:
        sys.exit(f"bad condition {cond!r}")
    name, labels, op, want = m.group(1), m.group(2) or "", m.group(3), float(m.group(4))
    need = dict(re.findall(r'([a-z_]+)="([^"]*)"', labels))
    found = [v for n, l, v in samples if n == name and all(l.get(k) == v2 for k, v2 in need.items())]
    if not found:
        sys.exit(f"no sample {name}{need}")
    v = sum(found)
    ok = {">": v > want, ">=": v >= want, "==": v == want}[op]
    print(f"{cond}: {v:g}")
    if not ok:
        sys.exit(f"FAIL {cond}: {v:g}")
