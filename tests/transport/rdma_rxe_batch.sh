#!/usr/bin/env bash
# rdma_rxe_batch.sh EPX_RUN RDMA_MR_TEST RDMA_FAILURE_TEST: the verbs RDMA suite in one soft-RoCE
# guest boot (ctest rxe_rdma_suite runs it through tools/rxe-vm/rxe-run). Each rdma_mr_test run covers
# both connection methods (oob, rdmacm) and emulated atomics; then an EPX_IB_GID_INDEX override run,
# a check of the device's error counters, and the peer-death suite.
# Prints one timing line per step; exit status = number of failed steps.
set -u
EPX_RUN=$1 MR=$2 FAIL=$3
export EPX_RDMA=verbs
export EPX_HEAP_SIZE=${EPX_HEAP_SIZE:-32M}
DEV=${EPX_RXE_DEV:-rxe0}
fails=0 summary=()
now_us() { echo "${EPOCHREALTIME//[!0-9]/}"; }
step() { # NAME CMD...
  local name=$1; shift
  local t0; t0=$(now_us)
  echo "=== rxe-batch: $name: $*"
  "$@"
  local rc=$?
  local us=$(( $(now_us) - t0 ))
  local line
  printf -v line 'rxe-batch: %-28s rc=%d  %d.%d s' "$name" "$rc" $(( us / 1000000 )) $(( us % 1000000 / 100000 ))
  summary+=("$line")
  [ "$rc" = 0 ] || fails=$(( fails + 1 ))
}
# The healthy runs must not have exhausted a retry budget (retransmits themselves are normal under TCG).
hw_counters_clean() {
  local d=/sys/class/infiniband/$DEV/ports/1/hw_counters f v all=
  for f in "$d"/*; do read -r v < "$f" && all+="${f##*/}=$v "; done
  echo "rxe-batch: $DEV hw_counters: $all"
  read -r v < "$d/retry_exceeded_err" || return 1
  [ "$v" = 0 ] || { echo "rxe-batch: retry_exceeded_err=$v after healthy runs"; return 1; }
}

step "2 ranks, 2 nodes" "$EPX_RUN" -n 2 --nodes 2 -- "$MR"
step "4 ranks, 2 nodes" "$EPX_RUN" -n 4 --nodes 2 -- "$MR"
# EPX_IB_GID_INDEX override: the index the guest's own sysfs scan found (the auto choice must agree).
step "EPX_IB_GID_INDEX override" env EPX_IB_GID_INDEX="${EPX_RXE_GID_IDX:-1}" "$EPX_RUN" -n 2 --nodes 2 -- "$MR" \
  --gtest_filter='RdmaBackend.*:*RdmaAllToAll.*'
step "no retry_exceeded_err" hw_counters_clean
step "peer death (2 ranks)" "$FAIL"
printf '%s\n' "${summary[@]}"
exit "$fails"
