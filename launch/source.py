"""The code shipped to the workers: one git revision, archived to a tarball with its checksum.

Every worker gets the same ``git archive`` of the same commit (never the working tree), verifies its
sha256, and records the commit in a ``REVISION`` file; the launcher then asks every worker for it.
"""

import dataclasses
import hashlib
import pathlib
import subprocess
import tarfile


class SourceError(RuntimeError):
    pass


def _git(repo: pathlib.Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SourceError(f"git {' '.join(args)} failed in {repo}: {proc.stderr.strip()}")
    return proc.stdout


def repo_root(path: pathlib.Path) -> pathlib.Path:
    return pathlib.Path(_git(path, "rev-parse", "--show-toplevel").strip())


def resolve(repo: pathlib.Path, revision: str) -> str:
    """The full commit hash of ``revision`` (a hash, tag, branch or HEAD)."""
    try:
        return _git(repo, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}").strip()
    except SourceError:
        raise SourceError(
            f"revision {revision!r} is not a commit in {repo} (git fetch it first?)"
        ) from None


def uncommitted_changes(repo: pathlib.Path) -> list[str]:
    """Tracked files with uncommitted changes (untracked files are never shipped, so ignored)."""
    out = _git(repo, "status", "--porcelain", "--untracked-files=no")
    return [line[3:] for line in out.splitlines() if line.strip()]


@dataclasses.dataclass(frozen=True)
class Archive:
    revision: str  # full commit hash
    path: pathlib.Path  # the .tar.gz on this machine
    sha256: str
    tree: pathlib.Path  # the archive unpacked here, for the preflight (config, AOT compile)

    @property
    def short(self) -> str:
        return self.revision[:12]

    @property
    def remote_name(self) -> str:
        return f"mobiledet_jax-{self.short}.tar.gz"


def archive(repo: pathlib.Path, revision: str, scratch: pathlib.Path) -> Archive:
    """``git archive`` of ``revision`` into ``scratch``, unpacked beside it."""
    commit = resolve(repo, revision)
    path = scratch / f"mobiledet_jax-{commit[:12]}.tar.gz"
    _git(repo, "archive", "--format=tar.gz", f"--output={path}", commit)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    tree = scratch / f"tree-{commit[:12]}"
    tree.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path) as tar:
        tar.extractall(tree, filter="data")
    return Archive(commit, path, digest, tree)
