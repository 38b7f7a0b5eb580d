"""The message vocabulary (minidist/messages.py, peer_messages.py) and the remote protocol's checks that
derive from it."""

from __future__ import annotations

import copyreg
import pickle

import pytest

from minidist import messages, peer_messages
from minidist.comm.serialize import deserialize, serialize
from minidist.messages import (
    Call,
    Cancel,
    ComputeTask,
    DependencyRef,
    FreeKeys,
    MalformedMessage,
    Release,
    Scatter,
    TaskDone,
    UpdateGraph,
    decode_batch,
    encode_batch,
    new_task,
)
from minidist.remote.protocol import check_request

# the types registered to cross pipes and sockets (in-process ones carry handles, futures, functions)
WIRE_TYPES = [
    v
    for module in (messages, peer_messages)
    for v in vars(module).values()
    if isinstance(v, type)
    and hasattr(v, "_fields")
    and v in copyreg.dispatch_table
    and v.__module__ == module.__name__
]


def _example(cls):
    return cls(*(f"field-{i}" for i in range(len(cls._fields))))


def test_the_wire_vocabulary_is_complete():
    assert {TaskDone, ComputeTask, UpdateGraph, peer_messages.Reply} <= set(WIRE_TYPES)


@pytest.mark.parametrize("cls", WIRE_TYPES, ids=lambda cls: cls.__name__)
def test_every_wire_message_survives_pickling_with_its_type_and_fields(cls):
    message = _example(cls)
    copy = pickle.loads(pickle.dumps(message, protocol=5))
    assert type(copy) is cls and copy == message


def test_a_batch_on_a_worker_pipe_is_as_compact_as_bare_tuples_and_keeps_its_types():
    typed = [TaskDone(f"inc-{i}", i, 28, 1.0, 2.0, 7, 1) for i in range(200)] + [FreeKeys(("a",))]
    bare = [("done", f"inc-{i}", i, 28, 1.0, 2.0, 7, 1) for i in range(200)] + [("free", ("a",))]
    frame = encode_batch(typed)
    assert len(frame) <= len(pickle.dumps(bare, protocol=5)) + 200
    assert decode_batch(frame) == typed
    assert [type(m) for m in decode_batch(frame)] == [type(m) for m in typed]


def test_every_message_of_a_worker_pipe_travels_in_a_batch():
    # batches name a message's type by its index among the wire types (no class lookup per frame)
    arguments = serialize(((1,), {}), None)
    batch = [
        ComputeTask("y", b"id", b"blob", arguments, ("x",), {}, 2, True),
        FreeKeys(["a", "b"]),
        messages.PublishKeys(("a",)),
        messages.ReleaseQueued(("y",)),
        messages.CloseWorker(),
        TaskDone("y", serialize(3, None), 28, 1.0, 2.0, 7, 2),
        messages.TaskErred("z", b"pickled error", "tb", 1.0, 2.0, 7, 1),
        messages.QueuedReleased(("y",), ()),
        messages.WorkerHello(123),
    ]
    copy = decode_batch(encode_batch(batch))
    assert copy == batch and [type(m) for m in copy] == [type(m) for m in batch]
    assert b"ComputeTask" not in encode_batch(batch)


def test_a_compute_task_crosses_a_pipe_with_its_run_spec_and_references():
    arguments = serialize(((DependencyRef("x"),), {}), None)
    task = ComputeTask("y", b"id", b"blob", arguments, ("x",), {})
    message = pickle.loads(pickle.dumps([task], protocol=5))[0]
    assert type(message) is ComputeTask and message.function == b"blob"
    assert type(deserialize(message.arguments)[0][0]) is DependencyRef


def test_a_message_of_the_wrong_length_from_a_peer_is_malformed():
    forged = tuple.__new__(Cancel, ())  # what a peer's pickle can make
    with pytest.raises(MalformedMessage, match="Cancel has 1 fields, not 0"):
        check_request(forged, {"Client-1"})


def _remote_task(key="t-1", function=b"pickled function"):
    return new_task(key, (), (b"function id", function, serialize(((1,), {}), None)))


def test_remote_checks_accept_a_well_formed_graph():
    check_request(UpdateGraph("Client-1", (_remote_task(),), ("t-1",)), {"Client-1"})


@pytest.mark.parametrize(
    "message, error",
    [
        (Call(print, (), None), "Call is not a message a remote client may send"),
        (("update_graph", "Client-1", (), ()), "tuple is not a message a remote client may send"),
        (Cancel(["a"]), "Cancel.keys must be tuple, not list"),
        (Release("Client-2", ("a",)), "Release for client 'Client-2', which did not register"),
        (UpdateGraph("Client-1", ("t-1",), ()), "malformed task in UpdateGraph"),
        (
            UpdateGraph("Client-1", (_remote_task()._replace(priority="high"),), ()),
            "NewTask.priority must be int, not str",
        ),
        (
            UpdateGraph("Client-1", (_remote_task(function=print),), ()),
            "a remote task's function must be a pickle",
        ),
        (
            UpdateGraph("Client-1", (_remote_task()._replace(run_spec=(b"id", None)),), ()),
            "a task's run_spec must be a tuple",
        ),
        (
            UpdateGraph("Client-1", (_remote_task()._replace(run_spec=(b"id", None, 1)),), ()),
            "a remote task's arguments must be a Payload or bytes",
        ),
        (Scatter("Client-1", {"a": 1}, {"a": 28}), "scattered values must be Payloads"),
        (Scatter("Client-1", {}, {"a": 28}), "matching dicts of values and sizes"),
    ],
)
def test_remote_checks_reject_malformed_messages_with_a_clear_error(message, error):
    with pytest.raises(MalformedMessage, match=error):
        check_request(message, {"Client-1"})
