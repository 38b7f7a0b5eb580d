"""FrameReader (minidist/comm/frames.py) reads what multiprocessing's Connection.send_bytes writes on a
worker's pipe: frames whole and in order however the bytes arrive, and the same errors at the end;
write_frame writes what Connection.recv_bytes reads."""

from __future__ import annotations

import os
import socket
import struct
import threading
from multiprocessing import Pipe

import pytest

from minidist.comm.frames import CHUNK, SMALL_FRAME, FrameReader, write_frame

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pipe():
    sender, receiver = Pipe(duplex=True)
    yield sender, receiver, FrameReader(receiver.fileno())
    sender.close()
    receiver.close()


def test_frames_sent_together_come_out_one_by_one(pipe):
    sender, _, reader = pipe
    frames = [b"", b"a", b"bc" * 100, bytes(range(256))]
    for frame in frames:
        sender.send_bytes(frame)
    got = [reader.recv_bytes()]  # one read brings them all
    while reader.has_frame():
        got.append(reader.recv_bytes())
    assert got == frames
    assert not reader.has_frame()


def test_frames_of_every_size_around_the_read_size(pipe):
    sender, _, reader = pipe
    sizes = [CHUNK - 5, CHUNK - 4, CHUNK, CHUNK + 1, 3 * CHUNK + 7, 10, 5 * 2**20]
    frames = [os.urandom(size) for size in sizes]

    def send() -> None:  # large frames block the sender until they are read
        for frame in frames:
            sender.send_bytes(frame)

    thread = threading.Thread(target=send)
    thread.start()
    try:
        assert [bytes(reader.recv_bytes()) for _ in frames] == frames
    finally:
        thread.join(10)


def test_a_frame_that_arrives_in_pieces():
    left, right = socket.socketpair()
    reader = FrameReader(right.fileno())
    payload = b"minidist" * 50
    data = struct.pack("!i", len(payload)) + payload
    result: list = []
    thread = threading.Thread(target=lambda: result.append(reader.recv_bytes()))
    thread.start()
    try:
        for i in range(0, len(data), 3):  # the header too arrives split
            left.sendall(data[i : i + 3])
        thread.join(10)
        assert result == [payload]
    finally:
        left.close()
        right.close()


def test_end_of_file_between_frames_and_inside_one():
    left, right = socket.socketpair()
    reader = FrameReader(right.fileno())
    left.sendall(struct.pack("!i", 2) + b"ok")
    left.sendall(struct.pack("!i", 100) + b"cut short")
    left.close()
    try:
        assert reader.recv_bytes() == b"ok"
        with pytest.raises(OSError, match="end of file during message"):
            reader.recv_bytes()
    finally:
        right.close()
    left, right = socket.socketpair()
    reader = FrameReader(right.fileno())
    left.close()
    try:
        with pytest.raises(EOFError):
            reader.recv_bytes()
    finally:
        right.close()


def test_write_frame_writes_what_a_connection_reads(pipe):
    sender, receiver, _ = pipe
    sizes = [0, 1, 100, SMALL_FRAME - 1, SMALL_FRAME, SMALL_FRAME + 1, 3 * 2**20 + 5]
    frames = [os.urandom(size) for size in sizes]

    def send() -> None:  # frames larger than the socket's buffer block until they are read
        for frame in frames:
            write_frame(sender.fileno(), frame)

    thread = threading.Thread(target=send)
    thread.start()
    try:
        assert [receiver.recv_bytes() for _ in frames] == frames
    finally:
        thread.join(10)
