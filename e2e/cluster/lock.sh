# Sourced by the scripts whose builds must not run twice at once into one cache (build-tools.sh,
# previous-release.sh, conformance.sh), after they define `log`.

# lock_or_wait FILE WHAT: takes the lock on FILE through descriptor 9, which keeps it until the shell exits
# (the processes it starts inherit 9, and hold it as long as they run). When another process holds it,
# logs that this one waits for WHAT and who that is, then waits for as long as it takes.
lock_or_wait() {
  local file=$1 what=$2 pid holders=
  exec 9>"$file"
  flock -n 9 && return 0
  # fuser lists every process that has FILE open: not the subshell it runs in, which closes its copy,
  # nor this shell. What remains is the holder and what it started (and any other waiters).
  for pid in $(exec 9>&-; fuser "$file" 2>/dev/null); do
    [ "$pid" = "$BASHPID" ] || holders+=" $pid"
  done
  log "waiting for $what (pid${holders:- unknown}) to finish ..."
  flock 9
}
