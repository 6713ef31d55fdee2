"""Typed, immutable pipeline configuration.

``configs/default.yaml`` is the single source of truth for default *values*; the
pydantic models below only declare *types and ranges* (every field is required).
:func:`load_config` reads the defaults, deep-merges user YAML files and
command-line overrides over them, validates the result and returns a frozen
:class:`Config`.  Every error is a :class:`~pipeline.errors.ConfigError` naming the
dotted key and the file that supplied the offending value.

Merging is guided by the models: a key whose field is a section (a sub-model) is
merged key by key, anything else (scalars, lists, and mappings such as
``sessions.months``) is replaced as a whole.

Adding a stage section (e.g. ``dwi``)
-------------------------------------
1. Write a ``class DwiConfig(Section)`` with required, range-checked fields
   (no defaults) and numpydoc ``Attributes``.
2. Add ``dwi: DwiConfig`` to :class:`Config` and the class name to ``__all__``.
3. Add a commented ``dwi:`` block to ``configs/default.yaml``; the tests check
   that every leaf there carries a comment.

This module imports only the standard library, PyYAML and pydantic.
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from pipeline.errors import ConfigError

__all__ = [
    "AnatConfig",
    "BidsConfig",
    "Config",
    "FuncConfig",
    "GroupConfig",
    "NbsConfig",
    "Section",
    "SessionInfo",
    "SessionsConfig",
    "TractConfig",
    "ValidationConfig",
    "default_config_path",
    "load_config",
    "resolve_sessions",
]

#: Source label of values given through ``load_config(overrides=...)``.
COMMAND_LINE = "command line"
#: Key reported for problems concerning a whole file rather than one entry.
_FILE_KEY = "<top level>"
#: BIDS label: alphanumeric only (no ``-``/``_``, no ``ses-`` prefix).
_LABEL_PATTERN = r"^[A-Za-z0-9]+$"
#: Values of a BIDS TSV cell that mean "no value".
_MISSING_CELLS = frozenset({"", "n/a", "na", "nan"})

Label = Annotated[str, Field(pattern=_LABEL_PATTERN)]


def _freeze_mapping(value: Mapping[str, float]) -> Mapping[str, float]:
    return MappingProxyType(dict(value))


#: A read-only ``{session label: value}`` mapping that serialises to a dict.
FrozenMonths = Annotated[
    Mapping[str, float],
    AfterValidator(_freeze_mapping),
    PlainSerializer(dict, return_type=dict),
]


class _KeyedError(ValueError):
    """Cross-field validation failure that knows which key is at fault.

    ``key`` and ``related`` are dotted keys relative to the model raising it.
    """

    def __init__(self, key: str, problem: str, related: Sequence[str] = ()):
        self.key = key
        self.related = tuple(related)
        super().__init__(problem)


# --------------------------------------------------------------------------- models


class Section(BaseModel):
    """Base class of every configuration section.

    Frozen, rejects unknown keys, strict types (no ``"5"`` -> 5 or ``true`` -> 1
    coercion; integers are accepted for floats) and finite floats only.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class BidsConfig(Section):
    """Input dataset (BIDS) conventions.

    Attributes
    ----------
    lesion_derivatives : str or None
        Lesion-mask derivatives dataset, relative to the BIDS directory or
        absolute; ``None`` when there are no lesion masks.
    lesion_label : str
        Value of the ``label-`` entity of lesion masks.
    bold_task : str
        BIDS ``task-`` entity of the resting-state BOLD runs.
    pybids_validate : bool
        Whether pybids runs its own BIDS validation when indexing.
    """

    lesion_derivatives: str | None = Field(min_length=1)
    lesion_label: Label
    bold_task: Label
    pybids_validate: bool


class SessionsConfig(Section):
    """Longitudinal design.

    Attributes
    ----------
    order : tuple of str
        Session labels (without ``ses-``) in time order.
    months : Mapping[str, float]
        Read-only time since baseline of each session in ``order`` (months),
        strictly increasing along ``order``.
    tsv_time_column : str
        Column of ``sub-XX_sessions.tsv`` giving time since baseline in months;
        when present it takes precedence over ``months``.
    """

    order: tuple[Label, ...] = Field(strict=False, min_length=1)
    months: FrozenMonths
    tsv_time_column: str = Field(min_length=1)

    @model_validator(mode="after")
    def _check_sessions(self) -> SessionsConfig:
        duplicated = sorted({s for s in self.order if self.order.count(s) > 1})
        if duplicated:
            raise _KeyedError("order", f"sessions listed more than once: {duplicated}")
        missing = [s for s in self.order if s not in self.months]
        unknown = [s for s in self.months if s not in self.order]
        if missing or unknown:
            parts = []
            if missing:
                parts.append(f"no time given for {missing}")
            if unknown:
                parts.append(f"{unknown} not in sessions.order {list(self.order)}")
            raise _KeyedError("months", "; ".join(parts), related=["order"])
        for s0, s1 in itertools.pairwise(self.order):
            t0, t1 = self.months[s0], self.months[s1]
            if t1 <= t0:
                raise _KeyedError(
                    "months",
                    "months must increase strictly along sessions.order, got "
                    f"{s0}={t0:g} then {s1}={t1:g}",
                    related=["order"],
                )
        return self


class GroupConfig(Section):
    """Group-level comparison.

    Attributes
    ----------
    compare : tuple of (str, str)
        ``(reference, follow_up)`` session labels, both in ``sessions.order``.
    include_flagged : bool
        Keep sessions whose structural results are flagged as implausible in
        the group statistics (default: leave them out with the reason).
    """

    compare: tuple[Label, Label] = Field(strict=False)
    include_flagged: bool

    @model_validator(mode="after")
    def _check_distinct(self) -> GroupConfig:
        if self.compare[0] == self.compare[1]:
            raise _KeyedError("compare", f"needs two different sessions, got {list(self.compare)}")
        return self


class ValidationConfig(Section):
    """Input validation thresholds.

    Attributes
    ----------
    b0_threshold : float
        Volumes with b <= this (s/mm^2) count as b = 0.
    shell_tolerance : float
        b-values within this (s/mm^2) of each other form one shell.
    bvec_norm_tolerance : float
        Allowed ``|norm - 1|`` of gradient directions with b > 0 (unitless).
    min_directions : int
        Minimum distinct gradient directions per DWI shell for a tensor fit.
    min_bold_volumes : int
        Minimum number of BOLD volumes per run.
    grid_tolerance_mm : float
        Tolerance (mm) when comparing affines of a mask and its reference image.
    """

    b0_threshold: float = Field(ge=0, le=500)
    shell_tolerance: float = Field(gt=0, le=1000)
    bvec_norm_tolerance: float = Field(gt=0, lt=1)
    min_directions: int = Field(ge=6)
    min_bold_volumes: int = Field(ge=2)
    grid_tolerance_mm: float = Field(gt=0, le=1)


class AnatConfig(Section):
    """Structural stage.

    Attributes
    ----------
    brain_extraction : {"deepbet", "threshold"}
        Brain-extraction method (:func:`pipeline.anat.brain.extract_brain`).
    skull_stripped : {"auto", True, False}
        Whether the structural inputs are already skull-stripped.
    template_resolution : int
        MNI152 grid (1 or 2 mm) used for registration and tissue priors.
    syn : bool
        Non-linear SyN registration after the affine one.
    auto_lesions : bool
        Segment FLAIR hyperintensities when no lesion mask is provided.
    lesion_min_volume_mm3 : float
        Connected lesion components smaller than this (mm^3) are ignored.
    nawm_lesion_margin_mm : float
        Lesions are dilated by this (mm) before removal from white matter (NAWM).
    anatomical_reference : {"sessionwise", "first", "unbiased"}
        Within-subject reference grid of all sessions (see
        :mod:`pipeline.anat.reference`).
    reference_iterations : int
        Template refinement rounds of the ``unbiased`` reference.
    """

    brain_extraction: Literal["deepbet", "threshold"]
    skull_stripped: Literal["auto", True, False]
    template_resolution: Literal[1, 2]
    syn: bool
    auto_lesions: bool
    lesion_min_volume_mm3: float = Field(ge=0)
    nawm_lesion_margin_mm: float = Field(ge=0, le=10)
    anatomical_reference: Literal["sessionwise", "first", "unbiased"]
    reference_iterations: int = Field(ge=0, le=5)


class DwiConfig(Section):
    """Diffusion stage (see configs/default.yaml for every key's meaning)."""

    denoise: Literal["mppca", "patch2self", "none"]
    denoise_patch_radius: int = Field(ge=1, le=5)
    denoise_mask: bool
    gibbs: bool
    motion_correction: bool
    eddy_correction: bool
    phase_encoding_axis: Literal["auto", "i", "j", "k"]
    fd_threshold_mm: float | None = Field(gt=0, le=10)
    dropout_threshold: float = Field(gt=0, le=20)
    exclude_outliers: bool
    warn_excluded_fraction: float = Field(ge=0, le=1)
    max_excluded_fraction: float = Field(ge=0, le=1)
    mask: Literal["structural", "median_otsu"]
    tensor_method: Literal["WLS", "OLS", "NLLS", "RESTORE"]
    tensor_bmax: float | None = Field(gt=0, le=100000)
    tensor_shells: list[float] | None
    kurtosis: Literal["auto", True, False]
    wm_threshold: float = Field(gt=0, lt=1)
    lesion_margin_mm: float = Field(ge=0, le=10)
    perilesion_ring_mm: float = Field(gt=0, le=20)
    atlas: str | None
    atlas_labels: str | None
    save_preproc: bool

    @model_validator(mode="after")
    def _atlas_pair(self) -> DwiConfig:
        if (self.atlas is None) != (self.atlas_labels is None):
            raise _KeyedError("atlas", "dwi.atlas and dwi.atlas_labels go together (both or neither)",
                              related=("atlas_labels",))
        return self


class TractConfig(Section):
    """Tractography and tractometry stage (see configs/default.yaml for every key)."""

    bundles: str | None
    model: Literal["tensor", "csa", "csd"]
    sh_order: int = Field(ge=2, le=12)
    response_fa_threshold: float = Field(gt=0, lt=1)
    method: Literal["deterministic", "probabilistic"]
    seeds_per_voxel: int = Field(ge=1, le=27)
    step_size_mm: float = Field(gt=0, le=5)
    max_angle_deg: float = Field(gt=0, le=90)
    min_length_mm: float = Field(ge=0, le=200)
    max_length_mm: float = Field(gt=0, le=500)
    fa_threshold: float = Field(ge=0, lt=1)
    seed_fa_threshold: float = Field(ge=0, lt=1)
    lesion_policy: Literal["pass", "stop"]
    n_nodes: int = Field(ge=20, le=500)
    min_streamlines: int = Field(ge=1)
    clean: bool
    clean_distance_sd: float = Field(gt=0)
    clean_length_sd: float = Field(gt=0)
    clean_iterations: int = Field(ge=1, le=20)
    save_tractogram: bool
    tractogram_format: Literal["trk", "trx"]

    @model_validator(mode="after")
    def _lengths(self) -> TractConfig:
        if self.sh_order % 2:
            raise _KeyedError("sh_order", f"tract.sh_order must be even, got {self.sh_order}")
        if self.model == "csa" and self.method == "probabilistic":
            raise _KeyedError("method", "tract.method probabilistic needs a fibre ODF: use "
                              "tract.model csd (or tensor); CSA's diffusion ODF is too broad "
                              "to sample directions from", related=("model",))
        if self.min_length_mm >= self.max_length_mm:
            raise _KeyedError("min_length_mm", "tract.min_length_mm must be below "
                              "tract.max_length_mm", related=("max_length_mm",))
        return self


#: Coordinate atlases shipped with nilearn (:data:`pipeline.func.connectome.COORDINATE_ATLASES`).
COORDINATE_ATLASES = ("power", "dosenbach", "seitzman")


class FuncConfig(Section):
    """Resting-state fMRI stage (see configs/default.yaml for every key's meaning).

    ``atlas`` is one of :data:`COORDINATE_ATLASES` (spheres of
    ``sphere_radius_mm``) or the path of an MNI label image, which then needs
    ``atlas_labels`` (a TSV with columns ``index`` and ``label`` or ``name``).

    ``input`` chooses where the BOLD comes from: ``raw`` (the BIDS run,
    preprocessed by this stage) or ``fmriprep`` (fMRIPrep derivatives in
    ``fmriprep_dir``: ``desc-preproc_bold`` in ``fmriprep_space`` and
    ``desc-confounds_timeseries.tsv``); ``fmriprep_dir`` is required with
    ``fmriprep`` and must be null with ``raw``.
    """

    input: Literal["raw", "fmriprep"]
    fmriprep_dir: str | None = Field(min_length=1)
    fmriprep_space: Label
    dummy_volumes: int = Field(ge=0, le=100)
    slice_timing: bool
    slice_time_ref: float = Field(ge=0, le=1)
    realign_fwhm_mm: float = Field(gt=0, le=12)
    mni_voxel_mm: float | None = Field(ge=1, le=8)
    wm_threshold: float = Field(gt=0, lt=1)
    csf_threshold: float = Field(gt=0, lt=1)
    strategy: Literal["24P", "36P", "acompcor"]
    n_compcor: int = Field(ge=1, le=20)
    scrubbing: bool
    fd_threshold_mm: float = Field(gt=0, le=5)
    scrub_before: int = Field(ge=0, le=5)
    scrub_after: int = Field(ge=0, le=5)
    min_segment: int = Field(ge=0, le=50)
    min_duration_s: float = Field(ge=0)
    high_pass: float | None = Field(gt=0, lt=1)
    low_pass: float | None = Field(gt=0, le=10)
    detrend: bool
    standardize: bool
    atlas: str = Field(min_length=1)
    atlas_labels: str | None = Field(min_length=1)
    sphere_radius_mm: float = Field(gt=0, le=20)
    min_coverage: float = Field(ge=0, le=1)
    measures: tuple[Literal["correlation", "fisher_z", "partial_correlation"], ...] = Field(
        strict=False, min_length=1
    )
    save_preproc: bool

    @model_validator(mode="after")
    def _check(self) -> FuncConfig:
        if self.input == "fmriprep" and self.fmriprep_dir is None:
            raise _KeyedError("fmriprep_dir", "func.input is fmriprep: set func.fmriprep_dir to the "
                              "fMRIPrep derivatives folder (absolute, or relative to the BIDS "
                              "directory)", related=("input",))
        if self.input == "raw" and self.fmriprep_dir is not None:
            raise _KeyedError("fmriprep_dir", f"func.fmriprep_dir ({self.fmriprep_dir!r}) is only "
                              "used with func.input: fmriprep; func.input is raw",
                              related=("input",))
        band = (self.high_pass, self.low_pass)
        if None not in band and band[0] >= band[1]:
            raise _KeyedError("high_pass", f"func.high_pass ({self.high_pass:g} Hz) must be below "
                              f"func.low_pass ({self.low_pass:g} Hz)", related=("low_pass",))
        if len(set(self.measures)) != len(self.measures):
            raise _KeyedError("measures", f"measures listed more than once: {list(self.measures)}")
        coordinate = self.atlas in COORDINATE_ATLASES
        if coordinate and self.atlas_labels is not None:
            raise _KeyedError("atlas_labels", f"func.atlas_labels is only used with a label image; "
                              f"func.atlas is the coordinate atlas {self.atlas!r}",
                              related=("atlas",))
        if not coordinate and self.atlas_labels is None:
            raise _KeyedError("atlas", f"expected one of {list(COORDINATE_ATLASES)} or the path of "
                              f"an MNI label image together with func.atlas_labels (a TSV), got "
                              f"{self.atlas!r} without atlas_labels", related=("atlas_labels",))
        return self


class NbsConfig(Section):
    """Group network-based statistic on the fMRI matrices (see configs/default.yaml)."""

    measure: Literal["correlation", "fisher_z", "partial_correlation"]
    threshold: float = Field(gt=0)
    threshold_type: Literal["t", "p"]
    size: Literal["extent", "intensity"]
    alternative: Literal["greater", "less", "two-sided", "both-one-sided"]
    hypothesis: str | None
    n_permutations: int = Field(ge=100, le=1_000_000)
    alpha: float = Field(gt=0, lt=1)
    power_repetitions: int = Field(ge=0, le=100_000)
    power_n_subjects: tuple[int, ...] = Field(strict=False, min_length=1)
    power_effects: tuple[float, ...] = Field(strict=False, min_length=1)
    power_thresholds: tuple[float, ...] | None = Field(strict=False)
    power_regions: int = Field(ge=2, le=100_000)
    power_edges: int = Field(ge=1, le=10_000_000)
    power_noise: Literal["wishart", "gaussian", "resample"]
    power_permutations: int = Field(ge=100, le=1_000_000)

    @model_validator(mode="after")
    def _p_threshold(self) -> NbsConfig:
        if self.threshold_type == "p" and not self.threshold < 0.5:
            raise _KeyedError("threshold", "a p-value threshold must lie in (0, 0.5)",
                              related=("threshold_type",))
        for thr in self.power_thresholds or ():
            if not thr > 0 or (self.threshold_type == "p" and not thr < 0.5):
                raise _KeyedError("power_thresholds", f"threshold {thr} is not a valid "
                                  f"{self.threshold_type} threshold", related=("threshold_type",))
        if any(n < 3 for n in self.power_n_subjects):
            raise _KeyedError("power_n_subjects", "every simulated subject count must be >= 3")
        if any(e < 0 for e in self.power_effects):
            raise _KeyedError("power_effects", "effects are sizes (>= 0); the direction is "
                              "`alternative`'s")
        k, m = self.power_regions, self.power_edges
        if not k - 1 <= m <= k * (k - 1) // 2:
            raise _KeyedError("power_edges", f"a connected subnetwork of {k} regions has "
                              f"{k - 1} .. {k * (k - 1) // 2} edges, got {m}",
                              related=("power_regions",))
        if self.power_noise == "wishart" and self.measure == "partial_correlation":
            raise _KeyedError("power_noise", "the wishart noise model simulates correlation "
                              "matrices; use gaussian or resample with partial_correlation",
                              related=("measure",))
        return self


class Config(Section):
    """The fully resolved, immutable pipeline configuration.

    Build it with :func:`load_config`.  Assigning an attribute raises
    :class:`pydantic.ValidationError`; sequences are tuples and mappings are
    read-only.  Equality compares configuration values only, not provenance.

    Attributes
    ----------
    seed : int
        Global random seed for every stochastic step.
    bids : BidsConfig
    sessions : SessionsConfig
    group : GroupConfig
    validation : ValidationConfig
    anat : AnatConfig
    func : FuncConfig
    """

    seed: int = Field(ge=0, le=2**32 - 1)
    bids: BidsConfig
    sessions: SessionsConfig
    group: GroupConfig
    validation: ValidationConfig
    anat: AnatConfig
    dwi: DwiConfig
    tract: TractConfig
    func: FuncConfig
    nbs: NbsConfig

    _sources: tuple[str, ...] = PrivateAttr(default=())
    _origin: Mapping[tuple[str, ...], str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _check_compare_sessions(self) -> Config:
        unknown = [s for s in self.group.compare if s not in self.sessions.order]
        if unknown:
            raise _KeyedError(
                "group.compare",
                f"{unknown} not in sessions.order {list(self.sessions.order)}",
                related=["sessions.order"],
            )
        return self

    @property
    def sources(self) -> list[str]:
        """Sources merged to build this configuration, in merge order.

        Returns
        -------
        list of str
            The default file, each user file, then ``"command line"`` if
            overrides were given.
        """
        return list(self._sources)

    def source_of(self, key: str) -> str | None:
        """Return the source that supplied a (dotted) key's value.

        Parameters
        ----------
        key : str
            Dotted key, e.g. ``"validation.b0_threshold"``.

        Returns
        -------
        str or None
            File path or ``"command line"``; ``None`` if the configuration was
            not built by :func:`load_config`.
        """
        node: Any = self.to_dict()
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise KeyError(key)
            node = node[part]
        return _lookup_origin(self._origin, tuple(key.split(".")), None)

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as a plain, JSON-serialisable nested dict.

        Returns
        -------
        dict
            New dict (lists for sequences); feeding it back through
            ``load_config(overrides=...)`` reproduces an equal :class:`Config`.
        """
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        """Return the resolved configuration as YAML, headed by its sources.

        Returns
        -------
        str
            YAML text loadable as a user configuration file.
        """
        header = "# msmri resolved configuration, merged from:\n" + "".join(
            f"#   {s}\n" for s in self._sources
        )
        return header + yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Config):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))


# --------------------------------------------------------------------------- loading


def default_config_path() -> Path:
    """Return the path of the shipped ``default.yaml``.

    Returns
    -------
    pathlib.Path
        ``<repo>/configs/default.yaml`` for a source or editable install,
        otherwise the copy packaged in the wheel as ``pipeline/_configs``.
    """
    source_tree = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"
    if source_tree.is_file():
        return source_tree
    return Path(str(resources.files("pipeline") / "_configs" / "default.yaml"))


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML loader that rejects duplicated mapping keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[tuple[str, Any]] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            ident = (key_node.tag, key_node.value)
            if isinstance(key_node, yaml.ScalarNode) and ident in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key_node.value!r}",
                    key_node.start_mark,
                )
            seen.add(ident)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path, label: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(_FILE_KEY, label, f"cannot read configuration file: {exc}") from exc
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # safe: SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(_FILE_KEY, label, f"invalid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            _FILE_KEY,
            label,
            f"expected a mapping of configuration keys, got a YAML {type(data).__name__}",
        )
    return data


def _section_model(model: type[BaseModel] | None, key: Any) -> type[BaseModel] | None:
    """Return the sub-model of ``model.key`` if that field is a section."""
    if model is None or not isinstance(key, str) or key not in model.model_fields:
        return None
    annotation = model.model_fields[key].annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _plain(value: Any) -> Any:
    """Deep-copy ``value`` into plain dicts and lists."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _merge(
    base: dict[str, Any],
    update: Mapping[Any, Any],
    model: type[BaseModel] | None,
    prefix: tuple[str, ...],
    label: str,
    origin: dict[tuple[str, ...], str],
) -> None:
    """Deep-merge ``update`` into ``base`` in place, recording value sources."""
    for raw_key, value in update.items():
        key = str(raw_key) if model is not None else raw_key
        path = (*prefix, str(key))
        sub = _section_model(model, key)
        if sub is not None and isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value, sub, path, label, origin)
            continue
        base[key] = _plain(value)
        for stale in [p for p in origin if p[: len(path)] == path]:
            del origin[stale]
        origin[path] = label


def _expand_dotted(overrides: Mapping[Any, Any]) -> dict[str, Any]:
    """Turn ``{"a.b": 1}`` into ``{"a": {"b": 1}}`` (top-level keys only)."""
    expanded: dict[str, Any] = {}
    for key, value in overrides.items():
        parts = str(key).split(".")
        node = expanded
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        leaf = parts[-1]
        if isinstance(value, Mapping) and isinstance(node.get(leaf), dict):
            node[leaf].update(_plain(value))
        else:
            node[leaf] = _plain(value)
    return expanded


def _lookup_origin(
    origin: Mapping[tuple[str, ...], str], loc: tuple[str, ...], fallback: str | None
) -> str | None:
    """Return the source of the longest recorded prefix of ``loc``."""
    for n in range(len(loc), 0, -1):
        if loc[:n] in origin:
            return origin[loc[:n]]
    return fallback


def _dotted(loc: Iterable[Any]) -> str:
    key = ""
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
        else:
            key += f".{part}" if key else str(part)
    return key or _FILE_KEY


def _model_at(loc: Sequence[Any]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Config
    for part in loc:
        model = _section_model(model, part)
        if model is None:
            return None
    return model


def _describe(err: Mapping[str, Any], loc: tuple[Any, ...]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        allowed = sorted(model.model_fields) if model is not None else []
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        text = "unknown key"
        if hint:
            text += f" (did you mean '{hint[0]}'?)"
        return text + (f"; valid keys here: {', '.join(allowed)}" if allowed else "")
    if kind == "missing":
        return "required key is missing"
    msg = err["msg"]
    if kind == "string_pattern_mismatch" and err.get("ctx", {}).get("pattern") == _LABEL_PATTERN:
        msg = "must be a BIDS label (letters and digits only, no 'ses-'/'task-' prefix)"
    if "[key]" in loc:
        return f"invalid mapping key {err['input']!r}: {msg}"
    return f"{msg}, got {err['input']!r}"


def _to_config_error(
    exc: ValidationError, origin: Mapping[tuple[str, ...], str], fallback: str
) -> ConfigError:
    """Convert a pydantic error into a ConfigError naming key(s) and source(s)."""
    items: list[tuple[str, str, str]] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, _KeyedError):
            full = (*loc, *cause.key.split("."))
            problem = str(cause)
            for rel in cause.related:
                rel_loc = (*loc, *rel.split("."))
                rel_src = _lookup_origin(origin, rel_loc, fallback)
                problem += f" ({_dotted(rel_loc)} from {rel_src})"
        else:
            full = loc
            problem = _describe(err, loc)
        key_loc = tuple(p for p in full if p != "[key]")
        source = _lookup_origin(origin, tuple(str(p) for p in key_loc), fallback)
        items.append((_dotted(key_loc), str(source), problem))
    key, source, problem = items[0]
    if len(items) > 1:
        problem += f"; {len(items) - 1} more error(s): " + "; ".join(
            f"{src}: '{k}': {p}" for k, src, p in items[1:]
        )
    return ConfigError(key, source, problem)


#: Path-valued keys whose relative values are resolved against the folder of the
#: configuration file that set them (the working directory for command-line overrides),
#: so a project's configuration works from any directory and under Snakemake. Paths
#: inside the BIDS dataset (``bids.lesion_derivatives``, ``func.atlas`` /
#: ``func.atlas_labels``, ``func.fmriprep_dir``) stay relative to BIDS_DIR (resolved by
#: the command line, which knows it).
FILE_RELATIVE_KEYS: tuple[tuple[str, str], ...] = (
    ("dwi", "atlas"), ("dwi", "atlas_labels"), ("tract", "bundles"),
)


def _resolve_file_relative(
    data: dict[str, Any], origin: Mapping[tuple[str, ...], str], fallback: str
) -> None:
    for loc in FILE_RELATIVE_KEYS:
        section = data.get(loc[0])
        value = section.get(loc[1]) if isinstance(section, dict) else None
        if not isinstance(value, str) or not value or Path(value).is_absolute():
            continue
        source = _lookup_origin(origin, loc, fallback)
        base = Path.cwd() if source in (COMMAND_LINE, None) else Path(source).resolve().parent
        section[loc[1]] = os.path.normpath(base / value)


def load_config(
    user_files: Sequence[str | os.PathLike[str]] = (),
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Load the defaults, merge user files and overrides, and validate.

    Parameters
    ----------
    user_files : sequence of path-like
        YAML files deep-merged over ``default.yaml`` in the given order (later
        files win).  An empty file changes nothing.
    overrides : mapping, optional
        Nested dict merged last, reported as source ``"command line"``.  Top-level
        dotted keys are expanded (``{"validation.b0_threshold": 20}``).

    Returns
    -------
    Config
        The validated, frozen configuration.

    Raises
    ------
    ConfigError
        A file is unreadable, not valid YAML, not a mapping or has duplicate keys;
        or a value is unknown, of the wrong type or out of range.  The message
        names the dotted key and the file that supplied the value.
    """
    if isinstance(user_files, (str, os.PathLike)):
        user_files = (user_files,)
    default_path = default_config_path()
    default_label = str(default_path)
    origin: dict[tuple[str, ...], str] = {}
    data: dict[str, Any] = {}
    _merge(data, _read_yaml(default_path, default_label), Config, (), default_label, origin)
    sources = [default_label]
    for user_file in user_files:
        label = os.fspath(user_file)
        _merge(data, _read_yaml(Path(user_file), label), Config, (), label, origin)
        sources.append(label)
    if overrides is not None:
        if not isinstance(overrides, Mapping):
            raise ConfigError(
                _FILE_KEY, COMMAND_LINE, f"expected a mapping, got {type(overrides).__name__}"
            )
        if overrides:
            _merge(data, _expand_dotted(overrides), Config, (), COMMAND_LINE, origin)
            sources.append(COMMAND_LINE)
    _resolve_file_relative(data, origin, default_label)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise _to_config_error(exc, origin, default_label) from None
    config._sources = tuple(sources)
    config._origin = MappingProxyType(dict(origin))
    return config


# --------------------------------------------------------------------------- sessions


@dataclass(frozen=True)
class SessionInfo:
    """One session of a subject, placed in time.

    Attributes
    ----------
    label : str
        Session label without the ``ses-`` prefix.
    months : float
        Time since baseline (months).
    order : int
        0-based rank of the session in time among the resolved sessions.
    """

    label: str
    months: float
    order: int


def _parse_time(raw: Any, column: str, label: str, source: str) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, float) and math.isnan(raw):
        return None
    text = str(raw).strip()
    if text.lower() in _MISSING_CELLS:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ConfigError(
            "sessions.tsv_time_column",
            source,
            f"column '{column}' of session 'ses-{label}' must be a finite number "
            f"of months, got {raw!r}",
        )
    return value


def resolve_sessions(
    config: Config,
    sessions_table: Sequence[Mapping[str, Any]] | None = None,
    *,
    source: str = "sessions.tsv",
) -> list[SessionInfo]:
    """Place a subject's sessions in time.

    Parameters
    ----------
    config : Config
        Provides ``sessions.order``, ``sessions.months`` and
        ``sessions.tsv_time_column``.
    sessions_table : sequence of mapping, optional
        Rows of a BIDS ``sub-XX_sessions.tsv`` (``session_id`` like ``ses-m03``,
        and possibly the time column; ``n/a`` or empty cells mean no value).
        ``None`` or no rows: all sessions of the configuration are returned.
    source : str
        Name of the table used in error messages (e.g. its path).

    Returns
    -------
    list of SessionInfo
        The sessions of the table (or of the configuration), sorted by time.
        A session's time comes from the table's time column when it has a value
        there, else from ``sessions.months``.

    Raises
    ------
    ConfigError
        A row has no ``session_id``, a session is listed twice, a time value is
        not a number, two sessions share one time, or a session is neither in
        ``sessions.order`` nor given a time in the table (key ``sessions.order``).
    """
    sessions = config.sessions
    rows = list(sessions_table or ())
    if not rows:
        return [SessionInfo(s, sessions.months[s], i) for i, s in enumerate(sessions.order)]
    column = sessions.tsv_time_column
    times: dict[str, float] = {}
    for number, row in enumerate(rows, start=1):
        raw_id = row.get("session_id")
        label = "" if raw_id is None else str(raw_id).strip().removeprefix("ses-")
        if not label:
            raise ConfigError("sessions.order", source, f"row {number} has no 'session_id'")
        if label in times:
            raise ConfigError("sessions.order", source, f"session 'ses-{label}' listed twice")
        value = _parse_time(row.get(column), column, label, source)
        if value is None:
            if label not in sessions.months:
                raise ConfigError(
                    "sessions.order",
                    source,
                    f"session 'ses-{label}' is not in sessions.order {list(sessions.order)} "
                    f"and has no '{column}' value; add it to sessions.order and "
                    f"sessions.months, or give its time in the '{column}' column",
                )
            value = float(sessions.months[label])
        times[label] = value
    ordered = sorted(times.items(), key=lambda item: item[1])
    for (s0, t0), (s1, t1) in itertools.pairwise(ordered):
        if t0 == t1:
            raise ConfigError(
                "sessions.tsv_time_column",
                source,
                f"sessions 'ses-{s0}' and 'ses-{s1}' have the same time ({t0:g} months)",
            )
    return [SessionInfo(label, value, i) for i, (label, value) in enumerate(ordered)]
