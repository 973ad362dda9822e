"""Which code made a run: the git commit of the checkout eoq runs from, and whether it had
uncommitted changes to tracked files (SPEC section 7: a claim says which commit made its runs).

Recorded in a run's config.json as ``code``; a resumed run keeps the commit it started with and
lists the commits it was resumed at when they differ. Outside a git checkout (an installed wheel)
the commit is None and the package version says what ran.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(_ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def code_version() -> dict:
    """{"commit": 40-hex or None, "dirty": bool or None, "version": the package version}."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("eoq-workbench")
    except PackageNotFoundError:
        ver = None
    top = _git("rev-parse", "--show-toplevel")            # this package's own checkout, not one around it
    commit = _git("rev-parse", "HEAD") if top and Path(top).resolve() == _ROOT else None
    if commit is None:
        return {"commit": None, "dirty": None, "version": ver}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None, "version": ver}


def merged(previous: dict | None, now: dict) -> dict:
    """The ``code`` entry of a resumed run: the one it started with, plus the commits it was
    resumed at (``resumed_at``) where they differ from it."""
    if not previous:
        return now
    out = dict(previous)
    if now.get("commit") != previous.get("commit") or now.get("dirty"):
        seen = out.setdefault("resumed_at", [])
        entry = {"commit": now.get("commit"), "dirty": now.get("dirty")}
        if entry not in seen:
            seen.append(entry)
    return out
