#!/usr/bin/env bash
# Coverage-guided fuzzing of fogmesh's decoders (stable toolchain, no sanitizer).
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Installs cargo-fuzz 0.13.2 if missing, builds every target, replays fuzz/regressions/TARGET/*
# through each target (fixed crashes stay fixed), then fuzzes each target for SECONDS_PER_TARGET
# (default 5) starting from a scratch copy of fuzz/corpus/TARGET (the checked-in seeds are not
# modified; new inputs go to fuzz/corpus-run/TARGET, which is git-ignored). Prints per target the
# executions, exec/s and coverage at the end. Exits non-zero if any replay or run crashes; crash
# inputs are left in fuzz/artifacts/TARGET/.
#
# Environment: FUZZ_RSS_MB (libFuzzer -rss_limit_mb, default 2048), FUZZ_BUILD_FLAGS (extra `cargo fuzz build` flags, e.g. "-a" for debug assertions).
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."

seconds="${1:-5}"
if [[ $# -gt 0 ]]; then shift; fi
if ! [[ "$seconds" =~ ^[0-9]+$ ]]; then
    echo "usage: fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]" >&2
    exit 2
fi
rss="${FUZZ_RSS_MB:-2048}"
build_flags=(${FUZZ_BUILD_FLAGS:-})

export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo fuzz --version 2>/dev/null | grep -q '0\.13\.2'; then
    echo "== installing cargo-fuzz 0.13.2"
    cargo install cargo-fuzz --version 0.13.2 --locked || exit 1
fi

if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi

echo "== building ${#targets[@]} targets"
start=$(date +%s)
if [[ $# -gt 0 ]]; then
    for t in "${targets[@]}"; do
        cargo fuzz build -s none "${build_flags[@]}" "$t" || exit 1
    done
else
    cargo fuzz build -s none "${build_flags[@]}" || exit 1
fi
echo "== built in $(( $(date +%s) - start )) s"

failed=()
summary=()
for t in "${targets[@]}"; do
    # Replays: every reproducer ever found for this target must pass now.
    if compgen -G "fuzz/regressions/$t/*" >/dev/null; then
        echo "== $t: replaying fuzz/regressions/$t"
        if ! cargo fuzz run -s none "${build_flags[@]}" "$t" fuzz/regressions/"$t"/* -- \
            -runs=0 -rss_limit_mb="$rss" >"fuzz/target/replay-$t.log" 2>&1; then
            tail -n 30 "fuzz/target/replay-$t.log"
            echo "== $t: a regression reproducer fails again (log: fuzz/target/replay-$t.log)"
            failed+=("$t(replay)")
        fi
    fi
    [[ "$seconds" -eq 0 ]] && continue

    run_corpus="fuzz/corpus-run/$t"
    mkdir -p "$run_corpus" "fuzz/artifacts/$t"
    log="fuzz/target/fuzz-$t.log"
    echo "== $t: fuzzing for $seconds s"
    # Fresh inputs go to the scratch corpus; the checked-in seeds are read only.
    cargo fuzz run -s none "${build_flags[@]}" "$t" "$run_corpus" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb="$rss" -print_final_stats=1 \
        >"$log" 2>&1
    rc=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
    speed=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
    line=$(printf '%-14s execs=%-10s exec/s=%-8s cov=%s' "$t" "${execs:-?}" "${speed:-?}" "${cov:-?}")
    if [[ $rc -ne 0 ]]; then
        grep -E 'panicked at|uncaught panic|ERROR: libFuzzer|Test unit written' "$log" | head -n 8
        line="$line  CRASH (log: $log)"
        failed+=("$t")
    fi
    echo "$line"
    summary+=("$line")
done

echo
echo "== summary (${seconds} s per target)"
printf '%s\n' "${summary[@]}"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "== FAILED: ${failed[*]}"
    exit 1
fi
echo "== no crashes"
