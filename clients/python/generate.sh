#!/usr/bin/env bash
# Regenerates the Python stubs from proto/ with grpcio-tools (which bundles
# protoc). CI runs it and fails if the committed stubs differ.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out="$here/tokend_client/_gen"
rm -rf "$out"
mkdir -p "$out"
python3 -m grpc_tools.protoc -I "$root/proto" \
  --python_out="$out" --grpc_python_out="$out" --pyi_out="$out" \
  "$root/proto/tokend/v1/tokend.proto"
touch "$out/__init__.py" "$out/tokend/__init__.py" "$out/tokend/v1/__init__.py"
