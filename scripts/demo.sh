#!/usr/bin/env bash
# The demo on the sample data (a few minutes on 2 CPU cores): fine-tune a pretrained teacher,
# distill the course's StudentNet from it, prune the student with distilled fine-tuning,
# then evaluate, summarise and predict with the pruned model.
set -euo pipefail
DATA=${1:-../shared/data/food101_10}
OUT=${2:-runs/demo}
NC=${NC:-.venv/bin/netcompress}
SIZE=64

$NC train --model efficientnet_lite0 --data "$DATA" --image-size $SIZE --epochs 3 --lr 5e-4 --out "$OUT/teacher"
$NC distill --teacher "$OUT/teacher/best.safetensors" --student studentnet --data "$DATA" \
    --epochs 10 -T 4 --alpha 0.9 --out "$OUT/student"
$NC prune "$OUT/student/best.safetensors" --data "$DATA" --method slim --rate 0.63 --steps 1 \
    --finetune-epochs 3 --teacher "$OUT/teacher/best.safetensors" --out "$OUT/pruned"
$NC evaluate "$OUT/pruned/step1.safetensors" --data "$DATA" --split validation --out-dir "$OUT/pruned"
$NC summary "$OUT/pruned/step1.safetensors"
$NC predict "$OUT/pruned/step1.safetensors" --data "$DATA" --out "$OUT/pred.csv"
echo "demo finished: models, metrics and plots are in $OUT/"
