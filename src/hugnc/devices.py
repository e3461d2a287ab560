"""Facts about where tensors live that several layers act on (imports only torch)."""

from __future__ import annotations

import torch


def host_reads_are_free(device: torch.device) -> bool:
    """Whether reading a value of a tensor on ``device`` costs no host-device synchronization.

    On CPU tensors ``.item()`` is a memory read; on an accelerator it makes the host wait for every
    queued kernel, so per-step reads are deferred or avoided there.
    """
    return device.type == "cpu"
