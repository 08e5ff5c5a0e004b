#!/usr/bin/env bash
# Fit this checkout into the device machine's 64 MiB working-tree limit (/work/.library/device/README.md) for
# the length of a device session, and undo it after.
#
#   bash bench/device/slim.sh on SQUAD_TRAIN_JSON_GZ [MODEL_DIR]   # before the first device `run`
#   bash bench/device/slim.sh off                                  # after the last one, before any commit
#   bash bench/device/slim.sh size                                 # MB that would travel, .device/ included
#
# The bundled home (service/default: 9 model versions of ~45 MB, 137 MB of indexes) is ~568 MB of tracked
# files, and the device tool sends every tracked file. `on` removes service/default from git's index only
# (the files stay on disk, `git status` shows them as staged deletions) and hides them in .git/info/exclude,
# then stages into the ignored folder .device/ (.gitignore) what train_reader.sh reads: the SQuAD train file and the reader
# to continue from (MODEL_DIR, default the newest minilm-squad version). `off` puts the index and the exclude file back.
# Never commit while it is on.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
EXCLUDE=.git/info/exclude
MARK="# realmqa bench/device/slim.sh"
size() {
  { git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 -r du -cb 2>/dev/null | tail -1 \
    | awk -v d="$(du -sb .device 2>/dev/null | cut -f1)" '{printf "%.1f MB (%.1f MiB) would travel with .device carried\n", ($1+d)/1e6, ($1+d)/1048576}'
}
case "${1:-}" in
  on)
    squad=${2:?"usage: slim.sh on SQUAD_TRAIN_JSON_GZ [MODEL_DIR]"}
    model=${3:-$(ls -d service/default/models/minilm-squad/*/ | sort -V | tail -1)}
    model=${model%/}
    [ -f "$squad" ] || { echo "slim.sh: no SQuAD file $squad" >&2; exit 2; }
    [ -f "$model/reader.safetensors" ] || { echo "slim.sh: no $model/reader.safetensors" >&2; exit 2; }
    grep -qxF "$MARK" "$EXCLUDE" 2>/dev/null || printf '%s\n/service/default/\n' "$MARK" >> "$EXCLUDE"
    git rm -r -q --cached service/default
    rm -rf .device && mkdir -p .device/init
    cp "$squad" .device/squad-train.json.gz
    cp "$model"/reader.safetensors "$model"/reader_config.json "$model"/tokenizer.json .device/init/
    size ;;
  off)
    git reset -q HEAD -- service/default
    if [ -f "$EXCLUDE" ]; then
      python3 - "$EXCLUDE" "$MARK" <<'PY'
import sys
path, mark = sys.argv[1], sys.argv[2]
lines = open(path).read().splitlines()
if mark in lines:
    i = lines.index(mark)
    del lines[i : i + 2]
open(path, "w").write("".join(l + "\n" for l in lines))
PY
    fi
    git status --short service/default | head -3
    echo "slim.sh: service/default is tracked again; .device/ is left (rm -rf .device)" ;;
  size) size ;;
  *) sed -n 2,14p "$0"; exit 2 ;;
esac
