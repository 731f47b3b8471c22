"""The tables of RESULTS.md, from the report (so figures are pasted, never retyped)."""

from __future__ import annotations

from fpsbench.formatting import md_stat, num, size
from fpsbench.results import Report


def _header(report: Report) -> list[str]:
    m, st = report.machine, report.settings
    versions = ", ".join(f"{k} {v}" for k, v in m.versions.items() if v)
    return [
        f"- command: `{report.command}`",
        f"- date: {report.date}; commit {m.git_commit or 'unknown'}",
        f"- device: {m.where}; torch {m.torch} ({m.torch_threads} threads); {versions}",
        f"- settings: window {st.window}, warm-up {st.warmup} frames, {st.repeats} runs of "
        f"{st.frames} frames per configuration; "
        + (
            f"throughput over {st.streams} streams ({st.throughput_repeats} run); "
            if st.streams > 1
            else "no throughput runs (--streams 0); "
        )
        + (
            f"batches of {', '.join(map(str, st.batch_streams))} videos "
            f"({st.throughput_repeats} run(s) each); "
            if st.batch_streams
            else ""
        )
        + f"weights {report.run.weights}",
        f"- load average (1, 5, 15 min) at the start: {m.load_average_at_start}",
    ]


def _engine(report: Report) -> list[str]:
    gpu = report.machine.cuda is not None
    lines = [
        "",
        "FPS: median (min-max) over runs. Stage latencies: median ms per frame. Host MiB: peak resident "
        "set of the whole process. CPU/wall: process CPU seconds per wall second (the thread count on "
        "an idle machine).",
        "",
        "| backend | min_dim | objects | history slots | FPS | frame ms | backbone | encode | decode | "
        "runtime | host MiB | " + ("GPU MiB | " if gpu else "") + "CPU/wall | throughput FPS |",
        "| --- | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | "
        + ("---: | " if gpu else "")
        + "---: | --- |",
    ]
    tput = {(t.backend, t.min_dim, t.objects): t for t in report.throughput}
    for r in report.results:
        lat, mem = r.latency_ms, r.memory
        t = tput.get((r.backend, r.min_dim, r.objects))
        tcell = "-" if t is None else f"{md_stat(t.fps_total)} ({t.streams} streams)"
        slots = r.history_slots
        slot_cell = f"{slots[0]}-{slots[-1]}" if len(slots) > 1 else str(slots[0])
        lines.append(
            f"| {r.backend} | {r.min_dim} | {r.objects} | {slot_cell} | {md_stat(r.fps)} | "
            f"{num(lat.frame.median)} | {num(lat.backbone.median)} | {num(lat.encode.median)} | "
            f"{num(lat.decode.median)} | {num(lat.runtime.median)} | {num(mem.host_peak_rss_mib, 0)} | "
            + (f"{num(mem.gpu_device_used_peak_mib, 0)} | " if gpu else "")
            + f"{num(r.cpu_seconds_per_wall_second.median, 2)} | {tcell} |"
        )
    if report.ratios:
        lines += [
            "",
            "| backend / reference | min_dim | objects | FPS ratio, median (min-max) of per-run ratios |",
            "| --- | ---: | ---: | --- |",
        ]
        for q in report.ratios:
            lines.append(
                f"| {q.backend} / {q.reference} | {q.min_dim} | {q.objects} | {md_stat(q.fps_ratio)} |"
            )
    return lines


def _peers(report: Report) -> list[str]:
    peers = report.peers
    if peers is None:
        return []
    gpu = report.machine.cuda is not None
    apis = "; ".join(sorted(set(peers.api.values())))
    lines = [
        "",
        f"Peers in the same run, each through its own public API ({apis}); "
        f"weights {peers.weights}. Frame ms: median per-frame latency; MiB: peak over session start and "
        "warm-up"
        + (
            " (GPU: device-wide for the engine, PyTorch allocator for the peers)"
            if gpu
            else " (host: resident set of the whole process)"
        )
        + ".",
        "",
        "| system | min_dim | objects | processing size | precision | warm-up frames | FPS | frame ms | "
        + ("GPU MiB" if gpu else "host MiB")
        + " | CPU/wall |",
        "| --- | ---: | ---: | --- | --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in report.rows():
        mem = r.gpu_peak_mib if gpu else r.host_peak_mib
        label = f"hodor-engine {r.system}" if r.kind == "engine" else r.system
        lines.append(
            f"| {label} | {r.min_dim} | {r.objects} | {size(r.processing_size)} | {r.precision} | "
            f"{r.warmup_frames} | {md_stat(r.fps)} | {num(r.frame_ms.median)} | {num(mem, 0)} | "
            f"{num(r.cpu_seconds_per_wall_second.median, 2)} |"
        )
    if peers.ratios:
        lines += [
            "",
            "| engine / peer | min_dim | objects | FPS ratio, median (min-max) of per-run ratios |",
            "| --- | ---: | ---: | --- |",
        ]
        for q in peers.ratios:
            lines.append(
                f"| {q.backend} / {q.reference} | {q.min_dim} | {q.objects} | {md_stat(q.fps_ratio)} |"
            )
    off = [v for v in peers.variants if v.status != "measured"]
    if off:
        lines += [
            "",
            "Peers not measured: " + "; ".join(f"`{v.name}`: {v.status}, {v.reason}" for v in off) + ".",
        ]
    return lines


def _batched(report: Report) -> list[str]:
    if not report.batched:
        return []
    gpu = report.machine.cuda is not None
    lines = [
        "",
        "Batches of sessions: N videos in one `BatchSession` (one backbone, encode and decode call per "
        "step for all of them) against the same N videos in separate sessions, timed runs interleaved. "
        "FPS: frames of all videos per second, median (min-max) over runs. Video ms: median time until a "
        "step's masks are all on the host (each video's frame latency). MiB: peak over creating the "
        "batch and its warm-up"
        + (" (device-wide GPU memory)" if gpu else " (resident set of the whole process)")
        + ". Ratio: batched / separate FPS, median (min-max) of per-run ratios.",
        "",
        "| backend | min_dim | objects | videos | batched FPS | video ms | "
        + ("GPU MiB" if gpu else "host MiB")
        + " | separate FPS | separate ms | batched / separate |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | --- | ---: | --- |",
    ]
    for b in report.batched:
        mem = b.memory.gpu_device_used_peak_mib if gpu else b.memory.host_peak_rss_mib
        lines.append(
            f"| {b.backend} | {b.min_dim} | {b.objects} | {b.streams} | {md_stat(b.fps_total)} | "
            f"{num(b.video_latency_ms.median)} | {num(mem, 0)} | {md_stat(b.separate_fps_total)} | "
            f"{num(b.separate_latency_ms.median)} | {md_stat(b.fps_ratio)} |"
        )
    methods = sorted({b.separate_method for b in report.batched})
    lines += ["", f"Separate sessions: {'; '.join(methods)}."]
    return lines


def _io(report: Report) -> list[str]:
    if not report.io:
        return []
    lines = ["", "| input | video decode ms/frame | mask write ms/frame |", "| --- | --- | --- |"]
    for io in report.io:
        if io.failed or io.video_decode is None or io.mask_write is None:
            lines.append(f"| {size(io.input_size)} | failed: {io.failed} | |")
            continue
        lines.append(
            f"| {size(io.input_size)} | {md_stat(io.video_decode.ms_per_frame)} | "
            f"{md_stat(io.mask_write.ms_per_frame)} |"
        )
    return lines


def _end_to_end(report: Report) -> list[str]:
    e2e = report.end_to_end
    if e2e is None:
        return []
    method = e2e.results[0].stage_method if e2e.results else ""
    lines = [
        "",
        f"End to end: `hodor-run`'s own path on a generated clip ({e2e.clip}), the model loaded "
        "beforehand, beside the model alone on the same frames (`VideoSession.run_device`, chunked "
        "backbone, decoded and uploaded beforehand, masks left on the device). FPS: median (min-max) "
        "over runs; ratio: end-to-end / model-only, run by run (the two alternate); stages / wall: "
        f"{method}; first mask: from the pipeline's start.",
        "",
        "| backend | min_dim | objects | frames | end-to-end FPS | model-only FPS | ratio | stages / wall | "
        "first mask s | frames in flight (peak) | CPU/wall |",
        "| --- | ---: | ---: | ---: | --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in e2e.results:
        lines.append(
            f"| {r.backend} | {r.min_dim} | {r.objects} | {r.frames} | {md_stat(r.fps)} | "
            f"{md_stat(r.model_only_fps)} | {md_stat(r.ratio)} | {num(r.stage_share.median, 2)} | "
            f"{num(r.first_mask_s.median, 2)} | {r.peak_frames_in_flight} | "
            f"{num(r.cpu_seconds_per_wall_second.median, 2)} |"
        )
    startups = [r for r in e2e.results if r.startup is not None]
    if startups:
        lines += [
            "",
            "`hodor-run`'s start-up, in fresh processes (`benchmarks/startup_probe.py`): seconds from the "
            "process's start to the first frame entering the pipeline (start-up) and to the first frame "
            "written (first mask), first run and a second with warm caches (- : one run only, as with "
            "--quick); where the warm start-up went.",
            "",
            "| backend | min_dim | start-up s (first, warm) | first mask s (first, warm) | "
            "warm start-up by phase, s |",
            "| --- | ---: | --- | --- | --- |",
        ]
        for r in startups:
            su = r.startup
            assert su is not None
            if su.status != "measured" or su.first is None:
                lines.append(f"| {r.backend} | {r.min_dim} | {su.status}: {su.reason} | | |")
                continue
            warm = su.warm
            phases = ", ".join(f"{k} {v:.2f}" for k, v in (warm or su.first).phases_s.items())
            lines.append(
                f"| {r.backend} | {r.min_dim} | {num(su.first.startup_s, 2)}, "
                f"{num(warm.startup_s if warm else None, 2)} | {num(su.first.first_mask_s, 2)}, "
                f"{num(warm.first_mask_s if warm else None, 2)} | {phases}"
                + ("" if warm else " (first run)")
                + " |"
            )
    if e2e.failures:
        lines += ["", "End to end, failed: " + "; ".join(f"{k}: {v}" for k, v in e2e.failures.items()) + "."]
    return lines


def format_markdown(report: Report) -> str:
    lines = (
        _header(report)
        + _engine(report)
        + _batched(report)
        + _peers(report)
        + _io(report)
        + _end_to_end(report)
    )
    skipped = [b for b in report.backends if b.status != "measured"]
    if skipped:
        lines += ["", "Skipped: " + "; ".join(f"`{b.name}`: {b.reason}" for b in skipped) + "."]
    return "\n".join(lines) + "\n"
