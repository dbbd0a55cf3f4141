#!/usr/bin/env bash
# Does back-fill slow the pull? Times cold pulls of the ~200 MiB "medium"
# image through lasti without a target and through lasti with a target
# (a second local registry), alternating, and prints the medians and ratio.
#
# Needs: a release build (cargo build --release), ../shared/peers (upstream
# registry on 127.0.0.1:15000 and mkimages.py), skopeo, docker-registry.
# Everything listens on 127.0.0.1; every server started here is stopped by PID.
# Usage: benches/backfill_pull.sh [ROUNDS]   (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
PEERS=$(cd ../shared/peers && pwd)
LASTI=$PWD/target/release/lasti
W=$(mktemp -d /tmp/lasti-bench-backfill.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT

[ -x "$LASTI" ] || cargo build --release
"$PEERS/start.sh" upstream >&2
RUN=$(date +%s)
python3 "$PEERS/mkimages.py" --out "$W/images" --suffix="-bf$RUN" --images medium \
  --push 127.0.0.1:15000 --rm-after-push >&2

cat > "$W/target.yml" <<YML
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $W/target}, delete: {enabled: true}}
http: {addr: 127.0.0.1:15006}
YML
timeout 900 /usr/bin/docker-registry serve "$W/target.yml" >"$W/target.log" 2>&1 &
PIDS+=($!)

wait_up() { for _ in $(seq 100); do curl -fsS -o /dev/null "$1" && return 0; sleep 0.1; done; return 1; }
wait_up http://127.0.0.1:15006/v2/

# One cold pull through a fresh lasti; prints seconds.
pull() { # name extra-args...
  local name=$1; shift
  local dir="$W/$name-$RANDOM"
  timeout 600 "$LASTI" --listen 127.0.0.1:15010 --admin-listen 127.0.0.1:15011 --data-dir "$dir/data" \
    --upstream docker.io=http://127.0.0.1:15000 --log-format json "$@" >"$dir.log" 2>&1 &
  local pid=$!
  wait_up http://127.0.0.1:15010/v2/
  local t0 t1
  t0=$(date +%s.%N)
  skopeo copy --quiet --insecure-policy --src-tls-verify=false \
    "docker://127.0.0.1:15010/library/medium-bf$RUN:latest" "dir:$dir/out" >&2
  t1=$(date +%s.%N)
  if [ "$name" = with ]; then   # let the push finish before the next round
    for _ in $(seq 600); do
      curl -fsS http://127.0.0.1:15011/admin/backfill | grep -q '"state": "done"' && break; sleep 0.1
    done
  fi
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
  echo "$t1 - $t0" | bc
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
for i in $(seq "$ROUNDS"); do
  echo "without $(pull without)" >>"$W/times"
  echo "with $(pull with --target http://127.0.0.1:15006 --target-project bench)" >>"$W/times"
done
without=$(awk '$1=="without"{print $2}' "$W/times" | median)
with=$(awk '$1=="with"{print $2}' "$W/times" | median)
echo "cold_pull_without_backfill $without s"
echo "cold_pull_with_backfill $with s"
echo "ratio_with_over_without $(echo "scale=3; $with / $without" | bc)"
