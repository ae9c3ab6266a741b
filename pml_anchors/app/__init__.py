"""The training application: configure, train, evaluate, checkpoint, resume, benchmark and use a trained run.

* :mod:`~pml_anchors.app.config`: :class:`TrainConfig`; :mod:`~pml_anchors.app.session`: :func:`build`,
  :func:`train`, :func:`run`; :mod:`~pml_anchors.app.trainer`: PML's ``MetricLossOnly`` with mixed precision;
  :mod:`~pml_anchors.app.optimizers`, :mod:`~pml_anchors.app.lr_schedules`, :mod:`~pml_anchors.app.seeding`;
* :mod:`~pml_anchors.app.checkpoints`, :mod:`~pml_anchors.app.resume`, :mod:`~pml_anchors.app.reload`,
  :mod:`~pml_anchors.app.results` (``results.json``), :mod:`~pml_anchors.app.inference` (:func:`load_trained`);
* :mod:`~pml_anchors.app.data`, :mod:`~pml_anchors.app.models`: datasets and backbones;
* :mod:`~pml_anchors.app.baselines`, :mod:`~pml_anchors.app.bench`, :mod:`~pml_anchors.app.plots`: PML's losses
  trained the same way, and the benchmark;
* :mod:`~pml_anchors.app.launch`: ``--nproc`` and ``torchrun`` data-parallel training
  (:mod:`~pml_anchors.app.torchrun_env`: the environment ``torchrun`` gives a worker);
* :mod:`~pml_anchors.app.tune`, :mod:`~pml_anchors.app.tuned_bench`, :mod:`~pml_anchors.app.selection`: tuning on
  validation folds, the tuned benchmark, best-epoch selection.

Importing this package imports nothing heavy; import the module you need.
"""
