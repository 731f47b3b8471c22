"""The parts of ``benchmarks/fps.py``, one job each.

- ``plan``: what a run will do and roughly how long, said before it starts.
- ``backends`` / ``weights``: the engine's backends as the benchmark builds them; random weights and
  their exports, cached. A new engine backend (OpenVINO, ...) is one entry in ``backends.BACKENDS``.
- ``peers``: other methods through their own APIs (optional packages). A new peer is one entry in
  ``peers.PEERS`` and an adapter module.
- ``systems``: the :class:`~fpsbench.systems.FrameStepper` every measured system implements;
  ``single_stream`` (the engine's stepper, interleaved timed runs, ratios), ``grid`` (the loop
  over (min_dim, objects)), ``throughput`` (several videos at once, each in its own session),
  ``batched`` (several videos in one ``BatchSession``, against separate sessions), ``io_cost`` (decode, mask
  writing), ``official`` (the public repository, in a subprocess).
- ``timing``, ``memory``, ``machine``, ``synthetic``: clocks, peak memory, the machine, the input.
- ``results``: every figure as a typed record; ``table``, ``markdown``, ``plot`` and ``output``
  read only those. A new kind of result (an end-to-end run of ``hodor-run``'s path, batched
  multi-video throughput) is a new record; if it times frames it answers ``results.SpeedRow`` and
  appears in the side-by-side table and the plot without changing them.

Imported with ``benchmarks/`` on ``sys.path`` (``fps.py`` runs from there).
"""
