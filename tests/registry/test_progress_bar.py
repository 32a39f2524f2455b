"""The CLI's transfer progress bar: on a terminal, push and pull redraw one line with bytes done of
the total, the rate and an ETA, and end on the full size; into a pipe (scripts, --json) there is no
bar at all."""
from __future__ import annotations

import os
import pty
import re
import subprocess

from conftest import binary
from registry_fixtures import registry  # noqa: F401


def run_on_terminal(*arguments: str) -> tuple[int, str]:
    """Runs the flotilla CLI with stdout on a pseudo-terminal; returns its exit code and output."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen([str(binary("flotilla")), *arguments], stdout=terminal, stderr=subprocess.PIPE)
    os.close(terminal)
    output = bytearray()
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal closed: the process exited
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    return process.wait(timeout=120), output.decode(errors="replace")


BAR = re.compile(r"\r\[[#.]{30}\] ([\d.]+ [KMG]?i?B) / ([\d.]+ [KMG]?i?B)  [\d.]+ [KMG]?i?B/s  ETA (\d+s|\?)")


def test_push_and_pull_draw_a_progress_bar_on_a_terminal(registry, tmp_path):  # noqa: F811
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(os.urandom(96 << 20))
    code, output = run_on_terminal("push", str(folder), "acme/bar", "--registry", registry.grpc_address)
    assert code == 0, output
    bars = BAR.findall(output)
    assert bars, f"no progress bar in {output!r}"
    assert bars[-1] == ("96.0 MiB", "96.0 MiB", "0s"), bars[-1]
    assert "pushed acme/bar@main" in output

    code, output = run_on_terminal("pull", "acme/bar", str(tmp_path / "pulled"), "--registry", registry.grpc_address)
    assert code == 0, output
    assert BAR.findall(output)[-1] == ("96.0 MiB", "96.0 MiB", "0s")


def test_no_progress_bar_into_a_pipe(registry, tmp_path):  # noqa: F811
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(os.urandom(8 << 20))
    result = subprocess.run([str(binary("flotilla")), "push", str(folder), "acme/piped", "--registry",
                             registry.grpc_address], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stdout and "ETA" not in result.stdout
