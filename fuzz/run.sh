#!/usr/bin/env bash
# Coverage-guided fuzzing of Meridian's decoders with libFuzzer (swiftc -sanitize=fuzzer,address).
#
#   fuzz/run.sh TARGET [SECONDS]     fuzz one target (default 600 s) from its corpus in fuzz/corpus/TARGET
#   fuzz/run.sh --seeds              rewrite every target's seed corpus from the real encoders
#   fuzz/run.sh --all [SECONDS]      every target in turn
#
# Targets: peer-frame entry session-token context-token config crdt key-states. A crash leaves
# fuzz/crash-* (the input); turn it into a regression test next to the decoder's tests, then fix.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
targets=(peer-frame entry session-token context-token config crdt key-states)

# Every Swift module is instrumented (coverage and AddressSanitizer), the decoders in MeridianCore included.
flags=(-c release --package-path "$here" -Xswiftc -sanitize=fuzzer,address)
swift build "${flags[@]}" --product MeridianFuzz >&2
binary=$(swift build "${flags[@]}" --show-bin-path)/MeridianFuzz

run_one() {
  local target=$1 seconds=$2
  mkdir -p "$here/corpus/$target" "$here/work/$target"
  echo "== $target for $seconds s" >&2
  # New inputs go to work/ (not committed); the committed corpus stays the seeds plus what was minimised in.
  FUZZ_TARGET=$target "$binary" -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=4096 \
    -artifact_prefix="$here/crash-$target-" -print_final_stats=1 "$here/work/$target" "$here/corpus/$target"
}

case "${1:-}" in
  --seeds)
    for target in "${targets[@]}"; do
      rm -rf "$here/corpus/$target"
      FUZZ_TARGET=$target FUZZ_WRITE_SEEDS="$here/corpus/$target" "$binary"
      echo "$target: $(ls "$here/corpus/$target" | wc -l) seeds" >&2
    done ;;
  --all)
    for target in "${targets[@]}"; do run_one "$target" "${2:-600}"; done ;;
  "" | -h | --help)
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' ; exit 2 ;;
  *)
    run_one "$1" "${2:-600}" ;;
esac
