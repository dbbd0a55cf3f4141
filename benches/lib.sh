# Sourced by bench scripts: a work directory and the servers started in it,
# both gone when the script exits (servers ended by PID), and small helpers.

# Makes $W (under /tmp, named after $1) and $PIDS; both are cleaned at exit.
bench_workdir() {
  W=$(mktemp -d "/tmp/$1.XXXXXX")
  PIDS=()
  trap bench_cleanup EXIT
}

bench_cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$W"
}

# Sets LASTI_BIN to the binary to measure: the one the caller named, or
# this tree's release build (built now).
lasti_bin() {
  LASTI_BIN=${LASTI_BIN:-}
  if [ -z "$LASTI_BIN" ]; then
    cargo build --release --bin lasti >&2
    LASTI_BIN=target/release/lasti
  fi
}

# Waits (up to 10 s) until something listens on 127.0.0.1:$1.
wait_port() {
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}

# Starts the distribution registry on 127.0.0.1:$1, storing under
# $W/registry, for at most $2 seconds; its access log (each request, for
# counting upstream GETs) goes to $W/registry.log unless $3 is "quiet".
# Waits until it listens.
start_registry() {
  local access=""
  [ "${3:-}" = quiet ] && access=", accesslog: {disabled: true}"
  mkdir -p "$W/registry"
  cat >"$W/registry.yml" <<EOF
version: 0.1
log: {level: warn$access}
storage: {filesystem: {rootdirectory: $W/registry}}
http: {addr: 127.0.0.1:$1}
EOF
  timeout "$2" /usr/bin/docker-registry serve "$W/registry.yml" >"$W/registry.log" 2>&1 &
  PIDS+=($!)
  wait_port "$1"
}

# CPU seconds (user + system) process $1 has used so far.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f\n", ($14 + $15) / hz}' "/proc/$1/stat"; }

# The median of the numbers on stdin, one per line.
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Uploads the file $3 as a blob of repository $2 to the registry at
# 127.0.0.1:$1 (monolithic upload); prints its digest.
upload_blob() { # port repo file
  local digest location sep
  digest="sha256:$(sha256sum "$3" | cut -d' ' -f1)"
  location=$(curl -fsS -D - -o /dev/null -X POST "http://127.0.0.1:$1/v2/$2/blobs/uploads/" |
    awk -F': ' 'tolower($1) == "location" {print $2}' | tr -d '\r')
  case "$location" in http*) ;; *) location="http://127.0.0.1:$1$location" ;; esac
  sep='?'; case "$location" in *\?*) sep='&' ;; esac
  curl -fsS -o /dev/null -X PUT -H 'Content-Type: application/octet-stream' \
    -T "$3" "$location${sep}digest=$digest"
  echo "$digest"
}

# Uploads $2 MiB of random bytes as a blob of bench/blob to the registry at
# 127.0.0.1:$1; prints its digest.
push_blob() {
  head -c "$(($2 * 1024 * 1024))" /dev/urandom >"$W/blob"
  upload_blob "$1" bench/blob "$W/blob"
  rm "$W/blob"
}

# Starts one Garage node (GARAGE, from scripts/garage) with its S3 API on
# port $1 and RPC on $1 + 1, for at most $2 seconds, holding $3 (a Garage
# capacity, e.g. 10G); creates the bucket `lasti` and a key for it, and
# sets KEY_ID and SECRET.
start_garage() { # s3_port lifetime_s capacity
  cat >"$W/garage.toml" <<EOF
metadata_dir = "$W/garage/meta"
data_dir = "$W/garage/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$(($1 + 1))"
rpc_public_addr = "127.0.0.1:$(($1 + 1))"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$1"
root_domain = ".s3.garage.localhost"
EOF
  local g=("$GARAGE" -c "$W/garage.toml")
  timeout "$2" "${g[@]}" server >"$W/garage.log" 2>&1 &
  PIDS+=($!)
  wait_port $(($1 + 1)); wait_port "$1"
  "${g[@]}" layout assign -z dc1 -c "$3" "$("${g[@]}" node id -q | cut -d@ -f1)" >/dev/null
  "${g[@]}" layout apply --version 1 >/dev/null
  "${g[@]}" bucket create lasti >/dev/null
  local key
  key=$("${g[@]}" key create bench)
  KEY_ID=$(awk -F': +' '/Key ID/ {print $2}' <<<"$key")
  SECRET=$(awk -F': +' '/Secret key/ {print $2}' <<<"$key")
  "${g[@]}" bucket allow --read --write --owner lasti --key bench >/dev/null
}

# Starts a lasti in "$W/$1" on port $2 (admin on $2 + 1) for at most $3
# seconds, with the registry at BASE + 2 as docker.io and the Garage
# bucket of start_garage (at BASE) behind it; $4, if given, is more lines
# of its [bucket] table. Sets LASTI_WRAPPER (the timeout process) and
# LASTI_PID.
start_lasti_on_bucket() { # name port lifetime_s [bucket_lines]
  mkdir -p "$W/$1"
  printf '%s\n' "$KEY_ID" >"$W/$1/id"; printf '%s\n' "$SECRET" >"$W/$1/secret"
  cat >"$W/$1/lasti.toml" <<EOF
listen = "127.0.0.1:$2"
admin_listen = "127.0.0.1:$(($2 + 1))"
data_dir = "$W/$1/data"
[log]
filter = "warn"
[[upstream]]
name = "docker.io"
url = "http://127.0.0.1:$((BASE + 2))"
[bucket]
endpoint = "http://127.0.0.1:$BASE"
bucket = "lasti"
region = "garage"
access_key_id_file = "$W/$1/id"
secret_access_key_file = "$W/$1/secret"
${4:-}
EOF
  timeout "$3" target/release/lasti --config "$W/$1/lasti.toml" >"$W/$1/log" 2>&1 &
  PIDS+=($!)
  LASTI_WRAPPER=$!
  wait_port "$2"
  LASTI_PID=$(pgrep -P "$LASTI_WRAPPER")
}

# CPU time (µs) used so far by a list of PIDs.
cpu_us() {
  local total=0 pid ticks
  for pid in "$@"; do
    ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    total=$((total + ticks))
  done
  echo $((total * 1000000 / $(getconf CLK_TCK)))
}
