"""Shared test helpers for the shapes world's hidden attributes."""

import math

import torch

from miga.worlds.shapes import SceneBatch, parse_prompt, sample_hidden

CYAN = "a cyan square bouncing on a white background"


def two_identities(prompt: str = CYAN):
    """The scene of ``prompt`` (a cyan object) and two clearly different identities of it."""
    scene = parse_prompt(prompt)
    batch = SceneBatch.of([scene])
    first, second = (sample_hidden(batch, torch.Generator().manual_seed(0)) for _ in range(2))
    first.radius[0, 0], second.radius[0, 0] = 6.3, 8.7
    first.speed[0, 0], second.speed[0, 0] = 1.1, 2.1
    offset = torch.tensor([1.0, -1.0, 1.0]) / math.sqrt(3) * 18
    cyan = torch.tensor([40.0, 210.0, 220.0])
    first.shade[0, 0], second.shade[0, 0] = (cyan + offset).clamp(0, 255), (cyan - offset).clamp(0, 255)
    first.bg_angle[0], second.bg_angle[0] = math.radians(30), math.radians(200)
    first.bg_tilt[0], second.bg_tilt[0] = 0.11, 0.24
    return scene, first, second
