"""The datasets a run trains and evaluates on, split by protocol (``same_class`` or ``open_set``).

:func:`load_dataset` builds a :class:`DatasetSplits` by name (``digits``, ``mnist``, ``imagefolder``, or one added
with :func:`register_dataset`); :mod:`~pml_anchors.app.data.mnist_idx` prepares a torchvision MNIST root from IDX
files.
"""

from .datasets import (
    PROTOCOLS,
    DatasetSplits,
    LabeledSubset,
    TensorImageDataset,
    available_datasets,
    default_data_root,
    get_labels,
    load_dataset,
    register_dataset,
    subset,
)
from .mnist_idx import MNIST_FILES, prepare_mnist_root

__all__ = [
    "MNIST_FILES",
    "PROTOCOLS",
    "DatasetSplits",
    "LabeledSubset",
    "TensorImageDataset",
    "available_datasets",
    "default_data_root",
    "get_labels",
    "load_dataset",
    "prepare_mnist_root",
    "register_dataset",
    "subset",
]
