"""The training command with one injected fault: SIGKILL of itself while a checkpoint is written,
or a full disk.

``KILL_DURING_SAVE_STEP=<step> python tests/helpers/train_fault_runner.py <train flags>`` runs
``mobiledet_jax.train`` unchanged, except that right after the asynchronous checkpoint save of
``<step>`` has started (its files are being written in the background), the process kills itself
with SIGKILL, as a machine that loses power mid-save would.

``ENOSPC_DURING_SAVE_STEP=<step>``: the save of ``<step>`` fails at its first write (the input
position) with the OSError a full disk raises (ENOSPC, naming the file).
"""

import errno
import os
import signal

from absl import app

from mobiledet_jax import train
from mobiledet_jax.data.iterators import TrainIterator
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

FULL_AT = os.environ.get("ENOSPC_DURING_SAVE_STEP", "")
_input_save = TrainIterator.save


def _input_save_on_a_full_disk(self, directory):
    if FULL_AT and os.path.basename(str(directory).rstrip("/")) == FULL_AT:
        path = os.path.join(str(directory), "input_process_00000_of_00001.data-00000-of-00001")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    return _input_save(self, directory)


TrainIterator.save = _input_save_on_a_full_disk

if __name__ == "__main__":
    train.define_flags()
    app.run(train.main)
