"""Reading back what a run wrote to TensorBoard."""

import tensorflow as tf


def read_events(logdir) -> dict:
    """``{tag: (plugin name, [(step, tensor)])}`` of every event file under ``logdir``."""
    found = {}
    for path in tf.io.gfile.glob(f"{logdir}/**/events.out.tfevents.*") + tf.io.gfile.glob(
        f"{logdir}/events.out.tfevents.*"
    ):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                plugin = v.metadata.plugin_data.plugin_name
                entry = found.setdefault(v.tag, (plugin, []))
                entry[1].append((event.step, tf.make_ndarray(v.tensor)))
    return found
