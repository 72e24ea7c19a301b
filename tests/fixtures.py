"""Official-format CIFAR fixtures built from the real pieces in ``tests/data`` (see its README.md).

The pickles are written the way the official ones are laid out (dicts with bytes keys, ``data``
an (N, 3072) uint8 row-major CHW numpy array, labels as lists of ints), so the real loaders read
them through their normal path. The ``meta`` / ``batches.meta`` files are the official ones.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np

TEST_DATA = Path(__file__).resolve().parent / "data"

# The CIFAR-10 fixture: 5 data batches of CIFAR10_BATCH images + a test_batch of CIFAR10_TEST images,
# cut in order from the 400 real images of ``tests/data/cifar10_train_first400.npz``.
CIFAR10_BATCH = 60
CIFAR10_TRAIN = 5 * CIFAR10_BATCH  # 300
CIFAR10_TEST = 100

# The standard CIFAR-100 superclasses (coarse label order = the official meta's coarse names).
CIFAR100_SUPERCLASSES: dict[str, tuple[str, ...]] = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}


def _meta_names(path: Path, key: bytes) -> list[str]:
    with open(path, "rb") as f:
        return [n.decode() for n in pickle.load(f, encoding="bytes")[key]]


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=4)


def _rows(images_hwc: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) HWC -> (N, 3072) row-major CHW, the official layout."""
    return np.ascontiguousarray(images_hwc.transpose(0, 3, 1, 2).reshape(len(images_hwc), 3072))


def fine_to_coarse(meta: Path) -> np.ndarray:
    """(100,) int64 coarse label of every fine label, from the standard superclass lists."""
    fine = _meta_names(meta, b"fine_label_names")
    coarse = _meta_names(meta, b"coarse_label_names")
    table = np.full(100, -1, dtype=np.int64)
    for c, name in enumerate(coarse):
        for member in CIFAR100_SUPERCLASSES[name]:
            table[fine.index(member)] = c
    assert (table >= 0).all()
    return table


def write_cifar100(root: Path) -> Path:
    """root/cifar-100-python/{train,test,meta}: train = the 100 real images, test = the last 20."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(TEST_DATA / "cifar-100-python" / "meta", folder / "meta")
    z = np.load(TEST_DATA / "cifar100_train_first100.npz")
    images, fine = z["images"], z["fine_labels"].astype(np.int64)
    coarse = fine_to_coarse(folder / "meta")[fine]
    for split, sl in (("train", slice(0, 100)), ("test", slice(80, 100))):
        _dump(folder / split, {
            b"filenames": [f"img_{i}.png".encode() for i in range(100)][sl],
            b"batch_label": f"{split} fixture".encode(),
            b"fine_labels": fine[sl].tolist(),
            b"coarse_labels": coarse[sl].tolist(),
            b"data": _rows(images[sl]),
        })
    return root


def write_cifar10(root: Path) -> Path:
    """root/cifar-10-batches-py: 5 data batches of 60 + test_batch of 100 from 400 real images."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(TEST_DATA / "cifar-10-batches-py" / "batches.meta", folder / "batches.meta")
    z = np.load(TEST_DATA / "cifar10_train_first400.npz")
    images, labels = z["images"], z["labels"].astype(np.int64)
    assert len(images) == CIFAR10_TRAIN + CIFAR10_TEST
    size = CIFAR10_BATCH
    parts = [(f"data_batch_{i + 1}", slice(size * i, size * (i + 1))) for i in range(5)]
    parts.append(("test_batch", slice(CIFAR10_TRAIN, CIFAR10_TRAIN + CIFAR10_TEST)))
    for name, sl in parts:
        _dump(folder / name, {
            b"batch_label": name.encode(),
            b"labels": labels[sl].tolist(),
            b"data": _rows(images[sl]),
            b"filenames": [f"img_{i}.png".encode() for i in range(sl.start, sl.stop)],
        })
    return root
