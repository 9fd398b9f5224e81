"""The commit a result row names: from git in a checkout, from the file the image records outside one.

k8s/Dockerfile copies the project without .git and writes the commit it was built from into
`.quantsweep-commit`; rows written in the image must still name that commit, never a wrong one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.store.provenance import COMMIT_FILE, git_sha

pytestmark = pytest.mark.unit

SHA = "0123456789abcdef0123456789abcdef01234567"


def test_outside_git_without_a_recorded_commit_is_unknown(tmp_path: Path) -> None:
    assert git_sha(tmp_path) == "unknown"


def test_outside_git_the_image_recorded_commit_is_used(tmp_path: Path) -> None:
    (tmp_path / COMMIT_FILE).write_text(SHA + "\n", encoding="utf-8")
    assert git_sha(tmp_path) == SHA


@pytest.mark.parametrize("content", ["", "$(git rev-parse HEAD)", "not a sha", SHA + "\nmore"])
def test_a_recorded_commit_that_is_not_a_sha_is_unknown(tmp_path: Path, content: str) -> None:
    (tmp_path / COMMIT_FILE).write_text(content, encoding="utf-8")
    assert git_sha(tmp_path) == "unknown"
