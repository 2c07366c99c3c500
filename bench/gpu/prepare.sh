#!/bin/bash
# Gathers what one device call needs into two git-ignored folders of the checkout, to be named in the
# device tool's `carry`: .gpu (SmolLM2's tokenizer and config, the first rows of hh_rlhf_harmless) and
# .whl (wheels the GPU image lacks, for Python 3.12). The data rows stay out of the repository.
set -eu
cd "$(dirname "$0")/../.."
grep -qx '/.gpu/' .git/info/exclude || echo /.gpu/ >> .git/info/exclude
grep -qx '/.whl/' .git/info/exclude || echo /.whl/ >> .git/info/exclude
cache=${REWARDSTACK_HOME:-$HOME/.cache/rewardstack}/backbones/smollm2-135m
mkdir -p .gpu/smollm2 .gpu/data/hh_rlhf_harmless .whl
cp "$cache"/{config.json,tokenizer.json,tokenizer_config.json,chat_template.jinja,generation_config.json} .gpu/smollm2/
python3 - <<'PY'
import gzip
for name, rows in (("train", 4096), ("test", 512)):
    with gzip.open(f"../shared/data/hh_rlhf_harmless/{name}.jsonl.gz", "rt") as src, gzip.open(f".gpu/data/hh_rlhf_harmless/{name}.jsonl.gz", "wt") as out:
        for i, line in zip(range(rows), src):
            out.write(line)
PY
version() { .venv/bin/python -c "import importlib.metadata as m; print(m.version('$1'))"; }
for package in transformers trl peft datasets dill multiprocess gguf fastapi starlette pydantic pydantic_core annotated-types typing-inspection opentelemetry-api typing_extensions; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$package==$(version $package)"
done
du -sh .gpu .whl
