#!/usr/bin/env bash
# Regenerates the image lock files from pyproject.toml (`make lock`): one per image, with hashes.
#
#   api.txt          the API image: the base install and [s3] (no torch; numpy and Pillow decode pictures)
#   worker-cpu.txt   the worker image: [worker] and [s3] with torch's CPU build
#   worker-cuda.txt  the GPU worker image: [worker] and [s3] with torch's CUDA build
#
# [s3] (boto3) is in every image: the API and the workers both read and write results, and any of them may be
# pointed at an S3 bucket (DIFFUSETV_RESULTS=s3://...) without another build.
#
# Each is resolved for the images' platform (Python 3.11 on Linux x86_64, glibc 2.28+), whatever this
# machine is. The CPU torch build is not on the main index: set TORCH_CPU_INDEX_URL to PyTorch's CPU wheel
# index (the Dockerfile's TORCH_INDEX_URL), or TORCH_CPU_FIND_LINKS to a folder holding that wheel.
set -euo pipefail
cd "$(dirname "$0")/../.."

UV="${UV:-uv}"
LOCKS=deploy/locks
compile=(
    "$UV" pip compile --quiet --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28
    --custom-compile-command "make lock" --no-strip-markers
)
torch_cpu=()
[[ -n "${TORCH_CPU_FIND_LINKS:-}" ]] && torch_cpu+=(--find-links "$TORCH_CPU_FIND_LINKS")
[[ -n "${TORCH_CPU_INDEX_URL:-}" ]] && torch_cpu+=(--extra-index-url "$TORCH_CPU_INDEX_URL" --index-strategy unsafe-best-match)
if [[ ${#torch_cpu[@]} -eq 0 ]]; then
    echo "$0: set TORCH_CPU_INDEX_URL (PyTorch's CPU wheel index) or TORCH_CPU_FIND_LINKS (a folder with the wheel)" >&2
    exit 2
fi

"${compile[@]}" pyproject.toml --extra s3 "$LOCKS/build.in" -o "$LOCKS/api.txt"
"${compile[@]}" "${torch_cpu[@]}" pyproject.toml --extra worker --extra s3 "$LOCKS/build.in" "$LOCKS/torch-cpu.in" \
    -o "$LOCKS/worker-cpu.txt"
"${compile[@]}" pyproject.toml --extra worker --extra s3 "$LOCKS/build.in" "$LOCKS/torch-cuda.in" \
    -o "$LOCKS/worker-cuda.txt"
echo "wrote $LOCKS/api.txt, $LOCKS/worker-cpu.txt, $LOCKS/worker-cuda.txt"
