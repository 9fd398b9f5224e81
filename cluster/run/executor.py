"""The executor: dispatch ready cells to Ray in dependency order, commit each one as it finishes.

It is the only thing that writes results (`cluster.store.commit`). A rerun skips every cell whose
key already committed (done or skipped); `fresh` recomputes everything. A cell that raises is
committed as failed with its error (its rows say so) and the others go on; cells depending on it are
blocked (their rows say why) and run on the next attempt. Cells lost to infrastructure (a dead
worker, actor or node) are retried, up to `MAX_ATTEMPTS` times.

How many cells run at once: on the embedded local Ray, `run.max_parallel` (the host's cores by
default) counting each running cell and each leased engine host as one; measurement cells (load
tests) run alone there, with nothing beside them. On a cluster the scheduling policy decides
(cluster/run/schedule.py: order, admission on the live nodes, cells no node can host failed with
the reason); the hooks that call it are marked `schedule:`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from rich.console import Console

from cluster.plan.cells import STAGES as STAGE_ORDER
from cluster.plan.cells import Cell
from cluster.run import registry
from cluster.run.env import CellRun, RunEnv
from cluster.run.progress import Tally, clock, start_board
from cluster.run.remote import infra_errors, one_line, remote_runner
from cluster.run.schedule import Policy, for_cluster
from cluster.run.sessions import HostPool, Session, dead_hosts, session_key
from cluster.store import manifest
from cluster.store.commit import CellResult, commit

MAX_ATTEMPTS = 3
CLOSE_TIMEOUT_S = 120.0  # a Serve deployment not gone by then no longer holds the next one back
OK = ("done", "skipped")


@dataclass
class _Running:
    cell: Cell
    started: float
    session: Session | None = None
    attempt: int = 1


@dataclass
class Summary:
    """How a run ended."""

    done: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)  # labels of failed or blocked cells
    resumed: int = 0  # cells already committed before this run


class Executor:
    """Runs the cells of one plan."""

    def __init__(
        self, env: RunEnv, cells: list[Cell], console: Console, fresh: bool, on_cluster: bool
    ) -> None:
        self.env, self.cells, self.console, self.fresh = env, cells, console, fresh
        self.by_key = {c.key: c for c in cells}
        self.state: dict[str, str] = {c.key: "pending" for c in cells}
        self.manifests: dict[str, dict] = {}
        self.running: dict[Any, _Running] = {}
        self.sessions: dict[str, Session] = {}
        self.closing: dict[str, tuple[list[str], float]] = {}  # Serve apps being deleted: names, deadline
        self.attempts: dict[str, int] = {}
        self.pool = HostPool(env)
        # CPU engine hosts are pinned to this host's cores and ask Ray for none (engine_host.cpu_host),
        # so on a cluster of CPU nodes too the executor counts what runs at once, up to the cores here.
        self.local = not on_cluster or not env.gpu
        self.capacity = env.sweep.run.max_parallel or (env.host.cores if self.local else 10**6)
        self.tally = Tally(total=len(cells))
        self.board = None
        self.last_line = 0.0
        self.policy: Policy | None = for_cluster(env, cells) if on_cluster else None  # schedule:

    # --- bookkeeping -------------------------------------------------------------------------------

    def _resume(self) -> int:
        n = 0
        for c in self.cells:
            m = None if self.fresh else manifest.read(self.env.out, c.key)
            if m is not None and m.get("status") in OK:
                self.state[c.key], self.manifests[c.key] = m["status"], m
                self.tally.done += 1
                n += 1
        return n

    def _pending(self) -> list[Cell]:
        return [c for c in self.cells if self.state[c.key] == "pending"]

    def _inputs(self, cell: Cell) -> dict[str, dict]:
        return {d: self.manifests[d] for d in cell.deps}

    def _finish(self, cell: Cell, result: CellResult, status: str, started: float, error: str = "") -> None:
        stage = registry.STAGES[cell.stage]
        m = commit(
            self.env.out,
            self.env.sweep.name,
            cell,
            result,
            self.env.prov,
            stage.writes,
            status,
            started,
            error,
        )
        self.state[cell.key], self.manifests[cell.key] = status, m
        if status in OK:
            self.tally.done += 1
            if status == "done":
                self.tally.add(cell.stage, m["wall_s"])
        else:
            self.tally.failed += 1
        style = "" if status in OK else "[bold red]"
        what = f"{status}: {error}" if error else (result.note or status)
        self.console.log(f"{style}{cell.label}: {what} ({clock(m['wall_s'])})", markup=bool(style))
        if self.board is not None:
            self.board.clear.remote(cell.key)

    def _placeholder(self, cell: Cell, status: str, reason: str) -> None:
        cr = CellRun(cell, self.env, self._inputs_partial(cell))
        self._finish(
            cell,
            registry.placeholder(cr, status, reason),
            status,
            time.time(),
            reason if status != "skipped" else "",
        )

    def _inputs_partial(self, cell: Cell) -> dict[str, dict]:
        return {d: self.manifests[d] for d in cell.deps if d in self.manifests}

    # --- what may run ------------------------------------------------------------------------------

    def _settle(self) -> None:
        """Commit placeholders for skipped cells and for cells whose inputs failed."""
        for c in self._pending():
            if c.status == "skipped":
                self._placeholder(c, "skipped", c.reason)
                continue
            bad = [d for d in c.deps if self.state[d] in ("failed", "blocked")]
            if bad and all(self.state[d] not in ("pending", "running") for d in c.deps):
                first = self.by_key[bad[0]]
                self._placeholder(c, "blocked", f"not measured: {first.label} {self.state[bad[0]]}")

    def _ready(self) -> list[Cell]:
        out = [c for c in self._pending() if all(self.state[d] in OK for d in c.deps)]
        # tune first: its search is the longest chain of a sweep; it overlaps everything else
        rank = {s: i for i, s in enumerate(("tune", *(x for x in STAGE_ORDER if x != "tune")))}

        # work on open sessions first, then by stage; measurements (and their Serve deployment) last:
        # on a busy CPU host a deployment started early only slows everything beside it
        def order(c: Cell) -> tuple:
            return (self._session_open(c) is None, c.resources.exclusive, rank[c.stage])

        if self.policy is not None:  # schedule: longest path first, with what is about to be ready
            return self.policy.order(out, lambda c: self._session_open(c) is not None, self.state)
        return sorted(out, key=order)

    def _admit(self, unit: str, cell: Cell) -> bool:
        """schedule: room on the cluster for this cell or session (always, on the embedded Ray)."""
        return self.policy is None or self.policy.admit(unit, cell)

    def _rejected(self, cell: Cell) -> bool:
        """schedule: fail a cell no node can host (the declared cluster at once, live nodes after a timeout)."""
        why = self.policy.reject(cell) if self.policy is not None else ""
        if why:
            self._placeholder(cell, "failed", why)
        return bool(why)

    def _session_open(self, cell: Cell) -> Session | None:
        kind = registry.STAGES[cell.stage].session
        return self.sessions.get(session_key(cell, kind, self.env.gpu)) if kind else None

    def _used(self) -> int:
        used = sum(len(s.handle or []) for s in self.sessions.values() if s.kind == "engines")
        used += sum(1 for s in self.sessions.values() if s.kind == "serve")
        for r in self.running.values():
            if r.session is None:
                used += self._weight(r.cell)
        return used

    def _weight(self, cell: Cell) -> int:
        if cell.stage == "tune":
            t = self.env.sweep.tune
            return max(1, int(t.max_concurrent * t.cpus_per_trial))
        return 1

    def _hosts(self, cell: Cell) -> int:
        """Engine hosts per session: the plan's on a cluster, else eval.actors up to what may run here."""
        if not self.local and cell.resources.engines:
            return cell.resources.engines
        return max(1, min(self.env.sweep.eval.actors, self.capacity))

    def _measuring(self) -> bool:
        """A measurement runs, or one is ready on its live session: start nothing else."""
        if any(r.cell.resources.exclusive for r in self.running.values()):
            return True
        return any(
            c.resources.exclusive and (s := self._session_open(c)) is not None and s.opening is None
            for c in self._ready()
        )

    # --- dispatch ----------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        if self.policy is not None:
            self.policy.tick()  # schedule: nodes joined, left or died
        for cell in self._ready():
            if self._rejected(cell):
                continue
            kind = registry.STAGES[cell.stage].session
            if kind:
                self._dispatch_session_cell(cell, kind)
            elif self._can_start(cell, self._weight(cell)) and self._admit(cell.key, cell):
                self._launch(cell, None)

    def _can_start(self, cell: Cell, weight: int) -> bool:
        if not self.local:
            return True
        if cell.resources.exclusive:  # alone: no other running cell, engine session or starting deployment
            sessions = list(self.sessions.values())
            # a cell that brings its own server (bare `vllm serve`) also waits until no Serve app is up
            own_server = registry.STAGES[cell.stage].session is None
            return not (
                self.running
                or self.closing  # a deployment still stopping holds cores
                or any(s.kind == "engines" or s.opening is not None for s in sessions)
                or (own_server and sessions)
            )
        if self._measuring():
            return False
        return self._used() + weight <= self.capacity

    def _can_open(self, kind: str, n: int) -> bool:
        """Room for a new session (a Serve deployment starts while other cells run; one at a time)."""
        if not self.local:
            return True
        if kind == "serve" and (self.closing or any(s.kind == "serve" for s in self.sessions.values())):
            return False
        return not self._measuring() and self._used() + n <= self.capacity

    def _dispatch_session_cell(self, cell: Cell, kind: str) -> None:
        key = session_key(cell, kind, self.env.gpu)
        s = self.sessions.get(key)
        if s is None:
            n = self._hosts(cell) if kind == "engines" else 1
            if not self._can_open(kind, n) or (kind == "serve" and not self._members_ready(key)):
                return
            if not self._admit(key, cell):
                return
            s = self._open(cell, key, kind)
        if s.busy or s.opening is not None:
            return
        if not cell.resources.exclusive or self._can_start(cell, 0):
            self._launch(cell, s)

    def _serve_members(self, key: str) -> list[Cell]:
        """The pending load-test cells a Serve session deploys for."""
        return [
            c
            for c in self._pending()
            if registry.STAGES[c.stage].session == "serve"
            and session_key(c, "serve", self.env.gpu) == key
            and c.status != "skipped"
        ]

    def _members_ready(self, key: str) -> bool:
        """A Serve deployment waits until every checkpoint it serves has passed (or failed) its health cell."""
        return all(
            self.state[d] not in ("pending", "running") for c in self._serve_members(key) for d in c.deps
        )

    def _open(self, cell: Cell, key: str, kind: str) -> Session:
        s = Session(key, kind)
        if kind == "engines":
            s.handle = self.pool.lease(key, cell, self._hosts(cell))
        else:
            from cluster.stages.loadtest import open_remote

            members = [c for c in self._serve_members(key) if all(self.state[d] in OK for d in c.deps)]
            s.opening = open_remote(self.env, [(c, self._inputs(c)) for c in members])
        self.sessions[key] = s
        if kind == "serve":
            self.console.log(f"session {key}: deploying on Ray Serve")
        return s

    def _launch(self, cell: Cell, s: Session | None) -> None:
        self.state[cell.key] = "running"
        attempt = self.attempts.get(cell.key, 0) + 1
        self.attempts[cell.key] = attempt
        cr = CellRun(cell, self.env, self._inputs(cell), s.handle if s else None, self.board)
        ref = remote_runner(cell, self.env).remote(cr)
        if s is not None:
            s.busy = True
        self.running[ref] = _Running(cell, time.time(), s, attempt)
        self.console.log(f"start {cell.label}" + (f" (attempt {attempt})" if attempt > 1 else ""))

    # --- completion --------------------------------------------------------------------------------

    def _collect(self, timeout: float) -> None:
        import ray

        opening = {s.opening: s for s in self.sessions.values() if s.opening is not None}
        refs = list(self.running) + list(opening)
        if not refs:
            time.sleep(min(timeout, 0.5))
            return
        done, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        for ref in done:
            if ref in opening:
                self._opened(opening[ref], ref)
            else:
                self._completed(ref, self.running.pop(ref))

    def _opened(self, s: Session, ref: Any) -> None:
        import ray

        s.opening = None
        try:
            s.handle = ray.get(ref)
            self.console.log(f"session {s.key} ready")
        except Exception as exc:  # every cell of the session gets this reason
            reason = f"Serve app failed to start: {one_line(exc)}"
            for c in self._pending():
                if (
                    registry.STAGES[c.stage].session == "serve"
                    and session_key(c, "serve", self.env.gpu) == s.key
                ):
                    self._placeholder(c, "failed", reason)
            self._close(s)

    def _completed(self, ref: Any, r: _Running) -> None:
        import ray
        from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError

        if r.session is not None:
            r.session.busy = False
        elif self.policy is not None:
            self.policy.release(r.cell.key)  # schedule: a retry is admitted again
        try:
            result = ray.get(ref)
        except (RayActorError, WorkerCrashedError) as exc:
            return self._lost(r, exc)
        except RayTaskError as exc:
            cause = exc.cause if isinstance(exc.cause, Exception) else exc
            if (
                isinstance(cause, RayActorError)
                and r.session is not None
                or isinstance(cause, infra_errors())
            ):
                return self._lost(r, cause)  # a dead host, node or object inside the cell: retried
            return self._failed(r, cause)
        except Exception as exc:  # lost objects, node deaths: infrastructure
            return self._lost(r, exc)
        self._finish(r.cell, result, "done", r.started)
        self._maybe_close(r.session)

    def _lost(self, r: _Running, exc: BaseException) -> None:
        if r.session is not None and r.session.kind == "engines":
            dead = dead_hosts(r.session.handle)
            if dead:
                r.session.handle = self.pool.replace(r.session.key, dead, r.cell)
        if r.attempt < MAX_ATTEMPTS:
            self.console.log(f"[yellow]{r.cell.label}: lost ({type(exc).__name__}); retrying")
            self.state[r.cell.key] = "pending"
            return None
        return self._failed(r, exc)

    def _failed(self, r: _Running, exc: BaseException) -> None:
        error = one_line(exc)
        cr = CellRun(r.cell, self.env, self._inputs(r.cell))
        self._finish(r.cell, registry.placeholder(cr, "failed", error), "failed", r.started, error)
        self._maybe_close(r.session)

    def _maybe_close(self, s: Session | None) -> None:
        if s is None:
            return
        kind = s.kind
        left = [
            c
            for c in self.cells
            if self.state[c.key] in ("pending", "running")
            and registry.STAGES[c.stage].session == kind
            and session_key(c, kind, self.env.gpu) == s.key
        ]
        if not left:
            self._close(s)

    def _close(self, s: Session) -> None:
        self.sessions.pop(s.key, None)
        if self.policy is not None:
            self.policy.release(s.key)  # schedule:
        if s.kind == "engines":
            self.pool.release(s.key)
        elif s.handle is not None and not self.env.sweep.serve.keep:
            from cluster.stages.loadtest import close_session

            # deleting takes half a minute on a CPU host: other cells go on meanwhile; a measurement
            # or another deployment waits until it is gone (`_reap`)
            self.closing[s.key] = (close_session(self.env, s), time.monotonic() + CLOSE_TIMEOUT_S)

    def _reap(self, wait: bool = False) -> None:
        """Forget Serve deployments that are gone (or past their deadline); `wait`: until all are."""
        if not self.closing:  # every loop asks: nothing to import or query when no app is stopping
            return
        from serve.app import remaining

        while self.closing:
            for key, (names, deadline) in list(self.closing.items()):
                if time.monotonic() > deadline or not remaining(names):
                    del self.closing[key]
            if not wait or not self.closing:
                return
            time.sleep(1)

    def _shutdown(self) -> None:
        """Close every session, wait for Serve's deletes, stop the engine hosts. Each step is tried
        even if one before it failed, and a failure (Ray already gone after an interrupted run, say)
        is one console line: it must not replace the error that ended the run, if any."""
        steps: list[tuple[str, Callable[[], None]]] = [
            (f"close {s.key}", partial(self._close, s)) for s in list(self.sessions.values())
        ]
        steps += [
            ("wait for Serve's deletes", lambda: self._reap(wait=True)),
            ("stop engine hosts", self.pool.close),
        ]
        for what, step in steps:
            try:
                step()
            except Exception as e:  # noqa: BLE001 - shutdown goes on; the run's own outcome stands
                self.console.log(f"shutdown: {what} failed: {type(e).__name__}: {e}")
        self.closing.clear()

    # --- the loop ----------------------------------------------------------------------------------

    def _progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_line < self.env.sweep.run.progress_every_s:
            return
        self.last_line = now
        pending = [c.stage for c in self._pending()]
        self.console.log(self.tally.line(len(self.running), pending, min(self.capacity, 64)))
        for s in self.sessions.values():
            if s.opening is not None:
                self.console.log(f"  session {s.key}: deploying ({clock(time.time() - s.opened_at)})")
        if self.board is None or not self.running:
            return
        import ray

        steps = ray.get(self.board.snapshot.remote())
        for r in self.running.values():
            if r.cell.key in steps:
                self.console.log(f"  {r.cell.label}: {steps[r.cell.key]} ({clock(time.time() - r.started)})")

    def _stuck(self) -> bool:
        if self.running or self.closing or any(s.opening is not None for s in self.sessions.values()):
            return False
        for s in list(self.sessions.values()):
            self._close(s)
        self._dispatch()
        return not self.running and not any(s.opening is not None for s in self.sessions.values())

    def run(self) -> Summary:
        """Run every pending cell; return the summary."""
        summary = Summary(resumed=self._resume())
        if summary.resumed:
            self.console.log(f"resume: {summary.resumed} of {len(self.cells)} cells already committed")
        self.board = start_board()
        try:
            while self._pending() or self.running:
                self._reap()
                self._settle()
                self._dispatch()
                waiting = self.policy is not None and self.policy.waiting()  # schedule: nodes may still join
                if not self.running and self._pending() and not waiting and self._stuck():
                    for c in self._pending():
                        self._placeholder(c, "failed", "could not be scheduled")
                    break
                self._collect(timeout=min(5.0, self.env.sweep.run.progress_every_s))
                self._progress()
        finally:
            self._shutdown()
        self._progress(force=True)
        summary.done = sum(1 for s in self.state.values() if s == "done")
        summary.skipped = sum(1 for s in self.state.values() if s == "skipped")
        summary.failed = [self.by_key[k].label for k, s in self.state.items() if s in ("failed", "blocked")]
        return summary
