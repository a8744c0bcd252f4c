#!/usr/bin/env bash
# Builds the submission archive (`make dist`): dist/dropsync.tar.gz, or the
# path given as $1.
#
# The assignment asks for the Makefile, the README / writeup and the source
# code with its related files, and for no object files, no large test files
# and no version-control files. So the archive holds the files git tracks
# (sources, Cargo.toml/Cargo.lock, docs/, scripts/, contrib/, fuzz targets,
# .ci/run), all under one top folder `dropsync/`, minus git's own files
# (.gitignore and the like). Build outputs (target/, ./server, ./client,
# dist/) are never tracked. A tracked file above DIST_MAX_FILE_KB (default
# 1024) stops the build: decide whether it belongs rather than ship it.
#
# Only committed-or-staged paths are included (their working-tree content):
# a new file is in the archive once it is tracked. Outside a git checkout
# (e.g. in an unpacked archive) the files are found on disk instead, skipping
# the same build outputs that .gitignore lists.
#
# The archive is reproducible: sorted entries, fixed owner, every mtime set
# to the last commit's time (or 2000-01-01 without git), gzip without a
# timestamp.
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-dist/dropsync.tar.gz}
max_kb=${DIST_MAX_FILE_KB:-1024}
top=dropsync

list=$(mktemp)
stage=$(mktemp -d)
trap 'rm -rf "$list" "$stage"' EXIT

# Paths that never go in: version-control files and build outputs (the
# latter only matter for the fallback without git; git tracks none).
excluded() {
  case "$1" in
    .git | .git/* | */.git | */.git/*) return 0 ;;
    .gitignore | */.gitignore | .gitattributes | */.gitattributes | .gitmodules) return 0 ;;
    target/* | */target/* | dist/* | fuzz/corpus/* | fuzz/artifacts/* | fuzz/Cargo.lock) return 0 ;;
    server | client | *.tar.gz | *.o | *.a | *.so | *.rlib | *.rmeta | *.pcap | *.pcapng) return 0 ;;
  esac
  return 1
}

if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  source_desc="git ls-files"
  mtime=$(git log -1 --format=%ct 2>/dev/null || echo 946684800)
  git ls-files -z | tr '\0' '\n' >"$list.all"
  untracked=$(git ls-files --others --exclude-standard | wc -l)
  modified=$(git diff --name-only HEAD 2>/dev/null | wc -l)
  if [ "$untracked" -gt 0 ] || [ "$modified" -gt 0 ]; then
    echo "dist: warning: $modified tracked file(s) differ from the last commit (their current content is used)" \
      "and $untracked untracked file(s) are left out; \`git status\` shows them" >&2
  fi
else
  source_desc="files on disk (no git checkout)"
  mtime=946684800
  find . \( -name .git -o -path ./target -o -path ./dist -o -path ./fuzz/target \) -prune -o \
    \( -type f -o -type l \) -print | sed 's|^\./||' | LC_ALL=C sort >"$list.all"
fi

while IFS= read -r path; do
  [ -n "$path" ] || continue
  excluded "$path" && continue
  # A tracked file deleted in the working tree is not shipped.
  [ -e "$path" ] || [ -L "$path" ] || continue
  printf '%s\n' "$path"
done <"$list.all" | LC_ALL=C sort >"$list"
rm -f "$list.all"

too_big=()
while IFS= read -r path; do
  if [ -f "$path" ] && [ "$(stat -c %s "$path")" -gt $((max_kb * 1024)) ]; then
    too_big+=("$path ($(($(stat -c %s "$path") / 1024)) KiB)")
  fi
done <"$list"
if [ ${#too_big[@]} -gt 0 ]; then
  echo "dist: files above ${max_kb} KiB (large files do not belong in the submission; DIST_MAX_FILE_KB raises the limit):" >&2
  printf '  %s\n' "${too_big[@]}" >&2
  exit 1
fi

for required in Makefile README.md Cargo.toml Cargo.lock; do
  grep -qx "$required" "$list" || { echo "dist: $required is missing (not tracked?)" >&2; exit 1; }
done

# Stage under dropsync/ so the archive unpacks into one folder.
mkdir -p "$stage/$top"
tar -cf - -T "$list" | tar -xf - -C "$stage/$top"

mkdir -p "$(dirname "$out")"
tmp_out="$out.tmp.$$"
tar -C "$stage" --sort=name --owner=0 --group=0 --numeric-owner \
  --mtime="@$mtime" --mode='u+rw,go+r,go-w' -cf - "$top" | gzip -n -9 >"$tmp_out"
mv "$tmp_out" "$out"

echo "dist: $out: $(wc -l <"$list") files from $source_desc, $(($(stat -c %s "$out") / 1024)) KiB"
