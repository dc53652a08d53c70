"""Training: state, optimizer and schedule, the jitted step, checkpointing, fine-tuning, the loop,
and the ahead-of-time compile of the step for TPU slices."""
