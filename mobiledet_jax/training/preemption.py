"""SIGTERM (a TPU preemption notice) and Ctrl-C (SIGINT) as a flag every process agrees on.

Both stop the run the same way: the loop saves the current step, waits for it, and stops. SIGTERM
then ends the run normally (the command exits 0: a preempted run is restarted by its scheduler);
SIGINT raises ``Interrupted`` once the step is saved, which the command turns into one line
``interrupted: saved step N`` and exit status 130. A second Ctrl-C does not wait for the save: it
raises ``KeyboardInterrupt`` at once (the steps since the last complete checkpoint are lost, and
orbax's temporary folder is removed at the next start).
"""

import logging
import signal

import jax
import numpy as np
from jax.experimental import multihost_utils

_WATCHED = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):
    """Ctrl-C stopped the run after saving ``step``."""

    def __init__(self, step: int):
        super().__init__(f"interrupted: saved step {step}")
        self.step = step


class PreemptionWatcher:
    """Turns SIGTERM / SIGINT into a flag; on several processes they agree every ``check_every``
    steps."""

    def __init__(self, check_every: int = 10):
        self.requested = False
        self.interrupted = False  # the request came from SIGINT (Ctrl-C)
        self.check_every = check_every
        self._previous = {s: signal.signal(s, self._handle) for s in _WATCHED}

    def _handle(self, signum, frame):
        del frame
        if signum == signal.SIGINT and self.interrupted:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without saving
        name = signal.Signals(signum).name
        if signum == signal.SIGINT:
            self.interrupted = True
            logging.warning("SIGINT received: saving a checkpoint (Ctrl-C again: exit without)")
        else:
            logging.warning("%s received: saving a checkpoint and exiting", name)
        self.requested = True

    def should_stop(self, step: int) -> bool:
        if jax.process_count() == 1:
            return self.requested
        if step % self.check_every:
            return False
        flags_all = multihost_utils.process_allgather(np.asarray(self.requested))
        return bool(np.any(flags_all))

    def stopped(self, step: int) -> None:
        """After the stop's checkpoint of ``step`` is saved: raises ``Interrupted`` for Ctrl-C."""
        if self.interrupted:
            raise Interrupted(step)

    def close(self):
        for s, previous in self._previous.items():
            signal.signal(s, previous)
