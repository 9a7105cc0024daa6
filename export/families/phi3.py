"""Phi-3, Phi-3.5 and Phi-4-mini (`Phi3ForCausalLM`): the decoder alone."""
from .family import Family

FAMILY = Family("phi3", frozenset({"Phi3ForCausalLM"}))
