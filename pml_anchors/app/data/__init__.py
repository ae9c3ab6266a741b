"""The datasets a run trains and evaluates on, split by protocol (``same_class`` or ``open_set``).

One module per job: :mod:`~pml_anchors.app.data.containers` (:class:`DatasetSplits` and the dataset classes),
:mod:`~pml_anchors.app.data.splits` (the protocols and seeded splits), one module per dataset family
(:mod:`~pml_anchors.app.data.digits`; :mod:`~pml_anchors.app.data.mnist`: MNIST, Fashion-MNIST, KMNIST, EMNIST;
:mod:`~pml_anchors.app.data.torchvision_sets`: CIFAR-10/100, SVHN; :mod:`~pml_anchors.app.data.torchvision_folders`:
Food-101, Caltech-256; :mod:`~pml_anchors.app.data.imagefolder`), helpers (:mod:`~pml_anchors.app.data.mnist_idx`
prepares a torchvision root from IDX files offline; :mod:`~pml_anchors.app.data.pixels`: per-channel statistics and
augmentation of in-memory images) and :mod:`~pml_anchors.app.data.registry` (:func:`load_dataset` by name,
:func:`register_dataset`).
"""

from .containers import DatasetSplits, LabeledSubset, TensorImageDataset, default_data_root, get_labels, subset
from .mnist import EMNIST_DEFAULT_SPLIT, MNIST_MEAN, MNIST_STD
from .mnist_idx import MNIST_FILES, emnist_files, prepare_idx_root, prepare_mnist_root
from .pixels import AugmentedTensorDataset, channel_stats
from .registry import DATASETS, available_datasets, load_dataset, register_dataset
from .splits import PROTOCOLS

__all__ = [
    "DATASETS",
    "EMNIST_DEFAULT_SPLIT",
    "MNIST_FILES",
    "MNIST_MEAN",
    "MNIST_STD",
    "PROTOCOLS",
    "AugmentedTensorDataset",
    "DatasetSplits",
    "LabeledSubset",
    "TensorImageDataset",
    "available_datasets",
    "channel_stats",
    "default_data_root",
    "emnist_files",
    "get_labels",
    "load_dataset",
    "prepare_idx_root",
    "prepare_mnist_root",
    "register_dataset",
    "subset",
]
