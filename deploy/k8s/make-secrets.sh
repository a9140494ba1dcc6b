#!/bin/sh
# Make what deploy/k8s/kustomization.yaml reads from deploy/k8s/secrets/ (never committed):
#   bootstrap-identity.key  the bootstrap node's Ed25519 identity (fednode identity create)
#   bootstrap.env           BOOTSTRAP_PEER_ID=<its peer id>, for the members
#   admin-token             the bearer token of the admin TCP listener
#   admin-tls.crt/.key      a self-signed certificate for that listener (replace with your CA's)
# Existing files are kept; delete one to make it again. Usage: deploy/k8s/make-secrets.sh [DIR]
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/secrets}"
fednode="${FEDNODE:-fednode}"
mkdir -p "$out"
chmod 0700 "$out"

if [ ! -e "$out/bootstrap-identity.key" ]; then
    scratch="$(mktemp -d)"
    "$fednode" identity create --state-dir "$scratch" >/dev/null
    cp "$scratch/identity.key" "$out/bootstrap-identity.key"
    rm -rf "$scratch"
fi
chmod 0600 "$out/bootstrap-identity.key"

scratch="$(mktemp -d)"
cp "$out/bootstrap-identity.key" "$scratch/identity.key"
chmod 0600 "$scratch/identity.key"
peer_id="$("$fednode" identity show --state-dir "$scratch" --format json | sed -n 's/.*"peer_id": "\([^"]*\)".*/\1/p')"
rm -rf "$scratch"
[ -n "$peer_id" ] || { echo "make-secrets: could not read the bootstrap peer id" >&2; exit 1; }
printf 'BOOTSTRAP_PEER_ID=%s\n' "$peer_id" > "$out/bootstrap.env"

if [ ! -e "$out/admin-token" ]; then
    umask 077
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$out/admin-token"
fi

if [ ! -e "$out/admin-tls.key" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
        -subj "/CN=fednode-admin" \
        -addext "subjectAltName=DNS:fednode-bootstrap,DNS:*.fednode-member,DNS:localhost" \
        -keyout "$out/admin-tls.key" -out "$out/admin-tls.crt" 2>/dev/null
fi
echo "secrets in $out; bootstrap peer id $peer_id"
