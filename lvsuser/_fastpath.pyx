# cython: language_level=3
"""lvsuser._fastpath: the compiled datapath (one module, per-topic include files).

Layout (uvloop style): C declarations in fastpath/includes/*.pxd, the shared structs in
fastpath/types.pxd, then the schedulers, the core and the I/O drivers, all included here.
The core's theory of operation is at the top of fastpath/core.pxi (and pyfastpath.py).

Batch entry for the drivers (fastpath/core_api.pxi), called with the GIL released once around
the driver's loop:

    cdef int lvs_core_batch(lvs_core *core, lvs_frame *frames, int count, double now) noexcept nogil

`core` is `(<Core>obj).c`; the drivers' frames are the core's own `lvs_frame` (data, len,
headroom, tailroom, ifindex, out_ifindex, verdict), passed as they are.
Frames are rewritten in place; encapsulation moves `data` back into the headroom; replies the
core builds itself (ICMP errors, ARP/ND) are rebased at the start of the slot.  Verdicts:
LVS_PASS 0, LVS_DROP 1, LVS_TX 2 (send on out_ifindex), LVS_REPLY 3 (send on out_ifindex,
which is the arrival interface).
"""

include "fastpath/sched/all.pxi"
include "fastpath/sched/harness.pxi"
include "fastpath/csum.pxi"
include "fastpath/parse.pxi"
include "fastpath/conntab.pxi"
include "fastpath/core.pxi"
include "fastpath/xmit.pxi"
include "fastpath/core_api.pxi"
include "fastpath/io.pxi"
