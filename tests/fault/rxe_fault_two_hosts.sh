#!/usr/bin/env bash
# rxe_fault_two_hosts.sh EPX_RUN FAULT_WORKER BASE_PORT CELL...: the guest side of the two-host fault
# cells (issue 7). tools/rxe-vm/rxe-run --two-hosts runs it in both guests; the host side
# (rxe_fault_two_hosts_test.cc) reads both guests' output, stamps every line with the host's clock on
# arrival and checks the cells, so nothing here measures time (the guests' clocks differ).
#
# Both hosts run the same cells in the same order; cell n uses master port BASE_PORT + n, so a host that
# finishes a cell early starts the next one and its ranks retry the bootstrap connect (up to
# EPX_BOOTSTRAP_TIMEOUT) until the other host's ranks of that cell join. A CELL is
#   V:POINT:AFTER   EPX_FAULT=rank=V,point=POINT,after=AFTER: rank V (on either host) SIGKILLs itself
#   mask:V:POINT:AFTER  the same with fault_worker --mask (low-latency rounds, mask_on_failure): the
#                   survivors mask V, check 3 more rounds against the reference without it, go on in
#                   normal mode without it (or check its refusal) and exit 0
#   mask4:V:POINT:AFTER the same on 4 logical nodes x 1 rank (2 per host): V is a whole node, so the
#                   normal mode after the mask runs checked rounds across the hosts
#   linkcut:ROUNDS  no fault; host 1 takes its link (eth0) down once its ranks are set up and in rounds
# Each host runs its half of 2 nodes x 2 ranks (rank 0's host is 10.99.1.1):
#   epx-run -n 4 --nodes 2 --nnodes 2 --node-rank H --master 10.99.1.1:PORT --grace G -- FAULT_WORKER
# and prints, per cell (H = this host's index):
#   rxe-fault: cell N start host H CELL
#   rxe-fault: cell N link down host H          (linkcut, host 1: just before `ip link set eth0 down`)
#   rxe-fault: cell N epx-run rc=RC host H
#   rxe-fault: cell N clean host H   |   rxe-fault: cell N LEFTOVER host H <what>
# "clean": no fault_worker / epx-run process is left in this guest (after up to 5 s) and /dev/shm has no
# entry it did not have before the cell. Exit status: 0 (the host side judges the cells), 2 on bad use.
# Builtins wherever possible: every fork+exec costs 50-80 ms under TCG (tools/rxe-vm/README.md).
set -u
[ $# -ge 4 ] || { echo "usage: $0 EPX_RUN FAULT_WORKER BASE_PORT CELL..." >&2; exit 2; }
EPX_RUN=$1 WORKER=$2 PORT0=$3
shift 3
H=${EPX_RXE_HOST_INDEX:?not in a two-host rxe guest}
GRACE=${EPX_FAULT_GRACE:-12}
NETDEV=eth0   # tools/rxe-vm/rxe-run --two-hosts: rxe0 sits on eth0 in both guests
SHM_BEFORE=

shm_now() { # -> SHM_NOW: the names in /dev/shm, space-separated (glob: no fork)
  local f
  SHM_NOW=
  for f in /dev/shm/* /dev/shm/.[!.]*; do [ -e "$f" ] && SHM_NOW+="${f##*/} "; done
}

leftover_procs() { # -> LEFT: "pid:comm ..." of fault_worker / epx-run processes still in this guest
  local f c p
  LEFT=
  for f in /proc/[0-9]*/comm; do
    c=
    read -r c 2>/dev/null < "$f" || continue
    case $c in
      fault_worker | epx-run | epx-run-watch)
        p=${f#/proc/}
        LEFT+="${p%/comm}:$c "
        ;;
    esac
  done
}

check_clean() { # N
  local i n=$1 what='' added=''
  for ((i = 0; i < 25; i++)); do  # 5 s: the launcher has exited, its ranks must be gone by now
    leftover_procs
    [ -z "$LEFT" ] && break
    sleep 0.2
  done
  [ -n "$LEFT" ] && what+="processes: $LEFT"
  shm_now
  local e
  for e in $SHM_NOW; do
    case " $SHM_BEFORE " in *" $e "*) ;; *) added+="$e " ;; esac
  done
  [ -n "$added" ] && what+="new /dev/shm entries: $added"
  if [ -z "$what" ]; then
    echo "rxe-fault: cell $n clean host $H"
  else
    echo "rxe-fault: cell $n LEFTOVER host $H $what"
  fi
}

# linkcut on host 1: wait until this host's 2 ranks printed "ready" (Context::Create is collective: all
# 4 ranks are connected then), give them LINKCUT_SETTLE seconds to build their buffers and run rounds,
# then take the link down. The ranks' output goes to a file that a `tail -f` streams to the console.
LINKCUT_SETTLE=${EPX_FAULT_LINKCUT_SETTLE:-4}
run_linkcut_host1() { # N PORT ROUNDS
  local n=$1 port=$2 rounds=$3 log=/tmp/rxe-fault-cell$1.log i lines ready rc
  "$EPX_RUN" -n 4 --nodes 2 --nnodes 2 --node-rank "$H" --master "10.99.1.1:$port" --grace "$GRACE" \
    -- "$WORKER" --rounds "$rounds" > "$log" 2>&1 &
  local job=$!
  tail -n +1 -f --pid="$job" "$log" &
  local tailer=$!
  ready=0
  for ((i = 0; i < 600 && ready < 2; i++)); do  # 120 s at most (bootstrap + QP setup under TCG)
    kill -0 "$job" 2>/dev/null || break
    sleep 0.2
    mapfile -t lines < "$log"
    ready=0
    for l in "${lines[@]}"; do [[ $l == *"fault-worker: ready rank "* ]] && ready=$((ready + 1)); done
  done
  if [ "$ready" -ge 2 ] && kill -0 "$job" 2>/dev/null; then
    sleep "$LINKCUT_SETTLE"
    echo "rxe-fault: cell $n link down host $H"
    ip link set "$NETDEV" down || echo "rxe-fault: cell $n 'ip link set $NETDEV down' FAILED host $H"
  else
    echo "rxe-fault: cell $n link NOT cut host $H: $ready of 2 ranks ready, launcher alive: $(kill -0 "$job" 2>/dev/null && echo yes || echo no)"
  fi
  wait "$job"
  rc=$?
  wait "$tailer" 2>/dev/null
  rm -f "$log"
  return "$rc"
}

n=0
for cell in "$@"; do
  n=$((n + 1))
  port=$((PORT0 + n))
  shm_now
  SHM_BEFORE=$SHM_NOW
  echo "rxe-fault: cell $n start host $H $cell"
  case $cell in
    linkcut:*)
      rounds=${cell#linkcut:}
      if [ "$H" = 1 ]; then
        EPX_FAULT='' run_linkcut_host1 "$n" "$port" "$rounds"
      else
        EPX_FAULT='' "$EPX_RUN" -n 4 --nodes 2 --nnodes 2 --node-rank "$H" --master "10.99.1.1:$port" \
          --grace "$GRACE" -- "$WORKER" --rounds "$rounds"
      fi
      ;;
    mask:*:*:* | mask4:*:*:*)
      IFS=: read -r kind victim point after <<< "$cell"
      nodes=2
      [ "$kind" = mask4 ] && nodes=4
      EPX_FAULT="rank=$victim,point=$point,after=$after" "$EPX_RUN" -n 4 --nodes "$nodes" --nnodes 2 \
        --node-rank "$H" --master "10.99.1.1:$port" --grace "$GRACE" -- "$WORKER" --mask --ll-channels 1
      ;;
    *:*:*)
      IFS=: read -r victim point after <<< "$cell"
      EPX_FAULT="rank=$victim,point=$point,after=$after" "$EPX_RUN" -n 4 --nodes 2 --nnodes 2 \
        --node-rank "$H" --master "10.99.1.1:$port" --grace "$GRACE" -- "$WORKER" --rounds 4
      ;;
    *)
      echo "rxe-fault: bad cell '$cell' (V:POINT:AFTER, mask:V:POINT:AFTER, mask4:V:POINT:AFTER or linkcut:ROUNDS)"
      exit 2
      ;;
  esac
  echo "rxe-fault: cell $n epx-run rc=$? host $H"
  check_clean "$n"
done
echo "rxe-fault: all $n cells run host $H"
exit 0
