#!/usr/bin/env bash
# L7 enforcement benchmark: an enforced connection (the datapath steers it to the
# agent's transparent proxy, the plugin parses every request, the L7 policy
# decides) against the direct path and against HAProxy in TCP mode on the same
# lab path (HAProxy on the host, between the client's and the server's veths).
# redis-benchmark (api-service -> db-service) and wrk (api-service -> frontend's
# nginx). Interleaved rounds, medians.
#
# Usage (root): bench/proxy.sh [ROUNDS]     (default 3; ~4 min on 2 vCPU)
# Prints a Markdown table (also written to bench/results/proxy.md).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
rounds=${1:-3}
host_ip=10.232.0.1
bench_setup pxbench 232

policy() {
  bench_policy db-service api-service 6379 "$1"
  echo ---
  bench_policy frontend api-service 80 "$2"
}
policy "" "" >"$work/l4.yaml"
policy ', rules: {l7proto: redis, l7: [{command: "GET|SET|CONFIG|PING"}]}' \
  ', rules: {http: [{method: "GET", path: "/.*"}]}' >"$work/l7.yaml"

cat >"$work/haproxy.cfg" <<EOF
global
  maxconn 4096
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
listen redis
  bind $host_ip:16379
  server db 10.232.0.30:6379
listen web
  bind $host_ip:18080
  server web 10.232.0.10:80
EOF

bench_start_agent
haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 &
haproxy_pid=$!
bench_on_exit "kill $haproxy_pid"
sleep 0.5

# "redis_rps redis_p50_us redis_p99_us wrk_rps wrk_p50_us wrk_p99_us"
measure() {
  local rhost=$1 rport=$2 whost=$3
  local redis wrk
  redis=$("$loupe" lab exec --lab $lab_name api-service -- redis-benchmark -h "$rhost" -p "$rport" -n 50000 -c 10 -t get,set --csv 2>/dev/null |
    python3 -c '
import csv, sys
rows = list(csv.reader(sys.stdin))[1:]
n = len(rows)
print(int(sum(float(r[1]) for r in rows) / n), int(sum(float(r[4]) for r in rows) / n * 1000), int(sum(float(r[6]) for r in rows) / n * 1000))')
  wrk=$("$loupe" lab exec --lab $lab_name api-service -- wrk -t2 -c20 -d5s --latency "http://$whost/" 2>/dev/null |
    python3 -c '
import re, sys
text = sys.stdin.read()
def us(v, unit):
    return float(v) * {"us": 1, "ms": 1000, "s": 1e6}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
p = {m.group(1): us(m.group(2), m.group(3)) for m in re.finditer(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)", text, re.M)}
print(int(rps), int(p["50"]), int(p["99"]))')
  echo "$redis $wrk"
}

configs=(direct loupe haproxy)
declare -A results
for ((r = 1; r <= rounds; r++)); do
  for c in "${configs[@]}"; do
    case $c in
      direct) "$loupe" --socket "$sock" policy apply -f "$work/l4.yaml" >/dev/null; m=$(measure db-service 6379 frontend) ;;
      loupe) "$loupe" --socket "$sock" policy apply -f "$work/l7.yaml" >/dev/null; m=$(measure db-service 6379 frontend) ;;
      haproxy) "$loupe" --socket "$sock" policy apply -f "$work/l4.yaml" >/dev/null; m=$(measure $host_ip 16379 $host_ip:18080) ;;
    esac
    results[$c]+="$m;"
    echo "round $r $c: $m" >&2
  done
done

python3 - "$rounds" <<EOF | tee "$root/bench/results/proxy.md"
import statistics, sys
rounds = int(sys.argv[1])
raw = {$(for c in "${configs[@]}"; do printf '"%s": "%s",' "$c" "${results[$c]}"; done)}
def med(c, i):
    return statistics.median(float(x.split()[i]) for x in raw[c].strip(";").split(";"))
print("| path | redis req/s | ratio | p50 µs | p99 µs | added p50 / p99 µs | wrk req/s | ratio | p50 µs | p99 µs | added p50 / p99 µs |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for c in ("direct", "loupe", "haproxy"):
    r = [med(c, i) for i in range(6)]
    d = [med("direct", i) for i in range(6)]
    added_r = "—" if c == "direct" else f"{r[1]-d[1]:+.0f} / {r[2]-d[2]:+.0f}"
    added_w = "—" if c == "direct" else f"{r[4]-d[4]:+.0f} / {r[5]-d[5]:+.0f}"
    print(f"| {c} | {r[0]:,.0f} | {r[0]/d[0]:.2f} | {r[1]:.0f} | {r[2]:.0f} | {added_r} | {r[3]:,.0f} | {r[3]/d[3]:.2f} | {r[4]:.0f} | {r[5]:.0f} | {added_w} |")
print(f"\n{rounds} interleaved rounds, medians; redis-benchmark -n 50000 -c 10 -t get,set (GET and SET averaged); wrk -t2 -c20 -d5s against nginx. 2 vCPU shared by client, server, agent and HAProxy.")
EOF
