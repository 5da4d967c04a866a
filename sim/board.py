"""A simulated ECP5 board on a pseudo-terminal: ``SimBoard`` builds ``hw.seriallink.SerialCard``
(Verilator, cached under ``build/sim/``) and serves it with ``actpack.sim.board_server``, whose
pty the host opens as it would a board's ``/dev/ttyUSBn``::

    from actpack.sim.board import SIM_BOARD, SimBoard
    import actpack

    with SimBoard(**SIM_BOARD) as board:
        card = actpack.open_device(f"serial:{board.port}", **board.device_options)

``pause()`` / ``resume()`` stop and continue the simulator process (``SIGSTOP``/``SIGCONT``): a
board that stops answering, with nothing in between mocked.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import threading
import time

from actpack.codec.spec import DType, Mode
from actpack.hw.regs import Caps, CardConfig

from .build import build

__all__ = ["SIM_BOARD", "SimBoard", "small_card_config"]

SERVER_MODULE = "actpack.sim.board_server"


def small_card_config(modes=(Mode.SFPR8,), dtypes=(DType.FLOAT32,), *, buffer_kib: int = 8,
                      compress: bool = True, decompress: bool = True) -> CardConfig:
    """A card small enough for a board top: the given modes and dtypes, 8-byte streams."""
    return CardConfig(caps=Caps(modes=frozenset(modes), dtypes=frozenset(dtypes),
                                compress=compress, decompress=decompress, stream_bytes=8),
                      buffer_kib=buffer_kib)


SIM_BOARD = {"config": small_card_config(tuple(Mode)), "max_groups": 16, "max_blocks": 64,
             "divisor": 4, "max_payload": 256, "gap_cycles": 4000}
"""The simulated board: every mode on float32, an 8 KiB frame buffer, 4 clock cycles a bit."""


class SimBoard:
    """``SerialCard(**params)`` under Verilator behind a pseudo-terminal (``port``).

    ``start_timeout``: seconds for the simulator to start (the build before it is not counted).
    ``env``: extra environment for the simulator (e.g. ``ACTPACK_BOARD_FLIP_TX``).
    ``device_options``: what ``open_device("serial:...")`` needs for simulated time (the
    simulator runs at about 0.3-0.5 M cycles a second: long timeouts).
    """

    def __init__(self, *, start_timeout: float = 180.0, env=None, **params):
        from actpack.hw.seriallink import SerialCard

        self.params = params
        self.build = build(SerialCard, name="serialcard", params=params)
        self._dir = tempfile.mkdtemp(prefix="actpack-board-")
        self.info = os.path.join(self._dir, "board.json")
        self.outcome: dict[str, BaseException] = {}
        env = {"ACTPACK_BOARD_INFO": self.info,
               "ACTPACK_BOARD_DIVISOR": str(params["divisor"]),
               "COCOTB_TRUST_INERTIAL_WRITES": "1", **(env or {})}
        self._thread = threading.Thread(target=self._run, args=(env,), daemon=True,
                                        name="actpack-board")
        self._thread.start()
        deadline = time.monotonic() + start_timeout
        while not os.path.exists(self.info):
            if not self._thread.is_alive():
                raise RuntimeError(f"the board simulator ended before it opened its pty: "
                                   f"{self.outcome.get('error')!r}")
            if time.monotonic() > deadline:
                self.close()
                raise TimeoutError(f"the board simulator did not start within "
                                   f"{start_timeout:g} s")
            time.sleep(0.05)
        with open(self.info) as f:
            info = json.load(f)
        self.port, self.pid = info["pty"], info["pid"]
        self.device_options = {"timeout": 300.0, "reset_timeout": 120.0,
                               "reply_timeout": 30.0, "quiet_s": 0.3}

    def _run(self, env) -> None:
        try:
            self.build.run(SERVER_MODULE, env=env, tag=f"board-{id(self):x}")
        except BaseException as exc:  # reported by the constructor / close
            self.outcome["error"] = exc

    def pause(self) -> None:
        """Freeze the board (the simulator process stops: no byte moves either way)."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def close(self) -> None:
        """Stop the simulator and wait for it (killing it after 30 s)."""
        with contextlib.suppress(OSError):
            open(self.info + ".stop", "w").close()
        if hasattr(self, "pid"):
            with contextlib.suppress(ProcessLookupError):
                self.resume()
        self._thread.join(30.0)
        if self._thread.is_alive() and hasattr(self, "pid"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self._thread.join(10.0)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
