"""Shared test set-up: 8 simulated CPU devices, unless the caller already chose a count."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
