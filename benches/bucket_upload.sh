#!/usr/bin/env bash
# Upload throughput to the shared bucket while hits run. lasti fetches
# COUNT fresh blobs of SIZE_MIB from the upstream (one GET of each through
# it, all at once), which makes it owe them to the bucket; its uploader
# publishes them to Garage in the background, MAX_UPLOADS at a time, while
# ab keeps asking it for one small cached blob. The baseline is the same
# amount of bytes PUT straight to Garage by curl, MAX_UPLOADS PUTs at once
# (whole objects; lasti sends 8 MiB parts), under the same hits. Hits with
# nothing uploading, in the same run, are the reference for hit latency.
#
# lasti's upload time runs from the first of its GETs to return (its blob
# stored, so its upload can start) until lasti_bucket_requests_total
# {op="put",result="stored"} has counted the COUNT blobs; when the first
# and the last GET returned is printed beside it. Hits are measured from
# the last GET's return until the uploads end, and over the direct PUTs.
# Garage (built once by scripts/garage) is the store; the CNCF
# distribution registry is the upstream. Every blob is fresh random bytes,
# and each run uses new ones: Garage keeps one copy of identical blocks,
# which would make a second upload of the same bytes cheap. The direct
# PUTs' files are written around the page cache, as lasti writes blobs of
# 16 MiB and more.
#
# Usage: benches/bucket_upload.sh   (env: SIZE_MIB=64 COUNT=8 REPEAT=3
#   MAX_UPLOADS=2 HIT_MIB=1 CONC=2 IDLE_S=3 BASE_PORT=15180)
# Output: three lines per run, then the medians and the ratios:
#   run <i> idle:   hits <n> req/s p50 <ms> ms p99 <ms> ms
#   run <i> lasti:  fetch <first>-<last> s upload <s> s <n> MiB/s   hits ...
#   run <i> direct: upload <s> s <n> MiB/s   hits ...
# Needs: docker-registry, curl, ab (apache2-utils), bc, a release build.
# Everything listens on 127.0.0.1; every server started here is stopped by
# PID.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${SIZE_MIB:-64}
COUNT=${COUNT:-8}
REPEAT=${REPEAT:-3}
MAX_UPLOADS=${MAX_UPLOADS:-2}
HIT_MIB=${HIT_MIB:-1}
CONC=${CONC:-2}
IDLE_S=${IDLE_S:-3}
BASE=${BASE_PORT:-15180}
GARAGE=$(scripts/garage)
cargo build --release --bin lasti >&2
. benches/lib.sh
bench_workdir lasti-bench-upload

# The store: one Garage node, a bucket and a key.
start_garage "$BASE" 3600 20G

# The upstream: the small blob the hits ask for, and COUNT fresh blobs for
# each run.
start_registry $((BASE + 2)) 3600 quiet
HIT_DIGEST=$(push_blob $((BASE + 2)) "$HIT_MIB")
BLOBS=()
for _ in $(seq $((COUNT * REPEAT))); do BLOBS+=("$(push_blob $((BASE + 2)) "$SIZE_MIB")"); done

# lasti, with the shared bucket.
PORT=$((BASE + 4)) ADMIN=$((BASE + 5))
start_lasti_on_bucket lasti "$PORT" 3600 "max_uploads = $MAX_UPLOADS"
blob_url() { echo "http://127.0.0.1:$PORT/v2/bench/blob/blobs/$1"; }
now() { date +%s.%N; }

# The count of blob uploads lasti finished with result $1 (stored, error).
puts() {
  curl -fsS "http://127.0.0.1:$ADMIN/metrics" |
    awk -v r="$1" '$1 == "lasti_bucket_requests_total{op=\"put\",result=\"" r "\"}" {print $2}'
}
# Waits (up to 600 s) until lasti has stored $1 blobs in the bucket.
wait_stored() {
  local stored
  for _ in $(seq 12000); do
    stored=$(puts stored)
    [ "${stored:-0}" -ge "$1" ] && return 0
    sleep 0.05
  done
  echo "lasti stored ${stored:-0} of $1 blobs in 600 s ($(puts error) failed puts); its log:" >&2
  tail -20 "$W/lasti/log" >&2
  exit 1
}

# The hit blob is cached (and published) before anything is measured.
curl -fsS -o /dev/null "$(blob_url "$HIT_DIGEST")"
wait_stored 1
stored=1

# ab asks for the hit blob over CONC keep-alive connections, for at most
# $2 s, or until hits_stop; its report goes to $W/$1.ab, its percentiles
# to $W/$1.csv.
hits_start() { # name seconds
  ab -k -q -c "$CONC" -t "$2" -n 5000000 -e "$W/$1.csv" "$(blob_url "$HIT_DIGEST")" >"$W/$1.ab" 2>&1 &
  AB=$!
  PIDS+=("$AB")
}
# Stops ab (SIGINT: it reports what it did so far).
hits_stop() { kill -INT "$AB"; wait "$AB" || true; }
# "<req/s> <p50 ms> <p99 ms>" of a finished ab run; fails on any failed or
# non-200 request.
hits_of() {
  if ! grep -q '^Failed requests: *0$' "$W/$1.ab" || grep -q '^Non-2xx' "$W/$1.ab"; then
    echo "ab reported failed requests ($1):" >&2; cat "$W/$1.ab" >&2; exit 1
  fi
  printf '%s %s %s\n' "$(awk '/^Requests per second/ {print $4}' "$W/$1.ab")" \
    "$(awk -F, '$1 == 50 {print $2}' "$W/$1.csv")" "$(awk -F, '$1 == 99 {print $2}' "$W/$1.csv")"
}
hits_line() { read -r rps p50 p99 <<<"$(hits_of "$1")"; echo "hits $rps req/s p50 $p50 ms p99 $p99 ms"; }
mibs() { echo "scale=1; $COUNT * $SIZE_MIB / $1" | bc; }
secs() { echo "scale=3; ($2 - $1) / 1" | bc; }

for i in $(seq "$REPEAT"); do
  # Hits with nothing uploading.
  hits_start "idle$i" "$IDLE_S"
  wait "$AB" || true
  echo "run $i idle:   $(hits_line "idle$i")"
  hits_of "idle$i" >>"$W/idle"

  # lasti: one GET of each fresh blob, all at once; then hits until the
  # uploads are done.
  : >"$W/fetch$i"; fetches=()
  t0=$(now)
  for d in "${BLOBS[@]:$(((i - 1) * COUNT)):COUNT}"; do
    curl -fsS -o /dev/null -w '%{time_total}\n' "$(blob_url "$d")" >>"$W/fetch$i" &
    fetches+=($!)
  done
  for p in "${fetches[@]}"; do wait "$p"; done
  t_fetched=$(now)
  hits_start "lasti$i" 600
  stored=$((stored + COUNT))
  wait_stored "$stored"
  t_stored=$(now)
  hits_stop
  first=$(sort -n "$W/fetch$i" | head -1)
  up=$(secs "$(echo "$t0 + $first" | bc)" "$t_stored")
  echo "run $i lasti:  fetch $(secs 0 "$first")-$(secs "$t0" "$t_fetched") s upload $up s $(mibs "$up") MiB/s   $(hits_line "lasti$i")"
  echo "$up" >>"$W/lasti_up"; hits_of "lasti$i" >>"$W/lasti_hits"

  # Direct: the same amount of fresh bytes, MAX_UPLOADS curl PUTs at once.
  mkdir -p "$W/put$i"
  for f in $(seq "$COUNT"); do
    head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom |
      dd of="$W/put$i/$f" bs=1M iflag=fullblock oflag=direct status=none
  done
  hits_start "direct$i" 600
  t0=$(now)
  (cd "$W/put$i" && printf '%s\n' * | xargs -P "$MAX_UPLOADS" -I{} curl -fsS -o /dev/null \
    -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' --aws-sigv4 aws:amz:garage:s3 \
    --user "$KEY_ID:$SECRET" -T {} "http://127.0.0.1:$BASE/lasti/direct$i/{}")
  t1=$(now)
  hits_stop
  rm -r "$W/put$i"
  up=$(secs "$t0" "$t1")
  echo "run $i direct: upload $up s $(mibs "$up") MiB/s   $(hits_line "direct$i")"
  echo "$up" >>"$W/direct_up"; hits_of "direct$i" >>"$W/direct_hits"
done

col() { cut -d' ' -f"$2" "$W/$1" | median; }
l=$(median <"$W/lasti_up"); d=$(median <"$W/direct_up")
echo "median ($COUNT x $SIZE_MIB MiB, $MAX_UPLOADS at once, $REPEAT runs):"
echo "  upload: lasti $l s $(mibs "$l") MiB/s   direct $d s $(mibs "$d") MiB/s   ratio lasti/direct $(echo "scale=2; $(mibs "$l") / $(mibs "$d")" | bc)"
for phase in idle lasti_hits direct_hits; do
  echo "  hits ${phase%_hits}: $(col "$phase" 1) req/s p50 $(col "$phase" 2) ms p99 $(col "$phase" 3) ms"
done
echo "  hits during lasti's uploads / idle: req/s $(echo "scale=2; $(col lasti_hits 1) / $(col idle 1)" | bc)" \
  "p50 $(echo "scale=2; $(col lasti_hits 2) / $(col idle 2)" | bc)" \
  "p99 $(echo "scale=2; $(col lasti_hits 3) / $(col idle 3)" | bc)"
