"""Experiment and sweep specs: YAML in, validated pydantic models out, every mistake named up front.

A spec is checked in two passes: the sections owned by the family (``task.data``, ``task.model``,
``method`` — a union over the family's method table, told apart by ``name`` — and ``eval``), then
the whole typed experiment of the family (:func:`experiment_type`). Errors are collected and raised
as one :class:`SpecError` whose lines read ``field.path: what is wrong (got VALUE)``.

Parsing checks the schema only. :func:`check_environment` runs the family's checks of what the spec
names on this machine (files, columns, checkpoints); the CLI, ``otu validate`` and ``otu submit`` run
it once in the driver; Ray Train workers, evaluation actors and sweep trials never do.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    Field,
    SerializeAsAny,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from otu.cache import content_hash
from otu.errors import SpecError
from otu.family import Job, NullReporter, Reporter, RunContext, load_object
from otu.paths import elsewhere, resolve_paths
from otu.registry import FAMILIES, family_spec, known_families
from otu.sections import (
    MAX_SEED,
    Compute,
    Dynamics,
    MethodSpec,
    Section,
    Tracking,
    excerpt,
    is_int,
)


class Task(Section):
    family: str
    data: SerializeAsAny[BaseModel]
    model: SerializeAsAny[BaseModel]


NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class Experiment(Section):
    name: str = Field(pattern=NAME_PATTERN, description="names the run directory and MLflow run")
    seed: int = Field(
        0,
        ge=0,
        le=MAX_SEED,
        description="seed of data splits, models and the unlearning loop (numpy/torch take 0..2**32-1)",
    )
    task: Task
    method: SerializeAsAny[MethodSpec]
    eval: SerializeAsAny[BaseModel]
    tracking: Tracking = Tracking()
    compute: Compute = Compute()
    dynamics: Dynamics = Dynamics()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def job(self) -> Job:
        """The family's own sections: what its functions receive."""
        return Job(data=self.task.data, model=self.task.model, method=self.method, eval=self.eval)

    def context(
        self, reporter: Reporter | None = None, checkpoint_dir: Path | None = None, resume_dir: Path | None = None
    ) -> RunContext:
        """The platform settings a family function needs (seed, compute, cache, reporter)."""
        return RunContext(
            seed=self.seed,
            compute=self.compute,
            cache_dir=Path(self.tracking.cache_dir),
            reporter=reporter or NullReporter(),
            checkpoint_dir=checkpoint_dir,
            resume_dir=resume_dir,
        )

    def with_overrides(self, overrides: Mapping[str, Any], check_files: bool = True) -> Experiment:
        """A new validated experiment with dotted keys set (``{"method.alpha": 0.1}``)."""
        raw = self.to_dict()
        for key, value in overrides.items():
            set_dotted(raw, key, value)
        return parse_experiment(raw, check_files)

    @property
    def hash(self) -> str:
        return content_hash(self.to_dict())


# ---------------------------------------------------------------- sweeps


class Param(Section):
    """One search dimension; exactly one of the fields is set."""

    choice: list[Any] | None = Field(None, description="values sampled uniformly")
    grid: list[Any] | None = Field(None, description="every value, each in its own trial(s)")
    uniform: tuple[float, float] | None = Field(None, description="floats uniform in [low, high]")
    loguniform: tuple[float, float] | None = Field(None, description="floats log-uniform in [low, high]")
    randint: tuple[int, int] | None = Field(None, description="integers in [low, high)")

    @model_validator(mode="after")
    def _exactly_one(self) -> Param:
        set_kinds = [k for k in PARAM_KINDS if getattr(self, k) is not None]
        if len(set_kinds) != 1:
            raise ValueError(f"give exactly one of {', '.join(PARAM_KINDS)} (got {set_kinds or 'none'})")
        kind = set_kinds[0]
        value = getattr(self, kind)
        if kind in ("choice", "grid") and not value:
            raise ValueError(f"{kind} needs at least one value")
        if kind in ("uniform", "loguniform", "randint") and not value[0] < value[1]:
            raise ValueError(f"{kind} needs low < high (got {list(value)})")
        if kind == "loguniform" and value[0] <= 0:
            raise ValueError(f"loguniform needs low > 0 (got {list(value)})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in PARAM_KINDS if getattr(self, k) is not None)

    def probe_values(self) -> list[Any]:
        """Values that must all be valid for the experiment: every listed value, or both bounds."""
        value = getattr(self, self.kind)
        if self.kind == "randint":
            return [value[0], value[1] - 1]
        return list(value)


PARAM_KINDS = ("choice", "grid", "uniform", "loguniform", "randint")


class Objective(Section):
    metric: str = Field(description="a metric the experiment's method reports")
    mode: Literal["max", "min"] = Field(description="maximise or minimise it")


class Search(Section):
    """How trials are drawn and run."""

    algorithm: Literal["random", "grid", "optuna", "nsga2"] = Field("random", description="search algorithm")
    num_samples: int = Field(8, ge=1, description="trials (for grid: repeats of the whole grid)")
    max_concurrent: int = Field(2, ge=1, description="trials running at once")
    seeds: int = Field(1, ge=1, description="seed repeats per configuration")
    max_failures: int = Field(1, ge=0, description="retries of a failing trial")
    scheduler: Literal["none", "asha"] = Field(
        "none",
        description="ASHA early stopping on checkpoint metrics (single objective; needs experiment.dynamics.every)",
    )


class Resources(Section):
    """What each trial reserves from Ray."""

    cpus: float = Field(1, gt=0, description="CPUs per trial")
    gpus: float = Field(0, ge=0, description="GPUs per trial")


class Sweep(Section):
    """A search over an experiment's dotted keys (``experiment``: a path or an inline spec)."""

    name: str = Field(pattern=NAME_PATTERN, description="names the sweep directory and MLflow parent run")
    experiment: SerializeAsAny[Experiment]
    space: dict[str, Param] = Field(description="dotted key → one of choice, grid, uniform, loguniform, randint")
    objectives: list[Objective] = Field(
        min_length=1, description="list of {metric, mode: max|min}; two or more give a Pareto front"
    )
    search: Search = Search()
    resources: Resources = Resources()

    @field_validator("space")
    @classmethod
    def _non_empty(cls, space: dict[str, Param]) -> dict[str, Param]:
        if not space:
            raise ValueError("give at least one dotted key to search over")
        return space

    @property
    def hash(self) -> str:
        return content_hash(self.model_dump(mode="json"))


# ---------------------------------------------------------------- parsing


@cache
def experiment_type(family: str) -> type[Experiment]:
    """The family's typed experiment: its ``task.data``/``task.model``/``eval`` sections and
    ``method`` as the union of its method table's spec classes, discriminated by ``name``."""
    fam = family_spec(family)
    specs = tuple(row.spec for row in fam.methods.values())
    method: Any = specs[0] if len(specs) == 1 else Annotated[Union[specs], Field(discriminator="name")]  # noqa: UP007
    title = family.title()
    task = create_model(
        f"{title}Task",
        __base__=Task,
        data=(fam.data, ...),
        model=(fam.model, ...),
    )
    return create_model(
        f"{title}Experiment", __base__=Experiment, task=(task, ...), method=(method, ...), eval=(fam.eval, ...)
    )


def parse_experiment(raw: Any, check_files: bool = True) -> Experiment:
    """Validate a raw mapping into the family's typed experiment, or raise one :class:`SpecError`.

    ``check_files`` also runs :func:`check_environment` (the driver's job; workers pass False)."""
    if not isinstance(raw, Mapping):
        raise SpecError(f"an experiment spec must be a mapping (got {type(raw).__name__})")
    raw = dict(raw)
    task = raw.get("task")
    if not isinstance(task, Mapping):
        raise SpecError(f"task: required mapping with family, data, model (got {excerpt(task)})")
    family = task.get("family")
    if family not in FAMILIES:
        raise SpecError(f"task.family: unknown family {excerpt(family)}; known: {', '.join(known_families())}")
    fam = family_spec(family)

    errors: list[str] = []
    sections = {
        ("task", "data"): fam.data,
        ("task", "model"): fam.model,
        ("eval",): fam.eval,
    }
    task = dict(task)
    for path, model in sections.items():
        holder = task if path[0] == "task" else raw
        value = _validate_section(model, holder.get(path[-1]) or {}, ".".join(path), errors)
        holder[path[-1]] = value

    method = raw.get("method")
    name = method.get("name") if isinstance(method, Mapping) else None
    if not isinstance(name, str) or name not in fam.methods:
        errors.append(
            f"method.name: unknown method {excerpt(name)} for family {family!r}; "
            f"known: {', '.join(sorted(fam.methods))}"
        )
    else:
        raw["method"] = _validate_section(fam.methods[name].spec, method, "method", errors)
    raw["task"] = task

    if errors:
        raise SpecError("; ".join(errors))
    try:
        exp = experiment_type(family).model_validate(raw)
    except ValidationError as err:
        raise SpecError(_format(err, "")) from None
    if exp.compute.device not in fam.devices:
        raise SpecError(
            f"compute.device: {exp.compute.device!r} is not supported by the {family} family "
            f"(use {' or '.join(fam.devices)})"
        )
    if fam.rules is not None:  # the family's cross-section rules (FamilySpec.rules)
        load_object(fam.rules)(exp.job())
    if getattr(exp.task.data, "requests", None) and exp.dynamics.every:  # a chain (otu.runtime.requests)
        raise SpecError(
            "dynamics.every: a chain of requests (task.data.requests) evaluates each request's final model; "
            "checkpoint dynamics within requests are not supported (set dynamics.every: 0)"
        )
    if exp.dynamics.attacks and not getattr(exp.eval, "robustness", []):
        raise SpecError("dynamics.attacks: eval.robustness lists no attack to apply to the checkpoints")
    select = exp.dynamics.select
    known = checkpoint_metrics(exp)
    if select is not None and select not in known:
        hint = " (attacked metrics need dynamics.attacks: true)" if select in known_metrics(exp) else ""
        raise SpecError(
            f"dynamics.select: unknown metric {select!r} for method {name!r}{hint}; known: {', '.join(known)}"
        )
    if check_files:  # on absolute paths (``~`` expanded), as the run will read them
        check_environment(resolve_paths(exp, Path.cwd()))
    return exp


def known_metrics(exp: Experiment) -> list[str]:
    """The metric names ``exp`` reports: :func:`reported_metrics`, ``<metric>@<label>`` /
    ``recovery_<metric>@<label>`` for each attack its ``eval.robustness`` lists, and those its
    ``eval.membership`` attack adds."""
    from otu.robustness import derived_names

    metrics = reported_metrics(exp)
    attacks = _attacks(exp, metrics)
    membership = getattr(getattr(exp.eval, "membership", None), "metrics", ())  # eval.membership's rows
    return [*metrics, *derived_names(attacks), *membership]


def reported_metrics(exp: Experiment) -> tuple[str, ...]:
    """What ``exp``'s evaluation returns: its data section's own list where it has one (the LLM
    family's layout muse), else the family's for the method."""
    return getattr(exp.task.data, "metrics", None) or family_spec(exp.task.family).metrics_for(exp.method.name)


def checkpoint_metrics(exp: Experiment) -> list[str]:
    """The metric names each ``dynamics`` checkpoint row holds: the family's for the method and, with
    ``dynamics.attacks``, ``<metric>@<label>`` of each attack (no recovery ratios: those need the
    reference models' attacks)."""
    from otu.robustness import derived_names

    metrics = reported_metrics(exp)
    if not exp.dynamics.attacks:
        return list(metrics)
    return [*metrics, *derived_names([(label, reported, False) for label, reported, _ in _attacks(exp, metrics)])]


def _attacks(exp: Experiment, metrics: tuple[str, ...]) -> list[tuple[str, tuple[str, ...], bool]]:
    """Per ``eval.robustness`` attack: its label, the metrics it reports (its own, else the family's)
    and whether it has recovery ratios (only when it reports the family's: a clean value to compare)."""
    return [
        (a.label, own or metrics, own is None)
        for a in getattr(exp.eval, "robustness", [])
        for own in [getattr(a, "metrics", None)]
    ]


def check_environment(exp: Experiment) -> None:
    """The family's checks of what ``exp`` names on this machine (files exist, columns present,
    checkpoints load, sets non-empty); raises SpecError/DataError. Run once, in the driver."""
    checks = family_spec(exp.task.family).checks
    if checks is not None:
        load_object(checks)(exp.job(), exp.context())


def parse_sweep(raw: Any, base_dir: Path | None = None, check_files: bool = True) -> Sweep:
    """Validate a sweep mapping; ``experiment`` may be inline or a path relative to ``base_dir``."""
    if not isinstance(raw, Mapping):
        raise SpecError(f"a sweep spec must be a mapping (got {type(raw).__name__})")
    raw = dict(raw)
    experiment = copy.deepcopy(_resolve_experiment_ref(raw.get("experiment"), base_dir))
    overrides = raw.pop("overrides", None) or {}
    if not isinstance(overrides, Mapping) or not isinstance(experiment, dict):
        raise SpecError(f"overrides: a mapping of dotted experiment keys to values (got {excerpt(overrides)})")
    for key, value in overrides.items():
        set_dotted(experiment, key, value)
    exp = parse_experiment(experiment, check_files)
    raw["experiment"] = exp
    try:
        sweep = Sweep.model_validate(raw)
    except ValidationError as err:
        raise SpecError(_format(err, "")) from None

    errors: list[str] = []
    metrics = known_metrics(exp)
    base = family_spec(exp.task.family).metrics_for(exp.method.name)
    for i, obj in enumerate(sweep.objectives):
        if obj.metric not in metrics:
            errors.append(
                f"objectives.{i}.metric: unknown metric {obj.metric!r} for method "
                f"{exp.method.name!r}; known: {', '.join(m for m in metrics if '@' not in m)}"
                + (" and <metric>@<attack>, recovery_<forget metric>@<attack>" if len(metrics) > len(base) else "")
            )
    for key, param in sweep.space.items():
        for value in param.probe_values():
            try:
                probed = exp.with_overrides({key: value}, check_files)
            except SpecError as err:
                errors.append(f"space.{key}: value {excerpt(value)} is not valid here: {err}")
                break
            if param.kind in ("uniform", "loguniform") and is_int(get_dotted(probed.to_dict(), key)):
                errors.append(f"space.{key}: an integer field cannot take a {param.kind} range; use randint or choice")
                break
    last_seed = exp.seed + sweep.search.seeds - 1
    if last_seed > MAX_SEED:
        errors.append(
            f"search.seeds: seeds {exp.seed}..{last_seed} pass {MAX_SEED} (the largest seed numpy and torch take)"
        )
    algo = sweep.search.algorithm
    kinds = {key: p.kind for key, p in sweep.space.items()}
    if algo == "grid" and any(k not in ("grid", "choice") for k in kinds.values()):
        errors.append(f"search.algorithm: 'grid' needs grid/choice values for every key (got {kinds})")
    elif algo == "grid" and "grid" not in kinds.values():  # Tune samples choice keys: nothing would be enumerated
        errors.append(
            f"search.algorithm: 'grid' enumerates grid keys and samples choice keys num_samples times; give at least "
            f"one key as grid: [...] (got {kinds}), or use algorithm random"
        )
    if algo in ("optuna", "nsga2") and "grid" in kinds.values():
        errors.append(f"search.algorithm: {algo!r} cannot take 'grid' values; use 'choice' (got {kinds})")
    if sweep.search.scheduler == "asha":
        if len(sweep.objectives) > 1:
            errors.append(
                "search.scheduler: 'asha' needs a single objective (early-stopped trials bias a Pareto front)"
            )
        if exp.dynamics.every == 0:
            errors.append("search.scheduler: 'asha' stops on checkpoint metrics; set experiment.dynamics.every > 0")
    if errors:
        raise SpecError("; ".join(errors))
    return sweep


class SpecLoader(yaml.SafeLoader):
    """YAML with YAML 1.2 floats (``1e-5`` and ``1.0e12`` are numbers; YAML 1.1 reads them as text)
    and no duplicate keys (YAML would silently keep the last value)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[str, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            line = key_node.start_mark.line + 1
            if key_node.value in seen:
                raise SpecError(f"duplicate key {excerpt(key_node.value)} (lines {seen[key_node.value]} and {line})")
            seen[key_node.value] = line
        return super().construct_mapping(node, deep)


SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+.0123456789"),
)


MAX_VALUES = 100_000
"""Values a spec may expand to: YAML aliases can make a 2 KB file billions of values (an alias bomb)."""


def parse_yaml(text: str, where: str = "spec") -> Any:
    """Parse YAML text; any mistake is one :class:`SpecError` line naming ``where`` and the line."""
    try:
        value = yaml.load(text, Loader=SpecLoader)
        if _expanded_size(value, {}) > MAX_VALUES:
            raise SpecError(f"expands to more than {MAX_VALUES} values (YAML aliases?)")
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise SpecError(f"{where}: not valid YAML: {err.problem or err.context}{at}") from None
    except yaml.YAMLError as err:
        raise SpecError(f"{where}: not valid YAML: {excerpt(str(err))}") from None
    except SpecError as err:
        raise SpecError(f"{where}: {err}") from None
    except RecursionError:
        raise SpecError(f"{where}: nested too deeply") from None
    return value


def _expanded_size(value: Any, memo: dict[int, int]) -> int:
    """Number of values ``value`` holds once every alias is expanded (computed once per object)."""
    if not isinstance(value, dict | list):
        return 1
    key = id(value)
    if key in memo:
        if memo[key] < 0:
            raise SpecError("a YAML alias refers to itself")
        return memo[key]
    memo[key] = -1
    items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
    total = 1
    for item in items:
        total += _expanded_size(item, memo)
        if total > MAX_VALUES:
            break
    memo[key] = total
    return total


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise SpecError(f"{path}: is a directory, not a spec file")
    if not path.is_file():
        raise SpecError(f"spec file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise SpecError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise SpecError(f"{path}: cannot read: {err.strerror}") from None
    raw = parse_yaml(text, str(path))
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a spec must be a YAML mapping (got {type(raw).__name__})")
    return raw


def is_sweep(raw: Mapping[str, Any]) -> bool:
    return "space" in raw or "objectives" in raw


def load_experiment(path: str | Path, overrides: Iterable[str] = (), check_files: bool = True) -> Experiment:
    """The experiment in ``path`` with ``overrides``, its paths absolute against the current directory."""
    raw = load_yaml(path)
    if is_sweep(raw):
        raise SpecError(f"{path}: this is a sweep spec; use `otu sweep`")
    apply_overrides(raw, overrides)
    return resolve_paths(parse_experiment(raw, check_files), Path.cwd())


def load_sweep(path: str | Path, overrides: Iterable[str] = (), check_files: bool = True) -> Sweep:
    """The sweep in ``path`` (experiment paths relative to the file); spec paths absolute as above."""
    path = Path(path)
    raw = load_yaml(path)
    if not is_sweep(raw):
        raise SpecError(f"{path}: not a sweep spec (no 'space'/'objectives'); use `otu run`")
    raw["experiment"] = _resolve_experiment_ref(raw.get("experiment"), path.parent)
    apply_overrides(raw, overrides)
    return resolve_paths(parse_sweep(raw, path.parent, check_files), Path.cwd())


def load_deferring(path: str | Path, overrides: Iterable[str], work: Path) -> tuple[Experiment | Sweep, dict[str, str]]:
    """The experiment or sweep in ``path``, validated against files relative to ``work``; when the
    spec names files this machine cannot check (:func:`otu.paths.elsewhere`: a hub id, a cluster's
    checkpoint) only the schema is checked here and those keys are returned: the run checks them
    before any work where it runs."""
    load = load_sweep if is_sweep(load_yaml(path)) else load_experiment
    schema_only = load(path, overrides, check_files=False)
    exp = schema_only.experiment if isinstance(schema_only, Sweep) else schema_only
    prefix = "experiment." if isinstance(schema_only, Sweep) else ""
    deferred = {f"{prefix}{key}": value for key, value in elsewhere(exp, work).items()}
    return (schema_only if deferred else load(path, overrides)), deferred


def _resolve_experiment_ref(ref: Any, base_dir: Path | None) -> Any:
    if isinstance(ref, str):
        target = Path(ref) if Path(ref).is_absolute() or base_dir is None else base_dir / ref
        if not target.is_file():
            raise SpecError(f"experiment: file not found: {target}")
        return load_yaml(target)
    if ref is None:
        raise SpecError("experiment: required (a path to an experiment spec, or an inline mapping)")
    return ref


# ---------------------------------------------------------------- dotted keys and hashing


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` strings in place; values are parsed as YAML scalars/lists."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"--set: expected dotted.key=value (got {excerpt(item)})")
        set_dotted(raw, key.strip(), parse_yaml(text, f"--set {key.strip()}"))
    return raw


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key):
        raise SpecError(f"{excerpt(key)}: not a dotted key (e.g. method.alpha)")
    node = raw
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise SpecError(f"{'.'.join(parts[: depth + 1])}: is a value, cannot set {key}")
        node = child
    node[parts[-1]] = copy.deepcopy(value)


def get_dotted(raw: Mapping[str, Any], key: str) -> Any:
    node: Any = raw
    for part in key.split("."):
        node = node[part]
    return node


def dump_yaml(obj: BaseModel, path: Path) -> None:
    path.write_text(yaml.safe_dump(obj.model_dump(mode="json"), sort_keys=False))


# ---------------------------------------------------------------- errors


def _validate_section(model: type[BaseModel], value: Any, prefix: str, errors: list[str]) -> Any:
    try:
        return model.model_validate(value)
    except ValidationError as err:
        errors.append(_format(err, prefix))
        return value


def _format(err: ValidationError, prefix: str) -> str:
    lines = []
    for e in err.errors(include_url=False):
        loc = ".".join(str(p) for p in (prefix, *e["loc"]) if p != "")
        msg = e["msg"].removeprefix("Value error, ")
        got = "" if e["type"] in ("missing", "value_error") else f" (got {excerpt(e['input'])})"
        lines.append(f"{loc or '<root>'}: {msg}{got}")
    return "; ".join(lines)
