#!/usr/bin/env bash
# HTTP load figures for BENCHMARKS.md: starts a release orchd (package `orchd`) on a fresh
# SQLite data directory (rate limits off, request logs at warn), then runs wrk and the load
# client `cargo bench --bench http -- ...` (benches/http.rs) against it on loopback.
# Needs `wrk` (Debian package `wrk`). SKIP_BUILD=1 reuses the release builds; PORT and
# SSE_CLIENTS change the port (18080) and the number of SSE clients (10,000).
# Bounded: every step has a fixed duration.
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
ORCH_ADMIN_PASSWORD=bench-password-123 "$BIN/orchd" --data-dir "$WORK/data" --config "$WORK/bench.yaml" \
  serve --listen 127.0.0.1:$PORT > "$WORK/orchd.out" 2> "$WORK/orchd.log" &
PID=$!
trap 'kill -TERM $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
for _ in $(seq 1 100); do curl -sf "$URL/health" >/dev/null && break; sleep 0.1; done
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
