#!/usr/bin/env bash
# Self-test of tools/scaling's summary (--from): a synthetic scaling.json with known R=4 / R=2 ratios must
# print their medians (per pair, per received row, floors), the low-latency MPI section only when its keys
# are there, and a run that failed its check, has the wrong rank count or misses a key is an error naming
# the mode, pair and rank count (exit 1).
# Usage: scaling_test.sh [PATH/TO/tools/scaling]   (default: the tools/scaling of this checkout)
set -euo pipefail
SCALING=${1:-"$(cd "$(dirname "$0")/../.." && pwd)/tools/scaling"}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# gen OUT VARIANT: VARIANT ok | nompi | badcheck | badranks | nokey
gen() {
  /usr/bin/python3 - "$1" "$2" <<'PY'
import json, sys
out, variant = sys.argv[1], sys.argv[2]
def run(mode, ranks, d, c, rows, mpi=True):
    cf = 0.5 if ranks == 2 else 0.4  # the floors scale by 0.8x epx's ratio
    r = {"mode": mode, "ranks": ranks, "check": "PASS", "dispatch_us_p50": d, "combine_us_p50": c,
         # GB/s = rows x 1000 B / time: rows received per rank = GBps x time / 1000
         "dispatch_GBps": rows * 1000 / (d * 1e3), "combine_GBps": rows * 1000 / (c * 1e3),
         "dispatch_cpu_us_per_rank": 0.9 * d / (ranks // 2), "combine_cpu_us_per_rank": 0.8 * c / (ranks // 2),
         "copy_dispatch_us_p50": d * cf, "copy_combine_us_p50": c * cf,
         "copy_dispatch_GBps": rows * 1000 / (d * cf * 1e3), "copy_combine_GBps": rows * 1000 / (c * cf * 1e3)}
    if mode == "low-latency":
        r.update({"stream_dispatch_us_p50": d / 3, "traffic_combine_us_p50": c * cf,
                  "traffic_combine_MB_per_rank": 10.0 * (1.4 if ranks == 4 else 1.0)})
        if mpi and ranks == 2:
            r.update({"total_vs_mpi": 2.5, "mpi_over_floor_serial": 3.5 if d < 100 else 2.8,
                      "mpi_over_floor_dram": 4.0, "floor_serial_us": (d + c) / 1.2})
    return r
# Pairs: low-latency dispatch ratios 2.5 / 2.75 / 2.2 (median 2.5), combine 3.0 / 3.3 / 2.7 (median 3.0);
# normal ranks receive 1.8x the rows at R=4 and take 4.5 / 4.68 / 4.32x the time: 2.5 / 2.6 / 2.4 per row.
ll = [(run("low-latency", 2, d, c, 1024, variant != "nompi"), run("low-latency", 4, d * rd, c * rc, 1024))
      for d, c, rd, rc in ((100, 200, 2.5, 3.0), (90, 210, 2.75, 3.3), (110, 190, 2.2, 2.7))]
nm = [(run("normal", 2, d, c, 8000), run("normal", 4, d * r, c * r, 14400))
      for d, c, r in ((10000, 12000, 4.5), (11000, 12500, 4.68), (9000, 11500, 4.32))]
if variant == "badcheck":
    nm[1][1]["check"] = "FAIL"
if variant == "badranks":
    ll[2][1]["ranks"] = 2
if variant == "nokey":
    del nm[0][0]["combine_GBps"]
json.dump({"pairs": 3, "low-latency": ll, "normal": nm}, open(out, "w"))
PY
}

gen "$TMP/ok.json" ok
EPX_COMPARE_OUT="$TMP/out" bash "$SCALING" --from "$TMP/ok.json" > "$TMP/ok.txt" 2>&1 || {
  cat "$TMP/ok.txt"
  fail "--from a valid scaling.json exited non-zero"
}
expect() {  # FILE SECTION-TITLE LINE-LABEL MEDIAN
  /usr/bin/python3 - "$@" <<'PY' || { cat "$1"; fail "$2 / $3: expected median $4"; }
import sys
path, section, label, want = sys.argv[1:]
text = open(path).read().split("\n")
start = next(i for i, l in enumerate(text) if l.startswith(section))
line = next(l for l in text[start + 1:] if l.strip().startswith(label))
assert f"median {want}" in line, line
PY
}
expect "$TMP/ok.txt" "low-latency 128 tokens" "epx dispatch p50" "2.50x"
expect "$TMP/ok.txt" "low-latency 128 tokens" "epx combine p50" "3.00x"
expect "$TMP/ok.txt" "low-latency 128 tokens" "combine traffic floor" "2.40x"
expect "$TMP/ok.txt" "low-latency 128 tokens" "copy limit, dispatch bytes" "2.00x"
expect "$TMP/ok.txt" "low-latency 128 tokens" "epx combine / traffic floor" "1.25x"
expect "$TMP/ok.txt" "low-latency 128 tokens" "its bytes per rank" "1.40x"
expect "$TMP/ok.txt" "normal 4096 tokens" "rows received per rank" "1.80x"
expect "$TMP/ok.txt" "normal 4096 tokens" "epx dispatch p50" "4.50x"
expect "$TMP/ok.txt" "normal 4096 tokens" "epx dispatch per received row" "2.50x"
expect "$TMP/ok.txt" "normal 4096 tokens" "epx combine per received row" "2.50x"
expect "$TMP/ok.txt" "normal 4096 tokens" "copy limit per received row, dispatch" "2.00x"
expect "$TMP/ok.txt" "== low-latency 1x2 against" "epx dispatch + combine vs MPI" "2.50x"
grep -q "below the serial floor.*: 2 of 3" "$TMP/ok.txt" || { cat "$TMP/ok.txt"; fail "count of runs below the serial floor"; }
[ ! -e "$TMP/out/scaling.json" ] || fail "--from must not rewrite scaling.json"

gen "$TMP/nompi.json" nompi
bash "$SCALING" --from "$TMP/nompi.json" > "$TMP/nompi.txt" 2>&1 || fail "--from without MPI keys exited non-zero"
! grep -q "against the MPI baseline" "$TMP/nompi.txt" || fail "MPI section printed without MPI keys"

bad() {  # VARIANT EXPECTED-MESSAGE
  gen "$TMP/$1.json" "$1"
  if bash "$SCALING" --from "$TMP/$1.json" > "$TMP/$1.txt" 2>&1; then fail "$1: exited 0"; fi
  grep -q "$2" "$TMP/$1.txt" || { cat "$TMP/$1.txt"; fail "$1: no '$2' in the error"; }
}
bad badcheck "nm pair 2 R=4: check FAIL"
bad badranks "ll pair 3: expected a run with 4 ranks, found 2"
bad nokey "nm pair 1 R=2: no 'combine_GBps'"
if bash "$SCALING" --from "$TMP/missing.json" > /dev/null 2>&1; then fail "a missing --from file exited 0"; fi
if bash "$SCALING" 0 > /dev/null 2>&1; then fail "PAIRS 0 exited 0"; fi
echo "scaling_test: ok"
