"""`adt run --help` shows every default: the RunConfig field's, for flags that default to None."""

from __future__ import annotations

import argparse
import dataclasses
import re

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


def test_every_setting_has_exactly_one_flag_and_one_help_line() -> None:
    """Each RunConfig field is declared once (engine/config.py `setting`); its flag and help are
    derived. A field adt fills in itself (flag=False) has none."""
    parser = run_parser()
    for spec in dataclasses.fields(RunConfig):
        flag = f"--{spec.name.replace('_', '-')}"
        actions = [a for a in parser._actions if flag in a.option_strings]
        assert len(actions) == (1 if spec.metadata["flag"] else 0), spec.name
        if actions:
            assert actions[0].dest == spec.name and actions[0].help
            lines = [line for line in parser.format_help().splitlines() if line.strip().startswith(flag + " ")
                     or line.strip() == flag or line.strip().startswith(flag + "  ")]
            assert len(lines) == 1, (flag, lines)


def test_every_registered_rule_is_accepted_and_listed_in_help() -> None:
    from adt_tui.cli import config_from_args
    from engine.rule_registry import RULE_NAMES, RULE_SPECS
    from engine.rules import RULES

    assert list(RULES) == [spec.name for spec in RULE_SPECS]  # one class per registered name
    text = " ".join(re.sub(r"-\n\s*", "-", run_parser().format_help()).split())  # argparse breaks at hyphens
    for name in RULE_NAMES:
        args = build_parser().parse_args(["run", "--update-rule", name])
        assert config_from_args(args).update_rule == name
        assert name in text.split("--update-rule UPDATE_RULE")[-1].split("--local-steps")[0], name


def test_a_setting_may_sit_under_its_section_in_toml(tmp_path) -> None:
    from engine.config import build_config

    path = tmp_path / "adt.toml"
    path.write_text('data = "elsewhere"\n[optimization]\nlr = 0.01\n[asynchrony]\nworkers = 3\n[run]\nepochs = 5\n')
    config = build_config(str(path), {})
    assert (config.data, config.lr, config.workers, config.epochs) == ("elsewhere", 0.01, 3, 5)


def test_a_declared_choice_and_bound_are_checked_with_the_field_named() -> None:
    import pytest

    from engine.config import ConfigError

    with pytest.raises(ConfigError, match="'lr_schedule' is 'linear'. Fix: use one of constant, cosine, step"):
        RunConfig(lr_schedule="linear").validate()
    with pytest.raises(ConfigError, match="'batch_size' is 0, but it must be at least 1"):
        RunConfig(batch_size=0).validate()
