#!/usr/bin/env bash
# L7 visibility benchmark: the same client load between lab pods with an L4-only
# policy (visibility off) and with L7 visibility rules (on). Reports the client's
# own rate, the agent's CPU (also per 10k requests/s), L7 flows per second and
# lost events at each load level. Interleaved rounds, medians.
#
# Usage (root): bench/l7.sh [ROUNDS]     (default 2; ~5 min on 2 vCPU)
# Prints a Markdown table (also written to bench/results/l7.md).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
rounds=${1:-2}
prom=19990
bench_setup l7bench 231

policy() {
  bench_policy api-service frontend 80 "$1"
  echo ---
  bench_policy db-service api-service 6379 "$2"
}
policy "" "" >"$work/off.yaml"
policy ", rules: {http: [{}]}" ", rules: {l7proto: redis, l7: [{}]}" >"$work/on.yaml"

bench_start_agent "prometheus:
  enabled: true
  port: $prom
  address: 127.0.0.1
"

metric() { bench_metric "$prom" "$@"; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$agent_pid/stat"; }
settle() {
  local last=-1 now
  for _ in $(seq 100); do
    now=$(metric loupe_l7_messages_total)
    [[ $now == "$last" ]] && return
    last=$now
    sleep 0.5
  done
}

# One load: prints "client_rate agent_cpu_cores l7_flows_per_s lost".
run_load() {
  local load=$1 t0 c0 m0 l0 rate t1 c1 m1 l1
  settle
  t0=$(date +%s.%N); c0=$(cpu_ticks); m0=$(metric loupe_l7_messages_total); l0=$(metric loupe_l7_lost_total)
  case $load in
    redis-P1)
      rate=$("$loupe" lab exec --lab $lab_name api-service -- redis-benchmark -h db-service -c 20 -n 100000 -t set,get --csv 2>/dev/null |
        python3 -c 'import csv,sys; r=list(csv.reader(sys.stdin))[1:]; print(int(sum(float(x[1]) for x in r)/len(r)))') ;;
    redis-P16)
      rate=$("$loupe" lab exec --lab $lab_name api-service -- redis-benchmark -h db-service -c 20 -P 16 -n 400000 -t set,get --csv 2>/dev/null |
        python3 -c 'import csv,sys; r=list(csv.reader(sys.stdin))[1:]; print(int(sum(float(x[1]) for x in r)/len(r)))') ;;
    http)
      rate=$("$loupe" lab exec --lab $lab_name frontend -- wrk -t2 -c16 -d5s http://api-service/get 2>/dev/null |
        awk '/Requests\/sec/ { printf "%d\n", $2 }') ;;
  esac
  settle
  t1=$(date +%s.%N); c1=$(cpu_ticks); m1=$(metric loupe_l7_messages_total); l1=$(metric loupe_l7_lost_total)
  python3 -c "
t=$t1-$t0; print($rate, '%.3f' % (($c1-$c0)/100/t), int(($m1-$m0)/t), $l1-$l0)"
}

loads=(redis-P1 redis-P16 http)
declare -A results
for ((r = 1; r <= rounds; r++)); do
  for vis in off on; do
    "$loupe" --socket "$sock" policy apply -f "$work/$vis.yaml" >/dev/null
    for load in "${loads[@]}"; do
      m=$(run_load "$load")
      results[$load-$vis]+="$m;"
      echo "round $r $load visibility $vis: $m" >&2
    done
  done
done

python3 - "$rounds" "${loads[@]}" <<EOF | tee "$root/bench/results/l7.md"
import statistics, sys
rounds = int(sys.argv[1]); loads = sys.argv[2:]
raw = {$(for k in "${!results[@]}"; do printf '"%s": "%s",' "$k" "${results[$k]}"; done)}
def med(k, i):
    vals = [float(x.split()[i]) for x in raw[k].strip(";").split(";")]
    return statistics.median(vals)
print("| load | visibility | client req/s | ratio | agent CPU (cores) | agent CPU per 10k req/s | L7 flows/s | lost |")
print("|---|---|---|---|---|---|---|---|")
for load in loads:
    base = med(f"{load}-off", 0)
    for vis in ("off", "on"):
        k = f"{load}-{vis}"
        rate, cpu, flows, lost = (med(k, i) for i in range(4))
        per10k = cpu / (rate / 10000) if rate else 0
        print(f"| {load} | {vis} | {rate:,.0f} | {rate/base:.2f} | {cpu:.2f} | {per10k:.3f} | {flows:,.0f} | {lost:.0f} |")
print(f"\n{rounds} interleaved rounds, medians; 2 vCPU shared by client, server and agent. CPU is the agent's (user+system) over the run plus the time to drain its queue.")
EOF
