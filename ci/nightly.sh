#!/usr/bin/env bash
# The nightly job: build the harness and chronik-bench once, gate HEAD against the stored
# baseline commit of each workload (both rebuilt from git and measured side by side on this
# machine), then write the markdown report with figures. Results (one JSON per trial) stay in
# results/ and the report in $OUT: keep both as artifacts.
#
# Environment (all optional):
#   CHRONIK_HEAD       revision to gate (default HEAD)
#   CHRONIK_BASE       baseline revision (default: the commit stored in baselines/<workload>.json)
#   CHRONIK_WORKLOADS  space-separated workload names (default: the seed workload, closed
#                      loop, and openloop-r20000-s256-30s, whose latency counts every broker
#                      stall; add produce-rf2-c128-s256-30s to gate the replicated cluster too)
#   CHRONIK_OUT        report directory (default reports/nightly-<UTC date>)
# Exit code: the gate's (0 pass, 1 regression, 2 inconclusive, 3 invalid/infrastructure,
# 4 no baseline for a workload).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"

head_rev=${CHRONIK_HEAD:-HEAD}
out=${CHRONIK_OUT:-reports/nightly-$(date -u +%Y%m%d)}
read -r -a workloads <<< "${CHRONIK_WORKLOADS:-produce-c128-s256-30s openloop-r20000-s256-30s}"
workload_args=()
for w in "${workloads[@]}"; do workload_args+=(--workload "$w"); done
base_args=()
[ -n "${CHRONIK_BASE:-}" ] && base_args=(--base "$CHRONIK_BASE")

command -v valgrind >/dev/null 2>&1 ||
  echo "nightly: valgrind not found (apt-get install valgrind): the deterministic tier will say 'not measured' and the gate cannot pass" >&2
cargo build --release --locked -p chronik-bench -p chronik-harness
mkdir -p "$out"
harness=./target/release/chronik-harness

set +e
"$harness" gate --head "$head_rev" "${base_args[@]}" "${workload_args[@]}" --json-output "$out/gate.json"
gate_code=$?
set -e

if [ -f "$out/gate.json" ]; then
  "$harness" report --out "$out" "${workload_args[@]}" --gate "$out/gate.json" --head "$head_rev" \
    --title "Nightly performance report $(date -u +%F)"
  if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
    cat "$out/report.md" >> "$GITHUB_STEP_SUMMARY"
  fi
  echo "report: $out/report.md"
fi
exit "$gate_code"
