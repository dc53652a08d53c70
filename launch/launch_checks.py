"""Checks run before anything is created: gcloud, account, code revision, config, batch, workdir, AOT.

The config is loaded, and the AOT compile run, from the *archived revision* (the exact files the
workers will get), with this machine's Python: a config field that exists only in an uncommitted
working tree fails here, not on the pod.
"""

import dataclasses
import json
import pathlib
import subprocess

from launch import source
from launch.gcloud import Gcloud
from launch.slices import TpuSlice


class PreflightError(RuntimeError):
    pass


# Loads a config file the way the training command line does (ml_collections config_flags:
# ``--config=file.py[:arg]`` then ``--config.<field>=<value>`` overrides, unknown keys an error),
# and prints the fields the launcher checks as JSON. Run in the unpacked archive.
_PROBE = r"""
import json, sys
from absl import flags
from ml_collections import config_flags
argv = ["probe", *sys.argv[1:]]
fv = flags.FlagValues()
config_flags.DEFINE_config_file("config", flag_values=fv, sys_argv=argv)
try:
    fv(argv)
    config = fv.config
    config.keys()  # a config file that failed to load raises its error here
except BaseException as e:
    print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
    raise SystemExit(0)
def get(path):
    node = config
    for key in path.split("."):
        if not hasattr(node, "keys") or key not in node.keys():
            return None
        node = node[key]
    return node
print(json.dumps({k: get(k) for k in ("train.batch_size", "eval.batch_size", "mesh.data")}))
"""


@dataclasses.dataclass
class Report:
    lines: list[str] = dataclasses.field(default_factory=list)

    def ok(self, msg: str) -> None:
        self._say("ok", msg)

    def warn(self, msg: str) -> None:
        self._say("warning", msg)

    def skip(self, msg: str) -> None:
        self._say("skipped", msg)

    def fail(self, msg: str) -> None:
        self.lines.append(f"preflight [FAILED] {msg}")
        raise PreflightError(msg)  # printed once, by the command line

    def _say(self, tag: str, msg: str) -> None:
        line = f"preflight [{tag}] {msg}"
        self.lines.append(line)
        print(line, flush=True)


def config_file(spec: str) -> str:
    """``configs/x.py:arg`` -> ``configs/x.py``."""
    return spec.split(":", 1)[0]


def load_config(python: str, tree: pathlib.Path, spec: str, overrides: list[str]) -> dict:
    proc = subprocess.run(
        [python, "-c", _PROBE, f"--config={spec}", *overrides],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=300,
    )
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": f"config probe crashed: {proc.stderr.strip()[-2000:]}"}


def check_batch(report: Report, fields: dict, tpu: TpuSlice) -> None:
    batch = fields.get("train.batch_size")
    if not isinstance(batch, int) or isinstance(batch, bool):
        report.fail(
            "the config has no integer train.batch_size (the global batch the training command "
            "reads); is the training config committed at this revision?"
        )
    if batch % tpu.devices:
        lo = batch - batch % tpu.devices
        near = " or ".join(str(b) for b in (lo, lo + tpu.devices) if b > 0)
        report.fail(
            f"global batch {batch} does not divide by the {tpu.devices} devices of "
            f"{tpu.gcloud_type}; use e.g. --config.train.batch_size={near}"
        )
    report.ok(
        f"global batch {batch} = {batch // tpu.devices} per device x {tpu.devices} devices "
        f"({batch // tpu.hosts} per host)"
    )
    mesh = fields.get("mesh.data")
    if isinstance(mesh, int) and mesh > 0 and mesh != tpu.devices:
        report.warn(f"config.mesh.data={mesh} but the slice has {tpu.devices} devices")
    eval_batch = fields.get("eval.batch_size")
    if isinstance(eval_batch, int) and eval_batch % tpu.devices:
        report.warn(
            f"eval.batch_size {eval_batch} does not divide by {tpu.devices} devices "
            f"(evaluating on this slice may need --config.eval.batch_size)"
        )


def check_workdir(report: Report, gc: Gcloud, workdir: str, tpu: TpuSlice, zone: str) -> None:
    if not workdir.startswith("gs://"):
        if tpu.hosts > 1:
            report.fail(
                f"workdir {workdir!r} is not on GCS: the {tpu.hosts} hosts of {tpu.gcloud_type} "
                "must share it (checkpoints, XLA cache); use gs://<bucket>/<path>"
            )
        report.warn(
            f"workdir {workdir!r} is a path on the TPU VM: it is lost with the VM (no resume "
            "after preemption); gs:// is recommended"
        )
        return
    bucket = gc.bucket(workdir)
    if gc.dry_run:
        report.skip(f"bucket of {workdir} (dry run)")
        return
    if bucket is None:
        report.fail(
            f"the bucket of {workdir} does not exist, or this account cannot read its metadata "
            "(storage.buckets.get); create it in the TPU's region: gcloud storage buckets create "
            f"gs://<bucket> --location={zone.rsplit('-', 1)[0]}"
        )
    location = str(bucket.get("location", "")).lower()
    region = zone.rsplit("-", 1)[0]
    if location and location != region:
        report.warn(
            f"bucket location {location} is not the TPU's region {region}: slower input and "
            "checkpoints, and egress charges"
        )
    report.ok(f"workdir {workdir} (bucket location {location or 'unknown'})")


def check_ssh_agent(report: Report, tpu: TpuSlice) -> None:
    if tpu.hosts == 1:
        return
    try:
        rc = subprocess.run(["ssh-add", "-l"], capture_output=True, timeout=10).returncode
    except (OSError, subprocess.TimeoutExpired):
        rc = 2
    if rc != 0:
        report.warn(
            "no key in ssh-agent: gcloud needs one to reach all workers at once; run "
            "`eval $(ssh-agent) && ssh-add ~/.ssh/google_compute_engine` (after a first gcloud ssh)"
        )


def run_aot(report: Report, python: str, tree: pathlib.Path, spec: str, tpu: TpuSlice,
            overrides: list[str]) -> None:  # fmt: skip
    if not (tree / "mobiledet_jax" / "aot_compile.py").exists():
        report.fail(
            "this revision has no mobiledet_jax/aot_compile.py, so the memory fit cannot be "
            "checked; pass --skip_aot to go on without it"
        )
    cmd = [python, "-m", "mobiledet_jax.aot_compile", f"--config={spec}"]
    cmd += [f"--topology={tpu.topology}", *overrides]
    print(f"preflight: AOT compile for {tpu.topology} (can take minutes) ...", flush=True)
    proc = subprocess.run(cmd, cwd=tree, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        report.fail(
            f"AOT compile for {tpu.topology} failed (exit {proc.returncode}): the train step does "
            f"not fit or does not compile. Last output:\n{tail}\n(without libtpu installed here, "
            "pass --skip_aot)"
        )
    report.ok(f"AOT compile for {tpu.topology} fits per-chip HBM")


def run(
    *,
    gc: Gcloud,
    tpu: TpuSlice,
    repo: pathlib.Path,
    revision_arg: str,
    archive: source.Archive,
    config: str,
    overrides: list[str],
    workdir: str,
    zone: str,
    python: str,
    allow_dirty: bool,
    skip_aot: bool,
) -> Report:
    """All checks, in order; raises ``PreflightError`` at the first failure. Returns the report
    (with ``project`` resolved into ``gc.project`` when it was not given)."""
    report = Report()
    report.ok(f"slice {tpu.describe()}")
    where = Gcloud.which()
    if where:
        report.ok(f"gcloud at {where}")
    elif gc.dry_run:
        report.warn("gcloud is not on PATH (dry run goes on)")
    else:
        report.fail("gcloud is not on PATH: install the Google Cloud CLI")
    if gc.dry_run:
        gc.active_account()
        report.skip("authentication (dry run)")
    else:
        account = gc.active_account()
        if not account:
            report.fail("no active gcloud account: run `gcloud auth login`")
        report.ok(f"authenticated as {account.splitlines()[0]}")
        if not gc.project:
            gc.project = gc.default_project()
            if not gc.project:
                report.fail("no project: pass --project or `gcloud config set project <id>`")
        report.ok(f"project {gc.project}")

    dirty = source.uncommitted_changes(repo) if revision_arg == "HEAD" else []
    if dirty and not allow_dirty:
        report.fail(
            f"uncommitted changes ({', '.join(dirty[:5])}{' ...' if len(dirty) > 5 else ''}) "
            "would not reach the workers, which get the committed revision only; commit them, "
            "or pass --allow_dirty to ship HEAD as it is"
        )
    report.ok(
        f"code revision {archive.short} ({revision_arg}"
        f"{', uncommitted changes NOT shipped' if dirty else ''}), sha256 {archive.sha256[:12]}"
    )

    if not (archive.tree / config_file(config)).is_file():
        report.fail(f"{config_file(config)} is not in revision {archive.short} (committed?)")
    fields = load_config(python, archive.tree, config, overrides)
    if "error" in fields:
        report.fail(f"config {config} {' '.join(overrides)} does not load: {fields['error']}")
    report.ok(f"config {config} loads with {len(overrides)} override(s)")
    check_batch(report, fields, tpu)
    check_workdir(report, gc, workdir, tpu, zone)
    check_ssh_agent(report, tpu)
    if skip_aot:
        report.skip("AOT compile (--skip_aot)")
    else:
        run_aot(report, python, archive.tree, config, tpu, overrides)
    return report
