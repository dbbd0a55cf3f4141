#!/usr/bin/env bash
# What a verified cold miss cannot avoid, measured beside it in one run.
# Each round pushes a fresh blob to the registry and fetches it
#  - directly from the registry (the wall-clock floor),
#  - through nginx as a plain streaming relay (proxy_pass, no buffering,
#    no cache): the CPU of one copy in from the upstream's socket and one
#    copy out to the client's, done as cheaply as a mature C proxy does it,
#  - through lasti, cold (hashed, written to its cache, verified),
# and takes the CPU that SHA-256 needs for as many bytes (Python's hashlib,
# OpenSSL, as ../shared/peers/bench.sh does). The floor of a verified miss
# is then relay + hash; lasti's CPU is reported against it and against the
# hash alone.
#
# Usage: benches/cold_floor.sh   (env: ROUNDS=3 MIB=1024 BASE_PORT=15300;
#        LASTI_BIN_B=path and/or LASTI_ENV_B="VAR=value ...": a second lasti,
#        that binary or this one with that environment, fetched in turn with
#        the first in every round, for an A/B)
# Each lasti's resident memory (total / anonymous) is taken after each fill,
# and the blob is then fetched once more: the first hit after the miss,
# whose wall time and CPU are reported too (a blob written around the page
# cache is read from the disk by it).
# SLOW_RATE=250M adds, each round, a second fresh blob fetched through each
# lasti by a client that reads at that rate (curl --limit-rate): a client
# slower than the fill falls behind the live channel and reads the rest
# from the growing file; its CPU is reported beside the fast client's.
# Needs: docker-registry, nginx, curl, python3 (Debian), a release build.
# Everything listens on 127.0.0.1; every server started here is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
MIB=${MIB:-1024}
BASE=${BASE_PORT:-15300}
cargo build --release --bin lasti >&2
. benches/lib.sh
bench_workdir lasti-bench-floor
REG=$BASE RELAY=$((BASE + 1)) LASTI=$((BASE + 2))

start_registry "$REG" 3600
mkdir -p "$W/nginx"

# One nginx process (no master), so its CPU is the relay's.
cat >"$W/nginx/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $W/nginx/nginx.pid;
error_log $W/nginx/error.log warn;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path $W/nginx;
  proxy_temp_path $W/nginx;
  server {
    listen 127.0.0.1:$RELAY;
    location / {
      proxy_pass http://127.0.0.1:$REG;
      proxy_http_version 1.1;
      proxy_buffering off;
      # Large reads and writes: the relay's cost is then its copies, not
      # its system calls.
      proxy_buffer_size 512k;
      proxy_buffers 4 512k;
      proxy_busy_buffers_size 512k;
      proxy_request_buffering off;
    }
  }
}
EOF
timeout 3600 nginx -c "$W/nginx/nginx.conf" -p "$W/nginx" &
PIDS+=($!)

declare -A LASTI_PID PORT
VARIANTS=(lasti)
[ -n "${LASTI_BIN_B:-}${LASTI_ENV_B:-}" ] && VARIANTS+=(lasti_b)
for v in "${VARIANTS[@]}"; do
  bin=target/release/lasti env=()
  PORT[$v]=$LASTI
  if [ "$v" = lasti_b ]; then
    bin=${LASTI_BIN_B:-$bin} PORT[$v]=$((BASE + 3))
    read -r -a env <<<"${LASTI_ENV_B:-}"
  fi
  env RUST_LOG=warn "${env[@]}" timeout 3600 "$bin" --listen "127.0.0.1:${PORT[$v]}" --admin-listen 127.0.0.1:0 \
    --data-dir "$W/$v" --upstream docker.io=http://127.0.0.1:$REG >"$W/$v.log" 2>&1 &
  PIDS+=($!)
  wait_port "${PORT[$v]}"
  # `env` execs `timeout`, whose child is lasti.
  LASTI_PID[$v]=$(pgrep -P "$!")
done
wait_port "$RELAY"
NGINX_PID=$(pgrep -P "${PIDS[1]}")

# Waits until the process has used no CPU for 300 ms (a fill may finish
# its last write and verification after the client's last byte).
settle() {
  local before after
  after=$(cpu_s "$1")
  while :; do
    before=$after; sleep 0.3; after=$(cpu_s "$1")
    [ "$before" = "$after" ] && break
  done
}
# CPU seconds a process has used since it had used $2.
used() { awk -v a="$(cpu_s "$1")" -v b="$2" 'BEGIN {printf "%.2f\n", a - b}'; }
fetch() { curl -fsS -o /dev/null -w '%{time_total}\n' "$1"; }
sha_cpu() {
  python3 - "$1" <<'PY'
import hashlib, sys, time
n = int(sys.argv[1]); buf = bytes(range(256)) * (4 << 12)
h = hashlib.sha256(); t = time.process_time(); left = n
while left > 0:
    k = min(left, len(buf)); h.update(buf if k == len(buf) else buf[:k]); left -= k
print(f"{time.process_time() - t:.3f}")
PY
}

# Resident memory of a process, total and anonymous, in MiB.
rss() { awk '/^VmRSS/ {t = $2} /^RssAnon/ {a = $2} END {printf "%.1f/%.1f\n", t / 1024, a / 1024}' "/proc/$1/status"; }
for name in direct relay_wall relay_cpu sha; do : >"$W/$name"; done
for v in "${VARIANTS[@]}"; do
  for f in wall cpu rss slow_cpu hit_wall hit_cpu; do : >"$W/${v}_$f"; done
done
for round in $(seq "$ROUNDS"); do
  digest=$(push_blob "$REG" "$MIB")
  path="v2/bench/blob/blobs/$digest"
  fetch "http://127.0.0.1:$REG/$path" >>"$W/direct"
  c0=$(cpu_s "$NGINX_PID")
  fetch "http://127.0.0.1:$RELAY/$path" >>"$W/relay_wall"
  used "$NGINX_PID" "$c0" >>"$W/relay_cpu"
  line=""
  for v in "${VARIANTS[@]}"; do
    pid=${LASTI_PID[$v]}
    settle "$pid"; c0=$(cpu_s "$pid")
    fetch "http://127.0.0.1:${PORT[$v]}/$path" >>"$W/${v}_wall"
    settle "$pid"
    used "$pid" "$c0" >>"$W/${v}_cpu"
    rss "$pid" >>"$W/${v}_rss"
    c0=$(cpu_s "$pid")
    fetch "http://127.0.0.1:${PORT[$v]}/$path" >>"$W/${v}_hit_wall"
    settle "$pid"
    used "$pid" "$c0" >>"$W/${v}_hit_cpu"
    line+=", $v $(tail -1 "$W/${v}_wall") s / $(tail -1 "$W/${v}_cpu") s CPU / RSS $(tail -1 "$W/${v}_rss") MiB"
    line+=" / first hit $(tail -1 "$W/${v}_hit_wall") s, $(tail -1 "$W/${v}_hit_cpu") s CPU"
  done
  if [ -n "${SLOW_RATE:-}" ]; then
    slow=$(push_blob "$REG" "$MIB")
    for v in "${VARIANTS[@]}"; do
      pid=${LASTI_PID[$v]}
      settle "$pid"; c0=$(cpu_s "$pid")
      curl -fsS --limit-rate "$SLOW_RATE" -o /dev/null "http://127.0.0.1:${PORT[$v]}/v2/bench/blob/blobs/$slow"
      settle "$pid"
      used "$pid" "$c0" >>"$W/${v}_slow_cpu"
      line+=", $v slow client $(tail -1 "$W/${v}_slow_cpu") s CPU"
    done
  fi
  sha_cpu $((MIB * 1024 * 1024)) >>"$W/sha"
  echo "round $round: direct $(tail -1 "$W/direct") s, relay $(tail -1 "$W/relay_wall") s / $(tail -1 "$W/relay_cpu") s CPU$line," \
    "sha256 $(tail -1 "$W/sha") s CPU" >&2
done

m() { median <"$W/$1"; }
direct=$(m direct) relay_wall=$(m relay_wall) relay_cpu=$(m relay_cpu)
sha=$(m sha)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
floor=$(awk -v a="$relay_cpu" -v b="$sha" 'BEGIN {print a + b}')
wall_floor=$(awk -v a="$direct" -v b="$sha" 'BEGIN {print (a > b) ? a : b}')
echo "cold $MIB MiB, medians of $ROUNDS rounds:"
echo "  direct fetch           $direct s"
echo "  nginx relay            $relay_wall s wall, $relay_cpu s CPU"
echo "  sha256                 $sha s CPU"
for v in "${VARIANTS[@]}"; do
  wall=$(m "${v}_wall") cpu=$(m "${v}_cpu")
  echo "  $v cold             $wall s wall, $cpu s CPU, RSS after each fill (MiB, total/anon): $(tr '\n' ' ' <"$W/${v}_rss")"
  echo "  $v CPU / sha256     $(ratio "$cpu" "$sha")x"
  echo "  $v CPU / (relay + sha256) $(ratio "$cpu" "$floor")x"
  echo "  $v wall / max(direct, sha256) $(ratio "$wall" "$wall_floor")x"
  echo "  $v first hit after the miss $(m "${v}_hit_wall") s wall, $(m "${v}_hit_cpu") s CPU"
  [ -z "${SLOW_RATE:-}" ] || echo "  $v cold, a client at $SLOW_RATE/s: $(m "${v}_slow_cpu") s CPU"
done
echo "  relay wall / direct    $(ratio "$relay_wall" "$direct")x"
