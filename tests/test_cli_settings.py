"""The settings helpers every sub-command shares: NAME=VALUE pairs and YAML files of config fields."""

from __future__ import annotations

import pytest

from prefopt.cli import main
from prefopt.cli_settings import parse_assignments, parse_value, read_settings_file


def test_values_are_json_where_they_parse() -> None:
    assert [parse_value(t) for t in ("0.1", "1e-5", "true", "[1, 2]", "null", "sigmoid")] == [
        0.1, 1e-5, True, [1, 2], None, "sigmoid"]
    assert parse_assignments(["beta=0.1", "label=a=b"], "--hparam") == {"beta": 0.1, "label": "a=b"}


@pytest.mark.parametrize("item", ["beta", "=0.1"])
def test_a_pair_without_name_or_equals_names_the_flag(item: str) -> None:
    with pytest.raises(ValueError, match=r"--online .*write NAME=VALUE, e\.g\. --online steps=60"):
        parse_assignments([item], "--online", "steps=60")


def test_settings_file_must_hold_a_mapping(tmp_path) -> None:  # type: ignore[no-untyped-def]
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("lr: 1.0e-4\nlosses: [dpo]\n")
    bad.write_text("- dpo\n- ipo\n")
    assert read_settings_file(good, "CompareConfig") == {"lr": 1e-4, "losses": ["dpo"]}
    with pytest.raises(ValueError, match="expected a mapping of CompareConfig settings, got list"):
        read_settings_file(bad, "CompareConfig")


def test_compare_cli_reports_bad_pairs_and_files_with_exit_code_2(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["compare", "--online", "steps"]) == 2
    assert "--online 'steps'" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("- dpo\n")
    assert main(["compare", "--config", str(bad)]) == 2
    assert "expected a mapping" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "train-online", "train-rm"])
def test_resume_and_no_progress_reach_the_config(command: str) -> None:
    """Every training command turns --resume / --no-progress into its config's fields (and leaves out
    flags that were not given, so a YAML file's values stand)."""
    from prefopt.cli import build_parser
    from prefopt.online.cli import online_config_from_args
    from prefopt.online.rm_cli import config_from_args as rm_config
    from prefopt.train.cli import config_from_args as train_config

    build = {"train": train_config, "train-online": online_config_from_args, "train-rm": rm_config}[command]
    parser = build_parser()
    plain = build(parser.parse_args([command]))
    flagged = build(parser.parse_args([command, "--resume", "--no-progress"]))
    assert (plain.resume, plain.progress) == (False, True)
    assert (flagged.resume, flagged.progress) == (True, False)
