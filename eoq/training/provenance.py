"""Which code made a run: the git commit of the checkout eoq runs from, and whether it had
uncommitted changes to tracked files, and to which (SPEC section 7: a claim says which commit made
its runs; a report can then tell a run made with edited code from one made while a README was
being edited).

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


MAX_CHANGED = 100          # paths listed at most; "changed_more" counts the rest


def code_version() -> dict:
    """{"commit": 40-hex or None, "dirty": bool or None, "version": the package version}; when
    dirty, "changed": the tracked paths that differ from the commit (``git diff --name-only HEAD``,
    at most MAX_CHANGED, "changed_more" the number left out)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("eoq-workbench")
    except PackageNotFoundError:
        ver = None
    top = _git("rev-parse", "--show-toplevel")            # this package's own checkout, not one around it
    commit = _git("rev-parse", "HEAD") if top and Path(top).resolve() == _ROOT else None
    if commit is None:
        return {"commit": None, "dirty": None, "version": ver}
    names = _git("diff", "--name-only", "HEAD")          # tracked files, staged or not; untracked ignored
    if names is None:
        return {"commit": commit, "dirty": None, "version": ver}
    paths = names.splitlines()
    out = {"commit": commit, "dirty": bool(paths), "version": ver}
    if paths:
        out["changed"] = paths[:MAX_CHANGED]
        if len(paths) > MAX_CHANGED:
            out["changed_more"] = len(paths) - MAX_CHANGED
    return out


CODE_PATHS = ("eoq/", "csrc/", "pyproject.toml")      # what a training run executes or builds from


def code_changed(code: dict) -> bool | None:
    """Whether a run's uncommitted changes touched the code it ran (CODE_PATHS): False for a clean
    checkout or changes elsewhere only, None when the run predates the list of changed paths."""
    if not code.get("dirty"):
        return False
    if "changed" not in code:
        return None
    return bool(code.get("changed_more")) or any(p.startswith(CODE_PATHS) for p in code["changed"])


def merged(previous: dict | None, now: dict) -> dict:
    """The ``code`` entry of a resumed run: the one it started with, plus the commits it was
    resumed at (``resumed_at``) where they differ from it."""
    if not previous:
        return now
    out = dict(previous)
    if now.get("commit") != previous.get("commit") or now.get("dirty"):
        seen = out.setdefault("resumed_at", [])
        entry = {k: now[k] for k in ("commit", "dirty", "changed", "changed_more") if k in now}
        if entry not in seen:
            seen.append(entry)
    return out
