# Shared by scripts/bench-*.sh (sourced after `cd` to the repository root):
# messages, and the priority of the measured processes.
#
# NICE=-10 runs every measured process at that nice level (`"${RUN[@]}"`
# before the command). Nice levels only order processes within one
# autogroup, so when the script leads its own session (`setsid -w`) and
# may write its autogroup, the whole group gets the level too
# (docs/BENCHMARKS.md, "Directory").

log() { printf '== %s\n' "$*" >&2; }
fail() { printf 'error: %s\n' "$*" >&2; exit 1; }

RUN=()
if [ -n "${NICE:-}" ]; then
  RUN=(nice -n "$NICE")
  if [ "$(ps -o sid= -p $$ | tr -d ' ')" = "$$" ] && [ -w "/proc/$$/autogroup" ]; then
    echo "$NICE" >"/proc/$$/autogroup"
  elif [ -e "/proc/$$/autogroup" ]; then
    printf 'note: not a session leader; NICE only orders this session'"'"'s own processes\n' >&2
  fi
fi
