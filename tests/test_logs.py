"""Logs per component: buffers, worker records shipped from another process, stderr echo, isolation."""

from __future__ import annotations

import logging
import pickle
import re
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from minidist.logs import (
    COMPONENT_LOGGERS,
    KEEP_CLOSED_WORKERS,
    LOG_FORMAT,
    ClusterLogs,
    LogBuffer,
    WorkerLogShipper,
)

LINE = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} - {name} - {level} - {message}"


def line_pattern(name, level, message):
    return re.compile(
        LINE.replace("{name}", re.escape(name))
        .replace("{level}", level)
        .replace("{message}", re.escape(message))
    )


@pytest.fixture
def logs():
    cluster_logs = ClusterLogs("test-logs", silence_logs=False)
    yield cluster_logs
    cluster_logs.close()


def test_each_component_has_its_own_buffer_in_the_familiar_format(logs):
    logs.cluster_logger.info("Starting cluster with %d workers", 2)
    logs.scheduler_logger.warning("Scheduler started")
    logs.worker_logger("worker-0").info("Starting worker")
    logs.worker_logger("worker-1").error("Out of patience")

    text = logs.get_logs()
    assert list(text) == ["Cluster", "Scheduler", "worker-0", "worker-1"]
    assert line_pattern(
        "minidist.cluster.test-logs", "INFO", "Starting cluster with 2 workers"
    ).fullmatch(text["Cluster"])
    assert line_pattern("minidist.scheduler.test-logs", "WARNING", "Scheduler started").fullmatch(
        text["Scheduler"]
    )
    assert line_pattern("minidist.worker.test-logs.worker-0", "INFO", "Starting worker").fullmatch(
        text["worker-0"]
    )
    assert "Out of patience" in text["worker-1"] and "worker-0" not in text["worker-1"]
    assert [
        name.split(".")[:2] for name in (logs.cluster_logger.name, logs.scheduler_logger.name)
    ] == [c.split(".") for c in COMPONENT_LOGGERS[:2]]


def test_get_logs_can_leave_components_out(logs):
    logs.worker_logger("a").info("from a")
    logs.worker_logger("b").info("from b")
    assert list(logs.get_logs(cluster=False, scheduler=False)) == ["a", "b"]
    assert list(logs.get_logs(workers=False)) == ["Cluster", "Scheduler"]
    assert list(logs.get_logs(cluster=False, scheduler=False, workers=["b"])) == ["b"]


def test_lines_are_newest_first_as_in_dask(logs):
    for i in range(5):
        logs.scheduler_logger.info("event %d", i)
    logs.scheduler_logger.warning("event 5")
    lines = logs.scheduler_lines(3)
    assert [level for level, _ in lines] == ["WARNING", "INFO", "INFO"]
    assert [line.rsplit(" - ", 1)[1] for _, line in lines] == ["event 5", "event 4", "event 3"]
    assert len(logs.scheduler_lines()) == 6
    logs.worker_logger("w").info("only line")
    assert logs.worker_lines("w", 10) == [("INFO", logs.get_logs()["w"])]
    assert logs.worker_lines("no-such-worker", 10) == []
    assert logs.cluster_lines() == []


def test_worker_records_say_which_worker_wrote_them(logs):
    seen = []
    handler = logging.Handler()
    handler.emit = seen.append
    logger = logs.worker_logger("tcp://127.0.0.1:4000")
    logger.addHandler(handler)
    try:
        logger.info("hello")
        logs.add_remote_records(
            "tcp://127.0.0.1:4000", [(1.0, logging.INFO, "minidist.worker", "hi")]
        )
    finally:
        logger.removeHandler(handler)
    assert [r.worker for r in seen] == ["tcp://127.0.0.1:4000"] * 2
    assert all(r.name.endswith("tcp://127.0.0.1:4000") for r in seen)


def test_buffers_are_bounded():
    buffer = LogBuffer(maxlen=3)
    logger = logging.getLogger("minidist.test-logs.bounded")
    logger.addHandler(buffer)
    logger.propagate = False
    try:
        for i in range(10):
            logger.warning("line %d", i)
    finally:
        logger.removeHandler(buffer)
        logger.propagate = True
    assert [line[-6:] for line in buffer.text().splitlines()] == ["line 7", "line 8", "line 9"]

    logs = ClusterLogs("bounded", silence_logs=False, buffer_size=2)
    try:
        for i in range(5):
            logs.cluster_logger.info("n=%d", i)
        assert len(logs.cluster_lines()) == 2
    finally:
        logs.close()


def test_two_clusters_with_one_name_do_not_mix():
    first, second = ClusterLogs("same", silence_logs=False), ClusterLogs("same", silence_logs=False)
    try:
        assert first.label != second.label
        first.cluster_logger.info("first only")
        second.cluster_logger.info("second only")
        first.worker_logger("w").info("first worker")
        assert "second" not in first.get_logs()["Cluster"]
        assert "first" not in second.get_logs()["Cluster"]
        assert "w" not in second.get_logs()
    finally:
        first.close()
        second.close()
    third = ClusterLogs("same", silence_logs=False)  # labels are free again after close
    third.close()
    assert third.label == first.label


def test_records_shipped_from_a_worker_process_land_in_its_buffer(logs):
    code = textwrap.dedent(
        """
        import logging, pickle, sys
        from minidist.logs import WorkerLogShipper
        shipper = WorkerLogShipper()
        shipper.install("minidist.worker")
        log = logging.getLogger("minidist.worker")
        log.debug("not shipped: below INFO")
        log.info("Starting worker with %d threads", 4)
        try:
            1 / 0
        except ZeroDivisionError:
            log.exception("Task failed")
        logging.getLogger("minidist.worker.memory").warning("Memory at 85%")
        sys.stdout.buffer.write(pickle.dumps(shipper.drain()))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, check=True)
    records = pickle.loads(out.stdout)
    assert out.stderr == b""  # nothing printed in the worker either
    assert [r[1:3] for r in records] == [
        (logging.INFO, "minidist.worker"),
        (logging.ERROR, "minidist.worker"),
        (logging.WARNING, "minidist.worker.memory"),
    ]
    logs.add_remote_records("worker-7", records)
    logs.add_remote_records(
        "worker-7", [(records[0][0], logging.INFO, "numcodecs", "a library speaks")]
    )
    lines = logs.get_logs()["worker-7"].splitlines()
    name = logs.worker_logger("worker-7").name
    assert line_pattern(name, "INFO", "Starting worker with 4 threads").fullmatch(lines[0])
    assert line_pattern(name, "ERROR", "Task failed").fullmatch(lines[1])
    assert lines[2] == "Traceback (most recent call last):"
    assert lines[-2].endswith(" - WARNING - Memory at 85%") and name in lines[-2]
    assert line_pattern("numcodecs", "INFO", "a library speaks").fullmatch(lines[-1])
    assert "ZeroDivisionError: division by zero" in logs.get_logs()["worker-7"]


def test_remote_records_keep_their_own_time(logs):
    created = 946_080_000.25  # December 1999
    logs.add_remote_records("w", [(created, logging.INFO, "minidist.worker", "x")])
    [(level, line)] = logs.worker_lines("w")
    assert line.startswith(time.strftime("%Y-%m-%d %H:%M:%S,250 - ", time.localtime(created)))


def test_the_shipper_never_attaches_to_the_root_and_can_be_removed():
    shipper = WorkerLogShipper()
    with pytest.raises(ValueError, match="root"):
        shipper.install("")
    shipper.install("minidist.test-logs.shipper")
    logger = logging.getLogger("minidist.test-logs.shipper")
    logger.info("one")
    shipper.uninstall()
    logger.info("two")
    assert [message for *_, message in shipper.drain()] == ["one"]
    assert shipper.drain() == []


def test_close_removes_every_handler_and_the_root_logger_is_never_touched():
    root = logging.getLogger()
    before = (
        list(root.handlers),
        root.level,
        [list(logging.getLogger(c).handlers) for c in COMPONENT_LOGGERS],
    )
    logs = ClusterLogs("closing", silence_logs=logging.INFO)
    loggers = [logs.cluster_logger, logs.scheduler_logger, logs.worker_logger("w")]
    assert all(len(logger.handlers) == 2 for logger in loggers)
    logs.cluster_logger.info("kept after close")
    logs.close()
    logs.close()
    assert all(logger.handlers == [] and logger.propagate for logger in loggers)
    assert logs.worker_logger("late").handlers == []
    assert "kept after close" in logs.get_logs()["Cluster"]
    after = (
        list(root.handlers),
        root.level,
        [list(logging.getLogger(c).handlers) for c in COMPONENT_LOGGERS],
    )
    assert after == before


def test_a_closed_worker_keeps_its_lines_and_old_ones_are_dropped(logs):
    logs.worker_logger("gone").warning("dying words")
    logs.close_worker("gone")
    logs.close_worker("never-existed")
    assert logs.worker_addresses == ["gone"]
    assert "dying words" in logs.get_logs()["gone"]
    logs.worker_logger("gone").info("back again")  # a worker restarted under the same address
    assert logs.get_logs()["gone"].count("\n") == 1
    logs.close_worker("gone")
    for i in range(KEEP_CLOSED_WORKERS + 1):
        logs.worker_logger(f"w{i}").info("hi")
        logs.close_worker(f"w{i}")
    assert "gone" not in logs.get_logs() and "w0" not in logs.get_logs()
    assert len(logs.worker_addresses) == KEEP_CLOSED_WORKERS


@pytest.mark.parametrize(
    "silence_logs, shown",
    [
        (logging.WARNING, ["warning", "error"]),
        ("error", ["error"]),
        ("INFO", ["info", "warning", "error"]),
        (True, ["warning", "error"]),
        (False, []),
        (None, []),
    ],
)
def test_silence_logs_decides_what_is_echoed_to_stderr(capfd, silence_logs, shown):
    logs = ClusterLogs("echo", silence_logs=silence_logs)
    try:
        for level in ("debug", "info", "warning", "error"):
            getattr(logs.scheduler_logger, level)("a %s line", level)
    finally:
        logs.close()
    out, err = capfd.readouterr()
    assert out == ""
    assert [line.split(" - ")[2].lower() for line in err.splitlines()] == shown
    assert all(line.endswith(f"a {line.split(' - ')[2].lower()} line") for line in err.splitlines())


def test_silence_logs_rejects_what_is_not_a_level():
    with pytest.raises(ValueError, match="silence_logs='loud'"):
        ClusterLogs("bad", silence_logs="loud")


def test_the_users_logging_config_sees_records_at_its_own_levels(capsys):
    package = logging.getLogger("minidist")
    seen = []
    handler = logging.Handler()
    handler.emit = seen.append
    package.addHandler(handler)
    logs = ClusterLogs("configured", silence_logs=False)
    try:
        logs.cluster_logger.info("quiet")  # the user's effective level is WARNING (the root's)
        logs.cluster_logger.warning("loud")
        package.setLevel(logging.INFO)
        logs.worker_logger("w").info("now heard")
    finally:
        logs.close()
        package.removeHandler(handler)
        package.setLevel(logging.NOTSET)
    assert [(r.name, r.getMessage()) for r in seen] == [
        ("minidist.cluster.configured", "loud"),
        ("minidist.worker.configured.w", "now heard"),
    ]
    assert capsys.readouterr().err == ""


def test_no_double_printing_when_the_users_config_prints_to_stderr(capsys):
    package = logging.getLogger("minidist")
    console = logging.StreamHandler()  # sys.stderr, as basicConfig would
    package.addHandler(console)
    logs = ClusterLogs("console", silence_logs=logging.WARNING)
    try:
        logs.scheduler_logger.warning("said once")
        logs.scheduler_logger.info("not at all")
    finally:
        logs.close()
        package.removeHandler(console)
    assert capsys.readouterr().err == "said once\n"  # the user's handler, with the user's format


@pytest.mark.timeout(60)
@pytest.mark.parametrize("silence_logs, expected", [("logging.WARNING", 1), ("False", 0)])
def test_without_any_logging_config_a_warning_is_printed_once_or_not_at_all(silence_logs, expected):
    """In a fresh interpreter (no handler anywhere, unlike under pytest) logging's last resort stays quiet."""
    code = textwrap.dedent(
        f"""
        import logging
        from minidist.logs import ClusterLogs
        logs = ClusterLogs("fresh", silence_logs={silence_logs})
        logs.cluster_logger.warning("careful")
        logs.cluster_logger.info("fine")
        logs.close()
        assert logging.getLogger().handlers == []
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("careful") == expected
    assert "fine" not in out.stderr


def test_many_threads_log_while_logs_are_read(logs):
    stop = threading.Event()

    def chatter(i):
        logger = logs.worker_logger(f"w{i}")
        while not stop.is_set():
            logger.info("tick")
            logs.scheduler_logger.info("tock from %d", i)

    threads = [threading.Thread(target=chatter, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(200):
            logs.get_logs()
            logs.scheduler_lines(50)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert sorted(logs.worker_addresses) == ["w0", "w1", "w2", "w3"]


def test_log_format_is_dasks():
    assert LOG_FORMAT == "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
