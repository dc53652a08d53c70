"""The steps of a run on a TPU slice: VM lifecycle, install, start, wait, evaluate, export, record.

A ``Job`` is everything needed to (re)start a run; it is saved as ``<workdir>/launch/run.json`` so
that ``resume`` needs nothing but the workdir after a preemption.
"""

import dataclasses
import json
import pathlib
import re
import tempfile
import time

from launch import remote
from launch.gcloud import Gcloud, GcloudError
from launch.slices import TpuSlice
from launch.source import Archive

_WAIT_STATES = ("CREATING", "STARTING", "RESTARTING", "REPAIRING")
_QUEUE_WAIT = ("ACCEPTED", "WAITING_FOR_RESOURCES", "PROVISIONING", "CREATING")
_QUEUE_DEAD = ("FAILED", "SUSPENDING", "SUSPENDED")


class StepError(RuntimeError):
    pass


@dataclasses.dataclass
class Job:
    name: str
    zone: str
    accelerator: str
    config: str
    workdir: str
    overrides: list[str] = dataclasses.field(default_factory=list)
    project: str | None = None
    capacity: str = "on-demand"  # on-demand | spot | preemptible | reserved
    queued: bool = False
    runtime_version: str | None = None  # None: the family's default image
    python: str = "python3.11"  # interpreter for the workers' venv
    revision: str = "HEAD"  # the full commit once archived

    @property
    def tpu(self) -> TpuSlice:
        return TpuSlice.parse(self.accelerator)

    @property
    def record_url(self) -> str | None:
        return f"{self.workdir.rstrip('/')}/launch/run.json" if self.is_gcs else None

    @property
    def is_gcs(self) -> bool:
        return self.workdir.startswith("gs://")

    def env(self) -> dict[str, str]:
        """Environment of every training / evaluation process. ``jax.distributed.initialize()``
        needs nothing here: on TPU VMs it discovers the coordinator and the process index itself."""
        return {
            # Persistent XLA compilation cache in the workdir, one folder per slice topology.
            "JAX_COMPILATION_CACHE_DIR": f"{self.workdir.rstrip('/')}/xla_cache/{self.tpu.topology}",
            "MOBILEDET_JAX_REVISION": self.revision,
        }

    def train_args(self) -> list[str]:
        return [f"--config={self.config}", *self.overrides, f"--workdir={self.workdir}"]

    @classmethod
    def from_record(cls, record: dict) -> "Job":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in names})


# -- the run record ---------------------------------------------------------------------------------


def read_record(gc: Gcloud, workdir: str) -> dict | None:
    if not workdir.startswith("gs://"):
        return None
    text = gc.storage_cat(f"{workdir.rstrip('/')}/launch/run.json")
    return json.loads(text) if text else None


def write_record(gc: Gcloud, job: Job, event: str, previous: dict | None) -> None:
    if not job.is_gcs:
        print(f"note: no run record for a workdir on the VM ({job.workdir}); resume needs gs://")
        return
    record = dataclasses.asdict(job)
    history = list((previous or {}).get("history", []))
    history.append(
        {"event": event, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
         "revision": job.revision, "accelerator": job.accelerator}
    )  # fmt: skip
    record["history"] = history
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "run.json"
        path.write_text(json.dumps(record, indent=2) + "\n")
        gc.storage_cp(str(path), job.record_url)


# -- the VM -----------------------------------------------------------------------------------------


def _poll(what: str, probe, done, poll_s: float, timeout_s: float):
    """Call ``probe()`` every ``poll_s`` until ``done(value)``; returns the last value."""
    start = time.monotonic()
    while True:
        value = probe()
        if done(value):
            return value
        if time.monotonic() - start > timeout_s:
            raise StepError(f"timed out after {timeout_s:.0f}s waiting for {what} (last: {value})")
        print(f"waiting for {what}: {value}", flush=True)
        time.sleep(poll_s)


def delete_vm(gc: Gcloud, job: Job) -> None:
    if job.queued:
        gc.queued_delete(job.name)
    else:
        gc.tpu_delete(job.name)


def ensure_vm(gc: Gcloud, job: Job, *, recreate: bool, poll_s: float, timeout_s: float) -> int:
    """Make ``job.name`` a READY slice of ``job.accelerator``: reuse a READY one, wait for one being
    created, and replace a preempted / failed one when ``recreate`` (else refuse). Returns the
    number of workers the slice reports (the expected number in a dry run)."""
    tpu = job.tpu
    version = job.runtime_version or tpu.runtime_version
    if job.queued:
        state = gc.queued_state(job.name)
        if state in _QUEUE_WAIT:
            state = _poll(
                f"queued resource {job.name}", lambda: gc.queued_state(job.name, echo=False),
                lambda s: s not in _QUEUE_WAIT, poll_s, timeout_s,
            )  # fmt: skip
        if state in _QUEUE_DEAD:
            if not recreate:
                raise StepError(f"queued resource {job.name} is {state}; `resume` replaces it")
            gc.queued_delete(job.name)
            state = None
    node = gc.tpu_describe(job.name)
    if node is not None:
        state = node.get("state")
        kind = str(node.get("acceleratorType", "")).rsplit("/", 1)[-1]
        if kind and kind != tpu.gcloud_type:
            if not recreate:
                raise StepError(f"TPU {job.name} exists as {kind}, not {tpu.gcloud_type}")
            state = f"a {kind}"  # resuming on another slice size: replace it
        elif state in _WAIT_STATES:
            node = _poll(
                f"TPU {job.name}", lambda: gc.tpu_describe(job.name, echo=False),
                lambda n: n is None or n.get("state") not in _WAIT_STATES, poll_s, timeout_s,
            )  # fmt: skip
            state = node.get("state") if node else None
        if state == "READY":
            print(f"TPU {job.name} exists and is READY: reusing it", flush=True)
            return _workers(node, tpu)
        if node is not None:
            if not recreate:
                raise StepError(
                    f"TPU {job.name} is {state}; `python -m launch.tpu resume "
                    f"--workdir={job.workdir}` replaces it and resumes training"
                )
            print(f"TPU {job.name} is {state}: deleting it to create it again", flush=True)
            delete_vm(gc, job)
    if job.queued:
        gc.queued_create(job.name, tpu.gcloud_type, version, job.capacity)
        if not gc.dry_run:
            state = _poll(
                f"queued resource {job.name}", lambda: gc.queued_state(job.name, echo=False),
                lambda s: s not in _QUEUE_WAIT, poll_s, timeout_s,
            )  # fmt: skip
            if state != "ACTIVE":
                raise StepError(f"queued resource {job.name} ended {state}, not ACTIVE")
    else:
        gc.tpu_create(job.name, tpu.gcloud_type, version, job.capacity)
    return _workers(gc.tpu_describe(job.name), tpu)


def _workers(node: dict | None, tpu: TpuSlice) -> int:
    """Workers of the node as the TPU API reports them (``networkEndpoints``): the count every
    worker-wide check expects. Our table (``TpuSlice.hosts``) is only the fallback."""
    workers = len(node.get("networkEndpoints", [])) if node else 0
    if not workers:
        return tpu.hosts
    if workers != tpu.hosts:
        print(
            f"warning: the slice reports {workers} workers; {tpu.gcloud_type} should have {tpu.hosts}"
        )
    return workers


# -- code and training ------------------------------------------------------------------------------


def jax_tpu_requirement(archive: Archive) -> str:
    """``jax[tpu]==<the jax pin of requirements.txt>`` at the shipped revision."""
    text = (archive.tree / "requirements.txt").read_text()
    m = re.search(r"^jax==([^\s#]+)", text, flags=re.M)
    return f"jax[tpu]=={m.group(1)}" if m else "jax[tpu]"


def install(gc: Gcloud, job: Job, archive: Archive, workers: int) -> None:
    """The same tarball to every worker, unpacked and installed, then every worker's revision
    compared with ``archive.revision`` (all ``workers`` must answer)."""
    gc.scp_to(job.name, str(archive.path), archive.remote_name, worker="all")
    script = remote.setup(
        archive.revision, archive.remote_name, archive.sha256, jax_tpu_requirement(archive),
        job.python,
    )  # fmt: skip
    gc.ssh(job.name, script, worker="all")
    verify_revision(gc, job, archive.revision, workers)


def verify_revision(gc: Gcloud, job: Job, revision: str, workers: int) -> None:
    result = gc.ssh_capture(job.name, remote.check_revision(revision), worker="all")
    if result is None:
        return
    _, stdout, stderr = result
    seen = dict(re.findall(r"^@@revision (\S+) (\S+)$", stdout, flags=re.M))
    wrong = {host: rev for host, rev in seen.items() if rev != revision}
    if wrong or len(seen) != workers:
        raise StepError(
            f"workers do not all run revision {revision[:12]}: {len(seen)} of {workers} "
            f"answered, differing: {wrong or 'none'}\n{stderr.strip()}"
        )
    print(f"all {len(seen)} workers run revision {revision[:12]}", flush=True)


def start_training(gc: Gcloud, job: Job) -> None:
    """One ``ssh --worker=all``: every host starts the same command at once, as
    ``jax.distributed.initialize()`` expects."""
    gc.ssh(job.name, remote.start_training(job.revision, job.env(), job.train_args()), worker="all")


def training_status(gc: Gcloud, job: Job, lines: int = 20, echo: bool = True) -> tuple[str, str]:
    """(``RUNNING`` / ``EXITED <code>`` / ``NOT_STARTED`` / ``UNREACHABLE``, log tail) of worker 0."""
    result = gc.ssh_capture(job.name, remote.status(lines), worker="0", echo=echo)
    if result is None:
        return "UNKNOWN (dry run)", ""
    rc, stdout, _ = result
    m = re.search(r"^@@status (.+)$", stdout, flags=re.M)
    if rc != 0 or not m:
        return "UNREACHABLE", stdout
    log = "\n".join(line for line in stdout.splitlines() if not line.startswith("@@"))
    return m.group(1).strip(), log


def wait_for_training(gc: Gcloud, job: Job, *, poll_s: float, on_preempted) -> None:
    """Poll until training on worker 0 exits; ``on_preempted()`` is called when the VM is lost
    (it recreates the VM and restarts training)."""
    if gc.dry_run:
        print(f"# dry run: would poll the VM state and worker 0's status every {poll_s:.0f}s")
        training_status(gc, job)
        return
    last_log, unreachable = "", 0
    while True:
        try:
            node = gc.tpu_describe(job.name, echo=False)
        except GcloudError as e:  # the API did not answer: not a reason to recreate anything
            node, state = None, f"UNKNOWN ({e})"
        else:
            state = node.get("state") if node else "GONE"
            if state != "READY":
                print(f"TPU {job.name} is {state}", flush=True)
                on_preempted()
                continue
        status, log = training_status(gc, job, echo=False) if node else ("UNREACHABLE", "")
        if log and log != last_log:
            print(log, flush=True)
            last_log = log
        if status == "NOT_STARTED":
            raise StepError("training is not running on worker 0 (was it started?)")
        unreachable = unreachable + 1 if status == "UNREACHABLE" else 0
        if unreachable > 10:
            raise StepError(f"{job.name} has not answered 10 times in a row (last: {state})")
        if status.startswith("EXITED"):
            code = status.split()[-1]
            if code != "0":
                raise StepError(f"training exited with status {code}; see `launch.tpu logs`")
            print("training finished", flush=True)
            return
        print(f"[{time.strftime('%H:%M:%S')}] training {status}", flush=True)
        time.sleep(poll_s)
