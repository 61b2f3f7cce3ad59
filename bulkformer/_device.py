"""The one place a torch device is picked from a user's ``device`` argument (model, train,
eval and esm all use :func:`resolve_device`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["resolve_device"]


def resolve_device(
    device: str | torch.device | None = None, local_rank: int | None = None
) -> torch.device:
    """The torch device named by ``device``.

    Parameters
    ----------
    device : ``None`` or ``"auto"``: CUDA when available, else CPU. ``"cuda"``: the CUDA device
        of ``local_rank`` (modulo the device count) when given, else torch's current one. A
        :class:`torch.device` or any other string (``"cpu"``, ``"cuda:1"``) as given.
    local_rank : this process' rank on its node (torchrun's ``LOCAL_RANK``), or None.

    Raises
    ------
    ValueError
        ``"cuda"`` (or ``"auto"`` resolved to it) is asked for and no CUDA device is available.
    """
    import torch  # here, so that importing this module stays cheap

    if isinstance(device, torch.device):
        return device
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available")
        if local_rank is None:
            return torch.device("cuda")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(device)
