#!/usr/bin/env bash
# What the access checks of `credentials = "client"` cost a hit, in one
# run, with h2load over TLS and HTTP/2 against cached blobs:
#   nginx           the same file from nginx (the reference)
#   today           lasti with the upstream as before (credentials = "lasti")
#   before          LASTI_BIN_B, when given, the same way (an older build)
#   client_public   lasti, credentials = "client", a public repository, no credential
#   client_anon     the same with lasti's anonymous token (what docker sends)
#   client_private  a private repository (the upstream is nginx with
#                   auth_basic), with a user's token and a fresh verdict
#
# Usage: benches/private_hits.sh   (env: REPEAT=3 CONNS=16 REQUESTS=20000 SIZE=4096
#        LASTI_BIN=path: measure that binary instead of building this tree's;
#        LASTI_BIN_B=path: an older build, measured as `before`)
# Output: one line per case, medians of REPEAT:
#   <case> rps <n> cpu_us_per_req <n> x_today <median of per-repetition ratios>
# Needs: nginx, nghttp2-client (h2load), openssl, curl (Debian), a release build.
# Everything listens on 127.0.0.1; the servers started here are stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
REPEAT=${REPEAT:-3}
CONNS=${CONNS:-16}
REQUESTS=${REQUESTS:-20000}
SIZE=${SIZE:-4096}
NGINX_TLS=${NGINX_TLS:-15130}
NGINX_PLAIN=${NGINX_PLAIN:-15131}
TODAY_PORT=${TODAY_PORT:-15132}
CLIENT_PORT=${CLIENT_PORT:-15133}
BEFORE_PORT=${BEFORE_PORT:-15134}
LASTI_BIN_B=${LASTI_BIN_B:-}
lasti_bin

WORK=$(mktemp -d /tmp/lasti-private-hits.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
  -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
  -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null

declare -A DIGEST
for repo in public private; do
  mkdir -p "$WORK/root/v2/bench/$repo/blobs"
  head -c "$SIZE" /dev/urandom >"$WORK/blob"
  digest="sha256:$(sha256sum "$WORK/blob" | cut -d' ' -f1)"
  mv "$WORK/blob" "$WORK/root/v2/bench/$repo/blobs/$digest"
  DIGEST[$repo]=$digest
done
echo "alice:$(openssl passwd -apr1 alice-pw)" >"$WORK/htpasswd"
chmod 755 "$WORK"
chmod -R a+rX "$WORK/root" "$WORK/htpasswd"

cat >"$WORK/nginx.conf" <<EOF
worker_processes auto;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err warn;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  default_type application/octet-stream;
  keepalive_requests 10000000;
  http2_max_requests 10000000;
  server {
    listen 127.0.0.1:$NGINX_TLS ssl http2;
    ssl_certificate $WORK/cert.pem;
    ssl_certificate_key $WORK/key.pem;
    root $WORK/root;
  }
  server {
    listen 127.0.0.1:$NGINX_PLAIN;
    root $WORK/root;
    location = /v2/ { return 200 '{}'; }
    location /v2/bench/private/ {
      auth_basic "bench";
      auth_basic_user_file $WORK/htpasswd;
    }
  }
}
EOF
nginx -c "$WORK/nginx.conf"

declare -A SPIDS
start_lasti() { # name bin port credentials
  local name=$1 bin=$2 port=$3 credentials=$4
  cat >"$WORK/$name.toml" <<EOF
listen = "127.0.0.1:$port"
admin_listen = "127.0.0.1:0"
data_dir = "$WORK/$name-data"
[log]
filter = "info"
[[upstream]]
name = "docker.io"
url = "http://127.0.0.1:$NGINX_PLAIN"
[tls]
cert_file = "$WORK/cert.pem"
key_file = "$WORK/key.pem"
EOF
  [ "$credentials" = client ] && sed -i 's|^url = .*|&\ncredentials = "client"|' "$WORK/$name.toml"
  timeout 3600 "$bin" --config "$WORK/$name.toml" >"$WORK/$name.log" 2>&1 &
  local wrapper=$!
  PIDS+=("$wrapper")
  for _ in $(seq 100); do
    curl -ksS -o /dev/null "https://127.0.0.1:$port/v2/" && break
    sleep 0.1
  done
  SPIDS[$name]=$(pgrep -P "$wrapper")
}
start_lasti today "$LASTI_BIN" "$TODAY_PORT" lasti
start_lasti client "$LASTI_BIN" "$CLIENT_PORT" client
[ -n "$LASTI_BIN_B" ] && start_lasti before "$LASTI_BIN_B" "$BEFORE_PORT" lasti
SPIDS[nginx]=$(pgrep -P "$(cat "$WORK/nginx.pid")" | tr '\n' ' ')

token() { # [user:password]
  local auth=()
  [ $# -gt 0 ] && auth=(-u "$1")
  curl -kfsS "${auth[@]}" "https://127.0.0.1:$CLIENT_PORT/token" |
    sed -E 's/.*"token":"([^"]+)".*/\1/'
}
ANON=$(token)
ALICE=$(token alice:alice-pw)

pub="/v2/bench/public/blobs/${DIGEST[public]}"
priv="/v2/bench/private/blobs/${DIGEST[private]}"
CASES=(nginx today)
[ -n "$LASTI_BIN_B" ] && CASES+=(before)
CASES+=(client_public client_anon client_private)
declare -A URL=(
  [nginx]="https://127.0.0.1:$NGINX_TLS$pub"
  [today]="https://127.0.0.1:$TODAY_PORT$pub"
  [before]="https://127.0.0.1:$BEFORE_PORT$pub"
  [client_public]="https://127.0.0.1:$CLIENT_PORT$pub"
  [client_anon]="https://127.0.0.1:$CLIENT_PORT$pub"
  [client_private]="https://127.0.0.1:$CLIENT_PORT$priv"
)
declare -A HEADER=(
  [nginx]="x-bench: 1" [today]="x-bench: 1" [before]="x-bench: 1" [client_public]="x-bench: 1"
  [client_anon]="authorization: Bearer $ANON"
  [client_private]="authorization: Bearer $ALICE"
)
declare -A PROC=(
  [nginx]=nginx [today]=today [before]=before
  [client_public]=client [client_anon]=client [client_private]=client
)

measure() { # case
  local case=$1 before after out rps
  # shellcheck disable=SC2086 # a list of PIDs
  before=$(cpu_us ${SPIDS[${PROC[$case]}]})
  out=$(h2load -c "$CONNS" -m 1 -n "$REQUESTS" -H "${HEADER[$case]}" "${URL[$case]}" 2>&1)
  # shellcheck disable=SC2086
  after=$(cpu_us ${SPIDS[${PROC[$case]}]})
  grep -q " 0 failed, 0 errored" <<<"$out" && grep -q "status codes: $REQUESTS 2xx" <<<"$out" ||
    { echo "h2load reported errors for $case" >&2; echo "$out" >&2; exit 1; }
  rps=$(awk '/^finished in/ {gsub(",", "", $4); print $4}' <<<"$out")
  echo "$rps $(( (after - before) / REQUESTS ))"
}

# The miss, then a hit, for each case.
for case in "${CASES[@]}"; do
  [ "$case" = nginx ] && continue
  for _ in miss hit; do
    curl -kfsS -o /dev/null -H "${HEADER[$case]}" "${URL[$case]}"
  done
done
for case in "${CASES[@]}"; do : >"$WORK/$case.rps"; : >"$WORK/$case.cpu"; : >"$WORK/$case.ratio"; done
for _ in $(seq "$REPEAT"); do
  for case in "${CASES[@]}"; do
    read -r rps cpu < <(measure "$case")
    echo "$rps" >>"$WORK/$case.rps"; echo "$cpu" >>"$WORK/$case.cpu"
    [ "$case" = nginx ] && continue
    [ "$case" = today ] && today_rps=$rps
    echo "$rps / $today_rps" | bc -l >>"$WORK/$case.ratio"
  done
done
for case in "${CASES[@]}"; do
  ratio=-
  [ "$case" = nginx ] || ratio=$(median <"$WORK/$case.ratio" | cut -c1-5)
  echo "$case rps $(median <"$WORK/$case.rps") cpu_us_per_req $(median <"$WORK/$case.cpu") x_today $ratio (runs: $(tr '\n' ' ' <"$WORK/$case.rps"))"
done
