import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_ZIP = ROOT.parent / "shared" / "data" / "cifar10-jpeg.zip"

# decoded datasets are cached once per checkout, not in the user's home
os.environ.setdefault("EOQ_CACHE", str(ROOT / ".pytest_cache" / "eoq-data"))


@pytest.fixture(scope="session")
def shared_zip() -> Path:
    if not SHARED_ZIP.exists():
        msg = (f"needs the full CIFAR-10 JPEG zip at {SHARED_ZIP} (shared/data beside the checkout; "
               "`eoq train --download` fetches it, README 'Data')")
        if os.environ.get("CI"):
            pytest.fail(msg + ": CI must have it")
        pytest.skip(msg)
    return SHARED_ZIP
