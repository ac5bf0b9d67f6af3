"""A test backend that hands every graph call to the backend it wraps; subclasses override the one call they
change (a denoise that hangs, fails or waits), so each fault-injecting wrapper is a few lines."""

from __future__ import annotations

from runtime.backend import Backend


class Delegating(Backend):
    """Every call goes to `inner`."""

    name = "delegating"

    def __init__(self, inner: Backend):
        self.inner = inner

    def run_prefix(self, *a):
        return self.inner.run_prefix(*a)

    def run_main_expert(self, *a):
        return self.inner.run_main_expert(*a)

    def run_delta_expert(self, *a):
        return self.inner.run_delta_expert(*a)

    def run_plan_encoder(self, *a):
        return self.inner.run_plan_encoder(*a)

    def denoise(self, *a):
        return self.inner.denoise(*a)
