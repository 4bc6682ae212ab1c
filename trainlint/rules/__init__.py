"""Every rule is one module here; importing the package's modules registers them."""
