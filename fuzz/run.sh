#!/usr/bin/env bash
# Runs every fuzz target (or those named) for SECONDS each, one after another,
# starting from the committed seeds (fuzz/seeds/TARGET) and growing a local
# corpus (fuzz/corpus/TARGET, not committed). Stops at the first crash, which
# libFuzzer leaves in fuzz/artifacts/TARGET/.
#   fuzz/run.sh SECONDS [TARGET...]
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:?usage: fuzz/run.sh SECONDS [TARGET...]}
shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
# Release with debug assertions: arithmetic overflow panics, as in a debug build.
cargo +nightly fuzz build -O -a
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    echo "== fuzz $target for ${seconds}s"
    # -rss_limit_mb and -malloc_limit_mb make a huge allocation a crash too.
    log="corpus/$target.log"
    if ! cargo +nightly fuzz run -O -a "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=1024 -malloc_limit_mb=256 -timeout=10 -print_final_stats=1 \
        >"$log" 2>&1; then
        tail -40 "$log"
        echo "fuzz target $target failed; the input is in fuzz/artifacts/$target/"
        exit 1
    fi
    grep -E '^stat::(number_of_executed_units|peak_rss_mb)|^Done' "$log" || true
done
