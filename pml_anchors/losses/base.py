"""The shared base class of anchor- and proxy-based losses, on PML's ``BaseMetricLossFunction``.

A subclass implements :meth:`AnchorLoss.anchor_losses` (the loss dict of PML's reducer protocol,
computed from already validated inputs and a cast copy of the anchors) and
:meth:`AnchorLoss.get_logits`. Everything else is here:

* anchors from an initializer name (``"simplex"``), a callable or a tensor; stored as a persistent
  buffer when fixed or an ``nn.Parameter`` when learnable, both exposed as ``.anchors``;
* input validation with messages that say what was expected (labels 1-D integer in range,
  matching batch size and embedding width, finite embeddings);
* compute in the embeddings' dtype/device on a cast *copy* of the anchors: unlike PML's
  ``cast_types`` the stored parameter is never rewritten, so fp64 or bf16-autocast forwards do not
  silently change it;
* ``ref_emb`` rejected like PML's proxy losses; ``indices_tuple`` turned into per-sample weights
  with PML's ``convert_to_weights`` (subclasses decide how to apply them);
* a clear error when a checkpoint's anchors do not fit this loss;
* ``chunk_size``: stream the classes in chunks of that many anchor rows (see :mod:`pml_anchors.losses.logsumexp`),
  so that losses over a million classes fit in memory, with the same values and gradients;
* :meth:`AnchorLoss.cached_anchors`: per-forward transforms of FIXED anchors (normalised copy, squared
  norms, dtype casts) computed once and reused until the buffer changes;
* :meth:`AnchorLoss.geometry` and :meth:`AnchorLoss.target_min_angle`: the anchors' diagnostics, which the base
  :class:`~pml_anchors.TrainerHooks` records every epoch for every method (a method adds its own keys by
  overriding :meth:`~AnchorLoss.geometry`).
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from pytorch_metric_learning.distances import BaseDistance
from pytorch_metric_learning.losses import BaseMetricLossFunction, WeightRegularizerMixin
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from ..anchors.diagnostics import CHEAP_ANGLE_BUDGET, min_angle_within_budget
from ..plugin.api import resolve_initializer
from ..validators import check_bool, check_seed, optional_bool, positive_int
from .anchor_cache import MISSING, AnchorCache
from .inputs import check_embeddings, check_label_range_and_finite, check_labels
from .logsumexp import check_chunk_size

__all__ = ["AnchorLoss", "AnchorsArg"]

AnchorsArg = str | torch.Tensor | Callable[..., torch.Tensor] | None


class AnchorLoss(WeightRegularizerMixin, BaseMetricLossFunction):
    """Base class for losses that compare embeddings with one anchor (or proxy) per class.

    A subclass implements :meth:`anchor_losses` (PML's loss dict) and :meth:`get_logits` (class scores), lists its
    sub-losses in ``_sub_loss_names()`` when it has more than PML's ``["loss"]``, and sets the class attributes below;
    it takes its own hyper-parameters after ``embedding_size`` and passes ``**kwargs`` on to ``super().__init__()``.
    The reference, with a complete minimal subclass: ``docs/losses/anchor_loss.md``.

    :param num_classes: number of classes K (labels must lie in ``[0, K)``).
    :param embedding_size: embedding width d; ``None`` asks :meth:`derive_embedding_size`.
    :param anchors: initializer name, callable ``f(K, d, *, seed, **anchor_kwargs)`` or tensor.
        ``None`` uses the class's ``default_anchors``.
    :param learnable: ``True`` makes the anchors an ``nn.Parameter``; default from the class.
    :param seed: seed for random initializers. The default ``0`` makes every process (e.g. every
        DDP rank) build identical anchors; ``None`` draws from torch's global RNG.
    :param anchor_kwargs: extra keyword arguments for the initializer.
    :param check_finite: raise on NaN/Inf embeddings (eager on CPU: a ``ValueError`` from a host read; on an
        accelerator and under ``torch.compile``: a non-blocking device assertion, see ``docs/compile.md``).
    :param chunk_size: ``None`` (default): all classes at once. A positive int: losses built on
        :func:`pml_anchors.losses.logsumexp.class_logsumexp` process the anchor rows in chunks of this many (whole
        classes), recomputing each chunk in backward: peak memory O(B * chunk_size) instead of
        O(B * num_classes), identical values and gradients (up to float rounding), one more GEMM.
    :param kwargs: PML's ``reducer``, ``distance`` (a method that computes one similarity refuses any other, see
        :meth:`require_distance`), ``weight_regularizer`` (learnable anchors only: on fixed ones it is a
        ``ValueError``), ``weight_reg_weight``, ``embedding_regularizer``, ``weight_init_func`` (applied to learnable
        anchors), ...

    ``load_state_dict`` also takes the ``state_dict`` of the PML loss a method replaces (see
    :meth:`_read_pml_weights`). PML's logging presets record ``num_classes``, ``embedding_size`` and
    :attr:`anchor_geometry` (and a method's hyper-parameters) through ``_record_these``.
    """

    #: Whether anchors are an ``nn.Parameter`` unless ``learnable=`` says otherwise.
    learnable_anchors: bool = False
    #: Initializer used when ``anchors=None``.
    default_anchors: AnchorsArg = "one_hot"
    #: Constructor arguments that decide the anchors' shape, named in shape-mismatch errors.
    shape_arguments: tuple[str, ...] = ("num_classes", "embedding_size")
    #: The PML loss this method replaces (``"NormalizedSoftmaxLoss"``), named in the messages below.
    pml_counterpart: str | None = None
    #: Arguments of :attr:`pml_counterpart` this loss has no counterpart for: ``{name: what to do instead}``. Passing
    #: one is a ``TypeError`` with that advice, instead of PML's bare "unexpected keyword argument".
    refused_pml_arguments: Mapping[str, str] = {}
    #: Names under which PML's losses store their class weights in a ``state_dict``, and how to read them as this
    #: loss's anchors: ``"rows"`` (K x d: ``proxies``) or ``"columns"`` (d x K: ``W``, SoftTriple's ``fc``).
    pml_weight_names: Mapping[str, str] = {"proxies": "rows", "W": "columns", "fc": "columns"}

    def __init__(
        self,
        num_classes: int,
        embedding_size: int | None = None,
        *,
        anchors: AnchorsArg = None,
        learnable: bool | None = None,
        seed: int | None = 0,
        anchor_kwargs: dict[str, Any] | None = None,
        check_finite: bool = True,
        chunk_size: int | None = None,
        **kwargs: Any,
    ):
        chunk_size = check_chunk_size(chunk_size)
        self._refuse_pml_arguments(kwargs)
        custom_init = "weight_init_func" in kwargs
        try:
            super().__init__(**kwargs)
        except TypeError as error:
            raise self._unexpected_argument(error) from None
        if not isinstance(self.distance, BaseDistance):
            raise TypeError(f"distance must be a PML distance (BaseDistance), got {type(self.distance).__name__}")
        self.num_classes = positive_int(num_classes, "num_classes")
        if embedding_size is None:
            embedding_size = self.derive_embedding_size(self.num_classes)
        self.embedding_size = positive_int(embedding_size, "embedding_size")
        learnable = optional_bool(learnable, "learnable")
        self.learnable = self.learnable_anchors if learnable is None else learnable
        self.check_finite = check_bool(check_finite, "check_finite")
        self.chunk_size = chunk_size
        self.seed = check_seed(seed)
        # built outside inference mode even under one: inference tensors cannot be saved for backward or versioned,
        # so a loss built (or a checkpoint loaded) inside ``torch.inference_mode()`` would fail in every later forward
        with torch.inference_mode(False):
            tensor = self.build_anchors(
                self.default_anchors if anchors is None else anchors, seed, anchor_kwargs or {}
            ).clone()
            if self.learnable:
                self.anchors = torch.nn.Parameter(tensor)
                if custom_init:
                    self.weight_init_func(self.anchors)
            else:
                self.register_buffer("anchors", tensor, persistent=True)
        if custom_init and not self.learnable:
            raise ValueError(
                f"weight_init_func initialises learnable anchors, but {type(self).__name__}'s are fixed (a buffer "
                "built by its initializer): choose them with anchors= (a registered name, a callable or a tensor)"
            )
        if self.weight_regularizer is not None and not self.learnable:
            raise ValueError(
                f"weight_regularizer regularises learnable anchors, but {type(self).__name__}'s are fixed (a buffer): "
                "it would add a constant; pass learnable=True to learn (and regularise) them, or leave it out"
            )
        # what PML's logging presets (record-keeper, TensorBoard) record of the loss every log_freq iterations
        self.add_to_recordable_attributes(list_of_names=["num_classes", "embedding_size"], is_stat=False)
        self._record_these.append("anchor_geometry")  # a property: PML's helper would read it before subclasses finish

    def _unexpected_argument(self, error: TypeError) -> TypeError:
        """PML's "``ModuleWithRecords.__init__()`` got an unexpected keyword argument" said of this class, with the
        arguments it does take (its own, then PML's), or ``error`` itself when it is about something else."""
        found = re.search(r"unexpected keyword argument '(\w+)'", str(error))
        if found is None:
            return error
        own: list[str] = []
        pml: list[str] = []
        for cls in type(self).__mro__:
            if cls is torch.nn.Module:
                break
            names = own if issubclass(cls, AnchorLoss) else pml
            for name in inspect.signature(vars(cls).get("__init__", object.__init__)).parameters:
                if name not in ("self", "args", "kwargs") and name not in own + pml:
                    names.append(name)
        return TypeError(
            f"{type(self).__name__}() got an unexpected keyword argument {found.group(1)!r}; it takes "
            f"{', '.join(own)} and PML's {', '.join(pml)}"
        )

    def _refuse_pml_arguments(self, kwargs: Mapping[str, Any]) -> None:
        """A ``TypeError`` with the class's advice for an argument named in :attr:`refused_pml_arguments`."""
        for name in kwargs:
            if name in self.refused_pml_arguments:
                raise TypeError(
                    f"{type(self).__name__} got {name!r}, an argument of PML's {self.pml_counterpart}: "
                    f"{self.refused_pml_arguments[name]}"
                )

    def require_distance(self, accepted: bool, computes: str, default: str) -> None:
        """A ``ValueError`` unless ``accepted``: the method's maths ``computes`` one similarity, which PML calls
        ``default`` (see :mod:`pml_anchors.losses.distances`), and a ``distance=`` it would not honour is refused
        rather than ignored."""
        if not accepted:
            raise ValueError(
                f"{type(self).__name__} computes {computes}; distance must be {default} (the default), got "
                f"{self.distance!r} with normalize_embeddings={self.distance.normalize_embeddings}, "
                f"p={self.distance.p}, power={self.distance.power}"
            )

    # -- anchors --------------------------------------------------------------------------------
    def derive_embedding_size(self, num_classes: int) -> int:
        """Embedding width to use when none is given; methods with a forced width override this."""
        raise ValueError(f"{type(self).__name__} needs embedding_size (got None)")

    def build_anchors(self, anchors: AnchorsArg, seed: int | None, anchor_kwargs: dict[str, Any]) -> torch.Tensor:
        """The anchor tensor from ``anchors=``: a registered initializer name (resolved, then called), a callable
        ``f(num_classes, embedding_size, seed=seed, **anchor_kwargs)`` or a tensor (copied). The result must be a finite
        floating-point tensor of :meth:`expected_anchor_shape`; otherwise a ``TypeError`` or ``ValueError``."""
        if isinstance(anchors, str):
            anchors = resolve_initializer(anchors)
        if callable(anchors) and not torch.is_tensor(anchors):
            tensor = anchors(self.num_classes, self.embedding_size, seed=seed, **anchor_kwargs)
        elif torch.is_tensor(anchors):
            tensor = anchors.detach().clone()
        else:
            raise TypeError(
                "anchors must be an initializer name, a callable f(num_classes, embedding_size, *, seed) "
                f"or a tensor, got {type(anchors).__name__}"
            )
        if not torch.is_tensor(tensor) or not tensor.is_floating_point():
            raise TypeError(f"anchors must be a floating-point tensor, got {getattr(tensor, 'dtype', type(tensor))}")
        if not torch.isfinite(tensor).all():
            raise ValueError("anchors contain NaN or Inf")
        self.check_anchor_shape(tensor)
        return tensor.contiguous()

    def expected_anchor_shape(self) -> tuple[int, ...]:
        """Shape the anchors must have; (K, d) unless a subclass says otherwise."""
        return (self.num_classes, self.embedding_size)

    def check_anchor_shape(self, tensor: torch.Tensor) -> None:
        """A ``ValueError`` naming both shapes unless ``tensor`` has :meth:`expected_anchor_shape`."""
        expected = self.expected_anchor_shape()
        if tuple(tensor.shape) != tuple(expected):
            raise ValueError(
                f"{type(self).__name__}(num_classes={self.num_classes}, embedding_size={self.embedding_size}) "
                f"needs anchors of shape {tuple(expected)}, got {tuple(tensor.shape)}"
            )

    def cast_anchors(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The anchors on the embeddings' device and dtype, as a differentiable copy."""
        return self.anchors.to(device=embeddings.device, dtype=embeddings.dtype)

    def cached_anchors(self, name: str, embeddings: torch.Tensor, compute: Callable[[torch.Tensor], Any]) -> Any:
        """``compute(self.cast_anchors(embeddings))``, cached while the anchors are fixed and unchanged.

        For fixed anchors (a buffer, ``requires_grad=False``) the result is computed once per ``name`` and
        reused for as long as the buffer's version counter, storage, device, dtype and shape and the
        embeddings' device and dtype stay the same: ``load_state_dict``, ``.to()``, ``copy_``/in-place ops,
        assigning a new tensor all invalidate it (and ``load_state_dict``/``.to()`` also drop the cache).
        Writes through ``.data`` bypass torch's version counter: call :meth:`clear_anchor_cache` after them.
        Learnable anchors are never cached (``compute`` runs every call, differentiably). ``compute`` runs
        outside autograd and inference mode; the cached value must not be modified in place.
        """
        anchors = self.anchors
        if anchors.requires_grad:
            return compute(self.cast_anchors(embeddings))
        if torch.compiler.is_compiling():  # inside the compiled graph, recomputed from the buffer at every call
            with torch.no_grad():
                return compute(self.cast_anchors(embeddings))
        key = (
            -1 if anchors.is_inference() else anchors._version,  # inference tensors have no version counter
            anchors.data_ptr(),
            anchors.device,
            anchors.dtype,
            tuple(anchors.shape),
            embeddings.device,
            embeddings.dtype,
        )
        cache = self.anchor_cache
        value = cache.get(name, key)
        if value is MISSING:
            with torch.inference_mode(False), torch.no_grad():
                value = compute(self.cast_anchors(embeddings))
            cache.put(name, key, value)
        return value

    @property
    def anchor_cache(self) -> AnchorCache:
        """What :meth:`cached_anchors` holds (empty for learnable anchors)."""
        cache = self.__dict__.get("_anchor_cache")
        if cache is None:
            cache = self.__dict__["_anchor_cache"] = AnchorCache()
        return cache

    def clear_anchor_cache(self) -> None:
        """Drop everything :meth:`cached_anchors` holds (needed only after writes through ``.data``)."""
        self.anchor_cache.clear()

    def _apply(self, fn, *args, **kwargs):
        self.clear_anchor_cache()
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        self.clear_anchor_cache()
        key = prefix + "anchors"
        self._read_pml_weights(state_dict, prefix)
        if key in state_dict and tuple(state_dict[key].shape) != tuple(self.anchors.shape):
            args = ", ".join(f"{name}={getattr(self, name)}" for name in self.shape_arguments)
            raise ValueError(
                f"checkpoint anchors {key!r} have shape {tuple(state_dict[key].shape)}, but this "
                f"{type(self).__name__}({args}) has anchors of shape {tuple(self.anchors.shape)}; build the loss "
                f"with the checkpoint's {', '.join(self.shape_arguments)} and geometry"
            )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def _read_pml_weights(self, state_dict: dict[str, Any], prefix: str) -> None:
        """A PML loss's ``state_dict`` loads too: its class weights (``W``, ``proxies``, ``fc``) become the anchors.

        ``NormalizedSoftmaxLoss``/``ArcFaceLoss`` store ``W`` as (d, K) columns, ``ProxyAnchorLoss`` ``proxies`` as
        (K, d) rows, ``SoftTripleLoss`` ``fc`` as (d, K * centers) columns, class-major; all are read as this loss's
        anchor rows (reshaped to (K, s, d) for sub-centres). Only when the dict has no ``anchors`` of its own."""
        if prefix + "anchors" in state_dict:
            return
        for name, layout in self.pml_weight_names.items():
            if prefix + name not in state_dict:
                continue
            weight = state_dict.pop(prefix + name)
            rows = weight.T if layout == "columns" else weight
            if rows.numel() != self.anchors.numel():
                raise ValueError(
                    f"PML weights {prefix + name!r} of shape {tuple(weight.shape)} do not fit the anchors of shape "
                    f"{tuple(self.anchors.shape)} of this {type(self).__name__}: build it with the PML loss's "
                    "num_classes and embedding_size"
                )
            state_dict[prefix + "anchors"] = rows.reshape(self.anchors.shape)
            return

    # -- validation -----------------------------------------------------------------------------
    def validate_embeddings(self, embeddings: Any) -> None:
        """A floating-point (batch, embedding_size) tensor, or a ``TypeError``/``ValueError`` saying what was wrong."""
        check_embeddings(embeddings, self.embedding_size)

    def validate_inputs(self, embeddings: Any, labels: Any) -> None:
        """Embeddings as in :meth:`validate_embeddings`, one integer label in ``[0, num_classes)`` per embedding,
        and (with ``check_finite``) no NaN or Inf embedding."""
        self.validate_embeddings(embeddings)
        check_labels(labels, embeddings.shape[0])
        check_label_range_and_finite(embeddings, labels, self.num_classes, check_finite=self.check_finite)

    # -- PML protocol ---------------------------------------------------------------------------
    def forward(self, embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None):
        """PML's ``forward``, after :meth:`validate_inputs`; float16/bfloat16 embeddings are computed in float32 and
        the loss returned in float32."""
        self.validate_inputs(embeddings, labels)
        if embeddings.dtype in (torch.float16, torch.bfloat16):
            # 16-bit embeddings: compute and return the loss in float32 (every method alike; PML's reducers would
            # otherwise round multi-term losses to 16 bits). Gradients flow back in the embeddings' dtype.
            same = ref_emb is embeddings  # PML's "ref_emb is the batch itself" must survive the cast
            embeddings = embeddings.float()
            if same:
                ref_emb = embeddings
        return super().forward(embeddings, labels, indices_tuple, ref_emb, ref_labels)

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        """PML's hook: labels required, ``ref_emb`` refused, an empty batch gives :meth:`zero_losses`; otherwise
        :meth:`anchor_losses` on long labels, miner weights and the cast (for fixed anchors, cached) anchors, plus the
        ``weight_regularizer`` term on the anchor rows."""
        c_f.labels_required(labels)
        c_f.ref_not_supported(embeddings, labels, ref_emb, ref_labels)
        if embeddings.shape[0] == 0:
            return self.zero_losses()
        labels = labels.long()
        weights = lmu.convert_to_weights(indices_tuple, labels, dtype=embeddings.dtype)
        anchors = self.cached_anchors("cast", embeddings, lambda a: a)  # fixed anchors: cast once, not per call
        loss_dict = self.anchor_losses(embeddings, labels, anchors, weights)
        self.add_weight_regularization_to_loss_dict(loss_dict, anchors.reshape(-1, anchors.shape[-1]))
        return loss_dict

    def anchor_losses(
        self, embeddings: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor, weights: torch.Tensor
    ) -> dict[str, dict[str, Any]]:
        """The loss dict of PML's reducer protocol; what a subclass implements.

        :param embeddings: (B, d), B >= 1 (an empty batch never gets here), float32 or float64 (16-bit inputs
            arrive as float32), validated (finite when ``check_finite``).
        :param labels: (B,) ``long`` in ``[0, num_classes)``, on the embeddings' device.
        :param anchors: the anchors in the embeddings' dtype and device: a copy, differentiable back to the parameter
            when learnable; for fixed anchors a cached constant that must not be modified in place.
        :param weights: (B,) per-sample weights in the embeddings' dtype: ones without a miner, else PML's
            ``convert_to_weights(indices_tuple, labels)``. Multiply each sample's loss by its weight, as PML does.
        :returns: ``{name: entry}`` for every name of ``_sub_loss_names()``, each entry made by :meth:`element_loss`
            (per sample, reduced by the reducer) or :meth:`reduced_loss` (a scalar); the reducer sums the terms.
        """
        raise NotImplementedError

    def class_parallel_losses(
        self, embeddings: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor, weights: torch.Tensor, shard: Any
    ) -> dict[str, dict[str, Any]]:
        """:meth:`anchor_losses` with the anchors sharded over processes (Partial FC, An et al. 2021); what a method
        implements to run under :class:`~pml_anchors.losses.class_parallel.ClassParallelLoss`.

        ``embeddings``, ``labels`` and ``weights`` are the *global* batch (every process's, gathered); ``anchors`` is
        this process's block of rows ``[shard.start, shard.stop)`` (labels index all rows). Compute the block's terms
        with the same kernel (:func:`~pml_anchors.losses.logsumexp.class_logsumexp`) through ``shard``
        (:class:`~pml_anchors.losses.class_parallel.ClassShard`: ``others_logsumexp`` for softmax-type
        cross-entropies, ``batch_logsumexp`` for per-proxy terms, ``sum``/``logsumexp``/``cat`` to combine the
        rest) and return the same loss dict as :meth:`anchor_losses` on the whole batch, identical on every process.
        Not implemented by default: such a loss refuses class-parallel training."""
        raise NotImplementedError

    def element_loss(self, losses: torch.Tensor, **extra: Any) -> dict[str, Any]:
        """Helper: a per-sample sub-loss for PML's reducers, ``{"losses", "indices", "reduction_type": "element"}``;
        ``extra`` adds what a reducer needs beyond that (``divisor`` for PML's ``DivisorReducer``)."""
        return {"losses": losses, "indices": c_f.torch_arange_from_size(losses), "reduction_type": "element", **extra}

    @staticmethod
    def reduced_loss(value: torch.Tensor) -> dict[str, Any]:
        """Helper: an already reduced (scalar) sub-loss for PML's reducers."""
        return {"losses": value, "indices": None, "reduction_type": "already_reduced"}

    # -- inference ------------------------------------------------------------------------------
    def get_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Margin-free class scores (B × rows); larger is closer. What a subclass implements for :meth:`predict`.
        Not validated or cast by the caller: compute from :meth:`cast_anchors` or :meth:`cached_anchors` (and cast the
        loss's own parameters likewise) so that any floating-point dtype works."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Nearest-anchor labels (argmax of :meth:`get_logits`)."""
        self.validate_embeddings(embeddings)
        return self.get_logits(embeddings).argmax(dim=1)

    # -- diagnostics ----------------------------------------------------------------------------
    def target_min_angle(self) -> float | None:
        """The smallest angle (radians) the method builds or keeps between two anchors, e.g. Margin-RePoNet's
        phi; ``None`` when the method has no such target (learnable proxies, Euclidean constraints)."""
        return None

    @property
    def anchor_geometry(self) -> dict[str, Any]:
        """:meth:`geometry` when it is cheap (K^2 d within ``CHEAP_ANGLE_BUDGET``), else only the mean anchor norm:
        what PML's logging presets record every ``log_freq`` iterations (a recordable attribute)."""
        rows = self.anchors.shape[0] * (self.anchors.shape[1] if self.anchors.ndim == 3 else 1)
        if rows * rows * self.anchors.shape[-1] <= CHEAP_ANGLE_BUDGET:
            return self.geometry()
        return {"mean_anchor_norm": float(self.anchors.detach().float().norm(dim=-1).mean())}

    @torch.no_grad()
    def geometry(self) -> dict[str, Any]:
        """The anchors' diagnostics, recorded every epoch by the base :class:`~pml_anchors.TrainerHooks`:
        ``min_anchor_angle_deg`` (smallest angle between two anchor rows, sub-centres included; NaN for one row),
        ``mean_anchor_norm`` and, for a method that defines :meth:`target_min_angle`, ``target_min_angle_deg``
        (NaN where it returns ``None``, e.g. a single class). Beyond ``DIAGNOSTIC_ANGLE_BUDGET`` (K^2 d about 7e10,
        e.g. K > 23k at d = 128) the angle is searched from a fixed sample of rows (an upper bound of the exact one,
        :func:`~pml_anchors.anchors.diagnostics.min_angle_within_budget`) and ``min_anchor_angle_rows_searched``
        says how many. A method adds its own keys by overriding this and extending ``super().geometry()``."""
        rows = self.anchors.detach().float().reshape(-1, self.anchors.shape[-1])
        angle, searched = min_angle_within_budget(rows) if rows.shape[0] > 1 else (float("nan"), rows.shape[0])
        out: dict[str, Any] = {
            "min_anchor_angle_deg": math.degrees(angle),
            "mean_anchor_norm": float(rows.norm(dim=1).mean()),
        }
        if searched < rows.shape[0]:
            out["min_anchor_angle_rows_searched"] = searched
        if type(self).target_min_angle is not AnchorLoss.target_min_angle:
            target = self.target_min_angle()
            out["target_min_angle_deg"] = float("nan") if target is None else math.degrees(target)
        return out

    def __repr__(self) -> str:
        if "anchors" not in self._parameters and "anchors" not in self._buffers:
            return f"{type(self).__name__}(not built)"  # a loss whose __init__ raised, shown in its traceback
        return super().__repr__()

    def extra_repr(self) -> str:
        kind = "learnable" if self.learnable else "fixed"
        chunk = "" if self.chunk_size is None else f", chunk_size={self.chunk_size}"
        return (
            f"num_classes={self.num_classes}, embedding_size={self.embedding_size}, "
            f"anchors={kind} {tuple(self.anchors.shape)}{chunk}"
        )
