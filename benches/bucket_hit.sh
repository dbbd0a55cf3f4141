#!/usr/bin/env bash
# A replica with an empty disk serving a blob another replica published to
# the shared bucket, against a direct GET of the same object from the store:
# what the bucket tier costs on top of the store itself. Garage (built once
# by scripts/garage) is the store; the CNCF distribution registry is the
# upstream that the first replica fetches from.
#
# Usage: benches/bucket_hit.sh   (env: SIZE_MIB=256 REPEAT=3)
# Output: one line per run, then the medians and their ratio:
#   direct <s>   lasti <s>   lasti_cpu <s>
# Needs: docker-registry, curl (Debian), a release build. Everything listens
# on 127.0.0.1; every server started here is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${SIZE_MIB:-256}
REPEAT=${REPEAT:-3}
BASE=${BASE_PORT:-15140}
GARAGE=$(scripts/garage)
cargo build --release --bin lasti >&2
. benches/lib.sh
bench_workdir lasti-bench-bucket

# The store: one Garage node, a bucket and a key.
start_garage "$BASE" 1800 10G

# The upstream, holding one blob of SIZE_MIB.
start_registry $((BASE + 2)) 1800 quiet
DIGEST=$(push_blob $((BASE + 2)) "$SIZE_MIB")

# A replica: its own data directory and ports, the shared bucket.
start_lasti() { start_lasti_on_bucket "$1" "$2" 1800; }
blob_url() { echo "http://127.0.0.1:$1/v2/bench/blob/blobs/$DIGEST"; }

# The first replica fetches the blob from the upstream and publishes it.
start_lasti first $((BASE + 4))
curl -fsS -o /dev/null "$(blob_url $((BASE + 4)))"
for _ in $(seq 600); do
  stored=$(curl -fsS "http://127.0.0.1:$((BASE + 5))/metrics" |
    awk '/^lasti_bucket_requests_total\{op="put",result="stored"\}/ {print $2}')
  [ "${stored:-0}" = 1 ] && break
  sleep 0.1
done
[ "${stored:-0}" = 1 ] || { echo "the blob was not published" >&2; exit 1; }

: >"$W/direct"; : >"$W/lasti"; : >"$W/cpu"
for i in $(seq "$REPEAT"); do
  port=$((BASE + 10 + 2 * i))
  start_lasti "empty$i" "$port"
  before=$(cpu_s "$LASTI_PID")
  t_lasti=$(curl -fsS -o /dev/null -w '%{time_total}' "$(blob_url "$port")")
  after=$(cpu_s "$LASTI_PID")
  t_direct=$(curl -fsS -o /dev/null -w '%{time_total}' -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' \
    --aws-sigv4 aws:amz:garage:s3 --user "$KEY_ID:$SECRET" \
    "http://127.0.0.1:$BASE/lasti/blobs/sha256/${DIGEST#sha256:}")
  cpu=$(echo "$after - $before" | bc)
  echo "run $i: direct $t_direct s, lasti (empty disk) $t_lasti s, lasti cpu $cpu s"
  echo "$t_direct" >>"$W/direct"; echo "$t_lasti" >>"$W/lasti"; echo "$cpu" >>"$W/cpu"
  kill "$LASTI_WRAPPER"
done
d=$(median <"$W/direct"); l=$(median <"$W/lasti"); c=$(median <"$W/cpu")
echo "median (${SIZE_MIB} MiB, $REPEAT runs): direct $d s   lasti $l s   lasti_cpu $c s   ratio lasti/direct $(echo "scale=2; $l / $d" | bc)"
