"""The command line every scenario script shares (model, prompts, steps, device, where to write)."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["scenario_parser"]


def scenario_parser(description: str | None) -> argparse.ArgumentParser:
    """``--model DIR --prompts N --steps S --device auto|cpu|cuda --out DIR --events FILE``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", required=True, help="pipeline folder (save_pretrained) or hub id")
    parser.add_argument("--prompts", type=int, default=12, help="number of prompts (one image each)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    parser.add_argument("--events", type=Path, required=True, help="JSON event log to write")
    return parser
