#!/usr/bin/env bash
# Self-test of tools/plot: synthetic sweep.json / compare.json (runs with and without the optional mpi_*
# keys, one run without copy_* keys) into a temp dir, then checks the charts are written as non-empty
# PNGs, that one missing file is a note (exit 0), and that malformed input is an error naming the file
# and key (exit 1).
# Usage: plot_test.sh [PATH/TO/tools/plot]   (default: the tools/plot of this checkout)
set -euo pipefail
PLOT=${1:-"$(cd "$(dirname "$0")/../.." && pwd)/tools/plot"}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }

# gen OUT KIND: writes a results file. KIND sweep | compare. Times scale with tokens so the log-log lines
# are straight; normal runs carry the MPI baseline, low-latency runs do not.
gen() {
  /usr/bin/python3 - "$1" "$2" <<'EOF'
import json, sys
out, kind = sys.argv[1], sys.argv[2]

def run(mode, nodes, local, tokens, mpi, copy=True):
    d = 0.5 * tokens + 20.0
    c = 0.6 * tokens + 25.0
    r = {"mode": mode, "ranks": nodes * local, "nodes": nodes, "local_ranks": local, "tokens": tokens,
         "hidden": 7168, "topk": 8, "experts": 64, "dtype": "fp8" if mode == "low-latency" else "bf16",
         "dispatch_us_p50": d, "dispatch_us_p99": 1.3 * d, "combine_us_p50": c, "combine_us_p99": 1.2 * c,
         "dispatch_GBps": tokens * 0.05 / d, "combine_GBps": tokens * 0.11 / c,
         "config": {"rdma": "shm" if nodes > 1 else "none", "channels": 2}}
    if copy:
        r.update({"copy_dispatch_us_p50": 0.4 * d, "copy_combine_us_p50": 0.4 * c,
                  "copy_dispatch_GBps": tokens * 0.05 / (0.4 * d), "copy_combine_GBps": tokens * 0.11 / (0.4 * c),
                  "dispatch_vs_copy": 0.4, "combine_vs_copy": 0.4})
    if mode == "low-latency":
        r["two_phase"] = False
    if mpi:
        r.update({"mpi_dispatch_us_p50": 2 * d, "mpi_dispatch_us_p99": 2.5 * d, "mpi_combine_us_p50": 2 * c,
                  "mpi_combine_us_p99": 2.4 * c, "mpi_dispatch_GBps": tokens * 0.05 / (2 * d),
                  "mpi_combine_GBps": tokens * 0.11 / (2 * c), "dispatch_vs_mpi": 2.0, "combine_vs_mpi": 2.0})
    return r

runs = []
if kind == "sweep":
    for t in (256, 512, 1024, 2048, 4096):
        runs.append(run("normal", 1, 2, t, mpi=True))
        runs.append(run("normal", 2, 2, t, mpi=(t != 4096)))  # the MPI series may be partial
    for t in (16, 32, 64, 128):
        runs.append(run("low-latency", 1, 2, t, mpi=False, copy=(t != 16)))
else:
    for nodes, local in ((1, 2), (1, 4), (2, 2)):
        runs.append(run("normal", nodes, local, 4096, mpi=True))
        runs.append(run("low-latency", nodes, local, 128, mpi=False))
json.dump(runs, open(out, "w"), indent=1)
EOF
}

expect_pngs() {
  local dir=$1
  shift
  for f in "$@"; do
    [ -s "$dir/$f" ] || fail "$dir/$f missing or empty"
    [ "$(head -c 8 "$dir/$f" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] || fail "$dir/$f is not a PNG"
  done
}

# 1. Both files: every chart.
D=$TMP/full
mkdir -p "$D"
gen "$D/sweep.json" sweep
gen "$D/compare.json" compare
"$PLOT" "$D" >"$TMP/out" 2>&1 || { cat "$TMP/out"; fail "tools/plot on full results exited $?"; }
expect_pngs "$D" sweep_normal_r2.png sweep_normal_r4_n2.png sweep_low-latency_r2.png \
  compare_normal.png compare_low-latency.png
n=$(find "$D" -name '*.png' | wc -l)
[ "$n" -eq 5 ] || fail "expected 5 charts, got $n: $(ls "$D")"

# 2. Only compare.json: a note, exit 0.
D=$TMP/compare-only
mkdir -p "$D"
gen "$D/compare.json" compare
"$PLOT" "$D" >"$TMP/out" 2>&1 || { cat "$TMP/out"; fail "tools/plot with sweep.json missing exited $?"; }
grep -q "sweep.json: not found" "$TMP/out" || { cat "$TMP/out"; fail "no note about the missing sweep.json"; }
expect_pngs "$D" compare_normal.png compare_low-latency.png

# 3. Malformed inputs: exit 1 and a message naming the file and the key / problem.
bad() {  # bad NAME JSON EXPECTED_MESSAGE_REGEX
  local d=$TMP/bad-$1
  mkdir -p "$d"
  printf '%s\n' "$2" >"$d/sweep.json"
  set +e
  "$PLOT" "$d" >"$TMP/out" 2>&1
  local rc=$?
  set -e
  [ $rc -eq 1 ] || { cat "$TMP/out"; fail "bad input '$1': exit $rc, want 1"; }
  grep -Eq "$3" "$TMP/out" || { cat "$TMP/out"; fail "bad input '$1': message does not match /$3/"; }
  ! ls "$d"/*.png >/dev/null 2>&1 || fail "bad input '$1': charts written anyway"
}
gen "$TMP/good.json" sweep
missing_key=$(/usr/bin/python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); del r[3]["tokens"]; print(json.dumps(r))' \
  "$TMP/good.json")
bad missing-key "$missing_key" "sweep.json: run 3: required key 'tokens' is missing"
bad wrong-type '[{"mode": "normal", "ranks": "2"}]' "sweep.json: run 0: key 'ranks' must be a positive integer"
bad not-json '[{"mode": "normal",' "sweep.json: not valid JSON"
bad not-array '{"mode": "normal"}' "sweep.json: expected a JSON array"
bad empty '[]' "sweep.json: the array holds no runs"

# 4. Neither file: exit 1.
mkdir -p "$TMP/none"
set +e
"$PLOT" "$TMP/none" >"$TMP/out" 2>&1
rc=$?
set -e
[ $rc -eq 1 ] || fail "no input files: exit $rc, want 1"

echo "plot_test: OK"
