"""The training command with one injected fault: SIGKILL of itself while a checkpoint is written.

``KILL_DURING_SAVE_STEP=<step> python tests/helpers/train_fault_runner.py <train flags>`` runs
``mobiledet_jax.train`` unchanged, except that right after the asynchronous checkpoint save of
``<step>`` has started (its files are being written in the background), the process kills itself
with SIGKILL, as a machine that loses power mid-save would.
"""

import os
import signal

from absl import app

from mobiledet_jax import train
from mobiledet_jax.training.checkpointing import TrainCheckpointer

KILL_AT = int(os.environ.get("KILL_DURING_SAVE_STEP", "-1"))
_save = TrainCheckpointer.save


def _save_then_die(self, state, input_iterator, force=False):
    started = _save(self, state, input_iterator, force)
    if started and int(state.step) == KILL_AT:
        print(f"fault runner: SIGKILL during the save of step {KILL_AT}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    return started


TrainCheckpointer.save = _save_then_die

if __name__ == "__main__":
    train.define_flags()
    app.run(train.main)
