#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one go: the CUDA tests, then the GPU rows of the README's
# benchmark table. Run from the repository root, with stg importable (`bash setup.sh`, or
# `pip install -e .`):
#
#     bash benchmarks/gpu.sh                 # uses .venv/bin/python
#     bash benchmarks/gpu.sh python3         # or another interpreter
set -euo pipefail
PY=${1:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
# a test failure does not stop the benchmarks; the script's exit status still reports it
tests=0
STG_TEST_CUDA=1 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_engine.py tests/test_groups.py -k "cuda" || tests=$?
# ResNet-18, 100 tasks, batch 256: against the official structure with its default 0 loader
# workers and with 8 (the stronger baseline)
"$PY" benchmarks/datamap_throughput.py --device cuda --model resnet18 --n 20000 --workers 8
"$PY" benchmarks/datamap_throughput.py --device cuda --model resnet18 --n 20000 --workers 0
# the same with eager steps (no CUDA graph), to show what the graph buys
STG_CUDA_GRAPHS=0 "$PY" benchmarks/datamap_throughput.py --device cuda --model resnet18 --n 20000 --workers 8
"$PY" benchmarks/datamap_throughput.py --device cuda --model cnn --n 20000 --workers 8
# 20 specialists on one batch stream vs one after another, and vs one model
"$PY" benchmarks/specialists_speed.py --device cuda --steps 50 --batch-size 256
"$PY" benchmarks/specialists_speed.py --device cuda --model resnet18-cifar --steps 20 --batch-size 256
exit $tests
