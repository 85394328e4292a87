"""``nbdist generate`` / ``python -m nbdist generate``: the notebook's job from a shell or a launcher.

Run plainly, it forks its own workers through ``nbdist.generate`` exactly as ``%%distgen`` does. Run
under ``torchrun`` or ``accelerate launch`` (detected from the variables they set), it uses the
processes it was given instead (``nbdist/launched.py``). Either way image ``i`` uses seed ``seed+i``,
so the images equal the notebook's, and DIR gets the PNGs (parameters in their text chunk),
``manifest.jsonl`` and ``index.html``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .arguments import add_to_parser, as_typed, options_from_args
from .jobs import read_prompts
from .options import NbdistUsageError

__all__ = ["build_parser", "main"]

_EPILOG = """\
examples:
  nbdist generate --model demo -p "a red circle on a blue background" --out out --seed 0
  nbdist generate --model stable-diffusion-v1-5/stable-diffusion-v1-5 --prompts prompts.txt --out out --seed 0
  torchrun --nproc_per_node=2 -m nbdist generate --model M --prompts prompts.txt --out out --seed 0
  accelerate launch --multi_gpu --num_processes 2 -m nbdist generate --model M --prompts prompts.txt --out out
  nbdist generate --model M --prompts prompts.txt --out out --device-map balanced --max-memory 0=10GiB,1=10GiB

Image i of the run uses torch.Generator("cpu").manual_seed(seed+i): the same images as %%distgen
with the same seed, whatever the launcher or the number of processes.

One run per folder: if DIR already holds a run (its numbered PNGs, manifest.jsonl or index.html),
nbdist generate stops with one line before anything starts; --overwrite replaces that run (other
files in DIR stay), or pick a new DIR. Under torchrun, rank 0's DIR decides for every rank.

--model demo is the small demo model shipped with nbdist (no download; it draws coloured shapes:
"a {colour} {shape} on a {colour} background"). A folder named demo is --model ./demo."""

_OUT_FLAGS = ("-o", "--out", "--save-dir")  # messages name the folder --save-dir, as the magic's flag


def build_parser() -> argparse.ArgumentParser:
    """The ``nbdist`` parser with its ``generate`` command."""
    parser = argparse.ArgumentParser(prog="nbdist", description="Generate images with diffusion models on every GPU.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    gen = commands.add_parser(
        "generate",
        help="generate images for a file of prompts into a folder",
        description="Generate one image per prompt (K with -k) into DIR: PNGs, manifest.jsonl, index.html.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gen.add_argument(
        "-m",
        "--model",
        required=True,
        metavar="ID_OR_PATH",
        help="hub id or local folder for from_pretrained; 'demo' is the demo model shipped with nbdist "
        "(a folder named demo: ./demo)",
    )
    gen.add_argument(
        "--prompts",
        metavar="FILE",
        help="one prompt per line ('-' for stdin); blank lines and lines starting with # are skipped",
    )
    gen.add_argument(
        "-p", "--prompt", action="append", default=[], metavar="TEXT", help="a prompt (repeatable; after --prompts)"
    )
    gen.add_argument(
        *_OUT_FLAGS,
        dest="save_dir",
        required=True,
        metavar="DIR",
        help="folder for the PNGs (with their parameters), manifest.jsonl and index.html; one that already "
        "holds a run is refused unless --overwrite",
    )
    add_to_parser(gen, skip=("save_dir", "save"))  # the CLI always saves, into --out
    gen.set_defaults(save=True)
    return parser


def _plain(model: str, prompts: list[str], args: argparse.Namespace) -> int:
    """Not under a launcher: fork the workers through ``nbdist.generate``, like the magic."""
    from .parent.api import generate
    from .parent.output.terminal import TerminalProgress

    result = generate(model, prompts, options=options_from_args(args), observers=[TerminalProgress(sys.stderr)])
    saved = sum(1 for r in result.records if r.ok and r.path is not None)  # index.html: written by the run
    summary = result.summary()
    for failure in result.worker_failures:
        print(f"nbdist: worker {failure.rank} failed: {failure.error}", file=sys.stderr)
    if result.device_map:
        print(f"hf_device_map: {result.device_map}")
    print(f"nbdist: {summary}", file=sys.stderr)
    print(f"nbdist: wrote {saved} PNG(s), manifest.jsonl and index.html in {args.save_dir}", file=sys.stderr)
    return 0 if result.complete else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``nbdist``, ``python -m nbdist``); returns the exit status."""
    from .launched import launched, run_launched
    from .pipelines import resolve_model

    parser = build_parser()
    tokens = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(tokens)
    env = launched()
    try:
        prompts = read_prompts(args.prompts, args.prompt)
        if not prompts:
            raise NbdistUsageError("no prompts: give --prompts FILE (one prompt per line) or --prompt TEXT")
        model = resolve_model(args.model)  # --model demo: the shipped demo model, on every rank
        if env is None:
            return _plain(model, prompts, args)
        return run_launched(model, prompts, options_from_args(args).with_(preview="off"), env)  # no one shows them
    except NbdistUsageError as exc:
        if env is None or env.rank == 0:  # the flag named as the user wrote it (-n, -o, --out, ...)
            parser.exit(2, f"nbdist generate: error: {as_typed(str(exc), tokens, [_OUT_FLAGS])}\n")
        return 2
    except KeyboardInterrupt:
        return 130
