#!/bin/sh
# Entrypoint of the realmqa image (run by tini, which forwards signals): seeds an empty REALMQA_HOME with the
# bundled default (models/, indexes/, corpus/, heldout/), then replaces itself with the command.
# Several containers may start on one empty volume at once (realmqa and the worker, or replicas on a shared
# volume): flock on a file in the home lets one copy; each directory is copied beside and renamed into place,
# models/ last, so a home with models/ is a complete one. A home that already has models/ is never touched.
set -eu
home="${REALMQA_HOME:-/data}"
bundle="${REALMQA_BUNDLE:?REALMQA_BUNDLE names the bundled home}"
if [ ! -d "$home/models" ]; then
  mkdir -p "$home"
  (
    flock 9
    if [ ! -d "$home/models" ]; then
      echo "realmqa-entrypoint: seeding $home with the bundled default" >&2
      for d in corpus heldout indexes models; do
        if [ -d "$bundle/$d" ] && [ ! -e "$home/$d" ]; then
          rm -rf "$home/.seed-$d"
          cp -R "$bundle/$d" "$home/.seed-$d"
          mv "$home/.seed-$d" "$home/$d"
        fi
      done
    fi
  ) 9>"$home/.seed.lock"
fi
exec "$@"
