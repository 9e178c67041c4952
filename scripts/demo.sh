#!/usr/bin/env bash
# The demo: train the course's StudentNet on the sample data, then evaluate, summarise and predict.
set -euo pipefail
DATA=${1:-../shared/data/food101_10}
OUT=${2:-runs/demo}
NC=${NC:-.venv/bin/netcompress}

$NC train --model studentnet --data "$DATA" --image-size 64 --epochs 8 --out "$OUT/student"
$NC evaluate "$OUT/student/best.safetensors" --data "$DATA" --split validation --out-dir "$OUT/student"
$NC summary "$OUT/student/best.safetensors"
$NC predict "$OUT/student/best.safetensors" --data "$DATA" --out "$OUT/student/pred.csv"
echo "demo finished: see $OUT/"
