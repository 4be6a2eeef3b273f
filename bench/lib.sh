# Shared by the lab benchmarks (source it): a copy of the demo lab under its own
# name and addresses, an agent with its own socket, state and pin path, and
# cleanup of all of it on exit.
#
#   bench_setup NAME OCTET      lab NAME on 10.OCTET.0.0/24 (fd00:10:OCTET::/64);
#                               sets root, loupe, work, lab_name, pin, sock
#   bench_start_agent [YAML]    starts the agent (YAML appended to its config)
#                               and waits for the lab's 4 endpoints; sets agent_pid
#   bench_on_exit CMD           runs CMD on exit, before the agent and lab go
#   bench_policy SERVER CLIENT PORT [RULES]
#                               prints a CiliumNetworkPolicy letting app CLIENT
#                               reach app SERVER on TCP PORT; RULES is appended
#                               to the port rule (", rules: {...}")
#   bench_metric PORT NAME [LABELS]
#                               the sum of metric NAME's samples on
#                               127.0.0.1:PORT/metrics whose labels contain
#                               LABELS (e.g. 'buffer="events"'); 0 when absent

bench_setup() {
  local name=$1 octet=$2
  root=$(cd "$(dirname "${BASH_SOURCE[1]}")/.." && pwd)
  cd "$root"
  loupe=${CARGO_TARGET_DIR:-$root/target}/release/loupe
  work=$(mktemp -d "/tmp/loupe-bench-$name.XXXXXX")
  lab_name=$name
  pin=/sys/fs/bpf/loupe-bench-$name
  sock=$work/loupe.sock
  agent_pid=
  bench_exit_hooks=()
  trap bench_cleanup EXIT
  cargo build --release --quiet --bins
  sed -e "s/^name: demo$/name: $lab_name/" -e "s/10\.200\.0\./10.$octet.0./g" \
      -e "s/fd00:10:200::/fd00:10:$octet::/g" -e "s#{lab}/#$root/lab/#g" \
      lab/demo-app.yaml >"$work/lab.yaml"
  "$loupe" lab up --file "$work/lab.yaml" >/dev/null
}

bench_on_exit() { bench_exit_hooks+=("$1"); }

bench_cleanup() {
  local hook
  for hook in "${bench_exit_hooks[@]}"; do eval "$hook" || true; done
  if [[ -n $agent_pid ]]; then
    kill "$agent_pid" 2>/dev/null || true
    wait "$agent_pid" 2>/dev/null || true
  fi
  rm -rf "$pin/links" "$pin"
  "$loupe" lab down --file "$work/lab.yaml" >/dev/null 2>&1 || true
  rm -rf "$work"
}

bench_start_agent() {
  {
    printf 'socketPath: %s\nstateDir: %s\nbpf:\n  pinPath: %s\nendpoints:\n  labNames: [%s]\n' \
      "$sock" "$work/state" "$pin" "$lab_name"
    printf '%s' "${1:-}"
  } >"$work/agent.yaml"
  "$loupe" agent --config "$work/agent.yaml" >>"$work/agent.log" 2>&1 &
  agent_pid=$!
  for _ in $(seq 100); do
    [[ $("$loupe" --socket "$sock" endpoint list --json 2>/dev/null | wc -l) -ge 4 ]] && return
    sleep 0.1
  done
  echo "agent did not start" >&2
  cat "$work/agent.log" >&2
  exit 1
}

bench_policy() {
  local server=$1 client=$2 port=$3 rules=${4:-}
  cat <<EOF
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bench-$server, namespace: demo-app}
spec:
  endpointSelector: {matchLabels: {app: $server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: $client}}]
    toPorts: [{ports: [{port: "$port", protocol: TCP}]$rules}]
EOF
}

bench_metric() {
  curl -s "http://127.0.0.1:$1/metrics" |
    awk -v m="$2" -v labels="${3:-}" '($1 == m || index($1, m "{") == 1) && index($1, labels) { s += $NF } END { printf "%.0f\n", s }'
}
