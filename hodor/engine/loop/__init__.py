"""The per-video loop: :class:`~.session.VideoSession` and the state it keeps (the descriptor
ring, the object map), frame and mask pre-processing, the post-decode computation
(:func:`~.post_decode.masks_from_logits`: logits to the id mask and the maps to re-encode) and
the runtime's operations on mask maps (resampling, reference override, arg-max).
Backend-independent: it talks to the network only through the three-stage seam
(:mod:`hodor.engine.backends.base`)."""
