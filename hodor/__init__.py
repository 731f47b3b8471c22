"""hodor-engine: a deployment engine for HODOR video object segmentation."""

from hodor.errors import HodorError

__version__ = "0.1.0"

__all__ = ["HodorError", "__version__"]
