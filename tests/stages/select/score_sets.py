"""Hand-made exit scores for selection tests: no model, no torch, exact numbers."""

from __future__ import annotations

import dataclasses

from nfcompile.core.results import ExitScore, ExitScores, Latency


def exit_score(name: str, accuracy: float | None, size: int, latency_ms: float, *, params: int | None = None,
               unit: int | None = None, batch_sizes: tuple[int, ...] = (1, 8),
               latency_by_batch: dict[int, float] | None = None) -> ExitScore:
    """An exit whose p50 is ``latency_ms`` at batch 1 and grows with the batch, unless given per batch."""
    by_batch = latency_by_batch or {b: latency_ms * (1 + 0.5 * (b - 1)) for b in batch_sizes}
    latency = tuple(Latency(batch_size=b, p50_ms=ms, p90_ms=ms * 1.1, mean_ms=ms, runs=5, warmup=2)
                    for b, ms in sorted(by_batch.items()))
    return ExitScore(name=name, unit=int(name.split("_")[-1]) if unit is None else unit, accuracy=accuracy,
                     params=size // 4 if params is None else params, macs=size * 10, onnx_bytes=size,
                     onnx_sha256="0" * 64, latency=latency, latency_source="hand-made",
                     onnx_file=f"exits/{name}.onnx")


def score_set(rows: list[tuple[str, float, int, float]], *, full: ExitScore | None = None,
              batch_sizes: tuple[int, ...] = (1, 8)) -> ExitScores:
    """ExitScores from (name, accuracy, ONNX bytes, p50 ms at batch 1) rows; the full model is the
    last row's exit unless given."""
    exits = tuple(exit_score(*row, batch_sizes=batch_sizes) for row in rows)
    full = full or dataclasses.replace(exits[-1], name="full")
    return ExitScores(exits=exits, full_model=full, backend="ort-cpu", test_samples=100, batch_sizes=batch_sizes)


def scored_on_images(hits: list[list[bool]], sizes: list[int]) -> ExitScores:
    """ExitScores of exits exit_00, exit_01, ... that classify validation image k correctly where
    ``hits[exit][k]``: their accuracies and paired counts, counted here image by image. Size and
    latency grow with ``sizes``."""
    images = len(hits[0])
    rows = [(f"exit_{i:02d}", sum(row) / images, size, size / 1000) for i, (row, size) in enumerate(zip(hits, sizes))]
    counts = tuple(tuple(sum(a and not b for a, b in zip(mine, other)) for other in hits) for mine in hits)
    return dataclasses.replace(score_set(rows), val_samples=images, val_right_where_wrong=counts)
