#!/usr/bin/env bash
# Builds offline from Debian's Go sources: writes an alternate go.mod (for
# `go -modfile=OUT`) that is IN_GO_MOD plus one `replace` per module of the
# build graph, pointing at Debian's copy under /usr/share/gocode/src, or at an
# empty stand-in module for what Debian does not ship (the graph names modules
# such as github.com/envoyproxy/go-control-plane that no package we build
# imports; the go command only reads their go.mod).
#
#   debian-modfile.sh IN_GO_MOD OUT_MODFILE STUB_DIR
#
# The committed go.mod stays a plain one that `go get` resolves from the module
# proxy; this file is for machines without one (CI, air-gapped developers).
# Directory replacements need no go.sum, so none is written either.
set -euo pipefail

in_mod=$1
out_mod=$2
stub_dir=$3
gocode=${GOCODE_SRC:-/usr/share/gocode/src}

[[ $out_mod == *.mod ]] || { echo "debian-modfile.sh: $out_mod must end in .mod" >&2; exit 2; }
mkdir -p "$stub_dir"
in_dir=$(cd "$(dirname "$in_mod")" && pwd)

# Module paths required by a go.mod (single lines and blocks).
requires() {
  awk '
    /^require[ \t]*\(/ { block = 1; next }
    block && /^\)/      { block = 0; next }
    block && NF >= 2 && $1 !~ /^\/\// { print $1 }
    /^require[ \t]+[^( \t]/ { print $2 }
  ' "$1"
}

# Directories the input go.mod already replaces a module with (its own
# `replace path => ./dir` lines): followed, not replaced again.
declare -A local_dir=()
while read -r path dir; do
  [[ $dir == /* ]] || dir="$in_dir/$dir"
  local_dir[$path]=$dir
done < <(awk '/^replace[ \t]/ && $3 == "=>" && ($4 ~ /^[.\/]/) { print $2, $4 }' "$in_mod")

declare -A seen=()
replaces=()
queue=()
while read -r path; do queue+=("$path"); done < <(requires "$in_mod")

while ((${#queue[@]})); do
  path=${queue[0]}
  queue=("${queue[@]:1}")
  [[ -n ${seen[$path]:-} ]] && continue
  seen[$path]=1
  if [[ -n ${local_dir[$path]:-} ]]; then
    mod="${local_dir[$path]}/go.mod"
  elif [[ -f "$gocode/$path/go.mod" ]] && grep -qx "module $path" "$gocode/$path/go.mod"; then
    mod="$gocode/$path/go.mod"
    replaces+=("	$path => $gocode/$path")
  else
    mkdir -p "$stub_dir/$path"
    printf 'module %s\n' "$path" >"$stub_dir/$path/go.mod"
    replaces+=("	$path => $stub_dir/$path")
    continue
  fi
  while read -r req; do queue+=("$req"); done < <(requires "$mod")
done

{
  cat "$in_mod"
  echo
  echo "// Offline build from Debian's sources (written by clients/go/debian-modfile.sh)."
  echo "replace ("
  printf '%s\n' "${replaces[@]}" | sort
  echo ")"
} >"$out_mod"
