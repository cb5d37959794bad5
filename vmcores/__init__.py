"""The sample-vmcore factory: Debian kernel source -> QEMU guest -> vmcore + manifest.

Run ``python -m vmcores --help``.  Not part of the installed package.
"""
