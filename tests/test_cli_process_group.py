"""Under torchrun / accelerate launch a `prefopt` command ends the process group its run started when it returns
(`prefopt.cli._end_process_group`): gloo's threads left to the interpreter's teardown can abort a finished process
("terminate called without an active exception"), which the launcher then reports as a failed run."""

from __future__ import annotations

import torch.distributed as dist

from prefopt.cli import main


def test_a_command_ends_the_process_group_it_ran_in(tmp_path, capsys):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    ended = False
    try:
        assert main(["losses"]) == 0
        ended = not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    assert ended
    assert "grpo" in capsys.readouterr().out


def test_a_command_without_a_process_group_leaves_none(capsys):
    assert not dist.is_initialized()
    assert main(["losses"]) == 0 and not dist.is_initialized()
