"""Test-wide settings."""

import os

# Reference implementations (transformers) are built from configs in the tests;
# nothing may be fetched from a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
