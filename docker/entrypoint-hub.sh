#!/bin/sh
# Hub container entrypoint. On first start it creates the tokens the rest of the stack needs, one
# file each in the shared token volume; later starts find the files and create nothing. Then it
# runs the command (default: the hub).
#   $VMS_TOKEN_DIR/agent.token       role agent, name $VMS_AGENT_NAME, bound to $VMS_AGENT_PREFIXES
#   $VMS_TOKEN_DIR/prometheus.token  role duty, name $VMS_PROMETHEUS_NAME (reads /metrics)
# Files are 0644: Prometheus reads its token as another user; only the agent and Prometheus
# containers mount the volume (read-only).
set -eu

config="${VMS_CONFIG:-/etc/vms/hub.yaml}"
token_dir="${VMS_TOKEN_DIR:-/run/vms-tokens}"
agent_name="${VMS_AGENT_NAME:-edge-1}"
agent_prefixes="${VMS_AGENT_PREFIXES:-32058501001320}"
prometheus_name="${VMS_PROMETHEUS_NAME:-prometheus}"

# make_token FILE NAME ROLE [vms token create options...]
make_token() {
  file="$token_dir/$1"
  name="$2"
  role="$3"
  shift 3
  if [ -s "$file" ]; then
    echo "entrypoint-hub: $file exists; keeping it" >&2
    return 0
  fi
  if ! token="$(vms token create --config "$config" --role "$role" --name "$name" "$@")"; then
    echo "entrypoint-hub: cannot create token '$name'. If the hub has one of that name already and" \
      "its file was lost, restore the file, or choose a new name and revoke the old token" \
      "(vms token revoke --config $config $name)." >&2
    exit 1
  fi
  printf '%s' "$token" >"$file.tmp"
  mv "$file.tmp" "$file"
  echo "entrypoint-hub: created $file (token '$name', role $role)" >&2
}

umask 022
mkdir -p "$token_dir"
set -f # the prefix list is split on spaces, never globbed
# shellcheck disable=SC2086
make_token agent.token "$agent_name" agent $(printf ' --prefix %s' $agent_prefixes)
set +f
make_token prometheus.token "$prometheus_name" duty

if [ "$#" -eq 0 ]; then
  set -- vms serve --config "$config" --host 0.0.0.0
fi
exec "$@"
