"""Kernel families of mirasdsl: plain tensor functions, no DSL imports (see README.md)."""
from .interpreter import apply as _fix_interpreter

_fix_interpreter()  # under TRITON_INTERPRET=1 only: bf16 and tf32 as the GPU computes them
