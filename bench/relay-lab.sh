#!/usr/bin/env bash
# The relay over real nodes: the 3-node lab (lab/cluster.yaml under its own name
# and ranges), its agents each on their node, Redis traffic crossing nodes
# through node-c's proxy (api-service on node-b -> db-service on node-c, the
# article's Redis L7 policy) and HTTP (frontend on node-a -> api-service). A
# grpcio client follows `loupe relay`; in the same round, the baseline follows
# the three agents directly (one client each). Both count flows and the events
# LostEvents say were lost; the agents' own count of the flows they stored
# (`hubble_flows_processed_total`) is what should arrive. Interleaved rounds,
# medians; the relay's CPU and peak RSS from /proc.
#
# Usage (root): bench/relay-lab.sh [ROUNDS] [REQUESTS]   (default 3, 100000)
# Prints a Markdown table (also written to bench/results/relay-lab.md).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
rounds=${1:-3}
requests=${2:-100000}
loupe=${CARGO_TARGET_DIR:-$root/target}/release/loupe
python=${LOUPE_VENV:-/opt/loupe/venv}/bin/python
work=$(mktemp -d /tmp/loupe-bench-relay-lab.XXXXXX)
lab=rlbench
cargo build --release --quiet --bins

sed -e "s/^name: cluster$/name: $lab/" -e "s/10\.201\./10.241./g" -e "s/10\.202\./10.242./g" \
    -e "s#{lab}/#$root/lab/#g" -e "s#config: cluster-agent.yaml#config: $root/lab/cluster-agent.yaml#" \
    lab/cluster.yaml >"$work/lab.yaml"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  "$loupe" lab down --file "$work/lab.yaml" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
"$loupe" lab up --file "$work/lab.yaml" >/dev/null
# The article's HTTP rule; Redis rules that let redis-benchmark's commands through
# (the proxy parses and decides every one).
cat >"$work/redis.yaml" <<'YAML'
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bench-redis, namespace: demo-app}
spec:
  endpointSelector: {matchLabels: {app: db-service}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: api-service}}]
    toPorts: [{ports: [{port: "6379", protocol: TCP}], rules: {l7proto: redis, l7: [{command: "GET|SET|CONFIG|PING"}]}}]
YAML
"$loupe" policy apply --lab $lab -f examples/policies/api-allow-frontend.yaml \
  -f "$work/redis.yaml" >/dev/null
nodes=(10.242.0.2 10.242.0.3 10.242.0.4)

mkdir -p "$work/stubs"
"$python" -m grpc_tools.protoc -I proto/proto --python_out="$work/stubs" \
  --grpc_python_out="$work/stubs" flow/flow.proto relay/relay.proto observer/observer.proto
for p in flow relay observer; do touch "$work/stubs/$p/__init__.py"; done

"$loupe" relay --peer-service "${nodes[0]}:4244" --disable-client-tls --disable-server-tls \
  --listen-address 127.0.0.1:14245 >"$work/relay.log" 2>&1 &
relay_pid=$!
pids+=("$relay_pid")
for _ in $(seq 100); do
  "$loupe" observe --server 127.0.0.1:14245 --last 1 >/dev/null 2>&1 && break
  sleep 0.1
done

processed() {
  local total=0 n v
  for n in "${nodes[@]}"; do
    v=$(curl -s "http://$n:9965/metrics" | awk '/^hubble_flows_processed_total/ {s += $NF} END {printf "%d", s}')
    total=$((total + v))
  done
  echo "$total"
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# One measurement: "delivered lost seconds processed relay_cpu_ticks"
measure() {
  local mode=$1 targets=() outs=() cpids=() t0 t1 p0 p1 c0 c1 i
  if [[ $mode == relay ]]; then targets=(127.0.0.1:14245); else
    for n in "${nodes[@]}"; do targets+=("$n:4244"); done
  fi
  for i in "${!targets[@]}"; do
    outs+=("$work/$mode-$i.out")
    "$python" bench/relay_follow.py "$work/stubs" "${targets[$i]}" >"${outs[$i]}" 2>&1 &
    cpids+=($!)
  done
  for i in "${!outs[@]}"; do
    for _ in $(seq 100); do grep -q following "${outs[$i]}" && break; sleep 0.1; done
  done
  sleep 1
  p0=$(processed)
  c0=$(cpu_ticks "$relay_pid")
  t0=$(date +%s.%N)
  "$loupe" lab exec --lab $lab api-service -- redis-benchmark -h db-service -n "$requests" \
    -c 10 -t get,set -q >/dev/null 2>&1 &
  local redis=$!
  "$loupe" lab exec --lab $lab frontend -- timeout 60 bash -c \
    'for i in $(seq 200); do curl -s -o /dev/null http://api-service/get; done' >/dev/null 2>&1 || true
  wait $redis
  t1=$(date +%s.%N)
  # The relay's drain timeout is 1 s; the followers get 3.
  sleep 3
  p1=$(processed)
  c1=$(cpu_ticks "$relay_pid")
  for p in "${cpids[@]}"; do kill -TERM "$p"; done
  for p in "${cpids[@]}"; do wait "$p" || true; done
  python3 - "$p0" "$p1" "$t0" "$t1" "$c0" "$c1" "${outs[@]}" <<'PY'
import json, sys
p0, p1, t0, t1, c0, c1 = (float(x) for x in sys.argv[1:7])
flows = lost = 0
for path in sys.argv[7:]:
    line = [l for l in open(path) if l.startswith("{")][-1]
    c = json.loads(line)
    flows += c["flows"]; lost += c["lost"]
print(flows, lost, t1 - t0, int(p1 - p0), int(c1 - c0))
PY
}

echo "round mode delivered lost seconds processed relay_ticks" >"$work/raw"
for r in $(seq "$rounds"); do
  for mode in direct relay; do
    echo "$r $mode $(measure $mode)" | tee -a "$work/raw" >&2
  done
done
rss=$(awk '/VmHWM/ {print $2}' "/proc/$relay_pid/status")
hz=$(getconf CLK_TCK)

mkdir -p bench/results
python3 - "$work/raw" "$rss" "$hz" <<'PY' | tee bench/results/relay-lab.md
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]).read().splitlines()[1:]]
rss_kib, hz = int(sys.argv[2]), int(sys.argv[3])
print("| path | flows/s stored by the agents | delivered | lost (counted) | missing | relay CPU (cores) |")
print("|---|---|---|---|---|---|")
for mode in ("direct", "relay"):
    rs = [r for r in rows if r[1] == mode]
    rate = statistics.median(int(r[5]) / float(r[4]) for r in rs)
    delivered = statistics.median(int(r[2]) / max(int(r[5]), 1) * 100 for r in rs)
    lost = statistics.median(int(r[3]) for r in rs)
    missing = statistics.median(max(int(r[5]) - int(r[2]) - int(r[3]), 0) for r in rs)
    cpu = statistics.median(int(r[6]) / hz / float(r[4]) for r in rs) if mode == "relay" else None
    print(f"| {mode} | {rate:,.0f} | {delivered:.1f} % | {lost:,.0f} | {missing:,.0f} | "
          + (f"{cpu:.2f} |" if cpu is not None else "— |"))
print(f"\nrelay peak RSS: {rss_kib / 1024:.0f} MiB; {len(rows) // 2} interleaved rounds, medians.")
PY
