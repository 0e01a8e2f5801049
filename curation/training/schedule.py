"""The training schedule: warm-up + cosine learning rate, and each step's batch of pairs."""

import math

import torch

BUCKET_BATCHES = 16  # batches per window sorted by text length (see batch_indices)


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up to `peak` over `warmup` steps, then cosine decay to 0 (BLIP's schedule)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def steps_per_epoch(n_pairs: int, batch_size: int) -> int:
    """Full batches per epoch (the last partial one is dropped); one batch when n < batch."""
    return max(1, n_pairs // batch_size)


def batch_indices(lengths: torch.Tensor, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Pair indices of `step`'s batch. (B,)

    Each epoch is a seeded permutation, so any step's batch is known without replaying the
    ones before it (what makes a resume exact). Within windows of BUCKET_BATCHES batches the
    pairs are sorted by text length (`lengths`, (N,)) and the batches then shuffled: a batch
    holds texts of similar length, which cuts padding (and the text side's compute) about in
    half on web alt-text, while every epoch still sees every pair once.
    """
    n = len(lengths)
    per_epoch = steps_per_epoch(n, batch_size)
    epoch, k = divmod(step, per_epoch)
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    size = min(batch_size, n)
    order = torch.randperm(n, generator=generator)[: per_epoch * size]
    window = size * BUCKET_BATCHES
    windows = [order[i : i + window] for i in range(0, len(order), window)]
    order = torch.cat([w[torch.argsort(lengths[w], stable=True)] for w in windows])
    batches = order.view(per_epoch, size)  # (steps, B)
    return batches[torch.randperm(per_epoch, generator=generator)[k]]
