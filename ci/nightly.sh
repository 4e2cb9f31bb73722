#!/usr/bin/env bash
# The nightly job: build the harness and chronik-bench once, gate HEAD against the stored
# baseline commit of each workload (both rebuilt from git and measured side by side on this
# machine), look for change points over every night recorded so far, then write the markdown
# report with figures and the disk's own fdatasync latency (`disk-probe`). Every trial goes into results/results.sqlite (and a JSON export beside
# it): keep that file between nights (ci/nightly.yml keeps it on a data branch) and the report
# in $OUT as an artifact.
#
# Environment (all optional):
#   CHRONIK_HEAD       revision to gate (default HEAD)
#   CHRONIK_BASE       baseline revision (default: the commit stored in baselines/<workload>.json)
#   CHRONIK_WORKLOADS  space-separated workload names (default: the seed workload, closed
#                      loop, and openloop-r20000-s256-30s, whose latency counts every broker
#                      stall; add produce-rf2-c128-s256-30s to gate the replicated cluster too)
#   CHRONIK_OUT        report directory (default reports/nightly-<UTC date>)
#   CHRONIK_METRICS    metrics searched for change points (default: throughput p99)
#   CHRONIK_MEASURED_TESTS  1 (default) runs the measured test tier after the report: the
#                      regression fixtures bisected to their commits and a real build of this
#                      repository, the checks that the detector still sees on this runner; 0
#                      skips it
# Exit code: the gate's (0 pass, 1 regression, 3 invalid/infrastructure, 4 no baseline for a
# workload, 5 inconclusive, 64 usage error; the README's table). Change points do not change
# it: they are reported, and `chronik-harness bisect --from-change-point` searches the newest.
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

# The gate's console output is kept too: ci/nightly.yml quotes its "could see" lines (each
# workload's detectable change) in the warning of an inconclusive night.
set +e
"$harness" gate --head "$head_rev" "${base_args[@]}" "${workload_args[@]}" --json-output "$out/gate.json" \
  --report-link "$out/report.md" | tee "$out/gate.txt"
gate_code=${PIPESTATUS[0]}
set -e

if [ -f "$out/gate.json" ]; then
  "$harness" report --out "$out" "${workload_args[@]}" --gate "$out/gate.json" --head "$head_rev" \
    --title "Nightly performance report $(date -u +%F)"
  metric_args=()
  for m in ${CHRONIK_METRICS:-throughput p99}; do metric_args+=(--metric "$m"); done
  if "$harness" history "${workload_args[@]}" "${metric_args[@]}" \
    --markdown "$out/change-points.md" --record-reported > "$out/history.txt"; then
    cat "$out/change-points.md" >> "$out/report.md"
  else
    echo "nightly: change-point search failed (see above); the report has no history section" >&2
  fi
  # The disk's own append + fdatasync latency and closed-loop rate, measured after the trials:
  # a p99.9 or max limit below it, or a flatness limit tighter than its own, is a limit on
  # this host, not on the broker.
  if "$harness" -q disk-probe > "$out/disk-probe.md"; then
    {
      printf '\n## The disk of this host, without a broker (`chronik-harness disk-probe`, after the trials)\n\nA broker that acks only after fdatasync cannot have a shorter tail than its disk, nor a closed-loop rate flatter than the disk'"'"'s own (last row: its rate in the last third of the window against the first).\n\n'
      cat "$out/disk-probe.md"
    } >> "$out/report.md"
  else
    echo "nightly: disk-probe failed (see above); the report has no disk section" >&2
  fi
  if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
    cat "$out/report.md" >> "$GITHUB_STEP_SUMMARY"
  fi
  echo "report: $out/report.md"
fi

# The measured test tier (README), after the gate so its builds never overlap a measurement.
# A failure means the harness no longer finds faults it must find here: the night is red
# unless the gate already said something redder.
if [ "${CHRONIK_MEASURED_TESTS:-1}" = 1 ]; then
  if ! cargo test --release --locked --workspace -- --ignored; then
    echo "nightly: the measured test tier failed (see above)" >&2
    case "$gate_code" in 0 | 5) gate_code=3 ;; esac
  fi
fi
exit "$gate_code"
