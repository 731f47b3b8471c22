"""Runtime: the per-video loop, the backends behind the three-stage seam, video and mask I/O."""
