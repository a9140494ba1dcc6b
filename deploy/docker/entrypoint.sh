#!/bin/sh
# fednode container entrypoint: prepare the identity and the bootstrap address, then run fednode.
#
#   IDENTITY_SOURCE=/path/key   install this PEM key as the node's identity when the state volume
#                               has none (a mounted Secret is root-owned or group-readable; fednode
#                               wants 0600, like ssh)
#   PEER_ID_FILE=/shared/x      write this node's peer id there (compose: members read the
#                               bootstrap node's from a shared volume)
#   BOOTSTRAP_HOST=name         dial this host's fednode as bootstrap peer: its address is resolved
#   BOOTSTRAP_PORT=4001         here and combined with its peer id, given as BOOTSTRAP_PEER_ID or
#   BOOTSTRAP_PEER_ID=12D3...   read from BOOTSTRAP_PEER_ID_FILE (waited for, BOOTSTRAP_WAIT s)
#   BOOTSTRAP_PEER_ID_FILE=...
# Anything else is fednode's own configuration: FEDNODE_<SECTION>_<KEY> variables and arguments.
set -eu

state_dir="${FEDNODE_NODE_STATE_DIR:-/var/lib/fednode}"

say() { printf 'fednode-entrypoint: %s\n' "$*" >&2; }

if [ -n "${IDENTITY_SOURCE:-}" ] && [ ! -e "$state_dir/identity.key" ]; then
    install -m 0600 "$IDENTITY_SOURCE" "$state_dir/identity.key"
    say "installed the identity from $IDENTITY_SOURCE"
fi

if [ -n "${PEER_ID_FILE:-}" ]; then
    [ -e "$state_dir/identity.key" ] || fednode identity create --state-dir "$state_dir" >/dev/null
    fednode identity show --state-dir "$state_dir" --format json \
        | python -c 'import json, sys; print(json.load(sys.stdin)["peer_id"])' > "$PEER_ID_FILE.tmp"
    mv "$PEER_ID_FILE.tmp" "$PEER_ID_FILE"
    say "peer id $(cat "$PEER_ID_FILE") written to $PEER_ID_FILE"
fi

if [ -n "${BOOTSTRAP_HOST:-}" ]; then
    peer_id="${BOOTSTRAP_PEER_ID:-}"
    waited=0
    while [ -z "$peer_id" ]; do
        if [ -n "${BOOTSTRAP_PEER_ID_FILE:-}" ] && [ -s "$BOOTSTRAP_PEER_ID_FILE" ]; then
            peer_id="$(cat "$BOOTSTRAP_PEER_ID_FILE")"
        elif [ "$waited" -ge "${BOOTSTRAP_WAIT:-300}" ] || [ -z "${BOOTSTRAP_PEER_ID_FILE:-}" ]; then
            say "no bootstrap peer id: set BOOTSTRAP_PEER_ID, or BOOTSTRAP_PEER_ID_FILE to a file the bootstrap node writes"
            exit 3
        else
            sleep 1
            waited=$((waited + 1))
        fi
    done
    address=""
    while [ -z "$address" ]; do
        address="$(getent ahostsv4 "$BOOTSTRAP_HOST" | awk 'NR == 1 { print $1 }')" || true
        if [ -z "$address" ]; then
            if [ "$waited" -ge "${BOOTSTRAP_WAIT:-300}" ]; then
                say "cannot resolve BOOTSTRAP_HOST=$BOOTSTRAP_HOST"
                exit 7
            fi
            sleep 1
            waited=$((waited + 1))
        fi
    done
    # The quotes are meant literally: the value is a TOML array of strings.
    # shellcheck disable=SC2089,SC2090
    FEDNODE_MESH_BOOTSTRAP="[\"/ip4/$address/tcp/${BOOTSTRAP_PORT:-4001}/p2p/$peer_id\"]"
    # shellcheck disable=SC2090
    export FEDNODE_MESH_BOOTSTRAP
    say "bootstrap peer /ip4/$address/tcp/${BOOTSTRAP_PORT:-4001}/p2p/$peer_id"
fi

exec fednode "$@"
