#!/usr/bin/env bash
# An operator's day with calendar-sync, run for real: the transcript the
# README and deploy/README.md quote comes from this script.
#
#   docs/operators-day.sh                 # builds the binary (cargo build), prints the transcript
#   docs/operators-day.sh > docs/operators-day.out
#   CALENDAR_SYNC_BIN=/path/to/calendar-sync docs/operators-day.sh   # skip the build
#
# It starts a throw-away PostgreSQL (wal_level=logical, trust authentication,
# no password anywhere) on a free port in a temporary directory, loads the
# demo's CRM schema (src/demo/crm_schema.sql) and a few rows, runs `migrate`
# and `run` in the background, and then walks the day: status (healthy,
# degraded by a poison row, broken by a dropped slot), the failure queue,
# reconcile after drift injected by hand, `run` refusing a dropped slot and
# `run --resync` recovering, /readyz, /metrics, and the alert rules through
# promtool. Every command's stdout and stderr are printed as they came, with
# its exit code; an unexpected exit code stops the script (exit 1).
# Everything is removed at the end (trap), also on failure or Ctrl-C.
#
# Needs: PostgreSQL's server binaries (initdb, pg_ctl; CALENDAR_SYNC_PG_BINDIR
# or PATH or /usr/lib/postgresql/*/bin), psql, curl, promtool (Debian package
# `prometheus`), cargo unless CALENDAR_SYNC_BIN is set. As root, the cluster
# runs as the `postgres` user (initdb refuses root).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

# --- tools -----------------------------------------------------------------
bindir=${CALENDAR_SYNC_PG_BINDIR:-}
if [[ -z $bindir ]]; then
    if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
        bindir=$(dirname "$(command -v initdb)")
    else
        bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
    fi
fi
[[ -x $bindir/initdb && -x $bindir/pg_ctl ]] || {
    echo "no PostgreSQL server binaries (initdb, pg_ctl); set CALENDAR_SYNC_PG_BINDIR" >&2
    exit 1
}
for tool in psql curl promtool; do
    command -v "$tool" >/dev/null || { echo "$tool is not installed" >&2; exit 1; }
done
if [[ -z ${CALENDAR_SYNC_BIN:-} ]]; then
    cargo build --quiet --bin calendar-sync >&2
    CALENDAR_SYNC_BIN=${CARGO_TARGET_DIR:-$repo/target}/debug/calendar-sync
fi
[[ -x $CALENDAR_SYNC_BIN ]] || { echo "no binary at $CALENDAR_SYNC_BIN" >&2; exit 1; }

# --- teardown --------------------------------------------------------------
tmp=$(mktemp -d /tmp/operators-day.XXXXXX)
run_pid=
as_pg=()
cleanup() {
    local rc=$?
    if [[ -n $run_pid ]] && kill -0 "$run_pid" 2>/dev/null; then
        kill -TERM "$run_pid" 2>/dev/null || true
        wait "$run_pid" 2>/dev/null || true
    fi
    if [[ -f $tmp/data/postmaster.pid ]]; then
        "${as_pg[@]}" "$bindir/pg_ctl" -D "$tmp/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$tmp"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- transcript helpers ----------------------------------------------------
# `calendar-sync ...` in this script is the binary under test.
calendar-sync() { "$CALENDAR_SYNC_BIN" "$@"; }
psql() { command psql -X -q -v ON_ERROR_STOP=1 "$DATABASE_URL" "$@"; }

heading() { printf '\n## %s\n\n' "$*"; }
note() { printf '# %s\n' "$*"; }

# show WANT CMD...: prints `$ CMD`, then its stdout and stderr as they come,
# then `(exit N)`; stops the script when N is not WANT.
show() {
    local want=$1 rc=0
    shift
    local shown="$*"
    printf '$ %s\n' "${shown//$CALENDAR_SYNC_BIN/calendar-sync}"
    "$@" 2>&1 || rc=$?
    printf '(exit %s)\n\n' "$rc"
    if [[ $rc != "$want" ]]; then
        echo "operators-day: expected exit $want from: $*" >&2
        exit 1
    fi
}

# sql STATEMENT: a change made by hand, shown as the operator would type it.
sql() {
    printf '$ psql -c "%s"\n' "$1"
    psql -c "$1"
    echo
}

# wait_for WHAT SECONDS CMD...: polls CMD (every 0.2 s) until it succeeds.
wait_for() {
    local what=$1 secs=$2
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            echo "operators-day: gave up after ${secs} s waiting for $what" >&2
            [[ -f $tmp/run.log ]] && tail -n 20 "$tmp/run.log" >&2
            exit 1
        fi
        sleep 0.2
    done
}
count_is() { [[ $(psql -At -c "$1") == "$2" ]]; }
metric_is() { curl -s "http://$CALENDAR_SYNC_HTTP_ADDR/metrics" | grep -qx "$1"; }
ready() { [[ $(curl -s -o /dev/null -w '%{http_code}' "http://$CALENDAR_SYNC_HTTP_ADDR/readyz") == 200 ]]; }

# start_run [ARGS]: `calendar-sync run ARGS` in the background, its log in run.log.
start_run() {
    : >"$tmp/run.log"
    "$CALENDAR_SYNC_BIN" run "$@" >>"$tmp/run.log" 2>&1 &
    run_pid=$!
    wait_for "run to stream (/readyz 200)" 120 ready
}
# stop_run: SIGTERM, and the exit code it ended with.
stop_run() {
    local rc=0
    printf '$ kill -TERM <pid of calendar-sync run>\n'
    kill -TERM "$run_pid"
    wait "$run_pid" || rc=$?
    run_pid=
    printf '(run exited %s)\n\n' "$rc"
    [[ $rc == 0 ]] || { echo "operators-day: run exited $rc on SIGTERM" >&2; exit 1; }
}
# run_log: what `run` printed so far (stderr), indented.
run_log() {
    note "calendar-sync run's log so far:"
    sed 's/^/    /' "$tmp/run.log"
    echo
}
calendar() {
    sql "select title, to_char(event_date, 'YYYY-MM-DD HH24:MI') as starts, event_status, location from calendar_events order by event_date, title"
}

# --- a throw-away PostgreSQL -----------------------------------------------
if [[ $(id -u) == 0 ]]; then
    id postgres >/dev/null 2>&1 || { echo "running as root, but there is no postgres user" >&2; exit 1; }
    chown postgres: "$tmp"
    as_pg=(runuser -u postgres --)
fi
free_port() {
    local p
    for _ in $(seq 50); do
        p=$((20000 + RANDOM % 30000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
    echo "no free port found" >&2
    return 1
}
"${as_pg[@]}" "$bindir/initdb" -D "$tmp/data" -U postgres --auth=trust -E UTF8 --locale=C --no-sync >"$tmp/initdb.log" 2>&1 ||
    { cat "$tmp/initdb.log" >&2; exit 1; }
port=$(free_port)
cat >>"$tmp/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$tmp'
wal_level = logical
max_replication_slots = 10
max_wal_senders = 10
max_slot_wal_keep_size = 1GB
fsync = off
EOF
"${as_pg[@]}" "$bindir/pg_ctl" -D "$tmp/data" -l "$tmp/data/server.log" -w start >/dev/null ||
    { cat "$tmp/data/server.log" >&2; exit 1; }
command psql -X -q -v ON_ERROR_STOP=1 "postgres://postgres@127.0.0.1:$port/postgres" -c "create database crm"

export DATABASE_URL="postgres://postgres@127.0.0.1:$port/crm"
export CALENDAR_SYNC_HTTP_ADDR="127.0.0.1:$(free_port)"
export RUST_LOG=info
unset PGHOST PGPORT PGUSER PGPASSWORD PGDATABASE PGSSLMODE PGSSLROOTCERT TARGET_DATABASE_URL

psql -f src/demo/crm_schema.sql
psql <<'EOF'
insert into users (user_id, email) values ('00000000-0000-4000-8000-000000000001', 'sam@example.com');
insert into customer (customer_id, name) values
  ('00000000-0000-4000-8000-0000000000c1', 'Acme Corp'),
  ('00000000-0000-4000-8000-0000000000c2', 'Globex');
insert into contact (contact_id, customer_id, first_name, last_name, email) values
  ('00000000-0000-4000-8000-0000000000d1', '00000000-0000-4000-8000-0000000000c1', 'Ada', 'Lovelace', 'ada@acme.test');
insert into interaction (interaction_type, subject, interaction_date, customer_id, contact_id, location,
                         duration_minutes, created_by) values
  ('meeting', 'Quarterly review', date_trunc('hour', now()) + interval '2 days 10 hours',
   '00000000-0000-4000-8000-0000000000c1', '00000000-0000-4000-8000-0000000000d1', 'Acme HQ', 60,
   '00000000-0000-4000-8000-000000000001'),
  ('phone', 'Renewal call', date_trunc('hour', now()) + interval '1 day', '00000000-0000-4000-8000-0000000000c2',
   null, null, 15, '00000000-0000-4000-8000-000000000001'),
  ('visit', 'Site visit', date_trunc('hour', now()) + interval '3 days 14 hours',
   '00000000-0000-4000-8000-0000000000c2', null, 'Globex plant', 90, '00000000-0000-4000-8000-000000000001'),
  ('meeting', 'Onboarding workshop', date_trunc('hour', now()) + interval '5 days 9 hours',
   '00000000-0000-4000-8000-0000000000c1', '00000000-0000-4000-8000-0000000000d1', 'Room 4', 120,
   '00000000-0000-4000-8000-000000000001');
EOF

# --- the day ---------------------------------------------------------------
echo "# An operator's day with calendar-sync: generated by docs/operators-day.sh"
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $("$CALENDAR_SYNC_BIN" --version), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "# $(psql -At -c 'select version()')"
echo "# throw-away cluster: wal_level=logical, max_slot_wal_keep_size=1GB, trust auth (no password, no TLS:"
echo "# hence the sslmode warning each command prints; on RDS use verify-full)"
echo "# DATABASE_URL=postgres://postgres@127.0.0.1:<port>/crm CALENDAR_SYNC_HTTP_ADDR=$CALENDAR_SYNC_HTTP_ADDR"

heading "First start: migrate, then run (in the background)"
show 0 calendar-sync migrate
start_run
run_log
calendar

heading "Morning check"
show 0 calendar-sync status
show 0 calendar-sync status --json
show 0 calendar-sync healthcheck
show 0 curl -s "http://$CALENDAR_SYNC_HTTP_ADDR/readyz"

heading "A poison row: the CRM writes a value the calendar refuses"
sql "update interaction set duration_minutes = -15 where subject = 'Renewal call'"
wait_for "the failure to be recorded" 60 count_is "select count(*) from calendar_sync_failures where not resolved" 1
show 1 calendar-sync status
show 0 calendar-sync failures list
# The gauges are refreshed between transactions, within seconds.
wait_for "the pending_failures gauge" 30 metric_is 'calendar_sync_pending_failures 1'
note "what Prometheus sees meanwhile (CalendarSyncFailuresPending fires after 30 min of this):"
metrics='^calendar_sync_(phase|streaming|replication_lag|pending_failures|actions_total\{action="(create|update)")'
printf "\$ curl -s http://%s/metrics | grep -E '%s'\n" "$CALENDAR_SYNC_HTTP_ADDR" "$metrics"
curl -s "http://$CALENDAR_SYNC_HTTP_ADDR/metrics" | grep -E "$metrics"
echo
note "fix the data in the CRM: the edit streams through and closes the failure"
sql "update interaction set duration_minutes = 15 where subject = 'Renewal call'"
wait_for "the failure to be resolved" 60 count_is "select count(*) from calendar_sync_failures where not resolved" 0
show 0 calendar-sync failures list
show 0 calendar-sync status

heading "Drift: the calendar edited by hand (while run streams)"
sql "delete from calendar_events where title = 'Site visit'"
sql "update calendar_events set title = 'Quarterly reveiw', location = null where title = 'Quarterly review'"
sql "insert into calendar_events (title, event_date, event_type, related_table, related_id, synced_from, created_by) values ('Stray', now(), 'meeting', 'interaction', gen_random_uuid(), 'interaction', '00000000-0000-4000-8000-000000000001')"
show 1 calendar-sync reconcile --dry-run
show 1 calendar-sync reconcile --dry-run --json
show 0 calendar-sync reconcile
show 0 calendar-sync reconcile --dry-run
sql "select action, status, count(*) from calendar_sync_log where created_at > now() - interval '1 minute' group by 1, 2 order by 1, 2"
calendar

heading "The slot is dropped while the service is stopped"
stop_run
note "the ECS container healthCheck of a task that is gone:"
show 1 calendar-sync healthcheck
sql "select pg_drop_replication_slot('calendar_sync')"
note "the CRM goes on meanwhile: these changes are in no slot"
sql "insert into interaction (interaction_type, subject, interaction_date, customer_id, created_by) values ('phone', 'Booked while no slot existed', date_trunc('hour', now()) + interval '4 days', '00000000-0000-4000-8000-0000000000c2', '00000000-0000-4000-8000-000000000001')"
sql "delete from interaction where subject = 'Onboarding workshop'"
show 2 calendar-sync status
show 1 calendar-sync run
note "the same with CALENDAR_SYNC_LOG_FORMAT=json (as the task definition sets it; what CloudWatch Logs Insights reads):"
show 1 env CALENDAR_SYNC_LOG_FORMAT=json "$CALENDAR_SYNC_BIN" run

heading "The way back: run --resync (explicit, once)"
start_run --resync
run_log
show 0 calendar-sync status
show 0 calendar-sync reconcile --dry-run
calendar
note "in production: stop this one-off run once it streams, then start the service (plain run)"
stop_run

heading "Alerts"
show 0 promtool check rules deploy/prometheus/alerts.yml deploy/prometheus/postgres-exporter-alerts.yml
show 0 promtool test rules deploy/prometheus/alerts.test.yml

echo "# done: the cluster and its directory are removed"
