"""``--check``: everything about a job or a serving config that can be known without running it.

A check loads nothing heavy and starts nothing: it validates the config, that required fields are
set, that the inputs exist and are readable, that model references are well formed, and — given the
overlay a job belongs to (``k8s/overlays/<name>``) — that the jobs and the RayService of that overlay
fit together: the collection compare and serving read is the one the ingest job writes, the adapter
compare and serving load is the one the train job exports, the questions are the ones prepare holds
out. A path that an earlier job of the overlay writes counts as present; anything else must exist
now. ``check`` returns every problem found, so that one run lists them all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ragtune.config import ConfigError, RagtuneConfig, load_config, ragtune_home, validate_config
from ragtune.runtime import is_storage_uri

JOBS = ("ingest", "prepare", "train", "evaluate")


@dataclass(frozen=True)
class OverlayPlan:
    """What an overlay's jobs write, from the configs its RayJobs run."""

    name: str
    collection: str  # the ingest job's milvus.collection
    prepared: str  # the prepare job's prepare.output_dir (eval.jsonl lands there)
    adapter: str  # the train job's exported adapter
    base_model: str  # the model the train job adapts
    trains_on: str  # the train job's prepare.output_dir


def overlay_plan(overlay: str, root: Path | None = None) -> OverlayPlan:
    """Raises: ConfigError for an unknown overlay or an invalid job config."""
    from ragtune.k8s import REPO, SOURCES

    if overlay not in SOURCES:
        raise ConfigError(f"unknown overlay {overlay!r}; the overlays are {', '.join(SOURCES)}")
    root = root or REPO
    _, jobs = SOURCES[overlay]
    ingest, prepare, train = (load_config(root / jobs[j]) for j in ("ingest", "prepare", "train"))
    return OverlayPlan(overlay, ingest.milvus.collection, _prepared_dir(prepare), _adapter_dir(train),
                       train.generator.model, _prepared_dir(train))


def _prepared_dir(cfg: RagtuneConfig) -> str:
    from ragtune.data import output_dir

    return str(output_dir(cfg))


def _adapter_dir(cfg: RagtuneConfig) -> str:
    """Where the train job's adapter ends up: the registry URI it is published to, else its directory."""
    from ragtune.train.driver import output_dir, published_to

    return published_to(cfg) or str(output_dir(cfg))


def check(job: str, cfg: RagtuneConfig, plan: OverlayPlan | None = None) -> list[str]:
    """Every problem of ``cfg`` run as ``job`` (one of JOBS, or ``serve`` for a Serve application's
    args), checked against ``plan`` when the job is part of an overlay; empty when all hold."""
    checks = {"ingest": _ingest, "prepare": _prepare, "train": _train, "evaluate": _evaluate, "serve": _serve}
    if job not in checks:
        raise ConfigError(f"unknown job {job!r}; one of {', '.join(checks)}")
    return checks[job](cfg, plan)


def _model_ref(field: str, ref: str) -> list[str]:
    """A reference any node can resolve: a bundled alias, a storage URI, a pinned hub id, or a directory
    that exists here (and so, on a cluster, in the image or on a shared volume)."""
    from ragtune.models import BUNDLED

    if ref in BUNDLED or is_storage_uri(ref) or Path(ref).expanduser().is_dir():
        return []
    if "/" in ref and not ref.startswith((".", "/", "~")):
        return [] if "@" in ref else [f"{field}: hub model {ref!r} needs a pinned revision ({ref}@<commit sha or tag>)"]
    return [f"{field}: {ref!r} is not a bundled alias ({', '.join(BUNDLED)}), an existing directory, an s3:// URI "
            "or a hub id@revision"]


def _readable(field: str, path: str) -> list[str]:
    if is_storage_uri(path):
        return []  # storage is checked where it is reachable: by the job itself
    p = Path(path).expanduser()
    if not p.exists():
        return [f"{field}: {path} does not exist"]
    if not os.access(p, os.R_OK):
        return [f"{field}: {path} is not readable"]
    return []


def _same_collection(cfg: RagtuneConfig, plan: OverlayPlan | None, who: str) -> list[str]:
    if plan is None or cfg.milvus.collection == plan.collection:
        return []
    return [f"milvus.collection: {who} reads collection {cfg.milvus.collection!r}, but overlay {plan.name}'s ingest "
            f"job writes {plan.collection!r}; set the same collection in both"]


def _ingest(cfg: RagtuneConfig, plan: OverlayPlan | None) -> list[str]:
    from ragtune.ingest import SourceError
    from ragtune.ingest.sources import expand_sources

    problems = _model_ref("embedding.model", cfg.embedding.model)
    try:
        expand_sources(cfg.ingest.sources)
    except SourceError as exc:
        problems.append(f"ingest.sources: {exc}")
    return problems


def _prepare(cfg: RagtuneConfig, plan: OverlayPlan | None) -> list[str]:
    from ragtune.data import DataError
    from ragtune.data.formats import expand_inputs

    problems = _model_ref("generator.model", cfg.generator.model)
    try:
        expand_inputs(cfg.prepare.inputs)
    except DataError as exc:
        problems.append(f"prepare.inputs: {exc}")
    for path in cfg.prepare.exclude_questions:
        problems += _readable("prepare.exclude_questions", path)
    if cfg.prepare.with_context:
        problems += _same_collection(cfg, plan, "prepare.with_context")
    return problems


def _train(cfg: RagtuneConfig, plan: OverlayPlan | None) -> list[str]:
    from ragtune.data.pipeline import load_stats

    if cfg.prepare.inputs:
        problems = _prepare(cfg, plan)
    else:
        problems = _model_ref("generator.model", cfg.generator.model)
        prepared = _prepared_dir(cfg)
        if not (plan and prepared == plan.prepared) and load_stats(Path(prepared)) is None:
            problems.append(f"prepare.output_dir: no prepared dataset in {prepared}, and no prepare.inputs to prepare "
                            "one from" + (f" (overlay {plan.name}'s prepare job writes {plan.prepared})" if plan else ""))
    return problems


def _adapter(field: str, adapter: str | None, plan: OverlayPlan | None) -> list[str]:
    if adapter is None:
        return [f"{field}: unset, but the ft and hybrid arms need an adapter" +
                (f": overlay {plan.name}'s train job exports {plan.adapter}" if plan else " (what `ragtune train` wrote)")]
    from ragtune.eval.answers import adapter_path

    adapter = adapter_path(adapter)
    if plan and adapter == plan.adapter:
        return []
    if is_storage_uri(adapter) or (Path(adapter).expanduser() / "adapter_config.json").is_file():
        return []
    return [f"{field}: {adapter} holds no adapter (adapter_config.json)" +
            (f", and overlay {plan.name}'s train job exports {plan.adapter}" if plan else "")]


def _evaluate(cfg: RagtuneConfig, plan: OverlayPlan | None) -> list[str]:
    c = cfg.compare
    problems = _model_ref("generator.model", cfg.generator.model) + _model_ref("embedding.model", cfg.embedding.model)
    if c.questions is None:
        problems.append("compare.questions: unset; name a SQuAD json or QA jsonl (prepare's eval.jsonl)")
    elif not (plan and Path(c.questions).parent == Path(plan.prepared)):
        problems += _readable("compare.questions", c.questions)
    if {"rag", "hybrid"} & set(c.arms):
        problems += _same_collection(cfg, plan, "compare")
    if "ft" in c.arms or "hybrid" in c.arms:
        problems += _adapter("compare.adapter", c.adapter, plan)
        if "hybrid" in c.arms and c.hybrid_adapter:
            problems += _adapter("compare.hybrid_adapter", c.hybrid_adapter, plan)
    if plan and c.adapter and cfg.generator.model != plan.base_model:
        problems.append(f"generator.model: compare runs {cfg.generator.model}, but the adapter is trained on "
                        f"{plan.base_model}")
    for field in ("freshness_documents", "freshness_questions"):
        if getattr(c, field):
            problems += _readable(f"compare.{field}", getattr(c, field))
    return problems


def _serve(cfg: RagtuneConfig, plan: OverlayPlan | None) -> list[str]:
    problems = _model_ref("generator.model", cfg.generator.model) + _model_ref("embedding.model", cfg.embedding.model)
    problems += _same_collection(cfg, plan, "the serving graph")
    registry = cfg.serve.adapters or str(ragtune_home() / "adapters")
    if plan:
        if plan.adapter.rstrip("/").rsplit("/", 1)[0] != registry.rstrip("/"):
            problems.append(f"serve.adapters: the serving graph reads adapters from {registry}, but overlay "
                            f"{plan.name}'s train job exports {plan.adapter}; point one at the other")
        if cfg.generator.model != plan.base_model:
            problems.append(f"generator.model: the serving graph runs {cfg.generator.model}, but overlay {plan.name}'s "
                            f"adapters are trained on {plan.base_model}")
    return problems


def check_job_config(job: str, config: str | Path, overrides: list[str] | None = None,
                     overlay: str | None = None) -> list[str]:
    """``check`` of a job's config file; a config that does not load is one problem, not an exception."""
    try:
        cfg = load_config(config, overrides or [])
        plan = overlay_plan(overlay) if overlay else None
    except ConfigError as exc:
        return [str(exc)]
    return check(job, cfg, plan)


def check_serve_args(args: dict, overlay: str | None = None) -> list[str]:
    """``check`` of a Serve application's args (a RayService's serveConfigV2 application)."""
    try:
        cfg = validate_config(args, "the Serve application's args")
        plan = overlay_plan(overlay) if overlay else None
    except ConfigError as exc:
        return [str(exc)]
    return check("serve", cfg, plan)


def job_config(job: str, doc: str) -> RagtuneConfig:
    """The command line every ``jobs/*.py`` shares: ``CONFIG [--set KEY=VALUE ...] [--check [--overlay NAME]]``.
    With ``--check`` it prints each problem and exits: 0 when there are none, 2 otherwise. Without,
    it returns the loaded config."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("config", help="YAML config (see jobs/configs/)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    parser.add_argument("--check", action="store_true", help="validate everything that can be known without "
                        "running (inputs, required fields, the overlay's other jobs), then exit: 0 ok, 2 problems")
    parser.add_argument("--overlay", help="with --check: the k8s overlay the job runs in (dev, gpu), whose "
                        "ingest, prepare and train jobs this one must fit")
    args = parser.parse_args()
    if not args.check:
        return load_config(args.config, args.set)
    problems = check_job_config(job, args.config, args.set, args.overlay)
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    print(f"{args.config}: {len(problems)} problem(s)" if problems else f"{args.config}: ok as the {job} job"
          + (f" of overlay {args.overlay}" if args.overlay else ""))
    sys.exit(2 if problems else 0)


def check_overlay(overlay: str, root: Path | None = None) -> dict[str, list[str]]:
    """The problems of each RayJob (``jobs/<job>.py CONFIG --check --overlay``) and of each ragtune
    application of the RayService of ``overlay``, keyed by what was checked."""
    import yaml

    from ragtune.k8s import REPO, SOURCES, serve_config_v2

    root = root or REPO
    serve, jobs = SOURCES[overlay]
    results = {f"RayJob {job} ({config})": check_job_config(job, root / config, overlay=overlay)
               for job, config in jobs.items()}
    try:
        applications = yaml.safe_load(serve_config_v2(root, serve, overlay))["applications"]
    except ConfigError as exc:
        return {**results, f"RayService ({serve})": [str(exc)]}
    for application in applications:
        if application["import_path"].startswith("ragtune."):
            results[f"RayService application {application['name']} ({serve})"] = check_serve_args(
                application.get("args", {}), overlay)
    return results


def check_pinned_images(overlay_dir: Path) -> list[str]:
    """The images of a production overlay (its kustomization's ``images``) are pinned by digest: a tag can
    be pushed again, and a restarted pod would then run other code than the one reviewed."""
    import re

    import yaml

    path = overlay_dir / "kustomization.yaml"
    images = (yaml.safe_load(path.read_text()) or {}).get("images", [])
    if not images:
        return [f"{path}: no images entry pins the ragtune image by digest (name, newName, digest: sha256:…)"]
    problems = []
    for image in images:
        if "newTag" in image or not re.fullmatch(r"sha256:[0-9a-f]{64}", str(image.get("digest", ""))):
            problems.append(f"{path}: image {image.get('newName', image.get('name'))} is given by "
                            f"{'tag ' + repr(image['newTag']) if 'newTag' in image else 'no valid digest'}; production "
                            "runs images pinned by digest: replace newTag with digest: sha256:<64 hex digits>")
    return problems
