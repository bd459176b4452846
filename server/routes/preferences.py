"""The therapist's panel preferences: target band and gentle cues, each switchable off."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field, model_validator

from ..auth import DbSession, Therapist

router = APIRouter(prefix="/api/me", tags=["preferences"])


class Cue(BaseModel):
    on: bool = True
    minutes: float = Field(gt=0, le=120)


class PanelPreferences(BaseModel):
    """Defaults follow the brief: client share 50–80 %, cues after 3 and 5 minutes."""

    target_low: float = Field(default=0.5, ge=0, le=1)
    target_high: float = Field(default=0.8, ge=0, le=1)
    therapist_monologue: Cue = Cue(minutes=3)
    share_below_band: Cue = Cue(minutes=5)
    long_silence_seconds: float = Field(default=3.0, ge=1, le=60)
    panel_open: bool = True
    # A soft chime when a client enters the waiting room (issue 13); the therapist can mute it.
    arrival_chime: bool = True

    @model_validator(mode="after")
    def _band(self) -> PanelPreferences:
        if self.target_low >= self.target_high:
            raise ValueError("the lower bound of the band must be below the upper bound")
        return self


@router.get("/preferences")
async def get_preferences(user: Therapist) -> PanelPreferences:
    return PanelPreferences.model_validate(user.preferences or {})


@router.put("/preferences")
async def put_preferences(
    body: PanelPreferences, user: Therapist, db: DbSession
) -> PanelPreferences:
    merged = await db.merge(user)
    merged.preferences = body.model_dump()
    await db.commit()
    return body
