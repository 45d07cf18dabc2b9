"""The pipeline's stages, in order: stage 1 trains track + map, stage 2 trains end to end from stage 1's weights."""

from __future__ import annotations

STAGES = ("stage1", "stage2")
