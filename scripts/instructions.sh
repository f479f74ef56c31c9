#!/usr/bin/env bash
# Counts CPU instructions with callgrind, where the machine has no hardware counters for `perf stat` and a ratio of
# seconds is too noisy. Counts repeat to a few hundred instructions in a billion for the same binary and input.
#
#   scripts/instructions.sh apply [BATCHES]   instructions per applied entry, per phase of `meridian bench apply`
#   scripts/instructions.sh http [SECONDS]  instructions per durable PUT and per GET of one node under wrk
#                                             (32 connections, SECONDS per phase under callgrind, idle subtracted;
#                                             KEEP_CALLGRIND=PREFIX keeps each phase's profile as PREFIX.PHASE)
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
binary=${MERIDIAN_BINARY:-.build/release/meridian}
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
http)
    seconds=${2:-20}
    command -v wrk >/dev/null || { echo "instructions.sh: wrk is missing (apt-get install -y wrk)" >&2; exit 2; }
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    mkdir -p "$work/node"
    cat > "$work/node/cluster.yaml" <<YAML
cluster: bench
regions:
  - { name: local, client: 127.0.0.1:$port, peer: 127.0.0.1:$((port + 1)) }
keyspaces:
  - { name: bench, topology: multi-leader, conflict: lww, ack: async }
YAML
    SWIFT_DETERMINISTIC_HASHING=1 LD_PRELOAD="$work/sigsuspend.so" valgrind --tool=callgrind --callgrind-out-file="$work/node/callgrind.out" \
        "$work/meridian" node --config "$work/node/cluster.yaml" --region local --data "$work/node/data" --log-level warning \
        > "$work/node/node.log" 2> "$work/node/valgrind.log" &
    node=$!
    trap 'kill $node 2>/dev/null; wait $node 2>/dev/null; rm -rf "$work"' EXIT
    for _ in $(seq 1 600); do curl -fs "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break; sleep 0.2; done
    curl -fs "http://127.0.0.1:$port/health" >/dev/null || { echo "instructions.sh: the node did not start under valgrind" >&2; cat "$work/node/valgrind.log" >&2; exit 1; }
    # shellcheck source=lib/wrk-scripts.sh
    source scripts/lib/wrk-scripts.sh
    write_wrk_scripts "$work" 1000
    # phase NAME [SCRIPT]: zeroes the counters, runs wrk (or sleeps), dumps; prints the instructions and requests.
    dumps=0
    phase() {
        local requests=0
        callgrind_control -z "$node" >/dev/null 2>&1
        if [ -n "${2:-}" ]; then
            requests=$(wrk -t1 -c32 -d"${seconds}s" --timeout 30s -s "$2" "http://127.0.0.1:$port" | awk '/requests in/ { print $1 }')
        else
            sleep "$seconds"
        fi
        sleep 1
        callgrind_control -d "$node" >/dev/null 2>&1
        dumps=$((dumps + 1))
        local file
        file=$(ls -t "$work/node/"callgrind.out.* | head -1)
        [ -n "${KEEP_CALLGRIND:-}" ] && cp "$file" "$KEEP_CALLGRIND.$1"
        echo "$(awk '/^(summary|totals):/ { print $2; exit }' "$file") $requests"
    }
    wrk -t1 -c32 -d"${seconds}s" --timeout 30s -s "$work/put.lua" "http://127.0.0.1:$port" >/dev/null  # every key once, caches warm
    read -r idle _ <<<"$(phase idle)"
    read -r put puts <<<"$(phase put "$work/put.lua")"
    read -r get gets <<<"$(phase get "$work/get.lua")"
    echo "instructions per request of one node (callgrind; wrk, 32 connections, ${seconds} s per phase, idle subtracted; $(git rev-parse --short HEAD))"
    printf '%-20s %10s %16s %12s\n' PHASE REQUESTS INSTRUCTIONS PER_REQUEST
    printf '%-20s %10s %16d %12s\n' "idle" "-" "$idle" "-"
    printf '%-20s %10d %16d %12d\n' "PUT (durable)" "$puts" "$((put - idle))" "$(((put - idle) / puts))"
    printf '%-20s %10d %16d %12d\n' "GET" "$gets" "$((get - idle))" "$(((get - idle) / gets))"
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
