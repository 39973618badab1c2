"""Typed configuration: params.yaml validated once into pydantic models.

Every other module receives these objects, never raw dictionaries. Validation errors are raised as
:class:`~pipeline.core.errors.ConfigError` naming the file, the key (dotted path) and what is allowed, e.g.
``params.yaml: suites.demo-digits.bits[1]: 12 is not a positive multiple of 8``.

Layout of params.yaml (see the file itself for the documented defaults):

* ``datasets.<name>``: dataset parameters (split seed, protocol, sizes) validated by the dataset's
  own model from the dataset registry;
* ``methods.<name>``: hyperparameters validated by the method's ``Params`` model, plus an optional
  ``train`` block that overrides the global training settings for that method. A block with a
  ``method: <registered name>`` key defines a *variant* (an ablation such as ``crh-u: {method: crh,
  reassign: false}``): it starts from the registered method's block (parameters and ``train``) and
  overrides what it sets; suites list it by its own name, and runs and reports carry that name;
* ``train``, ``eval``, ``resources``, ``tracking``: global settings;
* ``suites.<name>``: one dataset x methods x bits x seeds, tagged with the ``profile`` it belongs
  to, with optional ``train``/``eval``/``methods`` overrides of its own;
* ``profiles.<name>``: a description; ``dvc repro report@<profile>`` runs that profile's suites.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

from pipeline.core.errors import ConfigError
from methods.registry import available_variants
from pipeline.data.registry import get_dataset

DEFAULT_PARAMS = "params.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OptimizerConfig(_Strict):
    """Optimizer of the network parameters (closed-form updates are the method's business)."""

    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    backbone_lr_mult: float = Field(
        1.0, gt=0, description="learning rate of a pretrainable pixel backbone (CNN-F, torchvision, EfficientNet-Lite0) relative to "
        "lr: the shared loop puts its parameters in their own optimizer group (e.g. CSQ's authors: 0.05)",
    )

    @model_serializer(mode="wrap")
    def _without_default_mult(self, handler):
        """Leave ``backbone_lr_mult`` out of dumps at its default 1.0, so trial keys without it do not change."""
        data = handler(self)
        if isinstance(data, dict) and self.backbone_lr_mult == 1.0:
            data.pop("backbone_lr_mult", None)
        return data


class LRScheduleConfig(_Strict):
    """Learning rate per epoch, applied by the shared loop to every optimizer of the method.

    ``constant``: the optimizer's ``lr`` throughout (the loop never touches the rate, so a method's own
    schedule, e.g. ltdual's cosine, is left alone). ``linear``: from ``lr`` at the first epoch to ``final_lr``
    at the last, evenly spaced (``numpy.linspace``; DCMH's authors' TensorFlow code); ``log``: the same with
    geometric spacing (``numpy.logspace``; their MATLAB code); ``step``: ``lr * gamma ** (epoch // step)`` with
    ``step = step_size`` or ``int(step_fraction * epochs)`` (torch ``StepLR``, stepped per epoch; CSQ's and
    OrthoHash's authors' code), so it follows the trial's own number of epochs. Each parameter group keeps its
    ratio to the optimizer's ``lr`` (lr multipliers, e.g. ``backbone_lr_mult``, survive)."""

    name: Literal["constant", "linear", "log", "step"] = "constant"
    final_lr: float = Field(1e-6, gt=0, description="learning rate of the last epoch (linear, log)")
    gamma: float = Field(0.1, gt=0, le=1, description="step: factor applied every step_size epochs")
    step_size: int | None = Field(None, ge=1, description="step: epochs between decays (torch StepLR's step_size)")
    step_fraction: float | None = Field(
        None, gt=0, le=1, description="step: step_size as a fraction of the trial's epochs, int(fraction * epochs) (OrthoHash's code: 0.8)"
    )

    @model_serializer(mode="wrap")
    def _without_idle_step(self, handler):
        """Leave the step fields out of dumps unless ``name: step``, so trial keys of the other schedules do not change."""
        data = handler(self)
        if isinstance(data, dict) and self.name != "step":
            for k in ("gamma", "step_size", "step_fraction"):
                data.pop(k, None)
        return data

    @model_validator(mode="after")
    def _step_period(self):
        if self.name == "step" and (self.step_size is None) == (self.step_fraction is None):
            raise ValueError("lr_schedule 'step' needs exactly one of step_size (epochs) or step_fraction (of the trial's epochs)")
        return self

    def step_period(self, epochs: int) -> int:
        """Epochs between two decays of the ``step`` schedule in a run of ``epochs``."""
        return int(self.step_size) if self.step_size is not None else max(1, int(float(self.step_fraction) * epochs))

    def lr_at(self, lr: float, epoch: int, epochs: int) -> float:
        """The rate of 0-based ``epoch`` of ``epochs`` starting from ``lr``."""
        if self.name == "constant" or epochs <= 1:
            return float(lr)
        if self.name == "step":
            return float(lr * self.gamma ** (max(epoch, 0) // self.step_period(epochs)))
        t = min(max(epoch, 0), epochs - 1) / (epochs - 1)
        if self.name == "linear":
            return float(lr + (self.final_lr - lr) * t)
        return float(lr * (self.final_lr / lr) ** t)


class TemperatureConfig(_Strict):
    """Temperature continuation of the hash activation (paper 000, Sec. 4.3): outputs ``tanh(z / T)`` with
    ``T`` going from ``start`` at the first epoch to ``end`` at the last, so outputs approach binary codes.
    Needs a method with a tempered activation (``HashMethod.supports_temperature``)."""

    start: float = Field(4.0, gt=0)
    end: float = Field(1.0, gt=0)
    schedule: Literal["geometric", "linear", "plateau"] = Field(
        "geometric",
        description="geometric / linear: fixed, from start to end over the epochs; plateau: start, multiplied by factor "
        "(never below end) whenever the monitored metric has not improved by min_delta for patience epochs",
    )
    monitor: str = Field(
        "loss",
        description="plateau: the metric that drives T: 'loss' (the epoch's summed training loss, lower is better; the bench "
        "has no validation split) or an epoch metric's name, e.g. 'i2t/map@all' (the validation metric in tuning mode)",
    )
    mode: Literal["auto", "min", "max"] = Field("auto", description="plateau: auto = min for 'loss' and loss/* metrics, max otherwise")
    patience: int = Field(2, ge=1)
    factor: float = Field(0.5, gt=0, lt=1)
    min_delta: float = Field(0.0, ge=0, description="plateau: relative improvement below which an epoch does not count as better")


class GradBalanceConfig(_Strict):
    """Gradient-contribution balancing (paper 000, Sec. 4.3), rule: inverse-norm equalisation. Per mini-batch,
    each named loss term's gradient norm on the parameters of the hash output layer(s) is measured and
    smoothed (EMA ``momentum``); term k gets weight ``mean_j(n_j) / n_k`` so every term contributes the same
    gradient norm (GradNorm, Chen et al. ICML 2018, with its target ratio alpha = 0 and closed-form weights
    instead of learned ones). From epoch ``late_start * epochs`` on, ``late_terms`` (those nearest the
    retrieval metric, e.g. ``likelihood``) get ``late_boost`` times their (clipped) weight; weights are
    renormalised to sum to the number of terms."""

    terms: list[str] = Field([], description="terms to balance (empty: every named term of the method)")
    momentum: float = Field(0.9, ge=0, lt=1)
    late_start: float = Field(0.7, ge=0, le=1)
    late_terms: list[str] = []
    late_boost: float = Field(2.0, ge=1)
    max_weight: float = Field(10.0, ge=1, description="weights are clipped to [1/max_weight, max_weight]")


class HardPairsConfig(_Strict):
    """Hard-pair focus (paper 000, Sec. 4.3): an exponential moving average of each training item's loss
    (``decay``); items whose EMA lies below the ``quantile`` of all items' EMAs (the low-loss range) get
    weight ``low_weight``, the others 1, renormalised to mean 1 over the batch. Needs a method that returns
    per-item losses (``per_item`` and ``HashMethod.per_item_term``)."""

    decay: float = Field(0.9, ge=0, lt=1)
    quantile: float = Field(0.3, gt=0, lt=1)
    low_weight: float = Field(0.3, ge=0, le=1)
    warmup_epochs: int = Field(1, ge=0, description="epochs of plain weights while the EMAs fill")


class TermGradConfig(_Strict):
    """Per-term gradient clipping and scaling (paper 000, Sec. 4.3): the gradient of each listed term is
    computed on its own, scaled by ``scale[term]`` (a learning-rate multiplier for that term under SGD) and
    clipped to norm ``max_norm[term]`` before the terms' gradients are summed."""

    max_norm: dict[str, float] = {}
    scale: dict[str, float] = {}


class HeadOnlyConfig(_Strict):
    """Head-only phase at each stage switch (paper 000, Sec. 4.3): the first ``steps`` mini-batches of every
    phase of a stage-switch epoch update only the layers attached to the hash output (every Linear whose width
    is the code length); the others keep their values. Stage switches: the epochs listed in ``epochs``, each
    epoch where the plateau temperature is lowered, and the epoch where grad_balance's late boost starts."""

    steps: int = Field(5, ge=1, description="mini-batches per phase of the head-only phase")
    epochs: list[int] = Field([], description="explicit stage-switch epochs (0-based), besides the plug-ins' own")


class CalibrationConfig(_Strict):
    """Feature calibration after each backbone (paper 000, Sec. 4.1): per modality, a re-weighting of the backbone
    features (init 1) and, for images, a per-item gate ``2 sigmoid(u . x / sqrt(d) + c)`` (init 1); updated only by
    the method's inter-modal term (``HashMethod.inter_modal_term``), with its own optimizer."""

    lr: float = Field(1e-3, gt=0, description="Adam learning rate of the calibration parameters")
    gate: bool = Field(True, description="the image gate (text has re-weighting only)")


class ReplayConfig(_Strict):
    """Hard-pair replay (paper 000, Sec. 4.1): after each phase's pass, the ``size`` items of highest EMA loss
    (``decay``) of the method's per-item term are replayed in mini-batches, once, with stronger augmentation:
    feature vectors: dropout ``dropout`` + Gaussian noise ``noise`` (in units of the batch's per-feature std);
    bag-of-words: each word dropped with probability ``word_dropout``; pixels: random crop after ``crop`` pixels
    of reflection padding, brightness and contrast jitter of +-``jitter``."""

    size: int = Field(128, ge=1)
    decay: float = Field(0.9, ge=0, lt=1)
    start_epoch: int = Field(1, ge=0, description="first epoch with replay (the EMAs fill before)")
    dropout: float = Field(0.2, ge=0, lt=1)
    noise: float = Field(0.1, ge=0)
    word_dropout: float = Field(0.2, ge=0, lt=1)
    crop: int = Field(4, ge=0)
    jitter: float = Field(0.2, ge=0, lt=1)


class ModalityScaleConfig(_Strict):
    """Modality-level gradient scaling (paper 000, Sec. 4.1): each modality's inter-modal loss ``L_m`` (EMA
    ``momentum`` of its passes' batch values) sets the scale ``c_m = M L_m / sum_j L_j`` (mean 1, clipped to
    ``[min_scale, max_scale]``) of the gradient of that modality's pass, so the weaker (higher-loss) modality
    gets more. Needs a method whose phases are its modalities (DCMH's image / text passes)."""

    momentum: float = Field(0.9, ge=0, lt=1)
    min_scale: float = Field(0.25, gt=0, le=1)
    max_scale: float = Field(4.0, ge=1)


class GradStatsConfig(_Strict):
    """Per-channel (image) / per-feature (text) gradient-norm statistics of high-loss samples (paper 000, Sec. 4.1):
    per batch, the items whose per-item loss is at or above the batch's ``quantile``; the norm of the inter-modal
    term's gradient on each backbone feature, accumulated per epoch; a feature is unstable when its norm exceeds
    ``z`` standard deviations above the mean over features."""

    quantile: float = Field(0.8, ge=0, lt=1)
    z: float = Field(2.0, gt=0)


class DiagnosticsConfig(_Strict):
    """Per-epoch diagnostics (paper 000, Sec. 5), logged as ``diag/*`` metrics: bit flips of the training codes,
    per-term gradient variance on the hash layer, hard-set size and exit times (items whose EMA loss, ``decay``,
    exceeds the mean EMA by more than ``hard_z`` standard deviations)."""

    decay: float = Field(0.9, ge=0, lt=1)
    hard_z: float = Field(1.5, gt=0)


class PluginsConfig(_Strict):
    """Training-time plug-ins of the shared loop (pipeline/train/plugins.py), each off unless given; any
    combination works, for every method that offers the hook a plug-in needs."""

    temperature: TemperatureConfig | None = None
    grad_balance: GradBalanceConfig | None = None
    hard_pairs: HardPairsConfig | None = None
    term_grad: TermGradConfig | None = None
    head_only: HeadOnlyConfig | None = None
    calibration: CalibrationConfig | None = None
    replay: ReplayConfig | None = None
    modality_scale: ModalityScaleConfig | None = None
    grad_stats: GradStatsConfig | None = None
    diagnostics: DiagnosticsConfig | None = None

    def active(self) -> bool:
        return any(getattr(self, k) is not None for k in type(self).model_fields)


#: the batch samplers of pipeline/train/samplers.py (the loop checks that the two lists agree)
SamplerName = Literal["epoch_permutation", "random_batches", "class_balanced"]


class TrainConfig(_Strict):
    """Training-loop settings shared by every method.

    ``sampler`` says which items each mini-batch holds (pipeline/train/samplers.py): ``epoch_permutation``
    (one permutation per epoch, the default), ``random_batches`` (a fresh random batch per iteration,
    ``n // batch_size`` iterations per epoch, DCMH's authors' code) or ``class_balanced`` (a long-tail
    remedy, not part of paper 004). A method's recipe (its class's ``train_defaults``) overrides the
    global block; ``methods.<name>.train`` and a suite's ``train`` override the recipe."""

    epochs: int = Field(50, ge=1)
    batch_size: int = Field(128, ge=1)
    optimizer: OptimizerConfig = OptimizerConfig()
    lr_schedule: LRScheduleConfig = LRScheduleConfig()
    sampler: SamplerName = "epoch_permutation"
    plugins: PluginsConfig = Field(PluginsConfig(), description="training-time plug-ins of the loop (paper 000's loss layer)")

    from pydantic import model_serializer as _model_serializer  # (local, as in EvalConfig)

    @_model_serializer(mode="wrap")
    def _without_idle_plugins(self, handler):
        """Leave ``plugins`` out of dumps while none is on, so trial hashes without plug-ins do not change."""
        data = handler(self)
        if isinstance(data, dict) and not self.plugins.active():
            data.pop("plugins", None)
        return data
    device: str = "auto"
    grad_clip: float | None = Field(None, gt=0)
    loader_workers: int = Field(0, ge=0)
    eval_every: int = Field(0, ge=0, description="evaluate on the validation data every N epochs (0: never)")
    checkpoint_every: int = Field(
        0, ge=0, description="save the training state every N epochs (0: never); a killed trial resumes from it (not part of the trial key)"
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="autocast of the forward passes on CUDA: bf16 or fp16 (with a gradient scaler); fp32: none. On CPU only bf16 autocasts"
    )
    pin_memory: bool | Literal["auto"] = Field("auto", description="pinned host memory for batches copied to a GPU (auto: when training on CUDA; not part of the trial key)")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError(f"{v!r} is not a device; allowed: auto, cpu, cuda, cuda:N")


class IndexConfig(_Strict):
    """Which faiss binary indexes to build and time over the database codes."""

    kinds: list[Literal["flat", "hash", "multihash"]] = ["flat"]
    k: int = Field(100, ge=1)
    latency_queries: int = Field(200, ge=1)


class ClassGroupsConfig(_Strict):
    """Head / medium / tail class groups by training-set frequency, for per-group mAP (long-tail evaluation).

    ``by: fraction``: the ``head_frac`` most frequent classes are head, the ``tail_frac`` rarest tail
    (:func:`pipeline.eval.metrics.class_groups`); ``by: threshold``: count > ``head_min`` head, < ``tail_max``
    tail (:func:`pipeline.eval.metrics.class_groups_by_threshold`); ``by: none``: no per-group mAP."""

    by: Literal["none", "fraction", "threshold"] = "none"
    head_frac: float = Field(1 / 3, ge=0, le=1)
    tail_frac: float = Field(1 / 3, ge=0, le=1)
    head_min: int = Field(100, ge=0)
    tail_max: int = Field(20, ge=0)

    @field_validator("tail_frac")
    @classmethod
    def _fractions(cls, v: float, info) -> float:
        head = info.data.get("head_frac", 1 / 3)
        if head + v > 1:
            raise ValueError(f"head_frac + tail_frac must be <= 1, got {head} + {v}")
        return v

    @field_validator("tail_max")
    @classmethod
    def _thresholds(cls, v: int, info) -> int:
        head_min = info.data.get("head_min", 100)
        if v > head_min:
            raise ValueError(f"tail_max ({v}) must not exceed head_min ({head_min})")
        return v


class CodeLayerConfig(_Strict):
    """Paper 000's code layer (Sec. 4.2), applied to stored codes by the evaluate stage
    (:mod:`pipeline.eval.codelayer`): bits ordered by importance on the training codes, a segmented
    multi-index (Norouzi et al.) probed in a learned order under a per-query budget, served top-``k``."""

    k: int = Field(100, ge=1, description="neighbours served per query: mAP@k, NDCG@k and recall@k of the served list")
    segments: int | None = Field(None, ge=1, description="multi-index substrings m (null: max(1, round(K / log2 N)), Norouzi et al. 2014)")
    target_recall: float = Field(0.9, gt=0, le=1, description="offline: the probe radius is the smallest covering this share of relevant training pairs")
    candidate_factor: float = Field(4.0, gt=0, description="per query: probing stops once candidate_factor * k distinct candidates are found")
    max_buckets: int | None = Field(None, ge=1, description="per-query cap on probed buckets over all tables (null: only the radius limits)")
    latency_queries: int = Field(200, ge=1)
    max_train_pairs: int = Field(5_000_000, ge=100, description="training pairs for the offline statistics (all pairs among up to sqrt(this) seeded items)")


class EvalConfig(_Strict):
    """Evaluation settings; the conventions are logged with every number."""

    topk: list[int] = [100]
    ties: Literal["expected", "index", "optimistic", "pessimistic"] = "expected"
    ap_norm: Literal["retrieved", "min_k_total", "total"] = "retrieved"
    radius: int = Field(2, ge=0)
    random_baseline: bool = True
    index: IndexConfig = IndexConfig()
    class_groups: ClassGroupsConfig = ClassGroupsConfig()
    code_layer: CodeLayerConfig | None = Field(None, description="paper 000's code layer on the stored codes (evaluate stage only; null: off)")

    @model_serializer(mode="wrap")
    def _without_unset_code_layer(self, handler):
        # code_layer: null is left out of the dump, so evaluation keys of settings without it are unchanged
        data = handler(self)
        if isinstance(data, dict) and data.get("code_layer") is None:
            data.pop("code_layer", None)
        return data

    @field_validator("topk")
    @classmethod
    def _topk(cls, v: list[int]) -> list[int]:
        bad = [k for k in v if k < 1]
        if bad:
            raise ValueError(f"cut-offs must be positive integers, got {bad}")
        return sorted(set(v))


class ResourcesConfig(_Strict):
    """Ray resources. Without ``ray_address`` a local Ray starts with this machine's CPUs."""

    ray_address: str | None = None
    num_workers: int = Field(1, ge=1, description="Ray Train workers per trial")
    use_gpu: bool | Literal["auto"] = "auto"
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, ge=0)
    max_concurrent_trials: int | None = Field(None, ge=1)
    max_failures: int = Field(0, ge=0, description="Ray Train worker-group restarts of a multi-worker trial (resumed from its last checkpoint)")


class TrackingConfig(_Strict):
    """MLflow. ``mlflow_uri`` null means the embedded sqlite store in the project (git-ignored);
    the environment variable MLFLOW_TRACKING_URI overrides both."""

    mlflow_uri: str | None = None
    artifact_root: str = "mlartifacts"
    experiment_prefix: str = "hashbench"


class TuneSettings(_Strict):
    """``hashbench tune``: hyperparameter search on the bench trial code (see pipeline/protocols/tuning.py).

    ``spaces.<method>.<hyperparameter>`` is one distribution: ``{loguniform: [lo, hi]}``,
    ``{uniform: [lo, hi]}``, ``{randint: [lo, hi]}`` (integers, hi inclusive), ``{choice: [a, b, ...]}``
    or ``{grid: [a, b, ...]}``; a hyperparameter is a field of the method's parameters or a training
    setting written ``train.optimizer.lr``, ``train.batch_size``."""

    metric: str = Field("auto", description="metric on the validation split, e.g. i2t/map@all; auto: the method's first direction's map@all")
    mode: Literal["max", "min"] = "max"
    search: Literal["optuna", "random", "grid"] = "optuna"
    scheduler: Literal["fifo", "asha"] = Field(
        "asha",
        description="asha: ASHA (async successive halving) stops weak trials early from the per-epoch validation "
        "metric; fifo: every trial runs all epochs. A --sweep always runs every trial to the end",
    )
    executor: Literal["auto", "train"] = Field(
        "auto",
        description="auto: a 1-worker trial runs the training loop in its Tune trial process (no Ray Train worker "
        "group, so a trial ASHA stops frees its CPUs at once and per-trial overhead is small); train: every trial is a "
        "Ray Train TorchTrainer as in bench (always so with resources.num_workers > 1); a stopped trial's worker group "
        "is then released by pipeline.protocols.standard.worker_group_releaser",
    )
    num_samples: int = Field(20, ge=1)
    epochs: int = Field(10, ge=1, description="maximum epochs of a trial (ASHA stops weak trials earlier)")
    evaluate_default: bool = Field(True, description="the search's first trial is params.yaml's configuration (when it lies in the space), so best and default compare on the same validation split")
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1)
    validation_fraction: float = Field(0.2, gt=0, lt=1)
    validation_seed: int = 0
    eval_every: int = Field(1, ge=1)
    seed: int = Field(0, description="trial seed of the search and seed of the search algorithm")
    max_concurrent_trials: int | None = Field(None, ge=1)
    spaces: dict[str, dict[str, dict[str, Any]]] = {}


class ProfileConfig(_Strict):
    description: str = ""


class IncrementalSuiteConfig(_Strict):
    """The incremental-class protocol of a suite (ADIH, paper 003): each trial is one original step,
    one incremental step with the original codes fixed and a full retraining (pipeline/protocols/incremental.py)."""

    new_classes: list[int | Literal["majority"]] = Field(
        [1], min_length=1, description="new classes per trial: a count (1, 2, 3, ...) or 'majority' (new outnumber old)"
    )
    class_seed: int = Field(0, description="seed of the choice of new classes")
    increment_epochs: int | None = Field(None, ge=1, description="epochs of the incremental step (null: the trial's train.epochs)")
    retrain: bool = Field(True, description="also train the full-retraining reference (time ratio and ADIH-I)")

    @field_validator("new_classes")
    @classmethod
    def _positive(cls, v: list) -> list:
        for n in v:
            if n != "majority" and (not isinstance(n, int) or n < 1):
                raise ValueError(f"{n!r} is not a positive number of new classes or 'majority'")
        return v


class IncrementalTrial(_Strict):
    """One trial's incremental-protocol settings (the suite's, with one ``new_classes`` value)."""

    new_classes: int | Literal["majority"]
    class_seed: int = 0
    increment_epochs: int | None = None
    retrain: bool = True


class SuiteConfig(_Strict):
    """One benchmark unit: a dataset x methods x code lengths x seeds, run as one Ray Tune grid (an
    ``incremental`` suite: x new-class counts, run trial by trial, see pipeline/protocols/incremental.py)."""

    dataset: str = Field(description="a dataset under 'datasets', or <dataset>+<backbone>: its frozen-backbone features (hashbench features)")
    profile: str
    methods: list[str] = Field(min_length=1)
    bits: list[int] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    protocol: str | None = None
    train: dict[str, Any] = {}
    eval: dict[str, Any] = {}
    method_params: dict[str, dict[str, Any]] = {}
    tuned: bool = Field(False, description="take method (and searched train) parameters from tuned/<dataset>/<method>-<bits>.yaml")
    network: Literal["default", "paper"] = Field(
        "default",
        description="paper: every method starts from its paper's setup (its class's paper_setup: image network, ImageNet "
        "weights, input size, recipe), under the methods.<name> block and the suite's own train/method_params",
    )
    incremental: IncrementalSuiteConfig | None = Field(None, description="run the incremental-class protocol instead of plain training")

    @field_validator("bits")
    @classmethod
    def _bits(cls, v: list[int]) -> list[int]:
        for b in v:
            if not isinstance(b, int) or b <= 0 or b % 8:
                raise ValueError(f"{b!r} is not a positive multiple of 8 (allowed code lengths: 8, 16, 24, 32, ..., e.g. 16/32/64/128)")
        return v


class Params(_Strict):
    """The whole validated params.yaml (raw per-dataset and per-method blocks validated separately)."""

    datasets: dict[str, dict[str, Any]]
    methods: dict[str, dict[str, Any]] = {}
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    resources: ResourcesConfig = ResourcesConfig()
    tracking: TrackingConfig = TrackingConfig()
    tune: TuneSettings = TuneSettings()
    suites: dict[str, SuiteConfig]
    suite_groups: dict[str, list[str]] = Field({}, description="suites written as axes (a list of datasets/protocols) -> their member suites")
    profiles: dict[str, ProfileConfig] = {"full": ProfileConfig()}
    source: str = Field(DEFAULT_PARAMS, exclude=True)

    # -- typed accessors ---------------------------------------------------------------------------
    def dataset_params(self, name: str):
        """The dataset's validated parameter model (a feature dataset ``<dataset>+<backbone>``: ``<dataset>``'s)."""
        spec = get_dataset(name)
        name = name.partition("+")[0]
        return validate_model(spec.Params, self.datasets.get(name) or {}, f"datasets.{name}", self.source)

    def implementation(self, name: str) -> str:
        """The registered method that method name ``name`` runs: ``name`` itself, or a variant's ``method``."""
        block = self.methods.get(name) or {}
        default = available_variants()[name].method if name in available_variants() else name
        impl = block.get("method", default) if isinstance(block, Mapping) else default
        return impl if isinstance(impl, str) else default

    def suite(self, name: str) -> SuiteConfig:
        try:
            return self.suites[name]
        except KeyError:
            hint = f" ({name!r} is written as axes: its suites are {', '.join(self.suite_groups[name])})" if name in self.suite_groups else ""
            raise ConfigError(f"{self.source}: unknown suite {name!r}{hint}; defined suites: {', '.join(sorted(self.suites))}") from None

    def members(self, name: str) -> list[str]:
        """The concrete suites a name stands for: a suite itself, or the members of a suite written as axes."""
        if name in self.suite_groups:
            return list(self.suite_groups[name])
        self.suite(name)
        return [name]

    def suites_of_profile(self, profile: str) -> list[str]:
        if profile not in self.profiles:
            raise ConfigError(f"{self.source}: unknown profile {profile!r}; defined profiles: {', '.join(sorted(self.profiles))}")
        return [n for n, s in self.suites.items() if s.profile == profile]


KEY_VERSION = 3
"""Version of the trial-key scheme; bumped whenever what enters the key changes (runs of another
version are never taken as finished). 1: the resolved spec including eval settings (until 2026-12);
2: training payload only (no eval, no suite), plus prepared-data manifest hash and code hash;
3: ``train.precision`` enters, ``train.checkpoint_every`` and ``train.pin_memory`` (no effect on results) do not."""


def canonical_hash(payload: Any) -> str:
    """sha256 of the canonical JSON of ``payload`` (sorted keys, no whitespace)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


class TrialSpec(_Strict):
    """Everything one trial needs, fully resolved.

    Two keys identify it: the *training key* (:meth:`key`: what was trained, so a finished run is
    never trained again) hashes everything that changes training — method, variant name, parameters,
    dataset parameters, training settings, bits, seed, incremental settings, the prepared data's
    manifest hash and the hash of the code that trains it — and :data:`KEY_VERSION`; the suite name and
    the evaluation settings are not part of it. The *evaluation key* (:meth:`eval_key`) hashes the
    evaluation settings, so a change of cut-offs or tie rule re-evaluates stored codes instead of
    retraining.
    """

    suite: str
    dataset: str
    protocol: str
    method: str  # the registered method that runs
    variant: str | None = None  # the params.yaml name of a variant of ``method`` (None: the method itself)
    incremental: IncrementalTrial | None = None  # the incremental-class protocol (None: plain training)
    bits: int
    seed: int
    method_params: dict[str, Any]
    dataset_params: dict[str, Any]
    train: TrainConfig
    eval: EvalConfig
    data_sha256: str = Field("", description="manifest hash of the prepared dataset (set by the launcher from data/prepared)")
    code_sha256: str = Field("", description="hash of the code that trains this method (pipeline.config.codehash)")

    @property
    def name(self) -> str:
        """The method name runs and reports show: the variant's name, else the method's."""
        return self.variant or self.method

    def training_payload(self) -> dict[str, Any]:
        """What the training key hashes (see the class docstring)."""
        return {"key_version": KEY_VERSION, **self.model_dump(mode="json", exclude={"suite": True, "eval": True, "train": {"checkpoint_every": True, "pin_memory": True}})}

    def resolved_hash(self) -> str:
        """sha256 of :meth:`training_payload`."""
        return canonical_hash(self.training_payload())

    def eval_key(self) -> str:
        """sha256 of the evaluation settings (the evaluate stage keys stored metrics by it)."""
        return canonical_hash(self.eval.model_dump(mode="json"))

    def key(self) -> str:
        """Human-readable training key: dataset/method/bits/seed plus the training hash."""
        inc = f"new{self.incremental.new_classes}/" if self.incremental else ""
        return f"{self.dataset}/{self.name}/{self.bits}b/s{self.seed}/{inc}{self.resolved_hash()[:12]}"


# -- loading -----------------------------------------------------------------------------------------


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; values of ``override`` win, nested dicts merge."""
    out = copy.deepcopy(dict(base))
    for k, v in override.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _format_loc(prefix: str, loc: tuple) -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def validate_model(model: type[BaseModel], data: Any, prefix: str, source: str):
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, prefix, source)) from None


def format_errors(exc: ValidationError, prefix: str, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = _format_loc(prefix, tuple(err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        shown = "" if err["type"] in ("missing", "extra_forbidden") else f" (got {err.get('input')!r})"
        lines.append(f"{source}: {loc}: {msg}{shown}")
    return "\n".join(lines)


