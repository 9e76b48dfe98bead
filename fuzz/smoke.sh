#!/usr/bin/env bash
# Fuzz smoke test: runs every cargo-fuzz target for N seconds on a temporary copy of its
# committed seed corpus (so the committed corpora never grow), prints each target's total
# executions, and fails loudly on a crash, or when a target's execution count is missing or
# below a floor (a target that silently stopped running proves nothing).
#
# Usage: fuzz/smoke.sh [SECONDS]      (default: $FUZZ_SECONDS, else 30)
#        FUZZ_SANITIZER=none fuzz/smoke.sh   (default: address)
#        FUZZ_MIN_EXECUTIONS=N fuzz/smoke.sh (default: 1000 per target)
# Needs a nightly toolchain and cargo-fuzz (`cargo +nightly fuzz`).
set -euo pipefail

seconds="${1:-${FUZZ_SECONDS:-30}}"
sanitizer="${FUZZ_SANITIZER:-address}"
min_executions="${FUZZ_MIN_EXECUTIONS:-1000}"
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
    echo "smoke.sh: seconds must be a positive integer, got '$seconds'" >&2
    exit 2
fi

fuzz_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$fuzz_dir"

work="$(mktemp -d "${TMPDIR:-/tmp}/switchboard-fuzz.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# Build every target once (debug assertions on, so overflows and debug_asserts fire too).
build=(cargo +nightly fuzz build --debug-assertions --sanitizer "$sanitizer")
"${build[@]}"

mapfile -t targets < <(cargo +nightly fuzz list)
if [ "${#targets[@]}" -eq 0 ]; then
    echo "smoke.sh: no fuzz targets found" >&2
    exit 1
fi

declare -A executions
failed=()
for target in "${targets[@]}"; do
    corpus="$work/corpus-$target"
    mkdir -p "$corpus"
    if [ -d "corpus/$target" ]; then
        cp -R "corpus/$target/." "$corpus/"
    fi
    log="$work/$target.log"
    echo "== $target: ${seconds}s on $(find "$corpus" -type f | wc -l) seed inputs"
    status=0
    cargo +nightly fuzz run --debug-assertions --sanitizer "$sanitizer" "$target" "$corpus" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1 || status=$?

    # libFuzzer's final stats line, or failing that its last "#N DONE" status line.
    count="$(sed -n 's/^stat::number_of_executed_units: *\([0-9][0-9]*\).*/\1/p' "$log" | tail -n 1)"
    if [ -z "$count" ]; then
        count="$(sed -n 's/^#\([0-9][0-9]*\)[[:space:]]*DONE.*/\1/p' "$log" | tail -n 1)"
    fi
    executions[$target]="${count:-unknown}"

    if [ "$status" -eq 0 ] && ! [[ "$count" =~ ^[0-9]+$ && "$count" -ge "$min_executions" ]]; then
        failed+=("$target")
        echo "!!!!!!!! $target ran ${count:-an unknown number of} executions; the floor is $min_executions; log tail:" >&2
        tail -n 30 "$log" >&2
    elif [ "$status" -ne 0 ] || grep -qE '^==[0-9]+== ?ERROR|^SUMMARY: libFuzzer|panicked at' "$log"; then
        failed+=("$target")
        echo "!!!!!!!! $target FAILED (exit $status) after ${count:-?} executions; log tail:" >&2
        tail -n 60 "$log" >&2
        artifact="$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -n 1 | cut -d' ' -f5 || true)"
        if [ -n "$artifact" ]; then
            echo "!!!!!!!! crash input: $artifact" >&2
            echo "!!!!!!!! reproduce: (cd fuzz && cargo +nightly fuzz run $target $artifact)" >&2
        fi
    else
        echo "   $target: ${executions[$target]} executions, no crash"
    fi
done

echo
echo "fuzz smoke summary (${seconds}s per target, sanitizer $sanitizer):"
for target in "${targets[@]}"; do
    printf '  %-16s %12s executions\n' "$target" "${executions[$target]}"
done
if [ "${#failed[@]}" -ne 0 ]; then
    echo "FUZZ SMOKE FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz smoke passed: no crash in ${#targets[@]} targets"
