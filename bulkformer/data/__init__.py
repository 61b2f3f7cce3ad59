"""bulkformer.data"""

from .demo import demo_path

__all__ = ["demo_path"]
