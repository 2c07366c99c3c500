#!/bin/bash
# One device call (after bench/gpu/prepare.sh here), carry [".gpu", ".whl"]:
#   bash bench/gpu/run.sh
# Installs the carried wheels, builds SmolLM2-135M's architecture with random weights (its checkpoint is
# too large to carry), then runs the GPU checks and the bf16 training comparison with TRL, each under its
# own time limit; every log lands in $OUT.
set -u
export PYTHONUNBUFFERED=1 REWARDSTACK_HOME=/tmp/rshome TOKENIZERS_PARALLELISM=false
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $OUT/env.txt
python3 -c "import torch, transformers, trl; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__)" 2>&1 | tee -a $OUT/env.txt
python3 bench/gpu/random_smollm2.py 2>&1 | tee -a $OUT/env.txt
timeout ${CHECKS_S:-170} python3 bench/gpu/checks.py 2>&1 | grep -v Warning | tee $OUT/checks.txt
timeout ${TRAIN_S:-210} python3 bench/train_vs_trl.py --device cuda --bf16 --data .gpu/data/hh_rlhf_harmless --pairs ${PAIRS:-2048} --max-length 256 --test-pairs 256 2>&1 | grep -v -i warn | tee $OUT/train_256.txt
timeout ${LONG_S:-110} python3 bench/train_vs_trl.py --device cuda --bf16 --data .gpu/data/hh_rlhf_harmless --pairs ${LONG_PAIRS:-512} --max-length 1024 --test-pairs 128 --variants share+pack trl 2>&1 | grep -v -i warn | tee $OUT/train_1024.txt
