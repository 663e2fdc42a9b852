"""Kernel families of mirasdsl: plain tensor functions, no DSL imports (see README.md)."""
