#!/bin/bash
# Entry point of the medfl image (deploy/Dockerfile): one image, three roles in the
# simulated consortium of deploy/docker-compose.yml.
#
#   init        (as root) keys for the aggregator and every hospital, enrollment of the
#               hospitals, records for each hospital, ownership of the volumes; then exits.
#   aggregator  writes /etc/medfl/aggregator.conf from the environment, runs the service.
#   hospital    writes /etc/medfl/node.conf from the environment, runs medfl-node.
#   anything else is executed as given (e.g. `medfl-aggregator status`).
#
# Configs are generated at every start rather than baked in, so one image serves any number
# of hospitals, and the default config paths make `medfl-aggregator status` / `nodes` work
# unchanged under `docker compose exec`. Keys are made here, in the container, so that no
# image or compose file ever carries one.
#
# Environment (all optional except MEDFL_NODE_ID for a hospital):
#   MEDFL_HOSPITALS            init: the hospitals' node ids, space-separated
#   MEDFL_RECORDS_PER_SITE     init: synthetic records per hospital (default 200)
#   MEDFL_SEED                 init: seed of the synthetic records (default 1)
#   MEDFL_PORT                 aggregator port on the compose network (default 7750)
#   MEDFL_AGGREGATOR_HOST      service name of the aggregator (default aggregator)
#   MEDFL_NODE_ID              hospital: its node id (its service name)
#   MEDFL_HEARTBEAT_MS         heartbeat period of both sides (default 1000)
#   MEDFL_LOG_LEVEL            debug|info|warn|error (default info)
#   MEDFL_AGGREGATOR_CONF_EXTRA, MEDFL_NODE_CONF_EXTRA
#                              lines appended verbatim to the generated config (new
#                              sections such as the round runtime's options)
#   MEDFL_INIT_WAIT_S          how long a daemon waits for init's results (default 300)
#   MEDFL_ROUNDS               aggregator: rounds to run; 0 = connect phase only
#   MEDFL_MIN_NODES            aggregator: hospitals a round needs (default all)
#   MEDFL_HOSPITAL_COUNT       aggregator: hospitals in the consortium
set -euo pipefail

MEDFL_UID=10001
CONF_DIR=/etc/medfl
DONE=.medfl-init-done

log() { echo "medfl-entrypoint[$ROLE]: $*" >&2; }
die() { log "error: $*"; exit 1; }

# Waits for a file written last by init. docker compose starts the daemons only after init
# completed (depends_on: service_completed_successfully); podman-compose 1.0 does not wait,
# so the daemons wait here instead, which is harmless where compose already did.
wait_for() {
  local path=$1 limit=${MEDFL_INIT_WAIT_S:-300} waited=0
  until [ -e "$path" ]; do
    [ $waited -eq 0 ] && log "waiting for $path (written by the init service)"
    [ $waited -ge $((limit * 5)) ] && die "$path did not appear within ${limit} s: did init fail?"
    sleep 0.2
    waited=$((waited + 1))
  done
}

heartbeat_ms=${MEDFL_HEARTBEAT_MS:-1000}
log_level=${MEDFL_LOG_LEVEL:-info}
port=${MEDFL_PORT:-7750}

role_init() {
  [ "$(id -u)" = 0 ] || die "init must run as root: it hands the volumes to uid $MEDFL_UID"
  local hospitals=${MEDFL_HOSPITALS:?MEDFL_HOSPITALS must list the hospitals}
  local per_site=${MEDFL_RECORDS_PER_SITE:-200} seed=${MEDFL_SEED:-1}
  local agg=/vol/aggregator
  mkdir -p "$agg/keys" "$agg/state" "$agg/pub"

  # Keys are kept across runs (enrolled keys must not change under a running federation);
  # the registry is written by the tools through a config pointing at the volumes.
  if [ ! -e "$agg/keys/curve.key" ]; then
    medfl-aggregator keygen -d "$agg/keys" >/dev/null
    log "aggregator keys created"
  fi
  cp "$agg/keys/curve.pub" "$agg/keys/identity.pub" "$agg/pub/"
  local conf=/tmp/medfl-init-aggregator.conf
  printf 'key_dir = %s\nstate_dir = %s\n' "$agg/keys" "$agg/state" >"$conf"

  # Synthetic records: one `synth` run for all sites, so that the sites differ as the
  # generator intends (own seed and label distribution per site).
  local n=0 synth_dir="" h
  for h in $hospitals; do n=$((n + 1)); done
  if medfl-node synth --help >/dev/null 2>&1; then
    synth_dir=/tmp/medfl-synth
    medfl-node synth --sites "$n" --records-per-site "$per_site" --seed "$seed" -o "$synth_dir"
  else
    log "medfl-node synth is not available in this build: hospitals get an empty records file"
  fi
  local sites=() k
  if [ -n "$synth_dir" ]; then
    for ((k = 0; k <= n; k++)); do [ -d "$synth_dir/site-$k" ] && sites+=("$synth_dir/site-$k"); done
    [ ${#sites[@]} -ge "$n" ] || die "medfl-node synth wrote ${#sites[@]} site folders, want $n"
  fi

  local i=0
  for h in $hospitals; do
    local v=/vol/$h
    [ -d "$v" ] || die "no volumes mounted for $h under $v"
    mkdir -p "$v/keys" "$v/state" "$v/data"
    if [ ! -e "$v/keys/curve.key" ]; then
      medfl-node keygen -d "$v/keys" >/dev/null
      log "$h: keys created"
    fi
    # Same key again is accepted (idempotent re-runs); the identity is pinned from the file.
    medfl-aggregator enroll "$h" "$v/keys/curve.pub" --identity "$(cat "$v/keys/identity.pub")" \
      -c "$conf" >/dev/null
    log "$h: enrolled"
    # Records already there (a bind mount of real records, or an earlier run) are kept.
    if [ -e "$v/data/train.jsonl" ]; then
      log "$h: keeping the records in its data volume"
    elif [ ${#sites[@]} -gt 0 ]; then
      cp "${sites[$i]}"/*.jsonl "$v/data/"
      chmod 0644 "$v/data/"*.jsonl
      log "$h: synthetic records from $(basename "${sites[$i]}")"
    else
      : >"$v/data/train.jsonl"
      chmod 0644 "$v/data/train.jsonl"
    fi
    chown -R "$MEDFL_UID:$MEDFL_UID" "$v/keys" "$v/state"
    chmod 0700 "$v/keys" "$v/state"
    i=$((i + 1))
  done
  chown -R "$MEDFL_UID:$MEDFL_UID" "$agg/keys" "$agg/state"
  chmod 0700 "$agg/keys" "$agg/state"
  chmod 0755 "$agg/pub"
  chmod 0644 "$agg/pub/"*
  # Markers last: the daemons start on them.
  for h in $hospitals; do
    : >"/vol/$h/keys/$DONE"
    chown "$MEDFL_UID:$MEDFL_UID" "/vol/$h/keys/$DONE"
  done
  : >"$agg/state/$DONE"
  chown "$MEDFL_UID:$MEDFL_UID" "$agg/state/$DONE"
  log "done: aggregator and $n hospital(s) ready"
}

role_aggregator() {
  wait_for "/state/$DONE"
  # MEDFL_ROUNDS rounds with at least MEDFL_MIN_NODES hospitals; MEDFL_ROUNDS = 0 is the
  # connect phase only: no round can start, as it would need more hospitals than exist.
  local rounds=${MEDFL_ROUNDS:-0} hospitals=${MEDFL_HOSPITAL_COUNT:-3} min_nodes
  if [ "$rounds" = 0 ]; then min_nodes=$((hospitals + 1)); else min_nodes=${MEDFL_MIN_NODES:-$hospitals}; fi
  cat >"$CONF_DIR/aggregator.conf" <<EOF
# generated by medfl-entrypoint at container start
name = aggregator
key_dir = /keys
state_dir = /state
[net]
bind = tcp://0.0.0.0:$port
heartbeat_interval_ms = $heartbeat_ms
heartbeat_timeout_ms = $((heartbeat_ms * 5))
[federation]
# the simulation has no model: rounds train the nodes' synthetic least-squares task from a
# zero vector (federation.genesis_zero_dim); MEDFL_AGGREGATOR_CONF_EXTRA may add more keys
genesis_zero_dim = 64
rounds = $rounds
min_nodes = $min_nodes
max_nodes = $((min_nodes > hospitals ? min_nodes : hospitals))
[log]
level = $log_level
${MEDFL_AGGREGATOR_CONF_EXTRA:-}
EOF
  exec medfl-aggregator run -c "$CONF_DIR/aggregator.conf"
}

role_hospital() {
  local id=${MEDFL_NODE_ID:?MEDFL_NODE_ID must name this hospital}
  wait_for "/keys/$DONE"
  wait_for /aggregator/curve.pub
  cat >"$CONF_DIR/node.conf" <<EOF
# generated by medfl-entrypoint at container start
node_id = $id
key_dir = /keys
state_dir = /state
device = cpu
[aggregator]
endpoint = tcp://${MEDFL_AGGREGATOR_HOST:-aggregator}:$port
public_key_file = /aggregator/curve.pub
identity_key = /aggregator/identity.pub
[net]
heartbeat_interval_ms = $heartbeat_ms
heartbeat_misses = 5
[data]
records = /data/train.jsonl
format = jsonl
[round]
trainer = synthetic
[log]
level = $log_level
${MEDFL_NODE_CONF_EXTRA:-}
EOF
  exec medfl-node run -c "$CONF_DIR/node.conf"
}

ROLE=${1:-help}
case "$ROLE" in
  init) role_init ;;
  aggregator) role_aggregator ;;
  hospital) role_hospital ;;
  help | --help)
    echo "usage: medfl-entrypoint init|aggregator|hospital|COMMAND [ARGS...]"
    echo "(see deploy/medfl-entrypoint.sh and docs/simulation.md)"
    ;;
  *) exec "$@" ;;
esac
