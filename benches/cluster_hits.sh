#!/usr/bin/env bash
# Three replicas that know each other ([cluster], static peers) against one:
#  - cold: a blob asked of all three replicas at once costs how many
#    upstream GETs (the registry's own access log), and how long;
#  - hits: aggregate requests/s of a cached 1 MiB blob, 48 connections on
#    one replica against 16 on each of three (wrk), alternating runs.
# On one machine the replicas share its cores, so the hit figure shows the
# cost of being a cluster (about none), not the gain of more pods; the gain
# is each pod's own cores, NIC and disk.
#
# Usage: benches/cluster_hits.sh   (env: REPEAT=3 SECONDS_PER_RUN=10 COLD_MIB=64;
#        CLUSTER=0 runs the same three processes without [cluster], for contrast)
# Needs: docker-registry, curl, wrk (Debian), a release build. Everything
# listens on 127.0.0.1; every server started here is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
REPEAT=${REPEAT:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
COLD_MIB=${COLD_MIB:-64}
CLUSTER=${CLUSTER:-1}
BASE=${BASE_PORT:-15240}
cargo build --release --bin lasti >&2
. benches/lib.sh
bench_workdir lasti-bench-cluster

# The upstream, with its access log (to count blob GETs).
REG=$((BASE + 2))
start_registry "$REG" 1800
HOT=$(push_blob "$REG" 1)
COLD=$(push_blob "$REG" "$COLD_MIB")

# Three replicas: API on BASE+10+4i, admin +1, peer +2.
PEERS=""
for i in 0 1 2; do PEERS="$PEERS\"127.0.0.1:$((BASE + 12 + 4 * i))\", "; done
for i in 0 1 2; do
  api=$((BASE + 10 + 4 * i))
  mkdir -p "$W/r$i"
  cat >"$W/r$i/lasti.toml" <<EOF
listen = "127.0.0.1:$api"
admin_listen = "127.0.0.1:$((api + 1))"
data_dir = "$W/r$i/data"
[log]
filter = "warn"
[[upstream]]
name = "docker.io"
url = "http://127.0.0.1:$REG"
EOF
  if [ "$CLUSTER" = 1 ]; then
    printf 'bench-cluster-secret\n' >"$W/cluster-secret"
    printf '[cluster]\nlisten = "127.0.0.1:%s"\npeers = [%s]\nsecret_file = "%s"\n' \
      "$((api + 2))" "${PEERS%, }" "$W/cluster-secret" >>"$W/r$i/lasti.toml"
  fi
  timeout 1800 target/release/lasti --config "$W/r$i/lasti.toml" >"$W/r$i/log" 2>&1 &
  PIDS+=($!)
  wait_port "$api"
done
url() { echo "http://127.0.0.1:$((BASE + 10 + 4 * $1))/v2/bench/blob/blobs/$2"; }

# Cold: the same blob asked of the three replicas at once.
gets() { grep -c "GET /v2/bench/blob/blobs/$1" "$W/registry.log" || true; }
start=$(date +%s.%N)
clients=()
for i in 0 1 2; do curl -fsS -o /dev/null "$(url "$i" "$COLD")" & clients+=($!); done
wait "${clients[@]}"
cold_wall=$(echo "$(date +%s.%N) - $start" | bc)
sleep 0.5
echo "cold ${COLD_MIB} MiB asked of 3 replicas at once: $(gets "$COLD") upstream GET(s), $(printf '%.2f' "$cold_wall") s"

# Hits: warm every replica, then alternate one replica against three.
for i in 0 1 2; do curl -fsS -o /dev/null "$(url "$i" "$HOT")"; done
rate() { awk '/Requests\/sec/ {print $2}'; }
: >"$W/one"; : >"$W/three"
for run in $(seq "$REPEAT"); do
  one=$(wrk -t2 -c48 -d"${SECONDS_PER_RUN}s" "$(url 0 "$HOT")" | rate)
  clients=()
  for i in 0 1 2; do
    wrk -t1 -c16 -d"${SECONDS_PER_RUN}s" "$(url "$i" "$HOT")" >"$W/wrk$i" &
    clients+=($!)
  done
  wait "${clients[@]}"
  three=$(cat "$W/wrk0" "$W/wrk1" "$W/wrk2" | rate | paste -sd+ | bc)
  echo "run $run: 1 MiB hits, one replica $one req/s, three replicas $three req/s"
  echo "$one" >>"$W/one"; echo "$three" >>"$W/three"
done
o=$(median <"$W/one"); t=$(median <"$W/three")
echo "median ($REPEAT runs): one $o req/s   three $t req/s   ratio three/one $(echo "scale=2; $t / $o" | bc)"
