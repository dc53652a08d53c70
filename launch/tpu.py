"""Command line: one command from this machine to a Cloud TPU slice and back to a TFLite file.

    python -m launch.tpu run --name=md-v4 --zone=us-central2-b --accelerator=v4-32 \\
        --config=configs/mobiledet_edgetpu.py --workdir=gs://bucket/md-edgetpu \\
        --target=edgetpu --output=mobiledet_edgetpu.tflite --config.train.batch_size=512

Commands: ``preflight`` (checks only), ``up`` (checks, create, install, start training, follow the
log), ``run`` (``up``, wait, evaluate, export, fetch the .tflite, delete), ``resume`` (after a
preemption: recreate and restart from ``<workdir>/launch/run.json``), ``status``, ``logs``, ``stop``,
``evaluate``, ``export``, ``delete``. Every command takes ``--dry_run``: print the gcloud commands,
run none. Arguments ``--config.<field>=<value>`` pass through to training unchanged.
"""

import argparse
import dataclasses
import pathlib
import re
import shlex
import subprocess
import sys
import tempfile

from launch import launch_checks, remote, source, steps
from launch.gcloud import Gcloud, GcloudError
from launch.steps import Job, StepError

REPO = pathlib.Path(__file__).resolve().parents[1]
_JOB_FIELDS = ("name", "zone", "project", "accelerator", "config", "workdir", "runtime_version",
               "python", "revision")  # fmt: skip


class UsageError(RuntimeError):
    pass


# -- arguments --------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    g = common.add_argument_group("where")
    g.add_argument("--name", help="TPU VM (node) name, e.g. md-v4-32")
    g.add_argument("--zone", help="e.g. us-central2-b (v4), us-west4-a (v5e)")
    g.add_argument("--project", help="GCP project (default: gcloud's configured project)")
    g.add_argument("--workdir", help="gs://bucket/path (multi-host) or an absolute path on the VM")
    g.add_argument("--dry_run", action="store_true", help="print the gcloud commands, run none")
    g.add_argument("--internal_ip", action="store_true", help="ssh/scp to internal IPs")
    g.add_argument("--accelerator", help="v4-8 ... v4-4096, v5e-1 ... v5e-256 (= v5litepod-N), ...")
    g.add_argument("--queued", action="store_true", default=None, help="use queued resources")
    g.add_argument("--local_python", default=sys.executable, help="python for local steps")
    g.add_argument("--repo_dir", default=str(REPO), help=argparse.SUPPRESS)

    job = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    j = job.add_argument_group("job")
    j.add_argument("--config", help="configs/<file>.py[:arg], committed in the repository")
    cap = j.add_mutually_exclusive_group()
    for kind in ("spot", "preemptible", "reserved"):
        cap.add_argument(f"--{kind}", dest="capacity", action="store_const", const=kind)
    j.add_argument("--runtime_version", help="TPU VM image (default: per TPU family)")
    j.add_argument("--revision", help="git revision to ship (default HEAD; resume: recorded)")
    j.add_argument("--allow_dirty", action="store_true", help="ship HEAD despite local changes")
    j.add_argument("--skip_aot", action="store_true", help="skip the AOT memory check")
    j.add_argument("--python", help="python on the workers (default python3.11)")
    j.add_argument("--poll_s", type=float, default=60.0, help="polling interval (waits)")
    j.add_argument("--timeout_s", type=float, default=24 * 3600, help="VM/queue wait limit")
    j.add_argument("--no_tail", action="store_true", help="do not follow the log after start")

    ckpt = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    ckpt.add_argument("--checkpoint_step", type=int, help="default: the latest checkpoint")
    ckpt.add_argument("--local", action="store_true", help="run on this machine, not the VM")

    exp = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    exp.add_argument("--target", choices=("cpu", "edgetpu", "dsp", "gpu"))
    exp.add_argument("--format", dest="fmt", help="passed to export --format")
    exp.add_argument("--outputs", choices=("raw", "postprocessed"))
    exp.add_argument("--output", help="the .tflite file to write on this machine")

    top = argparse.ArgumentParser(prog="python -m launch.tpu", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = top.add_subparsers(dest="command", required=True)
    helps = {
        "preflight": "run every check, create nothing",
        "up": "checks, create the slice, install the revision, start training, follow the log",
        "run": "up, wait for the end of training, evaluate, export, fetch the .tflite, delete",
        "resume": "after a preemption: recreate the slice and restart from the GCS workdir",
    }
    for cmd, text in helps.items():
        parents = [common, job] + ([ckpt, exp] if cmd == "run" else [])
        p = sub.add_parser(cmd, parents=parents, help=text, allow_abbrev=False)
        if cmd == "run":
            p.add_argument("--keep_vm", action="store_true", help="do not delete the slice")
            p.add_argument("--max_restarts", type=int, default=20, help="preemptions survived")
    p = sub.add_parser("status", parents=[common], help="VM state and training status")
    p.add_argument("--lines", type=int, default=20)
    p = sub.add_parser("logs", parents=[common], help="follow the training log")
    p.add_argument("--worker", default="0", help="worker index, or all")
    p.add_argument("--lines", type=int, default=200)
    p.add_argument("--no_follow", action="store_true")
    sub.add_parser("stop", parents=[common], help="stop training (SIGTERM: it checkpoints)")
    sub.add_parser("evaluate", parents=[common, ckpt], help="evaluate a checkpoint")
    sub.add_parser("export", parents=[common, ckpt, exp], help="export a checkpoint to TFLite")
    sub.add_parser("delete", parents=[common], help="delete the slice (or queued resource)")
    return top


def split_overrides(extra: list[str]) -> list[str]:
    """Keep ``--config.<field>=<value>`` (or ``--config.<field> <value>``) verbatim; refuse the rest."""
    out, i = [], 0
    while i < len(extra):
        arg = extra[i]
        if not re.match(r"--(no)?config\.[A-Za-z_]", arg):
            raise UsageError(f"unrecognized argument {arg!r} (overrides are --config.<field>=...)")
        out.append(arg)
        if "=" not in arg and i + 1 < len(extra) and not extra[i + 1].startswith("--"):
            out.append(extra[i + 1])
            i += 1
        i += 1
    return out


def parse(argv: list[str]) -> argparse.Namespace:
    args, extra = _parser().parse_known_args(argv)
    args.overrides = split_overrides(extra)
    if args.overrides and args.command not in ("preflight", "up", "run", "resume"):
        raise UsageError(f"{args.command} takes no --config.* overrides")
    return args


# -- resolving the job ------------------------------------------------------------------------------


def _check_job(job: Job) -> None:
    missing = [
        f for f in ("name", "zone", "accelerator", "config", "workdir") if not getattr(job, f)
    ]
    if missing:
        raise UsageError("missing " + ", ".join(f"--{f}" for f in missing))
    if not re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", job.name):
        raise UsageError(f"--name {job.name!r}: lowercase letters, digits and hyphens")
    if not (job.workdir.startswith("gs://") or job.workdir.startswith("/")):
        raise UsageError(f"--workdir {job.workdir!r}: gs://bucket/path or an absolute VM path")
    job.tpu  # noqa: B018  (raises ValueError on a bad accelerator type)
    if job.queued and job.capacity == "preemptible":
        raise UsageError("queued resources take --spot or --reserved, not --preemptible")


def resolve_job(args: argparse.Namespace, gc: Gcloud, *, use_record: bool) -> tuple[Job, dict]:
    """The job from the command line, over the run record in the workdir (``use_record``)."""
    record = {}
    if use_record and args.workdir and args.workdir.startswith("gs://"):
        record = steps.read_record(gc, args.workdir) or {}
        if gc.dry_run:
            print("# dry run: the run record is not read; pass every option on the command line")
        elif not record and args.command == "resume":
            raise UsageError(f"no run record at {args.workdir}/launch/run.json (was it `up`?)")
    fields = {k: v for k, v in record.items() if k in {f.name for f in dataclasses.fields(Job)}}
    fields = {"name": None, "zone": None, "accelerator": None, "config": None, "workdir": None,
              **fields}  # fmt: skip
    for key in _JOB_FIELDS:
        if getattr(args, key, None) is not None:
            fields[key] = getattr(args, key)
    if getattr(args, "capacity", None):
        fields["capacity"] = args.capacity
    if args.queued is not None:
        fields["queued"] = args.queued
    fields["overrides"] = list(fields.get("overrides", [])) + list(args.overrides)
    job = Job(**fields)
    if job.python is None:
        job.python = "python3.11"
    if job.revision is None:
        job.revision = "HEAD"
    gc.zone, gc.project = job.zone, job.project
    return job, record


def _vm_job(args: argparse.Namespace, gc: Gcloud, need=("name", "zone")) -> Job:
    job, _ = resolve_job(args, gc, use_record=True)
    missing = [f for f in need if not getattr(job, f)]
    if missing:
        raise UsageError("missing " + ", ".join(f"--{f}" for f in missing))
    return job


# -- commands ---------------------------------------------------------------------------------------


def _prepare(args, gc: Gcloud, job: Job, scratch: str) -> source.Archive:
    """Archive the revision and run the preflight on it."""
    _check_job(job)
    repo = source.repo_root(pathlib.Path(args.repo_dir))
    archive = source.archive(repo, job.revision, pathlib.Path(scratch))
    launch_checks.run(
        gc=gc, tpu=job.tpu, repo=repo, revision_arg=job.revision, archive=archive,
        config=job.config, overrides=job.overrides, workdir=job.workdir, zone=job.zone,
        python=args.local_python, allow_dirty=args.allow_dirty, skip_aot=args.skip_aot,
    )  # fmt: skip
    job.revision = archive.revision
    gc.zone, job.project = job.zone, gc.project
    return archive


def _launch(args, gc: Gcloud, job: Job, archive, *, recreate: bool, event: str, record) -> None:
    workers = steps.ensure_vm(
        gc, job, recreate=recreate, poll_s=args.poll_s, timeout_s=args.timeout_s
    )
    if event == "resume" and not gc.dry_run:
        status, _ = steps.training_status(gc, job)
        if status.startswith("RUNNING"):
            print(f"training is already running on {job.name}: nothing to resume")
            return
    steps.install(gc, job, archive, workers)
    steps.start_training(gc, job)
    steps.write_record(gc, job, event, record)


def _tail(args, gc: Gcloud, job: Job, worker: str = "0", lines: int = 100, follow=True) -> None:
    try:
        gc.ssh(job.name, remote.tail(lines, follow), worker=worker)
    except KeyboardInterrupt:
        print(f"\ndetached from the log; training goes on. Re-attach: python -m launch.tpu logs "
              f"--name={job.name} --zone={job.zone}")  # fmt: skip


def cmd_preflight(args, gc: Gcloud) -> None:
    job, _ = resolve_job(args, gc, use_record=False)
    with tempfile.TemporaryDirectory() as scratch:
        _prepare(args, gc, job, scratch)
    print(f"preflight passed for {job.name} ({job.tpu.describe()})")


def cmd_up(args, gc: Gcloud) -> Job:
    job, _ = resolve_job(args, gc, use_record=False)
    with tempfile.TemporaryDirectory() as scratch:
        archive = _prepare(args, gc, job, scratch)
        _launch(args, gc, job, archive, recreate=False, event="up", record=None)
    if args.command == "up" and not args.no_tail:
        _tail(args, gc, job)
    return job


def cmd_resume(args, gc: Gcloud) -> Job:
    job, record = resolve_job(args, gc, use_record=True)
    with tempfile.TemporaryDirectory() as scratch:
        archive = _prepare(args, gc, job, scratch)
        _launch(args, gc, job, archive, recreate=True, event="resume", record=record)
    if args.command == "resume" and not args.no_tail:
        _tail(args, gc, job)
    return job


def cmd_run(args, gc: Gcloud) -> None:
    if not args.target:
        raise UsageError("run needs --target (cpu, edgetpu, dsp or gpu) for the export")
    job = cmd_up(args, gc)
    restarts = []

    def on_preempted():
        if len(restarts) >= args.max_restarts:
            raise StepError(f"lost the slice {len(restarts) + 1} times; giving up")
        restarts.append(1)
        print(f"restart {len(restarts)}: recreating {job.name} and resuming", flush=True)
        # Same revision and job; the AOT check already passed for this slice.
        resume_args = argparse.Namespace(**{**vars(args), "skip_aot": True})
        with tempfile.TemporaryDirectory() as scratch:
            archive = _prepare(resume_args, gc, job, scratch)
            _launch(resume_args, gc, job, archive, recreate=True, event="resume", record=None)

    try:
        steps.wait_for_training(gc, job, poll_s=args.poll_s, on_preempted=on_preempted)
    except StepError as e:
        raise StepError(
            f"{e}\nThe slice is kept for inspection (`logs`, `status`); delete it with: "
            f"python -m launch.tpu delete --workdir={job.workdir} --name={job.name} --zone={job.zone}"
        ) from None
    _evaluate(args, gc, job)
    _export(args, gc, job)
    if args.keep_vm:
        print(f"kept {job.name}; delete it with: python -m launch.tpu delete --name={job.name} "
              f"--zone={job.zone}{' --queued' if job.queued else ''}")  # fmt: skip
    else:
        steps.delete_vm(gc, job)


def _local(args, gc: Gcloud, module: str, module_args: list[str]) -> None:
    argv = [args.local_python, "-m", module, *module_args]
    print("$ " + shlex.join(argv), flush=True)
    if not gc.dry_run and subprocess.call(argv, cwd=args.repo_dir) != 0:
        raise StepError(f"{module} failed")


def _ckpt_args(args, job: Job) -> list[str]:
    step = [f"--checkpoint_step={args.checkpoint_step}"] if args.checkpoint_step is not None else []
    return [f"--workdir={job.workdir}", *step]


def _evaluate(args, gc: Gcloud, job: Job) -> None:
    if args.local:
        _local(args, gc, "mobiledet_jax.evaluate", _ckpt_args(args, job))
    else:
        gc.ssh(job.name, remote.evaluate(job.env(), _ckpt_args(args, job)), worker="all")


def _export(args, gc: Gcloud, job: Job) -> None:
    output = args.output or f"{job.name}-{args.target}.tflite"
    extra = [f"--target={args.target}"]
    extra += ([f"--format={args.fmt}"] if args.fmt else []) + (
        [f"--outputs={args.outputs}"] if args.outputs else [])  # fmt: skip
    if args.local:
        _local(
            args, gc, "mobiledet_jax.export", [*_ckpt_args(args, job), *extra, f"--output={output}"]
        )
        return
    base = pathlib.Path(output).name
    if not re.fullmatch(r"[A-Za-z0-9._-]+", base):
        raise UsageError(f"--output file name {base!r}: letters, digits, '.', '_' and '-' only")
    gc.ssh(job.name, remote.export([*_ckpt_args(args, job), *extra], base), worker="0")
    gc.scp_from(job.name, remote.exported_path(base), output, worker="0")
    print(f"TFLite model: {output}")


def _ckpt_job(args, gc: Gcloud) -> Job:
    """Evaluation / export: the workdir, plus the slice (for the cache) unless ``--local``."""
    return _vm_job(
        args, gc, ("workdir",) if args.local else ("name", "zone", "accelerator", "workdir")
    )


def cmd_evaluate(args, gc: Gcloud) -> None:
    _evaluate(args, gc, _ckpt_job(args, gc))


def cmd_export(args, gc: Gcloud) -> None:
    if not args.target:
        raise UsageError("export needs --target (cpu, edgetpu, dsp or gpu)")
    _export(args, gc, _ckpt_job(args, gc))


def cmd_status(args, gc: Gcloud) -> None:
    job = _vm_job(args, gc)
    node = gc.tpu_describe(job.name)
    print(f"TPU {job.name}: {node.get('state') if node else 'not found (or dry run)'}")
    if gc.dry_run or (node and node.get("state") == "READY"):
        status, log = steps.training_status(gc, job, lines=args.lines)
        print(log)
        print(f"training: {status}")


def cmd_logs(args, gc: Gcloud) -> None:
    job = _vm_job(args, gc)
    _tail(args, gc, job, worker=args.worker, lines=args.lines, follow=not args.no_follow)


def cmd_stop(args, gc: Gcloud) -> None:
    gc.ssh(_vm_job(args, gc).name, remote.stop(), worker="all")


def cmd_delete(args, gc: Gcloud) -> None:
    steps.delete_vm(gc, _vm_job(args, gc))


COMMANDS = {
    "preflight": cmd_preflight, "up": cmd_up, "run": cmd_run, "resume": cmd_resume,
    "status": cmd_status, "logs": cmd_logs, "stop": cmd_stop, "evaluate": cmd_evaluate,
    "export": cmd_export, "delete": cmd_delete,
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse(sys.argv[1:] if argv is None else argv)
        gc = Gcloud(dry_run=args.dry_run, internal_ip=args.internal_ip)
        if args.dry_run:
            print("# dry run: gcloud commands are printed, not run")
        COMMANDS[args.command](args, gc)
    except launch_checks.PreflightError as e:
        print(
            f"preflight [FAILED] {e}\nerror: preflight failed, nothing was created", file=sys.stderr
        )
        return 1
    except (UsageError, StepError, GcloudError, source.SourceError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "\ninterrupted. Whatever was started keeps running (and billing): see `python -m "
            "launch.tpu status`, and `delete` the slice when done.",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
