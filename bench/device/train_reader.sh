#!/usr/bin/env bash
# Issue 10's reader training on the device machine (one NVIDIA H100/H200), in one `run` call:
#
#   device run  command: bash bench/device/train_reader.sh   carry: [".device"]   timeout_s: 600
#
# after `bash bench/device/slim.sh on SQUAD_TRAIN_JSON_GZ` here. It continues the reader in .device/init (the
# newest bundled version's) on all of SQuAD train but the held-out articles (seed 13, as every bundled
# reader), answers up to 20 wordpieces, whole paragraphs, bf16 autocast with fp32 weights and AdamW, for EPOCHS
# epochs or MINUTES minutes, whichever ends first (the learning rate decays to 0 at the first of the two), then
# evaluates the fp16 weights on the held-out gold paragraphs. Results come back under $OUT: the fp16 reader cut
# in 15 MB parts (the device tool returns files of at most 16 MiB), its sha256, reader_config.json,
# train_report.json and the log. Join them here with
#
#   cat FILES_AT/reader.safetensors.part-* > reader.safetensors && sha256sum -c FILES_AT/reader.sha256
#
# Every setting can be overridden from the environment (a CPU dry run: DEVICE=cpu MAX_QUESTIONS=64 ...).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:?"set OUT (the device tool sets it)"}
DEVICE=${DEVICE:-auto} EPOCHS=${EPOCHS:-2} MINUTES=${MINUTES:-6} BATCH=${BATCH:-32} LR=${LR:-5e-5}
NEGATIVES=${NEGATIVES:-1} WINDOW=${WINDOW:-0} SEQ=${SEQ:-384} WIDTH=${WIDTH:-20} MAX_QUESTIONS=${MAX_QUESTIONS:-0}
WORK=${WORK:-/tmp/realmqa-train}
{
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")'
  nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null || true
  rm -rf "$WORK"
  PYTHONPATH=. python3 -m realm_core.train_reader --squad .device/squad-train.json.gz --init-reader .device/init \
    --out "$WORK" --seed 13 --heldout-questions 2000 --epochs "$EPOCHS" --max-minutes "$MINUTES" \
    --batch-size "$BATCH" --lr "$LR" --warmup 0.02 --negatives "$NEGATIVES" --train-window "$WINDOW" \
    --reader-seq-len "$SEQ" --max-span-width "$WIDTH" --max-questions "$MAX_QUESTIONS" --device "$DEVICE" \
    --save-every 500
} 2>&1 | tee "$OUT/train.log"
split -b 15000000 -d "$WORK/reader.safetensors" "$OUT/reader.safetensors.part-"
(cd "$WORK" && sha256sum reader.safetensors) > "$OUT/reader.sha256"
cp "$WORK/reader_config.json" "$WORK/train_report.json" "$OUT/"
ls -la "$OUT"
