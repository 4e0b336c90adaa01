#!/usr/bin/env bash
# `make bench`: runs every benchmark medfl-bench knows with its default settings.
set -u
bench=${1:-bin/medfl-bench}
for name in $("$bench" --help | awk '/^Commands:/{on=1;next} on && NF{print $1}'); do
  echo "=== medfl-bench $name"
  "$bench" "$name" || echo "medfl-bench $name failed"
done
