"""The per-video loop: :class:`~.session.VideoSession` (one video) and :class:`~.batch.BatchSession`
(many, batched), both running the per-frame logic of :mod:`~.frame_step` over the state each
video keeps (:mod:`~.video`: the descriptor ring, the object map); frame and mask
pre-processing, the post-decode computation (:func:`~.post_decode.masks_from_logits`: logits to
the id mask and the maps to re-encode) and the runtime's operations on mask maps (resampling,
reference override, arg-max). Backend-independent: it talks to the network only through the
three-stage seam (:mod:`hodor.engine.backends.base`)."""
