"""mirasdsl: a language for sequence-model token mixers on the Miras axes."""
__version__ = "0.1.0"
