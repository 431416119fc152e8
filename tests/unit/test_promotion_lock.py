"""The host-wide promotion lock lives in the user's own 0700 folder (a predictable name in /tmp let another
user of the host pre-create it, and a lock file left by root was unopenable for the platform's service user)."""
from __future__ import annotations

import os
import tempfile

import pytest

from components.lifecycle import registry
from components.mlflow_store import RegistryError


def test_the_lock_is_taken_in_a_private_folder(tmp_path, monkeypatch, tiny_params):
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    with registry.promotion_lock(tiny_params):
        folder = tmp_path / f"deepfusion-locks-{os.getuid()}"
        [lock] = folder.iterdir()
        assert folder.stat().st_mode & 0o777 == 0o700 and lock.stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("planted", ["symlink", "open_folder", "lock_symlink"])
def test_a_planted_lock_folder_or_file_is_refused(tmp_path, monkeypatch, tiny_params, planted):
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    folder = tmp_path / f"deepfusion-locks-{os.getuid()}"
    target = tmp_path / "victim"
    target.mkdir()
    if planted == "symlink":
        folder.symlink_to(target, target_is_directory=True)
    elif planted == "open_folder":
        folder.mkdir(mode=0o777)
        folder.chmod(0o777)
    else:  # a link where the lock file goes: opening it must not follow it
        with registry.promotion_lock(tiny_params):
            [lock] = folder.iterdir()
        lock.unlink()
        lock.symlink_to(target / "clobbered")
        with pytest.raises(OSError):
            with registry.promotion_lock(tiny_params):
                pass
        assert not (target / "clobbered").exists()
        return
    with pytest.raises(RegistryError, match="not a private folder"):
        with registry.promotion_lock(tiny_params):
            pass
    assert list(target.iterdir()) == []
