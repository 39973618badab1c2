"""Hashing methods, one module each, registered by name (see methods.registry)."""

from methods.registry import available_methods, available_variants, create_method, get_method_class, register_method, register_variant

__all__ = ["available_methods", "create_method", "get_method_class", "register_method"]
