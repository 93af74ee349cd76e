#!/usr/bin/env bash
# HTTP load figures for BENCHMARKS.md: starts a release orchd (package `orchd`) on a fresh
# SQLite data directory (rate limits off, request logs at warn), then runs wrk and the load
# client `cargo bench --bench http -- ...` (benches/http.rs) against it on loopback.
# Needs `wrk` (Debian package `wrk`). SKIP_BUILD=1 reuses the release builds; PORT and
# SSE_CLIENTS change the port (18080) and the number of SSE clients (10,000).
# Then, "under attack", a second orchd with the default limits on and 127.0.0.1 as a trusted
# proxy: 5,000 connections trickling headers (SLOWLORIS), and requests from a million
# distinct forged client addresses (FORGED). ATTACK_ONLY=1 runs only those.
# Bounded: every step has a fixed duration or a fixed amount of work.
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)" || true
if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release -p orchd --bin orchd
  cargo bench --no-run --bench http
fi
BIN=${CARGO_TARGET_DIR:-target}/release
WORK=$(mktemp -d /tmp/orch-bench.XXXXXX)
PORT=${PORT:-18080}
URL=http://127.0.0.1:$PORT
client() { cargo bench --quiet --bench http -- --url "$URL" "$@"; }
cat > "$WORK/bench.yaml" <<YAML
security:
  rate_limit:
    requests_per_minute: 0
    per_ip: {requests_per_minute: 0}
    login_per_ip: {requests_per_minute: 0}
sse:
  max_connections: 20000
  max_per_user: 20000
logging:
  level: warn
backup:
  enabled: false
YAML
cat > "$WORK/attack.yaml" <<YAML
server:
  trusted_proxies: ["127.0.0.1"]
logging:
  level: error
backup:
  enabled: false
YAML
# Limits whose keys live a minute (one request a minute per client): a flood of distinct
# addresses fills the limiters to their bound (100,000 keys each), and, for contrast, to 10 M.
for cap in 100000 10000000; do
cat > "$WORK/attack-$cap.yaml" <<YAML
server:
  trusted_proxies: ["127.0.0.1"]
security:
  rate_limit:
    per_ip: {requests_per_minute: 1, burst_size: 1}
    login_per_ip: {requests_per_minute: 1, burst_size: 1}
    max_tracked_clients: $cap
logging:
  level: error
backup:
  enabled: false
YAML
done
PID=
stop_orchd() {
  if [ -n "$PID" ]; then kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  PID=
}
trap 'stop_orchd; rm -rf "$WORK"' EXIT
# start_orchd CONFIG DATA_DIR: a release orchd on $PORT; sets PID.
start_orchd() {
  ORCH_ADMIN_PASSWORD=bench-password-123 "$BIN/orchd" --data-dir "$2" --config "$1" \
    serve --listen 127.0.0.1:$PORT > "$WORK/orchd.out" 2> "$WORK/orchd.log" &
  PID=$!
  for _ in $(seq 1 100); do curl -sf "$URL/health" >/dev/null && break; sleep 0.1; done
}
if [ -z "${ATTACK_ONLY:-}" ]; then
start_orchd "$WORK/bench.yaml" "$WORK/data"
TOKEN=$(curl -s -X POST "$URL/auth/login" -H 'Content-Type: application/json' \
  -d '{"username":"admin","password":"bench-password-123"}' | sed 's/.*"access_token":"\([^"]*\)".*/\1/')
export TOKEN
cat > "$WORK/dispatch.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"core_id":"bench-external","payload":{"n":1}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
LUA
echo "== GET /health (wrk -t2 -c64 -d10s)"
wrk -t2 -c64 -d10s --latency "$URL/health" | grep -E "Requests/sec|99%|Latency"
echo "== POST /dispatch, SQLite, queue only (wrk -t2 -c64 -d10s)"
wrk -t2 -c64 -d10s --latency -s "$WORK/dispatch.lua" "$URL/dispatch" | grep -E "Requests/sec|99%|Latency|Non-2xx"
echo "== POST /dispatch at a fixed 1000 req/s"
client dispatch-latency --rate 1000 --seconds 10
echo "== webhook signature verification"
client webhook-verify --seconds 3
echo "== ${SSE_CLIENTS:-10000} concurrent SSE clients"
client sse --clients "${SSE_CLIENTS:-10000}" --pid "$PID"
stop_orchd
fi

echo "== under attack: default limits, 127.0.0.1 a trusted proxy, header timeout 10 s"
start_orchd "$WORK/attack.yaml" "$WORK/attack"
echo "== ${SLOWLORIS:-5000} connections trickling headers, GET /health from fresh clients"
client slowloris --connections "${SLOWLORIS:-5000}" --pid "$PID"
echo "== ${FORGED:-1000000} distinct forged client addresses"
client forged-ips --addresses "${FORGED:-1000000}" --pid "$PID"
stop_orchd
for cap in 100000 10000000; do
  echo "== ${FORGED:-1000000} distinct forged client addresses, keys living a minute, at most $cap per limiter"
  start_orchd "$WORK/attack-$cap.yaml" "$WORK/attack-$cap"
  client forged-ips --addresses "${FORGED:-1000000}" --pid "$PID"
  stop_orchd
done
