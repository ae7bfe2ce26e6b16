"""plan.yaml -> a frozen, validated Plan. All validation happens here; nothing below reads YAML.

Every error names the YAML path of the bad field and what was expected, e.g.
``members[2].scales[1]: must be > 0``. Fields under ``defaults`` apply to every member that does not set
them. Relative paths resolve against the plan file's folder. Plans are untrusted input: numbers must be
finite and within the bounds below, and a YAML document whose aliases would expand past
``MAX_YAML_NODES`` (a "billion laughs") is refused before anything is built from it (``yaml_guard``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from segensemble.constants import IMAGENET_MEAN, IMAGENET_STD
from segensemble.cost import Budget, image_cost
from segensemble.errors import PlanError
from segensemble.names import did_you_mean, safe_name
from segensemble.postprocess import PostProcess, PostProcessSpec
from segensemble.profiles import Profile, TtaName, apply_profile
from segensemble.task import DEFAULT_THRESHOLD, Fusion, TaskName, VoteRule
from segensemble.tiles import TileOptions
from segensemble.yaml_guard import load_yaml

# bounds on what a plan may ask for: far past any real ensemble, short of what exhausts a machine
MAX_PLAN_BYTES = 1 << 20
MAX_CLASSES = 4096
MAX_MEMBERS = 256
MAX_MODELS_PER_MEMBER = 64
MAX_VIEWS = 4096  # forward passes per image, all members together
MAX_SCALE = 8.0
MAX_SIDE = 16384  # input_size, pixels per side
MAX_STRIDE = 1024
MAX_IN_CHANNELS = 64
MAX_WEIGHT = 1e6
MAX_KWARG_NUMBER = 4096  # model_kwargs: channels, depths, factors (decoder_channels: [256, 128, 64, 32, 16] is typical)
MAX_KWARG_ITEMS = 64  # model_kwargs: values in all, lists and nesting included
PLAN_BUDGET = Budget(max_megapixel_views=1024.0, max_memory_mb=65536.0)  # for the members whose size is fixed by the plan

SOURCES = ("checkpoint", "folds", "epochs", "swa", "onnx")
FUSION_FIELDS = ("task", "vote", "min_votes", "tsharpen_t", "thresholds")
TOP_LEVEL = ("task", "classes", "vote", "min_votes", "tsharpen_t", "thresholds", "postprocess", "defaults", "members", "profiles")


class ViewOptions(BaseModel):
    """Member fields that may also be set once under ``defaults``."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # architecture (checkpoint members; smp directories and ONNX files carry their own)
    framework: Literal["smp", "torchvision", "transformers"] = Field(
        "smp", description="smp; torchvision's segmentation builders (arch); transformers: save_pretrained folders")
    factory: str | None = Field(None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", description="a team's own model: package.module:function")
    factory_kwargs: dict = Field(default_factory=dict, description="keyword arguments of the factory")
    code_path: str | None = Field(None, description="folder the factory's module is imported from (relative to the plan)")
    trust_code: bool = False
    arch: str | None = None
    encoder: str | None = None
    in_channels: int = Field(3, ge=1, le=MAX_IN_CHANNELS)
    model_kwargs: dict = Field(default_factory=dict, description="extra smp constructor arguments, e.g. decoder_channels")
    trust_pickle: bool = False
    # preprocessing
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    stride: int = Field(32, ge=1, le=MAX_STRIDE)
    input_size: tuple[int, int] | None = None
    tiles: TileOptions | None = Field(None, description="sliding-window inference: tiles of this size, blended (MONAI's definitions)")
    preprocess: str | None = None  # the training pipeline's saved albumentations val transform: sets the four above (build)
    # views and voting
    scales: list[Annotated[float, Field(gt=0, le=MAX_SCALE)]] = Field(default_factory=lambda: [1.0], min_length=1, max_length=64)
    tta: list[TtaName] = Field(default_factory=lambda: ["identity"], min_length=1)
    weight: float = Field(1.0, gt=0, le=MAX_WEIGHT)
    class_weights: list[Annotated[float, Field(ge=0, le=MAX_WEIGHT)]] | None = Field(
        None, min_length=1, max_length=MAX_CLASSES, description="one weight per class, beside weight (MONAI MeanEnsemble)")
    bn_images: str | None = None

    @field_validator("model_kwargs", "factory_kwargs")
    @classmethod
    def _kwargs_bounded(cls, v: dict) -> dict:
        check_model_kwargs(v)
        return v

    @field_validator("std")
    @classmethod
    def _std_positive(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(s <= 0 for s in v):
            raise ValueError("every std must be > 0")
        return v

    @field_validator("input_size")
    @classmethod
    def _size_positive(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and not (1 <= v[0] <= MAX_SIDE and 1 <= v[1] <= MAX_SIDE):
            raise ValueError(f"must be [height, width] with both in 1..{MAX_SIDE}, or null for the image's own size")
        return v

    @field_validator("scales")
    @classmethod
    def _scales_unique(cls, v: list[float]) -> list[float]:
        if len(set(v)) != len(v):
            raise ValueError("scales must not repeat")
        return v

    @field_validator("tta")
    @classmethod
    def _tta_unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("tta views must not repeat")
        return v


def check_model_kwargs(kwargs: dict) -> None:
    """smp constructor arguments from a plan or an smp config.json: small numbers, short lists, plain types.

    A ``decoder_channels: [200000, ...]`` would allocate gigabytes of weights before any check could run."""
    count = 0

    def walk(value, at: str, depth: int) -> None:
        nonlocal count
        count += 1
        if count > MAX_KWARG_ITEMS or depth > 3:
            raise ValueError(f"model_kwargs: more than {MAX_KWARG_ITEMS} values or nested deeper than 3")
        if isinstance(value, bool) or value is None:
            return
        if isinstance(value, (int, float)):
            if not abs(value) <= MAX_KWARG_NUMBER:
                raise ValueError(f"model_kwargs{at}: {value} is out of range (at most {MAX_KWARG_NUMBER} in magnitude)")
        elif isinstance(value, str):
            if len(value) > 200:
                raise ValueError(f"model_kwargs{at}: a string of {len(value)} characters (at most 200)")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{at}[{i}]", depth + 1)
        elif isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise ValueError(f"model_kwargs{at}: keys must be strings (got {key!r})")
                walk(item, f"{at}.{key}", depth + 1)
        else:
            raise ValueError(f"model_kwargs{at}: {type(value).__name__} values are not accepted")

    for key, value in kwargs.items():
        walk(value, f".{key}", 1)


class MemberSpec(ViewOptions):
    """One plan entry: a source along one axis, plus its view options and weight."""

    name: str = Field(min_length=1, max_length=200)
    checkpoint: str | None = None
    folds: list[str] | None = Field(None, min_length=1, max_length=MAX_MODELS_PER_MEMBER)
    epochs: list[str] | None = Field(None, min_length=1, max_length=MAX_MODELS_PER_MEMBER)
    swa: list[str] | None = Field(None, min_length=2, max_length=MAX_MODELS_PER_MEMBER)
    onnx: str | None = None
    onnx_output: Literal["logits", "probs"] = Field("logits", description="what an onnx member outputs, at any resolution")

    @model_validator(mode="after")
    def _tiles_fit(self) -> MemberSpec:
        if self.tiles is None:
            return self
        if self.input_size is not None:
            raise ValueError("tiles: a member has input_size (the whole image resized to it) or tiles (the image cut into "
                             "tiles at its own size x scale), not both; keep tiles for members trained on crops")
        if any(side % self.stride for side in self.tiles.size):
            raise ValueError(f"tiles: size {list(self.tiles.size)} must be a multiple of the member's stride {self.stride} "
                             "(each tile goes to the model as it is)")
        return self

    @model_validator(mode="after")
    def _onnx_output_fits(self) -> MemberSpec:
        if self.onnx_output != "logits" and self.onnx is None:
            raise ValueError("onnx_output: describes an onnx member's output (checkpoint members are exported as logits)")
        return self

    @model_validator(mode="after")
    def _factory_trusted(self) -> MemberSpec:
        if self.factory is None:
            if self.factory_kwargs or self.code_path:
                raise ValueError("factory_kwargs and code_path: only with factory (a team's own model)")
            return self
        if not self.trust_code:
            module = self.factory.split(":")[0]
            raise ValueError(f"factory: importing {module} runs its code; set trust_code: true on this member if you trust it "
                             f"(the module is imported from {self.code_path or 'the Python path'})")
        if self.arch or self.encoder or self.model_kwargs or self.framework != "smp" or self.onnx is not None:
            raise ValueError("factory: the function builds the model; leave out arch, encoder, model_kwargs, framework and onnx")
        return self

    @model_validator(mode="after")
    def _framework_fits(self) -> MemberSpec:
        if self.framework == "transformers":
            if self.arch or self.encoder or self.model_kwargs or self.in_channels != 3:
                raise ValueError("framework transformers: the folder's config.json says the model; leave out arch, encoder, "
                                 "model_kwargs and in_channels")
            if self.onnx is not None or self.swa is not None:
                raise ValueError("framework transformers: members are save_pretrained folders (checkpoint, folds or epochs)")
            return self
        if self.framework != "torchvision":
            return self
        from segensemble.models.registry import TORCHVISION_ARCHS

        if self.arch is None or self.arch.lower() not in TORCHVISION_ARCHS:
            raise ValueError(f"arch: a torchvision member names one of {', '.join(TORCHVISION_ARCHS)} (got {self.arch!r})")
        if self.encoder is not None or self.model_kwargs or self.in_channels != 3:
            raise ValueError("framework torchvision: the builder's name says its backbone; leave out encoder, model_kwargs "
                             "and in_channels (aux_loss is read from the checkpoint)")
        if self.onnx is not None:
            raise ValueError("framework: an onnx member carries its own graph; leave framework out")
        return self

    @model_validator(mode="after")
    def _one_source(self) -> MemberSpec:
        given = [s for s in SOURCES if getattr(self, s) is not None]
        if len(given) != 1:
            raise ValueError(f"needs exactly one of {', '.join(SOURCES)}; found {', '.join(given) or 'none'}")
        if self.bn_images and self.axis != "swa":
            raise ValueError("bn_images: only applies to swa members")
        return self

    @property
    def axis(self) -> str:
        return next(s for s in SOURCES if getattr(self, s) is not None)

    @property
    def sources(self) -> list[str]:
        value = getattr(self, self.axis)
        return list(value) if isinstance(value, list) else [value]

    @property
    def model_count(self) -> int:
        """ONNX models this member becomes (SWA averages its checkpoints into one)."""
        return 1 if self.axis == "swa" else len(self.sources)

    @property
    def views(self) -> int:
        return self.model_count * len(self.scales) * len(self.tta)


class Plan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    task: TaskName = "multiclass"
    vote: VoteRule = "mean"
    min_votes: float = Field(0.5, gt=0, le=1, description="majority: the weighted share of member votes that turns a class on")
    tsharpen_t: float = Field(0.5, gt=0, le=16, description="tsharpen: the exponent t in the mean of p^t")
    thresholds: Annotated[float, Field(ge=0, lt=1)] | list[Annotated[float, Field(ge=0, lt=1)]] | None = None
    postprocess: PostProcessSpec | None = Field(None, description="steps after the vote (postprocess.py)")
    classes: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(min_length=1, max_length=MAX_CLASSES)
    defaults: ViewOptions = Field(default_factory=ViewOptions)
    members: list[MemberSpec] = Field(min_length=1, max_length=MAX_MEMBERS)
    profiles: dict[str, Profile] = Field(default_factory=dict, max_length=64)
    path: Path | None = None  # the plan file; relative sources were resolved against its folder

    @field_validator("classes")
    @classmethod
    def _classes_unique(cls, v: list[str]) -> list[str]:
        """COCO categories are matched to classes by name, case-insensitively: two names one class apart are one."""
        seen: dict[str, int] = {}
        for i, name in enumerate(v):
            if not name.strip():
                raise ValueError(f"class {i} has an empty name")
            key = name.strip().casefold()
            if key in seen:
                raise ValueError(f"class {i} {name!r} repeats class {seen[key]} {v[seen[key]]!r} (names are matched "
                                 "case-insensitively)")
            seen[key] = i
        return v

    @field_validator("profiles")
    @classmethod
    def _profile_files_unique(cls, v: dict[str, Profile]) -> dict[str, Profile]:
        for name in v:
            if not name.strip() or len(name) > 100:
                raise ValueError(f"profile name {name!r}: must be 1 to 100 characters, not blank (the whole plan needs no profile)")
        _check_file_names(list(v), "profile")
        return v

    @model_validator(mode="after")
    def _fits_task(self) -> Plan:
        if self.task == "binary" and len(self.classes) != 1:
            raise ValueError(f"classes: a binary task names its one foreground class (got {len(self.classes)} names)")
        if self.thresholds is not None and self.task == "multiclass":
            raise ValueError("thresholds: apply to multilabel and binary tasks (multiclass takes the argmax)")
        if isinstance(self.thresholds, list) and len(self.thresholds) != len(self.classes):
            raise ValueError(f"thresholds: {len(self.thresholds)} given for {len(self.classes)} classes (give one number, or one per class)")
        for i, m in enumerate(self.members):
            if m.class_weights is not None and len(m.class_weights) != len(self.classes):
                raise ValueError(f"members[{i}].class_weights: {len(m.class_weights)} weights for {len(self.classes)} classes")
        if self.postprocess is not None:
            try:
                self.postprocess.resolve(list(self.classes), self.task)
            except ValueError as exc:
                raise ValueError(f"postprocess.{exc}") from None
        return self

    @property
    def post(self) -> PostProcess | None:
        """The postprocess section resolved to one value per class (None: no step)."""
        if self.postprocess is None:
            return None
        steps = self.postprocess.resolve(list(self.classes), self.task)
        return steps if steps.active else None

    @property
    def fusion(self) -> Fusion:
        """The task and vote as the manifest carries them: thresholds one per class."""
        t = DEFAULT_THRESHOLD if self.thresholds is None else self.thresholds
        thresholds = [] if self.task == "multiclass" else (list(t) if isinstance(t, list) else [t] * len(self.classes))
        return Fusion(task=self.task, vote=self.vote, min_votes=self.min_votes, tsharpen_t=self.tsharpen_t, thresholds=thresholds)


def load_plan(path: str | Path) -> Plan:
    """Read, validate and resolve a plan file."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_PLAN_BYTES:
            raise PlanError(f"{path}: {path.stat().st_size} bytes; a plan may be at most {MAX_PLAN_BYTES} bytes")
        raw = load_yaml(path.read_text(), str(path))
    except OSError as exc:
        raise PlanError(f"{path}: cannot read plan ({exc.strerror or exc})") from exc
    return parse_plan(raw, base_dir=path.parent, source=path)


def parse_plan(raw: object, base_dir: Path, source: Path | None = None) -> Plan:
    """Validate a plan already read from YAML; ``base_dir`` anchors relative paths."""
    where = f"{source}: " if source else ""
    if not isinstance(raw, dict):
        raise PlanError(f"{where}the plan must be a mapping with classes, defaults and members")
    unknown = sorted(set(raw) - set(TOP_LEVEL))
    if unknown:
        raise PlanError(f"{where}{unknown[0]}: unknown top-level field{did_you_mean(str(unknown[0]), list(TOP_LEVEL))}; "
                        f"expected {', '.join(TOP_LEVEL)}")
    defaults = _validate(ViewOptions, raw.get("defaults") or {}, ("defaults",), where)
    members_raw = raw.get("members")
    if not isinstance(members_raw, list) or not members_raw:
        raise PlanError(f"{where}members: must be a non-empty list of members")
    shared = defaults.model_dump(exclude_unset=True)
    members = []
    for i, entry in enumerate(members_raw):
        if not isinstance(entry, dict):
            raise PlanError(f"{where}members[{i}]: must be a mapping with a name and one source")
        member = _validate(MemberSpec, {**shared, **entry}, ("members", i), where)
        members.append(_resolve_paths(member, base_dir))
    _check_unique_names(members, where)
    _check_size(members, where)
    classes = raw.get("classes")
    profiles = raw.get("profiles") or {}
    fusion = {k: raw[k] for k in (*FUSION_FIELDS, "postprocess") if k in raw}
    plan = _validate(Plan, {"classes": classes, "defaults": defaults, "members": members, "profiles": profiles, "path": source,
                            **fusion}, (), where)
    check_class_weights(plan.members, plan.classes, f"{where}members")
    for name, profile in plan.profiles.items():
        kept = apply_profile(plan.members, profile, f"{where}profiles.{name}")
        check_class_weights(kept, plan.classes, f"{where}profiles.{name}")
    return plan


def check_class_weights(members: list, classes: list[str], where: str) -> None:
    """Every class needs a member that weighs it: Σ_m w_m cw_mc > 0 (the vote divides by it)."""
    for c, name in enumerate(classes):
        if not any(m.weight * (m.class_weights[c] if m.class_weights else 1.0) > 0 for m in members):
            raise PlanError(f"{where}: class {c} {name!r} has class weight 0 in every member; the vote would divide by zero")


def _validate(model: type[BaseModel], data: dict, prefix: tuple, where: str):
    """``model`` from ``data``; every problem found is reported at once, each with its YAML path (and, for an
    unknown field, the nearest known names)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [_problem(model, err, prefix) for err in exc.errors()]
        if len(problems) == 1:
            raise PlanError(f"{where}{problems[0]}") from None
        raise PlanError(f"{where}{len(problems)} problems:\n  " + "\n  ".join(problems)) from None


def _problem(model: type[BaseModel], err: dict, prefix: tuple) -> str:
    msg = err["msg"].removeprefix("Value error, ")
    field, _, rest = msg.partition(": ")
    extra = (field,) if rest and field in model.model_fields else ()  # model-level checks name their field
    loc = _yaml_path(prefix + tuple(err["loc"]) + extra)
    msg = rest if extra else msg
    msg = msg.replace("Input should be greater than", "must be >").replace("Extra inputs are not permitted", "unknown field")
    if err["type"] == "literal_error":
        msg = f"{msg} (got {err['input']!r})"
    if err["type"] == "extra_forbidden" and err["loc"]:
        owner = _owner(model, err["loc"][:-1])
        msg += did_you_mean(str(err["loc"][-1]), list(owner.model_fields) if owner else [])
    return f"{loc}: {msg}"


def _owner(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The model class that the field at ``loc`` (inside ``model``) belongs to: members' entries are MemberSpec."""
    if not loc:
        return model
    if loc[0] == "members":
        return MemberSpec
    if loc[0] == "defaults":
        return ViewOptions
    return None


def _yaml_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "plan"


def _resolve_paths(member: MemberSpec, base: Path) -> MemberSpec:
    def fix(p: str) -> str:
        return str((base / p).resolve()) if not Path(p).is_absolute() else p

    update: dict = {}
    for key in SOURCES:
        value = getattr(member, key)
        if value is not None:
            update[key] = [fix(v) for v in value] if isinstance(value, list) else fix(value)
    for key in ("bn_images", "preprocess", "code_path"):
        if getattr(member, key):
            update[key] = fix(getattr(member, key))
    return member.model_copy(update=update)


def _check_size(members: list[MemberSpec], where: str) -> None:
    """Bound the views per image, and the cost of the members whose size the plan fixes (input_size)."""
    views = sum(m.views for m in members)
    if views > MAX_VIEWS:
        raise PlanError(f"{where}members: {views} forward passes per image; at most {MAX_VIEWS}")
    for i, m in enumerate(members):
        if m.input_size:
            reason = image_cost([m], tuple(m.input_size), classes=1).over(PLAN_BUDGET)
            if reason:
                raise PlanError(f"{where}members[{i}].input_size: each image {reason.split('; raise')[0]}")


def _check_unique_names(members: list[MemberSpec], where: str) -> None:
    seen: dict[str, int] = {}
    for i, m in enumerate(members):
        if m.name in seen:
            raise PlanError(f"{where}members[{i}].name: duplicate name {m.name!r} (also members[{seen[m.name]}])")
        seen[m.name] = i
    try:
        _check_file_names([m.name for m in members], "member")
    except ValueError as exc:
        raise PlanError(f"{where}members: {exc}") from None


def _check_file_names(names: list[str], what: str) -> None:
    """Names become file names (``formats.paths.safe_name``); two that would share a file on a case-insensitive
    file system are refused."""
    seen: dict[str, str] = {}
    for name in names:
        key = safe_name(name).casefold()
        if key in seen:
            raise ValueError(f"{what} names {seen[key]!r} and {name!r} would share one file ({safe_name(name)}); "
                             "names must differ in more than letter case")
        seen[key] = name
