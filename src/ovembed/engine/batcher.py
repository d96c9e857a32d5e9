"""Token-budget batch planning: length-sorted groups whose padded cost fits the budget."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TokenBudget:
    """Limits for one inference batch.

    tokens: padded tokens (batch x longest) per batch; bounds activations that grow linearly.
    attention: batch x longest^2 per batch; attention grows with the square of the length, so long
    sequences get small batches and one past the limit runs alone.
    """

    tokens: int = 16384
    attention: int = 16384 * 512
    max_batch: int = 128


def plan_batches(lengths: list[int], budget: TokenBudget) -> list[list[int]]:
    """Indices grouped into batches, shortest first; every index appears exactly once."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    batches: list[list[int]] = []
    current: list[int] = []
    for idx in order:
        longest = lengths[idx]  # sorted ascending: the newcomer is the longest
        size = len(current) + 1
        fits = (
            size <= budget.max_batch
            and size * longest <= budget.tokens
            and size * longest * longest <= budget.attention
        )
        if current and not fits:
            batches.append(current)
            current = []
        current.append(idx)
    if current:
        batches.append(current)
    return batches
