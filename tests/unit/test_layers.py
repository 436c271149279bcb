"""The house's one-way imports: the server never loads offline training code (import-linter's layers
contract in pyproject.toml covers the rest and runs in `make test`)."""

from __future__ import annotations

import subprocess
import sys


def _modules_loaded_by(statement: str) -> set[str]:
    code = f"{statement}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_importing_the_server_imports_no_training_code():
    loaded = _modules_loaded_by("import cascade.serving.app, cascade.serving.server")
    assert "cascade.serving.server" in loaded  # the probe did import it
    assert not {name for name in loaded if name.startswith("cascade.training")}
    assert not {name for name in loaded if name.startswith(("cascade.bench", "cascade.cli"))}


def test_the_command_line_loads_stage_code_only_when_a_command_runs():
    loaded = _modules_loaded_by("import cascade.cli")
    assert not {name for name in loaded if name.startswith(("cascade.training", "cascade.serving", "torch"))}
