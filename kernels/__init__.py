"""Triton kernels (installed as ``bulkformer.kernels``), one op per file.

Each file holds the ``@triton.jit`` kernel(s), the launcher, the ``torch.autograd.Function`` and
the pure-PyTorch reference of the same op. Triton is imported lazily: on machines without it,
the references still work.
"""
