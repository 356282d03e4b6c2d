# guest-lib.sh: shell helpers for commands running inside the rxe guest. POSIX sh (dash and bash).
# guest-run sources it; a CMD can too:  . "$EPX_RXE_LIB"
#
# Under TCG every fork+exec of a host binary over 9p costs 50-80 ms, so these helpers use shell
# builtins (read, case, printf) in their loops and fork at most a few times per call.

# gid_idx DEV [IPV4] -> prints the index of DEV port 1's RoCE v2 GID that is IPv4-mapped
# (::ffff:a.b.c.d), restricted to IPV4 when given. Returns 1 if there is none.
# The table has 1024 entries; reading them with `read` costs milliseconds, one `cat` each ~76 s.
gid_idx() {
  _gd=/sys/class/infiniband/$1/ports/1
  _want=
  if [ -n "${2:-}" ]; then
    # 10.99.0.1 -> 0000:0000:0000:0000:0000:ffff:0a63:0001 (sysfs spelling)
    _ifs=$IFS; IFS=.
    # shellcheck disable=SC2086  # split on the dots on purpose
    set -- $2
    IFS=$_ifs
    _want=$(printf '0000:0000:0000:0000:0000:ffff:%02x%02x:%02x%02x' "$1" "$2" "$3" "$4")
  fi
  for _gf in "$_gd"/gids/*; do
    _gi=${_gf##*/}
    read -r _g 2>/dev/null < "$_gf" || continue
    case $_g in
      0000:0000:0000:0000:0000:ffff:*)
        [ -n "$_want" ] && [ "$_g" != "$_want" ] && continue
        _gt=
        read -r _gt 2>/dev/null < "$_gd/gid_attrs/types/$_gi"
        [ "$_gt" = "RoCE v2" ] && { echo "$_gi"; return 0; } ;;
    esac
  done
  return 1
}

# wait_listen PORT [TMO_S=60] -> 0 once something on this guest listens on PORT: a TCP listener
# (perftest's out-of-band exchange, most servers) or an rdma_cm listener (perftest -R, rping).
# Start the server in the background, wait_listen, then start the client: a fixed sleep loses the
# race on a loaded host (client first -> "Couldn't connect" / RDMA_CM_EVENT_REJECTED).
# Only for servers in the same guest; across guests, retry the client instead (see `retry`).
wait_listen() {
  _hp=$(printf '%04X' "$1")
  _n=$(( ${2:-60} * 5 ))
  while [ "$_n" -gt 0 ]; do
    for _tf in /proc/net/tcp /proc/net/tcp6; do
      [ -r "$_tf" ] || continue
      # fields: sl local_address rem_address st ...; st 0A = LISTEN; local_address ends in :PORT
      while read -r _sl _la _ra _st _rest; do
        case $_la:$_st in *":$_hp:0A") return 0 ;; esac
      done < "$_tf"
    done
    case $(rdma res show cm_id 2>/dev/null) in *LISTEN*":$1 "*|*LISTEN*":$1") return 0 ;; esac
    sleep 0.2
    _n=$((_n - 1))
  done
  echo "wait_listen: nothing listens on port $1 after ${2:-60} s" >&2
  return 1
}

# retry TRIES DELAY_S CMD... -> runs CMD until it succeeds, at most TRIES times. For a client whose
# server is in the *other* guest: probing the port would itself be a connection (perftest's server
# accepts exactly one), so the client just tries again while the server is not up yet.
retry() {
  _tries=$1 _delay=$2; shift 2
  while :; do
    "$@" && return 0
    _tries=$((_tries - 1))
    [ "$_tries" -gt 0 ] || return 1
    sleep "$_delay"
  done
}
