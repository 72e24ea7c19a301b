import os
import sys
from pathlib import Path

# The suite's exact checks (bitwise resume, fused == separate models, ...) are CPU checks, so on a GPU
# machine the suite still runs on the CPU ("auto" finds no GPU), subprocesses included.
# STG_TEST_CUDA=1 keeps the GPU visible for tests/test_cuda.py (benchmarks/gpu.sh sets it).
if os.environ.get("STG_TEST_CUDA") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

sys.path.insert(0, str(Path(__file__).resolve().parent))
