"""The ``gpf`` click group.

Each sub-command lives in its own module of ``gpf.cli`` and imports the
library (torch, numba, ...) only when it runs, so ``gpf --help`` stays fast.
"""
from __future__ import annotations

import importlib
import sys

import click

# command name -> (module, attribute); loaded on demand.
_COMMANDS = {
    "preprocess": ("gpf.cli.preprocess", "preprocess"),
    "train": ("gpf.cli.train", "train"),
    "evaluate": ("gpf.cli.evaluate", "evaluate"),
    "predict": ("gpf.cli.predict", "predict"),
    "attention": ("gpf.cli.attention", "attention"),
    "shards": ("gpf.cli.shards", "shards"),
    "models": ("gpf.cli.models", "models"),
    "demo": ("gpf.cli.demo", "demo"),
}

_HELP = {
    "preprocess": "Stage-1 pass: attention maps, optimal crops, WebDataset shards.",
    "train": "Train stage 1 (peripheral) or stage 2 (foveal + fusion).",
    "evaluate": "Paper's Table I metrics of a checkpoint on shards.",
    "predict": "Score raw photos with the full online path.",
    "attention": "Draw the attention map, tau box and foveal crop of a photo.",
    "shards": "Inspect and verify shard folders.",
    "models": "List registered backbones and parameter counts.",
    "demo": "End-to-end demo on a generated AVA-format dataset.",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(_COMMANDS)

    def get_command(self, ctx, name):
        if name not in _COMMANDS:
            return None
        module_name, attr = _COMMANDS[name]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                return None
            raise
        return getattr(module, attr)

    def format_commands(self, ctx, formatter):
        rows = [(name, _HELP.get(name, "")) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx):
        """Run the sub-command; Ctrl-C is one line and exit 130, not click's bare "Aborted!".

        ``gpf preprocess`` and ``gpf train`` say more themselves (what is kept, the
        command that resumes): :func:`gpf.cli.common.on_interrupt`.
        """
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            from .common import INTERRUPTED_EXIT

            click.echo("\ninterrupted", err=True)
            raise SystemExit(INTERRUPTED_EXIT) from None

    def resolve_command(self, ctx, args):
        name = args[0] if args else None
        if name and name not in _COMMANDS and not name.startswith("-"):
            import difflib

            close = difflib.get_close_matches(name, list(_COMMANDS), n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise click.UsageError(
                f"No such command {name!r}.{hint} Commands: {', '.join(sorted(_COMMANDS))}.", ctx
            )
        return super().resolve_command(ctx, args)


def _version_text() -> str:
    from ..env_info import environment_summary

    info = environment_summary()
    pil = info["pil"]
    avx2 = {True: "AVX2", False: "no AVX2", None: "AVX2 unknown"}[pil.get("avx2")]
    return (
        f"gpf {info['gpf']}\n"
        f"torch {info['torch']} (cuda available: {info['cuda']})\n"
        f"torchvision {info['torchvision']}\n"
        f"PIL: {pil['flavour']} {pil['version']} ({avx2})\n"
        f"python {info['python']}"
    )


def _print_version(ctx, _param, value):
    if not value or ctx.resilient_parsing:
        return
    click.echo(_version_text())
    ctx.exit()


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True,
              callback=_print_version, help="Show versions of gpf, torch, torchvision and PIL.")
def cli():
    """gpf: Gated Peripheral-Foveal CNN for photo aesthetics.

    Typical flow: train stage1 -> preprocess -> train stage2 -> evaluate.
    """


def main(argv=None):
    try:
        cli.main(args=argv, prog_name="gpf", standalone_mode=True)
    except KeyboardInterrupt:  # pragma: no cover - Ctrl-C outside a command (click handles the rest)
        click.echo("\ninterrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
