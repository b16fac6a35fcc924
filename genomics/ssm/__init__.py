"""Selective state-space (Mamba-1) building blocks shared by Caduceus (genomics) and BrainMT (brain).

`ops` dispatches the selective scan / fused mixer inner to a backend: the pure-PyTorch reference ("torch"),
the fused CPU kernel ("cpu"), the mamba-ssm CUDA kernels ("cuda") or Triton kernels ("triton", no compiled
extension).
"""
