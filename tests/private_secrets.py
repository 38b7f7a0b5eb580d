"""An autouse fixture for tests that start TCP schedulers: secret files go to a directory of the test.

Import it into a test module (``from tests.private_secrets import private_runtime_dir``); processes the
test starts inherit the variable, so they find the same secrets.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def private_runtime_dir(tmp_path, monkeypatch):
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    return runtime
