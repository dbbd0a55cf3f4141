#!/usr/bin/env bash
# lasti side by side with its peers, in one run: the CNCF distribution
# registry in proxy mode (what a user would pick instead) and nginx serving
# the same blob files with sendfile (the practical limit for serving a file),
# all measured by ../shared/peers/bench.sh against the same upstream.
#
# Usage: benches/peers.sh [bench.sh knobs as env: REPEAT, ONLY, WRK_DURATION, ...]
# Output: $OUT/lasti.txt, $OUT/distribution.txt and $OUT/summary.txt
#         (OUT defaults to /tmp/lasti-peers-<time>).
# Needs: docker-registry skopeo nginx wrk python3 curl bc (Debian), a release build.
# Everything listens on 127.0.0.1; the servers started here are stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS=$(cd ../shared/peers && pwd)
OUT=${OUT:-/tmp/lasti-peers-$(date +%Y%m%d%H%M%S)}
LASTI_PORT=${LASTI_PORT:-15010}
mkdir -p "$OUT"
cargo build --release >&2
"$PEERS/start.sh" >&2

DATA=$(mktemp -d /tmp/lasti-peers-data.XXXXXX)
# No access log: the peers run with theirs off too.
RUST_LOG=${RUST_LOG:-warn} timeout 7200 target/release/lasti --listen "127.0.0.1:$LASTI_PORT" --admin-listen 127.0.0.1:0 \
  --data-dir "$DATA" --upstream docker.io=http://127.0.0.1:15000 >"$OUT/lasti.log" 2>&1 &
WRAPPER=$!
trap 'kill $WRAPPER 2>/dev/null || true; rm -rf "$DATA"' EXIT
for _ in $(seq 100); do curl -fsS -o /dev/null "http://127.0.0.1:$LASTI_PORT/v2/" && break; sleep 0.1; done
# Measure lasti itself, not the `timeout` that bounds its lifetime.
LASTI_PID=$(pgrep -P "$WRAPPER")

export REF_PID=$(cat /tmp/peers/nginx.pid)
echo "== lasti ==" >&2
"$PEERS/bench.sh" "http://127.0.0.1:$LASTI_PORT" /tmp/peers/upstream.log "$LASTI_PID" >"$OUT/lasti.txt"
echo "== distribution (proxy mode) ==" >&2
"$PEERS/bench.sh" http://127.0.0.1:15001 /tmp/peers/upstream.log "$(cat /tmp/peers/proxy.pid)" >"$OUT/distribution.txt"
{
  echo "# lasti"; python3 "$PEERS/summarize.py" "$OUT/lasti.txt"
  echo "# distribution"; python3 "$PEERS/summarize.py" "$OUT/distribution.txt"
} | tee "$OUT/summary.txt"
echo "results in $OUT" >&2
