#!/usr/bin/env bash
# The API against its own document: schemathesis (from PyPI, in a venv of its own) sends
# requests generated from /openapi.json to an orchd whose rate limits are off (so that the
# requests reach the handlers), as admin, first on SQLite, then on a throwaway PostgreSQL
# started here (as an unprivileged user when run as root). It must find no 5xx, no status,
# content type or body the document does not describe, no request the document allows that the
# server refuses (or the reverse), and no hang.
#
# Usage: .ci/schemathesis.sh [path/to/orchd]   (default: $CARGO_TARGET_DIR or target, debug)
# Environment: SCHEMATHESIS_EXAMPLES (per operation, default 30), SCHEMATHESIS_BACKENDS
# ("sqlite postgres"), SCHEMATHESIS_VENV (where the venv lives, default under the target dir),
# SCHEMATHESIS_PYTHON (the Python to make it with), SCHEMATHESIS_ARGS (more options).
set -euo pipefail
cd "$(dirname "$0")/.."

target=${CARGO_TARGET_DIR:-target}
orchd=$(realpath "${1:-$target/debug/orchd}")
examples=${SCHEMATHESIS_EXAMPLES:-30}
backends=${SCHEMATHESIS_BACKENDS:-sqlite postgres}
venv=$(realpath -m "${SCHEMATHESIS_VENV:-$target/schemathesis-venv}")
version=4.32.5

if [ ! -x "$venv/bin/schemathesis" ] || ! "$venv/bin/schemathesis" --version | grep -q "$version"; then
  # The newest Python at hand: 3.11 before 3.11.8 can fail inside Hypothesis ("AST constructor
  # recursion depth mismatch", a CPython bug).
  python=${SCHEMATHESIS_PYTHON:-}
  if [ -z "$python" ]; then
    python=python3
    for candidate in python3.13 python3.12; do
      if "$candidate" -c 'import venv' >/dev/null 2>&1; then python=$candidate; break; fi
    done
  fi
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
fi

work=$(mktemp -d)
# PostgreSQL runs as another user when this script runs as root: it must reach its folder.
chmod 755 "$work"
orchd_pid=
pg_pid_file=
cleanup() {
  [ -n "$orchd_pid" ] && kill -TERM "$orchd_pid" 2>/dev/null && wait "$orchd_pid" 2>/dev/null || true
  if [ -n "$pg_pid_file" ] && [ -f "$pg_pid_file" ]; then
    # Fast shutdown, then wait (up to 60 s) for the postmaster to be gone before the folder is
    # removed: it writes pg_wal until its last moment.
    local pid
    pid=$(head -1 "$pg_pid_file")
    kill -INT "$pid" 2>/dev/null || true
    for _ in $(seq 600); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
  fi
  # A leftover temporary folder is no reason to fail the run.
  rm -rf "$work" 2>/dev/null || true
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# A throwaway PostgreSQL; sets pg_url and pg_pid_file.
pg_url=
start_postgres() {
  local pgbin dir port account=()
  pgbin=$(dirname "$(command -v initdb 2>/dev/null || ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)")
  dir=$work/pg
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then
    local user=postgres
    id "$user" >/dev/null 2>&1 || user=nobody
    chown -R "$user" "$dir"
    account=(runuser -u "$user" --)
  fi
  port=$(free_port)
  "${account[@]}" "$pgbin/initdb" -D "$dir/data" -U orch -A trust -E UTF8 --locale=C --no-sync >"$work/initdb.log" 2>&1
  "${account[@]}" "$pgbin/pg_ctl" start -w -t 60 -D "$dir/data" -l "$dir/postgres.log" \
    -o "-h 127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off" >/dev/null
  pg_pid_file=$dir/data/postmaster.pid
  pg_url="postgres://orch@127.0.0.1:$port/postgres"
}

run_against() {
  local backend=$1 port data url=
  port=$(free_port)
  data=$work/$backend
  mkdir -p "$data"
  # `stay: true` waits at most 2 s here: a dispatch to a core nobody serves would otherwise
  # hold its request for the default 300 s.
  cat >"$data/orchd.yaml" <<'YAML'
server:
  stay_max_wait: 2
security:
  jwt_expiry: 3600
  password_hashing:
    memory_kib: 1024
    iterations: 1
  rate_limit:
    requests_per_minute: 0
    per_ip:
      requests_per_minute: 0
    login_per_ip:
      requests_per_minute: 0
logging:
  level: error
YAML
  if [ "$backend" = postgres ]; then
    start_postgres
    url=$pg_url
  fi
  (
    cd "$data"
    export ORCH_CONFIG=$data/orchd.yaml ORCH_LISTEN=127.0.0.1:$port \
      ORCH_ADMIN_PASSWORD=schemathesis-password JWT_SECRET=schemathesis-jwt-secret-0123456789abcdef \
      WEBHOOK_SECRET=whsec_schemathesis
    if [ -n "$url" ]; then export DATABASE_URL=$url; else unset DATABASE_URL; fi
    exec "$orchd" --data-dir "$data/data" >"$data/out.log" 2>"$data/err.log"
  ) &
  orchd_pid=$!
  for _ in $(seq 1 150); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
    sleep 0.2
  done
  local token
  token=$(curl -sf -X POST "http://127.0.0.1:$port/auth/login" -H 'Content-Type: application/json' \
    -d '{"username":"admin","password":"schemathesis-password"}' \
    | python3 -c 'import sys,json;print(json.load(sys.stdin)["access_token"])')
  # Tasks for the generated requests to find, besides the random ids they make up: queued
  # tasks of a core nobody serves, tasks waiting for an external worker, a finished one.
  local base=http://127.0.0.1:$port ids=() i
  dispatch() {
    curl -sf -X POST "$base/dispatch" -H "Authorization: Bearer $token" \
      -H 'Content-Type: application/json' -d "$1" \
      | python3 -c 'import sys,json;print(json.load(sys.stdin)["task_id"])'
  }
  for i in 1 2 3; do ids+=("$(dispatch '{"coreId":"ci-queue","payload":{"n":'"$i"'}}')"); done
  for i in 1 2 3 4 5 6; do ids+=("$(dispatch '{"coreId":"ci-worker","payload":{"n":'"$i"'}}')"); done
  ids+=("$(dispatch '{"coreId":"echo","stay":true,"payload":{"done":true}}')")
  {
    echo '[dictionaries.tasks]'
    printf 'values = ['; printf '"%s", ' "${ids[@]}"; echo ']'
    echo '[dictionaries.cores]'
    echo 'values = ["echo", "sleep", "ci-queue", "ci-worker"]'
    echo '[parameters]'
    echo '"path.id" = { dictionary = "tasks", probability = 0.5 }'
    echo '"body.core_id" = { dictionary = "cores", probability = 0.5 }'
    # A dispatch may name a task that does not exist in `depends_on`, and a workflow's graph
    # may have a cycle or a step out of range; a bulk action may name a state it does not
    # apply to (retry of queued tasks): rules a JSON Schema cannot state, refused with a 422
    # naming the field. Those operations may answer 422 to a schema-valid body.
    for operation in 'POST /dispatch' 'POST /workflows' 'POST /jobs/bulk'; do
      echo '[[operations]]'
      echo "include-name = \"$operation\""
      echo 'checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]'
    done
  } >"$data/schemathesis.toml"
  echo "schemathesis against orchd on $backend (port $port, $examples examples per operation)"
  local started=$SECONDS status=0
  # `ignored_auth` is left out: /health, /metrics and /openapi.json are public by design and
  # say so (no security requirement), and every other operation's 401 is covered by the
  # role tests. `use_after_free` and `ensure_resource_availability` need links between
  # operations, which the document does not declare. One worker: with two, hypothesis parses
  # lambdas' source from two threads at once and CPython 3.11's parser can fail with "AST
  # constructor recursion depth mismatch" (a runtime error of the tool, not of the API).
  local common=(-H "Authorization: Bearer $token"
    --checks all --exclude-checks ignored_auth,use_after_free,ensure_resource_availability
    --phases examples,coverage,fuzzing --workers 1
    --generation-database none --seed 11)
  # Every operation but the event stream. A lock acquisition may wait up to 30 s by design
  # (`wait`), hence the timeout.
  # Run from the work folder: schemathesis keeps a cache (.schemathesis/) where it runs.
  cd "$data"
  "$venv/bin/schemathesis" --config-file "$data/schemathesis.toml" run "http://127.0.0.1:$port/openapi.json" "${common[@]}" \
    --exclude-path /sse/events --max-examples "$examples" --request-timeout 40 \
    ${SCHEMATHESIS_ARGS:-} || status=$?
  # The event stream never ends on its own: each request is read for 2 s, enough for its
  # status, headers and the first events, and then left.
  "$venv/bin/schemathesis" --config-file "$data/schemathesis.toml" run "http://127.0.0.1:$port/openapi.json" "${common[@]}" \
    --include-path /sse/events --max-examples "$((examples / 4 + 1))" --request-timeout 2 \
    ${SCHEMATHESIS_ARGS:-} || status=$?
  cd - >/dev/null
  echo "schemathesis on $backend: exit $status after $((SECONDS - started)) s"
  if ! kill -0 "$orchd_pid" 2>/dev/null; then
    echo "orchd died during the run:"; cat "$data/err.log"; exit 1
  fi
  kill -TERM "$orchd_pid"
  wait "$orchd_pid" || { echo "orchd did not stop cleanly:"; cat "$data/err.log"; exit 1; }
  orchd_pid=
  if [ -n "$pg_pid_file" ]; then
    kill -INT "$(head -1 "$pg_pid_file")" 2>/dev/null || true
    pg_pid_file=
  fi
  return "$status"
}

for backend in $backends; do
  run_against "$backend"
done
