# Sourced by bench scripts: a work directory and the servers started in it,
# both gone when the script exits (servers ended by PID), and small helpers.

# Makes $W (under /tmp, named after $1) and $PIDS; both are cleaned at exit.
bench_workdir() {
  W=$(mktemp -d "/tmp/$1.XXXXXX")
  PIDS=()
  trap bench_cleanup EXIT
}

bench_cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$W"
}

# Waits (up to 10 s) until something listens on 127.0.0.1:$1.
wait_port() {
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}

# Starts the distribution registry on 127.0.0.1:$1, storing under
# $W/registry, for at most $2 seconds; its access log (each request, for
# counting upstream GETs) goes to $W/registry.log unless $3 is "quiet".
# Waits until it listens.
start_registry() {
  local access=""
  [ "${3:-}" = quiet ] && access=", accesslog: {disabled: true}"
  mkdir -p "$W/registry"
  cat >"$W/registry.yml" <<EOF
version: 0.1
log: {level: warn$access}
storage: {filesystem: {rootdirectory: $W/registry}}
http: {addr: 127.0.0.1:$1}
EOF
  timeout "$2" /usr/bin/docker-registry serve "$W/registry.yml" >"$W/registry.log" 2>&1 &
  PIDS+=($!)
  wait_port "$1"
}

# CPU seconds (user + system) process $1 has used so far.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f\n", ($14 + $15) / hz}' "/proc/$1/stat"; }

# The median of the numbers on stdin, one per line.
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Uploads $2 MiB of random bytes as a blob of bench/blob to the registry at
# 127.0.0.1:$1 (monolithic upload); prints its digest.
push_blob() {
  head -c "$(($2 * 1024 * 1024))" /dev/urandom >"$W/blob"
  local digest location sep
  digest="sha256:$(sha256sum "$W/blob" | cut -d' ' -f1)"
  location=$(curl -fsS -D - -o /dev/null -X POST "http://127.0.0.1:$1/v2/bench/blob/blobs/uploads/" |
    awk -F': ' 'tolower($1) == "location" {print $2}' | tr -d '\r')
  case "$location" in http*) ;; *) location="http://127.0.0.1:$1$location" ;; esac
  sep='?'; case "$location" in *\?*) sep='&' ;; esac
  curl -fsS -o /dev/null -X PUT -H 'Content-Type: application/octet-stream' \
    -T "$W/blob" "$location${sep}digest=$digest"
  rm "$W/blob"
  echo "$digest"
}
