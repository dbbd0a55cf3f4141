#!/usr/bin/env bash
# Silent sockets against the connection slots, beside a well-behaved
# client: SOCKETS plain TCP connections that send nothing, each opened
# again as soon as lasti closes it, for ATTACK seconds, against
# max_connections = 200; meanwhile curl asks for /v2/ every 0.2 s on a
# new connection.
#
# Usage: benches/silent_sockets.sh   (env: ATTACK=30 SOCKETS=350
#        LASTI_BIN=path: measure that binary instead of building this tree's)
# Output: one line:
#   attack_s <n> sockets <n> reopened <n> good <n> good_failed <n>
#   good_p50_s <n> good_max_s <n>
# Needs: python3, curl, docker-registry (Debian).
# Everything listens on 127.0.0.1; the servers started here are stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
ATTACK=${ATTACK:-30}
SOCKETS=${SOCKETS:-350}
REGISTRY_PORT=${REGISTRY_PORT:-15150}
LASTI_PORT=${LASTI_PORT:-15151}
lasti_bin
bench_workdir lasti-silent-sockets

start_registry "$REGISTRY_PORT" $((ATTACK + 120)) quiet
cat >"$W/lasti.toml" <<EOF
listen = "127.0.0.1:$LASTI_PORT"
admin_listen = "127.0.0.1:0"
data_dir = "$W/data"
[log]
filter = "warn"
[access]
max_connections = 200
[[upstream]]
name = "docker.io"
url = "http://127.0.0.1:$REGISTRY_PORT"
EOF
timeout $((ATTACK + 120)) "$LASTI_BIN" --config "$W/lasti.toml" >"$W/lasti.log" 2>&1 &
PIDS+=($!)
wait_port "$LASTI_PORT"

# The silent sockets: asyncio, one task per socket, reconnecting at once.
cat >"$W/silent.py" <<'EOF'
import asyncio, sys
port, sockets, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
opened = 0
async def one(stop):
    global opened
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.01)
            continue
        opened += 1
        try:
            while not stop.is_set():
                try:
                    if not await asyncio.wait_for(reader.read(64), 0.5):
                        break
                except asyncio.TimeoutError:
                    pass
        except OSError:
            pass
        writer.close()
async def main():
    stop = asyncio.Event()
    tasks = [asyncio.create_task(one(stop)) for _ in range(sockets)]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(opened)
asyncio.run(main())
EOF
python3 "$W/silent.py" "$LASTI_PORT" "$SOCKETS" "$ATTACK" >"$W/opened" &
attacker=$!
PIDS+=("$attacker")
sleep 2

: >"$W/good"
end=$((SECONDS + ATTACK - 4))
while [ $SECONDS -lt $end ]; do
  curl -s -o /dev/null -w '%{http_code} %{time_total}\n' --max-time 40 \
    "http://127.0.0.1:$LASTI_PORT/v2/" >>"$W/good" || true
  sleep 0.2
done
wait "$attacker" || true
good=$(wc -l <"$W/good")
failed=$(awk '$1 != 200' "$W/good" | wc -l)
p50=$(awk '{print $2}' "$W/good" | median)
slowest=$(awk '{print $2}' "$W/good" | sort -n | tail -1)
echo "attack_s $ATTACK sockets $SOCKETS reopened $(($(cat "$W/opened") - SOCKETS)) good $good" \
  "good_failed $failed good_p50_s $p50 good_max_s $slowest"
