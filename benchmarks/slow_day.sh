#!/usr/bin/env bash
# A slow day on purpose: runs the given command while a busy loop keeps one core occupied at the
# same priority (on a 2-core machine, about half the CPU the command would otherwise get), then
# prints the command's wall time. The README's budgets are checked this way:
#   benchmarks/slow_day.sh make test
#   benchmarks/slow_day.sh make demo
set -u
[ $# -gt 0 ] || { echo "usage: $0 COMMAND [ARGS...]" >&2; exit 2; }
sh -c 'while :; do :; done' &
hog=$!
trap 'kill "$hog" 2>/dev/null' EXIT
start=$(date +%s)
"$@"
rc=$?
echo "slow day: '$*' exit $rc in $(( $(date +%s) - start )) s (one core kept busy)" >&2
exit "$rc"
