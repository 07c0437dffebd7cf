#!/usr/bin/env bash
# The cargo-fuzz targets (issue #14), each for a bounded time from its checked-in seed
# corpus: the codec's `decode` (codec/fuzz) and the broker core's `core` (broker/fuzz),
# built with AddressSanitizer and debug assertions. A crash, a broken invariant, a leak
# or a timeout fails the script, which prints the input's path and a hex dump of it; add
# that input to the target's seeds and to a regression test (codec/fuzz/README.md,
# broker/fuzz/README.md).
#
# Needs a nightly toolchain and cargo-fuzz, and installs them when they are missing.
# FUZZ_SECONDS: seconds of fuzzing per target (default 60). FUZZ_TARGETS: which targets
# (default "decode core").
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
seconds="${FUZZ_SECONDS:-60}"
targets="${FUZZ_TARGETS:-decode core}"
# The version whose build with --locked was checked; a newer one may be installed.
cargo_fuzz_version=0.13.2

echo "== installing the fuzzing tools"
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  # Not rustup itself: that is the machine's business.
  rustup toolchain install nightly --profile minimal --no-self-update
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --version "$cargo_fuzz_version"
fi
rustup run nightly rustc --version
cargo fuzz --version

# Both targets build into one directory: libFuzzer itself (libfuzzer-sys's C++) is then
# built once.
target_dir="$root/target/fuzz"
mkdir -p "$target_dir"

# fuzz CRATE_DIR TARGET DICTIONARY
fuzz() {
  local crate="$root/$1" target="$2" dict="$root/$1/$3"
  local seeds="$crate/corpus/$target"
  # A fresh working corpus every run (libFuzzer writes what it finds into the first
  # directory): the seeds, never written to.
  local work="$target_dir/corpus/$target"
  local log="$target_dir/$target.log"
  local marker="$target_dir/$target.started"
  rm -rf "$work"
  mkdir -p "$work"
  cp "$seeds"/* "$work"/
  touch "$marker"
  echo "== fuzzing $target for ${seconds}s ($(ls "$seeds" | wc -l) seeds)"
  local status=0
  cargo +nightly fuzz run "$target" --fuzz-dir "$crate" --target-dir "$target_dir" \
    --debug-assertions --codegen-units 16 "$work" "$seeds" -- \
    -max_total_time="$seconds" -timeout=20 -dict="$dict" -print_final_stats=1 \
    2>&1 | tee "$log" || status=$?
  if [ "$status" -ne 0 ]; then
    echo "!! fuzz target $target failed (exit $status); the input that broke it:" >&2
    local found=0
    while IFS= read -r artifact; do
      found=1
      echo "!! $artifact ($(wc -c <"$artifact") bytes)" >&2
      od -A x -t x1z -v "$artifact" | head -n 128 >&2
    done < <(find "$crate/artifacts/$target" -type f -newer "$marker" 2>/dev/null)
    if [ "$found" -eq 0 ]; then
      echo "!! no new artifact in $crate/artifacts/$target (a build error?); see $log" >&2
    fi
    exit 1
  fi
}

for t in $targets; do
  case "$t" in
    decode) fuzz codec/fuzz decode decode.dict ;;
    core) fuzz broker/fuzz core core.dict ;;
    *) echo "unknown fuzz target: $t" >&2; exit 2 ;;
  esac
done
echo "== fuzzing passed"
