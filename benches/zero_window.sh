#!/usr/bin/env bash
# One hostile HTTP/2 client beside a well-behaved one: h2load opens
# CONNS connections of STREAMS streams each on a cached 1 MiB blob and
# never opens a window (-w 0), again and again for ATTACK seconds (a new
# round as soon as lasti closes the last one), over TLS, with
# max_connections = 200 and an open-file limit of 20,000 (5,000 blob
# responses at once). Meanwhile curl fetches the blob every 0.2 s on a new
# connection.
#
# Usage: benches/zero_window.sh   (env: ATTACK=60 CONNS=40 STREAMS=128
#        LASTI_BIN=path: measure that binary instead of building this tree's)
# Output: one line:
#   attack_s <n> rounds <n> rss_before_mib <n> rss_peak_mib <n>
#   good <n> good_failed <n> good_p50_s <n> good_max_s <n>
# Needs: nghttp2-client (h2load), openssl, curl, docker-registry (Debian).
# Everything listens on 127.0.0.1; the servers started here are stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
ATTACK=${ATTACK:-60}
CONNS=${CONNS:-40}
STREAMS=${STREAMS:-128}
REGISTRY_PORT=${REGISTRY_PORT:-15140}
LASTI_PORT=${LASTI_PORT:-15141}
lasti_bin
bench_workdir lasti-zero-window

start_registry "$REGISTRY_PORT" $((ATTACK + 300)) quiet
digest=$(push_blob "$REGISTRY_PORT" 1)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
  -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
  -keyout "$W/key.pem" -out "$W/cert.pem" 2>/dev/null
cat >"$W/lasti.toml" <<EOF
listen = "127.0.0.1:$LASTI_PORT"
admin_listen = "127.0.0.1:0"
data_dir = "$W/data"
[log]
filter = "warn"
[access]
max_connections = 200
[tls]
cert_file = "$W/cert.pem"
key_file = "$W/key.pem"
[[upstream]]
name = "docker.io"
url = "http://127.0.0.1:$REGISTRY_PORT"
EOF
(ulimit -n 20000 && exec timeout $((ATTACK + 300)) "$LASTI_BIN" --config "$W/lasti.toml") \
  >"$W/lasti.log" 2>&1 &
PIDS+=($!)
wait_port "$LASTI_PORT"
LASTI_PID=$(pgrep -P "${PIDS[-1]}")
url="https://127.0.0.1:$LASTI_PORT/v2/bench/blob/blobs/$digest"
curl -kfsS -o /dev/null "$url"
rss() { awk '/^VmRSS:/ {printf "%.0f\n", $2 / 1024}' "/proc/$LASTI_PID/status"; }
before=$(rss)

# The attack, round after round.
(
  end=$((SECONDS + ATTACK))
  rounds=0
  while [ $SECONDS -lt $end ]; do
    timeout $((end - SECONDS + 1)) h2load -c "$CONNS" -m "$STREAMS" -w 0 -n $((CONNS * STREAMS * 100)) \
      "$url" >/dev/null 2>&1 || true
    rounds=$((rounds + 1))
  done
  echo "$rounds" >"$W/rounds"
) &
attacker=$!
PIDS+=("$attacker")

# The well-behaved client, and lasti's memory, meanwhile.
peak=$before
: >"$W/good"
end=$((SECONDS + ATTACK))
while [ $SECONDS -lt $end ]; do
  curl -ks -o /dev/null -w '%{http_code} %{time_total}\n' --max-time 10 "$url" >>"$W/good" || true
  now=$(rss)
  [ "$now" -gt "$peak" ] && peak=$now
  sleep 0.2
done
wait "$attacker" || true
good=$(wc -l <"$W/good")
failed=$(awk '$1 != 200' "$W/good" | wc -l)
p50=$(awk '{print $2}' "$W/good" | median)
slowest=$(awk '{print $2}' "$W/good" | sort -n | tail -1)
echo "attack_s $ATTACK rounds $(cat "$W/rounds") rss_before_mib $before rss_peak_mib $peak" \
  "good $good good_failed $failed good_p50_s $p50 good_max_s $slowest"
