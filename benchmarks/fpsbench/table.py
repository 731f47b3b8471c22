"""The summary printed on stdout at the end of a run."""

from __future__ import annotations

from fpsbench.formatting import num, size, spread
from fpsbench.results import Report


def format_table(report: Report) -> str:
    gpu = report.machine.cuda is not None
    lines: list[str] = []
    head = (
        f"{'backend':<18} {'min_dim':>7} {'obj':>3}  {'FPS median [min-max]':<22} "
        f"{'frame':>8} {'backbone':>8} {'encode':>7} {'decode':>7} {'runtime':>7}  "
        f"{'host MiB':>8}" + (f" {'GPU MiB':>8}" if gpu else "") + f"  {'tput FPS (streams)':<20}"
    )
    lines += ["per frame, milliseconds (medians); FPS over runs of consecutive frames", head, "-" * len(head)]
    tput = {(t.backend, t.min_dim, t.objects): t for t in report.throughput}
    for r in report.results:
        lat, mem = r.latency_ms, r.memory
        t = tput.get((r.backend, r.min_dim, r.objects))
        tcell = "-" if t is None else f"{num(t.fps_total.median, 2)} ({t.streams})"
        lines.append(
            f"{r.backend:<18} {r.min_dim:>7} {r.objects:>3}  {spread(r.fps):<22} "
            f"{num(lat.frame.median):>8} {num(lat.backbone.median):>8} "
            f"{num(lat.encode.median):>7} {num(lat.decode.median):>7} "
            f"{num(lat.runtime.median):>7}  {num(mem.host_peak_rss_mib, 0):>8}"
            + (f" {num(mem.gpu_device_used_peak_mib, 0):>8}" if gpu else "")
            + f"  {tcell:<20}"
        )
    if report.ratios:
        lines += ["", "FPS ratio against the reference (median of per-run ratios of interleaved runs)"]
        for q in report.ratios:
            lines.append(
                f"  {q.backend:<18} / {q.reference:<6} min_dim {q.min_dim:>4}, {q.objects} obj: "
                f"{spread(q.fps_ratio)}"
            )
    if report.batched:
        lines += [
            "",
            "batches of sessions: N videos in one BatchSession vs N separate sessions, runs interleaved",
            f"{'backend':<18} {'min_dim':>7} {'obj':>3} {'N':>3}  {'batched FPS [min-max]':<24} "
            f"{'video ms':>8} {'MiB':>8}  {'separate FPS [min-max]':<24} {'batched/separate':<20}",
        ]
        for b in report.batched:
            mem = b.memory.gpu_device_used_peak_mib if gpu else b.memory.host_peak_rss_mib
            lines.append(
                f"{b.backend:<18} {b.min_dim:>7} {b.objects:>3} {b.streams:>3}  {spread(b.fps_total):<24} "
                f"{num(b.video_latency_ms.median):>8} {num(mem, 0):>8}  {spread(b.separate_fps_total):<24} "
                f"{spread(b.fps_ratio):<20}"
            )
    peers = report.peers
    if peers is not None:
        lines += ["", f"peers, same run (weights: {peers.weights})"]
        head = (
            f"{'peer':<26} {'min_dim':>7} {'obj':>3} {'processing':>10}  {'FPS median [min-max]':<22} "
            f"{'frame ms':>8}  {'host MiB':>8}" + (f" {'GPU MiB':>8}" if gpu else "")
        )
        lines += [head, "-" * len(head)]
        for p in peers.results:
            lines.append(
                f"{p.system:<26} {p.min_dim:>7} {p.objects:>3} {size(p.processing_size):>10}  "
                f"{spread(p.fps):<22} {num(p.latency_ms.median):>8}  {num(p.memory.host_peak_rss_mib, 0):>8}"
                + (f" {num(p.memory.gpu_torch_peak_allocated_mib, 0):>8}" if gpu else "")
            )
        if peers.ratios:
            lines += ["", "engine / peer FPS ratio (median of per-run ratios of interleaved runs)"]
            for q in peers.ratios:
                lines.append(
                    f"  {q.backend:<18} / {q.reference:<26} min_dim {q.min_dim:>4}, {q.objects} obj: "
                    f"{spread(q.fps_ratio)}"
                )
        off = [v for v in peers.variants if v.status != "measured"]
        if off:
            lines += ["peers not measured:"] + [f"  {v.name}: {v.status}: {v.reason}" for v in off]
    if report.io:
        lines += ["", "I/O, ms per frame (median [min-max])"]
        for io in report.io:
            where = f"  input {io.input_size[0]}x{io.input_size[1]}"
            if io.failed or io.video_decode is None or io.mask_write is None:
                lines.append(f"{where}: failed: {io.failed}")
                continue
            lines.append(
                f"{where}: video decode {spread(io.video_decode.ms_per_frame)}; "
                f"mask write {spread(io.mask_write.ms_per_frame)}"
            )
    lines += end_to_end_lines(report)
    off = report.official
    if off is not None:
        lines += ["", f"official InferenceModel: {off.status}"]
        if off.status == "measured":
            for r in off.results:
                lines.append(f"  min_dim {r.min_dim:>4}, {r.objects} obj: FPS {spread(r.fps)}")
        else:
            lines.append(f"  {off.reason or ''}")
    skipped = [b for b in report.backends if b.status != "measured"]
    if skipped:
        lines += ["", "skipped:"]
        lines += [f"  {b.name}: {b.reason}" for b in skipped]
    return "\n".join(lines)


def end_to_end_lines(report: Report) -> list[str]:
    e2e = report.end_to_end
    if e2e is None:
        return []
    lines = [
        "",
        f"end to end: hodor-run's path ({e2e.clip}) beside the model alone on the same frames "
        "(VideoSession.run_device, chunked backbone); ratio = end-to-end / model-only, run by run",
    ]
    head = (
        f"{'backend':<18} {'min_dim':>7} {'obj':>3}  {'end-to-end FPS':<20} {'model-only FPS':<20} "
        f"{'ratio':<18} {'stages/wall':>11} {'1st mask s':>10}  {'start-up s':>10} {'1st mask s':>10}"
    )
    lines += [f"{'':<95}{'(hodor-run, warm)':>22}", head, "-" * len(head)]
    for r in e2e.results:
        run = (r.startup.warm or r.startup.first) if r.startup is not None else None
        lines.append(
            f"{r.backend:<18} {r.min_dim:>7} {r.objects:>3}  {spread(r.fps):<20} "
            f"{spread(r.model_only_fps):<20} "
            f"{spread(r.ratio):<18} {num(r.stage_share.median, 2):>11} {num(r.first_mask_s.median, 2):>10}  "
            f"{num(run.startup_s if run else None, 2):>10} {num(run.first_mask_s if run else None, 2):>10}"
        )
        if r.startup is not None and r.startup.status != "measured":
            lines.append(f"  start-up not measured: {r.startup.reason}")
    lines += [f"  {name}: failed: {why}" for name, why in e2e.failures.items()]
    return lines
