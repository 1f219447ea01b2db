#!/usr/bin/env bash
# Prepare `.gpu/` (git-ignored), the files the GPU check carries to a machine with no network:
# the DeepSpeed source distribution and the wheels it needs that the GPU image lacks (Python 3.12),
# plus SmolLM2's config.json and tokenizer (not its 538 MB of weights). About 8 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=".venv/bin/pip"
mkdir -p .gpu/whl .gpu/smollm2
grep -qxF '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
$PIP download -q --no-deps --no-binary :all: -d .gpu/whl deepspeed==0.19.8
$PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .gpu/whl pydantic pydantic-core annotated-types typing-inspection hjson blake3 xxhash
src=$(.venv/bin/python -c "from ixt_stream import models; from ixt_stream.config import ModelConfig; print(models.resolve(ModelConfig()))")
cp "$src"/*.json "$src"/chat_template.jinja .gpu/smollm2/
du -sh .gpu
