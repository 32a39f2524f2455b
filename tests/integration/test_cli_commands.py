"""`flotilla` starts without LibTorch and hands the LibTorch commands to `flotilla-torch`
(tools/cli/torch_commands.h): the same commands, help, output and exit codes either way."""
from __future__ import annotations

import re
import shutil
import subprocess

from conftest import binary


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=120)


def subcommands(help_text: str) -> dict[str, str]:
    """{name: description} from CLI11's "Subcommands:" section."""
    section = help_text.split("Subcommands:", 1)[1]
    return {match[1]: match[2].strip() for match in re.finditer(r"^  (\S+)\s+(.*)$", section, re.MULTILINE)}


def test_every_libtorch_command_is_listed_by_flotilla_with_its_description():
    torch_commands = subcommands(run(binary("flotilla-torch"), "--help").stdout)
    listed = subcommands(run(binary("flotilla"), "--help").stdout)
    assert {"forward", "generate", "embed", "process-image", "save-pretrained"} <= set(torch_commands)
    for name, description in torch_commands.items():
        assert listed.get(name) == description, f"`flotilla --help` lists {name!r} as {listed.get(name)!r}"


def test_flotilla_itself_links_no_libtorch():
    libraries = run("ldd", binary("flotilla")).stdout
    assert "libtorch" not in libraries and "libc10" not in libraries, libraries
    assert "libtorch_cpu" in run("ldd", binary("flotilla-torch")).stdout


def test_forwarded_commands_behave_as_flotilla_torch(tmp_path):
    for arguments in (["forward", "--help"], ["process-image", "--help"],
                      ["generate", str(tmp_path / "missing"), "--prompt-ids", "1,2"], ["embed"]):
        through = run(binary("flotilla"), *arguments)
        direct = run(binary("flotilla-torch"), *arguments)
        assert (through.returncode, through.stdout, through.stderr) == (direct.returncode, direct.stdout, direct.stderr)
    assert run(binary("flotilla"), "generate", tmp_path / "missing", "--prompt-ids", "1,2").returncode != 0


def test_a_missing_flotilla_torch_is_named_in_the_error(tmp_path):
    alone = tmp_path / "flotilla"
    shutil.copy(binary("flotilla"), alone)
    result = run(alone, "forward", tmp_path, "--input-ids", "1", "--output", tmp_path / "out.safetensors")
    assert result.returncode == 2
    assert f"cannot run {tmp_path / 'flotilla-torch'}" in result.stderr and "FLOTILLA_WITH_TORCH" in result.stderr
    assert run(alone, "ls", "--help").returncode == 0  # everything else works without it
