"""trainlint: a linter and autofixer for PyTorch training code.

The linter never imports torch; only ``trainlint.runtime`` does.
"""

__version__ = "0.1.0"

# The name on the package index: `trainlint` there is another project (see the README).
DISTRIBUTION = "torch-trainlint"

# Where the rule pages are published (``<DOCS_URL>/TL101.md``); None until they have a public
# address, and then JSON output gives no ``url`` rather than a path that is not one.
DOCS_URL: str | None = None
