#!/usr/bin/env bash
# Run the cargo-fuzz targets in fuzz/ for a bounded time each (docs/fuzzing.md).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET (default 60)] [TARGET…]   (default: every target)
#
# Builds every target once, replays fuzz/regressions/<target>/* (past crashes, which must
# pass), then fuzzes each target for SECONDS with libFuzzer's -max_total_time, starting
# from fuzz/seeds/<target> (committed) and growing fuzz/corpus/<target> (gitignored).
# Prints executions and time per target; exits non-zero if any target crashed, hung or
# failed to run. A crashing input is left in fuzz/artifacts/<target>/.
#
# Environment:
#   FUZZ_SANITIZER   none (default) | address | … — anything but none needs -Zsanitizer, so
#                    on a stable toolchain the script sets RUSTC_BOOTSTRAP=1 for cargo.
#   FUZZ_TARGET_DIR  cargo target dir for the fuzz build (default fuzz/target).
#   FUZZ_ARGS        extra libFuzzer flags, e.g. "-max_len=1024" or "-jobs=2".
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-60}
[ $# -gt 0 ] && shift
case $secs in '' | *[!0-9]*) echo "usage: $0 [SECONDS_PER_TARGET] [TARGET…]" >&2; exit 2 ;; esac

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is not installed: cargo install cargo-fuzz --locked" >&2
  exit 2
fi

sanitizer=${FUZZ_SANITIZER:-none}
if [ "$sanitizer" != none ] && ! rustc --version | grep -q nightly; then
  # The sanitizers are still -Z flags; a stable rustc accepts them with RUSTC_BOOTSTRAP.
  export RUSTC_BOOTSTRAP=1
fi
flags=(-s "$sanitizer" -a)
if [ -n "${FUZZ_TARGET_DIR:-}" ]; then
  flags+=(--target-dir "$FUZZ_TARGET_DIR")
  bindir=$FUZZ_TARGET_DIR/x86_64-unknown-linux-gnu/release
else
  bindir=fuzz/target/x86_64-unknown-linux-gnu/release
fi

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

t0=$(date +%s)
echo "== building ${#targets[@]} fuzz targets (sanitizer: $sanitizer)"
cargo fuzz build "${flags[@]}"
echo "   built in $(($(date +%s) - t0)) s"

logdir=fuzz/logs
mkdir -p "$logdir"
failed=()
summary=()
for t in "${targets[@]}"; do
  # Past crashes first: each must now run clean.
  shopt -s nullglob
  regressions=(fuzz/regressions/"$t"/*)
  shopt -u nullglob
  if [ ${#regressions[@]} -gt 0 ]; then
    if ! "$bindir/$t" "${regressions[@]}" >"$logdir/$t.regressions.log" 2>&1; then
      echo "!! $t: a regression input fails again (see $logdir/$t.regressions.log)"
      tail -n 30 "$logdir/$t.regressions.log"
      failed+=("$t (regression)")
      summary+=("$(printf '%-14s %12s %7s %7s  %s' "$t" - - - "REGRESSION FAILS")")
      continue
    fi
  fi

  mkdir -p fuzz/corpus/"$t" fuzz/seeds/"$t"
  start=$(date +%s)
  status=ok
  # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
  if ! cargo fuzz run "${flags[@]}" "$t" fuzz/corpus/"$t" fuzz/seeds/"$t" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      ${FUZZ_ARGS:-} >"$logdir/$t.log" 2>&1; then
    status=CRASH
    failed+=("$t")
  fi
  elapsed=$(($(date +%s) - start))
  execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$logdir/$t.log" | tail -n 1 | grep -o '[0-9]*$' || true)
  if [ -z "$execs" ]; then
    execs=$(grep -o '^Done [0-9]* runs' "$logdir/$t.log" | tail -n 1 | grep -o '[0-9][0-9]*' || true)
  fi
  if [ -z "$execs" ]; then
    execs=$(grep -o '^#[0-9]*' "$logdir/$t.log" | tail -n 1 | tr -d '#' || true)
  fi
  fuzzed=$(grep -o '^Done [0-9]* runs in [0-9]* second' "$logdir/$t.log" | tail -n 1 | awk '{print $5}' || true)
  cov=$(grep -o 'cov: [0-9]*' "$logdir/$t.log" | tail -n 1 | grep -o '[0-9]*$' || true)
  corpus=$(find fuzz/corpus/"$t" -type f | wc -l)
  line=$(printf '%-14s %12s %6ss %6ss  cov %-6s corpus %-6s %s' "$t" "${execs:-?}" "${fuzzed:-?}" \
    "$elapsed" "${cov:-?}" "$corpus" "$status")
  summary+=("$line")
  echo "$line"
  if [ "$status" != ok ]; then
    grep -E 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written|Failing input' "$logdir/$t.log" | head -n 10 || true
    tail -n 40 "$logdir/$t.log"
  fi
done

echo
echo "== fuzz summary: ${secs} s per target, $(($(date +%s) - t0)) s in all (logs in $logdir/)"
printf '%-14s %12s %7s %7s\n' target executions fuzzed wall
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]} — crashing inputs are in fuzz/artifacts/<target>/" >&2
  exit 1
fi
