#!/usr/bin/env bash
# Memory per cached object: a cache of N small blobs (written straight into
# a data directory, as a long-lived cache would hold them), lasti's resident
# memory once it has indexed them, and again once every one was hit (each
# blob once, then all again), against an empty cache's. The figures are per
# object, to extrapolate to a million (docs/performance.md).
#
# Usage: benches/many_objects.sh   (env: OBJECTS=50000 SIZE=1024;
#        LASTI_BIN=path: measure that binary instead of building this tree's)
# Output: one line:
#   objects <n> rss_empty_mib <n> rss_indexed_mib <n> rss_hit_mib <n> rss_hit_again_mib <n>
#   index_bytes_per_object <n> hit_bytes_per_object <n> index_s <n>
# One client asks for each blob in turn (h2load uses its URI list from the
# start for every client). Needs: python3, bc, nghttp2-client (h2load), a
# release build. Loopback only;
# lasti is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
OBJECTS=${OBJECTS:-50000}
SIZE=${SIZE:-1024}

PORT=${PORT:-15140}
ADMIN=${ADMIN:-15141}
lasti_bin
bench_workdir lasti-many

# N random blobs, each stored under its digest as lasti stores them.
write_blobs() { # dir count size
  python3 - "$1" "$2" "$3" "$PORT" <<'PY'
import hashlib, os, sys
root, count, size, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
with open(os.path.join(os.path.dirname(root), "uris"), "w") as uris:
    for _ in range(count):
        data = os.urandom(size)
        hexd = hashlib.sha256(data).hexdigest()
        d = os.path.join(root, "sha256", hexd[:2])
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, hexd), "wb") as f:
            f.write(data)
        uris.write(f"http://127.0.0.1:{port}/v2/library/bench/blobs/sha256:{hexd}\n")
PY
}

rss_mib() { awk '/^VmRSS/ {printf "%.1f\n", $2 / 1024}' "/proc/$1/status"; }
metric() { curl -fsS "http://127.0.0.1:$ADMIN/metrics" | awk -v m="$1" '$1 == m {print $2}'; }

# Starts lasti on $W/$1 (a data directory); sets LASTI_PID (lasti's own,
# under the `timeout` that bounds it).
start_lasti() {
  cat >"$W/$1.toml" <<CONF
listen = "127.0.0.1:$PORT"
admin_listen = "127.0.0.1:$ADMIN"
data_dir = "$W/$1"
[log]
filter = "warn"
[cache]
max_size = "100 GiB"
[[upstream]]
name = "docker.io"
url = "http://127.0.0.1:9"
CONF
  timeout 900 "$LASTI_BIN" --config "$W/$1.toml" >"$W/$1.log" 2>&1 &
  PIDS+=($!)
  wait_port "$PORT"
  LASTI_PID=$(tr -d " " <"/proc/$!/task/$!/children")
}

stop_lasti() {
  kill "$LASTI_PID"
  while [ -e "/proc/$LASTI_PID" ]; do sleep 0.05; done
}

mkdir -p "$W/empty"
start_lasti empty
sleep 1
empty=$(rss_mib "$LASTI_PID")
stop_lasti

mkdir -p "$W/full/blobs"
write_blobs "$W/full/blobs" "$OBJECTS" "$SIZE"
started=$(date +%s.%N)
start_lasti full
until [ "$(metric lasti_cache_objects)" = "$OBJECTS" ]; do sleep 0.05; done
index_s=$(echo "$(date +%s.%N) - $started" | bc)
sleep 1
indexed=$(rss_mib "$LASTI_PID")
h2load --h1 -c 1 -n "$OBJECTS" -i "$W/full/uris" >"$W/h2load-1" 2>&1 || true
grep -q " 0 failed, 0 errored" "$W/h2load-1" || { cat "$W/h2load-1" >&2; exit 1; }
sleep 1
hit=$(rss_mib "$LASTI_PID")
h2load --h1 -c 1 -n "$OBJECTS" -i "$W/full/uris" >"$W/h2load-2" 2>&1 || true
sleep 1
again=$(rss_mib "$LASTI_PID")
stop_lasti

per() { echo "($1 - $2) * 1048576 / $OBJECTS" | bc; }
echo "objects $OBJECTS rss_empty_mib $empty rss_indexed_mib $indexed rss_hit_mib $hit" \
  "rss_hit_again_mib $again index_bytes_per_object $(per "$indexed" "$empty")" \
  "hit_bytes_per_object $(per "$hit" "$indexed") index_s $(printf '%.2f' "$index_s")"
