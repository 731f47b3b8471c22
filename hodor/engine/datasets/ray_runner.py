"""Running a dataset on a Ray cluster: one actor per GPU (or per CPU worker), each holding a
loaded model, and the sequences handed out one at a time to whichever actor is free.

Workers write their sequences straight into the output directory (which every node must
see at the same path), each staging its own sequence as a local run does, so the outputs are
the same; the driver holds the run's lock on the output directory, the workers take none. A
sequence whose worker dies (killed, out of memory, node lost) is given to a fresh actor, up
to ``retries`` more times, which stages it afresh beside the dead worker's partial output;
that is never committed, so never taken for a finished sequence, and the run's claim
removes it when the run ends (its lock died with the worker).
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hodor.engine.datasets.runner import describe_backend, note_result, progress_bar
from hodor.engine.datasets.sequence import SequenceSpec
from hodor.engine.datasets.summary import FAILED, SequenceResult
from hodor.engine.datasets.worker import SessionRequest, one_line, run_one, worker_label
from hodor.errors import HodorError

LOCAL = "local"
"""``--ray`` without an address: start a Ray instance on this machine for this run."""
DEFAULT_RETRIES = 2
MESSAGE_CHARS = 300  # Ray's own messages run to paragraphs; the summary keeps their start

# A Ray instance started here for one run stays on the loopback interface and reports nothing.
_LOCAL_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


@dataclass(frozen=True)
class RayOptions:
    """``--ray [ADDRESS]``, ``--ray-workers``, ``--ray-cpus-per-worker``, ``--ray-retries``."""

    address: str = LOCAL
    workers: int | None = None  # default: the cluster's GPUs, else its CPUs / cpus_per_worker
    cpus_per_worker: int = 1
    retries: int = DEFAULT_RETRIES


class SequenceWorker:
    """A Ray actor's state: the session over a model loaded once, or why it could not load."""

    def __init__(self, request: SessionRequest, threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.session = None
        self.problem = ""
        self.backend = ""
        try:
            self.session = request.open_session()
            self.backend = describe_backend(self.session)
        except HodorError as exc:
            self.problem = one_line(exc)

    def ready(self) -> tuple[str, str, str]:
        """``(worker label, backend description, problem)``; ``problem`` is empty when the model loaded."""
        return worker_label(), self.backend, self.problem

    def run(self, spec: SequenceSpec, out_root: str, attempt: int) -> SequenceResult:
        if self.session is None:
            return SequenceResult(
                spec.name, FAILED, attempts=attempt, worker=worker_label(), error=self.problem
            )
        return run_one(self.session, spec, Path(out_root), attempt)


def _import_ray(address: str):
    if address == LOCAL:
        for key, value in _LOCAL_RAY_ENV.items():
            os.environ.setdefault(key, value)
    try:
        import ray
    except ImportError:
        raise HodorError(
            "--ray needs Ray: pip install 'hodor-engine[ray]' (on every node of the cluster)"
        ) from None
    return ray


def _connect(ray, options: RayOptions) -> bool:
    """Connect to (or start) Ray unless this process already is; True if this call did."""
    if ray.is_initialized():
        return False
    try:
        if options.address == LOCAL:
            ray.init(include_dashboard=False, log_to_driver=True)
        else:
            ray.init(address=options.address, log_to_driver=True)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise HodorError(f"cannot connect to Ray at {options.address}: {one_line(exc)}") from None
    return True


def _plan_workers(ray, request: SessionRequest, options: RayOptions, pending: int) -> tuple[int, dict, str]:
    """How many actors, their resource requests, and the device they run on."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = int(resources.get("CPU", 0))
    if request.device == "cuda" and gpus == 0:
        raise HodorError("--device cuda, but the Ray cluster has no GPU")
    use_gpu = gpus > 0 and request.device != "cpu"
    if use_gpu:
        default, actor_options, device = gpus, {"num_gpus": 1, "num_cpus": options.cpus_per_worker}, "cuda"
    else:
        default = max(1, cpus // options.cpus_per_worker)
        actor_options, device = {"num_cpus": options.cpus_per_worker}, "cpu"
    workers = min(options.workers or default, pending)
    return workers, actor_options, device


def run_on_ray(
    specs: Sequence[SequenceSpec], request: SessionRequest, out_root: Path, options: RayOptions
) -> tuple[list[SequenceResult], str]:
    """Segment ``specs`` on Ray; results in ``specs`` order, and the backend that ran them."""
    ray = _import_ray(options.address)
    from ray.exceptions import RayActorError, RayTaskError

    started_here = _connect(ray, options)
    try:
        count, actor_options, device = _plan_workers(ray, request, options, len(specs))
        request = request.on_device(device)
        actor_class = ray.remote(SequenceWorker).options(max_restarts=0, **actor_options)

        def start_actor():
            return actor_class.remote(request, options.cpus_per_worker)

        started = [start_actor() for _ in range(count)]
        try:
            readiness = ray.get([a.ready.remote() for a in started])
        except RayActorError as exc:
            raise HodorError(f"the Ray workers could not start: {one_line(exc)}") from None
        # An actor whose model did not load (a node without the file, say) takes no sequence.
        actors = [a for a, (_, _, problem) in zip(started, readiness, strict=True) if not problem]
        if not actors:
            raise HodorError(readiness[0][2])
        for label, _, problem in readiness:
            if problem:
                print(f"hodor-run: warning: Ray worker {label} left out: {problem}", file=sys.stderr)
        backend = next(b for _, b, problem in readiness if not problem)
        count = len(actors)

        queue: deque[tuple[SequenceSpec, int]] = deque((spec, 1) for spec in specs)
        idle = list(range(count))
        in_flight: dict = {}  # ObjectRef -> (actor slot, spec, attempt)
        results: dict[str, SequenceResult] = {}
        with progress_bar(len(specs)) as bar:
            while queue or in_flight:
                while idle and queue:
                    slot = idle.pop()
                    spec, attempt = queue.popleft()
                    ref = actors[slot].run.remote(spec, str(out_root), attempt)
                    in_flight[ref] = (slot, spec, attempt)
                (ref,), _ = ray.wait(list(in_flight), num_returns=1)
                slot, spec, attempt = in_flight.pop(ref)
                idle.append(slot)
                try:
                    result = ray.get(ref)
                except RayActorError as exc:
                    # The worker died with the sequence half done: a fresh actor takes its place.
                    ray.kill(actors[slot], no_restart=True)
                    actors[slot] = start_actor()
                    if attempt <= options.retries:
                        bar.write(f"hodor-run: worker died during {spec.name} (attempt {attempt}); retrying")
                        queue.appendleft((spec, attempt + 1))
                        continue
                    result = SequenceResult(
                        spec.name,
                        FAILED,
                        attempts=attempt,
                        error=f"worker died {attempt} times: {one_line(exc)[:MESSAGE_CHARS]}",
                    )
                except RayTaskError as exc:
                    error = one_line(exc)[:MESSAGE_CHARS]
                    result = SequenceResult(spec.name, FAILED, attempts=attempt, error=error)
                results[spec.name] = result
                note_result(bar, result)
        return [results[spec.name] for spec in specs], f"{backend} on {count} Ray worker(s)"
    finally:
        if started_here:
            ray.shutdown()
