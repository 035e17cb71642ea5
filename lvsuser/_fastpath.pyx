# cython: language_level=3
"""lvsuser._fastpath: the compiled datapath (one module, per-topic include files).

Layout (uvloop style): C declarations in fastpath/includes/*.pxd, the shared structs in
fastpath/types.pxd, then the schedulers, the core (parse, checksums, connection table, xmit,
the Core class and the C batch entry), and the I/O drivers, all included here.
See fastpath/core.pxi for the core's theory of operation.
"""

include "fastpath/sched/all.pxi"
include "fastpath/sched/harness.pxi"
# include "fastpath/io.pxi"   # enabled once io_afpacket.pxi/io_tun.pxi land (I/O engineer)
