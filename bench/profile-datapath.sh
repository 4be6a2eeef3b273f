#!/usr/bin/env bash
# Where the machine's time goes when Loupe enforces L3/L4 at the default event
# level: a connection per request (redis-benchmark -k 0, as in bench/datapath.sh)
# from frontend to db-service under an L4 policy, and `perf record` of the whole
# machine (cpu-clock samples, kernel and user) while it runs. Prints the shares by
# process, the datapath's BPF programs' share, and the agent's hottest symbols.
#
# Usage (root): bench/profile-datapath.sh [PERF_DATA]     (~1 min; needs perf)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
data=${1:-/tmp/loupe-datapath.perf.data}
command -v perf >/dev/null || { echo "perf not found (apt-get install linux-perf)" >&2; exit 1; }
bench_setup dpprof 228
bench_policy db-service frontend 6379 >"$work/l4.yaml"
bench_start_agent
"$loupe" --socket "$sock" policy apply -f "$work/l4.yaml" >/dev/null
ip netns exec "loupe-$lab_name-frontend" sysctl -qw net.ipv4.tcp_tw_reuse=1 \
  net.ipv4.ip_local_port_range="1024 65535"
sleep 0.5
perf record -q -a -g -F 999 -o "$data" -- sleep 10 >/dev/null 2>&1 &
perf_pid=$!
"$loupe" lab exec --lab $lab_name frontend -- redis-benchmark -h db-service -k 0 -c 10 \
  -n 200000 -t ping_inline --csv 2>/dev/null | tail -1 || true
wait $perf_pid || true
echo
echo "Shares by process (self time):"
perf report -i "$data" --no-children --sort comm --stdio 2>/dev/null |
  grep -E '^ +[0-9]' | head -12
echo
echo "The datapath's BPF programs (self time, all processes):"
perf report -i "$data" --no-children --sort sym --stdio 2>/dev/null |
  grep -E 'bpf_prog_[0-9a-f]+_loupe' | head -10
echo
echo "The agent's hottest symbols (self time, share of all samples):"
perf report -i "$data" --no-children --comm loupe --sort sym --stdio 2>/dev/null |
  grep -E '^ +[0-9]' | head -15
