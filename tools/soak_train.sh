#!/usr/bin/env bash
# Soak test of effnet-train's checkpoints on the CPU: a tiny model on a tiny generated image
# folder, a checkpoint after every step, and for DURATION seconds a cycle of
#   start (or --resume) -> random delay -> kill -9
# with, every few cycles, a second run on the same checkpoint directory that must be refused.
# Then the run is finished with --resume up to a fixed step, and compared with one uninterrupted
# run of the same steps:
#   - the per-step rows of the --log CSV (epoch, step, lr, loss, accuracy) are identical;
#   - no temporary file (*.tmp.*) is left in the checkpoint directory;
#   - the log never loses rows (after each kill it reaches at least the step before the last one);
#   - the directory's size stays flat (recorded after every kill: at most the checkpoint, the
#     lock file and one temporary of an interrupted write).
#
#   tools/soak_train.sh [DURATION_S (default 1200)] [WORKDIR (default: a new temporary folder)]
#   EFFNET_BINARY_DIR=build-train nice tools/soak_train.sh 60      # a one-minute version
# Environment: EFFNET_BINARY_DIR (default build), SOAK_MAX_DELAY_MS (default 400: the longest a
# run lives before its kill), SOAK_SEED (default: random; the delays' seed, printed).
# Prints a summary; exits non-zero when a check fails. The work folder is kept (its soak.tsv has
# one row per cycle).
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${1:-1200}
work=${2:-$(mktemp -d -t effnet_soak_XXXXXX)}
bin=${EFFNET_BINARY_DIR:-build}
train="$bin/examples/effnet-train"
max_delay_ms=${SOAK_MAX_DELAY_MS:-400}
seed=${SOAK_SEED:-$((RANDOM * 32768 + RANDOM))}
RANDOM=$seed

[[ -x "$train" ]] || { echo "error: $train not built (set EFFNET_BINARY_DIR)" >&2; exit 1; }
mkdir -p "$work"
data="$work/data" ck="$work/ck" log="$work/soak.csv" ref_log="$work/reference.csv" tsv="$work/soak.tsv"
rm -rf "$ck" "$log" "$ref_log"

# 2 classes x 8 images of 20x20 noise, batch 4: 4 steps per epoch, a few milliseconds a step.
python3 - "$data" <<'EOF'
import os, sys
import numpy as np
from PIL import Image
rng = np.random.default_rng(5)
for k in range(2):
    d = os.path.join(sys.argv[1], f"class_{k}")
    os.makedirs(d, exist_ok=True)
    for i in range(8):
        img = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
        img[..., k] //= 2  # something to learn
        Image.fromarray(img).save(os.path.join(d, f"img_{i}.png"))
EOF

# --epochs fixes the schedule (total steps); the run never gets there: it stops at --max-steps.
run_opts=(--data "$data" --width 0.1 --depth 0.1 --resolution 16 --batch 4 --epochs 100000
          --optimizer adamw --lr 0.001 --seed 3 --threads 1 --workers 1)

dir_bytes() { du -sb "$1" 2>/dev/null | cut -f1; }
temporaries() { find "$1" -maxdepth 1 -name '*.tmp.*' | wc -l; }
step_rows() { grep '^step,' "$1" | cut -d, -f2-6; }
last_step() { { grep '^step,' "$1" 2>/dev/null || true; } | tail -1 | cut -d, -f3; }

echo "soak: ${duration}s of kill -9 / --resume cycles in $work (delays 0-${max_delay_ms} ms, seed $seed)"
printf 'cycle\tdelay_ms\texit\tlogged_step\ttemporaries_after_kill\tdir_bytes_after_kill\n' >"$tsv"
cycles=0 kills=0 finished=0 left_temporaries=0 refused=0 refusals_tried=0 failures=0
log_losses=0 previous_step=0
min_bytes="" max_bytes=0
start=$SECONDS
while ((SECONDS - start < duration)); do
  resume=()
  [[ -f "$ck/checkpoint.safetensors" ]] && resume=(--resume)
  "$train" "${run_opts[@]}" --checkpoint-dir "$ck" --checkpoint-every 1 --log "$log" "${resume[@]}" \
    >/dev/null 2>"$work/last_stderr" &
  pid=$!
  delay_ms=$((RANDOM % (max_delay_ms + 1)))
  sleep "$(printf '%d.%03d' $((delay_ms / 1000)) $((delay_ms % 1000)))"
  if ((cycles % 10 == 5)) && [[ $(cat "$ck/.effnet-train.lock" 2>/dev/null) == "$pid" ]]; then
    # A second run on the same directory while the first one holds the lock: it must be refused.
    refusals_tried=$((refusals_tried + 1))
    if ! "$train" "${run_opts[@]}" --checkpoint-dir "$ck" --checkpoint-every 1 --resume \
        >/dev/null 2>"$work/second_stderr"; then
      grep -q "in use by another run" "$work/second_stderr" && refused=$((refused + 1))
    fi
  fi
  if kill -9 "$pid" 2>/dev/null; then kills=$((kills + 1)); fi
  status=0
  wait "$pid" 2>/dev/null || status=$? # (no "Killed" line from bash)
  if ((status != 0 && status != 137)); then
    echo "cycle $cycles: effnet-train exited $status:" >&2
    tail -5 "$work/last_stderr" >&2
    failures=$((failures + 1))
  fi
  ((status == 0)) && finished=$((finished + 1))
  temps=$(temporaries "$ck")
  ((temps > 0)) && left_temporaries=$((left_temporaries + 1))
  bytes=$(dir_bytes "$ck")
  ((bytes > max_bytes)) && max_bytes=$bytes
  [[ -z $min_bytes ]] || ((bytes < min_bytes)) && min_bytes=$bytes
  # With a checkpoint every step a resume drops at most the one row logged after the last
  # checkpoint: a log that went back further lost rows.
  logged=$(last_step "$log")
  ((${logged:-0} < previous_step - 1)) && log_losses=$((log_losses + 1))
  previous_step=${logged:-0}
  printf '%d\t%d\t%d\t%s\t%d\t%d\n' "$cycles" "$delay_ms" "$status" "$logged" "$temps" "$bytes" >>"$tsv"
  cycles=$((cycles + 1))
done

# Finish: resume to a step a little past the last checkpoint, then the same steps uninterrupted.
ck_step=$(last_step "$log")
final_step=$(( ${ck_step:-0} + 5 ))
temps_before=$(temporaries "$ck")
resume=()
[[ -f "$ck/checkpoint.safetensors" ]] && resume=(--resume)
"$train" "${run_opts[@]}" --checkpoint-dir "$ck" --checkpoint-every 1 --log "$log" "${resume[@]}" \
  --max-steps "$final_step" >/dev/null 2>"$work/final_stderr" || { cat "$work/final_stderr" >&2; exit 1; }
temps_after=$(temporaries "$ck")
final_bytes=$(dir_bytes "$ck")
t0=$SECONDS
"$train" "${run_opts[@]}" --log "$ref_log" --max-steps "$final_step" \
  >/dev/null 2>"$work/reference_stderr" || { cat "$work/reference_stderr" >&2; exit 1; }
ref_seconds=$((SECONDS - t0))

if cmp -s <(step_rows "$log") <(step_rows "$ref_log"); then equal=yes; else equal=no; fi
rows=$(step_rows "$log" | wc -l)

cat <<EOF
cycles: $cycles in $((t0 - start)) s (kills $kills, runs that ended by themselves $finished, unexpected exits $failures)
steps: $final_step (resumed run: $rows step rows; uninterrupted reference: $ref_seconds s)
second run refused while the first lived: $refused of $refusals_tried
cycles after which the log had lost rows: $log_losses
kills that left a temporary file: $left_temporaries (before the final resume: $temps_before; after it: $temps_after)
checkpoint directory size after each kill: min $min_bytes, max $max_bytes bytes; at the end $final_bytes
per-step losses equal to the uninterrupted run: $equal
work folder: $work (soak.tsv: one row per cycle)
EOF
[[ $equal == yes && $temps_after == 0 && $failures == 0 && $log_losses == 0 && $refused == "$refusals_tried" ]]
