"""Builds the compiled parts; everything else is in pyproject.toml.

Each sits beside what it speeds up, one job each: the queue reader
(``kernel/_reader``), the raw sender (``kernel/_resend``: replies and re-sent
rewrites), the packet core and view fields (``packet/_core``), the
record ring (``pipeline/_ring``), the capture source (``pipeline/_capture``:
libpcap), the dispatcher (``pipeline/_dispatch``) and NetPIPE's timed loops
(``measure/_pingpong``).  The reader, the dispatcher and the capture source
cimport NetfilterQueue's types, so they are compiled against the installed
NetfilterQueue (pinned in pyproject.toml) and Debian's libnetfilter-queue-dev
headers; ``.pxd`` files carry what one compiled module uses of another.
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup


def ext(name: str, libraries: tuple[str, ...] = ()) -> Extension:
    return Extension(f"pktlab.{name.replace('/', '.')}", [f"pktlab/{name}.pyx"], libraries=list(libraries),
                     extra_compile_args=["-O2"])  # fmt: skip


setup(
    ext_modules=cythonize(
        [
            ext("kernel/_reader", ("netfilter_queue",)),
            ext("kernel/_resend"),
            ext("packet/_core"),
            ext("pipeline/_ring"),
            ext("pipeline/_capture", ("pcap",)),
            ext("pipeline/_dispatch", ("netfilter_queue",)),
            ext("measure/_pingpong"),
        ],
        compiler_directives={"language_level": "3"},
        nthreads=os.cpu_count() or 1,
    ),
    options={"build_ext": {"parallel": os.cpu_count() or 1}},  # the seven C files compile side by side
)
