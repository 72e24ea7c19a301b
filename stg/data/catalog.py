"""The built-in dataset names, in a module with no heavy imports so `stg --help` and `stg group`
start without loading PyTorch."""

DATASET_NAMES = ("fashion-sample", "fashion-mnist", "cifar10", "cifar100", "synthetic-hierarchy", "celeba")
