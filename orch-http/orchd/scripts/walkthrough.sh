#!/usr/bin/env bash
# The README's curl walkthrough, from login to a finished task, against a running orchd.
# Usage: ORCH_PASSWORD=<admin password> orch-http/orchd/scripts/walkthrough.sh [http://127.0.0.1:8000]
set -euo pipefail
B=${1:-http://127.0.0.1:8000}
json() { python3 -c "import sys, json; print(json.load(sys.stdin)$1)"; }

# 1. Log in: a short-lived JWT.
TOKEN=$(curl -s -X POST "$B/auth/login" -H 'Content-Type: application/json' \
  -d "{\"username\":\"admin\",\"password\":\"$ORCH_PASSWORD\"}" | json '["access_token"]')
AUTH="Authorization: Bearer $TOKEN"

# 2. Dispatch to the built-in echo engine and wait for the result (ORCH-Next's -Stay).
curl -s -X POST "$B/dispatch" -H "$AUTH" -H 'Content-Type: application/json' \
  -d '{"coreId":"echo","stay":true,"payload":{"hello":"world"}}'
echo

# 3. Dispatch without waiting (sleep engine, 500 ms), then follow it.
ID=$(curl -s -X POST "$B/dispatch" -H "$AUTH" -H 'Content-Type: application/json' \
  -H 'Idempotency-Key: walkthrough-1' \
  -d '{"coreId":"sleep","payload":{"ms":500}}' | json '["task_id"]')
until [ "$(curl -s "$B/jobs/$ID" -H "$AUTH" | json '["status"]')" = succeeded ]; do sleep 0.2; done
curl -s "$B/jobs/$ID" -H "$AUTH" | json '["result"]'

# 4. Its events, and the health and metrics endpoints.
curl -s "$B/jobs/$ID/events" -H "$AUTH" | json '["events"][-1]["kind"]'
curl -s "$B/health" | json '["status"]'
curl -s "$B/metrics" | grep '^orch_tasks_total'
