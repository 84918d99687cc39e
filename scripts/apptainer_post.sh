#!/usr/bin/env bash
# Run the build steps of container/apptainer.def without a container engine: copy its %files
# under a scratch root, then run its %post there with a fresh Python 3.11 venv as `python`,
# resolving from the package index alone (no local wheel folders), as a clean image build does.
# So the image's package set -- the CUDA build of the pinned torch included -- is installed and
# checked against requirements.txt (`trainflow check-pins --cuda` inside %post) on a machine
# that has no Apptainer. Downloads ~4 GB of CUDA wheels.
#   scripts/apptainer_post.sh [SCRATCH]        (default /tmp/apptainer-post)
# Writes the package list to SCRATCH/packages.txt; then runs %test, and %runscript with `show`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
def="$root/container/apptainer.def"
work=${1:-/tmp/apptainer-post}
rm -rf "$work"
mkdir -p "$work"
python3.11 -m venv "$work/venv"
section() { awk -v s="%$1" '$1 == s {f = 1; next} /^%/ {f = 0} f' "$def"; }
section files | while read -r src dest; do
  [ -n "${src:-}" ] || continue
  mkdir -p "$work$(dirname "$dest")"
  cp -r "$root/$src" "$work$dest"
done
run() {  # run a section of the definition under the scratch root, with the venv's python first
  local body
  body=$(section "$1" | sed "s#/opt/trainflow#$work/opt/trainflow#g")
  shift
  env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null PATH="$work/venv/bin:$PATH" \
    bash -c "$(section environment)"$'\n'"$body" runscript "$@"
}
run post
"$work/venv/bin/python" -m pip list --format=freeze > "$work/packages.txt"
echo "apptainer %post ran: $(wc -l < "$work/packages.txt") packages in $work/packages.txt"
run test
echo "apptainer %test passed"
run runscript show > "$work/show.txt"
echo "apptainer %runscript show: $(grep -c '^Step' "$work/show.txt") steps"
