"""`adt run --help` shows every default: the RunConfig field's, for flags that default to None."""

from __future__ import annotations

import argparse
import dataclasses

from adt_tui.cli import build_parser
from engine.config import RunConfig


def run_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["run"]


def test_every_run_flag_says_its_default() -> None:
    parser = run_parser()
    formatter = parser._get_formatter()
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    flags = [a for a in parser._actions if a.option_strings and a.dest not in ("help", "config")]
    assert {a.dest for a in flags} & fields  # run flags are RunConfig fields (a new one included)
    for action in flags:
        assert "default" in (formatter._get_help_string(action) or ""), action.option_strings


def test_defaults_come_from_runconfig_not_from_argparse() -> None:
    text = " ".join(run_parser().format_help().split())  # unwrapped
    config = RunConfig()
    assert f"--epochs EPOCHS epochs (default: {config.epochs})" in text
    assert f"(warmup) (default: {config.lr})" in text or f"(default: {config.lr})" in text
    assert "--overlap" in text and "(default: off)" in text
    assert "(default: None)" not in text


def test_none_still_means_not_given() -> None:
    args = build_parser().parse_args(["run", "--no-ui"])
    assert args.lr is None and args.epochs is None and args.overlap is None
