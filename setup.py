"""Builds the compiled parts; everything else is in pyproject.toml.

Each sits beside what it speeds up, one job each: the queue reader
(``kernel/_reader``), the raw sender (``kernel/_resend``: replies and re-sent
rewrites), the packet core and view fields (``packet/_core``), the
record ring (``pipeline/_ring``), how far each TCP stream went
(``pipeline/_streams``), the capture source (``pipeline/_capture``:
libpcap), the dispatcher (``pipeline/_dispatch``), TCP sequence adjustment (``pipeline/_seqadj``) and NetPIPE's timed loops
(``measure/_pingpong``).  The reader, the dispatcher and the capture source
cimport NetfilterQueue's types, declared in the copy of its ``_impl.pxd`` in
``pktlab/_vendor`` (the version pinned in pyproject.toml), and use the
libnetfilter_queue and libpcap headers; ``.pxd`` files carry what one compiled
module uses of another.  Without a compiler or those headers the build stops
with one sentence naming the packages to install (``missing_build_needs``).
"""

import os
import shlex
import subprocess
import sys
import sysconfig

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

VENDOR = os.path.join("pktlab", "_vendor")  # NetfilterQueue's declarations: no compiled NetfilterQueue to build
# what the compile needs from the system: (header, Debian/Ubuntu package, Fedora package)
HEADERS = [
    ("Python.h", "python3-dev", "python3-devel"),
    ("libnetfilter_queue/libnetfilter_queue.h", "libnetfilter-queue-dev", "libnetfilter_queue-devel"),
    ("pcap/pcap.h", "libpcap-dev", "libpcap-devel"),
]


def missing_build_needs() -> str | None:
    """One sentence naming what this machine lacks to compile pktlab, or None.

    Each header is looked for the way the compile will: the C compiler preprocesses an include of it.
    """
    cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    flags = shlex.split(os.environ.get("CFLAGS", "")) + ["-I" + (sysconfig.get_paths()["include"] or "")]
    missing = []
    for header, deb, fedora in HEADERS:
        try:
            proc = subprocess.run([*cc, *flags, "-E", "-x", "c", "-"], input=f"#include <{header}>\n",
                                  capture_output=True, text=True, check=False)  # fmt: skip
        except FileNotFoundError:
            return (f"pktlab has compiled parts and this machine has no C compiler ({cc[0]}); install build-essential "
                    "(Debian/Ubuntu) or gcc (Fedora) and the development files: "
                    + " ".join(d for _, d, _ in HEADERS) + " / " + " ".join(f for _, _, f in HEADERS))
        if proc.returncode != 0:
            missing.append((header, deb, fedora))
    if not missing:
        return None
    return (f"pktlab cannot be compiled here: {', '.join(h for h, _, _ in missing)} not found; install "
            f"{' '.join(d for _, d, _ in missing)} (Debian/Ubuntu: apt-get install) or "
            f"{' '.join(f for _, _, f in missing)} (Fedora: dnf install), then run pip again")


def dataset_files() -> list[tuple[str, list[str]]]:
    """The captures and traces in datasets/, installed under <prefix>/share/pktlab (pktlab.datasets finds them)."""
    out = []
    for folder in ("datasets", os.path.join("datasets", "traces")):
        if os.path.isdir(folder):
            names = sorted(f for f in os.listdir(folder) if os.path.isfile(os.path.join(folder, f)))
            files = [os.path.join(folder, f) for f in names]
            out.append((os.path.join("share", "pktlab", folder), files))
    return out


class CheckedBuildExt(build_ext):
    """Compiles the extensions after saying, in one sentence, what is missing if anything is."""

    def run(self) -> None:
        why = missing_build_needs()
        if why is not None:
            sys.exit(why)
        super().run()


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
            ext("pipeline/_streams"),
            ext("pipeline/_capture", ("pcap",)),
            ext("pipeline/_writer"),
            ext("pipeline/_dispatch", ("netfilter_queue",)),
            ext("pipeline/_seqadj"),
            ext("measure/_pingpong"),
        ],
        compiler_directives={"language_level": "3"},
        include_path=[VENDOR],
        nthreads=os.cpu_count() or 1,
    ),
    cmdclass={"build_ext": CheckedBuildExt},
    data_files=dataset_files(),
    options={"build_ext": {"parallel": os.cpu_count() or 1}},  # the eight C files compile side by side
)
