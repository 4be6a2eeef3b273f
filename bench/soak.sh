#!/usr/bin/env bash
# The soak (RELIABILITY.md): real traffic through a real agent while policies
# change, invalid ones are refused, the Redis parser is replaced, the agent is
# killed with SIGKILL and restarted, and followers read fast and slowly. Prints
# the soak table and exits non-zero on a policy gap, an unaccounted flow, an
# accepted invalid policy or anything left after cleanup.
#
#   bench/soak.sh [--duration SECONDS] [--json FILE]   (default 1800 s)
#   bench/soak.sh --profile ci                          (150 s, faster faults)
#
# Uses $LOUPE_BIN when set (CI passes its debug build), else builds release.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
if [[ $(id -u) -ne 0 ]]; then
  echo "bench/soak.sh: needs root (network namespaces, BPF)" >&2
  exit 1
fi
duration=1800 json= args=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --duration) duration=$2; shift 2 ;;
    --json) json=$2; shift 2 ;;
    --profile)
      [[ $2 == ci ]] || { echo "unknown profile $2" >&2; exit 2; }
      duration=150 args+=(--policy-every 8 --plugin-every 20 --kill-every 50); shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
if [[ -z ${LOUPE_BIN:-} ]]; then
  cargo build --release --quiet --bins
  LOUPE_BIN=${CARGO_TARGET_DIR:-$root/target}/release/loupe
fi
work=$(mktemp -d /tmp/loupe-soak.XXXXXX)
cleanup() {
  "$LOUPE_BIN" lab down --lab soak >/dev/null 2>&1 || true
  "$LOUPE_BIN" cleanup --force --pin-path /sys/fs/bpf/loupe-soak >/dev/null 2>&1 || true
  pkill -KILL -f "loupe agent --config $work/agent.yaml" 2>/dev/null || true
}
trap cleanup EXIT
rc=0
python3 bench/soak.py --loupe "$LOUPE_BIN" --work "$work" --duration "$duration" \
  ${json:+--json "$json"} "${args[@]}" || rc=$?
# A passing run's work directory (every flow exported, the agent's log) goes; a
# failing one's stays, to explain the finding with.
if ((rc == 0)); then rm -rf "$work"; else echo "soak: failed; its flows and logs are in $work" >&2; fi
exit "$rc"
