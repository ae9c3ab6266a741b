"""The datasets a run trains and evaluates on, split by protocol (``same_class`` or ``open_set``).

One module per job: :mod:`~pml_anchors.app.data.containers` (:class:`DatasetSplits` and the dataset classes),
:mod:`~pml_anchors.app.data.splits` (the protocols and seeded splits), one module per dataset family
(:mod:`~pml_anchors.app.data.digits`, :mod:`~pml_anchors.app.data.mnist`, :mod:`~pml_anchors.app.data.imagefolder`;
:mod:`~pml_anchors.app.data.mnist_idx` prepares a torchvision MNIST root from IDX files offline) and
:mod:`~pml_anchors.app.data.registry` (:func:`load_dataset` by name, :func:`register_dataset`).
"""

from .containers import DatasetSplits, LabeledSubset, TensorImageDataset, default_data_root, get_labels, subset
from .mnist import MNIST_MEAN, MNIST_STD
from .mnist_idx import MNIST_FILES, prepare_mnist_root
from .registry import DATASETS, available_datasets, load_dataset, register_dataset
from .splits import PROTOCOLS

__all__ = [
    "DATASETS",
    "MNIST_FILES",
    "MNIST_MEAN",
    "MNIST_STD",
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
