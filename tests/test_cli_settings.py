"""The settings helpers every sub-command shares: NAME=VALUE pairs and YAML files of config fields."""

from __future__ import annotations

import pytest

from prefopt.cli import main
from prefopt.cli.settings import parse_assignments, parse_value, read_settings_file


def test_values_are_json_where_they_parse() -> None:
    assert [parse_value(t) for t in ("0.1", "1e-5", "true", "[1, 2]", "null", "sigmoid")] == [
        0.1,
        1e-5,
        True,
        [1, 2],
        None,
        "sigmoid",
    ]
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
def test_resume_and_quiet_reach_the_config(command: str) -> None:
    """Every training command turns --resume / --quiet into its config's fields (and leaves out
    flags that were not given, so a YAML file's values stand)."""
    from prefopt.cli import build_parser
    from prefopt.cli.train import config_from_args as train_config
    from prefopt.cli.train_online import config_from_args as online_config
    from prefopt.cli.train_rm import config_from_args as rm_config

    build = {"train": train_config, "train-online": online_config, "train-rm": rm_config}[command]
    parser = build_parser()
    plain = build(parser.parse_args([command]))
    flagged = build(parser.parse_args([command, "--resume", "--quiet"]))
    assert (plain.resume, plain.progress) == (False, True)
    assert (flagged.resume, flagged.progress) == (True, False)


def test_set_takes_the_runs_loss_or_names_it() -> None:
    """`--set HPARAM=V` is a hyper-parameter of the run's loss; `--set LOSS.HPARAM=V` names a loss of the run
    (online_dpo's pair loss included); the deprecated --hparam / --pair-hparam land in the same fields."""
    from prefopt.cli import build_parser
    from prefopt.cli.train import config_from_args as train_config
    from prefopt.cli.train_online import config_from_args as online_config

    parser = build_parser()
    config = train_config(parser.parse_args(["train", "--loss", "ipo", "--set", "beta=0.2", "--set", "ipo.beta=0.3"]))
    assert config.loss_hparams == {"beta": 0.3}
    old = train_config(parser.parse_args(["train", "--loss", "ipo", "--hparam", "beta=0.2"]))
    assert old.loss_hparams == {"beta": 0.2}
    online = online_config(
        parser.parse_args(
            [
                "train-online",
                "--algorithm",
                "online_dpo",
                "--pair-loss",
                "ipo",
                "--pair-hparam",
                "beta=0.5",
                "--hparam",
                "beta=0.2",
            ]
        )
    )
    assert (online.algorithm, online.loss_hparams, online.pair_loss_hparams) == (
        "online_dpo",
        {"beta": 0.2},
        {"beta": 0.5},
    )
    with pytest.raises(ValueError, match=r"--set 'dpo.beta=0.1': dpo is not a loss of this run \(ipo\)"):
        train_config(parser.parse_args(["train", "--loss", "ipo", "--set", "dpo.beta=0.1"]))


# old spelling → (command line with it, the new spelling the note names)
OLD_SPELLINGS = [
    (["train", "--no-progress", "--max-steps", "0"], "--no-progress", "--quiet"),
    (["train", "--hparam", "beta=-1"], "--hparam", "--set"),
    (["train-online", "--algorithm", "ppo", "--steps", "0"], "--algorithm", "--loss"),
    (["train-online", "--no-progress", "--steps", "0"], "--no-progress", "--quiet"),
    (["train-online", "--pair-hparam", "beta=0.5"], "--pair-hparam", "--set PAIR_LOSS.HPARAM=VALUE"),
    (["train-rm", "--hparam", "center_coef=-1"], "--hparam", "--set"),
    (["train-rm", "--no-progress", "--epochs", "0"], "--no-progress", "--quiet"),
    (["reproduce", "bogus", "--seeds", "3"], "--seeds 3 (a number of seeds)", "--seeds 0,1,2"),
]


@pytest.mark.parametrize(("argv", "old", "new"), OLD_SPELLINGS, ids=[" ".join(c[0]) for c in OLD_SPELLINGS])
def test_old_spellings_still_work_and_print_one_note(argv, old, new, capsys) -> None:  # type: ignore[no-untyped-def]
    """Each old spelling does what the new one does (here: reaches the settings check that ends these command
    lines) and adds one line on stderr naming the new spelling, before the command's own line."""
    assert main(argv) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    assert lines[0] == f"prefopt {argv[0]}: {old} is deprecated and will be removed in the next release; use {new}"
    assert lines[1].startswith(f"prefopt {argv[0]}: ") and "deprecated" not in lines[1]


def test_reproduce_seeds_is_a_list(capsys) -> None:  # type: ignore[no-untyped-def]
    from prefopt.cli.reproduce import seed_count

    assert (seed_count("0,1,2"), seed_count("0,1")) == (3, 2)
    assert capsys.readouterr().err == ""
    assert seed_count("2") == 2  # a bare number: the old count, with a note
    assert "--seeds 2 (a number of seeds) is deprecated" in capsys.readouterr().err
    for text, words in (("0", "≥ 1"), ("1,2", "0..N-1"), ("0,x", "integers"), ("0,0", "distinct")):
        with pytest.raises(ValueError, match=words):
            seed_count(text)


def test_choices_come_from_the_modules_that_define_them() -> None:
    """Every command's help lists the registry's and the implementations' values, none typed in the CLI."""
    from prefopt.cli.choices import OFFLINE, ONLINE, REWARD_MODEL, loss_kinds
    from prefopt.kernels.params import BACKENDS
    from prefopt.registry import list_losses, loss_spec
    from prefopt.rl.kl import KL_ESTIMATORS
    from prefopt.train.presets import OPTIMIZERS, SCHEDULES

    names = {n: loss_spec(n) for n in list_losses()}
    assert set(OFFLINE.names()) == {n for n, s in names.items() if s.kind != "rollout" and s.scores == "logps"}
    assert set(ONLINE.names()) == set(list_losses("rollout")) and "dpo" not in ONLINE.names()
    assert set(REWARD_MODEL.names()) == {n for n, s in names.items() if s.scores == "rewards"}
    assert set(OFFLINE.names()) | set(ONLINE.names()) | set(REWARD_MODEL.names()) == set(names)
    assert set(loss_kinds()) == {s.kind for s in names.values()}
    from prefopt.cli import losses, train, train_online, train_rm

    def values(command, flag: str) -> tuple[str, ...]:  # type: ignore[no-untyped-def]
        return command.parser()._option_string_actions[flag].type.values

    assert values(train.COMMAND, "--loss") == tuple(OFFLINE.names())
    assert values(train_online.COMMAND, "--loss") == tuple(ONLINE.names())
    assert values(train_online.COMMAND, "--algorithm") == tuple(ONLINE.names())  # the old spelling
    assert values(train_rm.COMMAND, "--loss") == tuple(REWARD_MODEL.names())
    assert values(losses.COMMAND, "--kind") == loss_kinds()
    for command in (train.COMMAND, train_online.COMMAND):
        assert values(command, "--engine-backend") == BACKENDS
    assert values(train_online.COMMAND, "--kl-estimator") == KL_ESTIMATORS
    assert (values(train.COMMAND, "--optimizer"), values(train.COMMAND, "--schedule")) == (OPTIMIZERS, SCHEDULES)


@pytest.mark.parametrize(
    "command", ["losses", "data synth", "reproduce", "train", "train-online", "train-rm", "compare"]
)
def test_help_is_written_for_users(command: str, capsys) -> None:  # type: ignore[no-untyped-def]
    """Every flag has help, and the text is the command's own (not a module docstring)."""
    assert main([*command.split(), "--help"]) == 0
    text = capsys.readouterr().out
    assert "command-line edge" not in text and "argparse" not in text and "YAML and" not in text
    from prefopt.cli import compare, data, losses, reproduce, train, train_online, train_rm

    modules = {
        "losses": losses,
        "data synth": data,
        "reproduce": reproduce,
        "train": train,
        "train-online": train_online,
        "train-rm": train_rm,
        "compare": compare,
    }
    sub = modules[command].COMMAND.parser()
    missing = [a.option_strings or a.dest for a in sub._actions if not a.help]
    assert missing == []
