#!/usr/bin/env bash
# What a signature rule costs: manifest hits of one image through one
# lasti, as plain/app (no rule) and as team/app (a rule needs its cosign
# signature), measured in turn in each repetition, with h2load over plain
# HTTP/1.1; and the upstream requests of the first (cold) pull of each by
# tag. One process serves both: two like processes differ by up to 20%
# here. The image and its `.sig` signature are made here (openssl, P-256)
# and pushed to the distribution registry as cosign lays them out.
#
# Usage: benches/signed_hits.sh   (env: REPEAT=3 CONNS=16 REQUESTS=20000
#        LASTI_BIN=path: measure that binary instead of building this tree's)
# Output:
#   cold <case> manifest_gets <n> blob_gets <n>
#   hit <by> <case> rps <n> cpu_us_per_req <n> x_plain <median of per-repetition ratios>
# Needs: docker-registry, nghttp2-client (h2load), openssl, curl (Debian),
# a release build. Everything listens on 127.0.0.1; servers are stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
REPEAT=${REPEAT:-3}
CONNS=${CONNS:-16}
REQUESTS=${REQUESTS:-20000}
REGISTRY=${REGISTRY:-15140}
PORT=${PORT:-15142}
OCI=application/vnd.oci.image.manifest.v1+json
lasti_bin
bench_workdir lasti-signed-hits
start_registry "$REGISTRY" 3600

upload() { # file repo -> digest
  upload_blob "$REGISTRY" "$2" "$1"
}
put_manifest() { # file repo tag
  curl -fsS -o /dev/null -X PUT -H "Content-Type: $OCI" -T "$1" \
    "http://127.0.0.1:$REGISTRY/v2/$2/manifests/$3"
}
descriptor() { # media_type file digest
  printf '{"mediaType":"%s","digest":"%s","size":%d}' "$1" "$3" "$(stat -c %s "$2")"
}

# The image, in both repositories.
printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}' >"$W/config"
head -c 4096 /dev/urandom >"$W/layer"
for repo in team/app plain/app; do
  config=$(upload "$W/config" $repo); layer=$(upload "$W/layer" $repo)
done
printf '{"schemaVersion":2,"mediaType":"%s","config":%s,"layers":[%s]}' "$OCI" \
  "$(descriptor application/vnd.oci.image.config.v1+json "$W/config" "$config")" \
  "$(descriptor application/vnd.oci.image.layer.v1.tar+gzip "$W/layer" "$layer")" >"$W/manifest"
put_manifest "$W/manifest" team/app v1
put_manifest "$W/manifest" plain/app v1
digest="sha256:$(sha256sum "$W/manifest" | cut -d' ' -f1)"

# Its signature in team/app, as cosign writes it.
openssl ecparam -name prime256v1 -genkey -noout -out "$W/key.pem"
openssl ec -in "$W/key.pem" -pubout -out "$W/cosign.pub" 2>/dev/null
printf '{"critical":{"identity":{"docker-reference":"127.0.0.1:%s/team/app"},"image":{"docker-manifest-digest":"%s"},"type":"cosign container image signature"},"optional":null}' \
  "$REGISTRY" "$digest" >"$W/payload"
signature=$(openssl dgst -sha256 -sign "$W/key.pem" "$W/payload" | base64 -w0)
payload=$(upload "$W/payload" team/app)
printf '{}' >"$W/sig-config"; sig_config=$(upload "$W/sig-config" team/app)
layer_desc=$(descriptor application/vnd.dev.cosign.simplesigning.v1+json "$W/payload" "$payload")
printf '{"schemaVersion":2,"mediaType":"%s","config":%s,"layers":[%s,"annotations":{"dev.cosignproject.cosign/signature":"%s"}}]}' "$OCI" \
  "$(descriptor application/vnd.oci.image.config.v1+json "$W/sig-config" "$sig_config")" \
  "${layer_desc%\}}" "$signature" >"$W/sig-manifest"
put_manifest "$W/sig-manifest" team/app "${digest/:/-}.sig"

mkdir -p "$W/lasti"
cat >"$W/lasti/lasti.toml" <<EOF
listen = "127.0.0.1:$PORT"
admin_listen = "127.0.0.1:$((PORT + 1))"
data_dir = "$W/lasti/data"
[log]
filter = "info"
[[upstream]]
name = "docker.io"
url = "http://127.0.0.1:$REGISTRY"
[[upstream.signatures]]
repositories = ["team/*"]
keys = ["$W/cosign.pub"]
EOF
timeout 3600 "$LASTI_BIN" --config "$W/lasti/lasti.toml" >"$W/lasti/log" 2>&1 &
PIDS+=($!)
wait_port "$PORT"
LPID=$(pgrep -P "$!")
declare -A REPO=([plain]=plain/app [signed]=team/app)

# The cold pull by tag: what each asks the upstream.
for case in plain signed; do
  repo=${REPO[$case]}
  before_m=$(grep -c "GET /v2/$repo/manifests/" "$W/registry.log" || true)
  before_b=$(grep -c "GET /v2/$repo/blobs/" "$W/registry.log" || true)
  curl -fsS -o /dev/null -H "accept: $OCI" "http://127.0.0.1:$PORT/v2/$repo/manifests/v1"
  sleep 0.5
  after_m=$(grep -c "GET /v2/$repo/manifests/" "$W/registry.log" || true)
  after_b=$(grep -c "GET /v2/$repo/blobs/" "$W/registry.log" || true)
  echo "cold $case manifest_gets $((after_m - before_m)) blob_gets $((after_b - before_b))"
done

measure() { # path
  local before after out
  before=$(cpu_us "$LPID")
  out=$(h2load --h1 -c "$CONNS" -m 1 -n "$REQUESTS" -H "accept: $OCI" "http://127.0.0.1:$PORT$1" 2>&1)
  after=$(cpu_us "$LPID")
  grep -q " 0 failed, 0 errored" <<<"$out" && grep -q "status codes: $REQUESTS 2xx" <<<"$out" ||
    { echo "h2load reported errors for $1" >&2; echo "$out" >&2; exit 1; }
  echo "$(awk '/^finished in/ {gsub(",", "", $4); print $4}' <<<"$out") $(((after - before) / REQUESTS))"
}
declare -A RPS
for by in tag digest; do
  ref=v1
  [ "$by" = digest ] && ref=$digest
  for case in plain signed; do : >"$W/$by-$case.rps"; : >"$W/$by-$case.cpu"; done
  : >"$W/$by.ratio"
  for rep in $(seq "$REPEAT"); do
    # Each goes first in turn.
    order="plain signed"
    [ $((rep % 2)) = 0 ] && order="signed plain"
    for case in $order; do
      read -r rps cpu < <(measure "/v2/${REPO[$case]}/manifests/$ref")
      echo "$rps" >>"$W/$by-$case.rps"; echo "$cpu" >>"$W/$by-$case.cpu"
      RPS[$case]=$rps
    done
    echo "${RPS[signed]} / ${RPS[plain]}" | bc -l >>"$W/$by.ratio"
  done
  for case in plain signed; do
    ratio=-
    [ "$case" = signed ] && ratio=$(median <"$W/$by.ratio" | cut -c1-5)
    echo "hit $by $case rps $(median <"$W/$by-$case.rps") cpu_us_per_req $(median <"$W/$by-$case.cpu") x_plain $ratio (runs: $(tr '\n' ' ' <"$W/$by-$case.rps"))"
  done
done
