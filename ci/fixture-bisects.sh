#!/usr/bin/env bash
# How often does bisect name the right commit? Generates the regression-fixture history from
# HEAD, bisects each fixture RUNS times and prints one line per bisect plus a tally.
# A benchmark, not a test: it takes about 5 minutes per bisect on a 2-core machine.
#
#   ci/fixture-bisects.sh                      # every fixture, 3 runs, smoke workload
#   RUNS=5 ONLY=fixed-slowdown SLOWDOWN_US=25 ci/fixture-bisects.sh
#   ONLY="cpu-2pct cpu-5pct cpu-10pct" ci/fixture-bisects.sh   # the graded CPU fixtures
#   ONLY="wait-3pct wait-5pct wait-10pct wait-20pct" WORKLOAD=produce-c128-s256-10s \
#     ci/fixture-bisects.sh                    # the graded waiting fixtures (a lock held across a wait)
#
# Environment: RUNS (3), ONLY (fixture names, space separated; default all), SLOWDOWN_US (150),
# WORKLOAD (smoke-c32-s256-3s), OUT (target/fixture-bisects/<date>).
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${RUNS:-3}
slowdown_us=${SLOWDOWN_US:-150}
workload=${WORKLOAD:-smoke-c32-s256-3s}
out=${OUT:-target/fixture-bisects/$(date -u +%Y%m%dT%H%M%SZ)}
harness=./target/release/chronik-harness

cargo build --release --locked -p chronik-harness -p chronik-bench
mkdir -p "$out"
only_args=()
for name in ${ONLY:-}; do only_args+=("--only=$name"); done
"$harness" fixtures --out "$out/repo" --slowdown-us "$slowdown_us" "${only_args[@]}" >"$out/history.json"

field() { # field <fixture name> <key>
  python3 -c 'import json,sys; h=json.load(open(sys.argv[1]))
print(next(f[sys.argv[3]] for f in h["fixtures"] if f["name"] == sys.argv[2]))' "$out/history.json" "$1" "$2"
}
names=$(python3 -c 'import json,sys; print(" ".join(f["name"] for f in json.load(open(sys.argv[1]))["fixtures"]))' "$out/history.json")

for name in $names; do
  right=0
  for run in $(seq 1 "$runs"); do
    log="$out/$name-$run.json"
    set +e
    "$harness" --repo "$out/repo" --results-dir "$out/results" --quiet \
      bisect --good "$(field "$name" good)" --bad "$(field "$name" bad)" \
      --workload "$workload" --json-output "$log" >"$out/$name-$run.txt" 2>&1
    code=$?
    set -e
    line=$(python3 - "$log" "$(field "$name" culprit)" "$code" <<'EOF'
import json, sys
path, culprit, code = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    log = json.load(open(path))
except OSError:
    print(f"exit {code}, no bisect log")
    sys.exit()
found = (log.get("culprit") or {}).get("sha")
verdict = "RIGHT" if found == culprit else ("one of %d candidates" % len(log["candidates"]) if not found else "WRONG")
conf = log.get("confirmation") or {}
tier = conf.get("instructions") or {}
effects = ", ".join(
    "%s %+.1f%%" % (m["metric"], (m["median_ratio"] - 1) * 100)
    for m in (conf.get("throughput"), conf.get("p99"), conf.get("peak_rss"), tier.get("metric")) if m)
measured = [s for s in log["steps"] if s["commit"]["sha"] == culprit and s["pairs"] > 0]
effects += "; culprit measured in a step" if measured else "; culprit decided without trials"
print(f"{verdict}: {len(log['steps'])} steps, {log['builds']} builds, {log['wall_s']:.0f} s; {effects or 'not confirmed'}")
EOF
)
    case $line in RIGHT*) right=$((right + 1)) ;; esac
    echo "$name run $run: $line" | tee -a "$out/summary.txt"
  done
  echo "$name: right commit in $right of $runs runs (slowdown ${slowdown_us} us, $workload)" | tee -a "$out/summary.txt"
done
echo "logs: $out"
