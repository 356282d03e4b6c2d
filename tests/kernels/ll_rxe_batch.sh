#!/usr/bin/env bash
# ll_rxe_batch.sh EPX_RUN LL_MR_TEST: the low-latency dispatch/combine suite on verbs (soft-RoCE) in one
# guest boot (ctest rxe_ll_suite runs it through tools/rxe-vm/rxe-run): 2 nodes x {1, 2} ranks with the
# device's atomics, and 2 x 2 with fetch-add emulated over write-with-immediate (the LL count and release
# signals are fetch-adds, so this is the path caps().native_atomics == false takes).
# Exit status = number of failed runs, each of which is named.
set -u
EPX_RUN=$1 MR=$2
export EPX_RDMA=verbs EPX_HEAP_SIZE=${EPX_HEAP_SIZE:-64M}
fails=0
run() {
  echo "=== ll-rxe: $*"
  "$@" || { echo "ll-rxe: FAILED (rc=$?): $*"; fails=$(( fails + 1 )); }
}
for n in 2 4; do run "$EPX_RUN" -n "$n" --nodes 2 -- "$MR"; done
run env EPX_IB_FORCE_EMULATED_ATOMICS=1 "$EPX_RUN" -n 4 --nodes 2 -- "$MR"
echo "ll-rxe: $fails failed run(s)"
exit "$fails"
