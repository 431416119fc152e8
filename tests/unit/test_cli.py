"""The `deepfusion` command: every subcommand answers --help from any folder, before any params are read."""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from components import cli

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("command", [[], *([c] for c in cli.COMMANDS), ["registry", "promote"]])
def test_help_works_from_a_folder_without_params(command, tmp_path):
    proc = subprocess.run([str(BIN / "deepfusion"), *command, "--help"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: deepfusion" + (f" {command[0]}" if command else ""))
    assert not (tmp_path / "params.yaml").exists() and list(tmp_path.iterdir()) == []


def test_each_command_module_answers_help_in_process():
    for name, (module, _) in cli.COMMANDS.items():
        with pytest.raises(SystemExit) as exc:
            __import__(module, fromlist=["main"]).main(["--help"])
        assert exc.value.code == 0, name


def test_the_documented_module_commands_still_work(tmp_path):
    for module in ("components.predict", "components.search", "components.registry", "components.drift",
                   "components.replay"):
        proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, (module, proc.stderr)


def test_a_command_outside_the_project_says_where_params_are_missing(tmp_path):
    proc = subprocess.run([str(BIN / "deepfusion"), "audit"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: params.yaml: not found")


def test_unknown_commands_and_verbosity(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["frobnicate"])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err
    cli.setup_logging(-1)
    assert logging.getLogger().level == logging.WARNING
    cli.setup_logging(1)
    assert logging.getLogger().level == logging.DEBUG and logging.getLogger("mlflow").level == logging.WARNING
    cli.setup_logging(0)


def test_the_cli_wires_the_deployment_into_registry_and_review(tmp_path, monkeypatch):
    """The registry and the review station sit below components.orchestration and may not import it: the CLI
    hands them the artifact store's trail and the station's way to the champion's run, and each takes them."""
    import importlib
    import inspect

    from components.orchestration.champion_run import StationChampion, Trail

    monkeypatch.chdir(tmp_path)
    trail = cli.wiring("registry")["trail"]
    assert isinstance(trail, Trail) and trail.project == tmp_path  # the pipeline result the command runs in
    assert cli.wiring("review") == {"champion": StationChampion}
    for command, (module, _) in cli.COMMANDS.items():
        main = importlib.import_module(module).main
        assert set(cli.wiring(command)) <= set(inspect.signature(main).parameters), command
