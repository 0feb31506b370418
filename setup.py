"""Builds the compiled parts (pktlab/_hot.pyx, pktlab/_capture.pyx, pktlab/_pingpong.pyx); everything else is in pyproject.toml.

_hot cimports NetfilterQueue's Packet type, so it is compiled against the
installed NetfilterQueue (pinned in pyproject.toml) and Debian's
libnetfilter-queue-dev headers.
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [
            Extension("pktlab._hot", ["pktlab/_hot.pyx"], libraries=["netfilter_queue"], extra_compile_args=["-O2"]),
            Extension("pktlab._capture", ["pktlab/_capture.pyx"], libraries=["pcap"], extra_compile_args=["-O2"]),
            Extension("pktlab._pingpong", ["pktlab/_pingpong.pyx"], extra_compile_args=["-O2"]),
        ],
        compiler_directives={"language_level": "3"},
    )
)
