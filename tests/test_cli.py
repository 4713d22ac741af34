"""The `onesearch` command names a port another process holds before it starts anything."""

from __future__ import annotations

import socket

from onesearch_cli.main import main


def test_a_port_in_use_is_named_before_anything_starts(tmp_path, capsys) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["demo", "--api", "http://127.0.0.1:9", "--port", str(port)]) == 2
        assert f"127.0.0.1:{port} is in use" in capsys.readouterr().err
        run = tmp_path / "run"
        assert main(["quickstart", "--out", str(run), "--demo-port", str(port)]) == 2
        assert "pass another --demo-port" in capsys.readouterr().err
        assert not run.exists()  # no data written, nothing trained
