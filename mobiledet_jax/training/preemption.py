"""SIGTERM (a TPU preemption notice) as a flag that every process agrees on before acting."""

import logging
import signal

import jax
import numpy as np
from jax.experimental import multihost_utils


class PreemptionWatcher:
    """Turns SIGTERM into a flag; on several processes they agree every ``check_every`` steps."""

    def __init__(self, check_every: int = 10):
        self.requested = False
        self.check_every = check_every
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        logging.warning("SIGTERM received: saving a checkpoint and exiting")
        self.requested = True

    def should_stop(self, step: int) -> bool:
        if jax.process_count() == 1:
            return self.requested
        if step % self.check_every:
            return False
        flags_all = multihost_utils.process_allgather(np.asarray(self.requested))
        return bool(np.any(flags_all))

    def close(self):
        signal.signal(signal.SIGTERM, self._previous)
