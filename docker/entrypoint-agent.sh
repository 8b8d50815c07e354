#!/bin/sh
# Edge-agent container entrypoint. The agent config carries its token inline, and the token is made
# by the hub on first start (docker/entrypoint-hub.sh), so this waits for the token file, writes a
# private copy of the config given with --config with the token put in, and runs the command with
# that copy. The token is also exported as VMS_AGENT_TOKEN for `edge-agent run --hub ...`.
set -eu

token_file="${VMS_AGENT_TOKEN_FILE:-/run/vms-tokens/agent.token}"
runtime_config="${VMS_AGENT_RUNTIME_CONFIG:-/tmp/edge-agent.yaml}"
wait_s="${VMS_TOKEN_WAIT_S:-120}"

waited=0
while [ ! -s "$token_file" ]; do
  if [ "$waited" -ge "$wait_s" ]; then
    echo "entrypoint-agent: no token in $token_file after ${wait_s}s (does the hub run?)" >&2
    exit 1
  fi
  sleep 1
  waited=$((waited + 1))
done
token="$(cat "$token_file")"
case "$token" in
  *[!A-Za-z0-9_-]*)
    echo "entrypoint-agent: $token_file does not hold a hub token" >&2
    exit 1
    ;;
esac
export VMS_AGENT_TOKEN="$token"

# Rebuild the arguments with the config path (--config PATH or --config=PATH) swapped for the copy.
umask 077
config=""
swap=0
for arg in "$@"; do
  shift
  if [ "$swap" -eq 1 ]; then
    config="$arg"
    arg="$runtime_config"
    swap=0
  else
    case "$arg" in
      --config) swap=1 ;;
      --config=*)
        config="${arg#--config=}"
        arg="--config=$runtime_config"
        ;;
    esac
  fi
  set -- "$@" "$arg"
done
if [ -n "$config" ]; then
  {
    grep -v '^token:' "$config"
    printf 'token: "%s"\n' "$token"
  } >"$runtime_config.tmp"
  mv "$runtime_config.tmp" "$runtime_config"
fi
exec "$@"
