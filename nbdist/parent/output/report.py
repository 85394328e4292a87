"""A few lines at the end of a run that went wrong, instead of one traceback per worker.

In the style of ipyparallel's ``%%px`` errors: one line per worker and error, naming the images it hit;
the full tracebacks stay one attribute away (``res[i].traceback``, ``res.worker_failures[j].traceback``).
"""

from __future__ import annotations

from collections import defaultdict

from ..results.result import GenerationResult

__all__ = ["end_lines", "setup_refusal"]

_MAX_INDICES = 4
_MAX_LINES = 8
# How a worker's WorkerFinished names an NbdistUsageError (f"{type}: {message}"): a load refused with a
# one-line cause and fix (gated model, unknown id, offline, ...), the same line the kernel would show.
_USAGE_PREFIX = "NbdistUsageError: "
_WHOLE = ("out of GPU memory",)  # image errors that end with their fix (worker/making.py): never cut


def setup_refusal(result: GenerationResult) -> str | None:
    """The one-line reason when the workers refused to get ready (e.g. their ``--device-map`` load failed)
    and nothing was made: the magic shows it as the ``UsageError`` a load in the kernel would have raised."""
    if any(r.ok for r in result.records):
        return None
    return next((f.error[len(_USAGE_PREFIX) :] for f in result.worker_failures if _is_refusal(f.error)), None)


def _is_refusal(error: str) -> bool:
    return error.startswith(_USAGE_PREFIX) and "\n" not in error.strip()


def _short(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _images(indices: list[int], prompts: dict[int, str]) -> str:
    shown = ", ".join(f"#{i} {_short(prompts[i], 30)!r}" for i in indices[:_MAX_INDICES])
    more = len(indices) - _MAX_INDICES
    return shown + (f" and {more} more" if more > 0 else "")


def end_lines(result: GenerationResult, name: str | None = None) -> list[str]:
    """What to tell the user after the run; empty when every image was made.

    ``name`` is the variable holding the result (``-o``), used to point at it.
    """
    var = name or "_"
    done = sum(1 for r in result.records if r.ok)
    total = done + len(result.errors) + len(result.missing)
    lines: list[str] = []
    if result.interrupted:
        lines.append(f"interrupted: {done} of {total} images, kept in {var}")
    by_error: dict[tuple[int | None, str], list[int]] = defaultdict(list)
    prompts = {r.index: r.prompt for r in result.records}
    for record in result.errors:
        by_error[(record.rank, record.error or "")].append(record.index)
    failures = list(result.worker_failures)
    if by_error or failures:
        counts = []
        if result.errors:
            counts.append(f"{len(result.errors)} image(s) failed")
        if failures:
            counts.append(f"{len(failures)} worker failure(s)")
        with_tb = [i for i, f in enumerate(failures) if f.traceback]
        if result.errors:
            where = f"full traceback: {var}[{result.errors[0].index}].traceback"
        elif with_tb:
            where = f"full traceback: {var}.worker_failures[{with_tb[0]}].traceback"
        else:  # killed: no Python traceback exists, but the worker's output may say why
            where = f"worker output: {var}.logs"
        lines.append(f"nbdist: {', '.join(counts)}; {where}")
        rows = [
            f"  [worker {rank}] {error if error.startswith(_WHOLE) else _short(error, 80)}: {_images(indices, prompts)}"
            for (rank, error), indices in by_error.items()
        ]
        for failure in failures:
            who = "launcher" if failure.rank < 0 else f"worker {failure.rank}"
            text = failure.error[len(_USAGE_PREFIX) :] if _is_refusal(failure.error) else _short(failure.error, 100)
            rows.append(f"  [{who}] {text}")  # a refusal's fix is at its end: never cut
        if len(rows) > _MAX_LINES:
            rows = [*rows[: _MAX_LINES - 1], f"  … and {len(rows) - _MAX_LINES + 1} more"]
        lines.extend(rows)
    if result.missing and not result.interrupted:
        lines.append(f"  {len(result.missing)} image(s) not generated, listed in {var}.missing")
    return lines
