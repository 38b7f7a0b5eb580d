"""Random records, transfers and packings of the task stream, read against a bounded deque.

The stream keeps its newest ``maxlen`` records in columns and, once a large run is released, packs
them into one compressed buffer (``scheduler/task_stream.py``); records that arrive later take the
place of the oldest packed ones. Whatever the order of records and packings, the stream must read
(forwards, backwards, and its length) exactly as a deque of the same bound holding the same records.
"""

from __future__ import annotations

import collections

from hypothesis import given, settings
from hypothesis import strategies as st

from minidist.scheduler.task_stream import TaskStream

# an event: None packs; otherwise (worker number, has a transfer, erred) for a new record
_EVENTS = st.lists(
    st.one_of(st.none(), st.tuples(st.integers(0, 2), st.booleans(), st.booleans())),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(maxlen=st.integers(1, 12), events=_EVENTS)
def test_the_stream_reads_as_a_bounded_deque_whatever_is_packed(maxlen, events):
    stream = TaskStream(maxlen)
    expected: collections.deque = collections.deque(maxlen=maxlen)
    for step, event in enumerate(events):
        if event is None:
            stream.pack()
        else:
            worker, has_transfer, erred = event
            key, address, status = ("inc", step), f"w{worker}", "erred" if erred else "ok"
            transfer = (step + 0.25, step + 0.5) if has_transfer else None
            if transfer is not None:
                stream.transfer(key, *transfer)
            stream.finished(key, address, worker, float(step), step + 0.75, status, 8 * step)
            expected.append(
                (key, address, worker, float(step), step + 0.75, status, transfer, 8 * step)
            )
        assert list(stream) == list(expected)
        assert list(reversed(stream)) == list(reversed(expected))
        assert len(stream) == len(expected)
    assert stream.runs == sum(event is not None for event in events)
