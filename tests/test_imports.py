"""Import hygiene: the torch-free parts import without torch.

The card server (``actpack.sim.card_server``) starts in every simulator run and imports the
gateware (``actpack.hw``) and the codec's spec; importing torch and the host driver there cost
seconds per start.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import actpack

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("module", ["actpack.hw.regs", "actpack.codec.spec",
                                    "actpack.codec.reference", "actpack.hw.protocol"])
def test_torch_free_modules_import_without_torch(module):
    out = _run(f"import sys, {module}\n"
               "print(sorted(m for m in ('torch', 'actpack.host') if m in sys.modules))")
    assert out.strip() == "[]"


def test_package_root_gives_the_public_api():
    out = _run("import sys, actpack\n"
               "assert 'actpack.host' not in sys.modules\n"
               "assert callable(actpack.offload) and callable(actpack.open_device)\n"
               "from actpack import *\n"
               "print(Codec.__name__, FrameError.__name__, actpack.host.__name__)")
    assert out.split() == ["Codec", "FrameError", "actpack.host"]
    assert set(actpack.__all__) <= set(dir(actpack))
    for name in actpack.__all__:
        assert getattr(actpack, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nonesuch'"):
        actpack.nonesuch  # noqa: B018
