"""``minidist serve``: a cluster in a process of its own that other processes share, and its bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig

import psutil
import pytest

from conftest import process_gone, wait_until
from minidist import Client, LocalCluster
from minidist.comm.addressing import parse_address
from minidist.comm.tcp import secret_path

pytestmark = pytest.mark.timeout(90)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def env() -> dict:
    """This test's environment (its private XDG_RUNTIME_DIR included) for the processes it starts."""
    return {**os.environ, "PYTHONPATH": ROOT}


def serve(*flags: str, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "minidist", "serve", *flags],
        cwd=ROOT,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def run_python(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *arguments],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def serve_and_fail(*flags: str) -> subprocess.CompletedProcess:
    return run_python("-m", "minidist", "serve", *flags)


def sum_of_abs_in_another_process(connect: str) -> subprocess.CompletedProcess:
    """Another process connects with ``Client(<connect>)`` and prints a small map's sum (55)."""
    return run_python(
        "-c",
        "from minidist import Client\n"
        f"with Client({connect}) as c:\n"
        "    print(sum(c.gather(c.map(abs, range(-10, 0)))))\n",
    )


def port_open(address: str) -> bool:
    _, host, port = parse_address(address)
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def test_serve_is_shared_by_two_clients_and_leaves_nothing_on_sigterm(tmp_path):
    scheduler_file = str(tmp_path / "scheduler.json")
    server = serve(
        "--n-workers",
        "2",
        "--threads-per-worker",
        "1",
        "--scheduler-port",
        "0",
        "--dashboard-address",
        ":0",
        "--memory-limit",
        "1GiB",
        "--scheduler-file",
        scheduler_file,
    )
    try:
        assert wait_until(lambda: os.path.exists(scheduler_file), timeout=30), server.stderr
        with open(scheduler_file) as f:
            identity = json.load(f)
        address = identity["address"]
        assert address.startswith("tcp://127.0.0.1:") and identity["pid"] == server.pid
        banner = [server.stdout.readline() for _ in range(6)]
        assert any(address in line for line in banner), banner
        assert any(identity["dashboard_link"] in line for line in banner), banner

        # first client: this process, through the scheduler file
        with Client(scheduler_file=scheduler_file) as client:
            # (the workers are the server's: functions must be importable there, as with dask)
            assert client.submit(pow, 2, 10).result() == 1024
            workers = client.scheduler_info()["workers"]
            assert len(workers) == 2
            assert {w["memory_limit"] for w in workers.values()} == {2**30}
            # second client: another process, by address, at the same time
            other = sum_of_abs_in_another_process(repr(address))
            assert other.returncode == 0, other.stderr
            assert other.stdout.strip() == "55"

        # a second serve on the same live scheduler file refuses and leaves the file alone
        second = serve_and_fail("--scheduler-port", "0", "--scheduler-file", scheduler_file)
        assert second.returncode == 1
        assert "already running" in second.stderr and address in second.stderr
        with open(scheduler_file) as f:
            assert json.load(f) == identity

        descendants = psutil.Process(server.pid).children(recursive=True)
        assert len(descendants) >= 2
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0, server.stderr.read()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    # nothing left: processes, port, scheduler file, secret file, shared-memory segments
    assert wait_until(lambda: all(process_gone(p) for p in descendants))
    assert not port_open(address)
    assert not os.path.exists(scheduler_file)
    assert not os.path.exists(secret_path(address))
    prefix = f"minidist_{server.pid}-"
    assert not [name for name in os.listdir("/dev/shm") if name.startswith(prefix)]
    assert "SIGTERM" in server.stdout.read()


@pytest.mark.parametrize("stop", ["ctrl-c", "client shutdown"])
def test_ctrl_c_or_a_clients_shutdown_stops_serve_and_removes_the_scheduler_file(tmp_path, stop):
    scheduler_file = str(tmp_path / "scheduler.json")
    server = serve(
        "--n-workers",
        "1",
        "--scheduler-port",
        "0",
        "--dashboard-address",
        "none",
        "--scheduler-file",
        scheduler_file,
    )
    try:
        assert wait_until(lambda: os.path.exists(scheduler_file), timeout=30)
        with open(scheduler_file) as f:
            address = json.load(f)["address"]
        descendants = psutil.Process(server.pid).children(recursive=True)
        if stop == "ctrl-c":
            server.send_signal(signal.SIGINT)  # what Ctrl-C in its terminal sends
        else:
            client = Client(scheduler_file=scheduler_file)
            assert client.submit(pow, 2, 5).result() == 32
            client.shutdown()  # dask's: the cluster goes too, not only this client
            assert client.status == "closed"
        assert server.wait(30) == 0, server.stderr.read()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    said = "SIGINT" if stop == "ctrl-c" else "a client shut the cluster down"
    assert said in server.stdout.read()
    assert wait_until(lambda: all(process_gone(p) for p in descendants))
    assert not os.path.exists(scheduler_file) and not port_open(address)


def test_a_stale_scheduler_file_says_there_is_no_cluster(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stale = tmp_path / "scheduler.json"
    stale.write_text(json.dumps({"address": f"tcp://127.0.0.1:{port}", "pid": gone.pid}))
    with pytest.raises(ConnectionRefusedError, match=f"No cluster at tcp://127.0.0.1:{port}"):
        Client(scheduler_file=str(stale))


def test_a_missing_scheduler_file_is_waited_for_then_named(tmp_path):
    missing = tmp_path / "nowhere.json"
    with pytest.raises(FileNotFoundError, match="minidist serve --scheduler-file"):
        Client(scheduler_file=str(missing), timeout=0.2)


def test_a_taken_port_is_reported():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = serve_and_fail(
            "--n-workers", "1", "--scheduler-port", str(port), "--dashboard-address", "none"
        )
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr


def test_a_bad_memory_limit_is_reported():
    done = serve_and_fail("--memory-limit", "lots", "--scheduler-port", "0")
    assert done.returncode == 1
    assert "minidist serve: error:" in done.stderr and "lots" in done.stderr


def test_an_unwritable_scheduler_file_is_reported_before_anything_starts(tmp_path):
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    target = not_a_directory / "scheduler.json"
    done = serve_and_fail("--scheduler-port", "0", "--scheduler-file", str(target))
    assert done.returncode == 1
    assert f"cannot write the scheduler file {target}" in done.stderr


def test_python_dash_m_minidist_help_names_serve():
    done = run_python("-m", "minidist", "--help")
    assert done.returncode == 0 and "serve" in done.stdout
    done = serve_and_fail("--help")
    assert done.returncode == 0
    for flag in (
        "--n-workers",
        "--threads-per-worker",
        "--memory-limit",
        "--dashboard-address",
        "--scheduler-port",
        "--host",
        "--scheduler-file",
    ):
        assert flag in done.stdout


def test_the_installed_console_scripts_run():
    """`pip install` puts `minidist` and `minidist-demo` beside the interpreter (setup.cfg's entry
    points); both must start and answer --help."""
    scripts = sysconfig.get_path("scripts")
    for command, expected in (
        (("minidist", "--help"), "serve"),
        (("minidist", "serve", "--help"), "--scheduler-file"),
        (("minidist-demo", "--help"), "--limit"),
    ):
        path = shutil.which(command[0], path=scripts)
        assert path, f"{command[0]} is not in {scripts}: install the package (pip install -e .)"
        done = subprocess.run(
            [path, *command[1:]], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stderr
        assert expected in done.stdout


def test_client_write_scheduler_file_lets_another_process_connect(tmp_path):
    scheduler_file = str(tmp_path / "scheduler.json")
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        client.write_scheduler_file(scheduler_file)
        assert client.scheduler_file == scheduler_file
        with open(scheduler_file) as f:
            assert json.load(f)["address"] == cluster.scheduler_address
        other = sum_of_abs_in_another_process(f"scheduler_file={scheduler_file!r}")
        assert other.returncode == 0, other.stderr
        assert other.stdout.strip() == "55"
        with pytest.raises(ValueError, match="already set"):
            client.write_scheduler_file(scheduler_file)
    with Client(processes=False, n_workers=1, dashboard_address=None) as in_process:
        with pytest.raises(ValueError, match="scheduler_port=0"):
            in_process.write_scheduler_file(str(tmp_path / "other.json"))
