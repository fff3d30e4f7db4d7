"""Golden cases pin the runners' code identities (`<runner>/1`), so their lock files and
expected plans do not change every time a source file does."""

from __future__ import annotations

import pytest

from controller.load import resolve
from controller.load.code import pinned_identities


@pytest.fixture(autouse=True)
def pinned_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resolve, "code_identities", lambda **_: pinned_identities())
