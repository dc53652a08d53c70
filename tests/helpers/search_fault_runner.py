"""The search command, killed (SIGKILL) right after the checkpoint of one step is complete, as a
preempted machine that never got to exit cleanly.

``KILL_AFTER_SEARCH_SAVE=<step> python tests/helpers/search_fault_runner.py <search flags>``.
"""

import os
import signal

from mobiledet_jax import command_line
from mobiledet_jax.search import __main__ as search_main
from mobiledet_jax.search.checkpoints import SearchCheckpointer

KILL_AT = int(os.environ.get("KILL_AFTER_SEARCH_SAVE", "-1"))
_save = SearchCheckpointer.save


def _save_then_die(self, step, state, iterators, force=False):
    started = _save(self, step, state, iterators, force)
    if started and step == KILL_AT:
        self._manager.wait_until_finished()
        self._seal()
        print(f"fault runner: SIGKILL after the search checkpoint of step {KILL_AT}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    return started


SearchCheckpointer.save = _save_then_die

if __name__ == "__main__":
    search_main.define_flags()
    command_line.run(search_main.main)
