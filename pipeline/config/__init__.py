"""Typed configuration: params.yaml validated once into pydantic models, and the resolution of trials.

``model`` holds the models (and :class:`TrialSpec`), ``spaces`` the tune search spaces, ``trials`` the
resolution of a suite / search / incremental trial into :class:`TrialSpec`, ``loading`` the reading and
cross-checking of params.yaml. Everything public is re-exported here.
"""

from pipeline.config.model import (
    DEFAULT_PARAMS,
    ClassGroupsConfig,
    CodeLayerConfig,
    EvalConfig,
    IncrementalSuiteConfig,
    IncrementalTrial,
    IndexConfig,
    LRScheduleConfig,
    OptimizerConfig,
    PluginsConfig,
    Params,
    ProfileConfig,
    ResourcesConfig,
    SamplerName,
    SuiteConfig,
    TrackingConfig,
    TrainConfig,
    KEY_VERSION,
    TrialSpec,
    canonical_hash,
    TuneSettings,
    deep_merge,
    format_errors,
    validate_model,
)
from pipeline.config.trials import TrialRequest, apply_tuned, expand_suite, method_block, method_params, method_train, resolve_trial, suite_requests, trial_train, tuned_file
from pipeline.config.loading import check_params, load_params, params_hash

__all__ = [n for n in dir() if not n.startswith("_")]
