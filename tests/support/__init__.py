"""Test support for imgpull: a real registry, image builders, skopeo helpers.

Import as ``from support.registry import RegistryServer`` and
``from support.images import build_oci_layout, push, ...`` (pytest puts
``tests/`` on ``sys.path`` because ``tests/conftest.py`` sits there without an
``__init__.py``).  Nothing here imports imgpull.
"""
