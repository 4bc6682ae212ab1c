"""Shared per-file analyses: each is a class taking a FileContext, built once by ``ctx.get``."""
