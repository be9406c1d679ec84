#!/usr/bin/env bash
# Run on the development machine, from the repository root, before the one device call
# (docs/gpu.md, "On the lent GPU machine").  Fills the ignored folder .gpu/ with what the GPU
# machine lacks (it has no package index and no ../shared):
#   .gpu/*                 the PyCUDA bundle of ../shared/gpu/bundle (setup-on-device.sh, wheel)
#   .gpu/wheels/lmdb-*.whl the lmdb wheel for its Python 3.12 (the main job reads LMDBs)
#   .gpu/shared/           data/mnist and models/ from ../shared (about 3 MB)
# and keeps .gpu/ out of git.  Then: run(command="bash benchmarks/gpu/device_run.sh",
# carry=[".gpu"], timeout_s=600).
set -euo pipefail
shared=${CAFFE_LITE_SHARED:-../shared}
[ -d "$shared/gpu/bundle" ] || { echo "no $shared/gpu/bundle (set CAFFE_LITE_SHARED)"; exit 1; }
mkdir -p .gpu/wheels .gpu/shared/data
cp "$shared"/gpu/bundle/* .gpu/
rm -rf .gpu/shared/data/mnist .gpu/shared/models
cp -r "$shared/data/mnist" .gpu/shared/data/
cp -r "$shared/models" .gpu/shared/
chmod -R u+w .gpu
if ! ls .gpu/wheels/lmdb-*cp312*.whl >/dev/null 2>&1; then
  python3 -m pip download -q lmdb --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 -d .gpu/wheels
fi
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qx '/.gpu/' "$exclude" 2>/dev/null || echo '/.gpu/' >> "$exclude"
git rev-parse HEAD > .gpu/commit 2>/dev/null || true
du -sh .gpu
echo 'ready: run(command="bash benchmarks/gpu/device_run.sh", carry=[".gpu"], timeout_s=600)'
