"""Work handed to forked processes: the CPU-bound parts of a build (reading the site's files,
rendering and writing the tree) run on every core the process may use. A forked child shares the
parent's memory copy-on-write, so it needs nothing sent to it; what it returns comes back pickled."""

from __future__ import annotations

import functools
import os
import pickle
import signal
import threading
from typing import Callable


def cores() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0))


def processes(work: int, per_process: int) -> int:
    """How many processes share ``work`` items: one per core (up to 4), and no more than one per
    ``per_process`` items (below that, a fork costs more than it saves)."""
    return max(1, min(cores(), 4, work // per_process))


def slices(items: list, count: int) -> list[list]:
    """``items`` cut into ``count`` contiguous slices of near-equal length, in order."""
    ends = [round(len(items) * k / count) for k in range(count + 1)]
    return [items[ends[k]:ends[k + 1]] for k in range(count)]


class Forked:
    """``fn()`` run in a forked child at once; ``result()`` returns what it returned or raises what
    it raised, and a child that died or could not send its result is an error too. Fork only where
    the process runs no other thread: a child holds just the forking one."""

    def __init__(self, fn: Callable[[], object]):
        read_end, write_end = os.pipe()
        try:
            pid = os.fork()
        except BaseException:
            os.close(read_end)
            os.close(write_end)
            raise
        if pid:
            os.close(write_end)
            self.pid, self.read_end = pid, read_end
            return
        try:  # the child: never returns to the caller, never runs the parent's exit handlers
            os.close(read_end)
            try:
                outcome = ("ok", fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the parent, which raises it
                outcome = ("error", exc)
            try:
                data = pickle.dumps(outcome, pickle.HIGHEST_PROTOCOL)
                if outcome[0] == "error":
                    pickle.loads(data)  # an exception that cannot be rebuilt is sent as its text
            except Exception:
                data = pickle.dumps(("error", RuntimeError(f"{type(outcome[1]).__name__}: {outcome[1]}")))
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(data)
        finally:
            os._exit(0)

    def result(self):
        with os.fdopen(self.read_end, "rb") as pipe:
            data = pipe.read()
        _, status = os.waitpid(self.pid, 0)
        if not data or os.waitstatus_to_exitcode(status) != 0:
            code = os.waitstatus_to_exitcode(status)
            why = f"signal {-code}" if code < 0 else f"status {code}"
            raise OSError(f"a worker process ended with {why} before it finished")
        kind, value = pickle.loads(data)
        if kind == "error":
            raise value
        return value

    def kill(self) -> None:
        """Stop the child and reap it (the caller failed: what the child does no longer matters)."""
        os.kill(self.pid, signal.SIGKILL)
        os.close(self.read_end)
        os.waitpid(self.pid, 0)


class _Done:
    """What ``start`` gives when it may not fork: ``fn()`` already run here."""

    def __init__(self, fn: Callable[[], object]):
        try:
            self.value, self.error = fn(), None
        except Exception as exc:  # raised by result(), as a child's would be
            self.value, self.error = None, exc

    def result(self):
        if self.error is not None:
            raise self.error
        return self.value

    def kill(self) -> None:
        pass


def start(fn: Callable[[], object]) -> Forked | _Done:
    """``fn()`` in a forked child, or here and now when the process runs other threads (a child
    would hold copies of their locks, perhaps taken)."""
    return Forked(fn) if threading.active_count() == 1 else _Done(fn)


def run_split(fns: list[Callable[[], object]]) -> list:
    """``fns[0]()`` here and every other one in a child of its own, at the same time; their results
    in order. The first error is raised once every child has ended."""
    children: list = []
    try:
        for fn in fns[1:]:
            children.append(start(fn))
        results = [fns[0]()]
    except BaseException:
        for child in children:
            child.kill()
        raise
    failure = None
    for child in children:
        try:
            results.append(child.result())
        except BaseException as exc:
            failure = failure or exc
    if failure is not None:
        raise failure
    return results


# chunk numbers wait in a pipe as 4 bytes each, all written before anyone reads: within its capacity
MAX_CHUNKS = 4096


class Shared:
    """Work in ``count`` numbered chunks, each done once by whichever process is free: ``helpers``
    forked children start taking chunks at once; ``finish()`` has this process take those left
    (work of its own done meanwhile, the children took more), then gives every chunk's result in
    order. ``do(k, here)`` does chunk ``k``, ``here`` telling this process from a child; what a child
    did comes back through ``received``. The numbers are read from a pipe filled before the fork:
    on Linux a read of 4 bytes takes 4 whole bytes under the pipe's lock, and a read of an empty
    pipe without writers gives nothing."""

    def __init__(self, count: int, helpers: int, do: Callable[[int, bool], object],
                 received: Callable[[object], object] = lambda result: result):
        if count > MAX_CHUNKS:
            raise ValueError(f"{count} chunks: at most {MAX_CHUNKS}")
        self._count, self._do, self._received = count, do, received
        self._children: list = []
        self._queue, write_end = os.pipe()
        try:
            numbers = memoryview(b"".join(k.to_bytes(4, "little") for k in range(count)))
            while numbers:
                numbers = numbers[os.write(write_end, numbers):]
        finally:
            os.close(write_end)  # before the fork: no writer left, an empty pipe reads as its end
        try:
            for _ in range(helpers):
                self._children.append(start(functools.partial(self._take, False)))
        except BaseException:
            self.cancel()
            raise

    def _take(self, here: bool) -> dict:
        done = {}
        while number := os.read(self._queue, 4):
            k = int.from_bytes(number, "little")
            done[k] = self._do(k, here)
        return done

    def finish(self) -> list:
        try:
            done = self._take(True)
        except BaseException:
            self.cancel()
            raise
        os.close(self._queue)
        self._queue = None
        children, self._children = self._children, []
        failure = None
        for child in children:
            try:
                done.update((k, self._received(result)) for k, result in child.result().items())
            except BaseException as exc:
                failure = failure or exc
        if failure is not None:
            raise failure
        return [done[k] for k in range(self._count)]

    def cancel(self) -> None:
        """Stop the children (nothing they do is wanted any more); nothing once ``finish`` ran."""
        children, self._children = self._children, []
        for child in children:
            child.kill()
        if self._queue is not None:
            os.close(self._queue)
            self._queue = None
