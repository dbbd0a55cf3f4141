#!/usr/bin/env bash
# Cached blobs, lasti against nginx serving the same files, with h2load, in
# one run. By default small blobs over TLS and HTTP/2 (image configs, small
# layers and signatures are the most frequent hits); PROTO=h1 measures
# plain HTTP/1.1 instead, where both send the files with sendfile(2).
#
# Usage: benches/hits.sh   (env: REPEAT=3 CONNS=16 REQUESTS=20000 SIZES="183 4096 65536"
#        PROTO=h2 (TLS + HTTP/2) or h1 (plain HTTP/1.1, e.g. SIZES="1048576 67108864" REQUESTS=2000);
#        LASTI_BIN=path: measure that binary instead of building this tree's;
#        LASTI_BIN_B=path: a second binary measured beside it, for an A/B of two builds)
# Output: one line per size and server, medians of REPEAT:
#   <size> <server> rps <n> cpu_us_per_req <n> x_nginx <median of per-repetition ratios>
# Needs: nginx, nghttp2-client (h2load), openssl, curl (Debian), a release build.
# lasti runs with its info-level access log on, as in production.
# Everything listens on 127.0.0.1; the servers started here are stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
REPEAT=${REPEAT:-3}
CONNS=${CONNS:-16}
REQUESTS=${REQUESTS:-20000}
PROTO=${PROTO:-h2}
case $PROTO in
  h2) SCHEME=https H2LOAD_PROTO=() ;;
  h1) SCHEME=http H2LOAD_PROTO=(--h1) ;;
  *) echo "PROTO is h2 or h1, not $PROTO" >&2; exit 2 ;;
esac
SIZES=${SIZES:-"183 4096 65536"}
NGINX_TLS=${NGINX_TLS:-15120}
NGINX_PLAIN=${NGINX_PLAIN:-15121}
LASTI_TLS=${LASTI_TLS:-15122}

LASTI_BIN=${LASTI_BIN:-}
LASTI_BIN_B=${LASTI_BIN_B:-}
LASTI_B_TLS=${LASTI_B_TLS:-15123}
if [ -z "$LASTI_BIN" ]; then
  cargo build --release --bin lasti >&2
  LASTI_BIN=target/release/lasti
fi
WORK=$(mktemp -d /tmp/lasti-hits.XXXXXX)
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

mkdir -p "$WORK/root/v2/bench/small/blobs"
declare -A DIGEST
for size in $SIZES; do
  head -c "$size" /dev/urandom >"$WORK/blob"
  digest="sha256:$(sha256sum "$WORK/blob" | cut -d' ' -f1)"
  mv "$WORK/blob" "$WORK/root/v2/bench/small/blobs/$digest"
  DIGEST[$size]=$digest
done

# nginx's workers run as another user.
chmod 755 "$WORK"
chmod -R a+rX "$WORK/root"

cat >"$WORK/nginx.conf" <<EOF
worker_processes auto;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err warn;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  default_type application/octet-stream;
  # h2load does not reconnect: no per-connection request limit.
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
  }
}
EOF
nginx -c "$WORK/nginx.conf"

# Starts a lasti binary on a port with a data directory of its own; sets
# SPIDS[name] to its PID (the wrapper goes to PIDS, for the cleanup).
start_lasti() { # name bin port
  local name=$1 bin=$2 port=$3
  cat >"$WORK/$name.toml" <<EOF
listen = "127.0.0.1:$port"
admin_listen = "127.0.0.1:0"
data_dir = "$WORK/$name-data"
[log]
filter = "info"
[[upstream]]
name = "docker.io"
url = "http://127.0.0.1:$NGINX_PLAIN"
EOF
  [ "$PROTO" = h1 ] || printf '[tls]\ncert_file = "%s"\nkey_file = "%s"\n' \
    "$WORK/cert.pem" "$WORK/key.pem" >>"$WORK/$name.toml"
  timeout 3600 "$bin" --config "$WORK/$name.toml" >"$WORK/$name.log" 2>&1 &
  local wrapper=$!
  PIDS+=("$wrapper")
  for _ in $(seq 100); do curl -kfsS -o /dev/null "$SCHEME://127.0.0.1:$port/v2/" && break; sleep 0.1; done
  SPIDS[$name]=$(pgrep -P "$wrapper")
}
SERVERS=(nginx lasti)
declare -A PORT=([nginx]=$NGINX_TLS [lasti]=$LASTI_TLS)
[ "$PROTO" = h1 ] && PORT[nginx]=$NGINX_PLAIN
declare -A SPIDS
SPIDS[nginx]=$(pgrep -P "$(cat "$WORK/nginx.pid")" | tr '\n' ' ')
start_lasti lasti "$LASTI_BIN" "$LASTI_TLS"
if [ -n "$LASTI_BIN_B" ]; then
  SERVERS+=(lasti_b)
  PORT[lasti_b]=$LASTI_B_TLS
  start_lasti lasti_b "$LASTI_BIN_B" "$LASTI_B_TLS"
fi

# h2load's requests/s for a URL, and the CPU the servers used per request.
measure() { # url pids...
  local url=$1; shift
  local before after out rps
  before=$(cpu_us "$@")
  out=$(h2load "${H2LOAD_PROTO[@]}" -c "$CONNS" -m 1 -n "$REQUESTS" "$url" 2>&1)
  after=$(cpu_us "$@")
  grep -q " 0 failed, 0 errored" <<<"$out" || { echo "h2load reported errors for $url" >&2; echo "$out" >&2; exit 1; }
  rps=$(awk '/^finished in/ {gsub(",", "", $4); print $4}' <<<"$out")
  echo "$rps $(( (after - before) / REQUESTS ))"
}

# Each repetition measures every server in turn, so a slow moment of the
# host falls on all of them; the ratios are the medians of each
# repetition's own ratio to nginx.
for size in $SIZES; do
  path="/v2/bench/small/blobs/${DIGEST[$size]}"
  for server in "${SERVERS[@]}"; do
    : >"$WORK/$server.rps"; : >"$WORK/$server.cpu"; : >"$WORK/$server.ratio"
    # The miss, then a hit that reads a blob written around the page cache
    # back into it, as nginx's file is after it was written.
    [ "$server" = nginx ] || for _ in miss hit; do
      curl -kfsS -o /dev/null "$SCHEME://127.0.0.1:${PORT[$server]}$path"
    done
  done
  for _ in $(seq "$REPEAT"); do
    for server in "${SERVERS[@]}"; do
      # shellcheck disable=SC2086 # a list of PIDs
      read -r rps cpu < <(measure "$SCHEME://127.0.0.1:${PORT[$server]}$path" ${SPIDS[$server]})
      echo "$rps" >>"$WORK/$server.rps"; echo "$cpu" >>"$WORK/$server.cpu"
      [ "$server" = nginx ] && nginx_rps=$rps
      echo "$rps / $nginx_rps" | bc -l >>"$WORK/$server.ratio"
    done
  done
  for server in "${SERVERS[@]}"; do
    echo "$size $server rps $(median <"$WORK/$server.rps") cpu_us_per_req $(median <"$WORK/$server.cpu") x_nginx $(median <"$WORK/$server.ratio" | cut -c1-5) (runs: $(tr '\n' ' ' <"$WORK/$server.rps"))"
  done
done
