"""Progress bars: tqdm's notebook widget where a notebook can show it, plain text elsewhere, never a warning.

``tqdm.auto`` picks the widget bar inside a Jupyter kernel; without ipywidgets installed it warns
(``TqdmWarning: IProgress not found``) on import and falls back to a text bar that, in a notebook
or a headless kernel (nbclient, papermill), writes every refresh as a new line of output. Here the
choice is made once, quietly: the widget bar when the kernel has ipywidgets (``make lab`` installs
them), else tqdm's text bar, refreshed at most every ``TEXT_INTERVAL`` seconds inside a kernel.
"""
from __future__ import annotations

import importlib.util
import sys

from tqdm import std

TEXT_INTERVAL = 10.0        # seconds between refreshes of a text bar inside a kernel


def _in_kernel() -> bool:
    ipython = sys.modules.get("IPython")
    try:
        shell = ipython.get_ipython() if ipython is not None else None
    except Exception:           # an IPython without a running shell
        return False
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def tqdm(*args, **kwargs):
    """A tqdm bar as described in the module doc; the arguments are tqdm's."""
    if _in_kernel():
        if importlib.util.find_spec("ipywidgets") is not None:
            from tqdm.notebook import tqdm as notebook_tqdm
            return notebook_tqdm(*args, **kwargs)
        kwargs.setdefault("mininterval", TEXT_INTERVAL)
    return std.tqdm(*args, **kwargs)


tqdm.write = std.tqdm.write          # tqdm.write(message): a line that does not break a bar
