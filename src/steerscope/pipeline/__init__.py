"""The resumable pipeline: config, stage registry, run folder, results.json, scale-out.

``run_pipeline(config, out)`` runs (or resumes) every stage (the small config for the demo
refusal model is :func:`steerscope.pipeline.demo.demo_config`); ``register_stage`` adds or
fills a stage. See docs/pipeline.md and docs/results.md.
"""
from steerscope.pipeline.config import (
    PipelineConfig,
    config_from_dict,
    dump_config,
    load_config,
)
from steerscope.pipeline.demo import demo_config, demo_run_config, run_demo
from steerscope.pipeline.registry import STAGES, Stage, StageOutput, register_stage, stage_names
from steerscope.pipeline.results import build_results, check_results
from steerscope.pipeline.runner import RunResult, StageContext, prepare, run_pipeline

__all__ = [
    "STAGES",
    "PipelineConfig",
    "RunResult",
    "Stage",
    "StageContext",
    "StageOutput",
    "build_results",
    "check_results",
    "config_from_dict",
    "demo_config",
    "demo_run_config",
    "dump_config",
    "load_config",
    "prepare",
    "register_stage",
    "run_demo",
    "run_pipeline",
    "stage_names",
]
