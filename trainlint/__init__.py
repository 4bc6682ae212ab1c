"""trainlint: a linter and autofixer for PyTorch training code.

The linter never imports torch; only ``trainlint.runtime`` does.
"""

__version__ = "0.1.0"
