"""The one place that runs ``gcloud``: command builders for TPU VMs, queued resources and storage.

Every command is printed (``$ gcloud ...``, shell-quoted so it can be pasted) before it runs. With
``dry_run`` nothing runs: actions are only printed, and queries (describe, auth list, storage cat) are
printed as ``# would query: ...`` and answered with ``None``; the caller decides what a dry run assumes.
"""

import dataclasses
import json
import shlex
import shutil
import subprocess
import sys


class GcloudError(RuntimeError):
    """A gcloud command failed (the message carries the command and its stderr)."""


@dataclasses.dataclass
class Gcloud:
    zone: str | None = None
    project: str | None = None
    dry_run: bool = False
    internal_ip: bool = False  # ssh/scp over the workers' internal IPs (from a VM in the VPC)

    # -- running ----------------------------------------------------------------------------------

    @staticmethod
    def _echo(argv: list[str], prefix: str = "$ ") -> None:
        print(prefix + shlex.join(argv), file=sys.stdout, flush=True)

    def run(self, args: list[str]) -> None:
        """An action (create, ssh, scp, delete ...): output streams to the terminal."""
        argv = ["gcloud", *args]
        self._echo(argv)
        if self.dry_run:
            return
        rc = subprocess.call(argv)
        if rc != 0:
            raise GcloudError(f"command failed with exit status {rc}: {shlex.join(argv)}")

    def capture(self, args: list[str], *, echo: bool = True) -> tuple[int, str, str] | None:
        """Run a read-only command; ``(exit status, stdout, stderr)``, or ``None`` in a dry run."""
        argv = ["gcloud", *args]
        if self.dry_run:
            self._echo(argv, prefix="# would query: ")
            return None
        if echo:
            self._echo(argv)
        proc = subprocess.run(argv, capture_output=True, text=True)
        return proc.returncode, proc.stdout, proc.stderr

    def query(self, args: list[str], *, check: bool = True, echo: bool = True) -> str | None:
        """A read-only command whose stdout is returned (``None`` in a dry run, or on failure
        when ``check`` is False)."""
        result = self.capture(args, echo=echo)
        if result is None:
            return None
        rc, stdout, stderr = result
        if rc != 0:
            if not check:
                return None
            raise GcloudError(
                f"command failed with exit status {rc}: {shlex.join(['gcloud', *args])}\n"
                f"{stderr.strip()}"
            )
        return stdout

    @staticmethod
    def which() -> str | None:
        return shutil.which("gcloud")

    # -- common flags -----------------------------------------------------------------------------

    def _where(self) -> list[str]:
        flags = [f"--zone={self.zone}"] if self.zone else []
        return flags + ([f"--project={self.project}"] if self.project else [])

    def _ssh_flags(self) -> list[str]:
        return ["--internal-ip"] if self.internal_ip else []

    # -- account ----------------------------------------------------------------------------------

    def active_account(self) -> str | None:
        out = self.query(["auth", "list", "--filter=status:ACTIVE", "--format=value(account)"])
        return None if out is None else out.strip()

    def default_project(self) -> str | None:
        out = self.query(["config", "get-value", "project"], check=False)
        return None if out is None else (out.strip() or None)

    # -- TPU VMs ----------------------------------------------------------------------------------

    def tpu_create(self, name: str, accelerator: str, version: str, capacity: str) -> None:
        flags = {"spot": ["--spot"], "preemptible": ["--preemptible"], "reserved": ["--reserved"]}
        self.run(
            ["compute", "tpus", "tpu-vm", "create", name, *self._where()]
            + [f"--accelerator-type={accelerator}", f"--version={version}"]
            + flags.get(capacity, [])
        )

    def _describe(self, args: list[str], echo: bool) -> dict | None:
        """JSON of a describe; ``None`` when the resource does not exist (or in a dry run); any
        other failure (network, permissions) raises, so that it is never taken for "gone"."""
        result = self.capture([*args, *self._where(), "--format=json"], echo=echo)
        if result is None:
            return None
        rc, stdout, stderr = result
        if rc == 0:
            return json.loads(stdout)
        if "NOT_FOUND" in stderr or "not found" in stderr.lower():
            return None
        raise GcloudError(f"{shlex.join(['gcloud', *args])} failed: {stderr.strip()}")

    def tpu_describe(self, name: str, echo: bool = True) -> dict | None:
        """The node (``state``, ``acceleratorType``, ``networkEndpoints`` ...), or ``None``."""
        return self._describe(["compute", "tpus", "tpu-vm", "describe", name], echo)

    def tpu_delete(self, name: str) -> None:
        self.run(["compute", "tpus", "tpu-vm", "delete", name, *self._where(), "--quiet"])

    def ssh(self, name: str, command: str, worker: str = "all") -> None:
        self.run(
            ["compute", "tpus", "tpu-vm", "ssh", name, *self._where(), *self._ssh_flags()]
            + [f"--worker={worker}", f"--command={command}"]
        )

    def ssh_capture(
        self, name: str, command: str, worker: str = "all", echo: bool = True
    ) -> tuple[int, str, str] | None:
        """Run ``command`` on the workers and capture its output (``None`` in a dry run)."""
        return self.capture(
            ["compute", "tpus", "tpu-vm", "ssh", name, *self._where(), *self._ssh_flags()]
            + [f"--worker={worker}", f"--command={command}"],
            echo=echo,
        )

    def scp_to(self, name: str, local: str, remote: str, worker: str = "all") -> None:
        self.run(
            ["compute", "tpus", "tpu-vm", "scp", local, f"{name}:{remote}", *self._where()]
            + self._ssh_flags()
            + [f"--worker={worker}"]
        )

    def scp_from(self, name: str, remote: str, local: str, worker: str = "0") -> None:
        self.run(
            ["compute", "tpus", "tpu-vm", "scp", f"{name}:{remote}", local, *self._where()]
            + self._ssh_flags()
            + [f"--worker={worker}"]
        )

    # -- queued resources -------------------------------------------------------------------------

    def queued_create(self, name: str, accelerator: str, version: str, capacity: str) -> None:
        flags = {"spot": ["--spot"], "reserved": ["--reserved"]}
        self.run(
            ["compute", "tpus", "queued-resources", "create", name, f"--node-id={name}"]
            + self._where()
            + [f"--accelerator-type={accelerator}", f"--runtime-version={version}"]
            + flags.get(capacity, [])
        )

    def queued_state(self, name: str, echo: bool = True) -> str | None:
        """``WAITING_FOR_RESOURCES``, ``PROVISIONING``, ``ACTIVE``, ``FAILED``, ``SUSPENDED`` ...;
        ``None`` when there is no such request (or in a dry run)."""
        qr = self._describe(["compute", "tpus", "queued-resources", "describe", name], echo)
        return qr.get("state", {}).get("state") if qr else None

    def queued_delete(self, name: str) -> None:
        self.run(
            ["compute", "tpus", "queued-resources", "delete", name, *self._where()]
            + ["--force", "--quiet"]
        )

    # -- Cloud Storage ----------------------------------------------------------------------------

    def bucket(self, url: str) -> dict | None:
        bucket = "gs://" + url.removeprefix("gs://").split("/", 1)[0]
        out = self.query(["storage", "buckets", "describe", bucket, "--format=json"], check=False)
        return json.loads(out) if out else None

    def storage_cat(self, url: str) -> str | None:
        return self.query(["storage", "cat", url], check=False)

    def storage_cp(self, src: str, dst: str) -> None:
        self.run(["storage", "cp", src, dst])
