"""A small dataset builder for the dataset-plugin tests (tests/test_dataset_plugins.py), as Python source: written
to a file, it is a plugins-dir plugin (:data:`FOLDER_PLUGIN`) or a module a lazy ``"module:build_blobs"`` names."""

BUILDER = '''
def build_blobs(*, data_root=None, protocol, seed, download=False, num_classes=4, per_class=12):
    """Gaussian blobs, one per class, as 1x8x8 images: a real DatasetSplits built with the app's own helpers."""
    import torch

    from pml_anchors.app.data import TensorImageDataset
    from pml_anchors.app.data.splits import make_splits, stratified_split

    gen = torch.Generator().manual_seed(1234)
    centres = 2.0 * torch.randn(num_classes, 1, 8, 8, generator=gen)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    images = centres[labels] + 0.3 * torch.randn(len(labels), 1, 8, 8, generator=gen)
    train_idx, test_idx = stratified_split(labels, 0.25, seed)
    return make_splits(
        name="blobs",
        protocol=protocol,
        seed=seed,
        train_pool=TensorImageDataset(images[train_idx], labels[train_idx]),
        test_pool=TensorImageDataset(images[test_idx], labels[test_idx]),
        class_names=[f"blob{c}" for c in range(num_classes)],
        input_shape=(1, 8, 8),
    )
'''

#: a plugins-dir file registering ``blobs`` (its builder defined in the file itself)
FOLDER_PLUGIN = (
    BUILDER
    + """

from pml_anchors import hookimpl


@hookimpl
def register_datasets(register):
    register("blobs", build_blobs)
"""
)
