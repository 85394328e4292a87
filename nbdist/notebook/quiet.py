"""Kernel-side silence for library notices that are noise in a notebook cell.

transformers 5 logs "`CLIPImageProcessor` requires torchvision (not installed); falling back to ..."
the first time diffusers' Stable Diffusion pipelines are imported. It is advice about a backend the
image pipelines never need, and it lands in whichever cell happens to import diffusers first. Only
that message is dropped (a logging filter on the one logger that emits it); every other warning and
error still shows.
"""

from __future__ import annotations

import logging

__all__ = ["install_filters"]

_SOURCE = "transformers.utils.import_utils"


class _DropTorchvisionAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


def install_filters() -> None:
    """Idempotent: called by ``%load_ext nbdist``."""
    logger = logging.getLogger(_SOURCE)
    if not any(isinstance(f, _DropTorchvisionAdvice) for f in logger.filters):
        logger.addFilter(_DropTorchvisionAdvice())
