"""The package layering DESIGN asks for: the shared library imports no service, the CLI is the
one composition root, and the gateway-side commands run without torch."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("gateway", "target_service", "draft_service")


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_shared_library_imports_no_service_outside_the_cli():
    offenders = []
    for path in sorted((ROOT / "specgrove").rglob("*.py")):
        if "cli" in path.relative_to(ROOT / "specgrove").parts:
            continue
        for name in _imported_modules(path):
            if name.split(".")[0] in SERVICES:
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not offenders, offenders


def _torch_blocked(code: str) -> subprocess.CompletedProcess:
    prelude = "import sys; sys.modules['torch'] = None\n"
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def _cli_without_torch(argv: list[str]) -> str:
    """Run ``specgrove ARGV`` in a fresh interpreter where ``import torch`` fails."""
    code = ("from click.testing import CliRunner\n"
            "from specgrove.cli import main\n"
            f"r = CliRunner().invoke(main, {argv!r})\n"
            "assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)\n"
            "print(r.exit_code, r.output)\n")
    out = _torch_blocked(code)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.mark.parametrize("argv", [["gateway", "--help"], ["up", "--help"], ["trace", "--help"]])
def test_gateway_side_commands_run_without_torch(argv):
    assert _cli_without_torch(argv).startswith("0 Usage")


def test_trace_command_reads_a_file_without_torch(tmp_path):
    trace = tmp_path / "empty.jsonl"
    trace.write_text("")
    assert "no request spans in this file" in _cli_without_torch(["trace", str(trace)])


def test_gateway_process_modules_import_without_torch():
    code = ("import gateway.server, gateway.http_api, gateway.grpc_api, gateway.offline, "
            "specgrove.clients, specgrove.config, specgrove.cli.serve_cmds, specgrove.cli.up_cmd, "
            "specgrove.cli.trace_cmd; print('ok')")
    out = _torch_blocked(code)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
