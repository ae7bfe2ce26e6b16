"""Profiles: lighter named subsets of an ensemble (members kept, TTA views and scales restricted), declared in
the plan and carried by the manifest; one home that both import."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from segensemble.errors import PlanError

TtaName = Literal["identity", "hflip", "vflip", "rot90", "rot270", "transpose"]


class Profile(BaseModel):
    """A lighter named subset of the ensemble (e.g. for serving): members kept, and TTA/scales restricted."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    members: list[str] | None = Field(None, min_length=1, description="member names kept (default: all)")
    tta: list[TtaName] | None = Field(None, min_length=1, description="TTA views kept, where a member has them")
    scales: list[Annotated[float, Field(gt=0)]] | None = Field(None, min_length=1, description="scales kept, where a member has them")


def apply_profile(members: list, profile: Profile, where: str) -> list:
    """Members (plan or manifest entries) as the profile keeps them; errors name the profile field."""
    names = [m.name for m in members]
    for i, wanted in enumerate(profile.members or []):
        if wanted not in names:
            raise PlanError(f"{where}.members[{i}]: no member named {wanted!r}; members are {names}")
    kept = []
    for m in members:
        if profile.members and m.name not in profile.members:
            continue
        tta = [t for t in m.tta if profile.tta is None or t in profile.tta]
        scales = [s for s in m.scales if profile.scales is None or s in profile.scales]
        if not tta or not scales:
            what = "TTA view" if not tta else "scale"
            raise PlanError(f"{where}: leaves member {m.name!r} with no {what} (it has tta {m.tta}, scales {m.scales})")
        kept.append(m.model_copy(update={"tta": tta, "scales": scales}))
    return kept
