#!/usr/bin/env bash
# Counts CPU instructions with callgrind, where the machine has no hardware counters for `perf stat` and a ratio of
# seconds is too noisy. Counts repeat to a few hundred instructions in a billion for the same binary and input.
#
#   scripts/instructions.sh apply [BATCHES]   instructions per applied entry, per phase of `meridian bench apply`
#   scripts/instructions.sh run PATTERN -- COMMAND...
#                                             instructions of COMMAND inside the one function matching PATTERN
#                                             (callgrind's --toggle-collect; '-' counts the whole program)
#
# Needs valgrind and gcc (apt-get install -y valgrind gcc) and a release build (swift build -c release --product meridian).
# Two things keep Debian 12's valgrind 3.19 from running a Swift 6.3 binary, and both are dealt with here:
# - it cannot read DWARF 5 debug information: the binary is copied without it (`objcopy --strip-debug`; symbols stay);
# - it crashes when libdispatch's exiting main thread calls sigsuspend() with a mask in read-only memory (valgrind
#   writes to the mask it is given): a preloaded sigsuspend passes a copy of the mask on the stack instead.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in valgrind gcc objcopy; do
    command -v "$tool" >/dev/null || { echo "instructions.sh: $tool is missing (apt-get install -y valgrind gcc binutils)" >&2; exit 2; }
done
binary=.build/release/meridian
[ -x "$binary" ] || { echo "instructions.sh: build first: swift build -c release --product meridian" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/sigsuspend.c" <<'C'
#define _GNU_SOURCE
#include <signal.h>
#include <unistd.h>
#include <sys/syscall.h>
int sigsuspend(const sigset_t *mask) { sigset_t copy = *mask; return (int)syscall(SYS_rt_sigsuspend, &copy, _NSIG / 8); }
C
gcc -O2 -shared -fPIC -o "$work/sigsuspend.so" "$work/sigsuspend.c"
objcopy --strip-debug "$binary" "$work/meridian"

# count PATTERN COMMAND...: prints the instructions counted.
count() {
    local pattern=$1; shift
    local collect=()
    [ "$pattern" != "-" ] && collect=(--collect-atstart=no "--toggle-collect=$pattern")
    SWIFT_DETERMINISTIC_HASHING=1 LD_PRELOAD="$work/sigsuspend.so" \
        valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" "${collect[@]}" "$@" > "$work/output" 2> "$work/valgrind.log" \
        || { cat "$work/valgrind.log" >&2; exit 1; }
    awk '/^(summary|totals):/ { print $2; exit }' "$work/callgrind.out"
}

# The transaction body of GroupCommitter.applyReplicated: one frame per applied batch, all the store's work in it.
apply_frame='*GroupCommitterC15applyReplicated*DatabaseCYbK*fU0_TA'

case "${1:-}" in
apply)
    batches=${2:-5}
    entries=$((batches * 256))
    echo "instructions per applied entry (callgrind; ${batches} batches of 256 entries per phase, 100-byte values; $(git rev-parse --short HEAD))"
    printf '%-28s %16s %12s\n' PHASE INSTRUCTIONS PER_ENTRY
    previous=0
    phase=1
    for name in "new keys" "overwrites" "concurrent (new losers)" "concurrent (losers again)"; do
        total=$(count "$apply_frame" "$work/meridian" bench apply --batches "$batches" --through "$phase")
        [ "$total" -gt 0 ] || { echo "instructions.sh: nothing counted: the apply frame's symbol no longer matches $apply_frame (see nm)" >&2; exit 1; }
        printf '%-28s %16d %12d\n' "$name" "$((total - previous))" "$(((total - previous) / entries))"
        previous=$total
        phase=$((phase + 1))
    done
    ;;
run)
    shift
    pattern=$1; shift
    [ "${1:-}" = "--" ] && shift
    [ "${1:-}" = "meridian" ] && { shift; set -- "$work/meridian" "$@"; }
    count "$pattern" "$@"
    ;;
*)
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
