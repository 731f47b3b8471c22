"""The per-video loop: :class:`~.session.VideoSession` and the state it keeps (the descriptor
ring, the object map), frame and mask pre-processing, and the runtime's operations on mask
maps (resampling, reference override, arg-max). Backend-independent: it talks to the network
only through the three-stage seam (:mod:`hodor.engine.backends.registry.base`)."""
