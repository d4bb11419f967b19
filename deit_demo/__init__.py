"""DeiT Deployment Lab: classify, convert and benchmark Data-efficient Image Transformers.

The library knows nothing of Gradio; `deit_demo.ui` and `app.py` are a thin layer over it.
"""

from deit_demo.errors import DeitDemoError

__all__ = ["DeitDemoError"]
__version__ = "0.1.0"
