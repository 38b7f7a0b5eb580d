"""Worker plugins that ship code and settings to workers, with dask.distributed's names and arguments.

Each is an ordinary ``WorkerPlugin`` (``plugins.py``): ``client.register_plugin(plugin)`` pickles it
once on the client, and ``setup(worker)`` runs on every worker, now and on every worker started later::

    UploadFile("mod.py")        read the file now ──► setup: write it in the worker's directory, import it
    UploadDirectory("pkg_dir")  zip the tree now  ──► setup: extract it there (update_path: importable)
    Environ({"A": "1"})         the variables      ──► setup: set them in the worker's environment
    PipInstall(["pkg"])         the requirements   ──► setup: ``python -m pip install`` (one at a time)

Bad input fails in the constructor, on the client, before anything is sent: a missing path, a file
that is not .py/.zip/.egg or does not compile, an unknown ``mode``. ``client.upload_file(path)`` and
``register_worker_callbacks(setup)`` are built on ``UploadFile`` and ``WorkerCallbacks``.

Thread workers share this process: there, setup changes this process (``sys.path``, ``os.environ``, the
installed packages), which is what registering the plugin asks for; ``Environ`` puts the previous values
back when it is unregistered. docs/moving.md lists where this differs from dask.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import zipfile
from typing import Callable, Iterable, Optional

from .plugins import WorkerPlugin, plugins_of

# thread workers set plugins up at once, in one process: CPython 3.11's invalidate_caches deletes from
# sys.path_importer_cache while iterating a copy, so two at once raise KeyError (upload_file, threads)
_INVALIDATING = threading.Lock()

SHIPPABLE_FILES = (".py", ".zip", ".egg")


def _invalidate_import_caches() -> None:
    import importlib  # here: not on the way to `import minidist`

    with _INVALIDATING:
        importlib.invalidate_caches()


class WorkerCallbacks(WorkerPlugin):
    """``register_worker_callbacks(setup)``: ``setup`` runs on every worker, now and later."""

    def __init__(self, setup):
        self.setup_function = setup

    def setup(self, worker) -> None:
        from .admin import call_with_worker

        call_with_worker(self.setup_function, (), {}, worker)


class UploadFile(WorkerPlugin):
    """Send a ``.py``, ``.zip`` or ``.egg`` file to every worker and make it importable there (imported
    at once with ``load``): ``client.register_plugin(UploadFile("mod.py"))``. A file of the same name
    uploaded again replaces it, and its module is reloaded."""

    def __init__(self, filepath, load: bool = True):
        filepath = os.fspath(filepath)
        with open(filepath, "rb") as f:
            data = f.read()
        self._take(os.path.basename(filepath), data, load)

    @classmethod
    def of_bytes(cls, filename: str, data: bytes, load: bool = True) -> UploadFile:
        """The plugin for ``data`` read already (``client.upload_file``)."""
        plugin = cls.__new__(cls)
        plugin._take(os.path.basename(filename), data, load)
        return plugin

    def _take(self, filename: str, data: bytes, load: bool) -> None:
        if not filename.endswith(SHIPPABLE_FILES):
            raise ValueError(f"UploadFile takes a .py, .zip or .egg file, not {filename!r}")
        check_compiles(filename, data)
        self.filename = filename
        self.data = data
        self.load = load
        # one registration per file name: uploading b.py does not replace a.py (dask names them all
        # "upload_file", so a second upload would tear the first one down)
        self.name = f"upload-file-{filename}"
        self._path_entry: Optional[str] = None

    def setup(self, worker) -> None:
        import importlib

        directory = plugins_of(worker).local_directory
        path = os.path.join(directory, self.filename)
        with open(path, "wb") as f:
            f.write(self.data)
        entry = directory if self.filename.endswith(".py") else path
        self._path_entry = _put_first_on_path(entry)
        _invalidate_import_caches()
        if self.load:
            for module in self._modules(path):
                if module in sys.modules:
                    importlib.reload(sys.modules[module])
                else:
                    importlib.import_module(module)

    def _modules(self, path: str) -> list:
        """Top-level modules the file provides: the .py's own name, or the archive's top entries."""
        if self.filename.endswith(".py"):
            return [self.filename[:-3]]
        names = set()
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                top = member.split("/", 1)[0]
                if member.endswith(".py") and "/" not in member:
                    names.add(top[:-3])
                elif "/" in member and member.split("/", 1)[1] == "__init__.py":
                    names.add(top)
        return sorted(n for n in names if n.isidentifier() and n != "EGG-INFO")

    def teardown(self, worker) -> None:
        _take_off_path(self._path_entry)


def _skip_compiled(filename: str) -> bool:
    return filename.endswith(".pyc")


class UploadDirectory(WorkerPlugin):
    """Send a directory tree to every worker: it is extracted into the worker's own directory as
    ``<that directory>/<its name>``, and with ``update_path`` that folder goes first on ``sys.path``
    (so a project's modules import). Paths containing one of ``skip_words`` as a part, and files a
    ``skip`` predicate accepts, are left out (dask's defaults: VCS, tests, docs, ``.pyc``).

    ``restart_workers=True`` replaces the workers after registering, so modules they had imported load
    afresh. Only ``mode="workers"`` is offered: minidist's scheduler runs in the client's process (or
    ``SubprocessCluster``'s, which imports no user code), so there is no scheduler copy to make.
    """

    def __init__(
        self,
        path,
        restart_workers: bool = False,
        update_path: bool = False,
        skip_words: Iterable[str] = (".git", ".github", ".pytest_cache", "tests", "docs"),
        skip: Iterable[Callable[[str], bool]] = (_skip_compiled,),
        mode: str = "workers",
    ):
        if mode != "workers":
            raise ValueError(
                f"UploadDirectory(mode={mode!r}): minidist offers mode='workers' only; its "
                "scheduler runs no user code, so the directory is never needed there"
            )
        root = os.path.abspath(os.path.expanduser(os.fspath(path)))
        if not os.path.isdir(root):
            raise ValueError(f"UploadDirectory needs a directory; {root!r} is not one")
        self.path = os.path.basename(root)
        self.restart_workers = restart_workers
        self.update_path = update_path
        self.mode = mode
        self.name = f"upload-directory-{self.path}"
        self.data = _zip_tree(root, tuple(skip_words), tuple(skip))
        self._path_entry: Optional[str] = None

    def setup(self, worker) -> None:
        directory = plugins_of(worker).local_directory
        with zipfile.ZipFile(io.BytesIO(self.data)) as archive:
            archive.extractall(directory)
        if self.update_path:
            self._path_entry = _put_first_on_path(os.path.join(directory, self.path))
        _invalidate_import_caches()

    def teardown(self, worker) -> None:
        _take_off_path(self._path_entry)


def _zip_tree(root: str, skip_words: tuple, skip: tuple) -> bytes:
    """The tree under ``root`` as zip bytes, each member named ``<root's name>/<relative path>``."""
    buffer = io.BytesIO()
    parent = os.path.dirname(root)
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for folder, _, files in os.walk(root):
            for file in sorted(files):
                filename = os.path.join(folder, file)
                relative = os.path.relpath(filename, parent)
                if any(word in relative.split(os.sep) for word in skip_words):
                    continue
                if any(predicate(filename) for predicate in skip):
                    continue
                archive.write(filename, relative)
    return buffer.getvalue()


class Environ(WorkerPlugin):
    """Set environment variables on every worker (values made strings): ``Environ({"OMP_NUM_THREADS":
    1})``. They are set before a new worker's first task. Unlike dask, thread workers get them too
    (they are this process's ``os.environ``: the tasks run here), and unregistering the plugin puts
    the previous values back."""

    def __init__(self, environ: Optional[dict] = None):
        self.environ = {str(k): str(v) for k, v in (environ or {}).items()}
        self._previous: dict = {}

    def setup(self, worker) -> None:
        self._previous = {k: os.environ.get(k) for k in self.environ}
        os.environ.update(self.environ)

    def teardown(self, worker) -> None:
        for key, value in self._previous.items():
            if os.environ.get(key) != self.environ[key]:
                continue  # changed since by someone else: theirs now
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class PipInstall(WorkerPlugin):
    """Install packages with pip where the workers run: ``PipInstall(["pkg==1.0"], pip_options=[...])``.

    Every worker of a local cluster shares this machine's environment, so pip runs once per process
    that needs it, one at a time (a lock file), and later runs find the packages installed. A failed
    install fails ``register_plugin`` with pip's own message. ``restart_workers=True`` replaces the
    workers afterwards, so modules they had imported load afresh.
    """

    def __init__(self, packages: list, pip_options: Optional[list] = None, restart_workers=False):
        if isinstance(packages, str):
            raise TypeError(f"PipInstall takes a list of requirements, not the string {packages!r}")
        self.packages = [str(p) for p in packages]
        self.pip_options = [str(o) for o in (pip_options or [])]
        self.restart_workers = restart_workers

    def setup(self, worker) -> None:
        import fcntl
        import tempfile

        command = [sys.executable, "-m", "pip", "install", *self.pip_options, *self.packages]
        lock_path = os.path.join(tempfile.gettempdir(), f"minidist-pip-{os.getuid()}.lock")
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent pips in one environment break it
            try:
                done = subprocess.run(command, capture_output=True, text=True)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise RuntimeError(
                f"pip install {' '.join(self.packages)} failed (exit {done.returncode}): "
                + " / ".join(said)
            )


# ------------------------------------------------------------------------------------------ helpers


def _put_first_on_path(entry: str) -> Optional[str]:
    """Put ``entry`` first on ``sys.path``; the entry if this call added it (teardown removes it)."""
    if entry in sys.path:
        return None
    sys.path.insert(0, entry)
    return entry


def _take_off_path(entry: Optional[str]) -> None:
    if entry is not None and entry in sys.path:
        sys.path.remove(entry)


def check_compiles(filename: str, data: bytes) -> None:
    """SyntaxError naming the file (and member) before anything is sent."""
    if filename.endswith(".py"):
        _compile(data, filename)
        return
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise ValueError(f"upload_file: {filename!r} is not a zip archive") from None
    with archive:
        for member in archive.namelist():
            if member.endswith(".py"):
                _compile(archive.read(member), f"{filename}/{member}")


def _compile(source: bytes, where: str) -> None:
    try:
        compile(source, where, "exec")
    except SyntaxError as exc:
        raise SyntaxError(
            f"upload_file: {where} does not compile (line {exc.lineno}: {exc.msg}); nothing was sent",
            (where, exc.lineno, exc.offset, exc.text),
        ) from None
