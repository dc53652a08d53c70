"""Cloud TPU VM launcher: from this machine to a pod slice and back to a TFLite file.

Run from the repository root as ``python -m launch.tpu <command> ...``; see the "From this machine
to a pod slice" section of README.md. Modules: ``slices`` (accelerator types: chips, hosts, runtime
images; defined in ``mobiledet_jax.tpu_slices``), ``gcloud`` (the only place that runs ``gcloud``,
with ``--dry_run``), ``source`` (the git revision shipped to the workers), ``launch_checks`` (checks
before anything is created), ``steps`` (the VM lifecycle and run steps), ``remote`` (the shell run on
the workers) and ``tpu`` (the command line).
"""
