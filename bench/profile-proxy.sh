#!/usr/bin/env bash
# Where the agent's time goes on an enforced connection: the L7 policy of
# bench/proxy.sh, load through the proxy, and `perf record` (cpu-clock samples,
# DWARF call graphs) on the agent while it runs. Prints the client's figures and
# the agent's hottest Loupe functions, inclusive.
#
# Usage (root): bench/profile-proxy.sh [redis|http] [PERF_DATA]
#   redis: redis-benchmark -n 150000 -c 10 -t get,set (RB_ARGS overrides -t …)
#   http:  wrk -t2 -c20 -d10s against nginx
# Needs perf (Debian linux-perf). ~1 min.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
load=${1:-redis}
data=${2:-/tmp/loupe-proxy.perf.data}
command -v perf >/dev/null || { echo "perf not found (apt-get install linux-perf)" >&2; exit 1; }
bench_setup pxprof 233
# The L7 policy of bench/proxy.sh.
{
  bench_policy db-service api-service 6379 ', rules: {l7proto: redis, l7: [{command: "GET|SET|CONFIG|PING"}]}'
  echo ---
  bench_policy frontend api-service 80 ', rules: {http: [{method: "GET", path: "/.*"}]}'
} >"$work/l7.yaml"
bench_start_agent
"$loupe" --socket "$sock" policy apply -f "$work/l7.yaml" >/dev/null
sleep 0.5
perf record -q -F 499 --call-graph dwarf,16384 -o "$data" -p "$agent_pid" -- sleep 12 >/dev/null 2>&1 &
perf_pid=$!
case $load in
  redis) "$loupe" lab exec --lab $lab_name api-service -- redis-benchmark -h db-service -p 6379 \
           -n 150000 -c 10 ${RB_ARGS:--t get,set} --csv 2>/dev/null ;;
  http) "$loupe" lab exec --lab $lab_name api-service -- wrk -t2 -c20 -d10s --latency http://frontend/ 2>/dev/null |
          grep -E "Requests/sec|50%|99%" ;;
  *) echo "unknown load: $load (redis|http)" >&2; exit 2 ;;
esac
wait $perf_pid || true
perf script -i "$data" 2>/dev/null | python3 -c '
import collections, re, sys
total, counts, stack = 0, collections.Counter(), set()
for line in sys.stdin:
    if not line.strip():
        total += 1 if stack is not None else 0
        for f in stack or ():
            counts[f] += 1
        stack = set()
    elif line[0] in " \t":
        parts = line.strip().split(" ", 1)
        if len(parts) == 2 and "loupe_runtime" in parts[1]:
            stack.add(re.sub(r"\+0x[0-9a-f]+|\s*\(/.*\)$", "", parts[1])[:120])
print(f"\n{total} samples; Loupe functions by inclusive share:")
for name, n in counts.most_common(25):
    print(f"{100 * n / max(total, 1):5.1f}%  {name}")
'
