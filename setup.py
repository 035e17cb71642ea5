"""Builds lvsuser and its one extension, lvsuser._fastpath, from lvsuser/_fastpath.pyx.

Build switches (environment):
  LVSUSER_ASAN=1      compile the datapath with AddressSanitizer (for the fuzz test)
  LVSUSER_ANNOTATE=1  write Cython's HTML annotation next to the sources
  LVSUSER_DEBUG=1     -O0 -g and Cython line tracing off; asserts on
"""
import os

from setuptools import Extension, find_packages, setup
from Cython.Build import cythonize

asan = os.environ.get("LVSUSER_ASAN") == "1"
debug = os.environ.get("LVSUSER_DEBUG") == "1"

cflags = ["-O0", "-g"] if debug else ["-O2", "-g0"]
ldflags = []
if asan:
    cflags += ["-fsanitize=address", "-fno-omit-frame-pointer"]
    ldflags += ["-fsanitize=address"]

extensions = [
    Extension(
        "lvsuser._fastpath",
        ["lvsuser/_fastpath.pyx"],
        include_dirs=["lvsuser", "lvsuser/fastpath"],
        extra_compile_args=cflags + ["-Wno-unused-function", "-Wno-unused-variable"],
        extra_link_args=ldflags,
    )
]

setup(
    name="lvsuser",
    version="0.1.0",
    description="Linux Virtual Server in user space: NAT, TUN and DR load balancing with an ipvsadm-compatible CLI",
    python_requires=">=3.11",
    packages=find_packages(include=["lvsuser", "lvsuser.*"]),
    package_data={"lvsuser": ["*.pxd", "*.pyx", "fastpath/*.pxd", "fastpath/*.pxi",
                              "fastpath/includes/*.pxd", "fastpath/sched/*.pxi"]},
    ext_modules=cythonize(
        extensions,
        language_level=3,
        annotate=os.environ.get("LVSUSER_ANNOTATE") == "1",
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True,
                             "initializedcheck": False},
        include_path=[".", "lvsuser", "lvsuser/fastpath"],
    ),
    install_requires=["pyroute2>=0.7.10", "scapy>=2.5", "prometheus-client>=0.17"],
    entry_points={
        "console_scripts": [
            "lvsuser=lvsuser.cli:main",
            "lvsuser-ipvsadm=lvsuser.control.ipvsadm:main",
        ],
    },
)
