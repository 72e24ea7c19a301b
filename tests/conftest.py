import os
import sys
from pathlib import Path

# The suite's exact checks (bitwise resume, fused == separate models, ...) are CPU checks, so on a GPU
# machine the suite still runs on the CPU ("auto" finds no GPU), subprocesses included.
# STG_TEST_CUDA=1 keeps the GPU visible for tests/test_cuda.py (benchmarks/gpu.sh sets it).
if os.environ.get("STG_TEST_CUDA") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import torch  # noqa: E402  (after the GPU is hidden)

# float32 comparisons keep float32 tolerances on a GPU too
torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

sys.path.insert(0, str(Path(__file__).resolve().parent))
