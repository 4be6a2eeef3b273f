#!/usr/bin/env bash
# Datapath benchmark: throughput and connection rate between two lab pods with no
# program, with Loupe enforcing 1 / 1,000 / 10,000 rules (at the default event
# level, `medium`, and at `none`: a trace event per packet and hook), and with
# iptables rule sets of the same size — interleaved rounds, medians, ratios
# against "none".
#
# Loupe's rows also count the flows the agent stored from the datapath's events
# during the measured load, and the events the datapath could not hand to it
# (lost: ring full), from the agent's own metrics — a rate bought by dropping
# events would show there.
#
# Usage (root): bench/datapath.sh [ROUNDS]     (default 3; ~6 min on 2 vCPU)
# Prints a Markdown table (also written to bench/results/datapath.md).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh" # bench_metric
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
rounds=${1:-3}
loupe=$root/target/release/loupe
work=$(mktemp -d /tmp/loupe-bench.XXXXXX)
lab_name=bench
pin=/sys/fs/bpf/loupe-bench
sock=$work/loupe.sock
prom=19962
agent_pid=
agent_level=

cargo build --release --quiet --bins
sed -e "s/^name: demo$/name: $lab_name/" -e 's/10\.200\.0\./10.230.0./g' \
    -e 's/fd00:10:200::/fd00:10:230::/g' -e "s#{lab}/#$root/lab/#g" \
    lab/demo-app.yaml >"$work/lab.yaml"

cleanup() {
  stop_agent
  iptables -D FORWARD -j LOUPE_BENCH 2>/dev/null || true
  iptables -F LOUPE_BENCH 2>/dev/null || true
  iptables -X LOUPE_BENCH 2>/dev/null || true
  "$loupe" lab down --file "$work/lab.yaml" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

stop_agent() {
  if [[ -n $agent_pid ]]; then
    kill "$agent_pid" 2>/dev/null || true
    wait "$agent_pid" 2>/dev/null || true
    agent_pid=
  fi
  agent_level=
  rm -rf "$pin/links" "$pin"
}

start_agent() {
  agent_level=$1
  cat >"$work/agent.yaml" <<EOF
socketPath: $sock
stateDir: $work/state
bpf:
  pinPath: $pin
  policyMapEntries: 65536
  monitorAggregation: $agent_level
endpoints:
  labNames: [$lab_name]
prometheus:
  enabled: true
  port: $prom
  address: 127.0.0.1
EOF
  "$loupe" agent --config "$work/agent.yaml" >>"$work/agent.log" 2>&1 &
  agent_pid=$!
  for _ in $(seq 100); do
    [[ $("$loupe" --socket "$sock" endpoint list --json 2>/dev/null | wc -l) -ge 4 ]] && return
    sleep 0.1
  done
  echo "agent did not start" >&2; cat "$work/agent.log" >&2; exit 1
}

# A policy on db-service: the client allowed, plus N-1 other rules (/32 sources).
write_policy() {
  local n=$1
  python3 - "$n" >"$work/policy-$n.yaml" <<'EOF'
import sys
n = int(sys.argv[1])
print("""apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bench, namespace: demo-app}
spec:
  endpointSelector: {matchLabels: {app: db-service}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]""")
if n > 1:
    print("  - fromCIDR:")
    for i in range(n - 1):
        print(f"    - 10.99.{i // 250}.{i % 250 + 1}/32")
print("    toPorts: [{ports: [{port: \"5201\", protocol: TCP}, {port: \"6379\", protocol: TCP}]}]" if n > 1 else "")
EOF
}

iptables_rules() {
  local n=$1
  iptables -N LOUPE_BENCH 2>/dev/null || iptables -F LOUPE_BENCH
  iptables -C FORWARD -j LOUPE_BENCH 2>/dev/null || iptables -I FORWARD -j LOUPE_BENCH
  {
    echo "*filter"
    for ((i = 0; i < n; i++)); do
      echo "-A LOUPE_BENCH -s 10.99.$((i / 250)).$((i % 250 + 1))/32 -j DROP"
    done
    echo "-A LOUPE_BENCH -j ACCEPT"
    echo "COMMIT"
  } | iptables-restore --noflush
}

metric() { bench_metric "$prom" "$@"; }

measure() {
  local gbps cps p50 seen0=0 lost0=0 seen=-1 lost=-1
  if [[ -n $agent_pid ]]; then
    seen0=$(metric loupe_flows_seen_total); lost0=$(metric loupe_datapath_lost_total 'buffer="events"')
  fi
  gbps=$("$loupe" lab exec --lab $lab_name frontend -- iperf3 -c db-service -t 4 -J 2>/dev/null |
    python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))')
  # A new connection per request: every request pays the first-packet path.
  cps=$("$loupe" lab exec --lab $lab_name frontend -- redis-benchmark -h db-service -k 0 -c 10 -n 10000 -t ping_inline --csv 2>/dev/null |
    python3 -c 'import csv,sys; r=list(csv.reader(sys.stdin)); print(int(float(r[1][1])))')
  p50=$("$loupe" lab exec --lab $lab_name frontend -- redis-benchmark -h db-service -c 1 -n 20000 -t ping_inline --csv 2>/dev/null |
    python3 -c 'import csv,sys; r=list(csv.reader(sys.stdin)); print(int(float(r[1][4])*1000))')
  if [[ -n $agent_pid ]]; then
    sleep 1 # the agent drains its ring
    seen=$(($(metric loupe_flows_seen_total) - seen0))
    lost=$(($(metric loupe_datapath_lost_total 'buffer="events"') - lost0))
  fi
  echo "$gbps $cps $p50 $seen $lost"
}

"$loupe" lab up --file "$work/lab.yaml" >/dev/null
"$loupe" lab exec --lab $lab_name db-service -- iperf3 -s -D >/dev/null
# A connection per request for minutes: let the client reuse TIME_WAIT ports.
ip netns exec "loupe-$lab_name-frontend" sysctl -qw net.ipv4.tcp_tw_reuse=1 \
  net.ipv4.ip_local_port_range="1024 65535"
sleep 0.5
for n in 1 1000 10000; do write_policy "$n"; done

configs=(none loupe-1 loupe-1000 loupe-10000 loupe-1000-everypacket iptables-1000 iptables-10000)
declare -A results
for ((r = 1; r <= rounds; r++)); do
  for c in "${configs[@]}"; do
    case $c in
      none) stop_agent ;;
      loupe-*)
        level=medium rules=${c#loupe-}
        if [[ $c == *-everypacket ]]; then level=none rules=${rules%-everypacket}; fi
        [[ -n $agent_pid && $agent_level != "$level" ]] && stop_agent
        [[ -z $agent_pid ]] && start_agent "$level"
        "$loupe" --socket "$sock" policy apply -f "$work/policy-$rules.yaml" >/dev/null ;;
      iptables-*) stop_agent; iptables_rules "${c#iptables-}" ;;
    esac
    m=$(measure)
    results[$c]+="$m;"
    echo "round $r $c: $m" >&2
    if [[ $c == iptables-* ]]; then
      iptables -D FORWARD -j LOUPE_BENCH; iptables -F LOUPE_BENCH; iptables -X LOUPE_BENCH
    fi
  done
done
stop_agent

python3 - "$rounds" "${configs[@]}" <<EOF | tee "$root/bench/results/datapath.md"
import statistics, sys
rounds = int(sys.argv[1]); configs = sys.argv[2:]
raw = {$(for c in "${configs[@]}"; do printf '"%s": "%s",' "$c" "${results[$c]}"; done)}
def med(c, i):
    vals = [float(x.split()[i]) for x in raw[c].strip(";").split(";")]
    return statistics.median(vals), min(vals), max(vals)
base = [med("none", i)[0] for i in range(3)]
def total(c, i):
    vals = [int(x.split()[i]) for x in raw[c].strip(";").split(";")]
    return "—" if min(vals) < 0 else f"{sum(vals):,}"
print(f"| config | iperf3 Gbit/s | ratio | conn/s (redis -k 0) | ratio | p50 µs (redis -c 1) | flows stored | events lost |")
print("|---|---|---|---|---|---|---|---|")
for c in configs:
    g, c_, p = med(c, 0), med(c, 1), med(c, 2)
    print(f"| {c} | {g[0]:.2f} [{g[1]:.2f}–{g[2]:.2f}] | {g[0]/base[0]:.2f} | {c_[0]:,.0f} | {c_[0]/base[1]:.2f} | {p[0]:.0f} | {total(c, 3)} | {total(c, 4)} |")
print(f"\n{rounds} interleaved rounds, medians [min–max]; events summed over the rounds' measured loads; 2 vCPU shared by client, server and datapath.")
EOF
